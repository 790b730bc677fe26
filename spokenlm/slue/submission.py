"""The SLUE submission TSV of a job's prediction rows (spokenlm.slue.scoring describes them)."""

from __future__ import annotations

import csv
from pathlib import Path

from spokenlm.slue.scoring import entities, entity_segments, prediction

_PHASE2_COLUMNS = {
    "hvb": ("pred_dialog_acts",),
    "ted": ("pred_summary",),
    "sqa5": ("pred_answer", "pred_start_second", "pred_end_second"),
    "nel": ("pred_entity_spans",),
}


def write_submission(path: Path, suite: str, records, rows: dict[str, dict]) -> Path:
    """The SLUE submission TSV (slue-toolkit how-to-submit): `id pred_text pred_ner pred_sentiment`,
    `none` where a column does not apply, NER as a Python-literal list of [tag, phrase].

    Phase-2 suites have no published submission format; their file has `id` plus the prediction
    columns of `_PHASE2_COLUMNS` in the same style (Python literals, `none` when absent).
    """
    official = suite in ("voxpopuli", "voxceleb")
    header = ("id", "pred_text", "pred_ner", "pred_sentiment") if official else ("id",) + _PHASE2_COLUMNS[suite]
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for r in records:
            row = rows[r.id]
            ok = not row.get("error")
            if suite == "voxpopuli":
                cells = [prediction(row, "asr", "text") or "", repr([list(e) for e in entities(row)]) if ok else "none",
                         "none"]  # fmt: skip
            elif suite == "voxceleb":
                cells = [prediction(row, "asr", "text") or "", "none", prediction(row, "sentiment", "sentiment") or "none"]
            elif suite == "hvb":
                cells = [repr(prediction(row, "dialog-act", "dialog_acts") or [])]
            elif suite == "ted":
                cells = [prediction(row, "summarize", "summary") or "none"]
            elif suite == "sqa5":
                span = prediction(row, "qa", "answer_span_s")
                cells = [prediction(row, "qa", "answer") or "none"] + ([str(t) for t in span] if span else ["none", "none"])
            else:  # nel
                cells = [repr([list(s) for s in entity_segments(row)])]
            writer.writerow([r.id] + cells)
    return path
