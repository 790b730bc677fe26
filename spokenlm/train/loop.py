"""The pieces every recipe uses: optimiser settings and schedule, resumable checkpoints, metrics
with a loss-curve PNG, a wall-clock budget, and torch.distributed helpers (no-ops in one process).

Not a framework: no callbacks, no trainer class. A recipe owns its loop and calls these.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 200
    max_steps: int = 10_000  # cosine decay ends here
    max_minutes: float = 0.0  # > 0: stop (and checkpoint) once this much wall time is spent in total
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    min_lr_ratio: float = 0.05  # the cosine floor, as a fraction of lr
    lr_over_minutes: bool = False
    """Run the cosine over wall time (max_minutes) instead of max_steps, which is then only an upper
    bound: a time-budgeted run on shared cores ends at the floor learning rate whatever its step rate."""

    def validate(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"optim.lr must be a positive number, got {self.lr}")
        if self.max_steps <= 0 or self.warmup_steps < 0:
            raise ValueError(f"optim.max_steps must be > 0 and warmup_steps >= 0, got {self.max_steps}, {self.warmup_steps}")
        if self.max_minutes < 0 or self.grad_clip < 0:
            raise ValueError("optim.max_minutes and optim.grad_clip must be >= 0")
        if self.lr_over_minutes and not self.max_minutes > 0:
            raise ValueError("optim.lr_over_minutes needs optim.max_minutes > 0")


def build_optimizer(params, config: OptimConfig) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def lr_at(step: int, config: OptimConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr_ratio * lr at max_steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_and_step(optimizer: torch.optim.Optimizer, params, config: OptimConfig) -> float:
    """Clip the global grad norm (when configured), step, zero grads; returns the pre-clip norm."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


# --- checkpoints ---------------------------------------------------------------------------------


class Checkpointer:
    """Resumable checkpoints in DIR/checkpoints/step-N/: one safetensors file per module, the
    optimiser state (tensors and numbers only: loaded back with weights_only=True) and state.json.
    A checkpoint directory appears only once complete (written under a temporary name, then renamed).
    """

    def __init__(self, out_dir: str | Path, *, keep: int = 2):
        self.root = Path(out_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        done = sorted(
            (p for p in self.root.glob("step-*") if (p / "state.json").is_file()),
            key=lambda p: int(p.name.split("-")[1]),
        )
        return done[-1] if done else None

    def save(self, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None, state: dict) -> Path:
        final = self.root / f"step-{step}"
        tmp = self.root / f".tmp-step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, module in modules.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in _unwrap(module).state_dict().items()}
            save_file(_untie(tensors), str(tmp / f"{name}.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(self.root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(self, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None) -> dict | None:
        """Load the latest checkpoint into `modules` / `optimizer`; its state dict, or None if none."""
        latest = self.latest()
        if latest is None:
            return None
        for name, module in modules.items():
            _unwrap(module).load_state_dict(load_file(str(latest / f"{name}.safetensors")), strict=False)
        if optimizer is not None and (latest / "optimizer.pt").is_file():
            optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
        return json.loads((latest / "state.json").read_text())


def finished_summary(out_dir: str | Path, max_steps: int) -> dict | None:
    """The metrics.json summary of the run in `out_dir` when it already ran to `max_steps` (its latest
    checkpoint and its summary both say so), else None. A recipe rerun on a finished run returns this
    and writes nothing: the chain's later stages compare file times to see whether to run again."""
    latest = Checkpointer(out_dir).latest()
    summary_path = Path(out_dir) / "metrics.json"
    if latest is None or not summary_path.is_file():
        return None
    step = json.loads((latest / "state.json").read_text())["step"]
    summary = json.loads(summary_path.read_text())
    return summary if step >= max_steps and summary.get("steps") == step else None


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _untie(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): give each its own copy."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in tensors.items():
        ptr = t.data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.setdefault(ptr, name)
    return out


# --- metrics -------------------------------------------------------------------------------------


class MetricsLog:
    """Appends one JSON line per logged step to DIR/metrics.jsonl (kept across resumes), writes
    DIR/metrics.json (the summary a recipe reports) and DIR/loss.png (the loss curves)."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"

    def log(self, step: int, **values: float) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")

    def plot(self, keys: tuple[str, ...] = ("loss", "val_loss"), title: str = "") -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), label=key, marker="." if key.startswith("val") else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        out = self.dir / "loss.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


class WallClock:
    """Wall time spent on a run, carried across resumes through the checkpoint state."""

    def __init__(self, already_s: float = 0.0):
        self.start = time.monotonic() - already_s

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start

    def over(self, config: OptimConfig) -> bool:
        """Whether the budget is spent. Under DDP every worker gets the same answer (any worker over
        the budget stops them all), so none leaves the loop while the others wait in an all-reduce."""
        local = config.max_minutes > 0 and self.seconds >= config.max_minutes * 60
        return mean_across_workers(float(local)) > 0


# --- distributed (Ray Train workers initialise the process group) --------------------------------


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def wrap_ddp(module: nn.Module) -> nn.Module:
    """DistributedDataParallel when a process group exists, else the module itself."""
    if world_size() > 1:
        return nn.parallel.DistributedDataParallel(module)
    return module


def mean_across_workers(value: float) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world_size()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def lr_now(step: int, elapsed_s: float, optim: OptimConfig) -> float:
    """`lr_at(step)`; with `optim.lr_over_minutes`, the cosine's progress after warmup is instead the share
    of `optim.max_minutes` spent, so the decay ends with the budget whatever the step rate of shared cores."""
    if optim.lr_over_minutes and step >= optim.warmup_steps:
        share = min(1.0, elapsed_s / (optim.max_minutes * 60))
        step = optim.warmup_steps + int(share * (optim.max_steps - optim.warmup_steps))
    return lr_at(step, optim)


def sum_across_workers(t: Tensor) -> Tensor:
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def spread_across_workers(t: Tensor) -> float:
    """Largest |difference| of `t` between any two workers; 0.0 in one process."""
    if world_size() == 1:
        return 0.0
    hi, lo = t.detach().double().clone(), t.detach().double().clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).abs().max())
