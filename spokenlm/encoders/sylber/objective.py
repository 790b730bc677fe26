"""Sylber's training objective (Cho et al., 2024, §3.2): segment-level self-distillation from an EMA
teacher. ``SylberObjectiveConfig``, ``SylberDistillation`` (wraps ANY ``SpeechEncoder`` as the student,
keeps its EMA teacher), the typed ``SylberLoss``, and ``NormThresholdEstimator``: the online
speech/non-speech feature-norm threshold (two EMA Gaussians, the authors' Thresholder).

Not here: the network (``encoder.py``), the optimiser loop (the sylber recipe).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from spokenlm.compress.segment import EPS, Span, pool_segments, segment_batch


# ----------------------------------------------------------------------------------------------
# Online norm threshold: speech and non-speech feature norms as two Gaussians (the authors' Thresholder)


class NormThresholdEstimator(nn.Module):
    """Speech/non-speech norm threshold, re-estimated online during training.

    Speech-frame norms ~ N(signal_mean, signal_var), non-speech ~ N(noise_mean, noise_var); each
    moment is an EMA over batches (``decay``; a variance uses the just-updated mean, as the authors
    do). The threshold is where the two densities cross between the means (equal priors). No
    gradient: the four statistics are buffers, saved with the module.
    """

    signal_mean: Tensor
    signal_var: Tensor
    noise_mean: Tensor
    noise_var: Tensor

    def __init__(self, *, init: tuple[float, float, float, float], decay: float) -> None:
        super().__init__()
        self.decay = decay
        for name, value in zip(("signal_mean", "signal_var", "noise_mean", "noise_var"), init):
            self.register_buffer(name, torch.tensor(float(value), dtype=torch.float64))

    @torch.no_grad()
    def update(self, signal: Tensor | None, noise: Tensor | None) -> None:
        """Fold in one batch of speech (``signal``) and non-speech (``noise``) norms; empty = skip."""
        d = self.decay
        for prefix, norms in (("signal", signal), ("noise", noise)):
            if norms is None or norms.numel() == 0:
                continue
            norms = norms.detach().to(torch.float64)
            mean, var = getattr(self, f"{prefix}_mean"), getattr(self, f"{prefix}_var")
            mean.mul_(d).add_((1 - d) * norms.mean())
            var.mul_(d).add_((1 - d) * ((norms - mean) ** 2).mean())

    def threshold(self) -> float:
        """The crossing of the two Gaussians between their means; the midpoint if there is none."""
        mu_s, mu_n = float(self.signal_mean), float(self.noise_mean)
        var_s, var_n = float(self.signal_var) + EPS, float(self.noise_var) + EPS
        # log N(x; mu_s, var_s) = log N(x; mu_n, var_n)  <=>  a x^2 + b x + c = 0
        a = var_s - var_n
        b = 2 * (var_n * mu_s - var_s * mu_n)
        c = var_s * mu_n**2 - var_n * mu_s**2 - var_s * var_n * math.log(var_s / var_n)
        lo, hi = min(mu_s, mu_n), max(mu_s, mu_n)
        if abs(a) < 1e-12:
            roots = [-c / b] if b != 0 else []
        else:
            disc = b * b - 4 * a * c
            roots = [(-b + sign * math.sqrt(disc)) / (2 * a) for sign in (1, -1)] if disc >= 0 else []
        between = [r for r in roots if lo <= r <= hi]
        return between[0] if between else (mu_s + mu_n) / 2


# ----------------------------------------------------------------------------------------------
# Training objective (§3.2): segment-level self-distillation from an EMA teacher


@dataclass(frozen=True, kw_only=True)
class SylberObjectiveConfig:
    """How the student is trained; the defaults are the authors' code defaults."""

    ema_decay: float = 0.999
    """teacher <- decay * teacher + (1 - decay) * student after each step; 1.0 freezes the teacher
    (the released training configs use 1.0 within a stage and restart from the previous stage)."""

    merge_threshold_range: tuple[float, float] = (0.5, 0.7)
    """The teacher's merge threshold is drawn uniformly from this range once per batch, so the
    student learns features that segment well across thresholds (lo == hi: fixed)."""

    norm_stats_init: tuple[float, float, float, float] = (6.10, 0.87, 0.34, 0.34)
    """Initial (signal mean, signal var, noise mean, noise var) of feature norms: the authors' stage-2
    values for HuBERT layer 9; for a student of another scale, start from its own norms."""

    norm_stats_decay: float = 0.9999

    nonspeech_weight: float = 1.0
    """Weight of valid frames outside every segment, whose target is the zero vector (the authors'
    loss: it keeps non-speech norms low, which the norm threshold relies on). 0.0 counts only frames
    inside segments."""

    def validate(self) -> None:
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay!r}")
        lo, hi = self.merge_threshold_range
        if not -1.0 <= lo <= hi <= 1.0:
            raise ValueError(f"merge_threshold_range must be lo <= hi within [-1, 1], got {(lo, hi)!r}")
        stats = self.norm_stats_init
        if len(stats) != 4 or stats[1] < 0 or stats[3] < 0:
            raise ValueError(f"norm_stats_init must be (mean, var >= 0, mean, var >= 0), got {stats!r}")
        if not 0.0 <= self.norm_stats_decay <= 1.0:
            raise ValueError(f"norm_stats_decay must be in [0, 1], got {self.norm_stats_decay!r}")
        if self.nonspeech_weight < 0:
            raise ValueError(f"nonspeech_weight must be >= 0, got {self.nonspeech_weight!r}")


@dataclass(frozen=True)
class SylberLoss:
    loss: Tensor  # () squared L2 distance to the target per frame, averaged over weighted valid frames
    segments: list[list[Span]]  # per item: the teacher's segments, in frames
    merge_threshold: float  # the one drawn for this batch
    norm_threshold: float  # the estimate used for this batch (before this batch's update)
    speech_fraction: float  # valid frames inside a segment / valid frames
    segments_per_second: float  # segments / seconds of valid frames, over the batch


class SylberDistillation(nn.Module):
    """Student (any ``SpeechEncoder`` module), its EMA teacher, and the online norm threshold.

    ``forward(wav, lengths)``: the teacher (eval mode, no gradient) encodes ``wav``; the norm threshold
    and a merge threshold drawn from the range segment each item of the teacher's features; the
    target of a frame is its segment's mean teacher feature, or zero outside every segment; the loss
    is ``sum_t w_t ||student_t - target_t||^2 / sum_t w_t`` over valid frames (w = 1 inside,
    ``nonspeech_weight`` outside). In training mode it then updates the norm statistics, as the
    authors' stage 2: speech norms from the teacher's frames above the threshold, non-speech norms
    from the student's frames the teacher put below it. Call ``update_teacher()`` after each
    optimiser step.
    """

    def __init__(self, *, student: nn.Module, config: SylberObjectiveConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.student = student
        self.teacher = copy.deepcopy(student).requires_grad_(False).eval()
        self.norm_stats = NormThresholdEstimator(init=config.norm_stats_init, decay=config.norm_stats_decay)

    def train(self, mode: bool = True) -> SylberDistillation:
        super().train(mode)
        self.teacher.eval()  # the teacher never drops out
        return self

    def norm_threshold(self) -> float:
        return self.norm_stats.threshold()

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA of trainable parameters; frozen parameters and buffers are copied."""
        decay = self.config.ema_decay
        student = dict(self.student.named_parameters())
        for name, t in self.teacher.named_parameters():
            s = student[name]
            if s.requires_grad:
                t.mul_(decay).add_(s.detach(), alpha=1 - decay)
            else:
                t.copy_(s)
        student_buffers = dict(self.student.named_buffers())
        for name, t in self.teacher.named_buffers():
            t.copy_(student_buffers[name])

    def forward(
        self,
        wav: Tensor,
        lengths: Tensor,
        *,
        student_wav: Tensor | None = None,
        generator: torch.Generator | None = None,
        segments: list[list[Span]] | None = None,
    ) -> SylberLoss:
        """wav: (B, S) clean audio for the teacher; student_wav: the same audio augmented (noise),
        default ``wav``; generator draws the merge threshold. ``segments``: the teacher's frames of each
        item are pooled over these instead of the teacher's own segmentation (the paper's first stage,
        which distils another model's segments); no merge threshold is drawn and the norm statistics
        stay as they are (``merge_threshold`` in the result is then NaN)."""
        with torch.no_grad():
            teacher = self.teacher(wav, lengths)
        target_features = teacher.features.detach().float()  # (B, T, D)
        norm_threshold = self.norm_threshold()
        if segments is None:
            lo, hi = self.config.merge_threshold_range
            merge = lo + (hi - lo) * float(torch.rand((), generator=generator))
            segments = segment_batch(
                target_features, teacher.lengths, norm_threshold=norm_threshold, merge_threshold=merge
            )
            own_segments = True
        else:
            _check_given_segments(segments, teacher.lengths)
            merge, own_segments = math.nan, False
        means, _, token_of_frame = pool_segments(target_features, segments)  # (B, N, D), (B, T)
        inside = token_of_frame >= 0
        targets = torch.zeros_like(target_features)
        targets[inside] = means[inside.nonzero(as_tuple=True)[0], token_of_frame[inside]]

        student = self.student(wav if student_wav is None else student_wav, lengths)
        if student.features.shape != target_features.shape:
            raise ValueError(
                f"student features {tuple(student.features.shape)} do not match the teacher's "
                f"{tuple(target_features.shape)}"
            )
        frames = target_features.shape[1]
        valid = torch.arange(frames, device=inside.device) < teacher.lengths.to(inside.device)[:, None]  # (B, T)
        weight = inside.float() + self.config.nonspeech_weight * (valid & ~inside).float()
        error = ((student.features.float() - targets) ** 2).sum(dim=-1)  # (B, T)
        loss = (error * weight).sum() / weight.sum().clamp(min=EPS)

        if self.training and own_segments:
            teacher_norms = target_features.norm(dim=-1)  # (B, T)
            student_norms = student.features.detach().float().norm(dim=-1)
            speech = valid & (teacher_norms >= norm_threshold)
            self.norm_stats.update(teacher_norms[speech], student_norms[valid & ~speech])

        n_valid = int(valid.sum())
        seconds = n_valid / teacher.frame_rate_hz
        return SylberLoss(
            loss=loss,
            segments=segments,
            merge_threshold=merge,
            norm_threshold=norm_threshold,
            speech_fraction=float(inside.sum()) / max(n_valid, 1),
            segments_per_second=sum(len(s) for s in segments) / seconds if seconds else 0.0,
        )


def _check_given_segments(segments: list[list[Span]], lengths: Tensor) -> None:
    if len(segments) != len(lengths):
        raise ValueError(f"segments are given for {len(segments)} items, the batch has {len(lengths)}")
    for i, (spans, n) in enumerate(zip(segments, lengths.tolist())):
        end = 0
        for s, e in spans:
            if not end <= s < e <= n:
                raise ValueError(
                    f"item {i}: segments must be ordered, disjoint, non-empty and within its {n} frames, got {spans}"
                )
            end = e
