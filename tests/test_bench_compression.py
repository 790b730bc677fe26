"""bench/compression.py (`spokenlm bench compression`): one row per bundle, and the best-within-loss rule."""

import json
import re
from pathlib import Path

import pytest

from spokenlm.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def manifest(tmp_path):
    rows = [line.split("\t") for line in (EXAMPLES / "manifest.tsv").read_text().splitlines()[1:]]
    lines = [
        json.dumps({"id": f"ex{i}", "split": "test", "audio": str(EXAMPLES / f), "duration_s": 1.0,
                    "task_labels": {"text": t}, "tasks": ["asr"]})  # fmt: skip
        for i, (f, t) in enumerate(rows)
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_bench_compression_reports_every_bundle_and_the_best(tiny_bundle, manifest, capsys):
    code = main(["bench", "compression", "--bundle", f"a={tiny_bundle}", "--bundle", f"b={tiny_bundle}",
                 "--manifest", str(manifest), "--max-new-tokens", "4"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "| a |" in out and "| b |" in out
    m = re.search(r"bench compression: clips=2 reference=(\w+) reference_tokens_s=(\S+) reference_wer=(\S+) "
                  r"best=(\w+) best_tokens_s=(\S+) best_wer=(\S+) best_loss_pct=(\S+) best_llm_ms_per_s=(\S+) ratio=(\S+)$",
                  out.strip())  # fmt: skip
    assert m, out.strip().splitlines()[-1]
    # the same bundle twice: equal rates and WERs, so the reference is the best and the ratio 1
    assert m[2] == m[5] and m[3] == m[6] and float(m[9]) == 1.0 and float(m[7]) == 0.0
    assert float(m[8]) > 0  # the LLM's decoding took time: its ms per second of audio
    rows = [line for line in out.splitlines() if line.startswith("| a |") or line.startswith("| b |")]
    assert all(len(line.strip("|").split("|")) == 6 for line in rows)  # tokens/s, WER, loss, LLM ms/s, saved


def test_bench_compression_refuses_a_malformed_bundle_argument(manifest, capsys):
    assert main(["bench", "compression", "--bundle", "no-equals-sign", "--manifest", str(manifest)]) == 2
    assert "--bundle takes NAME=DIR, got 'no-equals-sign'" in capsys.readouterr().err
