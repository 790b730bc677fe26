import json
from pathlib import Path

import pytest

from spokenlm.recipes.text_lm import TextLMConfig, is_heldout, pack, read_lines, train
from spokenlm.train.loop import OptimConfig

HARVARD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text" / "harvard.txt"
TINY_ARCH = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True,
}  # fmt: skip


def _config(tmp_path: Path, max_steps: int) -> TextLMConfig:
    return TextLMConfig(
        out_dir=str(tmp_path / "out"),
        texts=(str(HARVARD),),
        heldout_fraction=0.1,
        vocab_size=300,
        arch=TINY_ARCH,
        seq_len=32,
        batch_size=16,
        eval_every=40,
        eval_batches=4,
        optim=OptimConfig(lr=3e-3, warmup_steps=10, max_steps=max_steps),
    )


@pytest.mark.skipif(not HARVARD.is_file(), reason="needs ../shared/data/text/harvard.txt")
def test_text_lm_learns_resumes_and_writes_its_outputs(tmp_path):
    first = train(_config(tmp_path, max_steps=40))
    out = tmp_path / "out"
    assert first["steps"] == 40
    summary = train(_config(tmp_path, max_steps=80))  # resumes from step 40
    assert summary["steps"] == 80
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["step"] == 0) == 1  # the baseline is measured once, not on resume
    # learned something: held-out loss well below the untrained model's
    assert summary["heldout_loss"] < summary["heldout_loss_start"] - 1.0
    for name in ("llm/config.json", "llm/model.safetensors", "llm/tokenizer.json", "metrics.json", "loss.png"):
        assert (out / name).is_file(), name
    from spokenlm.lm import load_llm

    assert load_llm(out / "llm").model_dim == 64


def test_heldout_choice_is_stable_and_disjoint():
    lines = [f"line number {i}" for i in range(2000)]
    held = [line for line in lines if is_heldout(line, 0.1)]
    assert 120 < len(held) < 280
    assert held == [line for line in lines if is_heldout(line, 0.1)]


def test_pack_cuts_overlapping_blocks():
    blocks = pack([[5, 6, 7], [8, 9]], eos_id=2, seq_len=3)
    assert blocks.tolist() == [[5, 6, 7, 2], [2, 8, 9, 2]]


def test_read_lines_refuses_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="text source not found"):
        read_lines((str(tmp_path / "nope.txt"),))


@pytest.mark.slow
@pytest.mark.skipif(not HARVARD.is_file(), reason="needs ../shared/data/text/harvard.txt")
def test_text_lm_runs_under_ray_train_with_two_workers(tmp_path):
    import yaml

    from spokenlm.cli import main

    config = tmp_path / "text_lm.yaml"
    cfg = _config(tmp_path, max_steps=20)
    config.write_text(yaml.safe_dump({
        "out_dir": cfg.out_dir, "texts": list(cfg.texts), "heldout_fraction": 0.1, "vocab_size": 300,
        "arch": TINY_ARCH, "seq_len": 32, "batch_size": 8, "eval_every": 10, "eval_batches": 2,
        "optim": {"lr": 3e-3, "warmup_steps": 5, "max_steps": 20},
    }))  # fmt: skip
    assert main(["train", "text-lm", "--config", str(config), "--workers", "2"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["steps"] == 20
    assert metrics["heldout_loss"] < metrics["heldout_loss_start"]
    assert (tmp_path / "out" / "llm" / "model.safetensors").is_file()


def test_the_shipped_config_parses_and_decays_over_its_budget():
    from spokenlm.train.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "text_lm.yaml", TextLMConfig)
    config.validate()
    assert config.optim.lr_over_minutes and config.optim.max_minutes == 45 and config.optim.max_steps >= 10_000
