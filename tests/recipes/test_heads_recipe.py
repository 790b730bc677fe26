"""The heads recipe on the tiny untrained bundle and a corpus whose dialog act is heard in the audio
(a tone says "thanks", noise says "question_general"): the head it fits must tell held-out clips
apart, from states it caches and reuses."""

import dataclasses
import json

import pytest
import soundfile as sf
import torch

from spokenlm.heads import load_head
from safetensors.torch import load_file, save_file

from spokenlm.recipes.heads import (
    HeadsRecipeConfig,
    bundle_fingerprint,
    is_declarative,
    label_sets,
    narration_items,
    task_score,
    train,
)
from spokenlm.train.data import Utterance


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

    # fewer train utterances: the first 10 in id-hash order, their rows of the cached states, nothing read
    from spokenlm.train.data import id_hash_order, read_manifest

    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").glob("states-*")}
    fewer = train(dataclasses.replace(config, train_utterances=10))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").glob("states-*")} == stamps
    assert fewer["train_items"] == 10 and fewer["splits"]["test"]["items"] == 6
    train_ids = [u.id for u in id_hash_order(read_manifest(str(tone_corpus), splits=("fine-tune",)))]
    cached = json.loads((tmp_path / "run" / "states-fine-tune.json").read_text())
    assert cached["ids"] == train_ids  # the full read stays on disk
    states = load_file(str(tmp_path / "run" / "states-fine-tune.safetensors"))
    from spokenlm.recipes.heads import _split_states

    utts = id_hash_order(read_manifest(str(tone_corpus), splits=("fine-tune",)))[:10][::-1]
    sliced = _split_states(tmp_path / "run", "fine-tune", None, utts, config, decode=False,
                           fingerprint=bundle_fingerprint(tiny_bundle))  # fmt: skip
    for pooling, rows in sliced["states"].items():  # in the order asked, not the file's
        assert torch.equal(rows, states[pooling][[train_ids.index(u.id) for u in utts]])
    with pytest.raises(ValueError, match="^train_utterances must be an int >= 0 \\(0: all\\), got -1$"):
        train(dataclasses.replace(config, train_utterances=-1))

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


@pytest.fixture(scope="module")
def prose_corpus(tmp_path_factory, tone_corpus):
    """The tone corpus plus read prose (stream "ljspeech", ASR only): quiet hum, unlike either act's
    clips; a question and a fragment among them, which are not statements."""
    root = tmp_path_factory.mktemp("prose")
    (root / "audio").mkdir()
    gen = torch.Generator().manual_seed(1)
    rows = [json.loads(line) for line in tone_corpus.read_text().splitlines()]
    for row in rows:
        row["audio"] = str(tone_corpus.parent / row["audio"])
    texts = ["Where did the letter go?", "The well-known Cato Street conspiracy,"]
    splits = ["fine-tune"] * 2 + ["fine-tune"] * 16 + ["dev"] * 6 + ["test"] * 6
    for i, split in enumerate(splits):
        n = int(16000 * (0.8 + 0.8 * torch.rand(1, generator=gen).item()))
        wav = 0.02 * torch.sin(torch.arange(n) * 2 * torch.pi * 50 / 16000) + 0.002 * torch.randn(n, generator=gen)
        sf.write(root / "audio" / f"p{i}.wav", wav.numpy(), 16000)
        raw = texts[i] if i < 2 else f"The clerk wrote the {i}th entry in the book."
        rows.append({"id": f"p{i}", "split": split, "audio": f"audio/p{i}.wav", "duration_s": n / 16000, "stream": "ljspeech",
                     "tasks": ["asr"], "task_labels": {"text": raw.lower(), "raw_text": raw}})  # fmt: skip
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_narration_joins_the_fit_and_is_scored_apart(tiny_bundle, prose_corpus, tmp_path):
    config = HeadsRecipeConfig(out_dir=str(tmp_path / "run"), bundle=str(tiny_bundle), manifest=str(prose_corpus),
                               cs=(0.1, 1.0), thresholds=(0.5,), max_new_tokens=4,
                               narration_streams=("ljspeech",), narration_share=1.0)  # fmt: skip
    summary = train(config)
    # every task item and as many whole statements; the question and the fragment are left out
    assert summary["train_items"] == 16 and summary["narration"]["train_items"] == 16
    narration = summary["narration"]["splits"]
    assert narration["test"]["items"] == 6 and narration["dev"]["items"] == 6
    assert narration["test"]["head"]["accuracy"] >= 100 * 5 / 6 - 1e-6  # held-out prose read as statements
    assert summary["splits"]["test"]["head"]["accuracy"] >= 100 * 5 / 6 - 1e-6  # the task's own items still told apart
    assert summary["splits"]["test"]["items"] == 6  # scored apart from the prose
    assert "statement_general" in load_head(tmp_path / "run" / "head").config.label_names
    assert (tmp_path / "run" / "states-narration-test.safetensors").is_file()

    with pytest.raises(ValueError, match=r"no declarative sentences of streams \['harvard'\] in 'fine-tune'"):
        train(dataclasses.replace(config, out_dir=str(tmp_path / "none"), narration_streams=("harvard",)))


def test_narration_items_are_whole_statements_labelled_as_prose():
    assert is_declarative("The birch canoe slid on the smooth planks.")
    for text in ["Where did he go?", "Stop it now, he said!", "The well-known Cato Street conspiracy,",
                 "He said, \"come here at once.\"", "Too short.", "and then he left the room."]:  # fmt: skip
        assert not is_declarative(text), text

    def utt(i, raw):
        return Utterance(id=f"u{i}", split="fine-tune", audio=None, duration_s=1.0, stream="ljspeech",
                         labels={"text": raw.lower(), "raw_text": raw})  # fmt: skip

    utts = [utt(0, "The clerk wrote the entry in the book."), utt(1, "The murderer was a cruel and hateful man."),
            utt(2, "Was the clerk there at all?"), utt(3, "The box stood by the window all day."),
            utt(4, "He was rather tired."), utt(5, "She was a kind and lovely woman who helped everyone.")]  # fmt: skip
    bands = {"max_polarity": 0.05, "min_polarity": 0.5}
    acts = narration_items("dialog-act", utts, 10, **bands)
    assert [u.id for u in acts] == ["u0", "u1", "u3", "u4", "u5"] and acts[0].labels["dialog_acts"] == ["statement_general"]
    assert acts[0].tasks == ("asr", "dialog-act") and acts[0].labels["text"] == utts[0].labels["text"]
    # VADER's compound: 0, -0.91, 0, -0.44 (between the bands: left out), 0.80
    feelings = {u.id: u.labels["sentiment"] for u in narration_items("sentiment", utts, 10, **bands)}
    assert feelings == {"u0": "Neutral", "u1": "Negative", "u3": "Neutral", "u5": "Positive"}
    assert [u.id for u in narration_items("sentiment", utts, 2, **bands)] == ["u0", "u1"]


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
        (dict(narration_share=0), r"narration_share must be in \(0, 1\], got 0"),
        (dict(narration_max_polarity=0.6), "narration_max_polarity and narration_min_polarity must satisfy "
                                           r"0 < max < min <= 1, got 0.6 and 0.5"),
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
    assert config.narration_streams == ("ljspeech", "harvard", "arctic") and config.narration_share == 0.2
