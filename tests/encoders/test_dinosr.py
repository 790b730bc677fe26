"""Tests for spokenlm/encoders/dinosr.py on tiny random models.

The objective's invariants are checked exactly: the teacher EMA equals its formula, a codebook update
equals a hand-computed EMA of sums and counts, codewords never move under gradient, and the loss does
not see unmasked frames. The fairseq loader is checked against a synthetic state dict written with the
authors' key names and BASE shapes (2 layers instead of 12, to stay fast).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spokenlm.encoders.base import EncoderOutput
from spokenlm.encoders.dinosr import (
    DinoSREncoder,
    DinoSREncoderConfig,
    DinoSRLossOutput,
    DinoSRPretrainer,
    build_dinosr_encoder,
    build_dinosr_pretrainer,
    compute_span_mask,
    convert_fairseq_dinosr_state_dict,
    dinosr_base,
    dinosr_tiny,
    dinosr_tiny_conformer,
    ema_codebook_update,
    ema_decay_at,
    instance_norm,
    load_dinosr_encoder,
    load_fairseq_dinosr,
    mel_filterbank,
    nearest_codeword,
    save_dinosr_encoder,
)

LENGTHS = [8000, 5600, 3210]  # samples at 16 kHz; the longest fills the batch, the others pad


def _small(**changes: object) -> DinoSREncoderConfig:
    """A few-10k-parameter fbank model with no dropout, for fast exact tests."""
    base = replace(
        dinosr_tiny(),
        fbank_channels=8,
        model_dim=32,
        num_heads=4,
        ffn_dim=64,
        num_layers=3,
        pos_conv_kernel=5,
        pos_conv_depth=2,
        pos_conv_groups=4,
        dropout=0.0,
        attention_dropout=0.0,
        num_codebooks=2,
        codebook_size=16,
    )
    return replace(base, **changes)


def _small_waveform(**changes: object) -> DinoSREncoderConfig:
    """BASE's conv kernels and strides (50 Hz, 400-sample field) with 16 channels."""
    convs = ((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2
    return _small(frontend="waveform", conv_feature_layers=convs, normalize_waveform=True, **changes)


def _build(config: DinoSREncoderConfig) -> DinoSREncoder:
    torch.manual_seed(0)
    return build_dinosr_encoder(config).eval()


def _pretrainer(config: DinoSREncoderConfig) -> DinoSRPretrainer:
    torch.manual_seed(0)
    return build_dinosr_pretrainer(config)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(len(LENGTHS), max(LENGTHS), generator=g) * 0.1  # (B, S)
    for i, n in enumerate(LENGTHS):
        wav[i, n:] = 0.0
    return wav, torch.tensor(LENGTHS)


def _conv_formula(n: int, convs: list[tuple[int, int]]) -> int:
    for kernel, stride in convs:
        n = (n - kernel) // stride + 1
    return n


# ---------------------------------------------------------------------------------------------
# Config and shapes


def test_presets() -> None:
    base = dinosr_base()
    base.validate()  # config only: BASE is never instantiated here
    assert (base.frontend, base.model_dim, base.num_layers, base.num_heads) == ("waveform", 768, 12, 12)
    assert base.ffn_dim == 3072
    assert (base.num_codebooks, base.codebook_size, base.codebook_decay) == (8, 256, 0.9)
    assert (base.mask_prob, base.mask_length) == (0.8, 10)
    assert (base.ema_decay, base.ema_end_decay, base.ema_anneal_steps) == (0.999, 0.9999, 30_000)
    assert (base.pos_conv_depth, base.pos_conv_kernel) == (5, 95 // 5)
    assert base.frame_rate_hz == 50.0 and base.receptive_field == 400 and base.feature_dim == 512

    tiny = dinosr_tiny()
    assert tiny.frontend == "fbank" and tiny.frame_rate_hz == 50.0 and tiny.receptive_field == 1360
    assert 128 <= tiny.model_dim <= 192 and 4 <= tiny.num_layers <= 6
    assert replace(tiny, fbank_subsampling=4).frame_rate_hz == 25.0
    encoder = build_dinosr_encoder(tiny)
    assert sum(p.numel() for p in encoder.parameters()) < 4_000_000
    assert encoder.output_dim == tiny.model_dim and encoder.frame_rate_hz == 50.0

    conformer = dinosr_tiny_conformer()
    assert conformer == replace(tiny, conv_module_kernel=15) and base.conv_module_kernel == 0
    with_conv = build_dinosr_encoder(conformer)
    names = {n for n, _ in with_conv.named_parameters()} - {n for n, _ in encoder.named_parameters()}
    assert names and all(".conv_module." in n or ".conv_layer_norm." in n for n in names)

    for config in (base, tiny, conformer, _small_waveform(layer=2)):
        assert DinoSREncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"frontend": "mfcc"}, "frontend must be 'waveform' or 'fbank', got 'mfcc'"),
        ({"fbank_subsampling": 3}, "fbank_subsampling must be 2 or 4, got 3"),
        (
            {"num_codebooks": 7, "num_layers": 6},
            "num_codebooks (7) takes one top teacher layer each; there are only 6 layers",
        ),
        ({"model_dim": 100, "num_heads": 3}, "model_dim 100 is not divisible by 3 attention heads"),
        ({"layer": 13}, "layer must be 'last', 'weighted' or an int in [0, 12], got 13"),
        ({"mask_prob": 0.0}, "mask_prob must be in (0, 1], got 0.0"),
        ({"conv_module_kernel": 4}, "conv_module_kernel must be 0 or an odd positive int, got 4"),
        (
            {"conv_feature_layers": ((512, 10, 0),)},
            "conv_feature_layers must be positive (channels, kernel, stride) tuples, got ((512, 10, 0),)",
        ),
    ],
)
def test_config_errors_name_the_value(changes: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        replace(dinosr_base(), **changes).validate()
    assert str(err.value) == message


@pytest.mark.parametrize(
    "config", [_small_waveform(), _small(), _small(fbank_subsampling=4)], ids=["waveform", "fbank-x2", "fbank-x4"]
)
def test_output_lengths_follow_the_frontend(config: DinoSREncoderConfig, batch) -> None:
    wav, lengths = batch
    encoder = _build(config)
    out = encoder(wav, lengths)
    if config.frontend == "waveform":
        convs = [(k, s) for _, k, s in config.conv_feature_layers]
    else:
        convs = [(400, 160), (3, 2), (3, config.fbank_subsampling // 2)]  # STFT frames, conv2d, conv2d
    expected = [_conv_formula(n, convs) for n in LENGTHS]
    assert isinstance(out, EncoderOutput)
    assert out.lengths.tolist() == expected and out.lengths.dtype == torch.int64
    assert out.features.shape == (3, max(expected), config.model_dim)
    assert out.hidden_states.shape == (config.num_layers + 1, 3, max(expected), config.model_dim)
    assert out.frame_rate_hz == config.frame_rate_hz
    assert torch.equal(out.features, out.hidden_states[-1])
    for i, n in enumerate(expected):  # padded frames are zero in every state
        assert out.hidden_states[:, i, n:].abs().sum() == 0
    # frames advance at frame_rate_hz: one more second of audio, frame_rate_hz more frames
    one_s = int(encoder.output_lengths(torch.tensor([32000])) - encoder.output_lengths(torch.tensor([16000])))
    assert one_s == config.frame_rate_hz


@pytest.mark.parametrize(
    "config", [_small(), _small_waveform(), _small(conv_module_kernel=5)], ids=["fbank", "waveform", "conformer"]
)
def test_batched_equals_single_under_padding(config: DinoSREncoderConfig, batch) -> None:
    wav, lengths = batch
    encoder = _build(config)
    with torch.no_grad():
        batched = encoder(wav, lengths)
        for i, n in enumerate(LENGTHS):
            single = encoder(wav[i : i + 1, :n], torch.tensor([n]))
            frames = int(single.lengths[0])
            assert frames == int(batched.lengths[i])
            torch.testing.assert_close(
                batched.hidden_states[:, i, :frames], single.hidden_states[:, 0], atol=1e-5, rtol=1e-5
            )


def test_layer_choice(batch) -> None:
    wav, lengths = batch
    encoder = _build(_small(layer=1))
    out = encoder(wav, lengths)
    assert torch.equal(out.features, out.hidden_states[1])
    weighted = _build(_small(layer="weighted"))
    out = weighted(wav, lengths)
    torch.testing.assert_close(out.features, out.hidden_states.mean(dim=0))  # zero logits = plain mean


def test_input_errors(batch) -> None:
    wav, lengths = batch
    encoder = _build(_small())
    with pytest.raises(ValueError, match=r"^lengths\[0\]=1000 is shorter than one frame \(1360 samples\)$"):
        encoder(wav[:1, :1000], torch.tensor([1000]))
    with pytest.raises(ValueError, match=r"^lengths must have shape \(3,\) to match wav, got \(2,\)$"):
        encoder(wav, lengths[:2])
    with pytest.raises(ValueError, match=r"^lengths\[0\]=9000 exceeds wav.shape\[1\]=8000$"):
        encoder(wav, torch.tensor([9000, 10, 10]))


def test_mel_filterbank_matches_torchaudio() -> None:
    import torchaudio.functional as AF

    reference = AF.melscale_fbanks(257, 0.0, 8000.0, 80, 16000, norm=None, mel_scale="htk")
    torch.testing.assert_close(mel_filterbank(257, 80, 16000), reference, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Pieces of the objective


def test_instance_norm_respects_lengths() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, 4, generator=g) * 3 + 2
    lengths = torch.tensor([9, 5, 1])
    out = instance_norm(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        if n > 1:
            reference = F.instance_norm(x[i : i + 1, :n].transpose(1, 2)).transpose(1, 2)[0]  # (n, D)
        else:  # torch refuses one frame; its variance is 0, so the frame normalises to 0
            reference = torch.zeros(1, 4)
        torch.testing.assert_close(out[i, :n], reference)
        assert out[i, n:].abs().sum() == 0
    garbage = x.clone()
    garbage[1, 5:] = 1e4  # padding content must not matter
    torch.testing.assert_close(instance_norm(garbage, lengths), out)


def test_span_mask() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([400, 250, 7])
    mask = compute_span_mask(lengths, mask_prob=0.8, span_length=10, generator=g)
    assert mask.shape == (3, 400) and mask.dtype == torch.bool
    for i, n in enumerate(lengths.tolist()):
        assert not mask[i, n:].any() and mask[i, :n].any()
    assert mask[2, :7].all()  # shorter than one span: the whole item is one span
    # overlapping spans of 10 starting at ~8 % of frames cover 1 - (1 - 0.08)^10 ≈ 57 % of them
    long = compute_span_mask(torch.tensor([20_000]), mask_prob=0.8, span_length=10, generator=g)
    assert 0.52 < long.float().mean() < 0.60
    # every run of masked frames is at least one span long
    runs = torch.diff(torch.cat([torch.tensor([0]), long[0].int(), torch.tensor([0])]))
    starts, ends = torch.nonzero(runs == 1).flatten(), torch.nonzero(runs == -1).flatten()
    assert ((ends - starts) >= 10).all()


def test_ema_decay_schedule_endpoints() -> None:
    base = dinosr_base()
    kw = dict(start=base.ema_decay, end=base.ema_end_decay, anneal_steps=base.ema_anneal_steps)
    assert ema_decay_at(0, **kw) == 0.999
    assert ema_decay_at(30_000, **kw) == 0.9999
    assert ema_decay_at(10**6, **kw) == 0.9999
    assert ema_decay_at(15_000, **kw) == pytest.approx(0.99945, abs=1e-12)
    assert ema_decay_at(5, start=0.9, end=0.99, anneal_steps=0) == 0.99


def test_ema_step_equals_formula() -> None:
    pretrainer = _pretrainer(_small(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_steps=10))
    with torch.no_grad():  # make student and teacher differ everywhere
        for p in pretrainer.student.parameters():
            p.add_(torch.randn_like(p))
    teacher_before = {k: v.clone() for k, v in pretrainer.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in pretrainer.student.state_dict().items()}

    decay = pretrainer.ema_step(5)
    assert decay == pytest.approx(0.945)
    for name, value in pretrainer.teacher.state_dict().items():
        s = student_before[f"encoder.{name}"]
        if name.startswith("pos_conv."):  # shared with the student, as the authors' skip_keys
            assert torch.equal(value, s), name
        else:
            torch.testing.assert_close(value, decay * teacher_before[name] + (1 - decay) * s, rtol=1e-6, atol=1e-7)
    for name, value in pretrainer.student.state_dict().items():
        assert torch.equal(value, student_before[name]), name  # the student is only read


def test_nearest_codeword() -> None:
    codewords = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.tensor([[1.0, 1.0], [9.0, -1.0], [2.0, 7.0], [-5.0, -5.0]])
    assert nearest_codeword(x, codewords).tolist() == [0, 1, 2, 0]


def test_codebook_update_equals_hand_computed_ema() -> None:
    # V=3 codewords in D=2, decay 0.9; codeword 1 gets no frame this batch and must keep its state
    sums = torch.tensor([[2.0, 2.0], [5.0, 5.0], [0.0, -4.0]])
    counts = torch.tensor([2.0, 1.0, 4.0])
    targets = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    codes = torch.tensor([0, 0, 2])
    batch_counts = torch.tensor([2.0, 0.0, 1.0])
    batch_sums = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    assert torch.equal(torch.bincount(codes, minlength=3).float(), batch_counts)
    assert torch.equal(torch.zeros(3, 2).index_add_(0, codes, targets), batch_sums)

    new_sums, new_counts = ema_codebook_update(sums, counts, batch_sums, batch_counts, 0.9)
    # by hand: 0.9 * old + 0.1 * batch for codewords 0 and 2
    torch.testing.assert_close(new_counts, torch.tensor([0.9 * 2 + 0.1 * 2, 1.0, 0.9 * 4 + 0.1 * 1]))
    torch.testing.assert_close(
        new_sums, torch.tensor([[0.9 * 2 + 0.1 * 4, 0.9 * 2 + 0.0], [5.0, 5.0], [0.0, 0.9 * -4 + 0.1 * 2]])
    )

    # the same through the pretrainer's buffers (codebook 1 of 2; codebook 0 sees no frame)
    pretrainer = _pretrainer(_small(codebook_size=3))
    K, V, D = 2, 3, 32
    with torch.no_grad():
        pretrainer.codebook_sums.zero_()[1, :, :2] = sums
        pretrainer.codebook_counts.copy_(torch.stack([torch.ones(3), counts]))
    out_sums = torch.zeros(K, V, D)
    out_sums[1, :, :2] = batch_sums
    out = DinoSRLossOutput(
        loss=torch.tensor(0.0), per_codebook_loss=torch.zeros(K), perplexity=torch.ones(K), accuracy=torch.zeros(K),
        num_masked=3, batch_sums=out_sums, batch_counts=torch.stack([torch.zeros(3), batch_counts]),
    )
    pretrainer.update_codebooks(out)
    torch.testing.assert_close(pretrainer.codebook_counts, torch.stack([torch.ones(3), new_counts]))
    torch.testing.assert_close(pretrainer.codebook_sums[1, :, :2], new_sums)
    torch.testing.assert_close(pretrainer.codewords[1, :, :2], new_sums / new_counts[:, None])


# ---------------------------------------------------------------------------------------------
# The pre-trainer


def test_forward_statistics(batch) -> None:
    wav, lengths = batch
    pretrainer = _pretrainer(_small()).train()
    out = pretrainer(wav, lengths, generator=torch.Generator().manual_seed(0))
    K, V = 2, 16
    assert out.loss.shape == () and out.loss.requires_grad
    assert out.per_codebook_loss.shape == out.perplexity.shape == out.accuracy.shape == (K,)
    torch.testing.assert_close(out.loss.detach(), out.per_codebook_loss.mean())
    assert out.batch_counts.shape == (K, V) and out.batch_sums.shape == (K, V, 32)
    assert out.batch_counts.sum(dim=1).tolist() == [out.num_masked] * K
    assert ((1.0 <= out.perplexity) & (out.perplexity <= V)).all()
    usage = out.batch_counts / out.num_masked
    torch.testing.assert_close(out.perplexity, torch.exp(-(usage * usage.clamp(min=1e-12).log()).sum(1)))
    assert abs(float(out.loss.detach()) - math.log(V)) < 1.0  # untrained heads: near-uniform predictions


def test_codewords_move_only_under_the_explicit_update(batch) -> None:
    wav, lengths = batch
    pretrainer = _pretrainer(_small()).train()
    assert not pretrainer.codebook_sums.requires_grad and not pretrainer.codebook_counts.requires_grad
    assert not pretrainer.codewords.requires_grad
    param_ids = {id(p) for p in pretrainer.parameters()}
    assert id(pretrainer.codebook_sums) not in param_ids and id(pretrainer.codebook_counts) not in param_ids
    assert not any(p.requires_grad for p in pretrainer.teacher.parameters())

    frozen = {k: v.clone() for k, v in pretrainer.state_dict().items() if k.startswith(("codebook_", "teacher."))}
    student = {k: v.clone() for k, v in pretrainer.student.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in pretrainer.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    out = pretrainer(wav, lengths, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    optimizer.step()
    state = pretrainer.state_dict()
    for key, value in frozen.items():
        assert torch.equal(state[key], value), key
    assert any(not torch.equal(v, student[k]) for k, v in pretrainer.student.state_dict().items())

    pretrainer.update_codebooks(out)
    assert not torch.equal(pretrainer.codebook_sums, frozen["codebook_sums"])
    assert not torch.equal(pretrainer.codebook_counts, frozen["codebook_counts"])


def test_loss_only_counts_masked_frames(batch) -> None:
    wav, lengths = batch
    pretrainer = _pretrainer(_small()).eval()  # no dropout: two passes compute the same thing
    frames = pretrainer.student.output_lengths(lengths)
    mask = compute_span_mask(frames, mask_prob=0.3, span_length=5, generator=torch.Generator().manual_seed(3))
    valid = torch.arange(mask.shape[1]) < frames[:, None]
    reference = pretrainer(wav, lengths, mask=mask).loss

    def perturb(where: torch.Tensor):
        def hook(module, args, output):
            x, ffn = output
            return torch.where(where[:, :, None], torch.randn_like(x) * 100, x), ffn

        return pretrainer.student.encoder.layers[-1].register_forward_hook(hook)

    handle = perturb(valid & ~mask)  # the student's last layer at every unmasked frame
    try:
        assert torch.equal(pretrainer(wav, lengths, mask=mask).loss, reference)
    finally:
        handle.remove()
    one_masked = torch.zeros_like(mask)
    one_masked.view(-1)[int(torch.nonzero(mask.view(-1))[0])] = True
    handle = perturb(one_masked)  # a single masked frame does count
    try:
        assert not torch.equal(pretrainer(wav, lengths, mask=mask).loss, reference)
    finally:
        handle.remove()

    with pytest.raises(ValueError, match="^mask selects padded frames"):
        pretrainer(wav, lengths, mask=torch.ones_like(mask))
    with pytest.raises(ValueError, match="^mask selects no frame$"):
        pretrainer(wav, lengths, mask=torch.zeros_like(mask))


def _speechlike(batch_size: int, num_samples: int, g: torch.Generator) -> torch.Tensor:
    """Random-ish audio with structure: 100 ms segments, each a harmonic tone from a small set of
    pitches and timbres, plus noise."""
    t = torch.arange(1600) / 16000
    pitches = torch.tensor([110.0, 150.0, 220.0, 300.0])
    wav = torch.zeros(batch_size, num_samples)
    for b in range(batch_size):
        for start in range(0, num_samples, 1600):
            f0 = pitches[torch.randint(4, (1,), generator=g)]
            bright = float(torch.rand((), generator=g))
            seg = sum(bright**h * torch.sin(2 * math.pi * f0 * (h + 1) * t) for h in range(6))
            wav[b, start : start + 1600] = (seg * torch.hann_window(1600))[: num_samples - start]
    return 0.1 * wav + 0.01 * torch.randn(batch_size, num_samples, generator=g)


@pytest.mark.slow
def test_tiny_training_run_lowers_the_loss() -> None:
    config = _small(fbank_channels=16, model_dim=64, ffn_dim=128, num_layers=2, pos_conv_groups=8, codebook_size=32)
    pretrainer = _pretrainer(config).train()
    optimizer = torch.optim.AdamW([p for p in pretrainer.parameters() if p.requires_grad], lr=2e-3)
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([24000, 20000, 16000, 12000])
    losses, started = [], time.perf_counter()
    for step in range(30):
        wav = _speechlike(4, 24000, g)
        out = pretrainer(wav, lengths, generator=g)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pretrainer.update_codebooks(out)
        pretrainer.ema_step(step)
        losses.append(float(out.loss.detach()))
    assert all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, losses
    assert (out.perplexity > 1.5).all()
    assert time.perf_counter() - started < 20


# ---------------------------------------------------------------------------------------------
# Save, load, fairseq checkpoints


def test_save_load_round_trip(tmp_path: Path, batch) -> None:
    wav, lengths = batch
    encoder = _build(_small(layer="weighted"))
    with torch.no_grad():
        encoder.layer_logits.copy_(torch.arange(4.0))
    save_dinosr_encoder(encoder, tmp_path / "enc")
    manifest = json.loads((tmp_path / "enc" / "encoder.json").read_text())
    assert manifest["kind"] == "dinosr" and manifest["format_version"] == 1
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["encoder.json", "model.safetensors"]

    loaded = load_dinosr_encoder(tmp_path / "enc")
    assert not loaded.training and loaded.config == encoder.config
    assert loaded.state_dict().keys() == encoder.state_dict().keys()
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(wav, lengths).features, encoder(wav, lengths).features, atol=0, rtol=0)
        relayered = load_dinosr_encoder(tmp_path / "enc", layer=2)
        out = relayered(wav, lengths)
        assert torch.equal(out.features, out.hidden_states[2])

    (tmp_path / "enc" / "encoder.json").write_text(json.dumps(manifest | {"kind": "wav2vec2"}))
    with pytest.raises(ValueError, match="describes a 'wav2vec2' encoder, not 'dinosr'"):
        load_dinosr_encoder(tmp_path / "enc")


def _fairseq_state(layers: int, codebooks: int, g: torch.Generator) -> dict:
    """What the authors' DinosrModel.state_dict() holds for BASE shapes, written by hand from their
    code (fairseq ConvFeatureExtractionModel(mode="layer_norm"), stacked pos_conv, EMAModule)."""

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    state: dict = {}
    in_ch = 1
    for i, (ch, k, _) in enumerate(((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2):
        state[f"feature_extractor.conv_layers.{i}.0.weight"] = r(ch, in_ch, k)  # conv_bias=False
        state[f"feature_extractor.conv_layers.{i}.2.1.weight"] = r(ch)  # Fp32LayerNorm inside TransposeLast
        state[f"feature_extractor.conv_layers.{i}.2.1.bias"] = r(ch)
        in_ch = ch
    state |= {"layer_norm.weight": r(512), "layer_norm.bias": r(512)}
    state |= {"post_extract_proj.weight": r(768, 512), "post_extract_proj.bias": r(768), "mask_emb": r(768)}

    def encoder(prefix: str) -> dict:
        enc = {}
        for i in range(5):  # pos_conv_depth 5, kernel 95 // 5 = 19, 16 groups
            enc[f"{prefix}pos_conv.{i}.0.weight"] = r(768, 48, 19)
            enc[f"{prefix}pos_conv.{i}.0.bias"] = r(768)
        enc[f"{prefix}layer_norm.weight"], enc[f"{prefix}layer_norm.bias"] = r(768), r(768)
        for n in range(layers):
            p = f"{prefix}layers.{n}."
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                enc[f"{p}self_attn.{proj}.weight"], enc[f"{p}self_attn.{proj}.bias"] = r(768, 768), r(768)
            for norm in ("self_attn_layer_norm", "final_layer_norm"):
                enc[f"{p}{norm}.weight"], enc[f"{p}{norm}.bias"] = r(768), r(768)
            enc[f"{p}fc1.weight"], enc[f"{p}fc1.bias"] = r(3072, 768), r(3072)
            enc[f"{p}fc2.weight"], enc[f"{p}fc2.bias"] = r(768, 3072), r(768)
        return enc

    state |= encoder("encoder.")
    state["_ema"] = encoder("")  # EMAModule.fp32_params: the teacher encoder's own state dict
    for k in range(codebooks):
        state[f"heads.{k}.weight"], state[f"heads.{k}.bias"] = r(256, 768), r(256)
        state[f"_codebook{k}"] = r(256, 768)  # sums
        state[f"_codebook_cnts{k}"] = torch.rand(256, generator=g) + 0.5
    return state


FAIRSEQ_CFG = {
    "model": {
        "_name": "dinosr", "extractor_mode": "layer_norm", "encoder_layerdrop": 0.05, "dropout_input": 0.0,
        "feature_grad_mult": 1.0, "encoder_embed_dim": 768, "discrete": True, "codebook_size": 256,
        "average_top_k_layers": 2, "normal_init_codebook": False, "codebook_init_decay": 0.9,
        "instance_norm_target_layer": True, "mask_prob": 0.8, "mask_length": 10, "pos_conv_depth": 5,
        "conv_pos": 95, "ema_decay": 0.999, "ema_end_decay": 0.9999, "ema_anneal_end_step": 30000,
        "ema_transformer_only": True, "ema_layers_only": True, "require_same_masks": True, "encoder_layers": 2,
    },
    "task": {"_name": "audio_pretraining", "normalize": True},
}


def _check_mapping(pretrainer: DinoSRPretrainer, state: dict) -> None:
    ours = pretrainer.state_dict()
    pairs = {
        "student.feature_extractor.conv_layers.0.conv.weight": "feature_extractor.conv_layers.0.0.weight",
        "student.feature_extractor.conv_layers.6.norm.bias": "feature_extractor.conv_layers.6.2.1.bias",
        "student.layer_norm.weight": "layer_norm.weight",
        "student.post_extract_proj.weight": "post_extract_proj.weight",
        "student.encoder.pos_conv.4.conv.weight": "encoder.pos_conv.4.0.weight",
        "student.encoder.layer_norm.bias": "encoder.layer_norm.bias",
        "student.encoder.layers.1.self_attn.k_proj.weight": "encoder.layers.1.self_attn.k_proj.weight",
        "student.encoder.layers.0.self_attn.out_proj.bias": "encoder.layers.0.self_attn.out_proj.bias",
        "student.encoder.layers.1.fc2.weight": "encoder.layers.1.fc2.weight",
        "student.encoder.layers.0.final_layer_norm.weight": "encoder.layers.0.final_layer_norm.weight",
        "mask_emb": "mask_emb",
        "heads.1.weight": "heads.1.weight",
    }
    for our_key, their_key in pairs.items():
        assert torch.equal(ours[our_key], state[their_key]), our_key
    for our_key, their_key in {
        "teacher.pos_conv.0.conv.bias": "pos_conv.0.0.bias",
        "teacher.layers.1.self_attn.q_proj.weight": "layers.1.self_attn.q_proj.weight",
        "teacher.layer_norm.weight": "layer_norm.weight",
    }.items():
        assert torch.equal(ours[our_key], state["_ema"][their_key]), our_key
    for k in range(2):
        assert torch.equal(ours["codebook_sums"][k], state[f"_codebook{k}"])
        assert torch.equal(ours["codebook_counts"][k], state[f"_codebook_cnts{k}"])
    torch.testing.assert_close(pretrainer.codewords[1], state["_codebook1"] / state["_codebook_cnts1"][:, None])


@pytest.mark.slow
def test_loads_the_authors_fairseq_checkpoint(tmp_path: Path) -> None:
    state = _fairseq_state(layers=2, codebooks=2, g=torch.Generator().manual_seed(0))
    expected = replace(dinosr_base(), num_layers=2, num_codebooks=2)

    # a fairseq .pt: plain containers, so torch.load(weights_only=True) reads it
    torch.save({"model": state, "cfg": FAIRSEQ_CFG}, tmp_path / "dinosr.pt")
    assert torch.load(tmp_path / "dinosr.pt", weights_only=True)["model"]["_ema"].keys() == state["_ema"].keys()
    pretrainer = load_fairseq_dinosr(tmp_path / "dinosr.pt")
    assert pretrainer.config == expected
    _check_mapping(pretrainer, state)

    encoder = load_dinosr_encoder(tmp_path / "dinosr.pt")
    assert not encoder.training and encoder.config == expected
    assert torch.equal(encoder.encoder.layers[1].fc1.weight, state["encoder.layers.1.fc1.weight"])
    with torch.no_grad():
        out = encoder(torch.randn(1, 3200) * 0.1, torch.tensor([3200]))
    assert out.features.shape == (1, 9, 768) and torch.isfinite(out.features).all()

    # the same state dict as safetensors: the teacher flattened to "_ema.<name>", config given
    from safetensors.torch import save_file

    flat = {k: v for k, v in state.items() if k != "_ema"} | {f"_ema.{k}": v for k, v in state["_ema"].items()}
    save_file(flat, str(tmp_path / "dinosr.safetensors"))
    _check_mapping(load_fairseq_dinosr(tmp_path / "dinosr.safetensors", config=expected), state)

    with pytest.raises(ValueError, match=r"unexpected keys in the DinoSR checkpoint: \['quantizer.vars'\]"):
        convert_fairseq_dinosr_state_dict(state | {"quantizer.vars": torch.zeros(1)}, expected)
    with pytest.raises(ValueError, match=r"encoder.layers.0.fc1.weight has shape \(3072, 768\), the config expects"):
        torch.save({"model": state, "cfg": FAIRSEQ_CFG}, tmp_path / "wrong.pt")
        load_dinosr_encoder(tmp_path / "wrong.pt", config=replace(expected, ffn_dim=1024))


def test_loads_a_finetuned_fairseq_checkpoint(tmp_path: Path, batch) -> None:
    """wav2vec2_asr wraps the pre-trained model as w2v_encoder.w2v_model.* with its config in w2v_args."""
    wav, lengths = batch
    config = _small_waveform(conv_bias=False)
    reference = _build(config)
    inverse = [
        (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
        (r"^feature_extractor\.conv_layers\.(\d+)\.norm\.", r"feature_extractor.conv_layers.\1.2.1."),
        (r"^encoder\.pos_conv\.(\d+)\.conv\.", r"encoder.pos_conv.\1.0."),
    ]
    state = {}
    for key, value in reference.state_dict().items():
        for pattern, repl in inverse:
            key = re.sub(pattern, repl, key)
        state[f"w2v_encoder.w2v_model.{key}"] = value
    state["w2v_encoder.proj.weight"] = torch.zeros(5, 32)  # the CTC head: not ours
    model_cfg = {
        "_name": "dinosr", "extractor_mode": "layer_norm",
        "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] * 2",
        "encoder_embed_dim": 32, "encoder_layers": 3, "encoder_attention_heads": 4, "encoder_ffn_embed_dim": 64,
        "pos_conv_depth": 2, "conv_pos": 10, "conv_pos_groups": 4, "dropout": 0.0, "attention_dropout": 0.0,
        "average_top_k_layers": 2, "codebook_size": 16, "discrete": True,
    }
    cfg = {"model": {"_name": "wav2vec_ctc", "w2v_args": {"model": model_cfg, "task": {"normalize": True}}}}
    torch.save({"model": state, "cfg": cfg}, tmp_path / "ft.pt")
    encoder = load_dinosr_encoder(tmp_path / "ft.pt")
    assert encoder.config.pos_conv_kernel == 5 and encoder.config.normalize_waveform
    with torch.no_grad():
        torch.testing.assert_close(encoder(wav, lengths).hidden_states, reference(wav, lengths).hidden_states)
    with pytest.raises(ValueError, match="fine-tuned DinoSR checkpoint has no teacher"):
        load_fairseq_dinosr(tmp_path / "ft.pt")
