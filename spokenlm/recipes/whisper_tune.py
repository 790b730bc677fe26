"""Recipe `whisper_tune`: a LoRA on the Whisper base's decoder, so the transcriber reads our voices.

    spokenlm train whisper-tune --config configs/whisper_tune.yaml
    # then the transcriber recipe with transcriber.decoder_lora: OUT/lora re-picks its rule

1. Read the train and dev utterances of each manifest (dev: the first `dev_utterances` in id-hash
   order) as the transcriber reads them (`WhisperTranscriber.decoder_examples`: the same packed
   windows, bf16 encoder and attended frames) and keep, per chunk, the frames, the decoder's prompt
   and the target tokens (the reference text in Whisper's style, then its end timestamps). They go
   to OUT/examples/<split>/shard-N.safetensors as they are made, named by the settings and
   utterances that made them: a rerun reads what is there.
2. Train LoRA (peft) on the decoder's linear layers, the rest frozen: teacher-forced cross-entropy of
   the targets, one window's chunks per batch (they attend to the same number of frames),
   `windows_per_step` windows per step. Every `eval_every` steps the dev loss; the best LoRA so far
   is written to OUT/lora (peft's files: what `TranscriberConfig.decoder_lora` reads). Resumable:
   checkpoints of the LoRA and optimiser in OUT/checkpoints.
3. Greedy readings of the dev chunks in torch, by the base decoder and by the tuned one, cut at the
   first timestamp as the transcriber cuts a packed reading: their WER per manifest in metrics.json
   (with loss.png and metrics.jsonl). The transcriber's joint rule is re-picked by its own recipe.

One process (no worker split): the decoder is 4 layers of width 384, the encoder is not run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from spokenlm.train.loop import OptimConfig
from spokenlm.transcriber import TIME_STEP_S, WINDOW_S, TranscriberConfig, reading_text, transcriber_config_to_json
from spokenlm.whisper_tune import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORA_TARGETS

LORA_DIR = "lora"


@dataclass(frozen=True, kw_only=True)
class WhisperTuneConfig:
    out_dir: str
    manifest: str | tuple[str, ...]
    transcriber: TranscriberConfig = TranscriberConfig()
    """How the bundle's transcriber reads chunks (pack_s, pack_gap_s, attend_margin_s, bf16_encoder):
    the examples are read the same way. Its rule (ctc_weight, ...) plays no part here."""

    train_split: str = "fine-tune"
    dev_split: str = "dev"
    train_utterances: int = 0  # per manifest, the first in id-hash order; 0: all
    dev_utterances: int = 150  # per manifest
    max_duration_s: float = 30.0
    utterances_per_shard: int = 256
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = LORA_TARGETS
    alone_utterances: int = 0
    """Per manifest, the first this many train utterances (and every dev one) are also read alone,
    one chunk in its window, as a single request is (`pack_s` packs only a batch's chunks); their
    dev WER is reported apart ("<manifest> (alone)"). 0: packed only."""
    windows_per_step: int = 2
    mask_time_prob: float = 0.0
    """SpecAugment-style masks on the encoder frames the decoder attends (training only; as the ctc
    recipe's `mask_frames`): the share of frames time spans cover; 0 = off."""
    mask_time_length: int = 10  # frames per time span (200 ms at 50 Hz)
    mask_channel_prob: float = 0.0  # likewise over the width's channels of every frame; 0 = off
    mask_channel_length: int = 16
    eval_every: int = 250
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=100, max_steps=3000))
    seed: int = 0

    def validate(self) -> None:
        from spokenlm.whisper_tune import lora_target_pattern

        self.transcriber.validate()
        self.optim.validate()
        lora_target_pattern(self.lora_targets)
        if self.train_split == self.dev_split:
            raise ValueError(f"train and dev splits must differ, got {self.train_split!r} twice")
        for name in ("train_utterances", "alone_utterances", "dev_utterances", "utterances_per_shard", "lora_rank", "windows_per_step", "eval_every"):
            value = getattr(self, name)
            low = 0 if name in ("train_utterances", "alone_utterances") else 1
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not (isinstance(self.lora_alpha, (int, float)) and math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        for name in ("mask_time_prob", "mask_channel_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("mask_time_length", "mask_channel_length"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not 1.0 <= self.max_duration_s <= 30.0:
            raise ValueError(f"max_duration_s must be within [1, 30] (a transcriber reads 30-s chunks), got {self.max_duration_s}")


# ----------------------------------------------------------------------------------------------
# Examples, cached in shards


def _reading_settings(config: TranscriberConfig) -> dict:
    """What decides the examples: how chunks are windowed, encoded and attended (not the rule)."""
    keep = ("base", "path", "pack_s", "pack_gap_s", "bf16_encoder", "attend_margin_s")
    return {k: v for k, v in transcriber_config_to_json(config).items() if k in keep}


def _shard_key(settings: dict, ids: list[str]) -> str:
    return hashlib.sha256(json.dumps([settings, ids]).encode()).hexdigest()[:16]


def build_examples(config: WhisperTuneConfig, name: str, utts_by_manifest: dict[str, list], transcriber,
                   label: str = "{}") -> list[Path]:  # fmt: skip
    """OUT/examples/<name>/shard-N.safetensors for these utterances as `transcriber` reads them,
    made where missing or stale; each shard names its manifest as `label` formats it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from spokenlm.train.data import AudioCache

    root = Path(config.out_dir) / "examples" / name
    root.mkdir(parents=True, exist_ok=True)
    settings = _reading_settings(transcriber.config)
    audio = AudioCache()
    shards, n = [], 0
    for manifest, utts in utts_by_manifest.items():
        step = config.utterances_per_shard
        for first in range(0, len(utts), step):
            group = utts[first : first + step]
            path = root / f"shard-{n:05d}.safetensors"
            n += 1
            key = _shard_key(settings, [u.id for u in group])
            if path.is_file():
                with safe_open(str(path), "pt") as f:
                    if (f.metadata() or {}).get("key") == key:
                        shards.append(path)
                        continue
            waves = [audio.get(u) for u in group]
            texts = [u.labels.get("raw_text") or u.labels["text"] for u in group]
            with torch.inference_mode():
                examples = transcriber.decoder_examples(waves, texts)
            for u in group:
                audio.drop(u)
            tensors = {f"frames_{i}": torch.from_numpy(e.frames) for i, e in enumerate(examples)}
            meta = {"key": key, "manifest": label.format(manifest), "prompts": json.dumps([e.prompt for e in examples]),
                    "targets": json.dumps([e.target for e in examples])}  # fmt: skip
            tmp = path.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata=meta)
            tmp.replace(path)
            shards.append(path)
            print(f"whisper-tune: {name} shard {n} ({len(examples)} chunks, {path.stat().st_size / 1e6:.0f} MB)", flush=True)
    return shards


@dataclass(frozen=True)
class _Group:
    """Consecutive chunks of one shard that attend to the same number of frames: one batch."""

    shard: int
    members: tuple[int, ...]


class ExampleStore:
    """The shards' examples, frames read on demand (memory-mapped)."""

    def __init__(self, shards: list[Path]) -> None:
        from safetensors import safe_open

        self.files = [safe_open(str(p), "pt") for p in shards]
        self.meta = []
        self.groups: list[_Group] = []
        for s, f in enumerate(self.files):
            meta = f.metadata()
            prompts, targets = json.loads(meta["prompts"]), json.loads(meta["targets"])
            widths = [f.get_slice(f"frames_{i}").get_shape()[0] for i in range(len(prompts))]
            self.meta.append({"manifest": meta["manifest"], "prompts": prompts, "targets": targets})
            start = 0
            for i in range(1, len(prompts) + 1):
                if i == len(prompts) or widths[i] != widths[start]:
                    self.groups.append(_Group(s, tuple(range(start, i))))
                    start = i

    def batch(self, group: _Group) -> tuple[torch.Tensor, list[list[int]], list[list[int]]]:
        f, meta = self.files[group.shard], self.meta[group.shard]
        frames = torch.stack([f.get_tensor(f"frames_{i}") for i in group.members]).float()
        return frames, [meta["prompts"][i] for i in group.members], [meta["targets"][i] for i in group.members]

    def manifest(self, group: _Group) -> str:
        return self.meta[group.shard]["manifest"]


# ----------------------------------------------------------------------------------------------
# Training


def _lora_modules(model: nn.Module) -> nn.ModuleDict:
    """The LoRA layers alone, as one module (its state dict is the LoRA's weights: checkpoints)."""
    return nn.ModuleDict({name.replace(".", "__"): m for name, m in model.named_modules() if name.endswith(("lora_A", "lora_B"))})


def greedy_readings(model: nn.Module, store: ExampleStore, tokenizer, *, tokens_per_second: float = 8.0) -> dict[str, list[tuple[str, str]]]:
    """Per manifest, (reference, reading) of every chunk: greedy decoding in torch from the chunk's
    prompt until `<|endoftext|>` or the first timestamp (where the transcriber's cut ends a packed
    chunk's text), normalized as transcripts are. As in the transcriber, a reading stops at
    `tokens_per_second` of the chunk's duration (read off its target's end timestamp; 30 s for an
    unpacked chunk): a loop is kept as far as it got, and counts against the WER."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out: dict[str, list[tuple[str, str]]] = {}
    for group in store.groups:
        frames, prompts, targets = store.batch(group)
        ids = torch.tensor(prompts)  # one prompt length per group: packed or not, as the window
        stamps = [[t for t in [*p, *tg] if t >= tokenizer.timestamp_begin] for p, tg in zip(prompts, targets)]
        seconds = max((s[1] - s[0]) * TIME_STEP_S if len(s) > 1 else WINDOW_S for s in stamps)
        max_tokens = math.ceil(tokens_per_second * max(seconds, 1.0)) + 2
        done = torch.zeros(len(prompts), dtype=torch.bool)
        written: list[list[int]] = [[] for _ in prompts]
        past = None
        step_ids = ids
        with torch.inference_mode():
            for _ in range(max_tokens):
                result = base.model.decoder(input_ids=step_ids, encoder_hidden_states=frames, past_key_values=past, use_cache=True)
                past = result.past_key_values
                nxt = base.proj_out(result.last_hidden_state[:, -1]).argmax(-1)
                for row, token in enumerate(nxt.tolist()):
                    if not done[row]:
                        if token >= tokenizer.eot:  # <|endoftext|> or a timestamp: the chunk's text ends
                            done[row] = True
                        else:
                            written[row].append(token)
                if done.all():
                    break
                step_ids = nxt[:, None]
        for target, tokens in zip(targets, written):
            out.setdefault(store.manifest(group), []).append((reading_text(tokenizer, target), reading_text(tokenizer, tokens)))
    return out


def _wers(readings: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    import jiwer

    by = {m: jiwer.wer([r or "-" for r, _ in pairs], [h for _, h in pairs]) for m, pairs in readings.items()}
    return {"mean": sum(by.values()) / max(len(by), 1), **by}


def train(config: WhisperTuneConfig) -> dict:
    from spokenlm.bases import KNOWN_BASES, resolve_base
    from spokenlm.recipes.ctc import mask_frames  # reads the mask_* fields, which this config shares
    from spokenlm.train.data import transcribed_sample
    from spokenlm.train.loop import (
        Checkpointer,
        MetricsLog,
        WallClock,
        build_optimizer,
        clip_and_step,
        finished_summary,
        lr_at,
        set_lr,
        world_size,
    )
    from spokenlm.transcriber import WhisperTranscriber
    from spokenlm.whisper_tune import add_decoder_lora, decoder_loss, load_whisper_for_tuning, read_decoder_lora

    config.validate()
    if world_size() > 1:
        raise ValueError("whisper-tune trains in one process: run it without --workers")
    if config.transcriber.decoder_lora is not None:
        raise ValueError("transcriber.decoder_lora is what this recipe trains: leave it out")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (finished := finished_summary(out, config.optim.max_steps)) is not None:
        return finished  # rewriting the LoRA would make the chain rerun the transcriber stage after it
    manifests = (config.manifest,) if isinstance(config.manifest, str) else tuple(config.manifest)
    splits: dict[str, dict[str, list]] = {config.train_split: {}, config.dev_split: {}}
    for path in manifests:
        for split, limit in ((config.train_split, config.train_utterances), (config.dev_split, config.dev_utterances)):
            if utts := transcribed_sample(path, split, limit, config.max_duration_s):
                splits[split][path] = utts
    for split, found in splits.items():
        if not found:
            raise ValueError(f"{list(manifests)}: no asr utterances with a transcript in {split!r}")

    started = time.monotonic()
    reader = WhisperTranscriber(config.transcriber)
    train_shards = build_examples(config, config.train_split, splits[config.train_split], reader)
    dev_shards = build_examples(config, config.dev_split, splits[config.dev_split], reader)
    if config.alone_utterances and config.transcriber.pack_s:
        alone = WhisperTranscriber(dataclasses.replace(config.transcriber, pack_s=0.0))
        firsts = {m: utts[: config.alone_utterances] for m, utts in splits[config.train_split].items()}
        train_shards += build_examples(config, f"{config.train_split}-alone", firsts, alone, "{} (alone)")
        dev_shards += build_examples(config, f"{config.dev_split}-alone", splits[config.dev_split], alone, "{} (alone)")
    train_store, dev_store = ExampleStore(train_shards), ExampleStore(dev_shards)
    examples_minutes = (time.monotonic() - started) / 60
    tokenizer = reader._tokenizer
    source = config.transcriber.path or resolve_base(KNOWN_BASES[config.transcriber.base])

    torch.manual_seed(config.seed)
    model = add_decoder_lora(load_whisper_for_tuning(source), rank=config.lora_rank, alpha=config.lora_alpha,
                             dropout=config.lora_dropout, targets=config.lora_targets)  # fmt: skip
    lora = _lora_modules(model)
    params = [p for p in lora.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config.optim)
    checkpoints = Checkpointer(out)
    state = checkpoints.restore({"lora": lora}, optimizer) or {}
    step = int(state.get("step", 0))
    best = float(state.get("best_dev_loss", math.inf))
    clock = WallClock(float(state.get("wall_s", 0.0)))
    metrics = MetricsLog(out)

    def dev_loss() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for group in dev_store.groups:
                frames, prompts, targets = dev_store.batch(group)
                tokens = sum(len(t) for t in targets)
                total += float(decoder_loss(model, frames, prompts, targets, tokenizer.eot)) * tokens
                count += tokens
        model.train()
        return total / max(count, 1)

    if step == 0:
        base_dev = dev_loss()
        metrics.log(0, val_loss=base_dev)
        print(f"whisper-tune: base decoder dev loss {base_dev:.4f}", flush=True)
    rng_order = list(range(len(train_store.groups)))
    per_epoch = max(len(rng_order) // config.windows_per_step, 1)
    model.train()
    while step < config.optim.max_steps and not clock.over(config.optim):
        epoch, within = divmod(step, per_epoch)
        order = rng_order[:]
        random.Random(config.seed + epoch).shuffle(order)
        picked = order[within * config.windows_per_step : (within + 1) * config.windows_per_step]
        set_lr(optimizer, lr_at(step, config.optim))
        loss_sum = 0.0
        masks = torch.Generator().manual_seed(config.seed * 1_000_003 + step)  # the same masks after a resume
        for g in picked:
            frames, prompts, targets = train_store.batch(train_store.groups[g])
            if config.mask_time_prob > 0 or config.mask_channel_prob > 0:
                frames = mask_frames(frames, torch.full((frames.shape[0],), frames.shape[1]), config, masks)
            loss = decoder_loss(model, frames, prompts, targets, tokenizer.eot) / len(picked)
            loss.backward()
            loss_sum += float(loss.detach())
        norm = clip_and_step(optimizer, params, config.optim)
        step += 1
        if step % 25 == 0:
            metrics.log(step, loss=loss_sum, grad_norm=norm, lr=lr_at(step, config.optim))
        if step % config.eval_every == 0 or step == config.optim.max_steps:
            value = dev_loss()
            metrics.log(step, val_loss=value)
            print(f"whisper-tune: step {step} loss {loss_sum:.4f} dev loss {value:.4f}", flush=True)
            if value < best:
                best = value
                model.save_pretrained(str(out / LORA_DIR))
            checkpoints.save(step, {"lora": lora}, optimizer, {"best_dev_loss": best, "wall_s": clock.seconds})
    if not (out / LORA_DIR / ADAPTER_CONFIG).is_file():
        model.save_pretrained(str(out / LORA_DIR))

    # dev readings: the base decoder (the adapter off) against the best LoRA, read back as a bundle reads it
    read_decoder_lora(out / LORA_DIR)
    model.eval()
    with model.disable_adapter():
        base_readings = greedy_readings(model, dev_store, tokenizer)
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(out / LORA_DIR / ADAPTER_WEIGHTS)))
    tuned_readings = greedy_readings(model, dev_store, tokenizer)
    rows = metrics.rows()
    summary = {
        "stage": "whisper-tune",
        "steps": step,
        "train_chunks": sum(len(g.members) for g in train_store.groups),
        "dev_chunks": sum(len(g.members) for g in dev_store.groups),
        "train_utterances": {m: len(u) for m, u in splits[config.train_split].items()},
        "dev_utterances": {m: len(u) for m, u in splits[config.dev_split].items()},
        "base_dev_loss": next((r["val_loss"] for r in rows if r["step"] == 0 and "val_loss" in r), None),
        "best_dev_loss": best,
        "dev_wer_base": _wers(base_readings),
        "dev_wer_tuned": _wers(tuned_readings),
        "examples": [{"ref": r, "base": b, "tuned": t} for (r, b), (_, t) in
                     zip(next(iter(base_readings.values()))[:8], next(iter(tuned_readings.values()))[:8])],  # fmt: skip
        "examples_minutes": round(examples_minutes, 2),
        "train_minutes": round(clock.seconds / 60, 2),
        "lora": str(out / LORA_DIR),
        "transcriber": transcriber_config_to_json(config.transcriber),
    }
    metrics.write_summary(summary)
    metrics.plot(title="whisper-tune: decoder LoRA")
    print(f"whisper-tune: dev WER (greedy, torch) base {summary['dev_wer_base']['mean']:.4f} "
          f"-> tuned {summary['dev_wer_tuned']['mean']:.4f}", flush=True)  # fmt: skip
    return summary

