"""SLUE scoring of a job's prediction rows (pipelines/slue_eval.py writes them): metrics.json.

A prediction row holds one library record per task of its suite (`spokenlm.output.Record`, what
`spokenlm run --json` prints), keyed by task, beside the utterance's id and error:

    {"id", "suite", "error", "records": {task: record}, "frame_rate_hz", "uncompressed_text"}

Scores are slue-toolkit's (spokenlm.slue.metrics) against the split's references (spokenlm.slue.readers).
"""

from __future__ import annotations

import math

SUITE_TASKS: dict[str, tuple[str, ...]] = {
    "voxpopuli": ("asr", "ner"),
    "voxceleb": ("asr", "sentiment"),
    "hvb": ("dialog-act",),
    "ted": ("summarize",),
    "sqa5": ("qa",),
    "nel": ("ner",),
}


def prediction(row: dict, task: str, key: str):
    """Field `key` of the record of `task` in a prediction row; None where the row has none (a failed
    row, a task the suite does not run)."""
    return ((row.get("records") or {}).get(task) or {}).get(key)


def first_record(row: dict) -> dict:
    """The row's first record: what every task's record shares (duration, CTC text, spans, timing)."""
    return next(iter((row.get("records") or {}).values()), {})


def entities(row: dict) -> list[tuple[str, str]]:
    """The row's NER predictions as (tag, phrase)."""
    return [(e["tag"], e["text"]) for e in prediction(row, "ner", "entities") or ()]


def entity_segments(row: dict) -> list[tuple[float, float]]:
    """The audio times of the row's entities that the CTC alignment placed."""
    return [(e["start_s"], e["end_s"]) for e in prediction(row, "ner", "entities") or () if e.get("start_s") is not None]


def ted_reference(record) -> str:
    """The summary a TED talk is scored against: its title and abstract (SLUE Phase-2 §3.3)."""
    return f"{record.title} {record.abstract}".strip()


def score(suite: str, split, rows: dict[str, dict], *, model_dir: str | None = None) -> dict:
    """metrics.json: slue-toolkit metrics (spokenlm.slue.metrics) of `rows` against the split.

    Scored: every record with audio; a row with `error` counts as an empty prediction. VoxPopuli WER
    normalises both sides with `normalize_asr_text` (prepare_voxpopuli's reference clean-up);
    VoxCeleb compares normalized_text as it is. Blind splits get no scores.
    """
    from spokenlm.slue import metrics as M

    records = split.records_with_audio()
    out: dict = {
        "suite": suite, "split": split.split, "source": str(split.source), "model": model_dir,
        "blind": split.blind, "num_records": len(split.records), "num_scored": 0 if split.blind else len(records),
        "headline": {}, "details": {},
        "missing_audio": [{"id": m.id, "path": str(m.path)} for m in split.missing_audio],
        "skipped": list(split.skipped),
        "failed": [{"id": r.id, "error": rows[r.id]["error"]} for r in records if rows[r.id].get("error")],
    }  # fmt: skip
    if split.blind or not records:
        return out
    pred = [rows[r.id] for r in records]
    head, details = out["headline"], out["details"]
    if suite == "voxpopuli":
        wer = M.word_error_rate(
            [M.normalize_asr_text(r.normalized_text) for r in records],
            [M.normalize_asr_text(prediction(p, "asr", "text") or "") for p in pred],
        )
        ner = M.ner_report([r.entities() for r in records], [entities(p) for p in pred])
        head |= {
            "wer": wer.wer,
            "ner_f1": ner["combined-standard"].micro.f1,  # SLUE's headline NER number
            "ner_f1_raw": ner["raw-standard"].micro.f1,
            "ner_label_f1": ner["combined-label"].micro.f1,
        }
        details |= {"wer": wer.to_dict(), "ner": {k: v.to_dict() for k, v in ner.items()}}
    elif suite == "voxceleb":
        wer = M.word_error_rate([r.normalized_text for r in records], [prediction(p, "asr", "text") or "" for p in pred])
        sentiment = M.sentiment_scores([r.sentiment for r in records], [prediction(p, "sentiment", "sentiment") for p in pred])
        head |= {"wer": wer.wer, "sentiment_f1": sentiment.macro.f1}
        details |= {"wer": wer.to_dict(), "sentiment": sentiment.to_dict()}
    elif suite == "hvb":
        acts = M.dialog_act_scores([r.dialog_acts for r in records], [prediction(p, "dialog-act", "dialog_acts") for p in pred])
        head |= {"dialog_act_f1": acts.macro.f1}
        details |= {"dialog_acts": acts.to_dict()}
    elif suite == "ted":
        rouge = M.rouge_scores([ted_reference(r) for r in records], [prediction(p, "summarize", "summary") for p in pred])
        head |= rouge.to_dict()
        details |= {"rouge": rouge.to_dict()}
    elif suite == "sqa5":
        spans = [tuple(span) if (span := prediction(p, "qa", "answer_span_s")) else None for p in pred]
        sqa = M.sqa_frame_f1([r.answer_spans for r in records], spans)
        head |= {"frame_f1": sqa.frame_f1}
        details |= {"sqa": sqa.to_dict()}
    elif suite == "nel":
        nel = M.nel_scores(list(records), {r.id: entity_segments(rows[r.id]) for r in records})
        head |= {"frame_f1": nel.frame.f1, "word_f1": nel.word.f1}
        details |= {"nel": nel.to_dict()}
    return out


def json_safe(x):
    """NaN (e.g. macro F1 over no tags) as null, so metrics.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
