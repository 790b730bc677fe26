"""bench/speculative.py through `spokenlm bench speculative`: its last line, and the layer-skip draft."""

import math
import re
import runpy
from pathlib import Path

import pytest

from spokenlm.cli import main

BENCH = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "speculative.py"))


@pytest.mark.slow
def test_spokenlm_bench_speculative_prints_its_summary_line(capsys):
    assert main(["bench", "speculative", "--size", "tiny", "--prompts", "2", "--new-tokens", "6"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(
        r"bench speculative: size=tiny draft_layers=2 draft_tokens=4 acceptance=(\S+) cost=(\S+) "
        r"plain_tok_s=(\S+) spec_tok_s=(\S+) identical=True ratio=(\S+)",
        last,
    )
    assert m, last
    acceptance, cost, *_, ratio = map(float, m.groups())
    assert 0 <= acceptance <= 1 and cost > 0 and ratio > 0


@pytest.mark.slow
def test_the_bundle_measurement_reads_clips_from_a_manifest_split(tiny_bundle, example_clips, tmp_path, capsys):
    import json
    import shutil

    rows = []
    for i, split in enumerate(["test", "dev", "test"]):
        shutil.copy(example_clips[i % len(example_clips)], tmp_path / f"{i}.wav")
        rows.append({"id": f"u{i}", "split": split, "audio": f"{i}.wav", "duration_s": 3.0,
                     "tasks": ["asr", "sentiment"] if i == 2 else ["asr"],
                     "task_labels": {"text": "x", "sentiment": "Positive"}})  # fmt: skip
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["bench", "speculative", "--size", "tiny", "--prompts", "1", "--new-tokens", "4",
                 "--model", str(tiny_bundle), "--manifest", str(tmp_path / "manifest.jsonl"), "--tasks", "all",
                 "--speedups", "merge"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert re.search(r"^2\. .* with a lookup draft of the prompt's transcript, greedy, batch 1, 4 drafted per block, "
                     r"LLM speed-ups merge;", out, re.M), out  # fmt: skip
    rows = {m[0]: m[1:] for m in re.findall(r"^\| (asr|sentiment) \| (\d+) \| \d+ \| (\S+) \| (\S+) \| \S+x \| (\S+) \|", out, re.M)}
    assert sorted(rows) == ["asr", "sentiment"] and (rows["asr"][0], rows["sentiment"][0]) == ("2", "1"), out
    for _, plain, spec, prefill in rows.values():  # the prefill is part of either decoding
        assert float(prefill) <= 1.5 * min(float(plain), float(spec)) + 0.01  # 2 decimals: the tiny LLM takes ms
    assert "answers ASR from its transcript" not in out  # the tiny bundle's LLM decodes ASR itself
    assert re.search(r" asr_acceptance=\S+ asr_ratio=\S+ asr_decoding_ratio=\S+ sentiment_acceptance=\S+ sentiment_ratio=\S+ "
                     r"sentiment_decoding_ratio=\S+ ratio=\S+$", out.strip().splitlines()[-1])  # fmt: skip
    assert main(["bench", "speculative", "--size", "tiny", "--prompts", "1", "--new-tokens", "4",
                 "--model", str(tiny_bundle), "--manifest", str(tmp_path / "manifest.jsonl"), "--split", "train"]) == 1
    assert "manifest.jsonl split 'train' has no items for tasks ['asr']" in capsys.readouterr().err


def test_the_decoding_speedup_leaves_the_prefill_out():
    speedup = BENCH["decoding_speedup"]
    assert speedup({"plain_s": 5.0, "spec_s": 3.0, "prefill_s": 1.0}) == 2.0  # (5 - 1) / (3 - 1)
    assert math.isnan(speedup({"plain_s": 1.0, "spec_s": 1.2, "prefill_s": 1.1}))  # a one-token answer: noise

def test_a_draft_with_every_layer_is_the_target_and_always_accepted():
    import torch
    from transformers import LlamaConfig

    from spokenlm.lm import GenerationConfig, build_llm, speculative_generate
    from spokenlm.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(BENCH["PROMPTS"] * 10, vocab_size=300)
    torch.manual_seed(0)
    target = build_llm(LlamaConfig(**{**BENCH["SIZES"]["tiny"], "vocab_size": len(tok)}), tok)
    full = BENCH["layer_skip_draft"](target, 4)
    _, stats = speculative_generate(target, full, ["the quick"], config=GenerationConfig(max_new_tokens=9))
    assert stats.acceptance_rate == 1.0 and stats.target_forwards == 3  # prefill + 2 blocks of 4 + 1
    short = BENCH["layer_skip_draft"](target, 1)
    assert sum(p.numel() for p in short.llm.model.parameters()) < sum(p.numel() for p in target.model.parameters())


def test_expected_speedup_follows_leviathan_eq_1():
    speedup = BENCH["expected_speedup"]
    assert speedup(1.0, 4, 0.0) == 5.0  # every draft accepted, free draft: k + 1 tokens per forward
    assert speedup(0.0, 4, 0.1) == pytest.approx(1 / 1.4)  # nothing accepted: pure overhead
    assert speedup(0.8, 4, 0.2) == pytest.approx((1 - 0.8**5) / 0.2 / 1.8)
