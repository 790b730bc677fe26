"""DinoSR checkpoints: our encoder directories (``save_dinosr_encoder`` / ``load_dinosr_encoder``) and
the authors' fairseq checkpoints (``load_fairseq_dinosr``, ``convert_fairseq_dinosr_state_dict``: key
renaming onto ``DinoSRPretrainer``'s names, the architecture read from the checkpoint's own config).

Not here: the network (``encoder.py``) and the objective (``objective.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spokenlm.encoders.base import ENCODER_FORMAT_VERSION, read_encoder_manifest
from spokenlm.encoders.dinosr.encoder import (
    DinoSREncoder,
    DinoSREncoderConfig,
    LayerChoice,
    build_dinosr_encoder,
    dinosr_base,
)
from spokenlm.encoders.dinosr.objective import DinoSRPretrainer, build_dinosr_pretrainer


# ----------------------------------------------------------------------------------------------
# Our encoder directories


def save_dinosr_encoder(encoder: DinoSREncoder, path: str | Path) -> None:
    """Write the student as a bundle directory:

    DIR/encoder.json        {"kind": "dinosr", "format_version": 1, "config": {...}}; written last
    DIR/model.safetensors   the student's state dict (our names), layer_logits included
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    manifest = {"kind": "dinosr", "format_version": ENCODER_FORMAT_VERSION, "config": encoder.config.to_dict()}
    (path / "encoder.json").write_text(json.dumps(manifest, indent=2) + "\n")


def load_dinosr_encoder(
    path: str | Path, *, layer: LayerChoice | None = None, config: DinoSREncoderConfig | None = None
) -> DinoSREncoder:
    """Load the student, in eval mode, from

    - a bundle written by ``save_dinosr_encoder`` (a directory with ``encoder.json``);
    - the authors' fairseq checkpoint (``.pt``: pre-trained, or fine-tuned with the
      ``w2v_encoder.w2v_model.`` prefix), its config read from the checkpoint;
    - a ``.safetensors`` file holding such a checkpoint's state dict (fairseq names), whose config
      is ``config`` (default ``dinosr_base()``).

    ``layer`` overrides the saved layer choice. Pre-training parts (teacher, heads, codebooks, mask
    embedding) are dropped; ``load_fairseq_dinosr`` keeps them.
    """
    path = Path(path)
    if path.is_dir():
        encoder = _load_bundle(path)
        if layer is not None:
            encoder = _with_layer(encoder, layer)
    elif path.is_file():
        state, config = _read_fairseq(path, config, encoder_only=True)
        if layer is not None:
            config = replace(config, layer=layer)
        encoder = build_dinosr_encoder(config)
        converted = convert_fairseq_dinosr_state_dict(state, config, encoder_only=True)
        _load_checked(encoder, {k.removeprefix("student."): v for k, v in converted.items()}, source=str(path))
    else:
        raise FileNotFoundError(f"no DinoSR checkpoint at {path}")
    return encoder.eval()


def _load_bundle(path: Path) -> DinoSREncoder:
    manifest = read_encoder_manifest(path, "dinosr")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{path} has no model.safetensors")
    from safetensors.torch import load_file

    encoder = build_dinosr_encoder(DinoSREncoderConfig.from_dict(manifest["config"]))
    _load_checked(encoder, load_file(str(weights)), source=str(weights))
    return encoder


def _with_layer(encoder: DinoSREncoder, layer: LayerChoice) -> DinoSREncoder:
    """The same weights under another layer choice (a fresh, uniform mix when switching to "weighted")."""
    out = build_dinosr_encoder(replace(encoder.config, layer=layer))
    state = {k: v for k, v in encoder.state_dict().items() if k != "layer_logits"}
    out.load_state_dict(state, strict=False)  # same architecture; only layer_logits can differ
    if out.layer_logits is not None and encoder.layer_logits is not None:
        with torch.no_grad():
            out.layer_logits.copy_(encoder.layer_logits)
    return out


def _load_checked(module: nn.Module, state: dict[str, Tensor], *, source: str, optional: tuple[str, ...] = ()) -> None:
    """Strict load with named errors: every module key present (but ``optional`` prefixes), none extra,
    every shape right."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(optional) and k != "layer_logits"]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)}, the config expects {tuple(own[key].shape)}"
            )
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


# ----------------------------------------------------------------------------------------------
# The authors' fairseq checkpoints

_FINETUNED_PREFIX = "w2v_encoder.w2v_model."  # fairseq's wav2vec2_asr wraps the pre-trained model
# fairseq name -> ours, for the student (relative to DinoSRPretrainer) and the teacher (``_ema`` dict)
_STUDENT_KEY_MAP = (
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"student.feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.", r"student.feature_extractor.conv_layers.\1.norm."),
    (r"^layer_norm\.", r"student.layer_norm."),
    (r"^post_extract_proj\.", r"student.post_extract_proj."),
    (r"^encoder\.pos_conv\.(\d+)\.0\.", r"student.encoder.pos_conv.\1.conv."),
    (r"^encoder\.", r"student.encoder."),
)
_TEACHER_KEY_MAP = (
    (r"^pos_conv\.(\d+)\.0\.", r"teacher.pos_conv.\1.conv."),
    (r"^", r"teacher."),
)
# saved only after the authors' optional teacher freeze (frozen pre-encoder copies); not used here
_IGNORED_KEYS = ("_pre_encoder_cnn", "_pre_encoder_ln", "_pre_encoder_proj")


def convert_fairseq_dinosr_state_dict(
    state: dict[str, Any], config: DinoSREncoderConfig, *, encoder_only: bool = False
) -> dict[str, Tensor]:
    """The authors' ``DinosrModel.state_dict()`` -> ``DinoSRPretrainer``'s state-dict names:

    feature_extractor.conv_layers.N.0.*  -> student.feature_extractor.conv_layers.N.conv.*
    feature_extractor.conv_layers.N.2.1.*-> student.feature_extractor.conv_layers.N.norm.*
    layer_norm.*, post_extract_proj.*    -> student.layer_norm.*, student.post_extract_proj.*
    encoder.pos_conv.N.0.*               -> student.encoder.pos_conv.N.conv.*
    encoder.*                            -> student.encoder.* (layers.N.self_attn.k_proj, fc1, ...)
    _ema (dict, or flat "_ema.<name>")   -> teacher.<name> (pos_conv.N.0 -> pos_conv.N.conv)
    mask_emb, heads.K.*                  -> mask_emb, heads.K.*
    _codebook{K} (V, D), _codebook_cnts{K} (V,) -> codebook_sums[K], codebook_counts[K]

    Without ``_ema`` the teacher is left out (callers start it from the student, as fairseq does).
    ``encoder_only`` keeps the student's keys and drops the pre-training parts. Unknown keys raise.
    """
    state = dict(state)
    if any(k.startswith(_FINETUNED_PREFIX) for k in state):
        if not encoder_only:
            raise ValueError("a fine-tuned DinoSR checkpoint has no teacher, heads or codebooks to pre-train with")
        state = {k[len(_FINETUNED_PREFIX) :]: v for k, v in state.items() if k.startswith(_FINETUNED_PREFIX)}
    if "final_proj.weight" in state and not any(k.startswith("heads.") for k in state):
        raise ValueError("this is a continuous-target (data2vec-style) checkpoint with final_proj, not discrete DinoSR")

    ema = state.pop("_ema", None)
    teacher_state: dict[str, Any] = dict(ema) if isinstance(ema, dict) else {}
    for key in [k for k in state if k.startswith("_ema.")]:
        teacher_state[key[len("_ema.") :]] = state.pop(key)

    out: dict[str, Tensor] = {}
    sums: dict[int, Tensor] = {}
    counts: dict[int, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(_IGNORED_KEYS):
            continue
        match = re.fullmatch(r"_codebook(_cnts)?(\d+)", key)
        if match:
            (counts if match.group(1) else sums)[int(match.group(2))] = value
        elif key == "mask_emb" or key.startswith("heads."):
            out[key] = value
        elif key.startswith(("feature_extractor.", "layer_norm.", "post_extract_proj.", "encoder.")):
            out[_rename(key, _STUDENT_KEY_MAP)] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in the DinoSR checkpoint: {unknown[:5]}")
    for key, value in teacher_state.items():
        out[_rename(key, _TEACHER_KEY_MAP)] = value

    if encoder_only:
        return {k: v for k, v in out.items() if k.startswith("student.")}
    K = config.num_codebooks
    if sorted(sums) != list(range(K)) or sorted(counts) != list(range(K)):
        raise ValueError(
            f"expected codebooks _codebook0.._codebook{K - 1} and _codebook_cnts0.._codebook_cnts{K - 1} "
            f"(num_codebooks={K}), got sums {sorted(sums)} and counts {sorted(counts)}"
        )
    out["codebook_sums"] = torch.stack([sums[k] for k in range(K)])  # (K, V, D)
    out["codebook_counts"] = torch.stack([counts[k] for k in range(K)])  # (K, V)
    return out


def _rename(key: str, key_map: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in key_map:
        new, n = re.subn(pattern, replacement, key, count=1)
        if n:
            return new
    return key


def load_fairseq_dinosr(path: str | Path, *, config: DinoSREncoderConfig | None = None) -> DinoSRPretrainer:
    """The authors' pre-training checkpoint as a ``DinoSRPretrainer`` (student, teacher from ``_ema``
    (the student's copy where absent), heads, codebooks, mask embedding), to continue pre-training or
    to inspect targets. ``.pt`` files carry their config; a ``.safetensors`` file of the same state dict
    (teacher flattened to ``_ema.<name>``) uses ``config`` (default ``dinosr_base()``). In training mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no DinoSR checkpoint at {path}")
    state, config = _read_fairseq(path, config, encoder_only=False)
    pretrainer = build_dinosr_pretrainer(config)
    converted = convert_fairseq_dinosr_state_dict(state, config)
    has_teacher = any(k.startswith("teacher.") for k in converted)
    _load_checked(pretrainer, converted, source=str(path), optional=() if has_teacher else ("teacher.",))
    if not has_teacher:
        pretrainer.teacher.load_state_dict(pretrainer.student.encoder.state_dict())
    return pretrainer


def _read_fairseq(
    path: Path, config: DinoSREncoderConfig | None, *, encoder_only: bool
) -> tuple[dict[str, Any], DinoSREncoderConfig]:
    """(fairseq state dict, our config) from a .pt checkpoint (config from its cfg unless given) or a
    .safetensors state dict (config given, else ``dinosr_base()``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), config or dinosr_base()

    from spokenlm.encoders.wav2vec2 import _fairseq_configs, _torch_load_fairseq

    ckpt = _torch_load_fairseq(path)  # torch.load(weights_only=True); configs as inert stand-ins
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{path} is not a fairseq checkpoint: expected a dict with a 'model' state dict")
    state: dict[str, Any] = ckpt["model"]
    if config is None:
        model_cfg, task_cfg = _fairseq_configs(ckpt, path)
        if any(k.startswith(_FINETUNED_PREFIX) for k in state):
            w2v_args = model_cfg.get("w2v_args")
            if not isinstance(w2v_args, dict) or not isinstance(w2v_args.get("model"), dict):
                raise ValueError(f"{path} is a fine-tuned checkpoint without w2v_args (the pre-training config)")
            model_cfg = w2v_args["model"]
            task_cfg = w2v_args.get("task") if isinstance(w2v_args.get("task"), dict) else {}
        config = _config_from_fairseq(model_cfg, task_cfg, path, encoder_only=encoder_only)
    return state, config


def _config_from_fairseq(
    m: dict[str, Any], task: dict[str, Any], path: Path, *, encoder_only: bool
) -> DinoSREncoderConfig:
    """The authors' DinosrAudioConfig (a fairseq Wav2Vec2Config plus DinoSR fields; missing keys take
    fairseq's defaults) -> ours."""
    from spokenlm.encoders.wav2vec2 import _parse_conv_feature_layers

    def get(key: str, default: Any) -> Any:
        value = m.get(key)
        return default if value is None else value

    name = get("_name", "dinosr")
    if name != "dinosr":
        raise ValueError(f"{path} holds a fairseq {name!r} model, not dinosr")
    if not encoder_only and not get("discrete", False):
        raise ValueError(f"{path} was trained with discrete=False (data2vec-style regression), not DinoSR")
    checks = (
        ("extractor_mode", "default", "layer_norm"),
        ("layer_norm_first", False, False),
        ("activation_fn", "gelu", "gelu"),
        ("layer_type", "transformer", "transformer"),
    )
    for key, default, supported in checks:
        if get(key, default) != supported:
            raise ValueError(f"{path}: fairseq {key}={get(key, default)!r} is not supported (only {supported!r})")
    depth = int(get("pos_conv_depth", 1))
    if depth < 2:
        raise ValueError(
            f"{path}: pos_conv_depth={depth} (a single weight-normed conv) is not supported; DinoSR uses 5"
        )
    default_convs = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    convs = _parse_conv_feature_layers(get("conv_feature_layers", default_convs))
    config = DinoSREncoderConfig(
        frontend="waveform",
        conv_feature_layers=tuple(tuple(c) for c in convs),
        conv_bias=bool(get("conv_bias", False)),
        normalize_waveform=bool(task.get("normalize", m.get("normalize", False))),
        model_dim=int(get("encoder_embed_dim", 768)),
        num_layers=int(get("encoder_layers", 12)),
        num_heads=int(get("encoder_attention_heads", 12)),
        ffn_dim=int(get("encoder_ffn_embed_dim", 3072)),
        pos_conv_kernel=max(3, int(get("conv_pos", 128)) // depth),
        pos_conv_depth=depth,
        pos_conv_groups=int(get("conv_pos_groups", 16)),
        dropout=float(get("dropout", 0.1)),
        attention_dropout=float(get("attention_dropout", 0.1)),
        activation_dropout=float(get("activation_dropout", 0.0)),
        layer_drop=float(get("encoder_layerdrop", 0.0)),
        num_codebooks=int(get("average_top_k_layers", 8)),
        codebook_size=int(get("codebook_size", 256)),
        codebook_decay=float(get("codebook_init_decay", 0.9)),
        ema_decay=float(get("ema_decay", 0.999)),
        ema_end_decay=float(get("ema_end_decay", 0.9999)),
        ema_anneal_steps=int(get("ema_anneal_end_step", 30_000)),
        mask_prob=float(get("mask_prob", 0.65)),
        mask_length=int(get("mask_length", 10)),
    )
    config.validate()
    return config
