"""wav2vec 2.0 as a spokenlm speech encoder.

wav2vec 2.0 (Baevski et al., 2020, "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech
Representations", §2): a 7-layer 1-D conv stack turns 16 kHz audio into 50 Hz latent frames
(total stride 320), a linear projection lifts them to the model dim, a grouped convolution adds
relative positions, and a Transformer ("context network") contextualises them. We use it frozen or
fine-tuned as the encoder in front of the compressor; its hidden states feed layer probes.

This file holds:
- ``Wav2Vec2EncoderConfig`` and the presets ``wav2vec2_tiny()`` / ``wav2vec2_base()``;
- ``Wav2Vec2Encoder``, the ``SpeechEncoder`` (wav, lengths) -> ``EncoderOutput``;
- ``build_wav2vec2_encoder`` (random init), ``load_wav2vec2_encoder`` (a Hugging Face Wav2Vec2 dir,
  an original fairseq ``.pt`` checkpoint, or our own bundle) and ``save_wav2vec2_encoder``.

Two backends compute the same network. ``"hf"`` runs transformers' ``Wav2Vec2Model``; it serves
Hugging Face directories and our bundles. ``"fairseq2"`` runs fairseq2's wav2vec 2.0 frontend and
Transformer encoder; it serves original fairseq checkpoints through fairseq2's own fairseq→fairseq2
key conversion. Weights are never unpickled beyond ``torch.load(weights_only=True)``.

Not here: the pre-training objective (quantizer, masking, contrastive loss) and CTC heads
(``spokenlm/compress``).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from spokenlm.audio import SAMPLE_RATE  # every wav2vec 2.0 checkpoint was trained on 16 kHz audio
from spokenlm.encoders.base import (
    ENCODER_FORMAT_VERSION,
    EncoderOutput,
    check_encoder_inputs,
    check_layer_choice,
    layer_mixing_logits,
    read_encoder_manifest,
    select_layer,
)


LayerChoice = Literal["last", "weighted"] | int

# Keys of transformers' Wav2Vec2Config that this file reads, with that class's defaults (the BASE
# model), so the config can be validated and sized without importing transformers.
_HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "feat_extract_norm": "group",
}
# The same for fairseq2's Wav2Vec2EncoderConfig; layer descs are (channels, kernel, stride).
_FAIRSEQ2_DEFAULTS: dict[str, Any] = {
    "model_dim": 768,
    "num_encoder_layers": 12,
    "num_encoder_attn_heads": 12,
    "feature_extractor_layer_descs": [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2,
}
# Bookkeeping entries of an HF config.json that say nothing about the architecture.
_HF_META_KEYS = {"transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype", "model_type"}


# ----------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True, kw_only=True)
class Wav2Vec2EncoderConfig:
    """What a wav2vec 2.0 encoder is (not where its weights live)."""

    backend: Literal["hf", "fairseq2"] = "hf"
    """Which implementation runs the network: transformers' ``Wav2Vec2Model`` ("hf") or fairseq2's
    wav2vec 2.0 frontend + encoder ("fairseq2", what original fairseq checkpoints load into)."""

    arch: dict[str, Any] = field(default_factory=dict)
    """The architecture in the backend's own vocabulary: ``transformers.Wav2Vec2Config`` kwargs for
    "hf"; ``fairseq2.models.wav2vec2.Wav2Vec2EncoderConfig`` fields for "fairseq2" (``norm_order``
    as "POST"/"PRE", layer descs as [channels, kernel, stride] lists). Missing keys take that
    class's defaults, i.e. the BASE model. JSON-serialisable; treat it as read-only."""

    layer: LayerChoice = "last"
    """Which hidden state becomes ``EncoderOutput.features``: "last"; an int index into
    ``hidden_states`` (0 = Transformer input after positional conv, i = output of layer i); or
    "weighted", a softmax-weighted sum of all of them with learned weights (SUPERB-style probes)."""

    normalize_waveform: bool = False
    """Zero-mean, unit-variance each item over its valid samples before the conv stack. Checkpoints
    pre-trained with it (the layer-norm "large-lv60" family) need it; BASE was trained without."""

    def _get(self, key: str) -> Any:
        defaults = _HF_DEFAULTS if self.backend == "hf" else _FAIRSEQ2_DEFAULTS
        value = self.arch.get(key)
        return defaults[key] if value is None else value

    @property
    def model_dim(self) -> int:
        return int(self._get("hidden_size" if self.backend == "hf" else "model_dim"))

    @property
    def num_layers(self) -> int:
        """Transformer layers; ``hidden_states`` holds ``num_layers + 1`` entries."""
        return int(self._get("num_hidden_layers" if self.backend == "hf" else "num_encoder_layers"))

    @property
    def conv_layers(self) -> list[tuple[int, int]]:
        """(kernel, stride) of each conv in the feature extractor, input side first."""
        if self.backend == "hf":
            kernels, strides = self._get("conv_kernel"), self._get("conv_stride")
            if len(kernels) != len(strides):
                raise ValueError(
                    f"conv_kernel and conv_stride must pair up, got {len(kernels)} kernels "
                    f"and {len(strides)} strides"
                )
            return [(int(k), int(s)) for k, s in zip(kernels, strides)]
        return [(int(k), int(s)) for _, k, s in self._get("feature_extractor_layer_descs")]

    @property
    def frame_rate_hz(self) -> float:
        return SAMPLE_RATE / math.prod(s for _, s in self.conv_layers)

    @property
    def receptive_field(self) -> int:
        """Samples one output frame sees; shorter audio yields no frame at all (400 for BASE)."""
        field_ = 1
        for kernel, stride in reversed(self.conv_layers):
            field_ = (field_ - 1) * stride + kernel
        return field_

    def validate(self) -> None:
        if self.backend not in ("hf", "fairseq2"):
            raise ValueError(f"backend must be 'hf' or 'fairseq2', got {self.backend!r}")
        if not isinstance(self.arch, dict):
            raise ValueError(f"arch must be a dict, got {type(self.arch).__name__}")
        convs = self.conv_layers
        if not convs or any(k < 1 or s < 1 for k, s in convs):
            raise ValueError(f"conv layers must be a non-empty list of positive (kernel, stride), got {convs}")
        heads = int(self._get("num_attention_heads" if self.backend == "hf" else "num_encoder_attn_heads"))
        if self.model_dim % heads:
            raise ValueError(f"model dim {self.model_dim} is not divisible by {heads} attention heads")
        norm = self._get("feat_extract_norm") if self.backend == "hf" else "group"
        if norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {norm!r}")
        if self.backend == "fairseq2":
            # fairseq2's config also describes conformer / fbank / rotary variants; they are not wav2vec 2.0
            for key, supported in (("use_conformer", False), ("use_fbank", False), ("pos_encoder_type", "conv")):
                if self.arch.get(key, supported) != supported:
                    raise ValueError(f"fairseq2 arch {key} must be {supported!r}, got {self.arch[key]!r}")
        check_layer_choice(self.layer, self.num_layers)
        if not isinstance(self.normalize_waveform, bool):
            raise ValueError(f"normalize_waveform must be a bool, got {self.normalize_waveform!r}")


def wav2vec2_base() -> Wav2Vec2EncoderConfig:
    """BASE (§4.2, ~95M params, as facebook/wav2vec2-base): 7 convs of 512 channels with group norm
    in the first, 12 post-LN Transformer layers of dim 768, a 128-tap positional conv in 16 groups."""
    return Wav2Vec2EncoderConfig(
        backend="hf",
        arch={
            "feat_extract_norm": "group",
            "conv_dim": [512] * 7,
            "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
            "conv_stride": [5, 2, 2, 2, 2, 2, 2],  # product 320 → 50 Hz
            "conv_bias": False,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "num_conv_pos_embeddings": 128,
            "num_conv_pos_embedding_groups": 16,
            "do_stable_layer_norm": False,  # post-LN, like BASE
        },
        layer="last",
        normalize_waveform=False,
    )


def wav2vec2_tiny() -> Wav2Vec2EncoderConfig:
    """~100K params for tests and CPU recipes: BASE's conv kernels and strides (so still 50 Hz and a
    400-sample receptive field) with 32 channels, 2 layers of dim 64. Layer-norm convs (not group
    norm) keep batched output equal to single-item output under padding; no dropout or masking."""
    base = wav2vec2_base()
    arch = base.arch | {
        "feat_extract_norm": "layer",
        "conv_dim": [32] * 7,  # != hidden_size, so fairseq also has a post-extract projection
        "conv_bias": True,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.0,
        "layerdrop": 0.0,
        "mask_time_prob": 0.0,  # no SpecAugment in training mode either
    }
    return replace(base, arch=arch, normalize_waveform=True)


# ----------------------------------------------------------------------------------------------
# Backbones: the same (wav, lengths) -> (L + 1, B, T, D) contract over two implementations.


class _HFBackbone(nn.Module):
    """transformers' Wav2Vec2Model, returning every hidden state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, wav: Tensor, lengths: Tensor) -> Tensor:
        # (B, S) 1 = real sample; transformers derives frame-level masks from it
        attention_mask = (torch.arange(wav.shape[1], device=wav.device) < lengths[:, None]).long()
        out = self.model(wav, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
        # L + 1 states: Transformer input, then each layer (the last after the final LN in pre-LN models)
        return torch.stack(out.hidden_states)  # (L + 1, B, T, D)


class _Fairseq2Backbone(nn.Module):
    """fairseq2's Wav2Vec2Frontend + StandardTransformerEncoder, returning every hidden state.

    Attribute names match fairseq2's Wav2Vec2Model so its converted checkpoints load as they are.
    """

    def __init__(self, encoder_frontend: nn.Module, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder_frontend = encoder_frontend
        self.encoder = encoder

    def forward(self, wav: Tensor, lengths: Tensor) -> Tensor:
        from fairseq2.models.transformer import AttentionBiasCache
        from fairseq2.nn import BatchLayout

        layout = BatchLayout(tuple(wav.shape), lengths.tolist(), device=wav.device)
        seqs, layout, _ = self.encoder_frontend.extract_features(wav, layout)  # (B, T, C) after LN
        seqs, _ = self.encoder_frontend.process_features(seqs, layout)  # (B, T, D) + positions
        hidden = [seqs]
        cache = AttentionBiasCache()
        encoder = self.encoder
        for layer in encoder.layers:
            # LayerDrop as fairseq2's own loop does it; we run the layers ourselves to keep every state
            if self.training and encoder.layer_drop_p > 0.0 and float(torch.rand(())) < encoder.layer_drop_p:
                hidden.append(seqs)
                continue
            seqs = layer(seqs, layout, cache)
            hidden.append(seqs)
        if encoder.layer_norm is not None:  # pre-LN models end with one (as transformers' last state)
            hidden[-1] = encoder.layer_norm(hidden[-1])
        return torch.stack(hidden)  # (L + 1, B, T, D)


# ----------------------------------------------------------------------------------------------
# The encoder


class Wav2Vec2Encoder(nn.Module):
    """wav2vec 2.0 behind the ``SpeechEncoder`` seam: (wav (B, S), lengths (B,)) -> EncoderOutput.

    ``hidden_states`` is always filled, shape (num_layers + 1, B, T, D): index 0 is the Transformer
    input (conv features, projected, plus positional conv), index i the output of layer i. Frames at
    or past an item's length are zero in ``features`` and ``hidden_states``.

    Padding: the conv stack only sees an item's own samples for its valid frames, and attention
    masks padded frames, so batched output equals single-item output on the valid frames — for
    layer-norm feature extractors (``feat_extract_norm="layer"``, the large-lv60 family, our tiny
    preset). Group-norm models (BASE, facebook/wav2vec2-base) normalise the first conv layer over the
    whole padded length, so their batched output drifts from single-item output; transformers'
    tests document the same. Batch similar lengths, or run one item at a time, for exact results.
    """

    def __init__(self, *, config: Wav2Vec2EncoderConfig, backbone: nn.Module) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = backbone
        self.output_dim = config.model_dim
        self.num_layers = config.num_layers
        self.frame_rate_hz = config.frame_rate_hz  # 16000 / product of conv strides
        self.layer_logits = layer_mixing_logits(config.layer, config.num_layers)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid frames per item: each conv maps n samples to floor((n - kernel) / stride) + 1."""
        lengths = lengths.long()
        for kernel, stride in self.config.conv_layers:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def forward(self, wav: Tensor, lengths: Tensor) -> EncoderOutput:
        self._check_inputs(wav, lengths)
        lengths = lengths.to(device=wav.device, dtype=torch.long)
        valid = torch.arange(wav.shape[1], device=wav.device) < lengths[:, None]  # (B, S)
        wav = wav * valid  # whatever the caller padded with, the backbones see zeros
        if self.config.normalize_waveform:
            wav = _normalize_waveform(wav, lengths, valid)

        hidden_states = self.backbone(wav, lengths)  # (L + 1, B, T, D)
        out_lengths = self.output_lengths(lengths)  # (B,)
        frames = torch.arange(hidden_states.shape[2], device=wav.device) < out_lengths[:, None]  # (B, T)
        hidden_states = hidden_states * frames[None, :, :, None].to(hidden_states.dtype)

        features = select_layer(hidden_states, self.config.layer, self.layer_logits)
        return EncoderOutput(
            features=features,  # (B, T, D)
            lengths=out_lengths,
            frame_rate_hz=self.frame_rate_hz,
            hidden_states=hidden_states,
        )

    def _check_inputs(self, wav: Tensor, lengths: Tensor) -> None:
        check_encoder_inputs(wav, lengths, min_samples=self.config.receptive_field)


def _normalize_waveform(wav: Tensor, lengths: Tensor, valid: Tensor) -> Tensor:
    """Per item over its valid samples only (so padding cannot shift the statistics); as
    transformers' Wav2Vec2FeatureExtractor(do_normalize=True): (x - mean) / sqrt(var + 1e-7)."""
    n = lengths[:, None].to(wav.dtype)  # (B, 1)
    mean = wav.sum(dim=1, keepdim=True) / n  # padding is already zero
    var = ((wav - mean) ** 2 * valid).sum(dim=1, keepdim=True) / n
    return (wav - mean) / torch.sqrt(var + 1e-7) * valid


# ----------------------------------------------------------------------------------------------
# Build, save, load


def build_wav2vec2_encoder(config: Wav2Vec2EncoderConfig) -> Wav2Vec2Encoder:
    """A randomly initialised encoder (in training mode, as any new nn.Module)."""
    config.validate()
    if config.backend == "hf":
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        backbone: nn.Module = _HFBackbone(Wav2Vec2Model(Wav2Vec2Config(**config.arch)))
    else:
        from fairseq2.models.wav2vec2 import Wav2Vec2EncoderFactory

        factory = Wav2Vec2EncoderFactory(_fairseq2_encoder_config(config.arch))
        backbone = _Fairseq2Backbone(factory.create_encoder_frontend(), factory.create_encoder())
    return Wav2Vec2Encoder(config=config, backbone=backbone)


def _fairseq2_encoder_config(arch: dict[str, Any]) -> Any:
    """Our JSON-friendly fairseq2 arch dict -> fairseq2's Wav2Vec2EncoderConfig."""
    import dataclasses

    from fairseq2.models.transformer import TransformerNormOrder
    from fairseq2.models.wav2vec2 import Wav2Vec2EncoderConfig as Fairseq2Config

    known = {f.name for f in dataclasses.fields(Fairseq2Config)}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise ValueError(f"unknown fairseq2 wav2vec2 arch keys: {unknown}")
    fields = dict(arch)
    if "norm_order" in fields:
        fields["norm_order"] = TransformerNormOrder[str(fields["norm_order"])]
    if "feature_extractor_layer_descs" in fields:
        fields["feature_extractor_layer_descs"] = [tuple(d) for d in fields["feature_extractor_layer_descs"]]
    return Fairseq2Config(**fields)


def save_wav2vec2_encoder(encoder: Wav2Vec2Encoder, path: str | Path) -> None:
    """Write ``encoder`` as a bundle directory:

    DIR/encoder.json              {"kind": "wav2vec2", "format_version": 1, "backend", "layer",
                                   "normalize_waveform", "arch"}; written last
    DIR/model.safetensors         backbone weights (transformers' names for "hf", fairseq2's otherwise)
    DIR/config.json               "hf" only: with model.safetensors, a Hugging Face Wav2Vec2 dir
    DIR/preprocessor_config.json  "hf" only: transformers' feature extractor (do_normalize, 16 kHz)
    DIR/layer_weights.safetensors only for layer="weighted": {"layer_logits": (L + 1,)}
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = encoder.config
    if config.backend == "hf":
        from transformers import Wav2Vec2FeatureExtractor

        encoder.backbone.model.save_pretrained(path, safe_serialization=True)
        Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=SAMPLE_RATE,
            padding_value=0.0,
            do_normalize=config.normalize_waveform,
            return_attention_mask=True,
        ).save_pretrained(path)
    else:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    mix = path / "layer_weights.safetensors"
    if encoder.layer_logits is not None:
        save_file({"layer_logits": encoder.layer_logits.detach().cpu().contiguous()}, str(mix))
    elif mix.exists():
        mix.unlink()  # stale weights from an earlier save into the same dir
    manifest = {
        "kind": "wav2vec2",
        "format_version": ENCODER_FORMAT_VERSION,
        "backend": config.backend,
        "layer": config.layer,
        "normalize_waveform": config.normalize_waveform,
        "arch": config.arch,
    }
    (path / "encoder.json").write_text(json.dumps(manifest, indent=2) + "\n")


def load_wav2vec2_encoder(
    path: str | Path,
    *,
    layer: LayerChoice | None = None,
    normalize_waveform: bool | None = None,
) -> Wav2Vec2Encoder:
    """Load an encoder, in eval mode, from

    - a bundle written by ``save_wav2vec2_encoder`` (has ``encoder.json``);
    - a Hugging Face Wav2Vec2 directory (``config.json`` + ``model.safetensors``), including
      Wav2Vec2ForCTC / Wav2Vec2ForPreTraining dirs, of which the base model is kept;
    - an original fairseq wav2vec 2.0 checkpoint file (``.pt``, pre-trained or CTC fine-tuned),
      converted by fairseq2 and run on the fairseq2 backend.

    ``layer`` and ``normalize_waveform`` default to what the checkpoint says (a bundle's own
    settings; ``preprocessor_config.json``'s ``do_normalize``; fairseq's ``task.normalize``), else
    "last" and the feature extractor's convention. Pickled weights are never loaded from a directory.
    """
    path = Path(path)
    if path.is_file():
        encoder = _load_fairseq_checkpoint(path, layer=layer, normalize_waveform=normalize_waveform)
    elif path.is_dir() and (path / "encoder.json").is_file():
        encoder = _load_bundle(path, layer=layer, normalize_waveform=normalize_waveform)
    elif path.is_dir() and (path / "config.json").is_file():
        encoder = _load_hf_dir(path, layer=layer, normalize_waveform=normalize_waveform)
    elif path.is_dir():
        _refuse_pickled_only(path)
        raise ValueError(
            f"{path} is not a wav2vec2 checkpoint: expected encoder.json (spokenlm bundle), "
            "config.json + model.safetensors (Hugging Face) or a fairseq .pt file"
        )
    else:
        raise FileNotFoundError(f"no wav2vec2 checkpoint at {path}")
    return encoder.eval()


_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _refuse_pickled_only(path: Path) -> None:
    """Raise if ``path`` has no safetensors weights; name the pickled file if there is one."""
    if (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file():
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLED_SUFFIXES)
    if pickled:
        raise ValueError(
            f"{path} holds only pickled weights ({pickled[0]}); spokenlm loads safetensors and "
            "never unpickles a model directory. Convert it once, where you trust the file: "
            "Wav2Vec2Model.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)"
        )
    raise ValueError(f"{path} has no model.safetensors")


def _load_bundle(path: Path, *, layer: LayerChoice | None, normalize_waveform: bool | None) -> Wav2Vec2Encoder:
    manifest = read_encoder_manifest(path, "wav2vec2")
    _refuse_pickled_only(path)
    config = Wav2Vec2EncoderConfig(
        backend=manifest["backend"],
        arch=manifest["arch"],
        layer=manifest["layer"] if layer is None else layer,
        normalize_waveform=manifest["normalize_waveform"] if normalize_waveform is None else normalize_waveform,
    )
    config.validate()
    if config.backend == "hf":
        from transformers import Wav2Vec2Config

        model = _hf_from_pretrained(path, Wav2Vec2Config(**config.arch))
        encoder = Wav2Vec2Encoder(config=config, backbone=_HFBackbone(model))
    else:
        from safetensors.torch import load_file

        encoder = build_wav2vec2_encoder(config)
        state = load_file(str(path / "model.safetensors"))
        _load_strict(encoder.backbone, state, source=str(path / "model.safetensors"))
    mix = path / "layer_weights.safetensors"
    if encoder.layer_logits is not None and mix.is_file():
        from safetensors.torch import load_file

        with torch.no_grad():
            encoder.layer_logits.copy_(load_file(str(mix))["layer_logits"])
    return encoder


def _load_hf_dir(path: Path, *, layer: LayerChoice | None, normalize_waveform: bool | None) -> Wav2Vec2Encoder:
    from transformers import Wav2Vec2Config

    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type != "wav2vec2":
        raise ValueError(f"{path}/config.json describes model_type {model_type!r}; expected 'wav2vec2'")
    _refuse_pickled_only(path)
    hf_config = Wav2Vec2Config.from_pretrained(path, local_files_only=True)
    if normalize_waveform is None:
        pre = path / "preprocessor_config.json"
        do_normalize = json.loads(pre.read_text()).get("do_normalize") if pre.is_file() else None
        # without a preprocessor config: what the checkpoint families were trained with
        default = hf_config.feat_extract_norm == "layer"
        normalize_waveform = default if do_normalize is None else bool(do_normalize)
    arch = {k: v for k, v in hf_config.to_diff_dict().items() if k not in _HF_META_KEYS}
    config = Wav2Vec2EncoderConfig(
        backend="hf", arch=arch, layer="last" if layer is None else layer, normalize_waveform=normalize_waveform
    )
    config.validate()
    return Wav2Vec2Encoder(config=config, backbone=_HFBackbone(_hf_from_pretrained(path, hf_config)))


def _hf_from_pretrained(path: Path, hf_config: Any) -> nn.Module:
    """transformers' loader (it knows every historic key spelling and strips a ForCTC/ForPreTraining
    ``wav2vec2.`` prefix), safetensors only, no remote code, and strict about missing weights."""
    from transformers import Wav2Vec2Model

    model, info = Wav2Vec2Model.from_pretrained(
        path, config=hf_config, use_safetensors=True, local_files_only=True, output_loading_info=True
    )
    # masked_spec_embed only serves SpecAugment in training; some checkpoints omit it
    missing = [k for k in info["missing_keys"] if k != "masked_spec_embed"]
    if missing or info["mismatched_keys"]:
        raise ValueError(
            f"{path} does not match its config.json: missing {missing[:5]}, "
            f"mismatched {[k for k, *_ in info['mismatched_keys']][:5]}"
        )
    return model


def _load_strict(module: nn.Module, state: dict[str, Tensor], *, source: str) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source} does not match the architecture: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


# ----------------------------------------------------------------------------------------------
# Original fairseq checkpoints


def _load_fairseq_checkpoint(
    path: Path, *, layer: LayerChoice | None, normalize_waveform: bool | None
) -> Wav2Vec2Encoder:
    ckpt = _torch_load_fairseq(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{path} is not a fairseq checkpoint: expected a dict with a 'model' state dict")
    state: dict[str, Tensor] = ckpt["model"]
    model_cfg, task_cfg = _fairseq_configs(ckpt, path)

    prefix = "w2v_encoder.w2v_model."  # CTC fine-tuned checkpoints wrap the pre-trained model
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        w2v_args = model_cfg.get("w2v_args")
        if not isinstance(w2v_args, dict):
            raise ValueError(
                f"{path} is a fine-tuned fairseq checkpoint without w2v_args (the pre-training config); "
                "its architecture cannot be read"
            )
        inner = w2v_args.get("model")  # hydra-era: {"model": ..., "task": ...}; argparse-era: flat
        model_cfg = inner if isinstance(inner, dict) else w2v_args

    name = model_cfg.get("_name") or model_cfg.get("arch") or "wav2vec2"
    if name != "wav2vec2":
        raise ValueError(f"{path} holds a fairseq {name!r} model, not wav2vec2")
    if normalize_waveform is None:
        normalize_waveform = bool(task_cfg.get("normalize", model_cfg.get("normalize", False)))

    config = Wav2Vec2EncoderConfig(
        backend="fairseq2",
        arch=_fairseq2_arch_from_fairseq(model_cfg, path),
        layer="last" if layer is None else layer,
        normalize_waveform=normalize_waveform,
    )
    encoder = build_wav2vec2_encoder(config)
    _load_strict(encoder.backbone, _convert_fairseq_state_dict(state, config.arch), source=str(path))
    return encoder


def _fairseq_configs(ckpt: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, task config) as plain dicts from a hydra-era ``cfg`` or an argparse ``args``."""
    cfg = _plain(ckpt.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        task = cfg.get("task")
        return cfg["model"], task if isinstance(task, dict) else {}
    args = _plain(ckpt.get("args"))
    if isinstance(args, dict):
        return args, args  # argparse-era checkpoints keep model and task options in one namespace
    raise ValueError(f"{path} carries no model config ('cfg' or 'args'), so its architecture is unknown")


def _fairseq2_arch_from_fairseq(m: dict[str, Any], path: Path) -> dict[str, Any]:
    """fairseq's Wav2Vec2Config fields (fairseq/models/wav2vec/wav2vec2.py, with its defaults) ->
    fairseq2's Wav2Vec2EncoderConfig fields."""

    def get(key: str, default: Any) -> Any:
        value = m.get(key)
        return default if value is None else value

    for key, supported in (("activation_fn", "gelu"), ("layer_type", "transformer")):
        if get(key, supported) != supported:
            raise ValueError(f"{path}: fairseq {key}={m[key]!r} is not supported (only {supported!r})")
    mode = get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"{path}: fairseq extractor_mode={mode!r} is not supported")
    descs = _parse_conv_feature_layers(
        get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]")
    )
    layer_norm_first = bool(get("layer_norm_first", False))
    grad_mult = float(get("feature_grad_mult", 1.0))
    return {
        "model_dim": int(get("encoder_embed_dim", 768)),
        "feature_dim": descs[-1][0],
        "feature_extractor_layer_descs": [list(d) for d in descs],
        "feature_extractor_bias": bool(get("conv_bias", False)),
        "feature_extractor_layer_norm_convs": mode == "layer_norm",
        # fairseq's 0 means "frozen conv stack"; fairseq2 wants (0, 1]; freezing is the caller's call
        "feature_grad_scale": grad_mult if 0.0 < grad_mult <= 1.0 else 1.0,
        "layer_norm_features": not layer_norm_first,  # post-LN models normalise after the pos conv
        "first_pass_dropout_p": float(get("dropout_input", 0.0)),
        "pos_encoder_depth": int(get("pos_conv_depth", 1)),
        "pos_conv_kernel_size": int(get("conv_pos", 128)),
        "num_pos_conv_groups": int(get("conv_pos_groups", 16)),
        "num_encoder_layers": int(get("encoder_layers", 12)),
        "num_encoder_attn_heads": int(get("encoder_attention_heads", 12)),
        "ffn_inner_dim": int(get("encoder_ffn_embed_dim", 3072)),
        "dropout_p": float(get("dropout", 0.1)),
        "attn_dropout_p": float(get("attention_dropout", 0.1)),
        "ffn_inner_dropout_p": float(get("activation_dropout", 0.0)),
        "layer_drop_p": float(get("encoder_layerdrop", 0.0)),
        "norm_order": "PRE" if layer_norm_first else "POST",
    }


def _parse_conv_feature_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's conv_feature_layers, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4", which fairseq
    eval()s; here only list/tuple literals of ints, + and * are understood."""
    error = f"conv_feature_layers must be list arithmetic over (dim, kernel, stride) tuples, got {spec!r}"

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            # list * small int only: a repeat count of 10**9 must not exhaust memory
            if isinstance(node.op, ast.Mult) and isinstance(left, list) and type(right) is int and 0 <= right <= 64:
                return left * right
        raise ValueError(error)

    try:
        tree = ast.parse(str(spec), mode="eval")
    except SyntaxError as err:
        raise ValueError(error) from err
    layers = ev(tree.body)
    if not isinstance(layers, list) or not layers or not all(
        isinstance(t, tuple) and len(t) == 3 and all(isinstance(x, int) for x in t) for t in layers
    ):
        raise ValueError(error)
    return layers


def _convert_fairseq_state_dict(state: dict[str, Tensor], arch: dict[str, Any]) -> dict[str, Tensor]:
    """fairseq wav2vec2 keys -> our fairseq2 backbone's keys, by fairseq2's own converter
    (``convert_wav2vec2_state_dict``), with two gaps of fairseq2 0.8.1 filled:

    - it recognises a fairseq checkpoint by a ``mask_emb.weight`` key, but fairseq names that
      parameter ``mask_emb``; we add the marker so its key map runs, then drop what it maps to;
    - its key map only covers stacked position convs (``encoder.pos_conv.N.0.*``, pos_conv_depth > 1),
      not the single weight-normed conv of BASE/LARGE (``encoder.pos_conv.0.weight_g/_v``, ``bias``).
    Pre-training heads (quantizer, project_q, final_proj, mask embedding) are dropped.
    """
    from fairseq2.models.wav2vec2 import Wav2Vec2Config, convert_wav2vec2_state_dict

    state = dict(state)
    marker = "mask_emb.weight"
    added_marker = marker not in state
    if added_marker:
        state[marker] = state.get("mask_emb", torch.zeros(()))
    try:
        converted = convert_wav2vec2_state_dict(
            {"model": state}, Wav2Vec2Config(encoder_config=_fairseq2_encoder_config(arch))
        )
    except KeyError as err:
        raise ValueError(f"fairseq checkpoint lacks {err.args[0]!r}, which its config requires") from err

    out: dict[str, Tensor] = {}
    for key, value in converted.items():
        key = re.sub(r"^encoder\.pos_conv\.0\.", "encoder_frontend.pos_encoder.conv.", key)
        # newer torch spells weight norm as a parametrization; fairseq2 uses the weight_g/_v form
        key = key.replace("conv.parametrizations.weight.original0", "conv.weight_g")
        key = key.replace("conv.parametrizations.weight.original1", "conv.weight_v")
        if key.startswith(("encoder_frontend.", "encoder.")):
            out[key] = value
    return out


# Unpickling fairseq checkpoints. Weights load with torch.load(weights_only=True). fairseq also
# pickles its config (argparse.Namespace, or omegaconf DictConfig in hydra-era checkpoints) and
# training state (meters, numpy scalars) next to them. argparse.Namespace and plain builtin
# containers are allowlisted as themselves; classes from the modules below are replaced by an inert
# stand-in that records what pickle hands it and runs nothing; any other global is refused.
_STAND_IN_MODULES = ("omegaconf", "fairseq", "typing", "numpy")
_HARMLESS_BUILTINS = (dict, list, tuple, frozenset, int, float, str, bool, bytes)


class _StandIn:
    """Takes the place of a class we will not import while unpickling; keeps its args and state."""

    qualname = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


def _torch_load_fairseq(path: Path) -> Any:
    names: set[str] = set()
    if zipfile.is_zipfile(path):
        names |= set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    for _ in range(100):  # legacy (pre-zip) files reveal one unknown global per attempt
        allowed: list[Any] = [argparse.Namespace, *_HARMLESS_BUILTINS]
        for name in sorted(names - {f"{t.__module__}.{t.__qualname__}" for t in allowed}):
            if name.split(".")[0] not in _STAND_IN_MODULES:
                raise ValueError(
                    f"{path} pickles {name!r}, which spokenlm will not unpickle (weights load with "
                    "torch.load(weights_only=True)). Re-save it where you trust the file: "
                    "torch.save({'model': ckpt['model'], 'cfg': {'model': <model config as a plain dict>}}, OUT)"
                )
            allowed.append((type(name.rsplit(".", 1)[-1], (_StandIn,), {"qualname": name}), name))
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            match = re.search(r"Unsupported global: GLOBAL (\S+) was not an allowed global", str(err))
            if match is None:
                raise ValueError(f"{path} cannot be loaded safely: {str(err).splitlines()[0]}") from err
            name = match.group(1)
            name = name if "." in name else f"builtins.{name}"  # torch reports builtins bare
            if name in names:
                raise ValueError(f"{path} cannot be loaded safely: {str(err).splitlines()[0]}") from err
            names.add(name)
    raise ValueError(f"{path} pickles too many distinct classes to load safely")


def _plain(obj: Any, depth: int = 0) -> Any:
    """Config objects out of a checkpoint -> plain dicts, lists and scalars."""
    if depth > 50:
        raise ValueError("fairseq config nests deeper than 50 levels")
    if isinstance(obj, _StandIn):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:  # omegaconf DictConfig / ListConfig
            return _plain(state["_content"], depth + 1)
        if "_val" in state:  # omegaconf value node
            return _plain(state["_val"], depth + 1)
        if obj.state is None and len(obj.args) == 1:  # an enum member, rebuilt as Enum(value)
            return _plain(obj.args[0], depth + 1)
        return None  # training state we do not need
    if isinstance(obj, argparse.Namespace):
        return _plain(vars(obj), depth + 1)
    if isinstance(obj, dict):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    return obj
