"""The encoder seam: what every speech encoder (wav2vec 2.0, DinoSR, Sylber) returns.

An encoder maps 16 kHz waveforms to a sequence of frames (50 Hz for the wav2vec 2.0 conv stack).
It is an ``nn.Module``; this file holds the typed output, the Protocol it satisfies and the helpers
every encoder shares (input checks, layer choice, where its frames sit in time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from spokenlm.audio import SAMPLE_RATE

ENCODER_FORMAT_VERSION = 1  # of a saved encoder directory's encoder.json


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


def frame_shift_s(encoder) -> float:
    """Where an encoder's frames sit in time: frame t of an encoder at rate r covers
    [t / r + c, (t + 1) / r + c) seconds, with c = (centre of frame 0's receptive field) - 0.5 / r;
    0 when the encoder's config does not give its receptive field. 32.5 ms for the DinoSR log-mel
    frontend (frame 0 sees samples [0, 1360)), 2.5 ms for a 400-sample first frame (wav2vec 2.0)."""
    field = getattr(getattr(encoder, "config", None), "receptive_field", None)
    if field is None:
        return 0.0
    return field / 2 / SAMPLE_RATE - 0.5 / encoder.frame_rate_hz


def check_encoder_inputs(wav: Tensor, lengths: Tensor, *, min_samples: int) -> None:
    """Validate a (wav, lengths) batch at the encoder boundary; `min_samples` is one frame's
    receptive field (shorter audio yields no frame)."""
    import torch

    if not isinstance(wav, Tensor) or wav.ndim != 2 or wav.numel() == 0:
        shape = tuple(wav.shape) if isinstance(wav, Tensor) else type(wav).__name__
        raise ValueError(f"wav must be (B, S) float audio, got shape {shape}")
    if not wav.is_floating_point():
        raise ValueError(f"wav must be float audio, got dtype {wav.dtype}")
    if not isinstance(lengths, Tensor) or tuple(lengths.shape) != (wav.shape[0],):
        shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"lengths must have shape ({wav.shape[0]},) to match wav, got {shape}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be integer sample counts, got dtype {lengths.dtype}")
    for i, n in enumerate(lengths.tolist()):
        if n > wav.shape[1]:
            raise ValueError(f"lengths[{i}]={n} exceeds wav.shape[1]={wav.shape[1]}")
        if n < min_samples:
            raise ValueError(f"lengths[{i}]={n} is shorter than one frame ({min_samples} samples)")


def check_layer_choice(layer, num_layers: int) -> None:
    """A config's `layer`: "last", "weighted", or a hidden-state index in [0, num_layers]."""
    is_index = isinstance(layer, int) and not isinstance(layer, bool)
    if not (layer in ("last", "weighted") or (is_index and 0 <= layer <= num_layers)):
        raise ValueError(f"layer must be 'last', 'weighted' or an int in [0, {num_layers}], got {layer!r}")


def layer_mixing_logits(layer: str | int, num_layers: int):
    """For layer="weighted": (L + 1,) learned logits whose softmax mixes the hidden states, starting
    at zeros (the plain mean); None for any other layer choice."""
    from torch import nn
    import torch

    return nn.Parameter(torch.zeros(num_layers + 1)) if layer == "weighted" else None


def select_layer(hidden_states: Tensor, layer: str | int, layer_logits: Tensor | None) -> Tensor:
    """(L + 1, B, T, D) hidden states -> (B, T, D) features: the learned softmax mix when
    `layer_logits` is given ("weighted"), else the last layer or hidden state number `layer`."""
    import torch

    if layer_logits is not None:
        weights = torch.softmax(layer_logits, dim=0).to(hidden_states.dtype)  # (L + 1,)
        return torch.einsum("l,lbtd->btd", weights, hidden_states)
    return hidden_states[-1] if layer == "last" else hidden_states[layer]


def read_encoder_manifest(path, kind: str) -> dict:
    """The checked encoder.json of an encoder directory saved as `kind`."""
    import json
    from pathlib import Path

    manifest_path = Path(path) / "encoder.json"
    if not manifest_path.is_file():
        raise ValueError(f"{path} is not a saved {kind} encoder: encoder.json is missing")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("kind") != kind:
        raise ValueError(f"{manifest_path} describes a {manifest.get('kind')!r} encoder, not {kind!r}")
    if manifest.get("format_version") != ENCODER_FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path} has format_version {manifest.get('format_version')!r}; "
            f"this spokenlm reads {ENCODER_FORMAT_VERSION}"
        )
    return manifest
