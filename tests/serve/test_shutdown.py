"""`spokenlm serve` stops cleanly: SIGTERM (what systemd, Docker and Kubernetes send) shuts Serve and the
Ray it started down, leaving no raylet, GCS, dashboard or runtime-env agent behind. The command runs
as a real process with its own Ray temp dir (tests/conftest.py's `own_ray`), so the test can tell its
Ray's processes from any other Ray on the machine."""

import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_shuts_ray_down_on_sigterm(tiny_bundle, own_ray):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spokenlm.cli", "serve", "--model", str(tiny_bundle), "--port", str(port)],
        env=own_ray.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = []
        end = time.monotonic() + 240
        while time.monotonic() < end:
            line = proc.stdout.readline()
            output.append(line)
            if "spokenlm serve: listening on" in line or not line:
                break
        assert "listening on" in output[-1], "".join(output[-20:])
        ours = own_ray.processes()
        assert len(ours) >= 3, ours  # gcs_server, raylet, agents, workers...

        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, rest[-2000:]
        assert "spokenlm serve: stopping" in rest
        assert own_ray.left_after(15) == []
    finally:
        if proc.poll() is None:
            proc.kill()
