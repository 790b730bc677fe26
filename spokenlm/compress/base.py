"""The compressor seam: encoder frames in, fewer LLM-bound tokens out, with their time spans.

Compression as in Speech-LLaMA (Wu et al., 2023, §2.2): the LLM never attends over raw 50 Hz frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from spokenlm.encoders.base import EncoderOutput


@dataclass(frozen=True)
class CharSpan:
    """One character of a greedy CTC transcript and the encoder frames that emitted it."""

    char: str
    start_frame: int  # first frame of the run of this label
    end_frame: int  # one past the last frame of the run


@dataclass(frozen=True)
class CompressedOutput:
    embeddings: Tensor  # (B, N, D) right-padded with zeros
    lengths: Tensor  # (B,) valid tokens per item, int64, always >= 1 for a non-empty input
    spans: list[list[tuple[int, int]]]  # per item, per token: [start_frame, end_frame) in encoder frames
    frame_rate_hz: float  # encoder frames per second, to turn spans into seconds
    tokens_per_second: Tensor  # (B,) float: lengths / (valid frames / frame_rate_hz)
    ctc_log_probs: Tensor | None = None  # (B, T, V) when the compressor owns a CTC head
    chars: list[list[CharSpan]] | None = None  # per item: its CTC transcript (greedy or beam), timed; CTC head only

    def span_seconds(self, item: int) -> list[tuple[float, float]]:
        """The time spans of item's tokens in seconds."""
        return [(s / self.frame_rate_hz, e / self.frame_rate_hz) for s, e in self.spans[item]]


class Compressor(Protocol):
    """Encoder frames in, fewer tokens out (a compressor with a CTC head also gives `chars`)."""

    output_dim: int  # D of CompressedOutput.embeddings

    def __call__(self, encoded: EncoderOutput) -> CompressedOutput: ...
