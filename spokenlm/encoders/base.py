"""The encoder seam: what every speech encoder (wav2vec 2.0, DinoSR, Sylber) returns.

An encoder maps 16 kHz waveforms to a sequence of frames (50 Hz for the wav2vec 2.0 conv stack).
It is an ``nn.Module``; this file holds only the typed output and the Protocol it satisfies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


@dataclass(frozen=True)
class EncoderOutput:
    features: Tensor  # (B, T, D) the chosen layer (or learned mix of layers)
    lengths: Tensor  # (B,) valid frames per item, int64
    frame_rate_hz: float  # frames per second of audio (50.0 for wav2vec 2.0)
    hidden_states: Tensor | None = None  # (L, B, T, D) every transformer layer, when asked for


class SpeechEncoder(Protocol):
    output_dim: int  # D of EncoderOutput.features
    frame_rate_hz: float

    def __call__(self, wav: Tensor, lengths: Tensor) -> EncoderOutput:
        """wav: (B, S) float 16 kHz, zero-padded on the right; lengths: (B,) valid samples."""
        ...
