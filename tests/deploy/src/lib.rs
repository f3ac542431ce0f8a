//! Tests live in `tests/`: what a user installs (deploy/, examples/, GitOps health checks).
