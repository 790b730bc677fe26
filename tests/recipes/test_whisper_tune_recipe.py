"""The whisper-tune recipe on the tiny random Whisper and the tiny espeak corpus: the decoder LoRA
it trains lowers the loss on held-out sentences, resumes, reuses its examples, and is what the
transcriber then reads."""

import json

import pytest

from spokenlm.recipes.whisper_tune import WhisperTuneConfig, train
from spokenlm.transcriber import TranscriberConfig
from spokenlm.whisper_tune import read_decoder_lora


def _config(tiny_whisper, tiny_corpus, out, **changes) -> WhisperTuneConfig:
    from spokenlm.train.loop import OptimConfig

    # one clip per window: the tiny random Whisper's vocabulary has no timestamps (tests/test_whisper_tune.py
    # checks the packed examples on the one that has)
    reading = TranscriberConfig(base=None, path=str(tiny_whisper["ct2_float32"]), compute_type="float32", cpu_threads=1)
    settings = dict(out_dir=str(out), manifest=str(tiny_corpus), transcriber=reading, utterances_per_shard=8,
                    lora_rank=4, lora_alpha=8, lora_dropout=0.0, windows_per_step=1, eval_every=20,
                    mask_time_prob=0.1, mask_time_length=5, mask_channel_prob=0.1, mask_channel_length=2,
                    optim=OptimConfig(lr=3e-2, warmup_steps=5, max_steps=40))  # fmt: skip
    return WhisperTuneConfig(**(settings | changes))


def test_the_recipe_lowers_the_held_out_loss_and_resumes(tiny_whisper, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    summary = train(_config(tiny_whisper, tiny_corpus, out))
    assert summary["steps"] == 40
    assert summary["train_utterances"] == {str(tiny_corpus): 20} and summary["dev_utterances"] == {str(tiny_corpus): 2}
    assert summary["dev_chunks"] == 2 and summary["train_chunks"] == 20
    # the dev sentences are not in the train split: learned something, not memorised the train set
    assert summary["best_dev_loss"] < summary["base_dev_loss"] - 0.1  # (the random model: 4.07 -> 3.93 nats; its frozen embeddings bound it)
    assert set(summary["dev_wer_base"]) == set(summary["dev_wer_tuned"]) == {"mean", str(tiny_corpus)}
    deltas = read_decoder_lora(out / "lora")
    assert deltas and all(name.startswith("model.decoder.layers.") for name in deltas)
    assert (out / "loss.png").is_file() and (out / "metrics.json").is_file()
    shards = sorted((out / "examples").rglob("shard-*.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    assert len(shards) == 4  # 20 train utterances by 8, and the dev pair
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert train(_config(tiny_whisper, tiny_corpus, out)) == json.loads((out / "metrics.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == written  # finished: nothing rewritten

    again = train(_config(tiny_whisper, tiny_corpus, out, optim=_config(
        tiny_whisper, tiny_corpus, out).optim.__class__(lr=3e-2, warmup_steps=5, max_steps=60)))  # fmt: skip
    assert again["steps"] == 60
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 20, 40, 60]  # resumed at 40: no second base evaluation
    assert {p: p.stat().st_mtime_ns for p in shards} == stamps  # the examples were read back, not made again


def test_bad_recipe_configs_are_named(tiny_whisper, tiny_corpus, tmp_path):
    base = _config(tiny_whisper, tiny_corpus, tmp_path)
    for changes, message in [
        ({"dev_split": "fine-tune"}, r"^train and dev splits must differ, got 'fine-tune' twice$"),
        ({"windows_per_step": 0}, r"^windows_per_step must be an int >= 1, got 0$"),
        ({"lora_targets": ("conv1",)}, r"^decoder LoRA targets must be among"),
        ({"lora_dropout": 1.0}, r"^lora_dropout must be in \[0, 1\), got 1.0$"),
        ({"mask_time_prob": -0.1}, r"^mask_time_prob must be in \[0, 1\), got -0.1$"),
        ({"mask_channel_length": 0}, r"^mask_channel_length must be an int >= 1, got 0$"),
    ]:
        with pytest.raises(ValueError, match=message):
            base.__class__(**(base.__dict__ | changes)).validate()
    import dataclasses

    tuned = dataclasses.replace(base, transcriber=dataclasses.replace(base.transcriber, decoder_lora=str(tmp_path)))
    with pytest.raises(ValueError, match=r"^transcriber.decoder_lora is what this recipe trains: leave it out$"):
        train(tuned)


def test_the_shipped_config_reads_chunks_as_the_shipped_transcriber_does():
    """configs/whisper_tune.yaml makes its examples with the reading settings of
    configs/transcriber.yaml, whose transcriber then decodes with the LoRA it writes."""
    from pathlib import Path

    from spokenlm.recipes.transcriber import TranscriberRecipeConfig
    from spokenlm.recipes.whisper_tune import _reading_settings
    from spokenlm.train.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    tune = load_config(root / "whisper_tune.yaml", WhisperTuneConfig)
    tune.validate()
    transcriber = load_config(root / "transcriber.yaml", TranscriberRecipeConfig)
    assert _reading_settings(tune.transcriber) == _reading_settings(transcriber.transcriber)
    assert transcriber.transcriber.decoder_lora == f"{tune.out_dir}/lora"


def test_some_utterances_are_also_read_alone_as_a_single_request_is(tiny_whisper_timestamps, tiny_corpus, tmp_path):
    from spokenlm.train.loop import OptimConfig

    reading = TranscriberConfig(base=None, path=str(tiny_whisper_timestamps["ct2_float32"]), compute_type="float32",
                                cpu_threads=1, pack_s=26.0, attend_margin_s=2.5)  # fmt: skip
    config = WhisperTuneConfig(out_dir=str(tmp_path), manifest=str(tiny_corpus), transcriber=reading, alone_utterances=3,
                               lora_rank=2, eval_every=2, optim=OptimConfig(lr=1e-3, warmup_steps=1, max_steps=2))  # fmt: skip
    summary = train(config)
    assert summary["train_chunks"] == 20 + 3 and summary["dev_chunks"] == 2 + 2
    assert set(summary["dev_wer_tuned"]) == {"mean", str(tiny_corpus), f"{tiny_corpus} (alone)"}
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == ["dev", "dev-alone", "fine-tune", "fine-tune-alone"]
