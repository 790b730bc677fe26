"""Sylber checkpoints: our encoder directories (``save_sylber_encoder`` / ``load_sylber_encoder``), and
the authors' released checkpoint (transformers ``HubertModel`` names, 9 layers), whose names
``official_state_dict_to_ours`` maps and whose architecture ``config_from_state_dict`` reads.

Not here: the network (``encoder.py``) and the objective (``objective.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from spokenlm.encoders.base import ENCODER_FORMAT_VERSION, read_encoder_manifest
from spokenlm.encoders.sylber.encoder import (
    HUBERT_CONV_LAYERS,
    SylberEncoder,
    SylberEncoderConfig,
    build_sylber_encoder,
    sylber_base,
)


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
