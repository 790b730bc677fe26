"""The Sylber network as a ``SpeechEncoder``: ``SylberEncoderConfig``, the presets ``sylber_base()``
(HuBERT-base, first 9 layers: the released model) and ``sylber_tiny()`` (log-mel frontend, trains on a
CPU), and ``SylberEncoder`` with a pluggable frontend (raw-waveform conv stack | log-mel), which also
segments its own features (``spokenlm.compress.segment``); ``build_sylber_encoder``. What Sylber is:
the package docstring (``spokenlm.encoders.sylber``).

Not here: the training objective (``objective.py``), saving and loading (``checkpoints.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spokenlm.audio import SAMPLE_RATE
from spokenlm.compress.segment import MERGE_THRESHOLD, NORM_THRESHOLD, Span, check_thresholds, segment_batch
from spokenlm.encoders.base import EncoderOutput, check_encoder_inputs

FBANK_WINDOW = 400  # samples (25 ms): the same span one HuBERT conv-stack frame sees
FBANK_HOP = 320  # samples (20 ms): 50 Hz, the HuBERT frame rate
HUBERT_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2  # (channels, kernel, stride)


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
# Build


def build_sylber_encoder(config: SylberEncoderConfig) -> SylberEncoder:
    """A randomly initialised encoder (training mode) with the frontend the config names."""
    config.validate()
    frontend = ConvFrontend(config) if config.frontend == "conv" else FbankFrontend(config)
    return SylberEncoder(config=config, frontend=frontend)
