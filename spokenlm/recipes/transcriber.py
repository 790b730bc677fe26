"""Recipe `transcriber`: how the prompt weighs Whisper's reading against the CTC head's.

    spokenlm train transcriber --config configs/transcriber.yaml

1. Take up to `dev_utterances` dev recordings from EACH manifest (the first in id-hash order), so a
   small real corpus (FSDD's isolated digits) weighs as much as the synthetic one.
2. Read each chunk as the bundle will (`spokenlm.speech.join_chunks` with a transcriber): the CTC
   compressor's transcript (with its word LM) and the Whisper base's greedy reading, each scored by
   both models (`spokenlm.transcriber`).
3. For every (`ctc_weight`, `length_bonus`, `lm_weight`) of the grid, choose per chunk as the bundle will and score
   the chosen transcripts: the WER of each manifest's sample, and their mean (each corpus counts once,
   whatever its words). Keep the best mean; a tie keeps the earlier grid point. With `beam_sizes`,
   steps 2-3 run once per Whisper beam size (each reads the chunks again) and the beam is picked
   with the rule; with `num_hypotheses`, so is how many of the beam's best readings the rule weighs
   (each beam reads its largest n once; a smaller n takes the readings ranked below it).
4. The gate (`confident_ctc`): for each share in `skip_fractions`, the threshold on `ctc_confidence`
   (under the kept rule) above which that share of the dev chunks lies; those chunks take the CTC
   transcript without Whisper. Keep the largest share whose mean WER is at most `max_wer_rise`
   above the ungated rule's: that much accuracy for Whisper's time. (Simulated on readings of every
   chunk: in the bundle a skipped chunk's packed neighbours share their windows with others.)
5. Write OUT/transcriber.json (the TranscriberConfig with that pick: `spokenlm bundle set BUNDLE
   --transcriber OUT`, or the speechlm recipe's `transcriber: OUT`) and metrics.json (every grid
   point's WERs, CTC alone, Whisper alone, the oracle choice that knows the reference, examples), and
   readings.jsonl (every chunk's readings with their scores, for fitting another rule offline).

Nothing is trained: minutes of decoding on 2 cores, no checkpoint, no worker split.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from spokenlm.transcriber import (
    TRANSCRIBER_FILE,
    ChunkReadings,
    TranscriberConfig,
    WhisperTranscriber,
    choose_prompt_texts,
    transcriber_config_to_json,
)


READINGS_FILE = "readings.jsonl"


@dataclass(frozen=True, kw_only=True)
class TranscriberRecipeConfig:
    out_dir: str
    manifest: str | tuple[str, ...]
    compressor_dir: str  # the ctc-lm recipe's OUT/compressor (the CTC head with its word LM)
    encoder_base: str | None = None  # the frozen encoder the compressor reads (a known base) ...
    encoder_dir: str | None = None  # ... or a saved one: exactly one of the two
    encoder_overrides: dict = field(default_factory=dict)
    transcriber: TranscriberConfig = TranscriberConfig()  # ctc_weight, length_bonus and lm_weight are what the grid replaces
    ctc_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    length_bonuses: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
    lm_weights: tuple[float, ...] = (0.0,)  # > 0 needs the compressor's word LM (a ctc-lm compressor has one)
    skip_fractions: tuple[float, ...] = (0.0,)  # shares of dev chunks the gate would keep from Whisper (0: no gate)
    beam_sizes: tuple[int, ...] = ()  # Whisper's beam, picked with the rule (each re-reads dev); empty: transcriber.beam_size
    num_hypotheses: tuple[int, ...] = ()  # how many of the beam's readings the rule weighs (those > the beam skipped); empty: transcriber's
    max_wer_rise: float = 0.0  # dev WER (absolute) the gate may give up for the Whisper time it saves
    dev_split: str = "dev"
    dev_utterances: int = 300  # per manifest
    max_duration_s: float = 30.0
    examples: int = 8

    def validate(self) -> None:
        from spokenlm.recipes.ctc_lm import check_encoder_source

        check_encoder_source("transcriber", self.encoder_base, self.encoder_dir)
        if not self.ctc_weights or not self.length_bonuses or not self.lm_weights:
            raise ValueError("ctc_weights, length_bonuses and lm_weights need at least one value each")
        for rule in self.rules():
            rule.validate()
        for beam in self.beam_sizes:
            if not (isinstance(beam, int) and 1 <= beam <= 16):
                raise ValueError(f"beam_sizes must be ints in [1, 16], got {list(self.beam_sizes)!r}")
        for n in self.num_hypotheses:
            if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 16):
                raise ValueError(f"num_hypotheses must be ints in [1, 16], got {list(self.num_hypotheses)!r}")
        if not any(n <= beam for n in self.hypotheses() for beam in self.beams()):
            raise ValueError(f"num_hypotheses {list(self.hypotheses())}: none fits a beam of {list(self.beams())}")
        if self.transcriber.confident_ctc is not None:
            raise ValueError("transcriber.confident_ctc is what the recipe picks (skip_fractions, max_wer_rise): leave it out")
        if not self.skip_fractions or not all(_is_share(q) for q in self.skip_fractions):
            raise ValueError(f"skip_fractions must be numbers in [0, 1), at least one, got {list(self.skip_fractions)!r}")
        if not _is_share(self.max_wer_rise):
            raise ValueError(f"max_wer_rise must be a number in [0, 1), got {self.max_wer_rise!r}")
        if not isinstance(self.dev_utterances, int) or self.dev_utterances < 1:
            raise ValueError(f"dev_utterances must be a positive int, got {self.dev_utterances!r}")
        if not 1.0 <= self.max_duration_s <= 30.0:
            raise ValueError(f"max_duration_s must be within [1, 30] (a transcriber reads 30-s chunks), got {self.max_duration_s}")

    def beams(self) -> tuple[int, ...]:
        return self.beam_sizes or (self.transcriber.beam_size,)

    def hypotheses(self) -> tuple[int, ...]:
        return self.num_hypotheses or (self.transcriber.num_hypotheses,)

    def rules(self) -> list[TranscriberConfig]:
        """Every grid point, in the order the recipe tries them (a tie keeps the earlier)."""
        beam = max(self.beams())  # each rule is validated against the widest beam; `train` pairs them
        return [dataclasses.replace(self.transcriber, ctc_weight=weight, length_bonus=bonus, lm_weight=lm, beam_size=beam,
                                    num_hypotheses=min(max(self.hypotheses()), beam))
                for lm in self.lm_weights for weight in self.ctc_weights for bonus in self.length_bonuses]  # fmt: skip


def _is_share(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0


def train(config: TranscriberRecipeConfig) -> dict:
    import jiwer

    from spokenlm.recipes.ctc_lm import load_ctc_reader
    from spokenlm.speech import encode_chunks, join_chunks
    from spokenlm.train.data import AudioCache, transcribed_sample
    from spokenlm.train.loop import world_size

    config.validate()
    if world_size() > 1:
        raise ValueError("transcriber has no training loop to split: run it without --workers")
    started = time.monotonic()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifests = (config.manifest,) if isinstance(config.manifest, str) else tuple(config.manifest)
    samples: dict[str, list] = {}
    for path in manifests:
        if utts := transcribed_sample(path, config.dev_split, config.dev_utterances, config.max_duration_s):
            samples[path] = utts
    if not samples:
        raise ValueError(f"{list(manifests)}: no asr utterances with a transcript in {config.dev_split!r}")

    encoder, compressor = load_ctc_reader(config)
    if max(config.lm_weights) > 0 and compressor.lm_path is None:
        raise ValueError(f"lm_weights {list(config.lm_weights)}: the compressor in {config.compressor_dir} has no word LM")
    audio = AudioCache()
    refs = {path: [u.labels["text"] for u in utts] for path, utts in samples.items()}
    with torch.inference_mode():  # the encoder's pass is the same for every beam: once
        encoded = {path: encode_chunks(encoder, [audio.get(u) for u in utts], max_chunk_s=config.max_duration_s, keep_audio=True)
                   for path, utts in samples.items()}  # fmt: skip
    by_beam: dict[int, dict[str, list[list[ChunkReadings]]]] = {}  # Whisper's beam -> manifest -> readings
    for beam in config.beams():
        widest = max([n for n in config.hypotheses() if n <= beam], default=1)  # the smaller n are its first readings
        whisper = WhisperTranscriber(dataclasses.replace(config.transcriber, beam_size=beam, num_hypotheses=widest))
        with torch.inference_mode():
            by_beam[beam] = {path: join_chunks(compressor, encoded[path], [u.duration_s for u in utts], transcriber=whisper).readings
                             for path, utts in samples.items()}  # fmt: skip

    def wers(pick, readings) -> dict[str, float]:
        """WER per manifest of the transcripts `pick(ref, chunk)` takes from `readings`, and their mean
        (every recording is one chunk: max_duration_s <= 30)."""
        by_manifest = {path: jiwer.wer(refs[path], [pick(ref, chunks[0]) for ref, chunks in zip(refs[path], rs)])
                       for path, rs in readings.items()}  # fmt: skip
        return {"mean": sum(by_manifest.values()) / len(by_manifest), **by_manifest}

    def whisper_share(rule: TranscriberConfig, readings) -> float:
        """Of the chunks where Whisper offers a reading other than the CTC one, the share the rule gives it."""
        differ = [c for rs in readings.values() for chunks in rs for c in chunks if len(c.candidates(rule)) > 1]
        return sum(c.choose(rule) != c.ctc for c in differ) / max(len(differ), 1)

    first_beam = next(iter(by_beam))
    rows = [{"setting": "ctc", **wers(lambda ref, c: c.ctc, by_beam[first_beam])}]
    best, whisper_rows = None, {}
    for beam, readings in by_beam.items():
        whisper_rows[beam] = {"setting": f"whisper, beam {beam} (empty readings: ctc)", "beam_size": beam,
                              **wers(lambda ref, c: c.whisper or c.ctc, readings)}  # fmt: skip
        rows.append(whisper_rows[beam])
        for rule in (dataclasses.replace(r, beam_size=beam, num_hypotheses=n)
                     for n in config.hypotheses() if n <= beam for r in config.rules()):  # fmt: skip
            setting = {"beam_size": beam, "num_hypotheses": rule.num_hypotheses, "ctc_weight": rule.ctc_weight,
                       "length_bonus": rule.length_bonus, "lm_weight": rule.lm_weight}  # fmt: skip
            row = {"setting": " ".join(f"{k}={v}" for k, v in setting.items()), **setting,
                   **wers(lambda ref, c, rule=rule: c.choose(rule), readings), "whisper_share": whisper_share(rule, readings)}  # fmt: skip
            rows.append(row)
            print(f"transcriber: {row['setting']}: dev WER mean {row['mean']:.4f} ({row['whisper_share']:.0%} Whisper where they differ)")
            if best is None or row["mean"] < best["mean"]:
                best = row
    readings = by_beam[best["beam_size"]]
    rule = dataclasses.replace(config.transcriber, ctc_weight=best["ctc_weight"], length_bonus=best["length_bonus"],
                               lm_weight=best["lm_weight"], beam_size=best["beam_size"], num_hypotheses=best["num_hypotheses"])  # fmt: skip
    gate = None
    for row in gate_rows(readings, rule, config.skip_fractions, lambda pick: wers(pick, readings)):
        print(f"transcriber: {row['setting']}: dev WER mean {row['mean']:.4f} ({row['skipped']:.0%} of chunks skipped)")
        rows.append(row)
        if row["mean"] <= best["mean"] + config.max_wer_rise and (gate is None or row["skip"] > gate["skip"]):
            gate = row
    # a bound, not a rule: whichever reading the kept rule weighs is nearest the reference
    rows.append({"setting": "oracle", **wers(lambda ref, c: min((t for t, _ in c.candidates(rule)), key=lambda t: jiwer.wer(ref, t or "-")),
                                             readings)})  # fmt: skip

    result = dataclasses.replace(rule, confident_ctc=None if gate is None else gate["confident_ctc"])
    (out / TRANSCRIBER_FILE).write_text(json.dumps(transcriber_config_to_json(result), indent=2) + "\n")
    first = next(iter(samples))
    picked = choose_prompt_texts(readings[first], result)
    metrics = {
        "stage": "transcriber",
        "compressor_dir": config.compressor_dir,
        "dev_split": config.dev_split,
        "dev_utterances": {path: len(utts) for path, utts in samples.items()},
        "ctc_weight": result.ctc_weight,
        "length_bonus": result.length_bonus,
        "lm_weight": result.lm_weight,
        "beam_size": result.beam_size,
        "num_hypotheses": result.num_hypotheses,
        "confident_ctc": result.confident_ctc,
        "dev_skipped": 0.0 if gate is None else gate["skipped"],
        "dev_wer": best["mean"] if gate is None else gate["mean"],
        "dev_wer_ungated": best["mean"],
        "dev_wer_ctc": rows[0]["mean"],
        "dev_wer_whisper": whisper_rows[result.beam_size]["mean"],
        "dev_wer_oracle": rows[-1]["mean"],
        "rows": rows,
        "examples": [
            {"id": u.id, "ref": ref, "ctc": " ".join(c.ctc for c in chunks), "whisper": " ".join(c.whisper for c in chunks),
             "chosen": text}
            for u, ref, chunks, text in list(zip(samples[first], refs[first], readings[first], picked))[: config.examples]
        ],  # fmt: skip
        "wall_minutes": round((time.monotonic() - started) / 60, 2),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (out / READINGS_FILE).open("w") as f:  # every chunk's readings and scores: a new rule is fitted without decoding again
        for path, utts in samples.items():
            for u, ref, chunks in zip(utts, refs[path], readings[path]):
                f.write(json.dumps({"manifest": path, "id": u.id, "ref": ref, "chunks": [dataclasses.asdict(c) for c in chunks]}) + "\n")
    return metrics


def gate_rows(readings: dict[str, list[list[ChunkReadings]]], rule: TranscriberConfig, fractions: Sequence[float],
              wers: Callable[[Callable[[str, ChunkReadings], str]], dict[str, float]]) -> list[dict]:  # fmt: skip
    """One row per share q > 0 of `fractions`: the `confident_ctc` threshold that keeps the surest q
    of the dev chunks from Whisper, the share it skips (ties may add some; a threshold is at least
    -1000, so chunks with no CTC path are never skipped), and the WERs (`wers`, of a
    `pick(ref, chunk)`) of the transcripts the rule then takes."""
    from spokenlm.transcriber import ctc_confidence

    chunks = [c for rs in readings.values() for recording in rs for c in recording]
    confidence = {id(c): ctc_confidence(c.ctc_scores, c.duration_s, rule) for c in chunks}
    surest = sorted(confidence.values(), reverse=True)
    rows = []
    for q in sorted(set(fractions)):
        if q <= 0 or not surest:
            continue
        threshold = min(max(surest[max(math.ceil(q * len(surest)) - 1, 0)], -1000.0), 0.0)  # TranscriberConfig's range
        sure = {key for key, value in confidence.items() if value >= threshold}
        rows.append({"setting": f"skip {q:.0%} (confident_ctc={threshold:.3f})", "skip": q, "confident_ctc": threshold,
                     "skipped": len(sure) / len(chunks),
                     **wers(lambda ref, c, sure=sure: c.ctc if id(c) in sure else c.choose(rule))})  # fmt: skip
    return rows
