"""bench/default.py (`spokenlm bench default`): a bundle, the ASR peers and the Whisper -> LLM cascade on
the same items, with the FSDD and LibriVox rows apart.

The default tests run everything tiny: the session's random bundle (`tiny_bundle`), the random
Whisper of `tiny_whisper` (its CTranslate2 int8 dir for faster-whisper and WhisperPeer), a random
Llama with a byte-level BPE as the cascade's LLM, pocketsphinx's real model, and a manifest over the
two example clips with made-up labels for every task. The numbers are meaningless; the report's shape,
its rows and its errors are what is checked. One slow test runs the real bases' cascade on 2 items.
"""

import json
import math
import re
from pathlib import Path

import pytest

from spokenlm.cli import main
from spokenlm.data.text import normalize
from spokenlm.slue.metrics import word_error_rate

TASKS = ("asr", "translate", "ner", "sentiment", "dialog-act", "qa", "summarize")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEXTS = {
    "sense_and_sensibility_01_austen_64kb-0880.wav": "he was not an ill disposed young man",
    "sense_and_sensibility_01_austen_64kb-0930.wav": "he might even have been made amiable himself",
}


VOICES = [{"engine": "espeak", "voice": "en-gb-x-gbcwmd+f3", "held_out": True, "seed": 1},
          {"engine": "piper", "voice": "en_US-joe-medium", "held_out": False, "seed": 2}]


def _labels(text: str, k: int) -> dict:
    return {
        "text": text, "raw_text": text, "entities": [["PERSON", 0, 2]], "sentiment": ["Negative", "Positive"][k],
        "dialog_acts": ["statement_general"], "translation": "era un hombre joven", "target_lang": "es",
        "question": "who was it", "answer": "he", "summary": "a man",
    }  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Two synthetic-style test utterances (every task), one dev one, and two FSDD-style test takes."""
    rows = []
    for k, (name, text) in enumerate(TEXTS.items()):
        audio = str(EXAMPLES / name)  # absolute: read_manifest joins it to the manifest's dir unchanged
        rows.append({"id": f"syn{k}", "split": "test", "audio": audio, "duration_s": 3.0, "tasks": list(TASKS),
                     "task_labels": _labels(text, k), "voice": VOICES[k]})  # fmt: skip
        rows.append({"id": f"fsdd_{k}_x_{k}", "split": "test", "audio": audio, "duration_s": 3.0, "tasks": ["asr"],
                     "task_labels": {"text": ["zero", "one"][k]}})  # fmt: skip
    rows.append({**rows[0], "id": "dev0", "split": "dev"})
    path = tmp_path_factory.mktemp("bench-default") / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    """A random 2-layer Llama with its own BPE, saved as a Hugging Face dir (what --cascade-llm takes)."""
    import torch
    from transformers import LlamaConfig

    from spokenlm.lm import build_llm, save_llm
    from spokenlm.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(list(TEXTS.values()) * 8 + ["transcript of a recording"] * 8, vocab_size=300)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cascade-llm")
    save_llm(build_llm(config, tok), path)
    return path


def _last_line(out: str) -> dict[str, str]:
    last = out.strip().splitlines()[-1]
    assert last.startswith("bench default: "), last
    return dict(field.split("=", 1) for field in last.removeprefix("bench default: ").split())


def _rows(out: str) -> set[tuple[str, str, str]]:
    """(set, task, system) of every row of the scores table."""
    return set(re.findall(r"^\| (\w+) \| ([\w-]+) \| (\w+) \| [^|]+ \| -?[\d.]+ \|", out, re.M))


def test_bench_default_reports_ours_the_peers_and_the_cascade(tiny_bundle, tiny_whisper, tiny_llm, manifest,
                                                             tmp_path, capsys):  # fmt: skip
    out_json = tmp_path / "report.json"
    code = main(["bench", "default", "--model", str(tiny_bundle), "--manifest", str(manifest),
                 "--tsv", str(EXAMPLES / "manifest.tsv"), "--whisper", str(tiny_whisper["ct2_int8"]),
                 "--cascade-llm", str(tiny_llm), "--max-new-tokens", "6", "--batch", "2", "--threads", "1",
                 "--json", str(out_json)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "UNTRAINED" in out
    rows = _rows(out)
    for task in TASKS:
        assert ("test", task, "ours") in rows, task
        assert (("test", task, "cascade") in rows) == (task != "asr"), task  # the cascade answers every task but ASR
    for s in ("test", "fsdd", "librivox"):
        for system in ("ours", "pocketsphinx", "faster_whisper"):
            assert (s, "asr", system) in rows, (s, system)
    assert ("fsdd", "asr", "cascade") not in rows and ("librivox", "ner", "ours") not in rows
    assert re.search(r"^\| test \| asr \| ours \| SLUE WER % \| [\d.]+ \| ≤ 10: (met|NOT met) \| 2 \| wer_enf=[\d.]+ ", out, re.M)
    assert re.search(r"^\| fsdd \| asr \| ours \| digit accuracy % \| [\d.]+ \| ≥ 90: (met|NOT met) \| 2 \|", out, re.M)
    assert re.search(r"^\| test \| sentiment \| ours \| .* the cascade \| 2 \|", out, re.M)
    for system in ("ours", "pocketsphinx", "faster_whisper", "cascade"):
        assert re.search(rf"^\| {system} \| [\d.]+ \| [\d.]+ \| \d+ \| ", out, re.M), system  # wall times

    line = _last_line(out)
    assert list(line)[:9] == ["asr_wer", "ner_f1", "sentiment_f1", "da_acc", "bleu", "qa_f1", "rougeL",
                              "librivox_wer", "fsdd_acc"]  # fmt: skip
    assert list(line)[-3:] == ["tasks_beating_cascade", "ratio_is", "ratio"]
    assert {"pocketsphinx_asr_wer", "faster_whisper_fsdd_acc", "cascade_ner_f1", "cascade_rougeL"} <= set(line)
    won, of = map(int, line["tasks_beating_cascade"].split("/"))
    assert of == 6 and line["ratio_is"] == "tasks_beating_cascade" and float(line["ratio"]) == pytest.approx(won / 6, abs=1e-3)
    assert float(line["fsdd_acc"]) in (0.0, 50.0, 100.0)  # two takes

    report = json.loads(out_json.read_text())
    assert set(report) >= {"args", "sets", "targets", "cascade_prompts", "systems", "beats_cascade", "last_line"}
    assert report["sets"] == {"test": dict.fromkeys(TASKS, 2), "fsdd": {"asr": 2}, "librivox": {"asr": 2}}
    assert set(report["systems"]) == {"ours", "pocketsphinx", "faster_whisper", "cascade"}
    ours = report["systems"]["ours"]
    assert set(ours["scores"]) == {f"test/{t}" for t in TASKS} | {"fsdd/asr", "librivox/asr"}
    assert {"wer", "wer_enf", "ctc_wer", "items"} <= set(ours["scores"]["test/asr"])
    assert {"accuracy", "acc_enf", "wer"} <= set(ours["scores"]["fsdd/asr"])
    assert [r["id"] for r in ours["outputs"]["fsdd/asr"]] and all(r["id"].startswith("fsdd_") for r in ours["outputs"]["fsdd/asr"])
    assert not any(r["id"].startswith("fsdd_") or r["id"] == "dev0" for r in ours["outputs"]["test/asr"])
    cascade = report["systems"]["cascade"]
    assert set(cascade["transcripts"]) == {"syn0", "syn1"}
    assert cascade["outputs"]["test/qa"][0]["question"] == "who was it"
    assert report["last_line"] == line

    # ASR by voice group: one clip each; reference-word weighted, the groups give the row's WER
    groups = {"espeak held-out en-gb-x-gbcwmd+f3", "piper seen"}
    for system in ("ours", "pocketsphinx", "faster_whisper"):
        by_voice = report["asr_by_voice"][system]
        assert set(by_voice) == groups and all(g["items"] == 1 for g in by_voice.values())
        words = sum(g["reference_words"] for g in by_voice.values())
        weighted = sum(g["wer"] * g["reference_words"] for g in by_voice.values()) / words
        assert weighted == pytest.approx(report["systems"][system]["scores"]["test/asr"]["wer"], abs=1e-6)
    assert "cascade" not in report["asr_by_voice"]
    for group in groups:
        assert re.search(rf"^\| {re.escape(group)} \| [\d.]+ \(1\) \| [\d.]+ \(1\) \| [\d.]+ \(1\) \|$", out, re.M), group


def test_bench_default_without_a_bundle_runs_the_baselines_and_says_so(tiny_whisper, tiny_llm, manifest, capsys):
    code = main(["bench", "default", "--skip-ours", "--skip-peers", "--manifest", str(manifest), "--tsv",
                 "--whisper", str(tiny_whisper["ct2_int8"]), "--cascade-asr", "whisper",
                 "--cascade-llm", str(tiny_llm), "--max-new-tokens", "4", "--threads", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "note: --skip-ours: the baselines only" in out
    assert _rows(out) == {("test", t, "cascade") for t in TASKS if t != "asr"}
    assert "through transformers, fp32, greedy" in out  # the cascade heard WhisperPeer
    line = _last_line(out)
    assert list(line)[0] == "ours" and line["ours"] == "none" and "asr_wer" not in line
    assert line["pocketsphinx_asr_wer"] == "none" and line["tasks_beating_cascade"] == "none"
    assert line["ratio_is"] == "none" and math.isnan(float(line["ratio"]))


def test_bench_default_names_what_is_wrong(manifest, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["bench", "default", "--skip-ours", "--skip-peers", "--skip-cascade", "--manifest", str(missing)]) == 2
    assert f"--manifest {missing}: no such file" in capsys.readouterr().err
    assert main(["bench", "default", "--skip-ours", "--skip-peers", "--skip-cascade", "--manifest", str(manifest),
                 "--split", "fine-tune"]) == 2  # fmt: skip
    assert f"no 'fine-tune' utterances in {manifest} (splits there: dev, test)" in capsys.readouterr().err
    assert main(["bench", "default", "--model", str(tmp_path), "--manifest", str(manifest)]) == 2
    assert f"--model {tmp_path}: no spokenlm.json there, so not a bundle" in capsys.readouterr().err
    assert main(["bench", "default", "--skip-ours", "--manifest", str(manifest), "--tsv", str(tmp_path / "x.tsv")]) == 2
    assert f"--tsv {tmp_path / 'x.tsv'}: no such file" in capsys.readouterr().err
    assert main(["bench", "default", "--skip-ours", "--manifest", str(manifest), "--tasks", "asr,poetry"]) == 2
    assert "--tasks: unknown task(s) ['poetry']; expected a comma list of asr, translate" in capsys.readouterr().err


def test_bench_default_scores_only_the_tasks_asked_for(tiny_bundle, manifest, capsys):
    code = main(["bench", "default", "--model", str(tiny_bundle), "--manifest", str(manifest), "--skip-peers",
                 "--skip-cascade", "--tasks", "translate,sentiment", "--max-new-tokens", "4", "--threads", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and _rows(out) == {("test", "translate", "ours"), ("test", "sentiment", "ours")}  # no FSDD rows


def _real_bases() -> tuple[Path, Path]:
    try:
        from spokenlm.bases import SMOLLM2_135M_INSTRUCT, WHISPER_TINY_EN, resolve_base

        return resolve_base(WHISPER_TINY_EN), resolve_base(SMOLLM2_135M_INSTRUCT)
    except Exception as e:  # BaseError when not fetched
        pytest.skip(f"the real bases are not fetched: {e}")


@pytest.mark.slow
def test_the_real_cascade_answers_in_the_formats_our_parsers_read(manifest, tmp_path, capsys):
    whisper, smollm = _real_bases()
    out_json = tmp_path / "real.json"
    code = main(["bench", "default", "--skip-ours", "--skip-peers", "--manifest", str(manifest), "--tsv",
                 "--whisper", str(whisper), "--cascade-llm", str(smollm), "--items-per-task", "1",
                 "--threads", "1", "--json", str(out_json)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    cascade = json.loads(out_json.read_text())["systems"]["cascade"]
    heard = cascade["transcripts"]  # as Whisper writes them: "He might even have been made amiable himself."
    refs = [list(TEXTS.values())[int(k[-1])] for k in heard]
    assert heard and word_error_rate(refs, [normalize(v) for v in heard.values()]).wer <= 25, heard
    outputs = {task: rows[0]["output"] for task, rows in cascade["outputs"].items()}
    assert any(word in outputs["test/sentiment"] for word in ("Negative", "Neutral", "Positive")), outputs
    assert all(isinstance(o, str) and o.strip() for o in outputs.values()), outputs


def test_asr_is_scored_on_every_test_item_unless_asr_items_says_otherwise(manifest):
    from bench.default import TEST, load_sets, parse_args

    def sizes(*extra):
        parser, args = parse_args(["--manifest", str(manifest), "--tsv", *extra])
        return {task: [i.utt.id for i in items] for task, items in load_sets(args, parser).items[TEST].items()}

    every = sizes()
    assert every["asr"] == every["ner"] and len(every["asr"]) == 2
    one = sizes("--items-per-task", "1")
    assert one["asr"] == every["asr"] and all(one[t] == every[t][:1] for t in TASKS if t != "asr")
    assert sizes("--asr-items", "1")["asr"] == every["asr"][:1]

