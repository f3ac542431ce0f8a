//! Tests live in `tests/`: they prove the local control plane behaves like a real cluster.
