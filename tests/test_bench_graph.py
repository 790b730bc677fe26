"""bench/graph.py on its tiny graph, run as a user runs it (a subprocess from the repository root):
the last line's format, positive RTFs and ratio, every 50 Hz frame reaching the naive LLM and fewer
reaching ours, and the same number of generated tokens per clip on both paths."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(
    r"bench graph: clips=2 seconds=2 naive_rtf=(?P<naive>[0-9.]+) ours_rtf=(?P<ours>[0-9.]+) "
    r"naive_rss_mb=[0-9]+ ours_rss_mb=[0-9]+ dtype=(fp32|bf16-autocast|bf16) ratio=(?P<ratio>[0-9.]+)"
)
# table columns: path, llm dtype, speech tok/s, prompt tok, new tok/clip, encode s, llm s, wall s, RTF, peak
SPEECH_RATE, NEW_TOKENS, RTF = 2, 4, 8


@pytest.mark.slow
def test_tiny_graph_bench_times_both_paths_on_the_same_decoding_work():
    command = [sys.executable, "bench/graph.py", "--size", "tiny", "--clips", "2", "--seconds", "2", "--new-tokens", "4"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()

    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    naive, ours, ratio = (float(match[key]) for key in ("naive", "ours", "ratio"))
    assert naive > 0 and ours > 0 and ratio > 0
    # the printed RTFs are rounded to 3 decimals, the ratio to 2: bound it by the rounding of both RTFs
    low, high = (naive - 5e-4) / (ours + 5e-4), (naive + 5e-4) / max(ours - 5e-4, 1e-9)
    assert low - 0.005 <= ratio <= high + 0.005

    rows = {cells[0]: cells for cells in (line.split() for line in lines) if cells[:1] in (["naive"], ["ours"])}
    assert rows["naive"][NEW_TOKENS] == rows["ours"][NEW_TOKENS] == "4"
    assert float(rows["naive"][SPEECH_RATE]) == pytest.approx(50, abs=1)  # uncompressed 50 Hz frames
    assert float(rows["ours"][SPEECH_RATE]) < float(rows["naive"][SPEECH_RATE]) / 2
    assert float(rows["naive"][RTF]) == pytest.approx(naive, abs=1e-3)
