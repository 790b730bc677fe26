"""DinoSR's self-supervised pre-training objective (Liu et al., 2023, §2): ``DinoSRPretrainer``
(student + EMA teacher + online-clustered codebooks + heads + mask embedding) with ``forward`` ->
``DinoSRLossOutput``, ``update_codebooks`` and ``ema_step``, and the pieces it is made of as plain
functions (``compute_span_mask``, ``nearest_codeword``, ``ema_codebook_update``,
``ema_decay_at``).

Not here: the network (``encoder.py``), the training loop (the encoder-ssl recipe).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spokenlm.encoders.dinosr.encoder import (
    DinoSREncoder,
    DinoSREncoderConfig,
    _valid_frames,
    build_dinosr_encoder,
    instance_norm,
)


# ----------------------------------------------------------------------------------------------
# Pieces of the objective, as plain functions


def nearest_codeword(x: Tensor, codewords: Tensor) -> Tensor:
    """Index of the codeword nearest in L2 to each row. x: (N, D); codewords: (V, D) -> (N,) int64."""
    # ||x||² is the same for every codeword of a row, so argmin of ||c||² - 2 x·c suffices
    distances = (codewords**2).sum(dim=1)[None, :] - 2.0 * x @ codewords.t()  # (N, V)
    return distances.argmin(dim=1)


def ema_codebook_update(
    sums: Tensor, counts: Tensor, batch_sums: Tensor, batch_counts: Tensor, decay: float
) -> tuple[Tensor, Tensor]:
    """One online-clustering step (DinoSR §2.2): for each codeword that was assigned at least once,
    sum ← d·sum + (1−d)·batch_sum and count ← d·count + (1−d)·batch_count; unassigned codewords keep
    theirs. Codeword = sum / count. Shapes: sums (..., V, D), counts (..., V), batch_* alike."""
    alpha = torch.where(batch_counts > 0, decay, 1.0).to(sums.dtype)  # (..., V)
    counts = alpha * counts + (1.0 - alpha) * batch_counts
    sums = alpha[..., None] * sums + (1.0 - alpha[..., None]) * batch_sums
    return sums, counts


def ema_decay_at(step: int, *, start: float, end: float, anneal_steps: int) -> float:
    """Teacher decay at ``step``: linear from ``start`` (step 0) to ``end`` (step ``anneal_steps``),
    then ``end``."""
    if step >= anneal_steps:
        return end
    return start + (end - start) * step / anneal_steps


def compute_span_mask(
    lengths: Tensor, *, mask_prob: float, span_length: int, generator: torch.Generator | None = None
) -> Tensor:
    """wav2vec 2.0 / DinoSR span masking: an item of n frames gets round(mask_prob · n / span_length)
    spans (probabilistic rounding, at least one) of ``span_length`` frames at distinct uniformly drawn
    starts; spans may overlap. lengths: (B,) valid frames -> (B, max length) bool, never past a length.
    ``generator`` is a CPU generator."""
    num_frames = int(lengths.max())
    mask = torch.zeros(len(lengths), num_frames, dtype=torch.bool)
    for i, n in enumerate(lengths.tolist()):
        span = min(span_length, n)
        num_starts = n - span + 1
        num_spans = int(mask_prob * n / span_length + float(torch.rand((), generator=generator)))
        num_spans = min(max(num_spans, 1), num_starts)
        starts = torch.randperm(num_starts, generator=generator)[:num_spans]
        mask[i, (starts[:, None] + torch.arange(span)).flatten()] = True
    return mask.to(lengths.device)


# ----------------------------------------------------------------------------------------------
# Pre-training


@dataclass(frozen=True)
class DinoSRLossOutput:
    loss: Tensor  # () cross-entropy over masked frames, averaged over frames and codebooks; backprop this
    per_codebook_loss: Tensor  # (K,) detached
    perplexity: Tensor  # (K,) exp(entropy) of codeword usage over this batch's masked frames; 1 = collapse
    accuracy: Tensor  # (K,) fraction of masked frames whose head's argmax is the target codeword
    num_masked: int  # N, masked frames in the batch
    batch_sums: Tensor  # (K, V, D) sum of the targets assigned to each codeword; for update_codebooks
    batch_counts: Tensor  # (K, V) targets assigned to each codeword


class DinoSRPretrainer(nn.Module):
    """Student + EMA teacher + K codebooks + K prediction heads + mask embedding.

    One update, in this order::

        out = pretrainer(wav, lengths)     # masks, runs student and teacher, scores; changes nothing
        out.loss.backward(); optimizer.step(); optimizer.zero_grad()
        pretrainer.update_codebooks(out)   # online clustering: EMA of codeword sums and counts
        pretrainer.ema_step(step)          # teacher ← d·teacher + (1−d)·student

    Optimise ``[p for p in pretrainer.parameters() if p.requires_grad]``: the teacher's parameters are
    frozen and the codebooks are buffers (``codebook_sums`` (K, V, D), ``codebook_counts`` (K, V)),
    so no gradient or weight decay ever reaches them. The teacher always runs in eval mode, and starts
    as a copy of the student as it is when the pre-trainer is built (load student weights first).
    ``state_dict()`` holds everything needed to resume (safetensors-compatible: no shared tensors).
    """

    def __init__(self, *, student: DinoSREncoder) -> None:
        super().__init__()
        config = student.config
        self.config = config
        self.student = student
        # the teacher copies the context network only; frontend and projection are shared
        self.teacher = copy.deepcopy(student.encoder).requires_grad_(False).eval()
        self.mask_emb = nn.Parameter(torch.empty(config.model_dim).uniform_())
        self.heads = nn.ModuleList(
            nn.Linear(config.model_dim, config.codebook_size) for _ in range(config.num_codebooks)
        )
        # as the authors: per (codebook, dim) unit-normal over the V codewords; count 1 each, so sum = codeword
        init = F.instance_norm(torch.randn(config.num_codebooks, config.model_dim, config.codebook_size))
        self.register_buffer("codebook_sums", init.transpose(1, 2).contiguous())  # (K, V, D)
        self.register_buffer("codebook_counts", torch.ones(config.num_codebooks, config.codebook_size))  # (K, V)

    @property
    def codewords(self) -> Tensor:
        """(K, V, D) sums / counts."""
        return self.codebook_sums / self.codebook_counts[..., None]

    def train(self, mode: bool = True) -> DinoSRPretrainer:
        super().train(mode)
        self.teacher.eval()  # no dropout in targets
        return self

    def forward(
        self, wav: Tensor, lengths: Tensor, *, mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> DinoSRLossOutput:
        """wav: (B, S), lengths: (B,) samples. ``mask``: (B, T) bool over output frames, True = masked
        (default: ``compute_span_mask`` with the config's mask_prob and mask_length, using ``generator``)."""
        cfg = self.config
        x, frame_lengths = self.student.extract_features(wav, lengths)  # (B, T, D)
        valid = _valid_frames(frame_lengths, x.shape[1])  # (B, T)
        if mask is None:
            mask = compute_span_mask(
                frame_lengths.cpu(), mask_prob=cfg.mask_prob, span_length=cfg.mask_length, generator=generator
            ).to(x.device)
        elif mask.dtype != torch.bool or tuple(mask.shape) != tuple(valid.shape):
            raise ValueError(f"mask must be bool of shape {tuple(valid.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        if (mask & ~valid).any():
            raise ValueError("mask selects padded frames (at or past an item's length)")
        num_masked = int(mask.sum())
        if num_masked == 0:
            raise ValueError("mask selects no frame")

        # student: masked frames replaced by the learned embedding
        masked_x = torch.where(mask[:, :, None], self.mask_emb.to(x.dtype), x)
        hidden, _ = self.student.encoder(masked_x, frame_lengths)
        predicted = hidden[-1][mask]  # (N, D) masked frames only: unmasked ones never reach the loss

        with torch.no_grad():
            self.teacher.eval()
            _, ffn_outputs = self.teacher(x.detach(), frame_lengths, keep_ffn=True)
            codewords = self.codewords  # (K, V, D)
            targets = [
                instance_norm(layer_out.float(), frame_lengths)[mask]  # (N, D)
                for layer_out in ffn_outputs[-cfg.num_codebooks :]
            ]
            codes = [nearest_codeword(t, codewords[k]) for k, t in enumerate(targets)]  # K × (N,)

        losses, accuracy, counts, sums = [], [], [], []
        for k, (target, code) in enumerate(zip(targets, codes)):
            logits = self.heads[k](predicted).float()  # (N, V)
            losses.append(F.cross_entropy(logits, code))
            with torch.no_grad():
                accuracy.append((logits.argmax(dim=1) == code).float().mean())
                counts.append(torch.bincount(code, minlength=cfg.codebook_size).float())
                sums.append(torch.zeros_like(codewords[k]).index_add_(0, code, target))
        per_codebook = torch.stack(losses)  # (K,)
        batch_counts = torch.stack(counts)  # (K, V)
        usage = batch_counts / num_masked
        perplexity = torch.exp(-(usage * torch.log(usage.clamp(min=1e-12))).sum(dim=1))  # (K,)
        return DinoSRLossOutput(
            loss=per_codebook.mean(),
            per_codebook_loss=per_codebook.detach(),
            perplexity=perplexity,
            accuracy=torch.stack(accuracy),
            num_masked=num_masked,
            batch_sums=torch.stack(sums),
            batch_counts=batch_counts,
        )

    @torch.no_grad()
    def update_codebooks(self, out: DinoSRLossOutput) -> None:
        """EMA of codeword sums and counts with ``codebook_decay``; under torch.distributed the batch
        statistics are summed over workers first, so every worker keeps the same codebooks."""
        batch_sums, batch_counts = out.batch_sums.clone(), out.batch_counts.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_sums)
            torch.distributed.all_reduce(batch_counts)
        sums, counts = ema_codebook_update(
            self.codebook_sums, self.codebook_counts, batch_sums, batch_counts, self.config.codebook_decay
        )
        self.codebook_sums.copy_(sums)
        self.codebook_counts.copy_(counts)

    @torch.no_grad()
    def ema_step(self, step: int) -> float:
        """Teacher ← d·teacher + (1−d)·student for the Transformer layers and its LayerNorm, with d from
        ``ema_decay_at(step)``; the positional convs are copied (the authors skip them in the EMA, so
        teacher and student share them). Call after the optimizer step; returns d."""
        cfg = self.config
        decay = ema_decay_at(step, start=cfg.ema_decay, end=cfg.ema_end_decay, anneal_steps=cfg.ema_anneal_steps)
        student = dict(self.student.encoder.named_parameters())
        for name, teacher_param in self.teacher.named_parameters():
            student_param = student[name].detach().to(teacher_param.dtype)
            if name.startswith("pos_conv."):
                teacher_param.copy_(student_param)
            elif decay < 1.0:
                teacher_param.mul_(decay).add_(student_param, alpha=1.0 - decay)
        return decay


# ----------------------------------------------------------------------------------------------
# Build


def build_dinosr_pretrainer(config: DinoSREncoderConfig) -> DinoSRPretrainer:
    """A randomly initialised student wrapped with its teacher, codebooks and heads."""
    return DinoSRPretrainer(student=build_dinosr_encoder(config))
