"""The syllable compressor: Sylber segments, mean-pooled, one token per syllable.

Sylber (Cho et al., 2024 / ICLR 2025, §3.3 and §4): features trained by segment-level
self-distillation are nearly constant within a syllable, so the linear-time greedy segmentation
(``spokenlm.encoders.sylber.segment``) finds syllables, and the mean of a syllable's frames is its
embedding. Speech runs at ~4-5 syllables per second, a 10x shorter sequence than 50 Hz frames, with
content-based boundaries, where the CTC compressor (``ctc.py``) needs a trained CTC head.

Works on any encoder's features, but the thresholds only mean something for Sylber-trained features
(defaults as published: norm 2.6, merge 0.8). Output features are the encoder's (``output_dim ==
input_dim``); pooling is a mean, so gradients reach the encoder. No parameters.

No-segment items: when every valid frame of an item is below the norm threshold (silence, an
untrained encoder), the item gets ONE token, the mean of all its valid frames, with span (0, T_i);
the LLM then still sees one speech token, as with the CTC compressor's all-blank fallback.

Frames at or beyond ``lengths``, and non-speech frames between syllables, never contribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spokenlm.compress.base import CompressedOutput
from spokenlm.compress.segment import MERGE_THRESHOLD, NORM_THRESHOLD, check_thresholds, pool_segments, segment_batch
from spokenlm.encoders.base import EncoderOutput


@dataclass(frozen=True, kw_only=True)
class SyllableCompressorConfig:
    input_dim: int
    """D of the encoder features; also the compressor's output_dim."""

    norm_threshold: float = NORM_THRESHOLD
    """Frames whose feature L2 norm is below this are non-speech and belong to no syllable."""

    merge_threshold: float = MERGE_THRESHOLD
    """Cosine similarity to a syllable's running mean that keeps a frame in it; higher -> more syllables."""

    def validate(self) -> None:
        if isinstance(self.input_dim, bool) or not isinstance(self.input_dim, int) or self.input_dim < 1:
            raise ValueError(f"SyllableCompressorConfig.input_dim must be a positive int, got {self.input_dim!r}")
        check_thresholds(self.norm_threshold, self.merge_threshold)


class SyllableCompressor(nn.Module):
    """(B, T, D) frames -> (B, N, D) syllable means, with their [start, end) frame spans."""

    def __init__(self, config: SyllableCompressorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.output_dim = config.input_dim

    def forward(self, encoded: EncoderOutput) -> CompressedOutput:
        features, lengths = encoded.features, encoded.lengths
        batch, frames, dim = features.shape
        if dim != self.config.input_dim:
            raise ValueError(f"features have dim {dim}, the compressor expects {self.config.input_dim}")
        if lengths.dim() != 1 or lengths.shape[0] != batch:
            raise ValueError(f"lengths must be 1-D ({batch},), got shape {tuple(lengths.shape)}")
        bad = [(i, n) for i, n in enumerate(lengths.tolist()) if not 1 <= n <= frames]
        if bad:
            i, n = bad[0]
            raise ValueError(f"item {i} has length {n}; lengths must be in [1, {frames}] (the padded frame count)")

        spans = segment_batch(
            features,
            lengths,
            norm_threshold=self.config.norm_threshold,
            merge_threshold=self.config.merge_threshold,
        )
        spans = [item or [(0, n)] for item, n in zip(spans, lengths.tolist())]  # no syllable: one token
        embeddings, token_lengths, _ = pool_segments(features, spans)  # (B, N, D), (B,)
        seconds = lengths.to(token_lengths.device, torch.float32) / encoded.frame_rate_hz
        return CompressedOutput(
            embeddings=embeddings,
            lengths=token_lengths,
            spans=spans,
            frame_rate_hz=encoded.frame_rate_hz,
            tokens_per_second=token_lengths.to(torch.float32) / seconds,
        )
