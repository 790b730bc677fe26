"""Sylber: syllabic embeddings from raw audio, as a spokenlm speech encoder and segmenter.

Sylber (Cho et al., 2024 / ICLR 2025, "Sylber: Syllabic Embedding Representation of Speech from Raw
Audio"). A HuBERT-like student is trained by segment-level self-distillation (§3.2): an EMA teacher
segments its own features with a linear-time greedy algorithm (§3.3) and the student regresses, frame
by frame, the segment-averaged teacher features (zero on non-speech frames). The features become
piecewise constant over syllables, so the same greedy algorithm finds syllables at inference and a
syllable is the mean of its frames (``spokenlm.compress.syllable``).

This file holds, pipeline order:
- the segmentation: ``segment`` (one utterance, O(T)), ``segment_batch`` (over lengths) and
  ``pool_segments`` (segment means, one scatter for the batch);
- ``NormThresholdEstimator``: the online speech/non-speech feature-norm threshold (two EMA Gaussians);
- ``SylberEncoderConfig``, presets ``sylber_base()`` (HuBERT-base, first 9 layers: the released
  model) and ``sylber_tiny()`` (log-mel frontend, trains on a CPU), and ``SylberEncoder``, the network
  behind the ``SpeechEncoder`` seam, with a pluggable frontend (raw-waveform conv stack | log-mel);
- the training objective: ``SylberObjectiveConfig``, ``SylberDistillation`` (wraps ANY
  ``SpeechEncoder`` as the student, keeps its EMA teacher) and the typed ``SylberLoss``;
- ``build_sylber_encoder`` / ``save_sylber_encoder`` / ``load_sylber_encoder``; the loader also reads
  the authors' released checkpoint (transformers ``HubertModel`` names, 9 layers) and maps its names.

Not here: noise augmentation (pass an augmented ``student_wav``), the optimiser loop (recipes), where
first-stage segments come from (the paper: SD-HuBERT; the recipe: ``spokenlm.envelope``; either is
passed to ``SylberDistillation.forward`` as ``segments``).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spokenlm.encoders.base import ENCODER_FORMAT_VERSION, EncoderOutput, check_encoder_inputs, read_encoder_manifest

SAMPLE_RATE = 16_000  # Hz
NORM_THRESHOLD = 2.6  # published inference default: frames with a smaller feature norm are non-speech
MERGE_THRESHOLD = 0.8  # published inference default: cosine similarity that keeps a frame in a segment
FBANK_WINDOW = 400  # samples (25 ms): the same span one HuBERT conv-stack frame sees
FBANK_HOP = 320  # samples (20 ms): 50 Hz, the HuBERT frame rate
HUBERT_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2  # (channels, kernel, stride)
_EPS = 1e-8  # the authors' epsilon inside norms

Span = tuple[int, int]  # [start_frame, end_frame)


# ----------------------------------------------------------------------------------------------
# Segmentation (§3.3): greedy scan, then merge-or-refine each similarity boundary. O(T * D).


def segment(
    features: Tensor | np.ndarray,
    *,
    norm_threshold: float = NORM_THRESHOLD,
    merge_threshold: float = MERGE_THRESHOLD,
) -> list[Span]:
    """Syllable-like segments of one utterance's frames, ordered, disjoint, within [0, T).

    features: (T, D). Three passes, each linear in T:

    1. A frame whose L2 norm is below ``norm_threshold`` is non-speech: it belongs to no segment and
       ends the current one.
    2. A greedy scan grows the current segment while the cosine similarity between the next frame
       and the segment's running mean stays >= ``merge_threshold``; otherwise that frame opens a new
       segment (a "similarity boundary"; boundaries at non-speech are final).
    3. Each similarity boundary, left to right: if the two segments' means have cosine similarity
       >= ``merge_threshold`` they merge; otherwise the boundary moves to the b in a window of half
       of each neighbour around it that maximises sum_{t<b} cos(x_t, left mean) + sum_{t>=b}
       cos(x_t, right mean). Both segments keep at least one frame.

    Segment sums are kept instead of re-averaging frames (cosine ignores scale), so a merge costs
    O(D) and a refinement O(window * D); every frame sits in at most two windows. The authors'
    reference loop counts frames across a similarity break, so a new segment's first frame carries
    the old segment's weight in its running mean; we use the true running mean, as the paper states.
    """
    x = _as_array(features)  # float32 stays a view; sums and similarities are float64
    if x.ndim != 2:
        raise ValueError(f"features must be (T, D), got shape {x.shape}")
    check_thresholds(norm_threshold, merge_threshold)
    sq = np.einsum("td,td->t", x, x, dtype=np.float64)  # (T,) squared norms
    norms = np.sqrt(sq + _EPS)  # the authors' eps
    segs = _greedy_scan(x, sq, norms >= norm_threshold, merge_threshold)
    for left in segs.soft:  # left segment of each similarity boundary, in time order
        _merge_or_refine(x, norms, segs, left, merge_threshold)
    return [(s, e) for s, e, alive in zip(segs.starts, segs.ends, segs.alive) if alive]


@dataclass
class _Segments:
    """Segments as parallel lists, so merges and boundary moves are O(1) list updates."""

    starts: list[int]
    ends: list[int]
    sums: list[np.ndarray]  # sum of the segment's frames (D,); cosine ignores the 1 / count
    sq: list[float]  # |sum|^2
    alive: list[bool]  # False once merged into the next segment
    soft: list[int]  # i: segments i and i + 1 meet at a similarity break (not at non-speech)

    def close(self, start: int, end: int, total: np.ndarray, total_sq: float) -> None:
        self.starts.append(start), self.ends.append(end), self.sums.append(total), self.sq.append(total_sq)
        self.alive.append(True)


def _greedy_scan(x: np.ndarray, sq: np.ndarray, speech: np.ndarray, threshold: float) -> _Segments:
    segs = _Segments([], [], [], [], [], [])
    start, total, total_sq = -1, np.zeros(x.shape[1]), 0.0
    for t in range(len(x)):
        if not speech[t]:
            if start >= 0:
                segs.close(start, t, total, total_sq)
                start = -1
            continue
        if start < 0:
            start, total, total_sq = t, x[t].astype(np.float64), float(sq[t])
            continue
        dot = float(total @ x[t])
        # cos(running mean, x_t) == cos(running sum, x_t); the eps only guards a zero norm threshold
        if dot >= threshold * math.sqrt(total_sq * sq[t] + _EPS):
            total += x[t]
            total_sq += 2 * dot + sq[t]  # |s + x|^2
        else:
            segs.soft.append(len(segs.starts))
            segs.close(start, t, total, total_sq)
            start, total, total_sq = t, x[t].astype(np.float64), float(sq[t])
    if start >= 0:
        segs.close(start, len(x), total, total_sq)
    return segs


def _merge_or_refine(x: np.ndarray, norms: np.ndarray, segs: _Segments, a: int, threshold: float) -> None:
    b = a + 1
    sa, sb = segs.sums[a], segs.sums[b]
    dot = float(sa @ sb)
    na, nb = math.sqrt(segs.sq[a] + _EPS), math.sqrt(segs.sq[b] + _EPS)
    if dot >= threshold * na * nb:  # similar means: b absorbs a
        segs.starts[b], segs.sums[b], segs.alive[a] = segs.starts[a], sa + sb, False
        segs.sq[b] = segs.sq[a] + 2 * dot + segs.sq[b]
        return
    boundary = segs.ends[a]
    lo = max(segs.starts[a], boundary - max(1, (boundary - segs.starts[a]) // 2))
    hi = min(segs.ends[b], boundary + max(1, (segs.ends[b] - boundary) // 2))
    first = max(0, segs.starts[a] + 1 - lo)  # candidates lo + i, i in [first, W): both keep a frame
    if first == hi - lo - 1:
        return  # one candidate: the boundary itself
    # a boundary at lo + i scores sum_{t < i} cos(x_t, a) + sum_{t >= i} cos(x_t, b) over the window,
    # i.e. (a constant) + c[i - 1] with c the prefix sums of cos(x_t, a) - cos(x_t, b)
    window = x[lo:hi]  # (W, D)
    c = np.cumsum((window @ sa / na - window @ sb / nb) / norms[lo:hi])  # (W,)
    if first == 0:  # i = 0 scores 0 and wins ties, being the first maximum (W >= 2 always)
        j = int(np.argmax(c[:-1]))
        i = j + 1 if c[j] > 0 else 0
    else:
        i = first + int(np.argmax(c[first - 1 : -1]))
    new = lo + i
    if new == boundary:
        return
    if new < boundary:
        moved = x[new:boundary].sum(axis=0)
        sa, sb = sa - moved, sb + moved
    else:
        moved = x[boundary:new].sum(axis=0)
        sa, sb = sa + moved, sb - moved
    segs.sums[a], segs.sums[b], segs.sq[a], segs.sq[b] = sa, sb, float(sa @ sa), float(sb @ sb)
    segs.ends[a] = segs.starts[b] = new


def _as_array(features: Tensor | np.ndarray) -> np.ndarray:
    """float32 / float64 as they are (no copy for a CPU tensor); anything else as float64."""
    if isinstance(features, Tensor):
        features = features.detach().cpu()
        if features.dtype not in (torch.float32, torch.float64):
            features = features.double()
        return features.numpy()
    features = np.asarray(features)
    return features if features.dtype in (np.float32, np.float64) else features.astype(np.float64)


def check_thresholds(norm_threshold: float, merge_threshold: float) -> None:
    """Raise ValueError naming a norm threshold that is not a finite number >= 0 or a merge
    threshold outside [-1, 1]."""
    if not (isinstance(norm_threshold, (int, float)) and math.isfinite(norm_threshold) and norm_threshold >= 0):
        raise ValueError(f"norm_threshold must be a finite number >= 0, got {norm_threshold!r}")
    if not (isinstance(merge_threshold, (int, float)) and -1.0 <= merge_threshold <= 1.0):
        raise ValueError(f"merge_threshold must be a cosine similarity in [-1, 1], got {merge_threshold!r}")


def segment_batch(
    features: Tensor,
    lengths: Tensor,
    *,
    norm_threshold: float = NORM_THRESHOLD,
    merge_threshold: float = MERGE_THRESHOLD,
) -> list[list[Span]]:
    """``segment`` per item over its valid frames: features (B, T, D), lengths (B,) valid frames.

    An item may get no segment at all (every valid frame below the norm threshold).
    """
    if features.ndim != 3:
        raise ValueError(f"features must be (B, T, D), got shape {tuple(features.shape)}")
    if lengths.ndim != 1 or lengths.shape[0] != features.shape[0]:
        raise ValueError(f"lengths must have shape ({features.shape[0]},), got {tuple(lengths.shape)}")
    frames = features.shape[1]
    x = _as_array(features)  # one device->host copy for the batch
    out = []
    for i, n in enumerate(lengths.tolist()):
        if not 0 <= n <= frames:
            raise ValueError(f"item {i} has length {n}; lengths must be in [0, {frames}]")
        out.append(segment(x[i, :n], norm_threshold=norm_threshold, merge_threshold=merge_threshold))
    return out


def pool_segments(features: Tensor, segments: list[list[Span]]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean of each segment's frames, differentiable, one scatter over the batch.

    features: (B, T, D); segments: per item, disjoint [start, end) spans.
    Returns embeddings (B, N, D) zero-padded, lengths (B,) int64 segments per item, and
    token_of_frame (B, T) int64: the segment index of each frame, -1 for frames in none.
    """
    batch, frames, dim = features.shape
    if len(segments) != batch:
        raise ValueError(f"got segments for {len(segments)} items, features for {batch}")
    n_max = max((len(s) for s in segments), default=0)
    token = np.full((batch, frames), -1, dtype=np.int64)
    for b, spans in enumerate(segments):
        for j, (start, end) in enumerate(spans):
            token[b, start:end] = j
    token_of_frame = torch.from_numpy(token).to(features.device)
    inside = token_of_frame >= 0  # (B, T)
    slot = (torch.arange(batch, device=features.device)[:, None] * n_max + token_of_frame)[inside]  # (K,)
    sums = features.new_zeros(batch * n_max, dim).index_add(0, slot, features[inside])
    counts = features.new_zeros(batch * n_max).index_add(0, slot, features.new_ones(slot.shape[0]))
    embeddings = (sums / counts.clamp(min=1)[:, None]).view(batch, n_max, dim)
    lengths = torch.tensor([len(s) for s in segments], dtype=torch.long, device=features.device)
    return embeddings, lengths, token_of_frame


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
        var_s, var_n = float(self.signal_var) + _EPS, float(self.noise_var) + _EPS
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
# Config


@dataclass(frozen=True, kw_only=True)
class SylberEncoderConfig:
    """What a Sylber encoder is: its network and its inference-time segmentation thresholds."""

    frontend: Literal["conv", "fbank"] = "conv"
    """"conv": the wav2vec 2.0 / HuBERT raw-waveform conv stack (faithful); "fbank": log-mel
    filterbanks, 25 ms window, 20 ms hop (50 Hz, same frame count), for cheap CPU training."""

    conv_layers: tuple[tuple[int, int, int], ...] = HUBERT_CONV_LAYERS
    """(channels, kernel, stride) per conv, input side first; "conv" frontend only."""

    conv_norm: Literal["group", "layer"] = "group"
    """"group": GroupNorm on the first conv only (HuBERT BASE; normalises over the padded length, so
    batched output drifts from single-item output); "layer": LayerNorm after every conv (exact)."""

    conv_bias: bool = False

    num_mel_bins: int = 80
    """Log-mel channels; "fbank" frontend only."""

    model_dim: int = 768
    num_layers: int = 9  # Sylber keeps HuBERT-base's first 9 layers; features are the last one's
    num_heads: int = 12
    ffn_dim: int = 3072
    pos_conv_kernel: int = 128  # convolutional relative position embedding, as wav2vec 2.0
    pos_conv_groups: int = 16
    dropout: float = 0.1
    """Feature-projection, attention, activation and residual dropout (HuBERT BASE's 0.1 each)."""

    layer_norm_eps: float = 1e-5

    normalize_waveform: bool = True
    """Zero-mean, unit-variance each item over its valid samples (the authors' preprocessing)."""

    norm_threshold: float = NORM_THRESHOLD
    """Inference: frames with a smaller feature norm are non-speech."""

    merge_threshold: float = MERGE_THRESHOLD
    """Inference: cosine similarity that keeps a frame in (or merges) a segment."""

    @property
    def frame_rate_hz(self) -> float:
        if self.frontend == "fbank":
            return SAMPLE_RATE / FBANK_HOP
        return SAMPLE_RATE / math.prod(s for _, _, s in self.conv_layers)

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees; shorter audio yields no frame (400 for both presets)."""
        if self.frontend == "fbank":
            return FBANK_WINDOW
        field = 1
        for _, kernel, stride in reversed(self.conv_layers):
            field = (field - 1) * stride + kernel
        return field

    def validate(self) -> None:
        if self.frontend not in ("conv", "fbank"):
            raise ValueError(f"frontend must be 'conv' or 'fbank', got {self.frontend!r}")
        if self.conv_norm not in ("group", "layer"):
            raise ValueError(f"conv_norm must be 'group' or 'layer', got {self.conv_norm!r}")
        layers = self.conv_layers
        if not layers or any(len(layer) != 3 or min(layer) < 1 for layer in layers):
            raise ValueError(f"conv_layers must be non-empty (channels, kernel, stride) >= 1, got {layers!r}")
        for name in ("num_mel_bins", "model_dim", "num_layers", "num_heads", "ffn_dim", "pos_conv_kernel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SylberEncoderConfig.{name} must be a positive int, got {value!r}")
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim {self.model_dim} is not divisible by {self.num_heads} attention heads")
        if self.pos_conv_groups < 1 or self.model_dim % self.pos_conv_groups:
            raise ValueError(f"model_dim {self.model_dim} is not divisible by {self.pos_conv_groups} pos-conv groups")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        check_thresholds(self.norm_threshold, self.merge_threshold)


def sylber_base() -> SylberEncoderConfig:
    """The released Sylber model: HuBERT BASE (conv stack of 512 channels, group norm in the first
    conv, post-LN Transformer of dim 768, 12 heads) cut to its first 9 layers; 50 Hz; ~73M params."""
    return SylberEncoderConfig()


def sylber_tiny() -> SylberEncoderConfig:
    """~86K params for tests and CPU recipes: log-mel frontend, 2 layers of dim 64, no dropout;
    still 50 Hz with a 400-sample first frame, and exact under padding."""
    return replace(
        sylber_base(),
        frontend="fbank",
        num_mel_bins=40,
        conv_norm="layer",
        model_dim=64,
        num_layers=2,
        num_heads=4,
        ffn_dim=128,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        dropout=0.0,
    )


# ----------------------------------------------------------------------------------------------
# Network: frontend (B, S) -> (B, T, C); projection; positional conv; post-LN Transformer.


class ConvFrontend(nn.Module):
    """wav2vec 2.0 / HuBERT feature extractor: strided 1-D convs with GELU, (B, S) -> (B, T, C)."""

    def __init__(self, config: SylberEncoderConfig) -> None:
        super().__init__()
        self.layers = config.conv_layers
        self.convs = nn.ModuleList()
        in_channels = 1
        for i, (channels, kernel, stride) in enumerate(config.conv_layers):
            block = nn.Module()
            block.conv = nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=config.conv_bias)
            nn.init.kaiming_normal_(block.conv.weight)
            if config.conv_norm == "layer":
                block.norm = nn.LayerNorm(channels)
            elif i == 0:  # one group per channel: normalise each channel over time
                block.norm = nn.GroupNorm(channels, channels)
            self.convs.append(block)
            in_channels = channels
        self.out_channels = in_channels

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for _, kernel, stride in self.layers:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def forward(self, wav: Tensor) -> Tensor:
        x = wav[:, None, :]  # (B, 1, S)
        for block in self.convs:
            x = block.conv(x)  # (B, C, T')
            norm = getattr(block, "norm", None)
            if isinstance(norm, nn.LayerNorm):
                x = norm(x.transpose(1, 2)).transpose(1, 2)
            elif norm is not None:
                x = norm(x)
            x = F.gelu(x)
        return x.transpose(1, 2)  # (B, T, C)


class FbankFrontend(nn.Module):
    """Log-mel filterbanks, 25 ms Hann window, 20 ms hop, no centring: (B, S) -> (B, T, n_mels) with
    the conv stack's frame count floor((S - 400) / 320) + 1. No parameters."""

    mel: Tensor

    def __init__(self, config: SylberEncoderConfig) -> None:
        super().__init__()
        from torchaudio.functional import melscale_fbanks

        self.out_channels = config.num_mel_bins
        self.register_buffer("window", torch.hann_window(FBANK_WINDOW), persistent=False)
        mel = melscale_fbanks(FBANK_WINDOW // 2 + 1, 20.0, SAMPLE_RATE / 2, config.num_mel_bins, SAMPLE_RATE)
        self.register_buffer("mel", mel, persistent=False)  # (F, n_mels)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return torch.div(lengths - FBANK_WINDOW, FBANK_HOP, rounding_mode="floor") + 1

    def forward(self, wav: Tensor) -> Tensor:
        spec = torch.stft(
            wav.float(), FBANK_WINDOW, FBANK_HOP, window=self.window, center=False, return_complex=True
        )  # (B, F, T)
        power = spec.real**2 + spec.imag**2
        return torch.log(power.transpose(1, 2) @ self.mel + 1e-6).to(wav.dtype)  # (B, T, n_mels)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        batch, frames, dim = x.shape
        q, k, v = (p(x).view(batch, frames, self.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_valid[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).reshape(batch, frames, dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.up, self.down, self.dropout = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(F.gelu(self.up(x))))


class TransformerLayer(nn.Module):
    """Post-LN, as HuBERT BASE: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: SylberEncoderConfig) -> None:
        super().__init__()
        dim, eps = config.model_dim, config.layer_norm_eps
        self.attn = SelfAttention(dim, config.num_heads, config.dropout)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = FeedForward(dim, config.ffn_dim, config.dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        x = self.attn_norm(x + self.dropout(self.attn(x, key_valid)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class SylberEncoder(nn.Module):
    """The Sylber network behind the ``SpeechEncoder`` seam: (wav (B, S), lengths (B,)) -> EncoderOutput.

    ``features`` is the last layer (layer 9 of HuBERT for ``sylber_base``); ``hidden_states`` holds
    the Transformer input (index 0) and every layer, (num_layers + 1, B, T, D). Frames at or past an
    item's length are zero. Batched output equals single-item output on valid frames, except for the
    "group" conv norm (as HuBERT BASE), which normalises over the padded length.
    """

    def __init__(self, *, config: SylberEncoderConfig, frontend: nn.Module) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.output_dim = config.model_dim
        self.frame_rate_hz = config.frame_rate_hz
        dim = config.model_dim
        self.frontend = frontend  # (B, S) -> (B, T, C), with output_lengths and out_channels
        self.proj_norm = nn.LayerNorm(frontend.out_channels, eps=config.layer_norm_eps)
        self.proj = nn.Linear(frontend.out_channels, dim)
        pos_conv = nn.Conv1d(
            dim, dim, config.pos_conv_kernel, padding=config.pos_conv_kernel // 2, groups=config.pos_conv_groups
        )
        nn.init.normal_(pos_conv.weight, std=2 * math.sqrt(1 / (config.pos_conv_kernel * dim)))
        nn.init.zeros_(pos_conv.bias)
        self.pos_conv = nn.utils.parametrizations.weight_norm(pos_conv, name="weight", dim=2)
        self.input_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))
        self.dropout = nn.Dropout(config.dropout)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid frames per item for ``lengths`` valid samples."""
        return self.frontend.output_lengths(lengths.long())

    def forward(self, wav: Tensor, lengths: Tensor) -> EncoderOutput:
        self._check_inputs(wav, lengths)
        lengths = lengths.to(device=wav.device, dtype=torch.long)
        valid = torch.arange(wav.shape[1], device=wav.device) < lengths[:, None]  # (B, S)
        wav = wav * valid
        if self.config.normalize_waveform:
            n = lengths[:, None].to(wav.dtype)
            mean = wav.sum(dim=1, keepdim=True) / n
            var = ((wav - mean) ** 2 * valid).sum(dim=1, keepdim=True) / n
            wav = (wav - mean) / torch.sqrt(var + 1e-7) * valid

        frame_lengths = self.output_lengths(lengths)  # (B,)
        x = self.frontend(wav)  # (B, T, C)
        frames = torch.arange(x.shape[1], device=wav.device) < frame_lengths[:, None]  # (B, T)
        x = self.dropout(self.proj(self.proj_norm(x)))  # (B, T, D)
        x = x * frames[..., None]  # padding never reaches the positional conv
        pos = self.pos_conv(x.transpose(1, 2))  # (B, D, T + 1) for an even kernel
        pos = F.gelu(pos[:, :, : x.shape[1]]).transpose(1, 2)
        x = self.dropout(self.input_norm(x + pos))
        hidden = [x]
        for layer in self.layers:
            x = layer(x, frames)
            hidden.append(x)
        hidden_states = torch.stack(hidden) * frames[None, :, :, None]  # (L + 1, B, T, D)
        return EncoderOutput(
            features=hidden_states[-1],
            lengths=frame_lengths,
            frame_rate_hz=self.frame_rate_hz,
            hidden_states=hidden_states,
        )

    @torch.no_grad()
    def segment(self, wav: Tensor, lengths: Tensor) -> list[list[Span]]:
        """Per item, its syllable spans in frames, with the config's inference thresholds."""
        out = self(wav, lengths)
        return segment_batch(
            out.features,
            out.lengths,
            norm_threshold=self.config.norm_threshold,
            merge_threshold=self.config.merge_threshold,
        )

    def _check_inputs(self, wav: Tensor, lengths: Tensor) -> None:
        check_encoder_inputs(wav, lengths, min_samples=self.config.receptive_field)


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
        loss = (error * weight).sum() / weight.sum().clamp(min=_EPS)

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


# ----------------------------------------------------------------------------------------------
# Build, save, load


def build_sylber_encoder(config: SylberEncoderConfig) -> SylberEncoder:
    """A randomly initialised encoder (training mode) with the frontend the config names."""
    config.validate()
    frontend = ConvFrontend(config) if config.frontend == "conv" else FbankFrontend(config)
    return SylberEncoder(config=config, frontend=frontend)


def save_sylber_encoder(encoder: SylberEncoder, path: str | Path) -> None:
    """Write DIR/model.safetensors (our names) and DIR/encoder.json
    ({"kind": "sylber", "format_version": 1, "config": {...}}, written last)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    manifest = {"kind": "sylber", "format_version": ENCODER_FORMAT_VERSION, "config": asdict(encoder.config)}
    (path / "encoder.json").write_text(json.dumps(manifest, indent=2) + "\n")


def load_sylber_encoder(path: str | Path, *, config: SylberEncoderConfig | None = None) -> SylberEncoder:
    """Load an encoder, in eval mode, from

    - a directory written by ``save_sylber_encoder`` (``config`` must then be None);
    - the authors' released checkpoint file (``sylber.ckpt``: a ``HubertModel`` state dict for torch,
      read with ``torch.load(weights_only=True)``), or the same names in a ``.safetensors`` file; the
      layout is in ``official_state_dict_to_ours``. ``config`` defaults to one inferred from the
      tensor shapes (HuBERT strides, heads = model_dim / 64); a config with fewer layers than the
      checkpoint keeps the first ``num_layers``, as the authors cut HuBERT to 9.
    """
    path = Path(path)
    if path.is_dir():
        if config is not None:
            raise ValueError("config applies to official checkpoints only; a saved encoder carries its own")
        manifest = read_encoder_manifest(path, "sylber")
        fields = dict(manifest["config"])
        fields["conv_layers"] = tuple(tuple(layer) for layer in fields["conv_layers"])
        encoder = build_sylber_encoder(SylberEncoderConfig(**fields))
        from safetensors.torch import load_file

        _load_strict(encoder, load_file(str(path / "model.safetensors")), source=str(path / "model.safetensors"))
        return encoder.eval()
    if not path.is_file():
        raise FileNotFoundError(f"no sylber checkpoint at {path}")
    state = _read_state_dict(path)
    ours = official_state_dict_to_ours(state)
    if config is None:
        config = config_from_state_dict(ours)
    ours = {k: v for k, v in ours.items() if not _beyond_last_layer(k, config.num_layers)}
    encoder = build_sylber_encoder(config)
    _load_strict(encoder, ours, source=str(path))
    return encoder.eval()


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a Lightning checkpoint
        state = state["state_dict"]
    elif isinstance(state, dict) and isinstance(state.get("ema"), dict):  # the authors' ema_dict.ckpt
        state = state["ema"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


_POS_CONV_G, _POS_CONV_V = "pos_conv.parametrizations.weight.original0", "pos_conv.parametrizations.weight.original1"
# official (transformers HubertModel) name pattern -> ours
_OFFICIAL_NAMES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)", r"frontend.convs.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", r"frontend.convs.\1.norm.\2"),
    (r"feature_projection\.layer_norm\.(weight|bias)", r"proj_norm.\1"),
    (r"feature_projection\.projection\.(weight|bias)", r"proj.\1"),
    # weight norm: old torch spelled g and v weight_g / weight_v, parametrizations original0 / original1
    (r"encoder\.pos_conv_embed\.conv\.(?:weight_g|parametrizations\.weight\.original0)", _POS_CONV_G),
    (r"encoder\.pos_conv_embed\.conv\.(?:weight_v|parametrizations\.weight\.original1)", _POS_CONV_V),
    (r"encoder\.pos_conv_embed\.conv\.bias", "pos_conv.bias"),
    (r"encoder\.layer_norm\.(weight|bias)", r"input_norm.\1"),
    (r"encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", r"layers.\1.attn.\2.\3"),
    (r"encoder\.layers\.(\d+)\.attention\.out_proj\.(weight|bias)", r"layers.\1.attn.out.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)", r"layers.\1.ffn.up.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)", r"layers.\1.ffn.down.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"layers.\1.ffn_norm.\2"),
]
_OFFICIAL_IGNORED = {"masked_spec_embed"}  # HuBERT's mask embedding; Sylber's student is not masked
_OFFICIAL_PREFIXES = ("net.speech_model.", "speech_model.", "hubert.")


def official_state_dict_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The authors' checkpoint names (transformers ``HubertModel``, either weight-norm spelling,
    optionally under a ``speech_model.`` / ``net.speech_model.`` / ``hubert.`` prefix) -> ours.
    Raises on a name it does not know."""
    out, unknown = {}, []
    for name, tensor in state.items():
        for prefix in _OFFICIAL_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if name in _OFFICIAL_IGNORED:
            continue
        for pattern, repl in _OFFICIAL_NAMES:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, repl, name)] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"not a Sylber/HuBERT checkpoint: unknown tensor names {sorted(unknown)[:5]}")
    return out


def config_from_state_dict(state: dict[str, Tensor]) -> SylberEncoderConfig:
    """The architecture of a state dict in our names, assuming HuBERT's conv strides and 64-dim heads."""
    convs = sorted({int(m.group(1)) for k in state if (m := re.match(r"frontend\.convs\.(\d+)\.conv\.weight", k))})
    if len(convs) != len(HUBERT_CONV_LAYERS):
        raise ValueError(f"expected {len(HUBERT_CONV_LAYERS)} convs (HuBERT), found {len(convs)}; pass a config")
    weights = [state[f"frontend.convs.{i}.conv.weight"] for i in convs]  # (C_out, C_in, kernel)
    conv_layers = tuple((int(w.shape[0]), int(w.shape[2]), s) for w, (_, _, s) in zip(weights, HUBERT_CONV_LAYERS))
    model_dim = int(state["proj.weight"].shape[0])
    if model_dim % 64:
        raise ValueError(f"cannot infer attention heads for model_dim {model_dim}; pass a config")
    v = state[_POS_CONV_V]  # (D, D / groups, K)
    layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    return replace(
        sylber_base(),
        conv_layers=conv_layers,
        conv_norm="layer" if "frontend.convs.1.norm.weight" in state else "group",
        conv_bias="frontend.convs.0.conv.bias" in state,
        model_dim=model_dim,
        num_layers=len(layers),
        num_heads=model_dim // 64,
        ffn_dim=int(state["layers.0.ffn.up.weight"].shape[0]),
        pos_conv_kernel=int(v.shape[2]),
        pos_conv_groups=model_dim // int(v.shape[1]),
    )


def _beyond_last_layer(name: str, num_layers: int) -> bool:
    m = re.match(r"layers\.(\d+)\.", name)
    return m is not None and int(m.group(1)) >= num_layers


def _load_strict(module: nn.Module, state: dict[str, Tensor], *, source: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source} does not fit the sylber config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the config expects {tuple(expected[name].shape)}"
            )
    module.load_state_dict(state, strict=True)


__all__ = [
    "MERGE_THRESHOLD",
    "NORM_THRESHOLD",
    "NormThresholdEstimator",
    "SylberDistillation",
    "SylberEncoder",
    "SylberEncoderConfig",
    "SylberLoss",
    "SylberObjectiveConfig",
    "build_sylber_encoder",
    "check_thresholds",
    "config_from_state_dict",
    "load_sylber_encoder",
    "official_state_dict_to_ours",
    "pool_segments",
    "save_sylber_encoder",
    "segment",
    "segment_batch",
    "sylber_base",
    "sylber_tiny",
]
