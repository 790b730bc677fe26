"""Recipe `sylber` (Sylber self-distillation) on the tiny espeak corpus: the energy VAD of the norm statistics and
the noise augmentation by construction, then a short run that learns, resumes the whole distillation state,
and writes an encoder plus the thresholds to segment with; a DinoSR encoder works as the student."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from spokenlm.audio import SAMPLE_RATE
from spokenlm.recipes.sylber import SylberTrainConfig, add_noise, energy_speech_frames, train
from spokenlm.train.loop import OptimConfig


def _config(out: Path, manifest: Path, max_steps: int, **changes) -> SylberTrainConfig:
    fields = dict(
        out_dir=str(out), manifest=str(manifest), student="sylber_tiny", bootstrap_steps=30, norm_init_batches=2,
        max_batch_s=12.0, log_every=5, eval_every=10, optim=OptimConfig(lr=3e-3, warmup_steps=5, max_steps=max_steps),
    )  # fmt: skip
    return SylberTrainConfig(**{**fields, **changes})


def test_energy_vad_marks_quiet_frames_as_non_speech():
    hop = SAMPLE_RATE // 50  # 20 ms frames
    tone = 0.5 * torch.sin(torch.arange(10 * hop) * 2 * math.pi * 220 / SAMPLE_RATE)
    wav = torch.cat([1e-3 * torch.randn(5 * hop), tone, torch.zeros(5 * hop)])  # -45 dB noise, tone, silence
    batch = torch.stack([wav, torch.cat([tone, torch.zeros(10 * hop)])])  # the second item: 10 valid frames
    speech = energy_speech_frames(batch, torch.tensor([20, 10]), num_frames=20, frame_rate_hz=50.0, nonspeech_db=35.0)
    assert speech[0].tolist() == [False] * 5 + [True] * 10 + [False] * 5
    assert speech[1].tolist() == [True] * 10 + [False] * 10  # padding is never speech


def test_noise_keeps_padding_silent_and_hits_the_snr():
    g = torch.Generator().manual_seed(0)
    wav = torch.zeros(2, 32000)
    wav[:, :16000] = 0.3 * torch.randn(2, 16000, generator=g)
    lengths = torch.tensor([16000, 16000])
    noisy = add_noise(wav, lengths, prob=1.0, snr_db=(10.0, 10.0), generator=g)
    assert torch.equal(noisy[:, 16000:], wav[:, 16000:])
    snr = 10 * torch.log10(wav[:, :16000].pow(2).mean(1) / (noisy - wav)[:, :16000].pow(2).mean(1))
    torch.testing.assert_close(snr, torch.tensor([10.0, 10.0]), atol=0.3, rtol=0)
    assert torch.equal(add_noise(wav, lengths, prob=0.0, snr_db=(10.0, 10.0), generator=g), wav)


def test_sylber_learns_resumes_and_writes_its_outputs(tiny_corpus, tmp_path):
    from spokenlm.audio import load_audio
    from spokenlm.compress.syllable import SyllableCompressorConfig
    from spokenlm.demo import build_untrained_bundle
    from spokenlm.encoders import load_encoder
    from spokenlm.encoders.sylber import SylberEncoder
    from spokenlm.model import load_bundle

    out = tmp_path / "out"
    first = train(_config(out, tiny_corpus, max_steps=50))
    assert first["steps"] == 50 and first["workers"] == 1
    # learned: the held-out distillation loss falls from where distillation started (after the bootstrap)
    assert first["heldout_loss"] < 0.9 * first["heldout_loss_start"]
    signal_mean, _, noise_mean, _ = first["norm_stats_init"]
    assert signal_mean > noise_mean  # the first stage opened a gap between speech and non-speech norms
    # the threshold to segment with lies between the final student's speech and non-speech norms
    signal_mean, _, noise_mean, _ = first["norm_stats_final"]
    assert noise_mean < first["norm_threshold"] < signal_mean and first["norm_threshold_online"] > 0

    # a rerun at the same max_steps restores student, teacher and norm statistics: same scores
    again = train(_config(out, tiny_corpus, max_steps=50))
    assert again["steps"] == 50 and again["heldout_loss"] == first["heldout_loss"]
    assert again["norm_threshold"] == first["norm_threshold"]
    resumed = train(_config(out, tiny_corpus, max_steps=70))
    assert resumed["steps"] == 70 and resumed["hours_seen"] == pytest.approx(first["hours_seen"] * 1.4, rel=0.1)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["step"] == 0) == 1  # the baseline is measured once, not on resume
    assert sum(1 for r in rows if "init_signal_mean" in r) == 1  # the bootstrap ends once
    assert [r["step"] for r in rows if "bootstrap_loss" in r or "loss" in r] == list(range(5, 71, 5))
    assert (out / "loss.png").stat().st_size > 1000

    sylber = json.loads((out / "sylber.json").read_text())
    compressor = SyllableCompressorConfig(**sylber["compressor"])
    assert compressor.norm_threshold == sylber["norm_threshold"] == pytest.approx(resumed["norm_threshold"], abs=1e-4)
    assert compressor.merge_threshold == 0.8 and compressor.input_dim == 64
    encoder = load_encoder(out / "encoder")
    assert isinstance(encoder, SylberEncoder)
    assert encoder.config.norm_threshold == sylber["norm_threshold"]  # SylberEncoder.segment uses it
    wav = load_audio(tiny_corpus.parent / "audio" / "u21.wav")
    spans = encoder.segment(wav[None], torch.tensor([wav.shape[0]]))[0]
    assert all(0 <= s < e <= e2 for (s, e), (e2, _) in zip(spans, spans[1:] + [(10**9, 0)]))

    bundle = build_untrained_bundle(tmp_path / "bundle", encoder=encoder.config, compressor=lambda d: compressor)
    shutil.rmtree(bundle / "encoder")
    shutil.copytree(out / "encoder", bundle / "encoder")  # the trained encoder in its place
    tokens = load_bundle(bundle).encode_recordings([wav])
    assert int(tokens.lengths[0]) >= 1 and tokens.embeddings.shape[-1] == 64


def test_a_dinosr_encoder_can_be_the_student(tiny_corpus, tmp_path):
    from dataclasses import replace

    from spokenlm.encoders import load_encoder
    from spokenlm.encoders.dinosr import DinoSREncoder, build_dinosr_encoder, dinosr_tiny, save_dinosr_encoder

    small = replace(dinosr_tiny(), model_dim=32, num_layers=2, num_heads=2, ffn_dim=64, fbank_channels=8,
                    pos_conv_kernel=5, pos_conv_depth=1, pos_conv_groups=4, num_codebooks=2, dropout=0.0)  # fmt: skip
    save_dinosr_encoder(build_dinosr_encoder(small), tmp_path / "dinosr")  # as encoder-ssl writes it
    summary = train(_config(tmp_path / "out", tiny_corpus, max_steps=15, bootstrap_steps=10,
                           student=str(tmp_path / "dinosr")))
    assert summary["steps"] == 15 and math.isfinite(summary["heldout_loss"])
    assert isinstance(load_encoder(tmp_path / "out" / "encoder"), DinoSREncoder)
    sylber = json.loads((tmp_path / "out" / "sylber.json").read_text())
    assert sylber["compressor"]["input_dim"] == 32
    assert sylber["norm_threshold"] == pytest.approx(summary["norm_threshold"], abs=1e-4)


def test_the_first_stage_pools_over_the_loudness_envelope(tiny_corpus):
    from spokenlm.encoders.base import frame_shift_s
    from spokenlm.encoders.sylber import SylberDistillation, build_sylber_encoder, sylber_tiny
    from spokenlm.envelope import EnvelopeConfig, envelope_segment_batch
    from spokenlm.recipes.sylber import BootstrappedSylber, objective_defaults
    from spokenlm.train.data import AudioCache, read_manifest

    torch.manual_seed(0)
    distill = SylberDistillation(student=build_sylber_encoder(sylber_tiny()), config=objective_defaults())
    model = BootstrappedSylber(distill, envelope=EnvelopeConfig())
    batch = AudioCache().batch(read_manifest(tiny_corpus, splits=("fine-tune",))[:3])
    g = torch.Generator().manual_seed(0)
    first = model(batch.wav, batch.lengths, student_wav=batch.wav, generator=g, bootstrap=True)
    frames = distill.student.output_lengths(batch.lengths)
    shift = frame_shift_s(distill.student)
    assert first.segments == envelope_segment_batch(batch.wav, batch.lengths, frames, frame_rate_hz=50.0, shift_s=shift)
    assert all(len(s) >= 3 for s in first.segments) and math.isnan(first.merge_threshold)
    second = model(batch.wav, batch.lengths, student_wav=batch.wav, generator=g, bootstrap=False)
    assert 0.5 <= second.merge_threshold <= 0.7  # the teacher's own segments, at a drawn threshold


def test_without_bootstrap_distillation_starts_at_once(tiny_corpus, tmp_path):
    with pytest.warns(UserWarning, match="speech and non-speech feature norms hardly differ"):
        summary = train(_config(tmp_path / "out", tiny_corpus, max_steps=5, bootstrap_steps=0))  # a fresh LayerNorm
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "init_signal_mean" in r] == [0] and not any("bootstrap_loss" in r for r in rows)
    assert summary["steps"] == 5 and len(summary["norm_stats_init"]) == 4


def test_config_errors_name_the_offending_value(tmp_path):
    manifest = tmp_path / "m.jsonl"
    with pytest.raises(ValueError, match="student_overrides apply to a preset"):
        _config(tmp_path, manifest, 1, student="runs/x", student_overrides={"model_dim": 8}).validate()
    with pytest.raises(ValueError, match="student_overrides: .*unexpected keyword argument 'dim'"):
        _config(tmp_path, manifest, 1, student_overrides={"dim": 8}).validate()
    with pytest.raises(ValueError, match=r"noise_snr_db must be \(low, high\)"):
        _config(tmp_path, manifest, 1, noise_snr_db=(20.0, 5.0)).validate()
    with pytest.raises(FileNotFoundError, match="student 'nowhere' is neither a preset"):
        train(_config(tmp_path, manifest, 1, student="nowhere"))


@pytest.mark.slow
def test_sylber_runs_under_ray_train_with_two_workers(tiny_corpus, tmp_path):
    import yaml

    from spokenlm.cli import main

    config = tmp_path / "sylber.yaml"
    config.write_text(yaml.safe_dump({
        "out_dir": str(tmp_path / "out"), "manifest": str(tiny_corpus), "student": "sylber_tiny",
        "bootstrap_steps": 6, "norm_init_batches": 2, "max_batch_s": 12.0, "log_every": 5, "eval_every": 10,
        "optim": {"lr": 3e-3, "warmup_steps": 5, "max_steps": 20},
    }))  # fmt: skip
    assert main(["train", "sylber", "--config", str(config), "--workers", "2"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["steps"] == 20
    assert metrics["workers_teacher_spread"] == 0.0  # the teacher EMA of identical students
    assert (tmp_path / "out" / "sylber.json").is_file()
