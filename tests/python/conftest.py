"""Fixtures: voice-sim and voice-gateway as processes on 127.0.0.1 (free ports), stopped after."""
import os
import socket
import subprocess
import time
import urllib.request

import pytest


def _bin(var):
    path = os.environ.get(var)
    if not path:
        pytest.fail(f"{var} is not set (run tests/python/run.sh, which builds or receives the binaries)")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sim:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [_bin("VOICE_SIM_BIN"), "--riva-addr", "127.0.0.1:0", "--llm-addr", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        self.riva, self.llm = fields["riva"], fields["llm"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def sim():
    s = Sim("--profile", "zero")
    yield s
    s.stop()


class Gateway:
    def __init__(self, sim):
        self.grpc_port, self.admin_port = free_port(), free_port()
        env = dict(os.environ, RIVA_URI=sim.riva, LLM_SERVICE_URL=f"http://{sim.llm}/v1",
                   GRPC_PORT=str(self.grpc_port), METRICS_PORT=str(self.admin_port),
                   BIND_ADDRESS="127.0.0.1", LOG_LEVEL="error")
        self.proc = subprocess.Popen([_bin("VOICE_GATEWAY_BIN")], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("gateway not ready")
            time.sleep(0.05)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def gateway(sim):
    g = Gateway(sim)
    yield g
    g.stop()


def speak_wav(tmp_path, text, rate=16000):
    """A WAV of simulator speech, made by `voice-sim speak`."""
    out = tmp_path / "speech.wav"
    subprocess.run([_bin("VOICE_SIM_BIN"), "speak", "--text", text, "--out", str(out),
                    "--sample-rate", str(rate)], check=True)
    return out


def hear(pcm: bytes):
    """Decodes simulator speech (see crates/voice-sim/src/codec.rs): the utterances it says."""
    import array
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) // 2 * 2])
    out, text, inside, after_magic = [], bytearray(), False, False
    for s in samples:
        if not after_magic:
            after_magic = s == 31337
            continue
        after_magic = False
        if s == 900:
            inside, text = True, bytearray()
        elif s == 901 and inside:
            inside = False
            out.append(text.decode())
        elif inside and 1000 <= s < 1256:
            text.append(s - 1000)
        elif s == 31337:
            after_magic = True
    return out
