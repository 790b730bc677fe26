"""Recipe `sylber`: Sylber segment-level self-distillation, giving the syllable segmenter and features.

    spokenlm train sylber --config configs/sylber.yaml

Sylber (Cho et al., 2024, §3.2–3.3; the objective is spokenlm/encoders/sylber.py, this file only runs it):
an EMA teacher segments its own features with the linear-time algorithm, and the student regresses the
segment-averaged teacher features (zero on non-speech frames); an online two-Gaussian estimate of the
feature-norm threshold separates speech from non-speech.

1. Read the corpus manifest: the audio of `train_splits` trains, `heldout_splits` scores.
2. The student: a Sylber preset (from scratch), or an encoder directory to start from, as Sylber starts
   from HuBERT. Any `SpeechEncoder` works: the DinoSR student of `encoder-ssl` (runs/encoder-ssl/encoder)
   trains and is saved as a DinoSR encoder; the authors' checkpoint file (sylber.ckpt) loads too.
3. The first stage (`bootstrap_steps`). The published recipe's stage 1 distils over the segments of
   SD-HuBERT, a model that is already syllabic, and starts from features whose norms already tell
   silence apart. A fresh or DinoSR-initialised student has neither: its own segments barely follow
   syllables, and a final LayerNorm gives every frame about the same norm, so the norm threshold would
   call all or none of the frames non-speech. So for `bootstrap_steps` the student regresses the
   (frozen) teacher's features averaged over the segments of the loudness envelope of the clean audio
   (`envelope`: cuts at the dips between vowel nuclei, zero outside speech; spokenlm/envelope.py), an
   unsupervised syllable segmenter that uses no transcript. Then the teacher restarts from that
   student, and the norm statistics from its own speech / non-speech norms on `norm_init_batches`
   batches (frames more than `nonspeech_db` below their utterance's loudest 20 ms are non-speech).
4. Each step: optional white noise on the student's input (the teacher and the VAD hear clean audio)
   → loss → AdamW step → teacher EMA (not during the bootstrap). Every `eval_every` steps: held-out
   loss, and segments per second with the inference thresholds (the current norm estimate, merge 0.8);
   checkpoint (student, teacher, norm statistics).
5. The norm threshold to segment with: the crossing of the two Gaussians of the final student's norms,
   split by the energy VAD as in step 3 (with `norm_init_batches` > 0, whichever stage the run ended in). Not
   the online estimate (kept as `norm_threshold_online`): frames under it learn zero, so it feeds on
   itself, and on the DinoSR-initialised student it drifted into speech (dev: 46 % of frames
   non-speech, word-boundary recall 0.57, where the re-measured threshold gave 0.73).
6. Write OUT/encoder/ (the student; a Sylber encoder carries the thresholds in its config),
   OUT/sylber.json (the thresholds to segment with, as a SyllableCompressorConfig), metrics.json,
   loss.png.

Under Ray Train each worker takes its own batch of a shared schedule (see encoder_ssl.BatchSchedule);
DDP all-reduces the student's gradients, the teacher EMA follows identically, and DDP broadcasts rank 0's
norm statistics to every worker before each step (rank 0's estimate is the one saved).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spokenlm.audio import SAMPLE_RATE, AudioBatch
from spokenlm.encoders.base import frame_shift_s
from spokenlm.encoders.sylber import MERGE_THRESHOLD, SylberLoss, SylberObjectiveConfig, check_thresholds
from spokenlm.envelope import EnvelopeConfig, envelope_segment_batch
from spokenlm.recipes.encoder_ssl import heldout_batches
from spokenlm.train.data import AudioCache, BatchSchedule, speech_utterances, total_hours
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

PRESETS = ("sylber_tiny", "sylber_base")  # functions of spokenlm.encoders.sylber
NORM_STATS = ("signal_mean", "signal_var", "noise_mean", "noise_var")  # NormThresholdEstimator's buffers


def objective_defaults() -> SylberObjectiveConfig:
    """The authors' objective, with a norm-statistics EMA that moves within a run of a few thousand
    steps (the published 0.9999 barely leaves its initial values in that time)."""
    return SylberObjectiveConfig(ema_decay=0.999, norm_stats_decay=0.99)


@dataclass(frozen=True, kw_only=True)
class SylberTrainConfig:
    out_dir: str
    manifest: str  # corpus manifest.jsonl (spokenlm/train/data.py); only audio and split are read
    train_splits: tuple[str, ...] = ("fine-tune",)
    heldout_splits: tuple[str, ...] = ("dev",)
    max_duration_s: float = 20.0  # longer utterances are skipped
    student: str = "sylber_tiny"  # a preset of spokenlm.encoders.sylber, a saved encoder dir or a Sylber .ckpt
    student_overrides: dict = field(default_factory=dict)  # SylberEncoderConfig fields over a preset
    objective: SylberObjectiveConfig = field(default_factory=objective_defaults)
    bootstrap_steps: int = 200  # first-stage steps on envelope segments (0: self-segmentation from the start)
    envelope: EnvelopeConfig = field(default_factory=EnvelopeConfig)  # the first stage's segmenter
    norm_init_batches: int = 8  # > 0: initial norm statistics from the student's own norms; 0: the objective's
    nonspeech_db: float = 35.0  # those norms' energy VAD: this far below the utterance's loudest 20 ms is silence
    noise_prob: float = 0.5  # share of items whose student input gets white noise
    noise_snr_db: tuple[float, float] = (5.0, 25.0)  # SNR drawn uniformly per item
    inference_merge_threshold: float = MERGE_THRESHOLD  # published 0.8; the norm threshold is estimated
    max_batch_s: float = 80.0  # padded seconds of audio per batch per worker
    bf16: bool = False  # bf16 autocast of the encoders; segmentation and loss stay fp32
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20  # held-out batches scored (a fixed random subset)
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, warmup_steps=200, max_steps=4000))

    def validate(self) -> None:
        if not self.train_splits or not self.heldout_splits:
            raise ValueError("train_splits and heldout_splits must each name at least one split")
        if both := sorted(set(self.train_splits) & set(self.heldout_splits)):
            raise ValueError(f"a split cannot both train and score: {both}")
        if not (self.max_batch_s > 0 and self.max_duration_s > 0):
            raise ValueError(f"max_batch_s, max_duration_s must be > 0, got {self.max_batch_s}, {self.max_duration_s}")
        if self.student in PRESETS:
            self.preset_config()
        elif self.student_overrides:
            raise ValueError(f"student_overrides apply to a preset ({', '.join(PRESETS)}), not to {self.student!r}")
        if self.bootstrap_steps < 0 or self.norm_init_batches < 0 or not self.nonspeech_db > 0:
            raise ValueError(
                "bootstrap_steps and norm_init_batches must be >= 0 and nonspeech_db > 0, got "
                f"{self.bootstrap_steps}, {self.norm_init_batches}, {self.nonspeech_db}"
            )
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")
        lo, hi = self.noise_snr_db
        if not lo <= hi:
            raise ValueError(f"noise_snr_db must be (low, high) with low <= high, got {self.noise_snr_db}")
        check_thresholds(0.0, self.inference_merge_threshold)
        for name in ("log_every", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.objective.validate()
        self.envelope.validate()
        self.optim.validate()

    def preset_config(self):
        """The SylberEncoderConfig of a preset student, `student_overrides` applied, validated."""
        from spokenlm.encoders import sylber

        overrides = dict(self.student_overrides)
        if "conv_layers" in overrides:
            overrides["conv_layers"] = tuple(tuple(c) for c in overrides["conv_layers"])
        try:
            config = replace(getattr(sylber, self.student)(), **overrides)
        except TypeError as e:
            raise ValueError(f"student_overrides: {e}") from e
        config.validate()
        return config


def build_student(config: SylberTrainConfig) -> nn.Module:
    """A preset built from scratch, or an encoder loaded to start from, in training mode."""
    from spokenlm.encoders import load_encoder
    from spokenlm.encoders.sylber import build_sylber_encoder, load_sylber_encoder

    if config.student in PRESETS:
        return build_sylber_encoder(config.preset_config()).train()
    path = Path(config.student)
    if path.is_dir():
        return load_encoder(path).train()
    if path.is_file():
        return load_sylber_encoder(path).train()  # the authors' checkpoint layout
    raise FileNotFoundError(
        f"student {config.student!r} is neither a preset ({', '.join(PRESETS)}) nor an encoder directory or checkpoint"
    )


def add_noise(
    wav: Tensor, lengths: Tensor, *, prob: float, snr_db: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """White noise on a `prob` share of items at an SNR drawn from `snr_db` against each item's RMS over
    its valid samples; padding stays zero. wav: (B, S); lengths: (B,)."""
    batch, samples = wav.shape
    valid = (torch.arange(samples) < lengths[:, None]).to(wav.dtype)  # (B, S)
    rms = torch.sqrt((wav**2 * valid).sum(dim=1) / lengths.clamp(min=1))  # (B,)
    lo, hi = snr_db
    snr = lo + (hi - lo) * torch.rand(batch, generator=generator)
    on = (torch.rand(batch, generator=generator) < prob).to(wav.dtype)
    scale = rms / 10 ** (snr / 20) * on  # (B,)
    return wav + torch.randn(wav.shape, generator=generator) * scale[:, None] * valid


def energy_speech_frames(
    wav: Tensor, frame_lengths: Tensor, *, num_frames: int, frame_rate_hz: float, nonspeech_db: float
) -> Tensor:
    """(B, T = num_frames) True for valid frames whose hop of audio (20 ms at 50 Hz) is within
    `nonspeech_db` of the loudest hop of their utterance. wav: (B, S) clean audio; frame_lengths: (B,)."""
    frames, hop = num_frames, round(SAMPLE_RATE / frame_rate_hz)
    wav = F.pad(wav, (0, max(0, frames * hop - wav.shape[1])))[:, : frames * hop]
    db = 10 * torch.log10(wav.reshape(len(wav), frames, hop).float().pow(2).mean(dim=-1) + 1e-10)  # (B, T)
    valid = torch.arange(frames, device=wav.device) < frame_lengths[:, None]
    loudest = db.masked_fill(~valid, -math.inf).amax(dim=1, keepdim=True)  # (B, 1)
    return valid & (db > loudest - nonspeech_db)


@torch.no_grad()
def measure_norm_stats(
    encoder: nn.Module, batches: list[AudioBatch], *, nonspeech_db: float
) -> tuple[float, float, float, float]:
    """(speech mean, var, non-speech mean, var) of the encoder's feature norms, frames split by the
    energy VAD."""
    was_training = encoder.training
    encoder.eval()
    speech, silence = [], []
    for batch in batches:
        out = encoder(batch.wav, batch.lengths)
        norms = out.features.float().norm(dim=-1)  # (B, T)
        frames = dict(num_frames=norms.shape[1], frame_rate_hz=out.frame_rate_hz)
        loud = energy_speech_frames(batch.wav, out.lengths, **frames, nonspeech_db=nonspeech_db)
        valid = torch.arange(norms.shape[1]) < out.lengths[:, None]
        speech.append(norms[loud])
        silence.append(norms[valid & ~loud])
    encoder.train(was_training)
    s, n = torch.cat(speech).double(), torch.cat(silence).double()
    if n.numel() < 2 or s.numel() < 2:
        raise ValueError(
            f"the first {len(batches)} batches have {n.numel()} frames more than {nonspeech_db} dB below their "
            f"utterance's loudest and {s.numel()} others; set norm_init_batches: 0 and objective.norm_stats_init"
        )
    separation = float((s.mean() - n.mean()) / torch.sqrt((s.var() + n.var()) / 2 + 1e-12))  # d'
    if separation < 1.0:
        warnings.warn(
            f"speech and non-speech feature norms hardly differ ({float(s.mean()):.3g} ± {float(s.std()):.2g} vs "
            f"{float(n.mean()):.3g} ± {float(n.std()):.2g}): the norm threshold will not find non-speech; "
            "raise bootstrap_steps"
        )
    return float(s.mean()), float(s.var()), float(n.mean()), float(n.var())


class BootstrappedSylber(nn.Module):
    """`SylberDistillation` behind one forward for DDP to wrap. With ``bootstrap=True`` the teacher's
    features are pooled over the loudness-envelope segments of the clean audio (the first stage);
    otherwise over the teacher's own segments."""

    def __init__(self, distill: nn.Module, *, envelope: EnvelopeConfig) -> None:
        super().__init__()
        self.distill, self.envelope = distill, envelope
        self.shift_s = frame_shift_s(distill.student)

    def forward(
        self, wav: Tensor, lengths: Tensor, *, student_wav: Tensor, generator: torch.Generator, bootstrap: bool
    ) -> SylberLoss:
        segments = None
        if bootstrap:
            student = self.distill.student
            segments = envelope_segment_batch(wav, lengths, student.output_lengths(lengths), config=self.envelope,
                                              frame_rate_hz=student.frame_rate_hz, shift_s=self.shift_s)  # fmt: skip
        return self.distill(wav, lengths, student_wav=student_wav, generator=generator, segments=segments)


@dataclass(frozen=True)
class SylberScores:
    loss: float  # the distillation loss (fixed merge-threshold draws), per valid frame
    segments_per_second: float  # with the inference thresholds
    speech_fraction: float  # valid frames inside a segment, with the inference thresholds


@torch.no_grad()
def score_heldout(
    distill: nn.Module,
    batches: list[AudioBatch],
    *,
    merge_threshold: float,
    seed: int,
    bf16: bool,
    norm_threshold: float | None = None,
) -> SylberScores:
    """Held-out loss and segmentation at the inference thresholds (the norm threshold: the online
    estimate unless given); changes nothing (eval mode: no norm update). Summed over workers."""
    from spokenlm.encoders.sylber import segment_batch

    distill.eval()
    generator = torch.Generator().manual_seed(seed)
    norm = distill.norm_threshold() if norm_threshold is None else norm_threshold
    totals = torch.zeros(4, dtype=torch.float64)  # loss · frames, frames, segments, frames inside segments
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = distill(batch.wav, batch.lengths, generator=generator)
            encoded = distill.student(batch.wav, batch.lengths)
        features = encoded.features.float()
        spans = segment_batch(features, encoded.lengths, norm_threshold=norm, merge_threshold=merge_threshold)
        frames = float(encoded.lengths.sum())
        totals += torch.tensor([out.loss.item() * frames, frames, sum(map(len, spans)),
                                sum(e - s for item in spans for s, e in item)], dtype=torch.float64)  # fmt: skip
    distill.train()
    loss_frames, frames, segments, inside = sum_across_workers(totals).tolist()
    seconds = frames / distill.student.frame_rate_hz
    return SylberScores(
        loss=loss_frames / frames, segments_per_second=segments / seconds, speech_fraction=inside / frames
    )


def train(config: SylberTrainConfig) -> dict:
    from spokenlm.compress.syllable import SyllableCompressorConfig
    from spokenlm.encoders import save_encoder
    from spokenlm.encoders.sylber import NormThresholdEstimator, SylberDistillation, SylberEncoder

    config.validate()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)  # the same initial student in every worker
    student = build_student(config)
    usable = dict(max_duration_s=config.max_duration_s, min_samples=student.config.receptive_field)
    train_utts = speech_utterances(config.manifest, config.train_splits, **usable)
    heldout_utts = speech_utterances(config.manifest, config.heldout_splits, **usable)
    schedule = BatchSchedule(train_utts, max_batch_s=config.max_batch_s, seed=config.seed, workers=world_size())
    cache = AudioCache()
    heldout = heldout_batches(
        heldout_utts, cache, max_batch_s=config.max_batch_s, count=config.eval_batches, seed=config.seed
    )

    distill = SylberDistillation(student=student, config=config.objective).train()  # student, teacher, norm stats
    optimizer = build_optimizer(student.parameters(), config.optim)
    checkpoints, metrics = Checkpointer(out), MetricsLog(out)
    state = checkpoints.restore({"distill": distill}, optimizer) or {"step": 0, "wall_s": 0.0, "audio_s": 0.0}
    step, clock, audio_s = state["step"], WallClock(state["wall_s"]), state["audio_s"]
    model = wrap_ddp(BootstrappedSylber(distill, envelope=config.envelope))  # reduces the student's gradients
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank() + step)  # noise, merge draws

    def vad_norm_stats() -> tuple[float, float, float, float]:
        """The student's speech / non-speech norm statistics by the energy VAD, on the first batches."""
        first = [cache.batch(b) for s in range(config.norm_init_batches) for b in schedule.at(s)[:1]]
        return measure_norm_stats(student, first, nonspeech_db=config.nonspeech_db)

    def start_distillation() -> None:
        """After the bootstrap: the teacher restarts from the student, the norm statistics from its norms."""
        distill.teacher.load_state_dict(student.state_dict())
        if config.norm_init_batches > 0:
            stats = vad_norm_stats()
            for name, value in zip(NORM_STATS, stats):
                getattr(distill.norm_stats, name).fill_(value)
            if is_main():
                metrics.log(step, **{f"init_{name}": value for name, value in zip(NORM_STATS, stats)})
        evaluate()  # the distillation's baseline

    def save() -> None:
        if is_main():
            progress = {"wall_s": clock.seconds, "audio_s": audio_s}
            checkpoints.save(step, {"distill": distill}, optimizer, progress)

    scored: dict[int, SylberScores] = {}  # step -> scores

    def evaluate() -> SylberScores:
        if step not in scored:
            merge = config.inference_merge_threshold
            scores = score_heldout(distill, heldout, merge_threshold=merge, seed=config.seed, bf16=config.bf16)
            scored[step] = scores
            if is_main():
                metrics.log(step, val_loss=scores.loss, val_segments_per_second=scores.segments_per_second,
                            val_speech_fraction=scores.speech_fraction, norm_threshold=distill.norm_threshold())
        return scored[step]

    if step == 0:  # the starting point the curve is read against
        evaluate()
        if config.bootstrap_steps == 0:
            start_distillation()
    while step < config.optim.max_steps:
        elapsed_s = mean_across_workers(clock.seconds)  # one clock for all workers: the same stop, the same lr
        if config.optim.max_minutes > 0 and elapsed_s >= config.optim.max_minutes * 60:
            break
        lr = lr_now(step, elapsed_s, config.optim)
        bootstrap = step < config.bootstrap_steps
        batches = schedule.at(step)
        batch = cache.batch(batches[rank()])
        noise = dict(prob=config.noise_prob, snr_db=config.noise_snr_db, generator=generator)
        noisy = add_noise(batch.wav, batch.lengths, **noise)  # the student's input; teacher and VAD hear it clean
        set_lr(optimizer, lr)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            result = model(batch.wav, batch.lengths, student_wav=noisy, generator=generator, bootstrap=bootstrap)
        loss = result.loss
        loss.backward()
        clip_and_step(optimizer, student.parameters(), config.optim)
        if not bootstrap:
            distill.update_teacher()
        audio_s += sum(u.duration_s for b in batches for u in b)  # every worker's batch: the schedule is shared
        step += 1
        if step == config.bootstrap_steps:
            start_distillation()
        if step % config.log_every == 0 and is_main():
            if bootstrap:
                metrics.log(step, bootstrap_loss=loss.item(), lr=lr, segments_per_second=result.segments_per_second)
            else:
                metrics.log(step, loss=loss.item(), lr=lr, norm_threshold=result.norm_threshold,
                            merge_threshold=result.merge_threshold, speech_fraction=result.speech_fraction,
                            segments_per_second=result.segments_per_second)  # fmt: skip
        if step % config.eval_every == 0:
            evaluate()
            save()
    save()

    online_threshold = distill.norm_threshold()
    norm_threshold, final_stats = online_threshold, None
    if config.norm_init_batches > 0:
        # the threshold to segment with, measured as the distillation started: the online estimate feeds
        # on itself (frames under it learn zero), and on small encoders it drifts into speech
        final_stats = vad_norm_stats()
        norm_threshold = NormThresholdEstimator(init=final_stats, decay=1.0).threshold()
    final = score_heldout(distill, heldout, merge_threshold=config.inference_merge_threshold, seed=config.seed,
                          bf16=config.bf16, norm_threshold=norm_threshold)  # fmt: skip
    if is_main():
        metrics.log(step, final_val_segments_per_second=final.segments_per_second,
                    final_val_speech_fraction=final.speech_fraction, final_norm_threshold=norm_threshold)  # fmt: skip
    teacher_spread = spread_across_workers(torch.cat([p.detach().flatten() for p in distill.teacher.parameters()]))
    compressor = SyllableCompressorConfig(
        input_dim=student.output_dim, norm_threshold=norm_threshold, merge_threshold=config.inference_merge_threshold
    )
    summary = {
        "stage": "sylber",
        "student": config.student,
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
        "heldout_segments_per_second_start": None,
        "heldout_segments_per_second": round(final.segments_per_second, 3),  # Sylber: 3-7 on speech
        "heldout_speech_fraction": round(final.speech_fraction, 3),
        "norm_threshold": round(norm_threshold, 4),  # to segment with at inference
        "norm_threshold_online": round(online_threshold, 4),  # the objective's running estimate
        "norm_stats_final": [round(v, 4) for v in final_stats] if final_stats else None,  # the threshold's, by VAD
        "merge_threshold": config.inference_merge_threshold,
        "norm_stats": [round(float(getattr(distill.norm_stats, name)), 4) for name in NORM_STATS],
        "parameters": sum(p.numel() for p in student.parameters()),
        "workers_teacher_spread": teacher_spread,  # max |difference| between workers: 0.0 expected
    }
    if is_main():
        rows = metrics.rows()  # read against the distillation's start, after the bootstrap
        first = next((r for r in rows if "val_loss" in r and r["step"] >= config.bootstrap_steps), rows[0])
        summary["heldout_loss_start"] = round(first["val_loss"], 4)
        summary["heldout_segments_per_second_start"] = round(first["val_segments_per_second"], 3)
        init = next((r for r in rows if "init_signal_mean" in r), None)
        if init:
            summary["norm_stats_init"] = [round(init[f"init_{name}"], 4) for name in NORM_STATS]
        if isinstance(student, SylberEncoder):  # its config carries the thresholds SylberEncoder.segment uses
            student.config = replace(student.config, norm_threshold=norm_threshold,
                                     merge_threshold=config.inference_merge_threshold)  # fmt: skip
        save_encoder(student, out / "encoder")
        sylber = {
            "encoder": "encoder",
            "norm_threshold": compressor.norm_threshold,
            "merge_threshold": compressor.merge_threshold,
            "compressor": asdict(compressor),  # a SyllableCompressorConfig over this encoder
            "frame_rate_hz": student.frame_rate_hz,
            "heldout_segments_per_second": summary["heldout_segments_per_second"],
        }
        (out / "sylber.json").write_text(json.dumps(sylber, indent=2) + "\n")
        metrics.write_summary(summary)
        metrics.plot(keys=("bootstrap_loss", "loss", "val_loss"), title=f"sylber ({Path(config.student).name})")
    return summary
