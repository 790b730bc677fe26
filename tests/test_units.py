"""Discrete units (spokenlm/units.py): faiss k-means codebooks, assignment, dedup, units/s, save/load."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from spokenlm.encoders.base import EncoderOutput
from spokenlm.units import (
    KMeansConfig,
    UnitCodebook,
    UnitRuns,
    as_dinosr_init,
    dedup,
    fit_codebook,
    load_codebook,
    save_codebook,
    units_per_second,
)


def clustered(num_clusters: int = 5, dim: int = 8, n: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, dim) frames in well separated blobs (centres ~10 apart, spread 0.1) and their blob ids."""
    g = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.randn(num_clusters, dim, generator=g)
    labels = torch.randint(0, num_clusters, (n,), generator=g)
    return centres[labels] + 0.1 * torch.randn(n, dim, generator=g), labels


def batch(*items: torch.Tensor, pad_value: float = 0.0) -> EncoderOutput:
    feats = torch.nn.utils.rnn.pad_sequence(list(items), batch_first=True, padding_value=pad_value)
    return EncoderOutput(features=feats, lengths=torch.tensor([len(x) for x in items]), frame_rate_hz=50.0)


# ------------------------------------------------------------------------------------ fitting


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_clusters_with_purity_one(seed: int) -> None:
    x, labels = clustered(seed=seed)
    codebook = fit_codebook(x, KMeansConfig(num_units=5, niter=10, seed=seed))
    ids = codebook.assign(x)
    assert ids.dtype == torch.int64 and ids.shape == (500,)
    pairs = set(zip(ids.tolist(), labels.tolist()))
    assert len(pairs) == 5  # a bijection: every unit holds one blob, every blob one unit
    assert sorted(u for u, _ in pairs) == list(range(5))


def test_fit_is_deterministic_under_a_seed() -> None:
    x, _ = clustered()
    a = fit_codebook(x, KMeansConfig(num_units=5, niter=5, seed=3))
    b = fit_codebook(x, KMeansConfig(num_units=5, niter=5, seed=3))
    assert torch.equal(a.centroids, b.centroids)


def test_fit_and_assign_use_valid_frames_only() -> None:
    x, labels = clustered(num_clusters=2, n=60)
    # padding at 1e6: a codebook fitted on it would spend a centroid out there
    encoded = batch(x[:40], x[40:], pad_value=1e6)
    codebook = fit_codebook(encoded, KMeansConfig(num_units=2, niter=10))
    assert codebook.centroids.abs().max() < 100
    ids = codebook.assign(encoded)
    assert [len(i) for i in ids] == [40, 20]
    assert torch.equal(torch.cat(ids), codebook.assign(x))
    assert len(set(zip(torch.cat(ids).tolist(), labels.tolist()))) == 2


def test_fit_on_a_hidden_layer_and_assign_reads_the_same_layer() -> None:
    x, labels = clustered(num_clusters=3, n=90)
    noise = torch.randn(90, 8)  # layer 0 has no cluster structure
    hidden = torch.stack([noise, x])[:, None]  # (L=2, B=1, T, D)
    encoded = EncoderOutput(features=noise[None], lengths=torch.tensor([90]), frame_rate_hz=50.0, hidden_states=hidden)
    codebook = fit_codebook([encoded], KMeansConfig(num_units=3, niter=10, layer=1))
    assert codebook.layer == 1
    (ids,) = codebook.assign(encoded)
    assert len(set(zip(ids.tolist(), labels.tolist()))) == 3


def test_max_frames_subsamples_before_clustering() -> None:
    x, _ = clustered(n=200)
    codebook = fit_codebook(x, KMeansConfig(num_units=4, niter=3, max_frames=4))
    # 4 frames, 4 units: every centroid is exactly one of the input frames
    for centroid in codebook.centroids:
        assert (x == centroid).all(dim=1).any()


def test_instance_norm_makes_units_invariant_to_per_utterance_affine_changes() -> None:
    x, _ = clustered(num_clusters=3, n=90)
    codebook = fit_codebook([x, 3.0 * x + 5.0], KMeansConfig(num_units=3, niter=10, instance_norm=True))
    assert codebook.instance_norm
    assert torch.equal(codebook.assign(x), codebook.assign(-2.0 + 0.5 * x))


# ------------------------------------------------------------------------------------ sequences


def test_dedup_by_hand() -> None:
    runs = dedup(torch.tensor([5, 5, 2, 2, 2, 5, 7]))
    assert isinstance(runs, UnitRuns)
    assert runs.units.tolist() == [5, 2, 5, 7]
    assert runs.run_lengths.tolist() == [2, 3, 1, 1]
    units, run_lengths = dedup(torch.tensor([], dtype=torch.long))
    assert units.numel() == 0 and run_lengths.numel() == 0


def test_units_per_second_by_hand() -> None:
    # 3 runs over 6 frames at 50 Hz = 0.12 s -> 25 units/s
    assert units_per_second(torch.tensor([1, 1, 2, 2, 2, 3]), 50.0) == pytest.approx(25.0)
    # pooled: (2 + 1) runs over 7 frames at 50 Hz
    assert units_per_second([torch.tensor([1, 1, 2]), torch.tensor([3, 3, 3, 3])], 50.0) == pytest.approx(150 / 7)
    assert units_per_second(torch.arange(10), 50.0) == pytest.approx(50.0)  # no repeats: the frame rate


# ------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip_gives_identical_assignments(tmp_path) -> None:
    x, _ = clustered()
    config = KMeansConfig(num_units=5, niter=5, seed=1, layer=None)
    codebook = fit_codebook(x, config)
    save_codebook(codebook, tmp_path / "units")
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == ["codebook.json", "codebook.safetensors"]
    manifest = json.loads((tmp_path / "units" / "codebook.json").read_text())
    assert manifest["kind"] == "unit_codebook" and (manifest["num_units"], manifest["dim"]) == (5, 8)

    loaded = load_codebook(tmp_path / "units")
    assert torch.equal(loaded.centroids, codebook.centroids)
    assert loaded.config == config and loaded.layer is None and loaded.instance_norm is False
    probe = torch.randn(300, 8) * 10
    assert torch.equal(loaded.assign(probe), codebook.assign(probe))
    # a codebook also travels by pickle (e.g. to Ray workers): the faiss index is rebuilt on arrival
    shipped = pickle.loads(pickle.dumps(codebook))
    assert torch.equal(shipped.assign(probe), codebook.assign(probe))


def test_load_checks_the_manifest_against_the_weights(tmp_path) -> None:
    save_codebook(UnitCodebook(centroids=torch.eye(3)), tmp_path)
    manifest = json.loads((tmp_path / "codebook.json").read_text())
    (tmp_path / "codebook.json").write_text(json.dumps(manifest | {"dim": 4}))
    with pytest.raises(ValueError, match=r"holds centroids of shape \(3, 3\), manifest says \(3, 4\)"):
        load_codebook(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a unit codebook: codebook.json is missing"):
        load_codebook(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------ DinoSR init


def test_as_dinosr_init_is_a_detached_float_copy() -> None:
    codebook = UnitCodebook(centroids=torch.arange(12.0).reshape(4, 3))
    init = as_dinosr_init(codebook, codebook_size=4, dim=3)
    assert init.shape == (4, 3) and init.dtype == torch.float32 and not init.requires_grad
    init.zero_()
    assert codebook.centroids.sum() == 66.0
    with pytest.raises(ValueError, match="^DinoSR codebook has 8 codewords but the unit codebook has 4 units$"):
        as_dinosr_init(codebook, codebook_size=8)
    with pytest.raises(ValueError, match="^DinoSR codebook has dim 5 but the unit codebook's centroids have dim 3$"):
        as_dinosr_init(codebook, dim=5)


# ------------------------------------------------------------------------------------ errors


def test_errors_name_the_offending_value() -> None:
    x, _ = clustered(n=10)
    with pytest.raises(ValueError, match=r"^KMeansConfig.num_units must be an int >= 2, got 1$"):
        fit_codebook(x, KMeansConfig(num_units=1))
    with pytest.raises(
        ValueError,
        match=r"^num_units=11 exceeds the 10 valid frames given; k-means needs at least one frame per unit$",
    ):
        fit_codebook(x, KMeansConfig(num_units=11))
    codebook = UnitCodebook(centroids=torch.eye(2))
    with pytest.raises(ValueError, match=r"^features have dim 8 but the codebook's centroids have dim 2$"):
        codebook.assign(x)
    padded = r"^features must be \(T, D\) frames, got shape \(1, 10, 8\); pass an EncoderOutput for a padded batch$"
    with pytest.raises(ValueError, match=padded):
        codebook.assign(x[None])
    with pytest.raises(ValueError, match=r"^a codebook needs at least 2 centroids, got 1$"):
        UnitCodebook(centroids=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"^layer=3 is out of range for 2 hidden states$"):
        encoded = EncoderOutput(x[None], torch.tensor([10]), 50.0, hidden_states=torch.stack([x, x])[:, None])
        fit_codebook(encoded, KMeansConfig(num_units=2, layer=3))
    with pytest.raises(ValueError, match=r"^ids must be integer unit ids, got dtype torch.float32$"):
        dedup(torch.zeros(3))


# ------------------------------------------------------------------------------------ real encoder


def test_units_from_the_tiny_wav2vec2_on_a_real_clip(example_clips) -> None:
    from spokenlm.audio import batch_audio, load_audio
    from spokenlm.encoders.wav2vec2 import build_wav2vec2_encoder, wav2vec2_tiny

    torch.manual_seed(0)
    encoder = build_wav2vec2_encoder(wav2vec2_tiny()).eval()
    audio = batch_audio([load_audio(p) for p in example_clips])
    with torch.inference_mode():
        encoded = encoder(audio.wav, audio.lengths)
    codebook = fit_codebook(encoded, KMeansConfig(num_units=8, niter=5, layer=1))
    assert codebook.centroids.shape == (8, encoder.output_dim)
    ids = codebook.assign(encoded)
    assert [len(i) for i in ids] == encoded.lengths.tolist()
    assert all(0 <= int(i.min()) and int(i.max()) < 8 for i in ids)
    assert 0 < units_per_second(ids, encoded.frame_rate_hz) <= encoded.frame_rate_hz
