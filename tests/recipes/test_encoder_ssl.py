"""Recipe `encoder-ssl` (DinoSR pre-training) on the tiny espeak corpus, with a DinoSR small enough for
a step to take well under 0.2 s: it learns, resumes where it stopped (the whole pre-trainer state), and
writes an encoder that loads and plugs into a bundle; with two Ray Train workers the codebooks agree."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spokenlm.recipes.encoder_ssl import BatchSchedule, EncoderSSLConfig, kmeans_codebooks, lr_now, train
from spokenlm.train.data import AudioCache, read_manifest
from spokenlm.train.loop import OptimConfig, lr_at

TINY_DINOSR = {
    "model_dim": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "fbank_channels": 8, "pos_conv_kernel": 5,
    "pos_conv_depth": 1, "pos_conv_groups": 4, "num_codebooks": 2, "codebook_size": 16, "mask_length": 5,
    "dropout": 0.0, "attention_dropout": 0.0, "ema_decay": 0.9, "ema_end_decay": 0.99, "ema_anneal_steps": 20,
}  # fmt: skip


def _config(out: Path, manifest: Path, max_steps: int, **changes) -> EncoderSSLConfig:
    fields = dict(
        out_dir=str(out), manifest=str(manifest), encoder="dinosr_tiny", encoder_overrides=TINY_DINOSR,
        max_batch_s=12.0, log_every=5, eval_every=10, optim=OptimConfig(lr=3e-3, warmup_steps=5, max_steps=max_steps),
    )  # fmt: skip
    return EncoderSSLConfig(**{**fields, **changes})


def test_encoder_ssl_learns_resumes_and_writes_its_outputs(tiny_corpus, tmp_path):
    out = tmp_path / "out"
    first = train(_config(out, tiny_corpus, max_steps=40))
    assert first["steps"] == 40 and first["workers"] == 1
    # learned: held-out masked prediction well below the untrained model's and below chance (ln 16)
    assert first["heldout_loss"] < first["heldout_loss_start"] - 0.3
    assert first["heldout_loss"] < first["heldout_loss_chance"]
    assert len(first["heldout_perplexity"]) == 2 and all(p > 1.5 for p in first["heldout_perplexity"])

    # a rerun at the same max_steps restores the whole pre-trainer (teacher, codebooks, heads): same score
    again = train(_config(out, tiny_corpus, max_steps=40))
    assert again["steps"] == 40 and again["heldout_loss"] == first["heldout_loss"]
    assert again["hours_seen"] == first["hours_seen"]

    resumed = train(_config(out, tiny_corpus, max_steps=60))
    assert resumed["steps"] == 60
    assert resumed["hours_seen"] == pytest.approx(first["hours_seen"] * 1.5, rel=0.1)
    assert resumed["wall_minutes"] >= first["wall_minutes"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["step"] == 0) == 1  # the baseline is measured once, not on resume
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == list(range(5, 61, 5))  # the step count continues
    assert {"ppl_0", "ppl_1", "accuracy", "teacher_decay"} <= set(rows[-2]) | set(rows[-3])

    summary = json.loads((out / "metrics.json").read_text())
    assert summary["heldout_loss_start"] == first["heldout_loss_start"] and summary["steps"] == 60
    assert (out / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-50", "step-60"]


def test_the_saved_encoder_loads_and_plugs_into_a_bundle(tiny_corpus, tmp_path):
    from spokenlm.audio import load_audio
    from spokenlm.demo import build_untrained_bundle
    from spokenlm.encoders import load_encoder
    from spokenlm.encoders.dinosr import DinoSREncoder
    from spokenlm.model import load_bundle

    train(_config(tmp_path / "out", tiny_corpus, max_steps=10))
    encoder = load_encoder(tmp_path / "out" / "encoder")
    assert isinstance(encoder, DinoSREncoder) and encoder.output_dim == 32 and encoder.frame_rate_hz == 50.0
    wav = load_audio(tiny_corpus.parent / "audio" / "u20.wav")
    out = encoder(wav[None], torch.tensor([wav.shape[0]]))
    assert out.features.shape == (1, int(out.lengths[0]), 32) and torch.isfinite(out.features).all()

    bundle = build_untrained_bundle(tmp_path / "bundle", encoder=encoder.config)
    shutil.rmtree(bundle / "encoder")
    shutil.copytree(tmp_path / "out" / "encoder", bundle / "encoder")  # the trained encoder in its place
    tokens = load_bundle(bundle).encode_recordings([wav])
    assert int(tokens.lengths[0]) > 0 and tokens.embeddings.shape[-1] == 32


def test_kmeans_init_uses_every_codeword(tiny_corpus):
    from spokenlm.encoders.dinosr import build_dinosr_pretrainer, instance_norm, nearest_codeword

    config = _config(Path("unused"), tiny_corpus, max_steps=1, kmeans_init_batches=2)
    torch.manual_seed(0)
    pretrainer = build_dinosr_pretrainer(config.encoder_config())
    cache = AudioCache()
    utts = read_manifest(tiny_corpus, splits=("fine-tune",))
    batches = [cache.batch(utts[:4]), cache.batch(utts[4:8])]
    kmeans_codebooks(pretrainer, batches, seed=0)
    assert torch.equal(pretrainer.codebook_counts, torch.ones(2, 16))
    with torch.no_grad():  # every codeword is the nearest of some target frame: none starts dead
        x, lengths = pretrainer.student.extract_features(batches[0].wav, batches[0].lengths)
        _, ffn = pretrainer.teacher(x, lengths, keep_ffn=True)
        valid = torch.arange(x.shape[1]) < lengths[:, None]
        for k, layer_out in enumerate(ffn[-2:]):
            codes = nearest_codeword(instance_norm(layer_out, lengths)[valid], pretrainer.codewords[k])
            assert codes.unique().numel() >= 12  # of 16, on half the frames k-means saw


def test_the_batch_schedule_is_shared_disjoint_and_stable(tiny_corpus):
    utts = read_manifest(tiny_corpus, splits=("fine-tune",))
    two = BatchSchedule(utts, max_batch_s=6.0, seed=3, workers=2)
    assert two.steps_per_epoch >= 2
    seen = []
    for step in range(two.steps_per_epoch):  # one epoch: no utterance twice, workers never share one
        batches = two.at(step)
        assert len(batches) == 2 and not {u.id for u in batches[0]} & {u.id for u in batches[1]}
        seen += [u.id for b in batches for u in b]
    assert len(seen) == len(set(seen))
    again = BatchSchedule(utts, max_batch_s=6.0, seed=3, workers=2)  # a resumed run draws the same batches
    assert [[u.id for u in b] for b in again.at(7)] == [[u.id for u in b] for b in two.at(7)]
    assert two.at(0) != two.at(two.steps_per_epoch)  # each epoch reshuffles


def test_lr_over_minutes_decays_with_the_time_budget():
    optim = OptimConfig(lr=1e-3, warmup_steps=10, max_steps=1000, max_minutes=10, lr_over_minutes=True)
    assert lr_now(5, 300.0, optim) == lr_at(5, optim)  # warmup counts steps
    assert lr_now(20, 300.0, optim) == lr_at(10 + 495, optim)  # half the budget: half the cosine
    assert lr_now(20, 900.0, optim) == pytest.approx(optim.lr * optim.min_lr_ratio)
    assert lr_now(20, 900.0, replace(optim, lr_over_minutes=False)) == lr_at(20, optim)
    with pytest.raises(ValueError, match="optim.lr_over_minutes needs optim.max_minutes > 0"):
        replace(optim, max_minutes=0.0).validate()


def test_config_errors_name_the_offending_value(tmp_path):
    with pytest.raises(ValueError, match="unknown DinoSR preset 'dinosr_huge'"):
        _config(tmp_path, tmp_path / "m.jsonl", 1, encoder="dinosr_huge").validate()
    with pytest.raises(ValueError, match="unknown DinoSR config keys"):
        _config(tmp_path, tmp_path / "m.jsonl", 1, encoder_overrides={"model_dimension": 3}).validate()
    with pytest.raises(ValueError, match=r"cannot both train and score: \['dev'\]"):
        _config(tmp_path, tmp_path / "m.jsonl", 1, train_splits=("fine-tune", "dev")).validate()
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        train(_config(tmp_path, tmp_path / "m.jsonl", 1))


@pytest.mark.slow
def test_encoder_ssl_runs_under_ray_train_with_two_workers(tiny_corpus, tmp_path):
    import yaml

    from spokenlm.cli import main

    config = tmp_path / "encoder_ssl.yaml"
    config.write_text(yaml.safe_dump({
        "out_dir": str(tmp_path / "out"), "manifest": str(tiny_corpus), "encoder": "dinosr_tiny",
        "encoder_overrides": TINY_DINOSR, "max_batch_s": 12.0, "log_every": 5, "eval_every": 10,
        "optim": {"lr": 3e-3, "warmup_steps": 5, "max_steps": 20},
    }))  # fmt: skip
    assert main(["train", "encoder-ssl", "--config", str(config), "--workers", "2"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["steps"] == 20
    # both workers hold the same codebooks and teacher: statistics all-reduced, teacher EMA of equal students
    assert metrics["workers_codebook_spread"] == 0.0 and metrics["workers_teacher_spread"] == 0.0
    assert metrics["heldout_loss"] < metrics["heldout_loss_start"]
    assert (tmp_path / "out" / "encoder" / "model.safetensors").is_file()
