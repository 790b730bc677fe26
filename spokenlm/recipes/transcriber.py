"""Recipe `transcriber`: when the hybrid prompt reads Whisper's transcript instead of the CTC one.

    spokenlm train transcriber --config configs/transcriber.yaml

1. Take up to `dev_utterances` dev recordings from EACH manifest (the first in id-hash order), so a
   small real corpus (FSDD's isolated digits) weighs as much as the synthetic one.
2. Read each twice: the CTC compressor's transcript (with its word LM, as the bundle runs it) and the
   Whisper base's own greedy reading with its mean token log-probability (`spokenlm.transcriber`).
3. For every `min_logprob` of the grid, choose per recording as the bundle will
   (`choose_prompt_texts`) and score the chosen transcripts: the WER of each manifest's sample, and
   their mean (each corpus counts once, whatever its words). Keep the best mean.
4. Write OUT/transcriber.json (the TranscriberConfig with that threshold: `spokenlm bundle
   transcriber BUNDLE --from OUT`, or the speechlm recipe's `transcriber: OUT`) and metrics.json
   (every threshold's WERs, CTC alone, Whisper alone, the oracle choice, examples).

Nothing is trained: minutes of decoding on 2 cores, no checkpoint, no worker split.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spokenlm.transcriber import (
    TRANSCRIBER_FILE,
    TranscriberConfig,
    WhisperTranscriber,
    choose_prompt_texts,
    transcriber_config_to_json,
)


@dataclass(frozen=True, kw_only=True)
class TranscriberRecipeConfig:
    out_dir: str
    manifest: str | tuple[str, ...]
    compressor_dir: str  # the ctc-lm recipe's OUT/compressor (the CTC head with its word LM)
    encoder_base: str | None = None  # the frozen encoder the compressor reads (a known base) ...
    encoder_dir: str | None = None  # ... or a saved one: exactly one of the two
    encoder_overrides: dict = field(default_factory=dict)
    transcriber: TranscriberConfig = TranscriberConfig()  # min_logprob is what the grid replaces
    min_logprobs: tuple[float, ...] = (-0.1, -0.15, -0.2, -0.25, -0.3, -0.4, -0.5, -0.7, -1.0)
    dev_split: str = "dev"
    dev_utterances: int = 300  # per manifest
    max_duration_s: float = 30.0
    examples: int = 8

    def validate(self) -> None:
        from spokenlm.recipes.ctc_lm import check_encoder_source

        check_encoder_source("transcriber", self.encoder_base, self.encoder_dir)
        if not self.min_logprobs:
            raise ValueError("min_logprobs needs at least one value")
        for value in self.min_logprobs:
            dataclasses.replace(self.transcriber, min_logprob=value).validate()
        if not isinstance(self.dev_utterances, int) or self.dev_utterances < 1:
            raise ValueError(f"dev_utterances must be a positive int, got {self.dev_utterances!r}")


def train(config: TranscriberRecipeConfig) -> dict:
    import jiwer

    from spokenlm.recipes.ctc_lm import load_ctc_reader
    from spokenlm.speech import encode_chunks, join_chunks
    from spokenlm.train.data import AudioCache, id_hash_order, read_manifest
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
        utts = [u for u in read_manifest(path, splits=(config.dev_split,), tasks=("asr",))
                if u.labels.get("text") and u.duration_s <= config.max_duration_s]  # fmt: skip
        if utts:
            samples[path] = id_hash_order(utts)[: config.dev_utterances]
    if not samples:
        raise ValueError(f"{list(manifests)}: no asr utterances with a transcript in {config.dev_split!r}")

    encoder, compressor = load_ctc_reader(config)
    whisper = WhisperTranscriber(config.transcriber)
    audio = AudioCache()
    read: dict[str, dict] = {}
    for path, utts in samples.items():
        waves = [audio.get(u) for u in utts]
        with torch.inference_mode():
            ctc = join_chunks(compressor, encode_chunks(encoder, waves, max_chunk_s=config.max_duration_s),
                              [u.duration_s for u in utts]).transcripts  # fmt: skip
        read[path] = {"refs": [u.labels["text"] for u in utts], "ctc": ctc, "whisper": whisper.read(waves),
                      "durations": [u.duration_s for u in utts], "ids": [u.id for u in utts]}  # fmt: skip

    def picks(choose) -> dict[str, list[str]]:
        """Per manifest, the transcript `choose(reading)` takes for each recording."""
        return {path: choose(r) for path, r in read.items()}

    def wers(texts: dict[str, list[str]]) -> dict[str, float]:
        by_manifest = {path: jiwer.wer(read[path]["refs"], hyps) for path, hyps in texts.items()}
        return {"mean": sum(by_manifest.values()) / len(by_manifest), **by_manifest}

    def chosen(min_logprob: float):
        rule = dataclasses.replace(config.transcriber, min_logprob=min_logprob)
        return lambda r: choose_prompt_texts(r["whisper"], r["ctc"], r["durations"], rule)

    def oracle(r) -> list[str]:
        return [min((c, w.text), key=lambda t: jiwer.wer(ref, t)) for ref, c, w in zip(r["refs"], r["ctc"], r["whisper"])]

    rows = [{"setting": "ctc", **wers(picks(lambda r: r["ctc"]))},
            {"setting": "whisper (empty or looping readings: ctc)", **wers(picks(chosen(-math.inf)))}]  # fmt: skip
    best = None
    for value in config.min_logprobs:
        texts = picks(chosen(value))
        row = {"setting": f"min_logprob={value}", "min_logprob": value, **wers(texts)}
        share = [sum(t == w.text and t != c for t, w, c in zip(texts[path], r["whisper"], r["ctc"])) / len(r["refs"])
                 for path, r in read.items()]  # fmt: skip
        row["whisper_share"] = sum(share) / len(share)
        rows.append(row)
        print(f"transcriber: {row['setting']}: dev WER mean {row['mean']:.4f} ({row['whisper_share']:.0%} Whisper)")
        if best is None or row["mean"] < best["mean"]:
            best = row
    rows.append({"setting": "oracle", **wers(picks(oracle))})

    result = dataclasses.replace(config.transcriber, min_logprob=best["min_logprob"])
    (out / TRANSCRIBER_FILE).write_text(json.dumps(transcriber_config_to_json(result), indent=2) + "\n")
    first = next(iter(read.values()))
    picked = chosen(result.min_logprob)(first)
    metrics = {
        "stage": "transcriber",
        "compressor_dir": config.compressor_dir,
        "dev_split": config.dev_split,
        "dev_utterances": {path: len(utts) for path, utts in samples.items()},
        "min_logprob": result.min_logprob,
        "dev_wer": best["mean"],
        "dev_wer_ctc": rows[0]["mean"],
        "dev_wer_whisper": rows[1]["mean"],
        "dev_wer_oracle": rows[-1]["mean"],
        "rows": rows,
        "examples": [
            {"id": i, "ref": ref, "ctc": c, "whisper": w.text, "logprob": round(w.logprob, 3), "chosen": t}
            for i, ref, c, w, t in list(zip(first["ids"], first["refs"], first["ctc"], first["whisper"], picked))[: config.examples]
        ],  # fmt: skip
        "wall_minutes": round((time.monotonic() - started) / 60, 2),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
