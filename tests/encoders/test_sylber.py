"""Tests for spokenlm/encoders/sylber.py: segmentation by construction, the norm threshold and the
distillation loss by hand, the network against transformers' HubertModel through the official
checkpoint layout, and a short training run."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from spokenlm.encoders.base import EncoderOutput
from spokenlm.encoders.sylber import (
    NormThresholdEstimator,
    SylberDistillation,
    SylberEncoderConfig,
    SylberObjectiveConfig,
    build_sylber_encoder,
    config_from_state_dict,
    load_sylber_encoder,
    official_state_dict_to_ours,
    pool_segments,
    save_sylber_encoder,
    segment,
    segment_batch,
    sylber_base,
    sylber_tiny,
)


def piecewise(lengths: list[int], *, dim: int = 16, gap: int = 7, gap_after: int = 3, seed: int = 0):
    """Pieces of constant orthogonal directions (norm 5) plus noise, a near-silent gap after piece
    ``gap_after``. Returns features (T, D) and the true segments."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0].T  # orthonormal rows
    parts, spans, t = [], [], 0
    for i, n in enumerate(lengths):
        parts.append(5.0 * directions[i].repeat(n, 1))
        spans.append((t, t + n))
        t += n
        if i + 1 == gap_after:
            parts.append(0.05 * torch.randn(gap, dim, generator=g))  # norm ~0.2 << 2.6
            t += gap
    x = torch.cat(parts)
    return x + 0.3 * torch.randn(x.shape, generator=g), spans


def in_plane(*angles_deg: float, dim: int = 8) -> list[torch.Tensor]:
    """Unit vectors at the given angles in the (e0, e1) plane, scaled to norm 5."""
    out = []
    for a in angles_deg:
        v = torch.zeros(dim)
        v[0], v[1] = math.cos(math.radians(a)), math.sin(math.radians(a))
        out.append(5 * v)
    return out


def assert_valid(segments: list[tuple[int, int]], frames: int) -> None:
    assert all(isinstance(s, int) and isinstance(e, int) for s, e in segments)
    assert all(0 <= s < e <= frames for s, e in segments)
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(segments, segments[1:]))  # ordered, disjoint


# ---------------------------------------------------------------------------------------------
# Segmentation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_exact_boundaries_with_noise_and_a_silent_gap(seed: int) -> None:
    x, truth = piecewise([8, 12, 6, 10, 9, 11], seed=seed)
    assert segment(x) == truth  # defaults: norm 2.6, merge 0.8
    assert segment(x.numpy()) == truth  # numpy in, same answer
    assert truth[2][1] == 26 and truth[3][0] == 33  # the gap [26, 33) belongs to no segment


def test_segments_are_ordered_disjoint_and_within_the_audio() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        frames = int(rng.integers(1, 120))
        x = np.cumsum(rng.normal(size=(frames, 6)), axis=0) + rng.normal(size=6) * 3  # smooth drift
        x[rng.random(frames) < 0.15] *= 0.01  # scattered non-speech frames
        for merge in (0.3, 0.8, 0.95):
            segments = segment(x, norm_threshold=1.0, merge_threshold=merge)
            assert_valid(segments, frames)
            norms = np.linalg.norm(x, axis=1)
            assert all((norms[s:e] >= 1.0).all() for s, e in segments)  # no non-speech inside
            covered = np.zeros(frames, bool)
            for s, e in segments:
                covered[s:e] = True
            assert (covered == (norms >= 1.0)).all()  # ...and every speech frame is in one


def test_merge_threshold_splits_or_joins() -> None:
    a, b = in_plane(0.0, math.degrees(math.acos(0.7)))  # cos(a, b) = 0.7
    x = torch.stack([a] * 6 + [b] * 6)
    assert segment(x, merge_threshold=0.8) == [(0, 6), (6, 12)]
    assert segment(x, merge_threshold=0.6) == [(0, 12)]


def test_post_pass_merges_adjacent_segments_with_similar_means() -> None:
    # a, then one b (orthogonal: the scan breaks), then m (between them) pulls the second mean to
    # cos 0.66 with a: merged at merge 0.5, kept apart at 0.7
    a, b, m = in_plane(0.0, 90.0, 45.0)
    x = torch.stack([a] * 5 + [b] + [m] * 10)
    assert segment(x, merge_threshold=0.5) == [(0, 16)]
    assert segment(x, merge_threshold=0.7) == [(0, 5), (5, 16)]


def test_refinement_moves_a_boundary_the_scan_placed_late() -> None:
    # x sits 44 deg from a (cos 0.72 >= 0.7: the scan keeps it with a) but 28.5 deg from b: the
    # window search hands it to b
    a, x_, b = in_plane(0.0, 44.0, math.degrees(math.acos(0.3)))
    x = torch.stack([a] * 6 + [x_] + [b] * 6)
    assert segment(x, merge_threshold=0.7) == [(0, 6), (6, 13)]


def test_no_speech_gives_no_segments() -> None:
    x = 0.1 * torch.randn(40, 8)  # norms ~0.3 < 2.6
    assert segment(x) == []
    assert segment(torch.zeros(0, 8)) == []
    assert segment(x, norm_threshold=0.0) != []  # everything is speech at threshold 0


def test_bad_inputs_raise_named_errors() -> None:
    with pytest.raises(ValueError, match=r"features must be \(T, D\), got shape \(3,\)"):
        segment(torch.ones(3))
    with pytest.raises(ValueError, match="merge_threshold must be a cosine similarity in \\[-1, 1\\], got 1.5"):
        segment(torch.ones(3, 2), merge_threshold=1.5)
    with pytest.raises(ValueError, match="norm_threshold must be a finite number >= 0, got -1"):
        segment(torch.ones(3, 2), norm_threshold=-1)
    with pytest.raises(ValueError, match=r"item 1 has length 9; lengths must be in \[0, 5\]"):
        segment_batch(torch.ones(2, 5, 3), torch.tensor([5, 9]))


def test_segment_batch_equals_per_item_and_ignores_padding() -> None:
    x0, truth0 = piecewise([8, 12, 6, 10], seed=0)
    x1, truth1 = piecewise([5, 9], gap_after=9, seed=1)
    batch = 100.0 * torch.ones(2, len(x0) + 4, 16)  # loud padding that would form its own segment
    batch[0, : len(x0)], batch[1, : len(x1)] = x0, x1
    out = segment_batch(batch, torch.tensor([len(x0), len(x1)]))
    assert out == [truth0, truth1] == [segment(x0), segment(x1)]


def test_pool_segments_by_hand() -> None:
    x = torch.arange(12.0).view(2, 3, 2)  # item 0 frames [0,1],[2,3],[4,5]; item 1 [6,7],[8,9],[10,11]
    embeddings, lengths, token = pool_segments(x, [[(0, 2)], [(0, 1), (2, 3)]])
    assert lengths.tolist() == [1, 2]
    torch.testing.assert_close(embeddings, torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[6.0, 7.0], [10.0, 11.0]]]))
    assert token.tolist() == [[0, 0, -1], [0, -1, 1]]


def test_segmentation_cost_is_linear_not_quadratic() -> None:
    # a correctness guard, not a timing test (bench/sylber_scaling.py times it): one long
    # utterance of repeated syllable-like pieces is segmented like its parts
    x, truth = piecewise([8, 12, 6, 10, 9, 11], seed=0)
    long = torch.cat([x] * 50)
    expected = [(s + k * len(x), e + k * len(x)) for k in range(50) for s, e in truth]
    assert segment(long) == expected


# ---------------------------------------------------------------------------------------------
# Online norm threshold


def test_norm_threshold_is_where_the_gaussians_cross() -> None:
    assert NormThresholdEstimator(init=(6.0, 1.0, 2.0, 1.0), decay=0.9).threshold() == pytest.approx(4.0)
    # the authors' stage-2 statistics put it at the published inference default
    published = NormThresholdEstimator(init=SylberObjectiveConfig().norm_stats_init, decay=0.9999)
    assert published.threshold() == pytest.approx(2.6, abs=1e-3)


def test_norm_statistics_follow_the_ema_formula() -> None:
    est = NormThresholdEstimator(init=(6.0, 1.0, 2.0, 1.0), decay=0.75)
    est.update(torch.tensor([8.0, 10.0]), torch.tensor([]))  # empty noise: skipped
    mean = 0.75 * 6.0 + 0.25 * 9.0
    assert float(est.signal_mean) == pytest.approx(mean)
    assert float(est.signal_var) == pytest.approx(0.75 * 1.0 + 0.25 * ((8 - mean) ** 2 + (10 - mean) ** 2) / 2)
    assert (float(est.noise_mean), float(est.noise_var)) == (2.0, 1.0)
    assert not list(est.parameters()) and len(est.state_dict()) == 4  # buffers, saved, no gradient


# ---------------------------------------------------------------------------------------------
# The network


def _wav(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(len(lengths), max(lengths), generator=g)
    for i, n in enumerate(lengths):
        wav[i, n:] = 0.0
    return wav, torch.tensor(lengths)


def tiny_conv() -> SylberEncoderConfig:
    return replace(sylber_tiny(), frontend="conv", conv_layers=((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2)


def test_presets() -> None:
    base, tiny = sylber_base(), sylber_tiny()
    base.validate()
    assert (base.model_dim, base.num_layers, base.norm_threshold, base.merge_threshold) == (768, 9, 2.6, 0.8)
    assert base.frame_rate_hz == tiny.frame_rate_hz == tiny_conv().frame_rate_hz == 50.0
    assert base.receptive_field == tiny.receptive_field == 400
    assert sum(p.numel() for p in build_sylber_encoder(tiny).parameters()) < 150_000
    with pytest.raises(ValueError, match="model_dim 64 is not divisible by 3 attention heads"):
        build_sylber_encoder(replace(tiny, num_heads=3))
    with pytest.raises(ValueError, match="frontend must be 'conv' or 'fbank', got 'mfcc'"):
        replace(tiny, frontend="mfcc").validate()


@pytest.mark.parametrize("config", [sylber_tiny(), tiny_conv()], ids=["fbank", "conv"])
def test_frames_lengths_and_padding_invariance(config: SylberEncoderConfig) -> None:
    torch.manual_seed(0)
    encoder = build_sylber_encoder(config).eval()
    wav, lengths = _wav([8000, 5600, 3210])
    out = encoder(wav, lengths)
    assert isinstance(out, EncoderOutput) and out.frame_rate_hz == 50.0
    assert out.lengths.tolist() == [(n - 400) // 320 + 1 for n in lengths.tolist()] == [24, 17, 9]
    assert out.features.shape == (3, 24, 64) and out.hidden_states.shape == (3, 3, 24, 64)
    assert out.features[2, 9:].abs().sum() == 0  # padding frames are zero
    for i, n in enumerate(lengths.tolist()):
        single = encoder(wav[i : i + 1, :n], lengths[i : i + 1])
        torch.testing.assert_close(single.features[0], out.features[i, : out.lengths[i]], atol=1e-5, rtol=1e-4)


def test_input_errors() -> None:
    encoder = build_sylber_encoder(sylber_tiny())
    with pytest.raises(ValueError, match=r"lengths\[0\]=300 is shorter than one frame \(400 samples\)"):
        encoder(torch.zeros(1, 300), torch.tensor([300]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(1,\) to match wav, got \(2,\)"):
        encoder(torch.zeros(1, 800), torch.tensor([800, 800]))


@pytest.mark.parametrize("config", [sylber_tiny(), tiny_conv()], ids=["fbank", "conv"])
def test_save_load_round_trip(tmp_path, config: SylberEncoderConfig) -> None:
    torch.manual_seed(0)
    encoder = build_sylber_encoder(replace(config, norm_threshold=1.5, merge_threshold=0.6)).eval()
    save_sylber_encoder(encoder, tmp_path)
    manifest = json.loads((tmp_path / "encoder.json").read_text())
    assert manifest["kind"] == "sylber" and manifest["format_version"] == 1
    loaded = load_sylber_encoder(tmp_path)
    assert loaded.config == encoder.config and not loaded.training
    wav, lengths = _wav([6000, 4000])
    torch.testing.assert_close(loaded(wav, lengths).hidden_states, encoder(wav, lengths).hidden_states)

    manifest["kind"] = "wav2vec2"
    (tmp_path / "encoder.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="describes a 'wav2vec2' encoder, not 'sylber'"):
        load_sylber_encoder(tmp_path)


# ---------------------------------------------------------------------------------------------
# The official checkpoint layout (transformers HubertModel names), against transformers itself


def _tiny_hubert(num_layers: int = 3):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    hf = HubertModel(
        HubertConfig(
            hidden_size=64,
            num_hidden_layers=num_layers,
            num_attention_heads=1,  # 64-dim heads, as BASE, so the loader can infer them
            intermediate_size=128,
            conv_dim=[16] * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        )
    ).eval()
    with torch.no_grad():  # random, non-trivial norms and biases
        for name, p in hf.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return hf


@pytest.fixture(scope="module")
def hubert_reference():
    """A 3-layer tiny HubertModel, its state dict and its hidden states on one normalised clip."""
    hf = _tiny_hubert()
    wav = torch.randn(1, 6400, generator=torch.Generator().manual_seed(1))
    wav = (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-7)  # what our encoder feeds it
    with torch.no_grad():
        hidden = hf(wav, output_hidden_states=True).hidden_states  # L + 1 states
    state = {k: v.clone().contiguous() for k, v in hf.state_dict().items()}
    return state, wav, hidden


def test_official_safetensors_checkpoint_matches_transformers(tmp_path, hubert_reference) -> None:
    from safetensors.torch import save_file

    state, wav, hidden = hubert_reference
    assert "encoder.pos_conv_embed.conv.parametrizations.weight.original1" in state
    save_file(state, str(tmp_path / "sylber.safetensors"))
    encoder = load_sylber_encoder(tmp_path / "sylber.safetensors")  # config inferred from shapes
    assert (encoder.config.model_dim, encoder.config.num_layers, encoder.config.num_heads) == (64, 3, 1)
    assert encoder.config.conv_layers[0] == (16, 10, 5) and encoder.config.conv_norm == "group"
    out = encoder(wav, torch.tensor([wav.shape[1]]))
    assert out.lengths.tolist() == [hidden[0].shape[1]] == [19]
    for ours, theirs in zip(out.hidden_states, hidden):
        torch.testing.assert_close(ours[0], theirs[0], atol=1e-4, rtol=1e-4)


def test_official_torch_checkpoint_old_names_first_layers(tmp_path, hubert_reference) -> None:
    """The authors' sylber.ckpt is a plain dict for torch.load; older torch names weight norm's
    tensors weight_g / weight_v. A config with fewer layers keeps the first ones (Sylber keeps 9)."""
    state, wav, hidden = hubert_reference
    old = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    renamed = {}
    for name, tensor in state.items():
        for new_spelling, old_spelling in old.items():
            name = name.replace(new_spelling, old_spelling)
        renamed[name] = tensor
    assert "encoder.pos_conv_embed.conv.weight_v" in renamed
    torch.save(renamed, tmp_path / "sylber.ckpt")
    config = replace(config_from_state_dict(official_state_dict_to_ours(state)), num_layers=2)
    encoder = load_sylber_encoder(tmp_path / "sylber.ckpt", config=config)
    assert len(encoder.layers) == 2
    out = encoder(wav, torch.tensor([wav.shape[1]]))
    torch.testing.assert_close(out.features[0], hidden[2][0], atol=1e-4, rtol=1e-4)

    torch.save({"ema": {"speech_model." + k: v for k, v in renamed.items()}}, tmp_path / "ema_dict.ckpt")
    again = load_sylber_encoder(tmp_path / "ema_dict.ckpt", config=config)
    torch.testing.assert_close(again(wav, torch.tensor([wav.shape[1]])).features, out.features)


def test_official_loader_names_what_does_not_fit(tmp_path, hubert_reference) -> None:
    from safetensors.torch import save_file

    state = dict(hubert_reference[0])
    save_file(state | {"lm_head.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"unknown tensor names \['lm_head.weight'\]"):
        load_sylber_encoder(tmp_path / "extra.safetensors")
    del state["encoder.layers.0.final_layer_norm.bias"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['layers.0.ffn_norm.bias'\]"):
        load_sylber_encoder(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="no sylber checkpoint at"):
        load_sylber_encoder(tmp_path / "nothing.ckpt")


# ---------------------------------------------------------------------------------------------
# The training objective


class FrameEncoder(nn.Module):
    """A SpeechEncoder for hand-computed losses: wav (B, T * D) read as frames (B, T, D), times a
    learnable scale; lengths in samples map to lengths // D frames."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.output_dim, self.frame_rate_hz = dim, 50.0
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        x = wav.view(wav.shape[0], -1, self.output_dim) * self.scale
        return EncoderOutput(features=x, lengths=lengths // self.output_dim, frame_rate_hz=50.0)


def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    item0 = [[3, 0], [5, 0], [0, 0.1], [0, 4], [0, 6]]  # two syllables around a silent frame
    item1 = [[2, 2], [2, 2], [2, 2], [100, 100], [100, 100]]  # one syllable, then loud padding
    wav = torch.tensor([item0, item1]).view(2, 10)
    return wav, torch.tensor([10, 6])  # samples: 5 and 3 frames of D = 2


def test_loss_is_squared_distance_to_teacher_segment_means_by_hand() -> None:
    # norm threshold (3 + 0) / 2 = 1.5 from equal-variance statistics; any merge in [0.5, 0.7]
    objective = SylberObjectiveConfig(norm_stats_init=(3.0, 1.0, 0.0, 1.0), norm_stats_decay=0.5)
    model = SylberDistillation(student=FrameEncoder(2), config=objective)
    with torch.no_grad():
        model.student.scale.fill_(2.0)  # the teacher keeps scale 1
    wav, lengths = _hand_case()
    out = model(wav, lengths, generator=torch.Generator().manual_seed(0))
    assert out.segments == [[(0, 2), (3, 5)], [(0, 3)]]
    assert out.norm_threshold == pytest.approx(1.5) and 0.5 <= out.merge_threshold <= 0.7
    # targets: [4,0] [4,0] | 0 | [0,5] [0,5] and [2,2] x3; student = 2 x teacher
    errors = [4.0, 36.0, 0.04, 9.0, 49.0] + [8.0] * 3
    assert out.loss.item() == pytest.approx(sum(errors) / 8)
    assert out.speech_fraction == pytest.approx(7 / 8)
    assert out.segments_per_second == pytest.approx(3 / (8 / 50))
    out.loss.backward()
    assert model.student.scale.grad is not None and model.teacher.scale.grad is None

    # speech norms come from the teacher, non-speech norms from the student (the authors' stage 2)
    speech = torch.tensor([3.0, 5.0, 4.0, 6.0] + [math.sqrt(8)] * 3, dtype=torch.float64)
    assert float(model.norm_stats.signal_mean) == pytest.approx(0.5 * 3.0 + 0.5 * float(speech.mean()))
    assert float(model.norm_stats.noise_mean) == pytest.approx(0.5 * 0.0 + 0.5 * 0.2)

    inside_only = SylberDistillation(student=FrameEncoder(2), config=replace(objective, nonspeech_weight=0.0))
    with torch.no_grad():
        inside_only.student.scale.fill_(2.0)
    assert inside_only(wav, lengths).loss.item() == pytest.approx((4 + 36 + 9 + 49 + 24) / 7)


def test_given_segments_replace_the_teachers_own() -> None:
    # the first stage: the teacher's frames pooled over segments from elsewhere (the loudness envelope)
    objective = SylberObjectiveConfig(norm_stats_init=(3.0, 1.0, 0.0, 1.0), norm_stats_decay=0.5)
    model = SylberDistillation(student=FrameEncoder(2), config=objective)
    with torch.no_grad():
        model.student.scale.fill_(2.0)
    wav, lengths = _hand_case()
    given = [[(0, 3), (4, 5)], [(1, 3)]]  # not what the teacher's own features would give
    out = model(wav, lengths, segments=given)
    assert out.segments == given and math.isnan(out.merge_threshold)
    # targets: mean([3,0],[5,0],[0,.1]) = [8/3, 1/30] x3 | 0 | [0,6]; then 0 | [2,2] x2; student = 2 x teacher
    item0 = torch.tensor([[6, 0], [10, 0], [0, 0.2], [0, 8], [0, 12]]) - torch.tensor(
        [[8 / 3, 1 / 30]] * 3 + [[0, 0], [0, 6]]
    )
    errors = item0.pow(2).sum(dim=1).tolist() + [32.0, 8.0, 8.0]
    assert out.loss.item() == pytest.approx(sum(errors) / 8)
    assert out.speech_fraction == pytest.approx(6 / 8)
    assert [float(getattr(model.norm_stats, n)) for n in ("signal_mean", "noise_mean")] == [3.0, 0.0]  # untouched
    for bad, message in (
        ([[(0, 3)]], "segments are given for 1 items, the batch has 2"),
        ([[(0, 3), (2, 5)], []], r"item 0: segments must be ordered, disjoint, non-empty and within its 5 frames"),
        ([[], [(0, 4)]], r"item 1: .* within its 3 frames, got \[\(0, 4\)\]"),
        ([[(2, 2)], []], "item 0: segments must be ordered, disjoint, non-empty"),
    ):
        with pytest.raises(ValueError, match=message):
            model(wav, lengths, segments=bad)


def test_merge_threshold_is_drawn_per_batch_within_the_range() -> None:
    model = SylberDistillation(student=FrameEncoder(2), config=SylberObjectiveConfig())
    wav, lengths = _hand_case()
    g = torch.Generator().manual_seed(0)
    drawn = [model(wav, lengths, generator=g).merge_threshold for _ in range(20)]
    assert all(0.5 <= m <= 0.7 for m in drawn) and len(set(drawn)) == 20
    fixed = SylberDistillation(student=FrameEncoder(2), config=SylberObjectiveConfig(merge_threshold_range=(0.8, 0.8)))
    assert fixed(wav, lengths).merge_threshold == 0.8


def test_ema_teacher_update_follows_the_formula() -> None:
    torch.manual_seed(0)
    model = SylberDistillation(student=build_sylber_encoder(sylber_tiny()), config=SylberObjectiveConfig(ema_decay=0.9))
    assert not model.teacher.training and all(not p.requires_grad for p in model.teacher.parameters())
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    model.update_teacher()
    student = model.student.state_dict()
    for name, value in model.teacher.state_dict().items():
        torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * student[name])
    model.train()
    assert model.student.training and not model.teacher.training


def test_tiny_training_loop_lowers_the_loss() -> None:
    """30 Adam steps of sylber_tiny on synthetic 'syllables' (harmonic tone bursts between pauses)."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(19_200) / 16_000  # 1.2 s
    wav = torch.zeros(4, t.numel())
    for b in range(4):
        start = 1600
        while start < 17_000:
            n = min(int(torch.randint(2400, 4000, (), generator=g)), t.numel() - start)  # 150-250 ms
            f0 = float(torch.empty(()).uniform_(100, 300, generator=g))
            tone = sum(torch.sin(2 * math.pi * k * f0 * t[:n]) / k for k in range(1, 6))
            wav[b, start : start + n] = tone * torch.hann_window(n)
            start += n + int(torch.randint(0, 1600, (), generator=g))
    lengths = torch.full((4,), t.numel())
    torch.manual_seed(0)
    model = SylberDistillation(student=build_sylber_encoder(sylber_tiny()), config=SylberObjectiveConfig()).train()
    optimizer = torch.optim.AdamW(model.student.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(wav, lengths, generator=g)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        model.update_teacher()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
