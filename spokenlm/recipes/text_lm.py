"""Recipe `text-lm`: a BPE tokenizer and a small Llama-architecture decoder pretrained on text.

    spokenlm train text-lm --config configs/text_lm.yaml

1. Read sentences from text files (one per line) and/or a corpus manifest.jsonl (every task target).
2. Hold out a fixed fraction of lines, chosen by a hash of the text (stable across runs and resumes).
3. Train a byte-level BPE tokenizer (HF tokenizers) on the training lines.
4. Pack tokenised lines, separated by </s>, into blocks; train a LlamaForCausalLM from scratch with
   AdamW + warmup/cosine (over max_steps, or with `optim.lr_over_minutes` over the time budget); evaluate
   held-out loss every `eval_every` steps; checkpoint; resume.
5. Write OUT/llm/ (a Hugging Face causal-LM dir with the tokenizer), metrics.json and loss.png.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spokenlm.train.loop import (
    Checkpointer,
    MetricsLog,
    OptimConfig,
    WallClock,
    barrier,
    build_optimizer,
    clip_and_step,
    is_main,
    lr_now,
    mean_across_workers,
    rank,
    set_lr,
    world_size,
    wrap_ddp,
)


def llama_small() -> dict:
    """~4M parameters at vocab 4000: what pretrains usefully in under an hour on 2 CPU cores."""
    return {
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 1024,
        "tie_word_embeddings": True, "rope_theta": 10000.0,
    }  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TextLMConfig:
    out_dir: str
    texts: tuple[str, ...]  # text files (a sentence per line) and/or manifest.jsonl files
    heldout_fraction: float = 0.02  # of lines, by text hash
    vocab_size: int = 4000
    arch: dict = field(default_factory=llama_small)  # HF config dict; vocab_size is filled in
    seq_len: int = 128  # tokens per packed training block
    batch_size: int = 32  # blocks per step per worker
    eval_every: int = 200
    eval_batches: int = 20
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, warmup_steps=200, max_steps=4000))

    def validate(self) -> None:
        if not self.texts:
            raise ValueError("text-lm needs at least one entry in texts")
        if not 0 < self.heldout_fraction < 0.5:
            raise ValueError(f"heldout_fraction must be in (0, 0.5), got {self.heldout_fraction}")
        if self.seq_len < 8 or self.batch_size < 1:
            raise ValueError(f"seq_len must be >= 8 and batch_size >= 1, got {self.seq_len}, {self.batch_size}")
        self.optim.validate()


def read_lines(paths: tuple[str, ...]) -> list[str]:
    """Sentences from text files (each side of a .tsv pair), and every task target from manifests."""
    from spokenlm.tasks import TASKS

    lines: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"text source not found: {path}")
        if path.suffix == ".jsonl":
            for row in map(json.loads, path.read_text().splitlines()):
                if row.get("split") not in (None, "fine-tune", "train"):
                    continue  # never pretrain on the corpus' dev/test sentences
                labels = row["task_labels"]
                for task in row.get("tasks", ["asr"]):
                    lines.append(TASKS[task].target(labels))
        else:
            for line in path.read_text().splitlines():
                lines.extend(part.strip() for part in line.split("\t"))  # .tsv pairs: both sides
    return list(dict.fromkeys(line for line in lines if line))  # dedupe, keep order


def is_heldout(line: str, fraction: float) -> bool:
    digest = hashlib.sha1(line.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def pack(token_lists: list[list[int]], eos_id: int, seq_len: int) -> torch.Tensor:
    """Concatenate token lists with </s> between them and cut into (N, seq_len + 1) blocks."""
    stream = [t for tokens in token_lists for t in (*tokens, eos_id)]
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ValueError(f"too little text: {len(stream)} tokens for one block of {seq_len + 1}")
    return torch.tensor(stream[: n * seq_len + 1]).unfold(0, seq_len + 1, seq_len)


def block_loss(model: torch.nn.Module, block: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of (B, L + 1) token blocks."""
    logits = model(input_ids=block[:, :-1]).logits  # (B, L, V)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), block[:, 1:].flatten())


def train(config: TextLMConfig) -> dict:
    from spokenlm.lm import build_llm, save_llm
    from spokenlm.tokenizer import train_bpe_tokenizer
    from transformers import AutoTokenizer

    config.validate()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = read_lines(config.texts)
    train_lines = [line for line in lines if not is_heldout(line, config.heldout_fraction)]
    heldout_lines = [line for line in lines if is_heldout(line, config.heldout_fraction)]
    if not heldout_lines:
        raise ValueError("no held-out lines: add text or raise heldout_fraction")

    tokenizer_dir = out / "tokenizer"
    if is_main() and not (tokenizer_dir / "tokenizer.json").is_file():
        train_bpe_tokenizer(train_lines, vocab_size=config.vocab_size, out_dir=tokenizer_dir)
    barrier()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def encode(texts: list[str]) -> list[list[int]]:
        return [ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    train_blocks = pack(encode(train_lines), tokenizer.eos_token_id, config.seq_len)
    heldout_blocks = pack(encode(heldout_lines), tokenizer.eos_token_id, config.seq_len)

    torch.manual_seed(config.seed)
    llm = build_llm({**config.arch, "vocab_size": len(tokenizer)}, tokenizer)
    model = wrap_ddp(llm.model)
    optimizer = build_optimizer(llm.model.parameters(), config.optim)
    checkpoints, metrics = Checkpointer(out), MetricsLog(out)
    state = checkpoints.restore({"model": llm.model}, optimizer) or {"step": 0, "wall_s": 0.0}
    step, clock = state["step"], WallClock(state["wall_s"])
    rng = random.Random(config.seed * 1000 + rank() + step)  # a resumed run draws fresh batches

    def save() -> None:
        if is_main():
            checkpoints.save(step, {"model": llm.model}, optimizer, {"wall_s": clock.seconds})

    @torch.no_grad()
    def heldout_loss() -> float:
        llm.model.eval()
        losses = []
        for i in range(min(config.eval_batches, math.ceil(len(heldout_blocks) / config.batch_size))):
            block = heldout_blocks[i * config.batch_size : (i + 1) * config.batch_size]
            losses.append(float(block_loss(llm.model, block)))
        llm.model.train()
        return sum(losses) / len(losses)

    if step == 0:  # the untrained model's held-out loss: the baseline the curve is read against
        val = mean_across_workers(heldout_loss())
        if is_main():
            metrics.log(0, val_loss=val)
    llm.model.train()
    while step < config.optim.max_steps and not clock.over(config.optim):
        idx = [rng.randrange(len(train_blocks)) for _ in range(config.batch_size)]
        block = train_blocks[idx]
        lr = lr_now(step, clock.seconds, config.optim)
        set_lr(optimizer, lr)
        loss = block_loss(model, block)
        loss.backward()
        clip_and_step(optimizer, llm.model.parameters(), config.optim)
        step += 1
        if step % 20 == 0 and is_main():
            metrics.log(step, loss=loss.item(), lr=lr)
        if step % config.eval_every == 0:
            val = mean_across_workers(heldout_loss())
            if is_main():
                metrics.log(step, val_loss=val)
            save()
    save()

    val = mean_across_workers(heldout_loss())
    summary = {
        "stage": "text-lm",
        "steps": step,
        "wall_minutes": round(clock.seconds / 60, 2),
        "workers": world_size(),
        "train_lines": len(train_lines),
        "heldout_lines": len(heldout_lines),
        "train_tokens": int(train_blocks.numel()),
        "heldout_loss_start": round(next(r["val_loss"] for r in metrics.rows() if "val_loss" in r), 4)
        if is_main()
        else None,
        "heldout_loss": round(val, 4),
        "heldout_perplexity": round(math.exp(val), 2),
        "parameters": sum(p.numel() for p in llm.model.parameters()),
    }
    if is_main():
        metrics.log(step, val_loss=val)
        save_llm(llm, out / "llm")
        metrics.write_summary(summary)
        metrics.plot(title="text-lm")
    return summary
