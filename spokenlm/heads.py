"""Task heads: a closed-set task answered by a linear classifier over the speech LM's reading of its
prompt, instead of by decoding label names.

SLUE's own baselines classify (Shon et al., 2022, §4: wav2vec2 + a pooled linear head for sentiment;
SLUE phase 2 does the same for HVB dialog acts). Here the LLM (with its LoRA) reads the same prompt it
would answer (speech embeddings, the transcript line, the task's instruction); the head reads the LLM's
last-layer hidden states, pooled over the prompt (its last position, the mean of all, or both), and
gives the label set. Why: a 135M LLM that decodes
act names confuses neighbouring acts ("acknowledge" / "answer_agree") that a classifier fitted to all
the training prompts at once separates; the LLM's own weights are untouched, so every other task reads
exactly as before.

A head is `head.json` (its `TaskHeadConfig` and the metrics it was picked by) + `head.safetensors`
(weight (num_labels, input_dim), bias (num_labels,)). `spokenlm.recipes.heads` fits one;
`spokenlm bundle set DIR --head PATH` gives it to a bundle, and `spokenlm.model.decode_speech` then
answers that task's requests with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from spokenlm.tasks import DIALOG_ACTS, SENTIMENTS

Pooling = Literal["last", "mean", "last+mean"]
POOLINGS: tuple[str, ...] = ("last", "mean", "last+mean")
# The tasks a head can answer, and their labels: dialog acts are multi-label, sentiment one label.
HEAD_LABELS: dict[str, tuple[str, ...]] = {"dialog-act": DIALOG_ACTS, "sentiment": SENTIMENTS}
MULTI_LABEL: frozenset[str] = frozenset({"dialog-act"})


class HeadError(ValueError):
    """A head directory or config that cannot be used."""


@dataclass(frozen=True, kw_only=True)
class TaskHeadConfig:
    task: str  # a key of HEAD_LABELS
    model_dim: int  # the LLM's hidden size the head reads
    # "last": the prompt's last position (where the reply starts); "mean": all its positions; "last+mean": both, side by side
    pooling: Pooling = "last+mean"
    threshold: float = 0.5  # multi-label: labels with probability >= this (and always the most likely one)
    labels: tuple[str, ...] = field(default=())  # empty: HEAD_LABELS[task]

    def validate(self) -> None:
        if self.task not in HEAD_LABELS:
            raise HeadError(f"no head for task {self.task!r}; heads answer {sorted(HEAD_LABELS)}")
        if self.pooling not in POOLINGS:
            raise HeadError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.model_dim, int) or self.model_dim <= 0:
            raise HeadError(f"model_dim must be a positive int, got {self.model_dim!r}")
        if not 0.0 < self.threshold < 1.0:
            raise HeadError(f"threshold must be in (0, 1), got {self.threshold!r}")
        unknown = [x for x in self.labels if x not in HEAD_LABELS[self.task]]
        if unknown:
            raise HeadError(f"labels {unknown} are not {self.task} labels")

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.labels or HEAD_LABELS[self.task]

    @property
    def input_dim(self) -> int:
        """The width of the pooled states the head reads: model_dim per pooling it joins."""
        return self.model_dim * len(self.pooling.split("+"))


class TaskHead(nn.Module):
    """Logits (B, num_labels) of pooled LLM states (B, input_dim); `answer` gives the text the task's
    parser reads (`spokenlm.tasks.parse_output`), so a head's result is typed like a decoded one."""

    def __init__(self, config: TaskHeadConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.linear = nn.Linear(config.input_dim, len(config.label_names))

    def forward(self, states: Tensor) -> Tensor:
        if states.dim() != 2 or states.shape[1] != self.config.input_dim:
            raise HeadError(f"states must be (B, {self.config.input_dim}), got shape {tuple(states.shape)}")
        # the head stays where it was loaded (a bundle moved to a GPU leaves it on the CPU: it is tiny)
        return self.linear(states.to(device=self.linear.weight.device, dtype=self.linear.weight.dtype))

    @torch.no_grad()
    def predict(self, states: Tensor) -> list[tuple[str, ...]]:
        """Label set per row: multi-label tasks every label at or above the threshold (at least the
        most likely), others the most likely label alone."""
        logits = self(states)
        names = self.config.label_names
        if self.config.task not in MULTI_LABEL:
            return [(names[int(k)],) for k in logits.argmax(dim=1)]
        probs = torch.sigmoid(logits)
        chosen = probs >= self.config.threshold
        chosen[torch.arange(len(probs)), probs.argmax(dim=1)] = True
        return [tuple(n for n, on in zip(names, row) if on) for row in chosen.tolist()]

    def answer(self, states: Tensor) -> list[str]:
        return [", ".join(labels) for labels in self.predict(states)]


def pool_states(hidden: Tensor, attention_mask: Tensor, pooling: Pooling) -> Tensor:
    """(B, L, D) hidden states of LEFT-padded prompts -> (B, D): the last position (real in every
    row under left padding) or the mean over the real positions; "last+mean": (B, 2D), the two joined."""
    if pooling == "last+mean":
        return torch.cat([pool_states(hidden, attention_mask, "last"), pool_states(hidden, attention_mask, "mean")], 1)
    if pooling == "last":
        return hidden[:, -1]
    if pooling != "mean":
        raise HeadError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    mask = attention_mask[..., None].to(hidden.dtype)  # (B, L, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def fit_head(config: TaskHeadConfig, states: Tensor, label_sets: Sequence[Sequence[str]], *, c: float = 1.0,
             seed: int = 0) -> TaskHead:  # fmt: skip
    """A head fitted by L2 logistic regression (scikit-learn: one binary problem per label for
    multi-label tasks, multinomial otherwise) on states (N, input_dim) with their label sets. Features are
    standardised with the training mean and spread, folded into the linear layer afterwards."""
    from sklearn.linear_model import LogisticRegression

    config.validate()
    names = config.label_names
    if states.dim() != 2 or states.shape[1] != config.input_dim:
        raise HeadError(f"states must be (N, {config.input_dim}), got shape {tuple(states.shape)}")
    if len(label_sets) != states.shape[0]:
        raise HeadError(f"got {states.shape[0]} states but {len(label_sets)} label sets")
    if not c > 0:
        raise HeadError(f"c must be positive, got {c!r}")
    x = states.double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-6)
    z = ((x - mean) / std).numpy()
    weight = torch.zeros(len(names), config.input_dim, dtype=torch.float64)
    bias = torch.zeros(len(names), dtype=torch.float64)
    if config.task in MULTI_LABEL:
        for k, name in enumerate(names):
            y = [name in labels for labels in label_sets]
            if all(y) or not any(y):  # a label always (never) present: a constant, no regression to fit
                bias[k] = 30.0 if all(y) else -30.0
                continue
            lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, y)
            weight[k], bias[k] = torch.from_numpy(lr.coef_[0]), float(lr.intercept_[0])
    else:
        y = [names.index(labels[0]) for labels in label_sets]
        present = sorted(set(y))
        if len(present) < 2:
            raise HeadError(f"the training labels hold one class only ({names[present[0]]!r}): nothing to fit")
        lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, y)
        for row, k in enumerate(lr.classes_):
            weight[k], bias[k] = torch.from_numpy(lr.coef_[row]), float(lr.intercept_[row])
        for k in set(range(len(names))) - set(present):
            bias[k] = -30.0  # never seen in training: never predicted
    head = TaskHead(config)
    with torch.no_grad():  # z = (x - mean) / std  =>  w·z + b = (w / std)·x + (b - (w / std)·mean)
        scaled = weight / std
        head.linear.weight.copy_(scaled.float())
        head.linear.bias.copy_((bias - scaled @ mean).float())
    return head.eval()


def save_head(head: TaskHead, path: str | Path, *, metrics: dict | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in head.linear.state_dict().items()}, str(out / "head.safetensors"))
    meta = {"config": {**asdict(head.config), "labels": list(head.config.label_names)}, "metrics": metrics or {}}
    (out / "head.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_head_config(path: str | Path) -> TaskHeadConfig:
    file = Path(path) / "head.json"
    if not file.is_file():
        raise HeadError(f"{path}: not a task head (no head.json)")
    try:
        raw = json.loads(file.read_text())["config"]
        config = TaskHeadConfig(**{**raw, "labels": tuple(raw.get("labels", ()))})
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HeadError(f"{file}: not a head config ({e})") from e
    config.validate()
    return config


def load_head(path: str | Path) -> TaskHead:
    """A saved head (safetensors only), in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    head = TaskHead(read_head_config(path))
    file = Path(path) / "head.safetensors"
    try:
        tensors = load_file(str(file))
    except (OSError, SafetensorError) as e:
        raise HeadError(f"{file}: cannot read the head's weights ({e})") from e
    try:
        head.linear.load_state_dict(tensors)
    except RuntimeError as e:
        raise HeadError(f"{file}: weights do not fit the head's config ({e})") from e
    return head.eval()
