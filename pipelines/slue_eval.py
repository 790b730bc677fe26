"""`spokenlm eval slue`: batch SLUE evaluation on Ray Data — resumable, fault tolerant, scored per stage.

SLUE (Shon et al., 2022, §3-4) and SLUE Phase-2 (Shon et al., 2023, §3-4): the official downloads are
read by spokenlm.slue.readers and scored by spokenlm.slue.metrics (slue-toolkit's definitions).

    spokenlm eval slue --suite {voxpopuli,voxceleb,hvb,ted,sqa5,nel} --data [FORMAT:]PATH --model BUNDLE
                       --out OUT [--split dev] [--skip-bad] [--workers N] [--batch-size B] ...

--data is the official download (a directory, or slue:DIR), or for voxpopuli and voxceleb the same
utterances held another way (spokenlm.slue.sources): hf:DIR (a `save_to_disk` directory or parquet
files), lhotse:CUTS.jsonl.gz, kaldi:DATA_DIR or manifest:manifest.jsonl; a bare path is detected.

The job, in order:
1. read the split; the official download's missing audio files are listed (stderr, metrics.json) and
   left out, not fatal; another format's bad rows (missing audio, no text, a segment past its
   recording, a bad label) stop the job with one line naming the first, unless --skip-bad, which
   leaves them out and counts them (metrics.json "missing_audio" / "skipped", the summary line);
2. skip ids already in OUT/predictions.jsonl: a rerun after an interruption resumes where it stopped;
3. Ray Data: `from_items` over the rest -> `map_batches(SlueWorker)` on an actor pool of N workers,
   each loading the bundle once;
4. the driver appends every row to OUT/predictions.jsonl as its batch completes (flushed per row,
   written once per id whatever Ray delivers twice), with a tqdm bar;
5. when every id is done: OUT/submission.tsv, OUT/metrics.json and the stage-wise report (report.py).

Failures. Pool actors run with `max_restarts` / `max_task_retries`: a worker that dies mid-batch is
restarted and its batch runs again; rows a retried batch repeats are dropped by id on write. Every
utterance is computed on its own (its chunks one encoder batch, its tasks one LLM batch), so its
prediction does not depend on which utterances shared its Ray batch — encoders with group norm and
left-padded decoding are not batch-invariant — and a resumed or retried run writes exactly the rows an
uninterrupted one would. A file that cannot be decoded becomes a row with `error` set: listed in
metrics.json and scored as an empty prediction.

What each suite runs: voxpopuli asr + ner; voxceleb asr + sentiment; hvb dialog-act; ted summarize;
sqa5 qa on the document audio with the question's *text* (normalized_question_text; the bundle's
`qa` task takes text questions), the answer timed in the audio by aligning it to the CTC transcript;
nel ner, entities timed by the CTC alignment (SpeechLM.run's entity and answer times).

A worker calls `SpeechLM.run` once per utterance and stores each task's record as it is
(`RunOutput.to_record`); scoring and the submission file are the library's (spokenlm.slue.scoring,
spokenlm.slue.submission), and so is the row layout they read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from pipelines.stages import _actor_device, _set_threads, ray_session
from spokenlm.slue.scoring import (
    SUITE_TASKS,
    entities,
    entity_segments,
    first_record,
    json_safe,
    prediction,
    score,
    ted_reference,
)
from spokenlm.slue.submission import write_submission

PREDICTIONS = "predictions.jsonl"
SUBMISSION = "submission.tsv"
METRICS = "metrics.json"
RUN_MANIFEST = "run.json"  # what OUT holds predictions of: a rerun must match it
ROW_FORMAT = 2  # 2: one record per task (spokenlm.slue.scoring); 1 had flat per-task fields


@dataclass(frozen=True, kw_only=True)
class SlueEvalConfig:
    suite: str
    """One of SUITE_TASKS: which SLUE corpus and tasks."""

    data_dir: str
    """Where the official download was unpacked (the directory holding slue-voxpopuli/, or that one),
    or "FORMAT:PATH" of another format (hf, lhotse, kaldi, manifest; spokenlm.slue.sources)."""

    model_dir: str
    """A spokenlm bundle."""

    out_dir: str
    """predictions.jsonl, submission.tsv, metrics.json, report.md/json and plots go here."""

    split: str = "dev"
    """fine-tune, dev (labelled evaluation split) or test (blind: predictions only)."""

    skip_bad: bool = False
    """Leave bad rows of a non-TSV source out and count them, instead of stopping at the first."""

    workers: int = 1
    """Actors in the Ray Data pool; each holds the whole bundle."""

    batch_size: int = 4
    """Utterances per actor call (each is still computed on its own; see the module docstring)."""

    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0

    max_restarts: int = 3
    """Restarts of a pool actor that died; its unfinished batch is retried (max_task_retries)."""

    max_task_retries: int = 3

    generation: Any = None
    """spokenlm.lm.GenerationConfig; None: `default_generation()` (greedy, 128 new tokens)."""

    limit: int | None = None
    """Stop after writing this many new rows (a partial run; rerun to resume). None: run everything."""

    compare_uncompressed: bool = False
    """Also decode ASR from the *uncompressed* encoder frames, for the report's compression stage
    (only where the compressor keeps the encoder's dim: CTC, syllable)."""

    probe_utterances: int = 0
    """> 0: layer probes on this many utterances for the report's encoder stage (needs a CTC head)."""

    report: bool = True
    """Write report.md / report.json / PNGs at the end."""

    def validate(self) -> None:
        from spokenlm.slue.readers import SPLITS

        if self.suite not in SUITE_TASKS:
            raise ValueError(f"unknown SLUE suite {self.suite!r}; expected one of {', '.join(SUITE_TASKS)}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; expected one of {', '.join(SPLITS)}")
        for name in ("workers", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_cpus_per_worker < 0 or self.num_gpus_per_worker < 0:
            raise ValueError("num_cpus_per_worker and num_gpus_per_worker must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")
        if self.probe_utterances < 0 or self.probe_utterances == 1:
            raise ValueError(
                f"probe_utterances must be 0 or >= 2 (one fitted, one held out), got {self.probe_utterances}"
            )


@dataclass(frozen=True)
class EvalSummary:
    complete: bool  # every utterance with audio has a row; metrics and report were written
    total: int  # utterances with audio
    done: int  # of those, rows in predictions.jsonl
    written: int  # rows this call added
    missing_audio: tuple[str, ...]  # ids whose audio file is absent
    failed: tuple[str, ...]  # ids whose audio could not be decoded
    out_dir: Path
    metrics: dict | None = None
    skipped: tuple[str, ...] = ()  # "where: id: why" of rows the reader left out (--skip-bad, mixed sentiment)


def default_generation():
    """Greedy decoding, up to 128 new tokens: the job's default GenerationConfig."""
    from spokenlm.lm import GenerationConfig

    return GenerationConfig(max_new_tokens=128)


# --- the pool worker -------------------------------------------------------------------------------


class SlueWorker:
    """One Ray Data pool actor: loads the bundle once, maps a batch of items to prediction rows."""

    def __init__(self, *, model_dir: str, suite: str, generation, compare_uncompressed: bool = False):
        from spokenlm.model import load_bundle

        _set_threads()
        self.model = load_bundle(model_dir).to(_actor_device())
        self.suite, self.generation = suite, generation
        self.uncompressed = compare_uncompressed and self.model.compressor.output_dim == self.model.encoder.output_dim

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        rows = [self.predict(json.loads(item)) for item in batch["item"]]
        return {"id": np.array([r["id"] for r in rows]), "row": np.array([json.dumps(r) for r in rows])}

    def predict(self, item: dict) -> dict:
        """One utterance's row. Bad input — undecodable or too-short audio, an empty SQA question —
        (AudioError, SlueDataError, any ValueError) gives a row with `error`; other exceptions
        (out of memory, a dead GPU) fail the task, which Ray retries."""
        row: dict = {"id": item["id"], "suite": self.suite, "error": None}
        try:
            return row | self._predict(item)
        except ValueError as e:  # AudioError and SlueDataError are ValueErrors
            return row | {"error": f"{type(e).__name__}: {e}"}

    def _predict(self, item: dict) -> dict:
        from spokenlm.audio import MIN_DURATION_S, SAMPLE_RATE, AudioError
        from spokenlm.corpora import AudioRef, load_ref
        from spokenlm.tasks import TaskRequest

        t0 = time.perf_counter()
        audio = AudioRef.from_dict(item["audio"])
        wav = load_ref(audio)
        if wav.shape[-1] < MIN_DURATION_S * SAMPLE_RATE:  # a cut past the end of its recording
            raise AudioError(f"clip is {wav.shape[-1] / SAMPLE_RATE:.3f} s long, shorter than {MIN_DURATION_S} s")
        load_ms = (time.perf_counter() - t0) * 1e3
        requests = [
            TaskRequest(task=t, question=item.get("question") if t == "qa" else None) for t in SUITE_TASKS[self.suite]
        ]
        outputs = self.model.run([wav], requests, self.generation, recording=[0] * len(requests))
        row: dict = {
            "records": {o.request.task: o.with_audio(path=audio.describe(), load_ms=load_ms).to_record() for o in outputs},
            "frame_rate_hz": self.model.encoder.frame_rate_hz,
        }
        if self.uncompressed:  # the LLM on every encoder frame (a hybrid-prompt LLM still reads the CTC text)
            (asr,) = self.model.run([wav], [TaskRequest(task="asr")], self.generation, uncompressed=True)
            row["uncompressed_text"] = asr.result.text
        return row


# --- items and rows --------------------------------------------------------------------------------


def _item(suite: str, record) -> dict:
    """The plain, JSON-able work item of one record: what a worker needs and nothing more (where its
    audio is: a file, a cut of one, or a row of an Arrow/parquet table; spokenlm.corpora.AudioRef)."""
    from spokenlm.slue.readers import audio_ref

    item = {"id": record.id, "audio": audio_ref(record).to_dict()}
    if suite == "sqa5":
        item["question"] = record.question_text
    return item


def load_predictions(path: Path) -> dict[str, dict]:
    """Rows of predictions.jsonl by id (first row of an id wins).

    Rows are appended and flushed one at a time, so only the last line can be torn (the writer was
    killed mid-row): it is cut off the file and appending resumes on a clean line. A bad line
    anywhere else is not ours to drop: SlueDataError names it.
    """
    from spokenlm.slue.readers import SlueDataError

    rows: dict[str, dict] = {}
    if not path.is_file():
        return rows
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    good_end = 0
    for n, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            ok = line.endswith(b"\n") and isinstance(row, dict) and isinstance(row.get("id"), str)
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok and n < len(lines):
            raise SlueDataError(f"'{path}' line {n} is not a prediction row; remove it (or the file) and rerun")
        if not ok:
            break
        rows.setdefault(row["id"], row)
        good_end += len(line)
    if good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return rows


def _check_manifest(out: Path, config: SlueEvalConfig, generation) -> None:
    """OUT holds predictions of one suite, split, model and decoding setup; refuse to mix another run in."""
    manifest = {
        "suite": config.suite,
        "split": config.split,
        "model": str(Path(config.model_dir).resolve()),
        "generation": asdict(generation),
        "row_format": ROW_FORMAT,
    }
    path = out / RUN_MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        clash = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
        if clash:
            what = ", ".join(f"{k} {a!r} (now {b!r})" for k, (a, b) in clash.items())
            raise ValueError(f"{out} already holds predictions of another run: {what}; use another --out")
    else:
        path.write_text(json.dumps(manifest, indent=2) + "\n")


# --- the job ---------------------------------------------------------------------------------------


def run_slue_eval(
    config: SlueEvalConfig,
    *,
    worker: type = SlueWorker,
    on_row: Callable[[dict], None] | None = None,
) -> EvalSummary:
    """Run (or resume) one SLUE evaluation; see the module docstring. `on_row` sees each row the
    driver writes, after it is flushed."""
    from spokenlm.slue.sources import read_slue_data

    config.validate()
    split = read_slue_data(config.suite, config.data_dir, config.split, skip_bad=config.skip_bad)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generation = config.generation or default_generation()
    _check_manifest(out, config, generation)
    runnable = split.records_with_audio()
    missing = tuple(m.id for m in split.missing_audio)
    if missing:
        shown = ", ".join(str(m.path) for m in split.missing_audio[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        print(f"spokenlm eval: {len(missing)} audio files are missing and are skipped: {shown}{more}", file=sys.stderr)

    path = out / PREDICTIONS
    done = load_predictions(path)
    ids = {r.id for r in runnable}
    todo = [r for r in runnable if r.id not in done]
    written = 0
    if todo:
        items = [_item(config.suite, r) for r in todo]
        written = _run_pool(config, generation, items, path, done, ids, worker, on_row)
    finished = sum(1 for r in runnable if r.id in done)
    failed = tuple(r.id for r in runnable if r.id in done and done[r.id].get("error"))
    summary = EvalSummary(
        complete=finished == len(runnable), total=len(runnable), done=finished, written=written,
        missing_audio=missing, failed=failed, out_dir=out, skipped=split.skipped,
    )  # fmt: skip
    if not summary.complete:
        return summary

    rows = {r.id: done[r.id] for r in runnable}
    write_submission(out / SUBMISSION, config.suite, runnable, rows)
    metrics = score(config.suite, split, rows, model_dir=config.model_dir)
    (out / METRICS).write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    if config.report:
        from pipelines.report import write_report

        probes = _probes(config, split) if config.probe_utterances else "not requested (--probe-utterances)"
        views = [_view(config.suite, r, rows[r.id], blind=split.blind) for r in runnable]
        write_report(out, suite=config.suite, split=config.split, model=config.model_dir,
                     metrics=metrics, utterances=views, probes=probes)  # fmt: skip
    return replace(summary, metrics=metrics)


def _run_pool(config, generation, items, path, done, ids, worker, on_row) -> int:
    """Ray Data over `items`; append each new row to `path` as its batch arrives. Rows written."""
    import ray
    from tqdm import tqdm

    with ray_session(math.ceil(max(os.cpu_count() or 1, config.workers * config.num_cpus_per_worker + 1))):
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours below counts utterances, not blocks
        ctx.print_on_execution_start = False
        items_ds = ray.data.from_items(
            [{"id": it["id"], "item": json.dumps(it)} for it in items],
            override_num_blocks=max(1, math.ceil(len(items) / config.batch_size)),
        )
        with warnings.catch_warnings():
            # Ray 2.60 names no parameter for actor restarts, so they go in the deprecated
            # **ray_remote_args. Ray Data's default is unbounded (-1); a bound makes a worker that dies
            # on every attempt fail the job (a rerun resumes) instead of looping forever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
            ds = items_ds.map_batches(
                worker,
                batch_size=config.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=config.workers),
                fn_constructor_kwargs={
                    "model_dir": str(config.model_dir), "suite": config.suite,
                    "generation": generation, "compare_uncompressed": config.compare_uncompressed,
                },  # fmt: skip
                num_cpus=config.num_cpus_per_worker,
                num_gpus=config.num_gpus_per_worker,
                max_restarts=config.max_restarts,
                max_task_retries=config.max_task_retries,
            )
        written = 0
        bar = tqdm(total=len(ids), initial=len(ids & done.keys()), unit="utt", desc=f"slue {config.suite}")
        with path.open("a", encoding="utf-8") as f, bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for utt, text in zip(batch["id"], batch["row"]):
                    utt = str(utt)
                    if utt in done:  # a retried batch delivered again
                        continue
                    row = json.loads(str(text))
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    done[utt] = row
                    written += 1
                    bar.update(1)
                    if on_row is not None:
                        on_row(row)
                    if config.limit is not None and written >= config.limit:
                        return written
        return written


# --- the report's view of each utterance -----------------------------------------------------------


def _view(suite: str, record, row: dict, *, blind: bool = False):
    """What report.py needs of one utterance: transcript reference, stage outputs, task error
    (0 with no reference: a blind split)."""
    from pipelines.report import UtteranceView
    from spokenlm.slue import metrics as M

    def wer(ref: str, hyp: str | None) -> float:
        return M.word_error_rate([ref], [hyp or ""]).wer if ref.split() else 0.0

    def tags(entities) -> str:
        return "; ".join(f"{t}: {p}" for t, p in entities) or "no entities"

    transcript, asr, reference, hypothesis, error = None, None, "", "", 0.0
    summary, answer = prediction(row, "summarize", "summary"), prediction(row, "qa", "answer")
    if blind:
        asr = prediction(row, "asr", "text")
        reference, hypothesis = "(blind split)", asr or summary or answer or ""
    elif suite == "voxpopuli":
        transcript = M.normalize_asr_text(record.normalized_text or "")
        asr = M.normalize_asr_text(prediction(row, "asr", "text") or "")
        error = wer(transcript, asr)
        reference = f"{transcript} [{tags(record.entities() or [])}]"
        hypothesis = f"{asr} [{tags(entities(row))}]"
    elif suite == "voxceleb":
        transcript, asr = record.normalized_text or "", prediction(row, "asr", "text") or ""
        error = wer(transcript, asr)
        sentiment = prediction(row, "sentiment", "sentiment")
        reference, hypothesis = f"{transcript} [{record.sentiment}]", f"{asr} [{sentiment}]"
    elif suite == "hvb":
        transcript = record.text
        ref, hyp = set(record.dialog_acts or ()), set(prediction(row, "dialog-act", "dialog_acts") or ())
        error = 100.0 * (1 - len(ref & hyp) / len(ref | hyp)) if ref | hyp else 0.0
        reference, hypothesis = ", ".join(sorted(ref)) or "(none)", ", ".join(sorted(hyp)) or "(none)"
    elif suite == "ted":
        transcript = record.transcript
        reference, hypothesis = ted_reference(record), summary or ""
        error = 100.0 - M.rouge_scores([reference], [hypothesis]).rougeL
    elif suite == "sqa5":
        transcript = record.document_text
        span = prediction(row, "qa", "answer_span_s")
        f1 = M.sqa_frame_f1([record.answer_spans], [tuple(span) if span else None]).frame_f1
        error = 100.0 - f1
        reference = "; ".join(f"{a.answer} @ {a.start_s:.2f}-{a.end_s:.2f}s" for a in record.answer_spans or ())
        hypothesis = f"{answer or ''}" + (f" @ {span[0]:.2f}-{span[1]:.2f}s" if span else " (not located)")
    elif suite == "nel":
        transcript = " ".join(w.word for w in record.words if w.word)
        error = 100.0 - M.nel_scores([record], {record.id: entity_segments(row)}).frame.f1
        reference = "; ".join(f"{e.phrase} @ {e.start_s:.2f}-{e.end_s:.2f}s" for e in record.entities or ()) or "(none)"
        timed = [e for e in prediction(row, "ner", "entities") or () if e.get("start_s") is not None]
        hypothesis = "; ".join(f"{e['text']} @ {e['start_s']:.2f}-{e['end_s']:.2f}s" for e in timed) or "(none)"
    if row.get("error"):
        hypothesis = f"(failed: {row['error']})"
    shared = first_record(row)  # duration, CTC text, token rate and timing are every task's
    return UtteranceView(
        id=record.id,
        duration_s=shared.get("duration_s"),
        transcript=transcript or None,
        ctc_text=shared.get("ctc_text"),
        asr_text=asr,
        uncompressed_text=row.get("uncompressed_text"),
        tokens_per_second=shared.get("tokens_per_second"),
        frame_rate_hz=row.get("frame_rate_hz"),
        timing_ms=shared.get("timing_ms") or {},
        reference=reference,
        hypothesis=hypothesis,
        error=error,
        failed=row.get("error"),
    )


def _probes(config: SlueEvalConfig, split):
    """Layer probes on the first utterances that have a transcript, or the reason there are none."""
    from pipelines.report import probe_encoder
    from spokenlm.audio import AudioError
    from spokenlm.corpora import AudioRef, load_ref
    from spokenlm.slue.readers import SlueDataError

    utterances = []
    for record in split.records_with_audio():
        view = _view(config.suite, record, {"id": record.id}, blind=split.blind)
        if not view.transcript:
            continue
        try:
            wav = load_ref(AudioRef.from_dict(_item(config.suite, record)["audio"]))
        except (AudioError, SlueDataError):
            continue
        utterances.append((wav, view.transcript.lower()))
        if len(utterances) == config.probe_utterances:
            break
    try:
        return probe_encoder(config.model_dir, utterances)
    except ValueError as e:
        return f"skipped: {e}"


# --- command line ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from spokenlm.slue.readers import DEFAULT_SPLIT, SPLITS

    parser = argparse.ArgumentParser(prog="spokenlm eval", description="evaluate a bundle on a benchmark")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True)
    slue = benchmarks.add_parser("slue", help="SLUE / SLUE Phase-2 on Ray Data", description=__doc__.split("\n\n")[0])
    slue.add_argument("--suite", required=True, choices=tuple(SUITE_TASKS))
    slue.add_argument("--data", required=True, metavar="[FORMAT:]PATH",
                      help="the official SLUE download's directory, or (voxpopuli, voxceleb) hf:DIR, lhotse:FILE, "
                      "kaldi:DIR or manifest:FILE; a bare path is detected")
    slue.add_argument("--skip-bad", action="store_true",
                      help="leave bad rows (missing audio, no text, a segment past its recording) out and count "
                      "them, instead of stopping at the first")
    slue.add_argument("--model", help="a spokenlm bundle directory (default: models/default, else the best "
                      "trained part, else an untrained one: spokenlm.demo.default_bundle)")
    slue.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    slue.add_argument("--split", choices=SPLITS, default=DEFAULT_SPLIT)
    slue.add_argument("--workers", type=int, default=1, help="actors in the Ray Data pool")
    slue.add_argument("--batch-size", type=int, default=4, help="utterances per actor call")
    slue.add_argument("--num-cpus-per-worker", type=float, default=1.0)
    slue.add_argument("--num-gpus-per-worker", type=float, default=0.0)
    slue.add_argument("--max-restarts", type=int, default=3, help="restarts of a pool actor that died")
    slue.add_argument("--strategy", choices=("greedy", "beam"), default="greedy")
    slue.add_argument("--num-beams", type=int, default=4)
    slue.add_argument("--max-new-tokens", type=int, default=128)
    slue.add_argument("--limit", type=int, help="stop after this many new utterances (rerun to resume)")
    slue.add_argument("--compare-uncompressed", action="store_true",
                      help="also decode ASR from uncompressed encoder frames (report: compression stage)")
    slue.add_argument("--probe-utterances", type=int, default=0,
                      help="layer probes on this many utterances (report: encoder stage; needs a CTC head)")
    slue.add_argument("--no-report", action="store_true", help="skip report.md / report.json / plots")
    return parser


def eval_main(argv: list[str] | None = None) -> int:
    """`spokenlm eval ...`: argv is what follows `eval` (e.g. ["slue", "--suite", "voxpopuli", ...]).
    Exit status 0 when done (or stopped at --limit), 2 for bad arguments, data or bundle."""
    from spokenlm.lm import GenerationConfig
    from spokenlm.slue.readers import SlueDataError

    args = _parser().parse_args(argv)
    if args.model is None:
        from spokenlm.demo import default_bundle, default_bundle_note

        args.model = str(default_bundle(on_build=lambda path: print(f"building an untrained demo bundle in {path} ...",
                                                                    file=sys.stderr)))  # fmt: skip
        note = default_bundle_note(args.model)
        print(f"spokenlm eval: model {args.model}" + (f"\nNOTE: {note}" if note else ""), file=sys.stderr)
    try:
        generation = GenerationConfig(
            strategy=args.strategy, max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams if args.strategy == "beam" else 1,
        )  # fmt: skip
        generation.validate()
        config = SlueEvalConfig(
            suite=args.suite, data_dir=args.data, model_dir=args.model, out_dir=args.out, split=args.split,
            skip_bad=args.skip_bad,
            workers=args.workers, batch_size=args.batch_size, num_cpus_per_worker=args.num_cpus_per_worker,
            num_gpus_per_worker=args.num_gpus_per_worker, max_restarts=args.max_restarts,
            max_task_retries=args.max_restarts, generation=generation, limit=args.limit,
            compare_uncompressed=args.compare_uncompressed, probe_utterances=args.probe_utterances,
            report=not args.no_report,
        )  # fmt: skip
        from spokenlm.model import read_bundle_meta

        read_bundle_meta(config.model_dir)  # a wrong --model fails before Ray starts
        summary = run_slue_eval(config)
    except (SlueDataError, ValueError, FileNotFoundError) as e:  # BundleError is a ValueError
        print(f"spokenlm eval: error: {e}", file=sys.stderr)
        return 2
    if not summary.complete:
        print(f"spokenlm eval: stopped with {summary.done}/{summary.total} utterances done; "
              f"rerun the same command to resume", file=sys.stderr)  # fmt: skip
        return 0
    head = ", ".join(f"{k} {v:.2f}" for k, v in (summary.metrics or {}).get("headline", {}).items() if v is not None)
    print(f"{summary.out_dir}: {summary.total} utterances ({len(summary.failed)} failed, "
          f"{len(summary.missing_audio)} missing audio, {len(summary.skipped)} skipped)"
          f"{': ' + head if head else ''}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(eval_main())
