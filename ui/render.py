"""From a `UIResult` (its record, spans and timing) to what the page shows: highlighted entities, the waveform plot, the timing table.

Plain functions of plain values, no gradio import, so they are tested without a server. The plot uses
matplotlib's object API (`Figure`, no pyplot): no global figure state, safe in Gradio's worker threads.
"""

from __future__ import annotations

import numpy as np

from spokenlm.audio import SAMPLE_RATE

MAX_PLOT_POINTS = 4000  # min/max envelope columns; more only costs time in the browser


def highlighted_entities(record: dict) -> dict | None:
    """gr.HighlightedText's value: the text with each entity's [start_char, end_char) tagged."""
    if record.get("entities") is None:
        return None
    text = record.get("text") or ""
    entities = []
    for e in record["entities"]:
        try:
            tag, start, end = str(e["tag"]), int(e["start_char"]), int(e["end_char"])
        except (KeyError, TypeError, ValueError):
            continue  # a malformed entity from an API costs its highlight, not the page
        if 0 <= start < end <= len(text):  # spans outside the text are dropped too
            entities.append({"entity": tag, "start": start, "end": end})
    return {"text": text, "entities": entities}


def timing_rows(timing: dict[str, float]) -> list[list]:
    """[stage, ms] rows, then the total. `server/...` stages (the Serve API's own timing) lie inside
    the client's `round_trip`, so the total leaves them out."""
    rows = [[stage, round(float(ms), 1)] for stage, ms in timing.items()]
    total = sum(float(ms) for stage, ms in timing.items() if not stage.startswith("server/"))
    rows.append(["total", round(total, 1)])
    return rows


def waveform_figure(
    wave: np.ndarray,
    spans_s: list[tuple[float, float]] | None,
    entities: list[dict] | None = None,
):
    """The waveform (S,) at 16 kHz, the compressed tokens' spans shaded in alternating colours, and
    entities with audio times as labelled bars along the top."""
    from matplotlib.figure import Figure

    duration = wave.shape[-1] / SAMPLE_RATE
    fig = Figure(figsize=(10, 2.6), layout="constrained")
    ax = fig.add_subplot()
    t, low, high = _envelope(wave)
    ax.fill_between(t, low, high, color="#1f4e79", linewidth=0.3)
    peak = float(np.abs(wave).max()) or 1.0
    if spans_s:
        for i, (start, end) in enumerate(spans_s):
            ax.axvspan(start, end, color=("#f4a261" if i % 2 else "#2a9d8f"), alpha=0.25, linewidth=0)
        ax.vlines([s for s, _ in spans_s], -peak, peak, color="#555555", linewidth=0.3, alpha=0.6)
        rate = len(spans_s) / duration if duration else 0.0
        ax.set_title(f"{len(spans_s)} compressed speech tokens ({rate:.1f} per second)", fontsize=9)
    else:
        ax.set_title("waveform (no token spans from this backend)", fontsize=9)
    for e in entities or []:
        if e.get("start_s") is None or e.get("end_s") is None:
            continue
        ax.hlines(0.92 * peak, e["start_s"], e["end_s"], color="#c1121f", linewidth=4)
        ax.text(e["start_s"], 0.97 * peak, e["tag"], fontsize=7, color="#c1121f", va="bottom")
    ax.set_xlim(0, max(duration, 1e-3))
    ax.set_ylim(-1.1 * peak, 1.15 * peak)
    ax.set_xlabel("seconds")
    ax.set_yticks([])
    return fig


def _envelope(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column min and max of the waveform, at most MAX_PLOT_POINTS columns: (times, low, high)."""
    n = wave.shape[-1]
    per_column = max(1, -(-n // MAX_PLOT_POINTS))
    columns = -(-n // per_column)
    padded = np.pad(wave.astype(np.float32), (0, columns * per_column - n), mode="edge").reshape(columns, per_column)
    times = (np.arange(columns) * per_column + per_column / 2) / SAMPLE_RATE
    return times, padded.min(axis=1), padded.max(axis=1)
