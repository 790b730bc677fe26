"""Shared fixtures: a tiny untrained bundle built once per test session, and the example clips."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CLIPS = sorted((REPO / "examples").glob("*.wav"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from spokenlm.demo import build_untrained_bundle

    return build_untrained_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def example_clips() -> list[Path]:
    assert EXAMPLE_CLIPS, "examples/*.wav are part of the repository"
    return EXAMPLE_CLIPS
