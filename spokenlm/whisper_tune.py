"""Whisper's decoder fine-tuned with LoRA in torch, then read by CTranslate2 as the transcriber's.

The transcriber (spokenlm.transcriber) reads every chunk with the Whisper base's own decoder and
weighs that reading against the CTC head's. Whisper tiny.en was trained on real speech; the corpus's
synthetic voices (and the held-out ones of our test split) are what it misreads. The `whisper_tune`
recipe trains a LoRA on its decoder's linear layers (self- and cross-attention projections, the
feed-forward) over what the decoder sees in the transcriber (`WhisperTranscriber.decoder_examples`);
the encoder stays frozen, so the windows are encoded once.

A bundle carries only the LoRA, in peft's own files (adapter_config.json, adapter_model.safetensors;
peft wrote them in training). CTranslate2 decodes, so at load the LoRA's product B·A (times
alpha / r) is added to the base's decoder weights and a copy of the base's model.bin with those
weights is written once to the cache (`tuned_whisper_dir`); CTranslate2 quantizes it at load as it
quantizes the base.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
_PEFT_KEY = re.compile(r"^base_model\.model\.(model\.decoder\.layers\.\d+\.(?:(?:self_attn|encoder_attn)\.\w+|fc1|fc2))\.lora_([AB])\.weight$")


class WhisperTuneError(ValueError):
    """A decoder LoRA that cannot be read or applied; the message names the file and the problem."""


def load_whisper_for_tuning(path: str | Path) -> nn.Module:
    """transformers' WhisperForConditionalGeneration (float32, eval, output projection tied to the
    token embeddings) with the weights of a CTranslate2 or Hugging Face Whisper directory."""
    from transformers import WhisperForConditionalGeneration

    from spokenlm.encoders.whisper import _hf_config, _load_strict, _read_whisper_dir

    arch, state = _read_whisper_dir(Path(path))
    config = _hf_config(arch)
    config.tie_word_embeddings = True
    config.pad_token_id = None  # WhisperConfig's default (50256) is no id of a smaller vocabulary; the embeddings stay frozen
    model = WhisperForConditionalGeneration(config)
    state = {k: v.float() for k, v in state.items() if k != "proj_out.weight"}
    _load_strict(model.model, {k.removeprefix("model."): v for k, v in state.items()}, str(path))
    model.tie_weights()
    return model.eval()


def lora_target_pattern(targets: Sequence[str]) -> str:
    """peft's `target_modules` regex: the named linear layers of the decoder's layers only."""
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if not targets or unknown:
        raise WhisperTuneError(f"decoder LoRA targets must be among {', '.join(LORA_TARGETS)}; got {list(targets)!r}")
    attention = [t for t in targets if t in _ATTENTION]
    ffn = [t for t in targets if t not in _ATTENTION]
    parts = []
    if attention:
        parts.append(rf"model\.decoder\.layers\.\d+\.(self_attn|encoder_attn)\.({'|'.join(attention)})")
    if ffn:
        parts.append(rf"model\.decoder\.layers\.\d+\.({'|'.join(ffn)})")
    return "|".join(parts)


def add_decoder_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float, targets: Sequence[str]) -> nn.Module:
    """The model wrapped by peft, with LoRA on the decoder's `targets`; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_target_pattern(targets), bias="none")
    return get_peft_model(model, config)


def decoder_loss(model: nn.Module, frames: Tensor, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                 pad_id: int) -> Tensor:  # fmt: skip
    """Mean cross-entropy of the `targets` tokens given their `prompts` and the encoder `frames`
    (B, F, width) every example attends (the same F: a batch is cut from one window's chunks). The
    prompt's own tokens are not scored; shorter rows are padded at the end (the decoder is causal)."""
    rows, labels = [], []
    for prompt, target in zip(prompts, targets):
        tokens = [*prompt, *target]
        rows.append(tokens[:-1])
        labels.append([-100] * (len(prompt) - 1) + list(target))
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    gold = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model.decoder(input_ids=ids, encoder_hidden_states=frames).last_hidden_state
    logits = base.proj_out(hidden)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), gold.reshape(-1), ignore_index=-100)


# ----------------------------------------------------------------------------------------------
# The LoRA, read back and merged


def read_decoder_lora(path: str | Path) -> dict[str, Tensor]:
    """The weight change of each decoder linear layer a LoRA dir (peft's files) trains, under
    transformers' names (``model.decoder.layers.0.self_attn.q_proj.weight``): scale * B @ A, with
    scale alpha / r (alpha / sqrt(r) with rsLoRA). Only safetensors are read."""
    from safetensors.torch import load_file

    path = Path(path)
    config_file, weights_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    for file in (config_file, weights_file):
        if not file.is_file():
            raise WhisperTuneError(f"{path} is not a decoder LoRA: no {file.name}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise WhisperTuneError(f"{config_file} is not valid JSON: {e}") from e
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not (isinstance(rank, int) and rank > 0 and isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise WhisperTuneError(f"{config_file}: r must be a positive int and lora_alpha a number, got {rank!r}, {alpha!r}")
    for key in ("use_dora", "modules_to_save", "lora_bias"):
        if config.get(key):
            raise WhisperTuneError(f"{config_file}: {key} is set; only plain LoRA (B·A added to a weight) can be merged here")
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    try:
        tensors = load_file(str(weights_file))
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise WhisperTuneError(f"{weights_file} is not a readable safetensors file: {e}") from None
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise WhisperTuneError(f"{weights_file}: {key} is not a LoRA weight of a Whisper decoder layer")
        pairs.setdefault(match.group(1), {})[match.group(2)] = value
    deltas = {}
    for name, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise WhisperTuneError(f"{weights_file}: {name} has lora_{'A' if 'A' in pair else 'B'} but not its pair")
        a, b = pair["A"].float(), pair["B"].float()
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise WhisperTuneError(f"{weights_file}: {name} has LoRA shapes {tuple(a.shape)} / {tuple(b.shape)}, not rank {rank}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise WhisperTuneError(f"{weights_file}: {name} holds NaN or infinite values")
        deltas[f"{name}.weight"] = scale * (b @ a)
    if not deltas:
        raise WhisperTuneError(f"{weights_file} holds no LoRA weights")
    return deltas


def _ct2_place(name: str) -> tuple[str, int, int]:
    """Where a decoder weight of transformers' Whisper lives in CTranslate2's WhisperSpec: (variable,
    part, parts): CTranslate2 fuses self-attention q|k|v into one matrix and cross-attention k|v."""
    match = re.fullmatch(r"model\.decoder\.layers\.(\d+)\.(self_attn|encoder_attn)\.(\w+)\.weight|model\.decoder\.layers\.(\d+)\.(fc1|fc2)\.weight", name)
    if match is None:
        raise WhisperTuneError(f"{name} is not a decoder linear layer of Whisper")
    if match.group(5):
        return f"decoder/layer_{match.group(4)}/ffn/linear_{'0' if match.group(5) == 'fc1' else '1'}/weight", 0, 1
    layer, block, proj = match.group(1), match.group(2), match.group(3)
    src = f"decoder/layer_{layer}/{'self_attention' if block == 'self_attn' else 'attention'}"
    if block == "self_attn":
        places = {"q_proj": ("linear_0", 0, 3), "k_proj": ("linear_0", 1, 3), "v_proj": ("linear_0", 2, 3), "out_proj": ("linear_1", 0, 1)}
    else:
        places = {"q_proj": ("linear_0", 0, 1), "k_proj": ("linear_1", 0, 2), "v_proj": ("linear_1", 1, 2), "out_proj": ("linear_2", 0, 1)}
    if proj not in places:
        raise WhisperTuneError(f"{name} is not a decoder linear layer of Whisper")
    variable, part, parts = places[proj]
    return f"{src}/{variable}/weight", part, parts


def ctranslate2_updates(deltas: dict[str, Tensor], variables: dict[str, Tensor]) -> dict[str, Tensor]:
    """New values of the CTranslate2 variables the `deltas` (transformers' names) change: each base
    variable (float) plus its deltas, in its rows of a fused matrix."""
    updates: dict[str, Tensor] = {}
    for name, delta in deltas.items():
        variable, part, parts = _ct2_place(name)
        if variable not in variables:
            raise WhisperTuneError(f"the base has no {variable} for {name}: a LoRA for another Whisper size?")
        base = updates.get(variable, variables[variable].float())
        rows = base.shape[0] // parts
        if base.shape[0] % parts or delta.shape != (rows, base.shape[1]):
            raise WhisperTuneError(f"{name}: a LoRA change of shape {tuple(delta.shape)} does not fit {variable} {tuple(base.shape)}")
        base = base.clone()
        base[part * rows : (part + 1) * rows] += delta
        updates[variable] = base
    return updates


def lora_fingerprint(path: str | Path) -> str:
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        digest.update((Path(path) / name).read_bytes())
    return digest.hexdigest()


def tuned_whisper_dir(base: str | Path, lora: str | Path, *, cache: str | Path | None = None) -> Path:
    """A CTranslate2 Whisper directory: the `base`'s files with its decoder weights changed by the
    LoRA at `lora`, written once under `cache` (default spokenlm's cache dir, whisper-tuned/) and named by
    the base's model.bin and the LoRA's bytes, so a changed LoRA or base gets its own copy."""
    from spokenlm.bases import cache_dir
    from spokenlm.encoders.whisper import read_ctranslate2_model, write_ctranslate2_model

    base, lora = Path(base), Path(lora)
    deltas = read_decoder_lora(lora)
    digest = hashlib.sha256(lora_fingerprint(lora).encode())
    with (base / "model.bin").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    root = Path(cache) if cache is not None else cache_dir() / "whisper-tuned"
    out = root / digest.hexdigest()[:24]
    if (out / "model.bin").is_file():
        return out
    updates = ctranslate2_updates(deltas, read_ctranslate2_model(base).variables)
    tmp = root / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file in base.iterdir():
        if file.is_file() and file.name != "model.bin":
            shutil.copy2(file, tmp / file.name)
    write_ctranslate2_model(base, tmp / "model.bin", updates)
    if out.exists() and not (out / "model.bin").is_file():
        shutil.rmtree(out, ignore_errors=True)  # a copy someone emptied: write it again
    try:
        os.replace(tmp, out)
    except OSError:  # another process (a Serve replica) wrote the same copy first: use that one
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "model.bin").is_file():
            raise
    return out
