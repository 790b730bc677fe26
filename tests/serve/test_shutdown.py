"""`spokenlm serve` stops cleanly: SIGTERM (what systemd, Docker and Kubernetes send) shuts Serve and the
Ray it started down, leaving no raylet, GCS, dashboard or runtime-env agent behind. The command runs
as a real process with its own Ray temp dir, so every process of its Ray carries that dir on its
command line and the test can tell them from any other Ray on the machine."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            pass
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_serve_shuts_ray_down_on_sigterm(tiny_bundle):
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spokenlm.cli", "serve", "--model", str(tiny_bundle), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
        ours = _processes_mentioning(ray_tmp)
        assert len(ours) >= 3, ours  # gcs_server, raylet, agents, workers...

        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, rest[-2000:]
        assert "spokenlm serve: stopping" in rest
        end = time.monotonic() + 15
        while (left := _processes_mentioning(ray_tmp)) and time.monotonic() < end:
            time.sleep(0.5)
        assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left]
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _processes_mentioning(ray_tmp):  # only this test's own Ray, if the shutdown failed
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
