"""Serve tests: one Serve app per test module (tests/conftest.py's `serve_app`), on a free loopback port."""

import pytest


@pytest.fixture(scope="module")
def http(server):
    """An httpx client on the module's `server` (each serve test module starts its own app)."""
    import httpx

    with httpx.Client(base_url=server, timeout=120) as client:
        yield client
