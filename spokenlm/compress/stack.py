"""The fixed-rate baseline compressor: stack k consecutive encoder frames into one token.

A content-blind alternative to the content-based CTC compressor of Speech-LLaMA (Wu et al., 2023,
§2.2): the "frame stacking" downsampler of many speech-LLM adapters. Frames ``[i*k, (i+1)*k)`` are
concatenated, so ``output_dim = k * input_dim``. Pure stacking, no parameters:
the adapter that follows projects to the LLM width, so a Linear here would be a second one.

A partial last group (``T_i`` not a multiple of k) is zero-padded; frames at or beyond ``lengths``
never contribute (they are zeroed before stacking). Item i gets ``ceil(T_i / k)`` tokens with spans
``(j*k, min((j+1)*k, T_i))``, i.e. ``frame_rate_hz / k`` tokens per second up to the partial group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spokenlm.compress.base import CompressedOutput
from spokenlm.encoders.base import EncoderOutput


@dataclass(frozen=True, kw_only=True)
class StackCompressorConfig:
    input_dim: int
    """D of the encoder features; output_dim is k * input_dim."""

    k: int = 4
    """Frames per token: 50 Hz encoder frames -> 12.5 tokens per second at k = 4."""

    def validate(self) -> None:
        for name in ("input_dim", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"StackCompressorConfig.{name} must be a positive int, got {value!r}")


class StackCompressor(nn.Module):
    """(B, T, D) frames -> (B, ceil(T/k), k*D) tokens by concatenation; no parameters."""

    def __init__(self, config: StackCompressorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.output_dim = config.k * config.input_dim

    def forward(self, encoded: EncoderOutput) -> CompressedOutput:
        features, lengths = encoded.features, encoded.lengths
        batch, frames, dim = features.shape
        k = self.config.k
        if lengths.dim() != 1:
            raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
        bad = [(i, n) for i, n in enumerate(lengths.tolist()) if not 1 <= n <= frames]
        if bad:
            i, n = bad[0]
            raise ValueError(f"item {i} has length {n}; lengths must be in [1, {frames}] (the padded frame count)")

        lengths = lengths.to(features.device)
        token_lengths = (lengths + k - 1) // k  # (B,) ceil(T_i / k)
        n_max = int(token_lengths.max())
        valid = torch.arange(frames, device=features.device) < lengths.unsqueeze(1)  # (B, T)
        x = features.masked_fill(~valid.unsqueeze(-1), 0.0)[:, : n_max * k]  # padding never contributes
        x = F.pad(x, (0, 0, 0, n_max * k - x.shape[1]))  # (B, n_max * k, D), zero partial group
        embeddings = x.reshape(batch, n_max, k * dim)  # frame j*k + m lands at channels [m*D, (m+1)*D)

        spans = [[(j * k, min((j + 1) * k, n)) for j in range((n + k - 1) // k)] for n in lengths.tolist()]
        seconds = lengths.to(torch.float32) / encoded.frame_rate_hz
        return CompressedOutput(
            embeddings=embeddings,
            lengths=token_lengths.long(),
            spans=spans,
            frame_rate_hz=encoded.frame_rate_hz,
            tokens_per_second=token_lengths.to(torch.float32) / seconds,
        )
