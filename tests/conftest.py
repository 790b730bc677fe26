"""Shared fixtures: a tiny untrained bundle built once per test session, and the example clips."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CLIPS = sorted((REPO / "examples").glob("*.wav"))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test models are tiny: they gain nothing from intra-op threads, and on a shared 2-core machine
    (CI, or a developer's box while a recipe trains) contention makes them up to 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from spokenlm.demo import build_untrained_bundle

    return build_untrained_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def example_clips() -> list[Path]:
    assert EXAMPLE_CLIPS, "examples/*.wav are part of the repository"
    return EXAMPLE_CLIPS
