"""Serve tests: a local Ray with 2 CPUs and one Serve app per test module, on a free loopback port.

serve/ is not an installed package (pyproject lists spokenlm and pipelines), so the repository root
goes on sys.path here and, through serve.app.start_ray, on the Ray workers' PYTHONPATH.
"""

import contextlib
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(model_dir: Path, name: str, **settings):
    """Start Ray and Serve, deploy the spokenlm app with `settings`, yield its base URL; tear all down."""
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from serve.app import build_app, start_ray

    started = start_ray(num_cpus=2, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model_dir": str(model_dir), **settings}), name=name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()


@pytest.fixture(scope="session")
def serve_app():
    """The `running_app` context manager, for module-scoped fixtures of the test modules."""
    return running_app


@pytest.fixture(scope="module")
def http(server):
    """An httpx client on the module's `server` (each serve test module starts its own app)."""
    import httpx

    with httpx.Client(base_url=server, timeout=120) as client:
        yield client
