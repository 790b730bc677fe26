"""spokenlm.training_report: stage times from the chain's log (resumed stages summed, stops and
missing ends said), corpus statistics, stage metrics and the bench's verdicts against the targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spokenlm.training_report import main, report, stage_times

LOG = """\
2026-12-07T10:00:00Z start corpus: spokenlm data synth --out ../corpus
2026-12-07T10:23:00Z done corpus in 23 min
2026-12-07T10:23:00Z start ctc: spokenlm train ctc --config configs/ctc.yaml
2026-12-07T10:33:30Z stopped ctc after 10 min
2026-12-08T09:00:00Z start ctc: spokenlm train ctc --config configs/ctc.yaml
2026-12-08T09:20:00Z done ctc in 20 min
2026-12-08T09:20:00Z start speechlm: spokenlm train speechlm --config configs/speechlm.yaml
2026-12-08T11:00:00Z start bench: spokenlm bench default
2026-12-08T11:06:00Z done bench in 6 min
"""


def _bench() -> dict:
    return {
        "targets": {"test/asr": {"metric": "wer", "op": "<=", "value": 10.0},
                    "test/ner": {"metric": "f1_combined", "op": ">=", "value": 60.0}, "test/qa": None},
        "systems": {
            "ours": {"scores": {"test/asr": {"items": 20, "wer": 7.5}, "test/ner": {"items": 20, "f1_combined": 55.0},
                                "test/qa": {"items": 20, "exact": 80.0, "f1": 91.25}}},
            "pocketsphinx": {"scores": {"test/asr": {"items": 20, "wer": 49.6}}},
            "cascade": {"scores": {"test/ner": {"items": 20, "f1_combined": 10.0}, "test/qa": {"items": 20, "f1": 9.7}}},
        },
        "beats_cascade": {"ner": True, "qa": False},
    }  # fmt: skip


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    runs, corpus, fsdd = tmp_path / "runs", tmp_path / "corpus", tmp_path / "corpus-fsdd"
    for d in (runs / "ctc", corpus, fsdd):
        d.mkdir(parents=True)
    (runs / "chain.log").write_text(LOG)
    (runs / "ctc" / "metrics.json").write_text(json.dumps({"steps": 750, "dev_wer": 0.51234, "examples": [1], "ok": True}))
    (corpus / "stats.json").write_text(json.dumps({
        "utterances": 20035, "hours": 20.3892, "hours_by_split": {"fine-tune": 18.28, "dev": 1.05, "test": 1.06},
        "hours_by_task": {"asr": 20.39, "ner": 6.4}, "hours_by_voice": {"piper": 9.9, "espeak-en-us": 0.87},
    }))  # fmt: skip
    takes = [("fine-tune", "george"), ("fine-tune", "jackson"), ("test", "george"), ("test", "yweweler")]
    (fsdd / "manifest.jsonl").write_text("".join(
        json.dumps({"id": f"t{i}", "split": s, "voice": {"speaker": who}}) + "\n" for i, (s, who) in enumerate(takes)))
    (runs / "bench.json").write_text(json.dumps(_bench()))
    return tmp_path


def test_stage_times_sum_resumed_runs_and_say_what_has_no_end(chain):
    times = stage_times(chain / "runs" / "chain.log")
    assert times["corpus"].minutes == 23 and times["corpus"].finished
    assert times["ctc"].minutes == pytest.approx(30.5) and times["ctc"].starts == 2 and times["ctc"].finished
    assert times["ctc"].parts == ["10.5 (stopped)", "20.0"]  # the night between the two runs is not counted
    assert times["speechlm"].minutes == 0 and not times["speechlm"].finished
    assert times["speechlm"].parts == ["no end logged"]


def test_report_has_times_corpus_metrics_and_verdicts(chain):
    text = report(chain / "runs", chain / "corpus", chain / "corpus-fsdd", chain / "runs" / "bench.json")
    assert "| ctc | 30.5 | 10.5 (stopped), 20.0 |" in text
    assert "| speechlm | 0.0 | no end logged — **not finished** |" in text
    assert "| **all** | **53.5** (0.89 h) | |" in text  # corpus + ctc; the bench is not training
    assert "| bench (evaluation) | 6.0 | 6.0 |" in text and "| heads | — | not in runs/chain.log |" in text
    assert "20,035 utterances, 20.39 h (fine-tune 18.28 h, dev 1.05 h, test 1.06 h)" in text and "2 voices" in text
    assert "fine-tune 2 (2 speakers), test 2 (2 speakers)" in text
    assert "### ctc\n\nsteps 750; dev_wer 0.5123" in text and "examples" not in text.split("### ctc")[1].split("\n\n")[1]
    assert "| test/asr | wer | 7.5 (20 items) | <= 10 | yes | 49.6 | — | — |" in text
    assert "| test/ner | f1_combined | 55 (20 items) | >= 60 | **no** | — | — | 10 |" in text
    assert "| test/qa | f1 | 91.25 (20 items) | reported | — | — | — | 9.7 |" in text
    assert "Beats the naive cascade on 1 of 2 tasks (not: qa)." in text


def test_main_writes_the_file_and_names_what_is_missing(chain, tmp_path, capsys):
    out = tmp_path / "TRAINING.md"
    args = ["--runs", str(chain / "runs"), "--corpus", str(chain / "corpus"), "--fsdd", str(chain / "corpus-fsdd")]
    assert main([*args, "--out", str(out)]) == 0 and out.read_text().startswith("# How this bundle was trained")
    with pytest.raises(SystemExit):
        main(["--runs", str(tmp_path / "nowhere"), "--corpus", str(chain / "corpus")])
    assert "nowhere/chain.log does not exist: run models/train_default.sh first" in capsys.readouterr().err
