"""Whisper's encoder as a spokenlm speech encoder, and readers for the forms users hold Whisper in.

Whisper (Radford et al., 2022, "Robust Speech Recognition via Large-Scale Weak Supervision", §2.2):
an 80-bin log-mel spectrogram (25 ms windows every 10 ms) goes through two convolutions, the second
of stride 2, so frames come at 50 Hz; learned-size positional embeddings are added and a pre-LN
Transformer encodes them, ending in a layer norm. The released model always sees 30 s (3,000 mel
frames, padded with silence); we slice the positional embeddings instead and run any length up to
30 s unpadded, which is what makes a 3-s clip cost a tenth of a 30-s one.

This file holds:
- ``WhisperEncoderConfig`` and the presets ``whisper_tiny()`` (tiny / tiny.en) / ``whisper_test()``;
- ``log_mel_spectrogram``: the feature extractor, equal to transformers' ``WhisperFeatureExtractor``
  on the same samples, computed per item over its valid samples (so padding changes nothing);
- ``WhisperEncoder``, the ``SpeechEncoder`` (wav, lengths) -> ``EncoderOutput``;
- ``read_ctranslate2_model`` (the CTranslate2 ``model.bin`` format, read here without ctranslate2)
  and ``ctranslate2_to_hf_whisper`` (its variables under transformers' names);
- ``load_whisper_model`` (the whole encoder-decoder, for the peer recognizer in spokenlm/peers.py),
  ``build_whisper_encoder``, ``load_whisper_encoder`` (an HF Whisper dir, a CTranslate2 dir or our own
  saved dir) and ``save_whisper_encoder``.

Not here: decoding with Whisper's own decoder (spokenlm/peers.py runs it as a peer recognizer).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spokenlm.audio import SAMPLE_RATE
from spokenlm.encoders.base import (
    ENCODER_FORMAT_VERSION,
    EncoderOutput,
    check_encoder_inputs,
    check_layer_choice,
    layer_mixing_logits,
    read_encoder_manifest,
    select_layer,
)
from spokenlm.weights import no_safetensors_error

LayerChoice = Literal["last", "weighted"] | int

# Whisper's audio constants (§2.2): 16 kHz, 25 ms Hann windows (400 samples) every 10 ms.
N_FFT = 400
HOP_LENGTH = 160
MEL_FRAMES_PER_FRAME = 2  # conv2 has stride 2: 100 Hz mel frames -> 50 Hz encoder frames
FRAME_RATE_HZ = SAMPLE_RATE / HOP_LENGTH / MEL_FRAMES_PER_FRAME  # 50.0
LOG_MEL_RANGE = 8.0  # log10 units kept below each item's loudest mel bin (80 dB)

# transformers' WhisperConfig keys for the encoder, with tiny's values; the arch dict may set any of
# them (and decoder keys, which the encoder ignores).
_ARCH_DEFAULTS: dict[str, Any] = {
    "num_mel_bins": 80,
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "max_source_positions": 1500,  # 30 s at 50 Hz
}


# ----------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True, kw_only=True)
class WhisperEncoderConfig:
    """What a Whisper encoder is (not where its weights live)."""

    arch: dict[str, Any] = field(default_factory=dict)
    """``transformers.WhisperConfig`` kwargs (``d_model``, ``encoder_layers``, ...); missing keys take
    tiny's values. JSON-serialisable; treat it as read-only."""

    layer: LayerChoice = "last"
    """Which hidden state becomes ``EncoderOutput.features``: "last" (after the final layer norm), an
    int index into ``hidden_states`` (0 = Transformer input, i = output of layer i), or "weighted"
    (a learned softmax mix of all of them)."""

    bf16: bool = False
    """Run the convolutions and the Transformer under bfloat16 autocast (CPUs with AVX-512 BF16, or
    CUDA); the log-mel front end stays float32 and the features come back float32. Measured here on
    tiny.en: ~2.7x faster on one core, features within ~2 % (relative L2) of float32. The feature cache
    and inference then compute the same features, so a head trained on one fits the other."""

    def _get(self, key: str) -> Any:
        value = self.arch.get(key)
        return _ARCH_DEFAULTS[key] if value is None else value

    @property
    def model_dim(self) -> int:
        return int(self._get("d_model"))

    @property
    def num_layers(self) -> int:
        """Transformer layers; ``hidden_states`` holds ``num_layers + 1`` entries."""
        return int(self._get("encoder_layers"))

    @property
    def num_mel_bins(self) -> int:
        return int(self._get("num_mel_bins"))

    @property
    def max_frames(self) -> int:
        """The longest input, in 50 Hz frames: the positional embedding table's size (1,500 = 30 s)."""
        return int(self._get("max_source_positions"))

    @property
    def max_samples(self) -> int:
        return self.max_frames * MEL_FRAMES_PER_FRAME * HOP_LENGTH

    @property
    def frame_rate_hz(self) -> float:
        return FRAME_RATE_HZ

    def validate(self) -> None:
        if not isinstance(self.arch, dict):
            raise ValueError(f"arch must be a dict, got {type(self.arch).__name__}")
        for key in _ARCH_DEFAULTS:
            value = self._get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"whisper arch {key} must be a positive int, got {value!r}")
        heads = int(self._get("encoder_attention_heads"))
        if self.model_dim % heads:
            raise ValueError(f"d_model {self.model_dim} is not divisible by {heads} attention heads")
        check_layer_choice(self.layer, self.num_layers)
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be a bool, got {self.bf16!r}")


def whisper_tiny() -> WhisperEncoderConfig:
    """tiny / tiny.en (§2.4, Table 1): 4 layers of width 384, 6 heads, 80 mel bins; ~8M encoder params."""
    return WhisperEncoderConfig(arch=dict(_ARCH_DEFAULTS), layer="last")


def whisper_test() -> WhisperEncoderConfig:
    """A ~30K-parameter encoder for tests: 2 layers of width 16, 80 mel bins, 30-s positions."""
    arch = _ARCH_DEFAULTS | {"d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 32}
    return WhisperEncoderConfig(arch=arch, layer="last")


def _hf_config(arch: dict[str, Any]):
    from transformers import WhisperConfig

    # dropout 0: the encoder is a frozen feature extractor here; fine-tuning recipes add their own masking
    return WhisperConfig(**(_ARCH_DEFAULTS | {"dropout": 0.0, "attention_dropout": 0.0} | arch))


# ----------------------------------------------------------------------------------------------
# Features


def mel_filters(num_mel_bins: int) -> Tensor:
    """(N_FFT // 2 + 1, num_mel_bins) Slaney-style mel filter bank over 0-8 kHz, as Whisper's."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=num_mel_bins,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(bank.astype(np.float32))


def log_mel_spectrogram(wav: Tensor, filters: Tensor) -> Tensor:
    """One item's samples (S,) -> (num_mel_bins, S // HOP_LENGTH) Whisper log-mel features.

    As transformers' WhisperFeatureExtractor: |STFT|^2 of centred (reflect-padded) 400-sample Hann
    windows every 160 samples, the last frame dropped, mel filters, log10 clamped at 1e-10, floored at
    the item's maximum minus 8, then (x + 4) / 4. Computed on the item alone, so the floor and the
    reflect padding at its end do not depend on what it is batched with.
    """
    window = torch.hann_window(N_FFT, device=wav.device, dtype=torch.float32)
    stft = torch.stft(wav.float(), N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[:, :-1].abs() ** 2  # (N_FFT // 2 + 1, F)
    log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()  # (mels, F)
    log_spec = torch.maximum(log_spec, log_spec.max() - LOG_MEL_RANGE)
    return (log_spec + 4.0) / 4.0


# ----------------------------------------------------------------------------------------------
# The encoder


class WhisperEncoder(nn.Module):
    """Whisper's encoder behind the ``SpeechEncoder`` seam: (wav (B, S), lengths (B,)) -> EncoderOutput.

    ``hidden_states`` is always filled, shape (num_layers + 1, B, T, D): index 0 is the Transformer
    input (convs + positions), index i the output of layer i, the last one after the final layer norm
    (as transformers' ``WhisperEncoder`` returns them). T = ceil(S / 320) for S samples; frames at or
    past an item's length are zero. Batched output equals one-at-a-time output on the valid frames:
    features are computed per item, each conv's output is zeroed past the item's end (so the next
    conv sees the zero padding it would see alone), and attention masks padded frames.

    Inputs longer than 30 s (the positional table) are refused; ``SpeechLM`` cuts long recordings
    at pauses into chunks of at most 30 s first.
    """

    def __init__(self, *, config: WhisperEncoderConfig, model: nn.Module) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.model = model  # transformers' WhisperEncoder: conv1, conv2, embed_positions, layers, layer_norm
        self.output_dim = config.model_dim
        self.num_layers = config.num_layers
        self.frame_rate_hz = config.frame_rate_hz
        self.layer_logits = layer_mixing_logits(config.layer, config.num_layers)
        self.register_buffer("mel_filters", mel_filters(config.num_mel_bins), persistent=False)

    @staticmethod
    def mel_lengths(lengths: Tensor) -> Tensor:
        return torch.div(lengths.long(), HOP_LENGTH, rounding_mode="floor")

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid 50 Hz frames per item: conv2 (kernel 3, stride 2, padding 1) maps F mel frames to ceil(F / 2)."""
        mel = self.mel_lengths(lengths)
        return torch.div(mel + 1, MEL_FRAMES_PER_FRAME, rounding_mode="floor")

    def forward(self, wav: Tensor, lengths: Tensor) -> EncoderOutput:
        self._check_inputs(wav, lengths)
        lengths = lengths.to(device=wav.device, dtype=torch.long)
        mel_lengths = self.mel_lengths(lengths)  # (B,)
        frames = self.output_lengths(lengths)  # (B,)
        dtype = self.model.conv1.weight.dtype

        mels = torch.zeros(wav.shape[0], self.config.num_mel_bins, int(mel_lengths.max()), device=wav.device)
        with torch.autocast(wav.device.type, enabled=False):  # the front end is float32 whatever the caller's autocast
            for i, n in enumerate(lengths.tolist()):  # per item: its own floor and end padding
                mel = log_mel_spectrogram(wav[i, :n].float(), self.mel_filters)
                mels[i, :, : mel.shape[1]] = mel
        valid_mel = (torch.arange(mels.shape[2], device=wav.device) < mel_lengths[:, None])[:, None, :]  # (B, 1, F)
        if self.config.bf16:
            with torch.autocast(wav.device.type, dtype=torch.bfloat16):
                hidden_states = self._network(mels.to(dtype), valid_mel, frames)
            hidden_states = hidden_states.float()
        else:
            hidden_states = self._network(mels.to(dtype), valid_mel, frames)
        return EncoderOutput(
            features=select_layer(hidden_states, self.config.layer, self.layer_logits),  # (B, T, D)
            lengths=frames,
            frame_rate_hz=self.frame_rate_hz,
            hidden_states=hidden_states,
        )

    def _network(self, mels: Tensor, valid_mel: Tensor, frames: Tensor) -> Tensor:
        """(B, mels, F) log-mel -> (L + 1, B, T, D) hidden states, zero past each item's frames."""
        x = F.gelu(self.model.conv1(mels)) * valid_mel  # (B, D, F), zero past each item's end
        x = F.gelu(self.model.conv2(x))  # (B, D, T)
        x = x.transpose(1, 2)  # (B, T, D)
        t = x.shape[1]
        x = x + self.model.embed_positions.weight[:t].to(x.dtype)
        valid = torch.arange(t, device=mels.device) < frames[:, None]  # (B, T)
        x = x * valid[:, :, None].to(x.dtype)

        # additive key mask (B, 1, T, T): padded frames are never attended
        mask = torch.zeros(x.shape[0], 1, t, t, device=x.device, dtype=x.dtype)
        mask = mask.masked_fill(~valid[:, None, None, :], torch.finfo(x.dtype).min)
        hidden = [x]
        for layer in self.model.layers:
            x = layer(x, attention_mask=mask, layer_head_mask=None)[0]
            hidden.append(x)
        hidden[-1] = self.model.layer_norm(hidden[-1])
        hidden = [h.to(x.dtype) for h in hidden]  # under autocast a layer norm may return float32
        return torch.stack(hidden) * valid[None, :, :, None].to(x.dtype)  # (L + 1, B, T, D)

    def _check_inputs(self, wav: Tensor, lengths: Tensor) -> None:
        check_encoder_inputs(wav, lengths, min_samples=N_FFT)
        longest = int(lengths.max())
        if longest > self.config.max_samples:
            raise ValueError(
                f"audio of {longest / SAMPLE_RATE:.2f} s is longer than Whisper's {self.config.max_samples / SAMPLE_RATE:.0f} s "
                f"window ({self.config.max_frames} positions); cut it first (SpeechLM splits at pauses)"
            )


# ----------------------------------------------------------------------------------------------
# CTranslate2's model.bin, read without ctranslate2


# CTranslate2's DataType enum, as stored in model.bin (binary version >= 4).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_CT2_MIN_VERSION, _CT2_MAX_VERSION = 4, 6  # the versions whose layout is below


@dataclass(frozen=True)
class CTranslate2Model:
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, Tensor]  # name -> tensor, int8 weights already de-quantized; aliases resolved


def read_ctranslate2_model(path: str | Path) -> CTranslate2Model:
    """Read a CTranslate2 ``model.bin`` (a file, or the directory holding it).

    Layout (little endian): uint32 binary version; spec name; uint32 spec revision; uint32 count; per
    variable: name, uint8 rank, uint32 dims[rank], uint8 dtype, uint32 byte count, raw data; then
    uint32 alias count and (alias, target) name pairs. A string is a uint16 length (terminating NUL
    included) and its bytes. int8 weights are stored with a float ``<name>_scale`` per output row
    (q = round(w * scale)); they are de-quantized to w = q / scale and the scales dropped. Nothing is
    executed; an unknown dtype, version or a truncated file raises ValueError naming it.
    """
    file, data, spec, revision, records, aliases = _parse_ctranslate2(path)
    raw: dict[str, Tensor] = {}
    for record in records:
        buffer = bytes(data[record.offset : record.offset + record.nbytes])
        if _CT2_DTYPES[record.dtype_id] == "bfloat16":
            tensor = torch.frombuffer(bytearray(buffer), dtype=torch.bfloat16).clone() if buffer else torch.empty(0, dtype=torch.bfloat16)
        else:
            tensor = torch.from_numpy(np.frombuffer(buffer, dtype=_CT2_DTYPES[record.dtype_id]).copy())
        expected = int(np.prod(record.shape)) if record.shape else 1
        if tensor.numel() != expected:
            raise ValueError(f"{file}: variable {record.name} has {tensor.numel()} values for shape {record.shape}")
        raw[record.name] = tensor.reshape(record.shape)
    return CTranslate2Model(spec=spec, revision=revision, variables=_dequantize(raw, aliases, file))


def write_ctranslate2_model(src: str | Path, dst: str | Path, updates: dict[str, Tensor]) -> None:
    """Write a copy of the CTranslate2 ``model.bin`` at `src` to the file `dst` with the float
    variables named in `updates` given new values (same shape; stored in the variable's own dtype),
    every other byte as it was. Hand-written rather than ctranslate2's converters: those rebuild a
    model from a Hugging Face checkpoint, its tokenizer and generation config, which a pinned
    CTranslate2 base does not ship; patching keeps the base's vocabulary, suppressed tokens and
    alignment heads exactly."""
    file, data, _, _, records, _ = _parse_ctranslate2(src)
    by_name = {r.name: r for r in records}
    for name, value in updates.items():
        record = by_name.get(name)
        if record is None:
            raise ValueError(f"{file} has no variable {name}")
        kind = _CT2_DTYPES[record.dtype_id]
        if kind not in (np.float32, np.float16, "bfloat16"):
            raise ValueError(f"{file}: {name} is stored as {np.dtype(kind).name}; only float variables can be replaced "
                             "(convert the base with --quantization float16 or float32)")  # fmt: skip
        if list(value.shape) != record.shape:
            raise ValueError(f"{file}: {name} has shape {record.shape}, the new value {list(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"new value of {name} holds NaN or infinite values")
    out = bytearray(data)
    for name, value in updates.items():
        record = by_name[name]
        kind = _CT2_DTYPES[record.dtype_id]
        if kind == "bfloat16":
            raw = value.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
        else:
            raw = value.detach().float().numpy().astype(kind).tobytes()
        out[record.offset : record.offset + record.nbytes] = raw
    Path(dst).write_bytes(bytes(out))


@dataclass(frozen=True)
class _Record:
    name: str
    shape: list[int]
    dtype_id: int
    offset: int  # of the raw data in the file
    nbytes: int


def _parse_ctranslate2(path: str | Path) -> tuple[Path, memoryview, str, int, list[_Record], dict[str, str]]:
    """(file, its bytes, spec, revision, the variables' records, aliases) of a model.bin (layout:
    `read_ctranslate2_model`)."""
    path = Path(path)
    file = path / "model.bin" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no CTranslate2 model.bin at {path}")
    data = memoryview(file.read_bytes())
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(data):
            raise ValueError(f"{file} is truncated: wanted {n} bytes at offset {pos} of {len(data)}")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    def u8() -> int:
        return take(1)[0]

    def u32() -> int:
        return struct.unpack("<I", take(4))[0]

    def string() -> str:
        (n,) = struct.unpack("<H", take(2))
        return bytes(take(n)).rstrip(b"\0").decode("utf-8")

    version = u32()
    if not _CT2_MIN_VERSION <= version <= _CT2_MAX_VERSION:
        raise ValueError(
            f"{file}: CTranslate2 binary version {version} is not supported "
            f"(this reader knows {_CT2_MIN_VERSION} to {_CT2_MAX_VERSION})"
        )
    spec, revision = string(), u32()
    records = []
    for _ in range(u32()):
        name = string()
        shape = [u32() for _ in range(u8())]
        dtype_id, nbytes = u8(), u32()
        if dtype_id not in _CT2_DTYPES:
            raise ValueError(f"{file}: variable {name} has unknown CTranslate2 dtype id {dtype_id}")
        records.append(_Record(name, shape, dtype_id, pos, nbytes))
        take(nbytes)
    aliases = {}
    if pos < len(data):
        for _ in range(u32()):
            alias = string()
            aliases[alias] = string()
    return file, data, spec, revision, records, aliases


def _dequantize(raw: dict[str, Tensor], aliases: dict[str, str], file: Path) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, value in raw.items():
        if name.endswith("_scale"):
            continue
        scale = raw.get(f"{name}_scale")
        if value.dtype == torch.int8 and scale is not None:
            # q = round(w * scale) per output row (CTranslate2's int8 quantization), so w = q / scale
            value = value.float() / scale.float().reshape(-1, *([1] * (value.dim() - 1)))
        elif value.dtype == torch.int16 and scale is not None:
            raise ValueError(
                f"{file}: {name} is int16-quantized, which this reader does not de-quantize; "
                "convert the model with --quantization float16 or float32"
            )
        out[name] = value
    for alias, target in aliases.items():
        if target not in out:
            raise ValueError(f"{file}: alias {alias} names a missing variable {target}")
        out[alias] = out[target]
    return out


def _ct2_layer_count(variables: dict[str, Tensor], prefix: str) -> int:
    layer = re.compile(rf"{prefix}/layer_(\d+)/")
    return len({m.group(1) for name in variables if (m := layer.match(name))})


def ctranslate2_whisper_arch(model: CTranslate2Model) -> dict[str, Any]:
    """transformers.WhisperConfig kwargs, read off the shapes and scalars of a WhisperSpec model."""
    if model.spec != "WhisperSpec":
        raise ValueError(f"expected a CTranslate2 Whisper model (WhisperSpec), got {model.spec}")
    v = model.variables
    try:
        d_model, num_mel_bins, _ = v["encoder/conv1/weight"].shape
        arch = {
            "num_mel_bins": int(num_mel_bins),
            "d_model": int(d_model),
            "encoder_layers": _ct2_layer_count(v, "encoder"),
            "decoder_layers": _ct2_layer_count(v, "decoder"),
            "encoder_attention_heads": int(v["encoder/num_heads"]),
            "decoder_attention_heads": int(v["decoder/num_heads"]),
            "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
            "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
            "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
            "vocab_size": int(v["decoder/embeddings/weight"].shape[0]),
        }
    except KeyError as e:
        raise ValueError(f"CTranslate2 Whisper model lacks variable {e.args[0]}") from None
    return arch


def ctranslate2_to_hf_whisper(model: CTranslate2Model) -> dict[str, Tensor]:
    """The variables of a CTranslate2 WhisperSpec under ``WhisperForConditionalGeneration``'s names.

    CTranslate2 fuses projections: encoder and decoder ``self_attention/linear_0`` is q|k|v (k has no
    bias in Whisper, so its third of the fused bias is dropped), the decoder's cross ``attention/linear_0``
    is q and ``linear_1`` k|v; ``linear_last`` is the output projection; ``ffn/linear_0/1`` are fc1/fc2;
    layer norms hold gamma/beta. The output projection shares the token embeddings.
    """
    v = model.variables
    out: dict[str, Tensor] = {}

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def linear(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = v[f"{src}/weight"]
        if f"{src}/bias" in v:
            out[f"{dst}.bias"] = v[f"{src}/bias"]

    def fused(src: str, dsts: list[str], biased: list[bool]) -> None:
        weights = v[f"{src}/weight"].chunk(len(dsts))
        biases = v[f"{src}/bias"].chunk(len(dsts)) if f"{src}/bias" in v else [None] * len(dsts)
        for dst, w, b, has_bias in zip(dsts, weights, biases, biased):
            out[f"{dst}.weight"] = w
            if has_bias and b is not None:
                out[f"{dst}.bias"] = b

    for side in ("encoder", "decoder"):
        for i in range(_ct2_layer_count(v, side)):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            attn = f"{dst}.self_attn"
            fused(f"{src}/self_attention/linear_0", [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"], [True, False, True])
            linear(f"{src}/self_attention/linear_1", f"{attn}.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                cross = f"{dst}.encoder_attn"
                linear(f"{src}/attention/linear_0", f"{cross}.q_proj")
                fused(f"{src}/attention/linear_1", [f"{cross}.k_proj", f"{cross}.v_proj"], [False, True])
                linear(f"{src}/attention/linear_2", f"{cross}.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        out[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    return out


# ----------------------------------------------------------------------------------------------
# Build, save, load


def build_whisper_encoder(config: WhisperEncoderConfig) -> WhisperEncoder:
    """A randomly initialised encoder."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

    config.validate()
    hf = _hf_config(config.arch)
    hf._attn_implementation = "eager"  # our additive 4-D mask; sdpa takes the same mask
    return WhisperEncoder(config=config, model=HFWhisperEncoder(hf))


def _is_ctranslate2_dir(path: Path) -> bool:
    return (path / "model.bin").is_file() and not (path / "encoder.json").is_file()


def _hf_whisper_state(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config dict, state dict with ``model.``-style names) of an HF Whisper dir (safetensors only)."""
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "whisper":
        raise ValueError(f"{path}/config.json describes a {config.get('model_type')!r} model, not whisper")
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise no_safetensors_error(path)
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    # WhisperModel saves "encoder.*"; WhisperForConditionalGeneration "model.encoder.*" (+ proj_out)
    state = {k if k.startswith(("model.", "proj_out.")) else f"model.{k}": v for k, v in state.items()}
    return config, state


_DECODER_KEYS = ("decoder_layers", "decoder_attention_heads", "decoder_ffn_dim", "max_target_positions", "vocab_size")


def _arch_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """The encoder and decoder shape keys of an HF WhisperConfig dict (what ctranslate2_whisper_arch reads)."""
    return {k: config[k] for k in (*_ARCH_DEFAULTS, *_DECODER_KEYS) if k in config}


def _read_whisper_dir(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(arch, full-model state dict under transformers' names) of an HF or CTranslate2 Whisper dir."""
    if _is_ctranslate2_dir(path):
        ct2 = read_ctranslate2_model(path)
        return ctranslate2_whisper_arch(ct2), ctranslate2_to_hf_whisper(ct2)
    if (path / "config.json").is_file():
        config, state = _hf_whisper_state(path)
        return _arch_from_hf(config), state
    raise FileNotFoundError(f"{path} is neither a Hugging Face Whisper dir (config.json) nor a CTranslate2 one (model.bin)")


def _load_strict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(f"{source} lacks weights for {len(result.missing_keys)} parameters, e.g. {result.missing_keys[:3]}")
    if result.unexpected_keys:
        raise ValueError(f"{source} has {len(result.unexpected_keys)} unknown weights, e.g. {result.unexpected_keys[:3]}")


def load_whisper_encoder(
    path: str | Path, *, layer: LayerChoice | None = None, bf16: bool | None = None
) -> WhisperEncoder:
    """Load the encoder, in eval mode, from

    - a Hugging Face Whisper directory (``WhisperModel`` or ``WhisperForConditionalGeneration``:
      config.json + model.safetensors; pickled weights are refused);
    - a CTranslate2 Whisper directory (``model.bin`` + config.json, as faster-whisper uses:
      float32 / float16 / bfloat16 variables, int8 de-quantized);
    - a directory written by ``save_whisper_encoder`` (``encoder.json``).

    ``layer`` and ``bf16`` override the saved choices (for the other two: "last", False). Weights keep
    the dtype they are stored in only for our own dirs; HF and CTranslate2 weights load as float32.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no Whisper model directory at {path}")
    if (path / "encoder.json").is_file():
        encoder = _load_saved(path)
        changes = {k: v for k, v in (("layer", layer), ("bf16", bf16)) if v is not None and v != getattr(encoder.config, k)}
        if changes:
            saved = encoder
            encoder = build_whisper_encoder(replace(saved.config, **changes)).to(saved.model.conv1.weight.dtype)
            encoder.model.load_state_dict(saved.model.state_dict())
        return encoder.eval()
    arch, state = _read_whisper_dir(path)
    config = WhisperEncoderConfig(
        arch={k: arch[k] for k in _ARCH_DEFAULTS}, layer="last" if layer is None else layer, bf16=bool(bf16)
    )
    encoder = build_whisper_encoder(config)
    prefix = "model.encoder."
    encoder_state = {k.removeprefix(prefix): v.float() for k, v in state.items() if k.startswith(prefix)}
    _load_strict(encoder.model, encoder_state, str(path))
    return encoder.eval()


def save_whisper_encoder(encoder: WhisperEncoder, path: str | Path) -> None:
    """Write the encoder as a directory ``load_encoder`` / ``load_whisper_encoder`` read back exactly:

    DIR/encoder.json        {"kind": "whisper", "format_version": 1, "layer", "bf16", "arch"}; written last
    DIR/model.safetensors   transformers' WhisperEncoder state dict (conv1.*, layers.*, ...), plus
                            layer_logits for layer="weighted"; in the dtype the encoder holds
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
    if encoder.layer_logits is not None:
        state["layer_logits"] = encoder.layer_logits.detach().cpu().contiguous()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    manifest = {
        "kind": "whisper",
        "format_version": ENCODER_FORMAT_VERSION,
        "layer": encoder.config.layer,
        "bf16": encoder.config.bf16,
        "arch": encoder.config.arch,
    }
    (path / "encoder.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _load_saved(path: Path) -> WhisperEncoder:
    from safetensors.torch import load_file

    manifest = read_encoder_manifest(path, "whisper")
    config = WhisperEncoderConfig(arch=manifest["arch"], layer=manifest["layer"], bf16=bool(manifest.get("bf16", False)))
    encoder = build_whisper_encoder(config)
    file = path / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors (encoder dirs hold safetensors only)")
    state = load_file(str(file))
    logits = state.pop("layer_logits", None)
    dtype = next(iter(state.values())).dtype if state else torch.float32
    encoder.model.to(dtype)
    _load_strict(encoder.model, state, str(path))
    if encoder.layer_logits is not None:
        if logits is None:
            raise ValueError(f"{path} is a layer='weighted' encoder without layer_logits")
        encoder.layer_logits.data.copy_(logits)
    return encoder


def load_whisper_model(path: str | Path, *, dtype: torch.dtype = torch.float32):
    """The whole Whisper (``WhisperForConditionalGeneration``, eval mode) from an HF or CTranslate2
    dir, with the tokenizer the dir carries (``tokenizer.json``); for the peer recognizer.

    Returns (model, tokenizer). The generation config (decoder start, no-timestamps, suppressed ids)
    is read from the HF dir's generation_config.json, or from a CTranslate2 dir's config.json.
    """
    from transformers import GenerationConfig, PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    path = Path(path)
    arch, state = _read_whisper_dir(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    if _is_ctranslate2_dir(path):
        ids = tokenizer.get_vocab()
        eot = ids.get("<|endoftext|>")
        start = ids.get("<|startoftranscript|>")
        if eot is None or start is None:
            raise ValueError(f"{path}/tokenizer.json lacks Whisper's <|endoftext|> / <|startoftranscript|> tokens")
        config = WhisperConfig(
            **arch, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=start,
            suppress_tokens=None, begin_suppress_tokens=None,  # they live in the generation config
        )  # fmt: skip
    else:
        config = WhisperConfig(**json.loads((path / "config.json").read_text()))
    model = WhisperForConditionalGeneration(config)
    state.setdefault("proj_out.weight", state["model.decoder.embed_tokens.weight"])
    _load_strict(model, {k: v.to(dtype) for k, v in state.items()}, str(path))
    model.to(dtype).eval()
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    else:
        model.generation_config = _generation_config_from_ct2(path, tokenizer, config)
    return model, tokenizer


def _generation_config_from_ct2(path: Path, tokenizer, config):
    """Whisper's decoding defaults from a CTranslate2 dir's config.json and tokenizer (tiny.en style)."""
    from transformers import GenerationConfig

    ct2 = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    ids = tokenizer.get_vocab()
    lang_ids = ct2.get("lang_ids") or []
    # as openai/whisper decides it: the English-only models (tiny.en, ...) have one token fewer
    english_only = config.vocab_size < 51865 or not lang_ids
    start = ids["<|startoftranscript|>"]
    eot = ids["<|endoftext|>"]
    gen = GenerationConfig(
        decoder_start_token_id=start,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2.get("suppress_ids_begin") or []),
        no_timestamps_token_id=ids.get("<|notimestamps|>"),
        is_multilingual=not english_only,
    )
    if not english_only:
        gen.lang_to_id = {tok: i for tok, i in ids.items() if tok.startswith("<|") and len(tok) <= 7 and i in lang_ids}
        gen.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    return gen
