"""The heads recipe on the tiny untrained bundle and a corpus whose dialog act is heard in the audio
(a tone says "thanks", noise says "question_general"): the head it fits must tell held-out clips
apart, from states it caches and reuses."""

import json

import pytest
import soundfile as sf
import torch

from spokenlm.heads import load_head
from safetensors.torch import load_file, save_file

from spokenlm.recipes.heads import HeadsRecipeConfig, bundle_fingerprint, label_sets, task_score, train


@pytest.fixture(scope="module")
def tone_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    (root / "audio").mkdir()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i, split in enumerate(["fine-tune"] * 16 + ["dev"] * 6 + ["test"] * 6):
        n = int(16000 * (0.8 + 0.8 * torch.rand(1, generator=gen).item()))
        if i % 2 == 0:
            freq = 150 + 300 * torch.rand(1, generator=gen).item()
            wav, acts = 0.3 * torch.sin(torch.arange(n) * 2 * torch.pi * freq / 16000), ["thanks"]
        else:
            wav, acts = 0.1 * torch.randn(n, generator=gen), ["question_general"]
        sf.write(root / "audio" / f"c{i}.wav", wav.numpy(), 16000)
        rows.append({"id": f"c{i}", "split": split, "audio": f"audio/c{i}.wav", "duration_s": n / 16000,
                     "tasks": ["dialog-act"], "task_labels": {"dialog_acts": acts}})  # fmt: skip
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_the_recipe_fits_a_head_that_tells_held_out_clips_apart(tiny_bundle, tone_corpus, tmp_path):
    config = HeadsRecipeConfig(out_dir=str(tmp_path / "run"), bundle=str(tiny_bundle), manifest=str(tone_corpus),
                               cs=(0.1, 1.0), thresholds=(0.5,), max_new_tokens=4)  # fmt: skip
    summary = train(config)
    assert summary["train_items"] == 16 and len(summary["grid"]) == 6  # 3 poolings x 2 c
    assert summary["splits"]["test"]["items"] == 6
    assert summary["splits"]["test"]["head"]["accuracy"] >= 100 * 5 / 6 - 1e-6  # percent; chance: 50
    best = max(row["dev"]["accuracy"] for row in summary["grid"])
    assert summary["splits"]["dev"]["head"]["accuracy"] == best
    head = load_head(tmp_path / "run" / "head")
    assert (head.config.pooling, head.config.task) == (summary["pick"]["pooling"], "dialog-act")
    for name in ("metrics.json", "metrics.jsonl", "loss.png", "states-fine-tune.safetensors", "states-test.json"):
        assert (tmp_path / "run" / name).is_file(), name
    # the untrained LLM's own answers are scored beside the head's on the same items
    assert set(summary["splits"]["test"]["decoded"]) == {"accuracy", "macro_f1"}

    # a rerun reads no audio: the cached states give the same pick and scores
    stamp = (tmp_path / "run" / "states-dev.safetensors").stat().st_mtime_ns
    again = train(config)
    assert (tmp_path / "run" / "states-dev.safetensors").stat().st_mtime_ns == stamp
    assert again["splits"] == summary["splits"] and again["pick"] == summary["pick"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 6

    # a head given to the bundle leaves its reading (and the cache) as it was; other weights do not
    import shutil

    from spokenlm.model import set_bundle_head

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    before = bundle_fingerprint(bundle)
    assert before == bundle_fingerprint(tiny_bundle)  # the path is not part of it
    set_bundle_head(bundle, tmp_path / "run" / "head")
    assert bundle_fingerprint(bundle) == before
    state = load_file(str(bundle / "adapter.safetensors"))
    save_file({k: v + 1e-3 for k, v in state.items()}, str(bundle / "adapter.safetensors"))
    assert bundle_fingerprint(bundle) != before


def test_label_sets_scores_and_bad_configs():
    assert label_sets("sentiment", [{"sentiment": "Positive"}]) == [("Positive",)]
    assert label_sets("dialog-act", [{"dialog_acts": ["thanks", "other"]}]) == [("thanks", "other")]
    labels = [{"dialog_acts": ["thanks"]}, {"dialog_acts": ["acknowledge", "answer_agree"]}]
    assert task_score("dialog-act", labels, ["thanks", "answer_agree"])["accuracy"] == 50.0
    cases = [
        (dict(task="qa"), r"no head for task 'qa'"),
        (dict(poolings=("max",)), r"poolings must be some of \('last', 'mean', 'last\+mean'\), got \['max'\]"),
        (dict(cs=(0.0,)), r"cs must be positive finite numbers, at least one, got \[0.0\]"),
        (dict(thresholds=()), r"thresholds must be numbers in \(0, 1\), at least one, got \[\]"),
        (dict(test_splits=("dev",)), r"train, dev and test splits must differ, got \['fine-tune', 'dev', 'dev'\]"),
        (dict(batch_size=0), "batch_size must be a positive int, got 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            HeadsRecipeConfig(out_dir="x", bundle="b", manifest="m", **kwargs).validate()


@pytest.mark.parametrize("name,task", [("heads.yaml", "dialog-act"), ("heads_sentiment.yaml", "sentiment")])
def test_the_shipped_configs_parse(name, task):
    from pathlib import Path

    from spokenlm.train.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / name, HeadsRecipeConfig)
    config.validate()
    assert config.task == task and config.manifest == ("../corpus/manifest.jsonl",)
    assert config.bundle == "models/parts/speechlm/bundle" and config.poolings == ("last", "mean", "last+mean")
