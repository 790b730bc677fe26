"""Recipe `encoder-ssl`: DinoSR self-supervised pre-training of a speech encoder on the corpus audio.

    spokenlm train encoder-ssl --config configs/encoder_ssl.yaml

DinoSR (Liu et al., 2023, §2: masked prediction of online-clustered teacher codewords); the model and
its objective live in spokenlm/encoders/dinosr.py, this file only runs them.

1. Read the corpus manifest: the audio of `train_splits` trains (labels unused), `heldout_splits` scores.
2. Build a `DinoSRPretrainer` (student, EMA teacher, K codebooks, K heads) from a preset + overrides;
   optionally start the codebooks at k-means centroids of the initial teacher's targets (the paper
   starts from random codewords).
3. Each step, in the order the pre-trainer documents: masked-prediction loss on a duration-bucketed
   batch → AdamW step → codebook EMA → teacher EMA. Every `eval_every` steps: held-out loss, accuracy
   and per-codebook perplexity with fixed masks (no gradient, no codebook or teacher update); checkpoint.
   A checkpoint holds the whole pre-trainer (student, teacher, heads, mask embedding, codebooks).
4. Write OUT/encoder/ (the student; `spokenlm.encoders.load_encoder` reads it), metrics.json, loss.png.

Under Ray Train (--workers N) every worker follows the same batch schedule and takes its own batch of
each step. DDP all-reduces the gradients of the trainable parameters only (student, mask embedding,
heads; the teacher is frozen and the codebooks are buffers); `update_codebooks` sums the codebook
statistics over workers before its EMA, so every worker keeps the same codebooks, and the teacher EMA
of identical students is identical. metrics.json reports the largest difference between workers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from spokenlm.audio import AudioBatch
from spokenlm.train.data import (
    AudioCache,
    BatchSchedule,
    Utterance,
    duration_batches,
    speech_utterances,
    total_hours,
)
from spokenlm.train.loop import (
    Checkpointer,
    MetricsLog,
    OptimConfig,
    WallClock,
    build_optimizer,
    clip_and_step,
    is_main,
    lr_now,
    mean_across_workers,
    rank,
    set_lr,
    spread_across_workers,
    sum_across_workers,
    world_size,
    wrap_ddp,
)

PRESETS = ("dinosr_tiny", "dinosr_tiny_conformer", "dinosr_base")  # functions of spokenlm.encoders.dinosr


@dataclass(frozen=True, kw_only=True)
class EncoderSSLConfig:
    out_dir: str
    manifest: str  # corpus manifest.jsonl (spokenlm/train/data.py); only audio and split are read
    train_splits: tuple[str, ...] = ("fine-tune",)
    heldout_splits: tuple[str, ...] = ("dev",)
    max_duration_s: float = 20.0  # longer utterances are skipped (attention is quadratic in frames)
    encoder: str = "dinosr_tiny"  # a preset of spokenlm.encoders.dinosr
    encoder_overrides: dict = field(default_factory=dict)  # DinoSREncoderConfig fields over the preset
    max_batch_s: float = 80.0  # padded seconds of audio per batch per worker
    bf16: bool = False  # bf16 autocast of the forward pass; spectra and losses stay fp32
    kmeans_init_batches: int = 0  # > 0: codewords start at k-means of the teacher's targets on these batches
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 20  # held-out batches scored (a fixed random subset, fixed masks)
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=300, max_steps=6000))

    def encoder_config(self):
        """The DinoSREncoderConfig: the preset with `encoder_overrides` applied, validated."""
        from spokenlm.encoders import dinosr

        if self.encoder not in PRESETS:
            raise ValueError(f"unknown DinoSR preset {self.encoder!r}; expected one of {', '.join(PRESETS)}")
        preset = getattr(dinosr, self.encoder)()
        return dinosr.DinoSREncoderConfig.from_dict({**preset.to_dict(), **self.encoder_overrides})

    def validate(self) -> None:
        if not self.train_splits or not self.heldout_splits:
            raise ValueError("train_splits and heldout_splits must each name at least one split")
        if both := sorted(set(self.train_splits) & set(self.heldout_splits)):
            raise ValueError(f"a split cannot both train and score: {both}")
        if not (self.max_batch_s > 0 and self.max_duration_s > 0):
            raise ValueError(f"max_batch_s, max_duration_s must be > 0, got {self.max_batch_s}, {self.max_duration_s}")
        for name in ("log_every", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kmeans_init_batches < 0:
            raise ValueError(f"kmeans_init_batches must be >= 0, got {self.kmeans_init_batches}")
        self.encoder_config()  # unknown preset or a bad override fails here, before any data is read
        self.optim.validate()


def heldout_batches(
    utts: list[Utterance], cache: AudioCache, *, max_batch_s: float, count: int, seed: int
) -> list[AudioBatch]:
    """This worker's share of a fixed random subset of `count` held-out batches."""
    chosen = duration_batches(utts, max_batch_s=max_batch_s, seed=seed)[:count]
    mine = chosen[rank() :: world_size()]
    return [cache.batch([utts[i] for i in bucket]) for bucket in mine]


# --- the parts of the recipe ---------------------------------------------------------------------


@dataclass(frozen=True)
class HeldoutScores:
    loss: float  # cross-entropy over masked frames, mean over codebooks
    accuracy: float  # mean over codebooks
    perplexity: list[float]  # (K,) exp(entropy) of codeword usage over all held-out masked frames


@torch.no_grad()
def score_heldout(pretrainer, batches: list[AudioBatch], *, seed: int, bf16: bool) -> HeldoutScores:
    """Masked-prediction scores with the same masks every call (generator seeded by `seed`); changes
    nothing: eval mode, no codebook or teacher update. Summed over workers."""
    K, V = pretrainer.config.num_codebooks, pretrainer.config.codebook_size
    loss, correct = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)  # · masked frames
    counts, masked = torch.zeros(K, V, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    pretrainer.eval()
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = pretrainer(batch.wav, batch.lengths, generator=generator)
        loss += out.per_codebook_loss.double() * out.num_masked
        correct += out.accuracy.double() * out.num_masked
        counts += out.batch_counts.double()
        masked += out.num_masked
    pretrainer.train()
    total = sum_across_workers(torch.cat([loss, correct, counts.flatten(), masked]))
    n = float(total[-1])
    if n == 0:
        raise ValueError("no held-out batch was scored")
    usage = total[2 * K : -1].view(K, V) / n  # (K, V)
    perplexity = torch.exp(-(usage * torch.log(usage.clamp(min=1e-12))).sum(dim=1))  # (K,)
    return HeldoutScores(
        loss=float(total[:K].mean()) / n,
        accuracy=float(total[K : 2 * K].mean()) / n,
        perplexity=[round(float(p), 2) for p in perplexity],
    )


@torch.no_grad()
def kmeans_codebooks(pretrainer, batches: list[AudioBatch], *, seed: int) -> None:
    """Codewords ← k-means centroids of the teacher's instance-normalised targets (every valid frame of
    `batches`), one codebook per target layer; counts ← 1, so the first EMA update is a proper mean."""
    from spokenlm.encoders.dinosr import instance_norm
    from spokenlm.units import KMeansConfig, as_dinosr_init, fit_codebook

    cfg = pretrainer.config
    frames: list[list[Tensor]] = [[] for _ in range(cfg.num_codebooks)]
    for batch in batches:
        x, lengths = pretrainer.student.extract_features(batch.wav, batch.lengths)  # (B, T, D)
        _, ffn_outputs = pretrainer.teacher(x, lengths, keep_ffn=True)
        valid = torch.arange(x.shape[1]) < lengths[:, None]  # (B, T)
        for k, layer_out in enumerate(ffn_outputs[-cfg.num_codebooks :]):
            frames[k].append(instance_norm(layer_out.float(), lengths)[valid])  # (N, D)
    for k, chunks in enumerate(frames):
        codebook = fit_codebook(torch.cat(chunks), KMeansConfig(num_units=cfg.codebook_size, seed=seed))
        pretrainer.codebook_sums[k] = as_dinosr_init(codebook, codebook_size=cfg.codebook_size, dim=cfg.model_dim)
    pretrainer.codebook_counts.fill_(1.0)


def train(config: EncoderSSLConfig) -> dict:
    from spokenlm.encoders.dinosr import DinoSRPretrainer, build_dinosr_encoder, save_dinosr_encoder

    config.validate()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder_config = config.encoder_config()
    if world_size() > 1 and (encoder_config.layer_drop > 0 or encoder_config.layer == "weighted"):
        raise ValueError(
            "layer_drop > 0 or layer 'weighted' leaves parameters without gradients, which DDP refuses; "
            "set encoder_overrides layer_drop: 0.0 and layer: last to use several workers"
        )
    usable = dict(max_duration_s=config.max_duration_s, min_samples=encoder_config.receptive_field)
    train_utts = speech_utterances(config.manifest, config.train_splits, **usable)
    heldout_utts = speech_utterances(config.manifest, config.heldout_splits, **usable)
    schedule = BatchSchedule(train_utts, max_batch_s=config.max_batch_s, seed=config.seed, workers=world_size())
    cache = AudioCache()
    heldout = heldout_batches(
        heldout_utts, cache, max_batch_s=config.max_batch_s, count=config.eval_batches, seed=config.seed
    )

    torch.manual_seed(config.seed)  # the same initial student (and so teacher) in every worker
    pretrainer = DinoSRPretrainer(student=build_dinosr_encoder(encoder_config)).train()
    trainable = [p for p in pretrainer.parameters() if p.requires_grad]  # student, mask_emb, heads
    optimizer = build_optimizer(trainable, config.optim)
    checkpoints, metrics = Checkpointer(out), MetricsLog(out)
    state = checkpoints.restore({"pretrainer": pretrainer}, optimizer) or {"step": 0, "wall_s": 0.0, "audio_s": 0.0}
    step, clock, audio_s = state["step"], WallClock(state["wall_s"]), state["audio_s"]
    if step == 0 and config.kmeans_init_batches > 0:
        if is_main():
            first = [cache.batch(b) for s in range(config.kmeans_init_batches) for b in schedule.at(s)]
            kmeans_codebooks(pretrainer, first, seed=config.seed)
        if world_size() > 1:
            dist.broadcast(pretrainer.codebook_sums, src=0)
            dist.broadcast(pretrainer.codebook_counts, src=0)
    model = wrap_ddp(pretrainer)  # DDP reduces gradients of trainable parameters only
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank() + step)  # masks; fresh on resume

    def save() -> None:
        if is_main():
            progress = {"wall_s": clock.seconds, "audio_s": audio_s}
            checkpoints.save(step, {"pretrainer": pretrainer}, optimizer, progress)

    scored: dict[int, HeldoutScores] = {}  # step -> scores

    def evaluate() -> HeldoutScores:
        if step not in scored:
            scores = scored[step] = score_heldout(pretrainer, heldout, seed=config.seed, bf16=config.bf16)
            if is_main():
                ppl = {f"val_ppl_{k}": p for k, p in enumerate(scores.perplexity)}
                metrics.log(step, val_loss=scores.loss, val_accuracy=scores.accuracy, **ppl)
        return scored[step]

    if step == 0:  # the untrained model's held-out loss: the baseline the curve is read against
        evaluate()
    while step < config.optim.max_steps:
        elapsed_s = mean_across_workers(clock.seconds)  # one clock for all workers: the same stop, the same lr
        if config.optim.max_minutes > 0 and elapsed_s >= config.optim.max_minutes * 60:
            break
        lr = lr_now(step, elapsed_s, config.optim)
        batches = schedule.at(step)
        batch = cache.batch(batches[rank()])
        set_lr(optimizer, lr)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            result = model(batch.wav, batch.lengths, generator=generator)
        result.loss.backward()
        clip_and_step(optimizer, trainable, config.optim)
        pretrainer.update_codebooks(result)  # batch statistics summed over workers, then the EMA
        decay = pretrainer.ema_step(step)
        audio_s += sum(u.duration_s for b in batches for u in b)  # every worker's batch: the schedule is shared
        step += 1
        if step % config.log_every == 0 and is_main():
            ppl = {f"ppl_{k}": float(p) for k, p in enumerate(result.perplexity)}
            metrics.log(step, loss=result.loss.item(), accuracy=float(result.accuracy.mean()),
                        lr=lr, teacher_decay=decay, **ppl)  # fmt: skip
        if step % config.eval_every == 0:
            evaluate()
            save()
    save()

    final = evaluate()
    codebooks = torch.cat([pretrainer.codebook_sums.flatten(), pretrainer.codebook_counts.flatten()])
    codebook_spread = spread_across_workers(codebooks)
    teacher_spread = spread_across_workers(torch.cat([p.detach().flatten() for p in pretrainer.teacher.parameters()]))
    if codebook_spread > 0 or teacher_spread > 0:
        warnings.warn(f"workers disagree: codebooks by {codebook_spread:.3g}, teacher by {teacher_spread:.3g}")
    summary = {
        "stage": "encoder-ssl",
        "encoder": config.encoder,
        "steps": step,
        "epochs": round(step / schedule.steps_per_epoch, 2),
        "wall_minutes": round(clock.seconds / 60, 2),
        "workers": world_size(),
        "train_utterances": len(train_utts),
        "train_hours": round(total_hours(train_utts), 3),
        "heldout_utterances": len(heldout_utts),
        "hours_seen": round(audio_s / 3600, 3),
        "heldout_loss_start": None,
        "heldout_loss": round(final.loss, 4),
        "heldout_loss_chance": round(math.log(encoder_config.codebook_size), 4),  # uniform over V codewords
        "heldout_accuracy": round(final.accuracy, 4),
        "heldout_perplexity": final.perplexity,  # per codebook; of V possible, 1 = collapse
        "heldout_perplexity_start": None,
        "parameters": sum(p.numel() for p in pretrainer.student.parameters()),
        "frame_rate_hz": encoder_config.frame_rate_hz,
        "workers_codebook_spread": codebook_spread,  # max |difference| between workers: 0.0 expected
        "workers_teacher_spread": teacher_spread,
    }
    if is_main():
        first = next(r for r in metrics.rows() if "val_loss" in r)
        summary["heldout_loss_start"] = round(first["val_loss"], 4)
        summary["heldout_perplexity_start"] = [first[f"val_ppl_{k}"] for k in range(encoder_config.num_codebooks)]
        save_dinosr_encoder(pretrainer.student, out / "encoder")
        metrics.write_summary(summary)
        metrics.plot(title=f"encoder-ssl ({config.encoder})")
    return summary
