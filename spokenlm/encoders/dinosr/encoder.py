"""The DinoSR network and its student as a ``SpeechEncoder``: config, presets, frontends, context network.

``DinoSREncoderConfig`` and the presets ``dinosr_base()`` (the paper's) / ``dinosr_tiny()`` (CPU);
``DinoSREncoder``: (wav, lengths) -> ``EncoderOutput``; ``build_dinosr_encoder``. What DinoSR is and
how this network follows the authors' fairseq model: the package docstring (``spokenlm.encoders.dinosr``).

Not here: the pre-training objective (``objective.py``), saving and loading (``checkpoints.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spokenlm.audio import SAMPLE_RATE
from spokenlm.encoders.base import (
    EncoderOutput,
    check_encoder_inputs,
    check_layer_choice,
    layer_mixing_logits,
    select_layer,
)

# fbank frontend: Kaldi-style 25 ms / 10 ms frames, 80 mel bins
N_MELS = 80
WIN_LENGTH = 400  # samples, 25 ms
HOP_LENGTH = 160  # samples, 10 ms → 100 frames per second
N_FFT = 512
FBANK_FRAME_RATE_HZ = SAMPLE_RATE / HOP_LENGTH  # 100.0
_FBANK_FREQ_OUT = ((N_MELS - 3) // 2 + 1 - 3) // 2 + 1  # mel bins left after two k3/s2 convs: 19

LayerChoice = Literal["last", "weighted"] | int

# wav2vec 2.0 BASE conv stack: (channels, kernel, stride), total stride 320
_W2V_CONVS: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


# ----------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True, kw_only=True)
class DinoSREncoderConfig:
    """What a DinoSR model is: the student architecture (read by ``DinoSREncoder``) and the
    pre-training objective (read only by ``DinoSRPretrainer``). Defaults are ``dinosr_base()``."""

    # -- frontend --
    frontend: Literal["waveform", "fbank"] = "waveform"
    """"waveform": wav2vec 2.0 conv stack on raw audio; "fbank": log-mel + conv2d subsampling."""

    conv_feature_layers: tuple[tuple[int, int, int], ...] = _W2V_CONVS
    """waveform only: (channels, kernel, stride) per conv, input side first; each conv is followed by
    a LayerNorm over channels and GELU (fairseq's extractor_mode="layer_norm", as DinoSR)."""

    conv_bias: bool = False
    """waveform only: bias in the feature-extractor convs."""

    normalize_waveform: bool = True
    """waveform only: zero-mean, unit-variance each item over its valid samples first (DinoSR's
    ``task.normalize``). The fbank frontend's per-utterance normalisation already removes gain."""

    fbank_channels: int = 128
    """fbank only: channels of both conv2d layers; the extractor emits channels × 19 features."""

    fbank_subsampling: int = 2
    """fbank only: 2 (50 Hz frames) or 4 (25 Hz)."""

    # -- Transformer --
    model_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072

    pos_conv_kernel: int = 19
    """Kernel of each positional conv block (fairseq: max(3, conv_pos // pos_conv_depth) = 95 // 5)."""

    pos_conv_depth: int = 5
    """Positional conv blocks (conv, LayerNorm without affine, GELU), summed onto the input."""

    pos_conv_groups: int = 16

    conv_module_kernel: int = 0
    """0: DinoSR's plain Transformer layers. > 0: each layer also gets a Conformer convolution module
    (Gulati et al., 2020) of this depthwise kernel after its attention: our extension for small
    CPU-trained encoders, where convolution learns local acoustics far faster per minute than
    attention alone (FEASIBILITY.md: a Conformer CTC reached CER 0.24 in 15 min, a Transformer 0.36)."""

    dropout: float = 0.1
    """After attention, after the FFN and on the Transformer input."""

    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    layer_drop: float = 0.05
    """LayerDrop probability of each Transformer layer, training only (student only)."""

    layer: LayerChoice = "last"
    """Which hidden state becomes ``EncoderOutput.features``: "last"; an int index into
    ``hidden_states`` (0 = Transformer input, i = output of layer i); or "weighted", a learned
    softmax-weighted sum of all of them."""

    # -- objective (DinoSRPretrainer only) --
    num_codebooks: int = 8
    """K: one codebook and one prediction head per top teacher layer."""

    codebook_size: int = 256
    """V: codewords per codebook."""

    codebook_decay: float = 0.9
    """EMA decay of codeword sums and counts (online clustering; no gradient)."""

    ema_decay: float = 0.999
    """Teacher EMA decay at step 0 ..."""

    ema_end_decay: float = 0.9999
    """... annealed linearly to this ..."""

    ema_anneal_steps: int = 30_000
    """... over this many updates (the authors' ema_anneal_end_step), then held."""

    mask_prob: float = 0.8
    """Expected fraction of frames that start a masked span (spans overlap, so ~55 % are masked)."""

    mask_length: int = 10
    """Frames per masked span (200 ms at 50 Hz)."""

    @property
    def feature_dim(self) -> int:
        """Features per frame out of the extractor (before its LayerNorm and projection)."""
        if self.frontend == "waveform":
            return self.conv_feature_layers[-1][0]
        return self.fbank_channels * _FBANK_FREQ_OUT

    @property
    def frame_rate_hz(self) -> float:
        if self.frontend == "waveform":
            return SAMPLE_RATE / math.prod(s for _, _, s in self.conv_feature_layers)
        return FBANK_FRAME_RATE_HZ / self.fbank_subsampling

    @property
    def receptive_field(self) -> int:
        """Samples one output frame sees; shorter audio yields no frame (400 waveform, 1360 fbank)."""
        if self.frontend == "waveform":
            field_ = 1
            for _, kernel, stride in reversed(self.conv_feature_layers):
                field_ = (field_ - 1) * stride + kernel
            return field_
        frames = 1
        for kernel, stride in reversed(self._fbank_convs):
            frames = (frames - 1) * stride + kernel
        return WIN_LENGTH + (frames - 1) * HOP_LENGTH

    @property
    def _fbank_convs(self) -> list[tuple[int, int]]:
        """(kernel, stride) along time of the two conv2d layers."""
        return [(3, 2), (3, self.fbank_subsampling // 2)]

    def validate(self) -> None:
        if self.frontend not in ("waveform", "fbank"):
            raise ValueError(f"frontend must be 'waveform' or 'fbank', got {self.frontend!r}")
        convs = self.conv_feature_layers
        if not convs or not all(
            isinstance(c, tuple) and len(c) == 3 and all(isinstance(v, int) and v >= 1 for v in c) for c in convs
        ):
            raise ValueError(f"conv_feature_layers must be positive (channels, kernel, stride) tuples, got {convs!r}")
        if self.fbank_subsampling not in (2, 4):
            raise ValueError(f"fbank_subsampling must be 2 or 4, got {self.fbank_subsampling!r}")
        for name in ("fbank_channels", "model_dim", "num_layers", "num_heads", "ffn_dim", "pos_conv_kernel",
                     "pos_conv_depth", "pos_conv_groups", "num_codebooks", "codebook_size", "mask_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim {self.model_dim} is not divisible by {self.num_heads} attention heads")
        if self.model_dim % self.pos_conv_groups:
            raise ValueError(f"model_dim {self.model_dim} is not divisible by {self.pos_conv_groups} pos-conv groups")
        if not isinstance(self.conv_module_kernel, int) or self.conv_module_kernel < 0 or (
            self.conv_module_kernel and self.conv_module_kernel % 2 == 0
        ):
            raise ValueError(f"conv_module_kernel must be 0 or an odd positive int, got {self.conv_module_kernel!r}")
        for name in ("dropout", "attention_dropout", "activation_dropout", "layer_drop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        check_layer_choice(self.layer, self.num_layers)
        if self.num_codebooks > self.num_layers:
            raise ValueError(
                f"num_codebooks ({self.num_codebooks}) takes one top teacher layer each; "
                f"there are only {self.num_layers} layers"
            )
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
        for name in ("codebook_decay", "ema_decay", "ema_end_decay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not isinstance(self.ema_anneal_steps, int) or self.ema_anneal_steps < 0:
            raise ValueError(f"ema_anneal_steps must be a non-negative int, got {self.ema_anneal_steps!r}")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DinoSREncoderConfig:
        """Inverse of ``to_dict`` (JSON turns the conv tuples into lists); unknown keys raise."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DinoSR config keys: {unknown}")
        data = dict(data)
        if "conv_feature_layers" in data:
            data["conv_feature_layers"] = tuple(tuple(c) for c in data["conv_feature_layers"])
        config = cls(**data)
        config.validate()
        return config


def dinosr_base() -> DinoSREncoderConfig:
    """The paper's model (§3.1, the authors' config/base.yaml; ~95M params): raw-waveform conv stack
    with layer norm, 12 post-LN layers of dim 768, 5 positional conv blocks of kernel 19, K=8 codebooks
    of V=256 over the top 8 layers, mask 0.8 × 10 frames, teacher EMA 0.999 → 0.9999 over 30k updates."""
    return DinoSREncoderConfig()


def dinosr_tiny_conformer() -> DinoSREncoderConfig:
    """``dinosr_tiny`` with a Conformer convolution module (kernel 15) in every layer (~3.5M params):
    the same DinoSR objective over a context network that learns local acoustics much faster on CPU."""
    return replace(dinosr_tiny(), conv_module_kernel=15)


def dinosr_tiny() -> DinoSREncoderConfig:
    """~3.0M params that pre-train on a 2-core CPU in tens of minutes: the fbank frontend at 50 Hz
    (raw-waveform SSL costs 2.5–4× more per audio hour here; 50 Hz leaves a character CTC slack),
    6 layers of dim 192, 3 positional conv blocks of kernel 15, K=4 codebooks of 256 over the top
    4 layers. The teacher decay is shortened to 0.99 → 0.999 over 2k updates: a 0.999 teacher would
    barely move in a run of a few thousand updates. Masking and codebook decay are the paper's."""
    return replace(
        dinosr_base(),
        frontend="fbank",
        fbank_channels=64,
        fbank_subsampling=2,
        normalize_waveform=False,
        model_dim=192,
        num_layers=6,
        num_heads=4,
        ffn_dim=768,
        pos_conv_kernel=15,
        pos_conv_depth=3,
        pos_conv_groups=16,
        layer_drop=0.0,
        num_codebooks=4,
        codebook_size=256,
        ema_decay=0.99,
        ema_end_decay=0.999,
        ema_anneal_steps=2_000,
    )


def _valid_frames(lengths: Tensor, num_frames: int) -> Tensor:
    """(B, T) True where a frame is within its item's length."""
    return torch.arange(num_frames, device=lengths.device) < lengths[:, None]


def instance_norm(x: Tensor, lengths: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalise each item's each channel to zero mean, unit variance over its valid frames only
    (``F.instance_norm`` on the unpadded item: biased variance, same eps); padded frames become 0.
    x: (B, T, D); lengths: (B,) valid frames."""
    valid = _valid_frames(lengths, x.shape[1]).to(x.dtype)[:, :, None]  # (B, T, 1)
    n = lengths.clamp(min=1).to(x.dtype)[:, None, None]  # (B, 1, 1)
    mean = (x * valid).sum(dim=1, keepdim=True) / n
    var = (((x - mean) * valid) ** 2).sum(dim=1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps) * valid


# ----------------------------------------------------------------------------------------------
# Frontends: (wav (B, S), lengths (B,)) -> (B, T, feature_dim)


class _ConvBlock(nn.Module):
    """Conv1d -> LayerNorm over channels -> GELU (fairseq's layer_norm extractor block)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, S) -> (B, C_out, S')
        x = self.conv(x)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class _WaveformFeatureExtractor(nn.Module):
    """wav2vec 2.0's conv stack. A valid output frame sees only its item's own samples, and every
    norm is per frame, so padding never changes valid frames."""

    def __init__(self, layers: tuple[tuple[int, int, int], ...], bias: bool) -> None:
        super().__init__()
        blocks, in_channels = [], 1
        for channels, kernel, stride in layers:
            blocks.append(_ConvBlock(in_channels, channels, kernel, stride, bias))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, wav: Tensor, lengths: Tensor) -> Tensor:
        x = wav[:, None, :]  # (B, 1, S)
        for block in self.conv_layers:
            x = block(x)
        return x.transpose(1, 2)  # (B, T, C)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> Tensor:
    """(n_freqs, n_mels) triangular filters on the HTK mel scale from 0 Hz to Nyquist, unnormalised
    (as torchaudio's ``melscale_fbanks(..., norm=None, mel_scale="htk")``)."""

    def hz_to_mel(f: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)  # FFT bin centres
    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    mel_points = torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)  # (n_mels + 2,)
    left, centre, right = hz_points[:-2], hz_points[1:-1], hz_points[2:]
    rising = (freqs[:, None] - left) / (centre - left)
    falling = (right - freqs[:, None]) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class _FbankFeatureExtractor(nn.Module):
    """80-bin log-mel (25 ms Hann window, 10 ms hop, no centre padding, so a frame sees only its own
    samples), normalised per utterance over its valid frames, then two 3×3 conv2d + ReLU (stride 2 in
    time and frequency, then ``subsampling // 2`` in time and 2 in frequency)."""

    def __init__(self, channels: int, subsampling: int) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN_LENGTH, periodic=True), persistent=False)
        self.register_buffer("mel", mel_filterbank(N_FFT // 2 + 1, N_MELS, SAMPLE_RATE), persistent=False)
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(subsampling // 2, 2))

    def log_mel(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S), (B,) samples -> normalised log-mel (B, T100, 80) and its valid frames (B,)."""
        with torch.autocast(device_type=wav.device.type, enabled=False):  # spectra in fp32
            frames = wav.float().unfold(1, WIN_LENGTH, HOP_LENGTH) * self.window  # (B, T100, 400)
            power = torch.fft.rfft(frames, n=N_FFT).abs() ** 2  # (B, T100, 257)
            log_mel = torch.log(power @ self.mel + 1e-6)  # (B, T100, 80)
            num_frames = torch.div(lengths - WIN_LENGTH, HOP_LENGTH, rounding_mode="floor") + 1
            return instance_norm(log_mel, num_frames), num_frames

    def forward(self, wav: Tensor, lengths: Tensor) -> Tensor:
        log_mel, _ = self.log_mel(wav, lengths)
        x = F.relu(self.conv1(log_mel[:, None]))  # (B, C, T/2, 39)
        x = F.relu(self.conv2(x))  # (B, C, T', 19)
        return x.permute(0, 2, 1, 3).flatten(2)  # (B, T', C * 19)


# ----------------------------------------------------------------------------------------------
# Context network (what the teacher copies)


class _SelfAttention(nn.Module):
    """Multi-head self-attention with fairseq's separate q/k/v/out projections."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """x: (B, T, D); key_mask: (B, 1, 1, T) True = attend."""
        B, T, D = x.shape
        q, k, v = (
            proj(x).view(B, T, self.num_heads, -1).transpose(1, 2)  # (B, nh, T, hs)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class _ConvModule(nn.Module):
    """Conformer convolution module: pointwise conv + GLU, depthwise conv, norm, SiLU, pointwise conv.

    LayerNorm stands in for the paper's BatchNorm so that an item's output never depends on the rest
    of its batch; padded frames are zeroed before the depthwise conv so they cannot leak inward."""

    def __init__(self, dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.pointwise_in = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pointwise_out = nn.Conv1d(dim, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x: (B, T, D); valid: (B, T) -> (B, T, D), zero on padded frames."""
        keep = valid[:, None, :].to(x.dtype)  # (B, 1, T)
        h = F.glu(self.pointwise_in(x.transpose(1, 2)), dim=1) * keep  # (B, D, T)
        h = self.norm(self.depthwise(h).transpose(1, 2)).transpose(1, 2)
        h = self.pointwise_out(F.silu(h)) * keep
        return self.dropout(h.transpose(1, 2))


class _EncoderLayer(nn.Module):
    """Post-LN Transformer layer (wav2vec 2.0 BASE / DinoSR), optionally with a Conformer conv module."""

    def __init__(self, config: DinoSREncoderConfig) -> None:
        super().__init__()
        d = config.model_dim
        self.self_attn = _SelfAttention(d, config.num_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.conv_module = None
        if config.conv_module_kernel:
            self.conv_module = _ConvModule(d, config.conv_module_kernel, config.dropout)
            self.conv_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> (layer output (B, T, D), FFN output before its residual (B, T, D): DinoSR's target)."""
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, key_mask)))
        if self.conv_module is not None:
            x = self.conv_layer_norm(x + self.conv_module(x, key_mask[:, 0, 0, :]))
        ffn = self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))
        return self.final_layer_norm(x + self.dropout(ffn)), ffn


class _PosConvBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: Tensor) -> Tensor:  # (B, D, T) -> (B, D, T)
        x = self.conv(x)
        if self.kernel % 2 == 0:  # symmetric padding of an even kernel yields one frame too many
            x = x[:, :, :-1]
        x = F.layer_norm(x.transpose(1, 2), (x.shape[1],)).transpose(1, 2)  # no affine
        return F.gelu(x)


class _ContextEncoder(nn.Module):
    """Positional convs + LayerNorm + Transformer layers; fairseq's ``TransformerEncoder`` (post-LN)."""

    def __init__(self, config: DinoSREncoderConfig) -> None:
        super().__init__()
        d = config.model_dim
        self.pos_conv = nn.ModuleList(
            _PosConvBlock(d, config.pos_conv_kernel, config.pos_conv_groups) for _ in range(config.pos_conv_depth)
        )
        self.layer_norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList(_EncoderLayer(config) for _ in range(config.num_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.layer_drop = config.layer_drop
        for module in self.layers.modules():  # fairseq's init_bert_params
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, lengths: Tensor, *, keep_ffn: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """x: (B, T, D) frames; lengths: (B,) valid frames. -> (hidden states: L + 1 tensors (B, T, D),
        the Transformer input then each layer's output; FFN outputs of each layer if ``keep_ffn``)."""
        valid = _valid_frames(lengths, x.shape[1])  # (B, T)
        keep = valid[:, None, :].to(x.dtype)  # (B, 1, T)
        x = x * keep.transpose(1, 2)
        pos = x.transpose(1, 2)  # (B, D, T)
        for block in self.pos_conv:
            pos = block(pos) * keep  # re-zero padding so it cannot leak into valid frames next block
        x = self.dropout(self.layer_norm(x + pos.transpose(1, 2)))
        key_mask = valid[:, None, None, :]  # (B, 1, 1, T)
        hidden, ffn_outputs = [x], []
        for layer in self.layers:
            if self.training and self.layer_drop > 0.0 and float(torch.rand(())) < self.layer_drop:
                hidden.append(x)  # LayerDrop: the layer is skipped (only the student trains)
                continue
            x, ffn = layer(x, key_mask)
            hidden.append(x)
            if keep_ffn:
                ffn_outputs.append(ffn)
        return hidden, ffn_outputs


# ----------------------------------------------------------------------------------------------
# The encoder (the student)


class DinoSREncoder(nn.Module):
    """The DinoSR student behind the ``SpeechEncoder`` seam: (wav (B, S), lengths (B,)) -> EncoderOutput.

    ``hidden_states`` is always filled, (num_layers + 1, B, T, D): index 0 is the Transformer input
    (projected features + positional convs, layer-normed), index i the output of layer i. Frames at or
    past an item's length are zero. Batched output equals single-item output on valid frames for both
    frontends (every norm is per frame or per item over its own frames; attention masks padding).

    Parameter names follow the authors' fairseq model (``feature_extractor``, ``layer_norm``,
    ``post_extract_proj``, ``encoder.pos_conv``, ``encoder.layers.N.self_attn.k_proj`` ...).
    """

    def __init__(self, *, config: DinoSREncoderConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.feature_extractor: nn.Module
        if config.frontend == "waveform":
            self.feature_extractor = _WaveformFeatureExtractor(config.conv_feature_layers, config.conv_bias)
        else:
            self.feature_extractor = _FbankFeatureExtractor(config.fbank_channels, config.fbank_subsampling)
        self.layer_norm = nn.LayerNorm(config.feature_dim)
        self.post_extract_proj = nn.Linear(config.feature_dim, config.model_dim)
        self.encoder = _ContextEncoder(config)
        self.output_dim = config.model_dim
        self.num_layers = config.num_layers
        self.frame_rate_hz = config.frame_rate_hz
        self.layer_logits = layer_mixing_logits(config.layer, config.num_layers)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid frames per item for ``lengths`` valid samples: each conv maps n to (n - k) // s + 1."""
        lengths = lengths.long()
        if self.config.frontend == "waveform":
            convs = [(k, s) for _, k, s in self.config.conv_feature_layers]
        else:
            convs = [(WIN_LENGTH, HOP_LENGTH), *self.config._fbank_convs]  # STFT frames, then conv2d
        for kernel, stride in convs:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def extract_features(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The frontend: -> (frames projected to model_dim (B, T, D), zero past each length;
        valid frames (B,) int64). The pre-trainer masks these before the Transformer."""
        self._check_inputs(wav, lengths)
        lengths = lengths.to(device=wav.device, dtype=torch.long)
        valid = _valid_frames(lengths, wav.shape[1])  # (B, S)
        wav = wav * valid  # whatever the caller padded with, the frontend sees zeros
        if self.config.frontend == "waveform" and self.config.normalize_waveform:
            n = lengths[:, None].to(wav.dtype)
            mean = wav.sum(dim=1, keepdim=True) / n
            var = ((wav - mean) ** 2 * valid).sum(dim=1, keepdim=True) / n
            wav = (wav - mean) / torch.sqrt(var + 1e-5) * valid
        features = self.feature_extractor(wav, lengths)  # (B, T, C)
        frame_lengths = self.output_lengths(lengths)
        x = self.post_extract_proj(self.layer_norm(features))  # (B, T, D)
        x = x * _valid_frames(frame_lengths, x.shape[1])[:, :, None].to(x.dtype)
        return x, frame_lengths

    def forward(self, wav: Tensor, lengths: Tensor) -> EncoderOutput:
        x, frame_lengths = self.extract_features(wav, lengths)
        hidden, _ = self.encoder(x, frame_lengths)
        frames = _valid_frames(frame_lengths, x.shape[1])  # (B, T)
        hidden_states = torch.stack(hidden) * frames[None, :, :, None].to(x.dtype)  # (L + 1, B, T, D)
        features = select_layer(hidden_states, self.config.layer, self.layer_logits)
        return EncoderOutput(
            features=features,  # (B, T, D)
            lengths=frame_lengths,
            frame_rate_hz=self.frame_rate_hz,
            hidden_states=hidden_states,
        )

    def _check_inputs(self, wav: Tensor, lengths: Tensor) -> None:
        check_encoder_inputs(wav, lengths, min_samples=self.config.receptive_field)


# ----------------------------------------------------------------------------------------------
# Build


def build_dinosr_encoder(config: DinoSREncoderConfig) -> DinoSREncoder:
    """A randomly initialised student (in training mode, as any new nn.Module)."""
    config.validate()
    return DinoSREncoder(config=config)
