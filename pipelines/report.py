"""The stage-wise SLUE report: where along encoder -> CTC -> compressor -> LLM quality is lost.

`spokenlm eval slue` writes OUT/report.md, OUT/report.json and PNGs from its predictions:

1. **Encoder**: layer probes (spokenlm.probes, after Pasad et al., 2021) on a few utterances, frame
   labels from a CTC forced alignment with the bundle's CTC head; optional (`--probe-utterances`),
   and only for bundles whose compressor has a CTC head.
2. **CTC**: greedy-CTC transcripts (what the compressor's head reads off the encoder) against the
   reference transcripts: WER and CER, both sides lower-cased and cleaned with `normalize_asr_text`,
   since the CTC alphabet is lower-case letters, space and apostrophe.
3. **Compression**: tokens per second into the LLM against encoder frames per second; and, when the
   job ran with `--compare-uncompressed` on a dim-preserving compressor (CTC, syllable), the WER of
   the LLM's transcript from compressed tokens against the same LLM fed every encoder frame. Without
   that run (or with a stacking compressor, whose tokens are wider than frames) only rates are shown.
   The LLM was trained on compressed tokens, so the uncompressed number measures what compression
   keeps from this LLM, not an upper bound any model could reach.
4. **LLM**: the suite's task metrics (metrics.json headline, slue-toolkit definitions).
5. **Latency**: per-utterance milliseconds in each stage (load_audio, encoder, compress, adapter, llm)
   and the real-time factor.
6. **The 20 worst utterances** by the suite's per-utterance error, reference next to hypothesis.

This module computes from what it is given (UtteranceView rows, metrics); it runs no model except
for the optional probes.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

STAGES = ("load_audio", "encoder", "compress", "adapter", "llm")  # timing_ms keys, in pipeline order
WORST = 20

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
PLOTS = {
    "latency": "latency.png",
    "compression": "compression.png",
    "quality": "quality.png",
    "probes": "encoder_probes.png",
}


@dataclass(frozen=True)
class UtteranceView:
    """One utterance as the report sees it (built by slue_eval from a record and its prediction row)."""

    id: str
    duration_s: float | None
    transcript: str | None  # reference transcript, where the split has one
    ctc_text: str | None  # greedy CTC transcript of the bundle's head
    asr_text: str | None  # the LLM's transcript from compressed tokens (asr task), where run
    uncompressed_text: str | None  # the LLM's transcript from every encoder frame, where run
    tokens_per_second: float | None  # compressed tokens into the LLM per second of audio
    frame_rate_hz: float | None  # encoder frames per second
    timing_ms: dict[str, float]  # per stage, this utterance alone
    reference: str  # the task reference, readable
    hypothesis: str  # the task prediction, readable
    error: float  # per-utterance task error (WER, 100 - F1, ...); orders the worst utterances
    failed: str | None = None  # why the audio could not be decoded


# --- the stages ------------------------------------------------------------------------------------


def probe_encoder(model_dir: str | Path, utterances: Sequence[tuple]):
    """spokenlm.probes.probe_layers on (wav, transcript) pairs with the bundle's CTC head as the
    frame-label source. Raises ValueError (with the reason) where probes cannot run."""
    from spokenlm.model import load_bundle_compressor, load_bundle_encoder
    from spokenlm.compress.ctc import CTCCompressor
    from spokenlm.probes import ctc_log_prob_source, probe_layers

    compressor, _ = load_bundle_compressor(model_dir)
    if not isinstance(compressor, CTCCompressor):
        raise ValueError(f"the bundle's compressor ({type(compressor).__name__}) has no CTC head to align frames with")
    if len(utterances) < 2:
        raise ValueError(f"probes need at least 2 utterances with a transcript and audio, got {len(utterances)}")
    encoder, _ = load_bundle_encoder(model_dir)
    return probe_layers(encoder, list(utterances), ctc=ctc_log_prob_source(encoder, compressor), vocab=compressor.vocab)


def _ctc_norm(text: str) -> str:
    from spokenlm.slue.metrics import normalize_asr_text

    return normalize_asr_text(text.lower())


def _char_tokens(text: str) -> str:
    return " ".join(text.replace(" ", "_"))  # characters as words, spaces kept as "_": CER via the WER code


def stage_summary(utterances: Sequence[UtteranceView], metrics: dict) -> dict:
    """Every number of the report (report.json), per stage."""
    from spokenlm.slue.metrics import word_error_rate

    ok = [u for u in utterances if not u.failed]
    out: dict = {
        "utterances": len(utterances),
        "failed": len(utterances) - len(ok),
        "missing_audio": len(metrics.get("missing_audio", ())),
        "audio_s": round(sum(u.duration_s or 0.0 for u in ok), 3),
    }

    # CTC stage
    pairs = [
        (_ctc_norm(u.transcript), _ctc_norm(u.ctc_text)) for u in utterances if u.transcript and u.ctc_text is not None
    ]
    if pairs:
        refs, hyps = zip(*pairs)
        out["ctc"] = {
            "utterances": len(pairs),
            "wer": word_error_rate(refs, hyps).wer,
            "cer": word_error_rate([_char_tokens(r) for r in refs], [_char_tokens(h) for h in hyps]).wer,
        }
    else:
        has_ctc = any(u.ctc_text is not None for u in utterances)
        out["ctc"] = {"skipped": "no reference transcripts in this split" if has_ctc else "the bundle has no CTC head"}

    # compression stage
    rates = [u.tokens_per_second for u in ok if u.tokens_per_second is not None]
    frame_rate = next((u.frame_rate_hz for u in ok if u.frame_rate_hz), None)
    compression: dict = {}
    if rates:
        mean_rate = statistics.fmean(rates)
        compression |= {
            "tokens_per_second": {"mean": statistics.fmean(rates), "median": statistics.median(rates),
                                  "min": min(rates), "max": max(rates)},
            "frame_rate_hz": frame_rate,
            "compression_ratio": frame_rate / mean_rate if frame_rate and mean_rate else None,
        }  # fmt: skip
    scored = [u for u in ok if u.transcript and u.asr_text is not None]
    if scored:
        compression["llm_wer"] = word_error_rate(
            [_ctc_norm(u.transcript) for u in scored], [_ctc_norm(u.asr_text) for u in scored]
        ).wer
        both = [u for u in scored if u.uncompressed_text is not None]
        if both:
            compression["uncompressed_llm_wer"] = word_error_rate(
                [_ctc_norm(u.transcript) for u in both], [_ctc_norm(u.uncompressed_text) for u in both]
            ).wer
            compression["wer_delta"] = compression["llm_wer"] - compression["uncompressed_llm_wer"]
    if "uncompressed_llm_wer" not in compression:
        if scored:
            why = "run with --compare-uncompressed (CTC or syllable compressors)"
        elif any(u.asr_text is not None for u in ok):
            why = "no reference transcripts in this split"
        else:
            why = "this suite runs no ASR task"
        compression["uncompressed"] = f"not computed: {why}"
    out["compression"] = compression

    # LLM stage
    out["llm"] = dict(metrics.get("headline", {}))

    # latency
    latency = {}
    for stage in STAGES:
        values = sorted(u.timing_ms[stage] for u in ok if stage in u.timing_ms)
        if values:
            latency[stage] = {"mean_ms": statistics.fmean(values), "p50_ms": _quantile(values, 0.5),
                              "p90_ms": _quantile(values, 0.9)}  # fmt: skip
    total_ms = sum(sum(u.timing_ms.get(s, 0.0) for s in STAGES) for u in ok)
    rtf = total_ms / 1e3 / out["audio_s"] if out["audio_s"] else None
    out["latency"] = {"stages": latency, "real_time_factor": rtf}

    # the worst utterances
    worst = sorted(utterances, key=lambda u: (u.failed is None, -u.error, u.id))[:WORST]
    out["worst"] = [
        {"id": u.id, "error": u.error, "reference": u.reference, "hypothesis": u.hypothesis, "ctc_text": u.ctc_text}
        for u in worst
    ]
    return out


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of an ascending list."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# --- writing ---------------------------------------------------------------------------------------


def write_report(
    out_dir: str | Path,
    *,
    suite: str,
    split: str,
    model: str,
    metrics: dict,
    utterances: Sequence[UtteranceView],
    probes=None,
) -> Path:
    """Write report.json, report.md and the PNGs into `out_dir`; returns report.md's path.

    probes: a spokenlm.probes.ProbeReport, or a string saying why there is none.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = stage_summary(utterances, metrics)
    plots = {}
    if hasattr(probes, "plot"):
        plots["probes"] = probes.plot(out / PLOTS["probes"]).name
        summary["encoder"] = {"probes": [vars(p) for p in probes.layers], "majority_accuracy": probes.majority_accuracy}
    else:
        summary["encoder"] = {"skipped": probes or "not requested"}
    plots["latency"] = _plot_latency(summary, out / PLOTS["latency"])
    rates = [u.tokens_per_second for u in utterances if u.tokens_per_second is not None and not u.failed]
    if rates:
        plots["compression"] = _plot_rates(rates, summary, out / PLOTS["compression"])
    if _quality_bars(summary):
        plots["quality"] = _plot_quality(summary, out / PLOTS["quality"])
    summary["plots"] = {k: v for k, v in plots.items() if v}
    head = {"suite": suite, "split": split, "model": str(model)}
    (out / REPORT_JSON).write_text(json.dumps(_finite(head | summary), indent=2) + "\n")
    path = out / REPORT_MD
    path.write_text(_markdown(head, summary, probes))
    return path


def _markdown(head: dict, s: dict, probes) -> str:
    plots = s["plots"]
    lines = [
        f"# SLUE {head['suite']} ({head['split']}): stage-wise report",
        "",
        f"Model `{head['model']}`; {s['utterances']} utterances ({s['audio_s']:.1f} s of audio), "
        f"{s['failed']} failed to decode, {s['missing_audio']} missing audio files (not run; see metrics.json).",
        "",
        "## 1. Encoder stage: layer probes",
        "",
    ]
    if hasattr(probes, "to_markdown"):
        lines += [probes.to_markdown(), f"![encoder probes]({plots['probes']})", ""]
    else:
        lines += [f"Skipped: {s['encoder']['skipped']}.", ""]

    lines += ["## 2. CTC stage: greedy CTC transcripts", ""]
    ctc = s["ctc"]
    if "skipped" in ctc:
        lines += [f"Skipped: {ctc['skipped']}.", ""]
    else:
        lines += [
            "| utterances | WER % | CER % |", "|---:|---:|---:|",
            f"| {ctc['utterances']} | {ctc['wer']:.2f} | {ctc['cer']:.2f} |", "",
            "Both sides lower-cased, `. ; ? !` removed (the CTC alphabet has no case or punctuation).", "",
        ]  # fmt: skip

    lines += ["## 3. Compression stage", ""]
    c = s["compression"]
    if "tokens_per_second" in c:
        t = c["tokens_per_second"]
        ratio = f"{c['compression_ratio']:.1f}x" if c.get("compression_ratio") else "n/a"
        lines += [
            "| tokens/s mean | median | min | max | encoder frames/s | compression |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {t['mean']:.2f} | {t['median']:.2f} | {t['min']:.2f} | {t['max']:.2f} | "
            f"{c['frame_rate_hz'] or float('nan'):.1f} | {ratio} |",
            "",
        ]
    if "llm_wer" in c:
        if "uncompressed_llm_wer" in c:
            lines += [
                "| LLM WER %, compressed tokens | LLM WER %, every encoder frame | difference |",
                "|---:|---:|---:|",
                f"| {c['llm_wer']:.2f} | {c['uncompressed_llm_wer']:.2f} | {c['wer_delta']:+.2f} |",
                "",
            ]
        else:
            lines += [f"LLM WER from compressed tokens: {c['llm_wer']:.2f} %. Uncompressed path "
                      f"{c['uncompressed']}.", ""]  # fmt: skip
    elif "uncompressed" in c:
        lines += [f"WER relative to the uncompressed path: {c['uncompressed']}; tokens/s only.", ""]
    for key, title in (("compression", "tokens per second"), ("quality", "WER by stage")):
        if key in plots:
            lines += [f"![{title}]({plots[key]})", ""]

    lines += ["## 4. LLM stage: task metrics", ""]
    if s["llm"]:
        lines += ["| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {_num(v)} |" for k, v in s["llm"].items()]
        lines += ["", "slue-toolkit definitions (spokenlm.slue.metrics); all in percent. Details in metrics.json.", ""]
    else:
        lines += ["No task metrics: the split is blind (no labels) or empty.", ""]

    lines += ["## 5. Per-stage latency", "", "| stage | mean ms | p50 ms | p90 ms |", "|---|---:|---:|---:|"]
    for stage, v in s["latency"]["stages"].items():
        lines.append(f"| {stage} | {v['mean_ms']:.1f} | {v['p50_ms']:.1f} | {v['p90_ms']:.1f} |")
    rtf = s["latency"]["real_time_factor"]
    lines += [
        "",
        f"Per utterance, each computed alone on its pool worker. Real-time factor {_num(rtf, 3)} "
        "(processing seconds per second of audio, one worker).",
        "",
    ]
    if "latency" in plots:
        lines += [f"![latency per stage]({plots['latency']})", ""]

    lines += [f"## 6. The {min(WORST, len(s['worst']))} worst utterances", "",
              "| id | error | reference | hypothesis | CTC |", "|---|---:|---|---|---|"]  # fmt: skip
    for w in s["worst"]:
        lines.append(
            f"| {_cell(w['id'])} | {w['error']:.1f} | {_cell(w['reference'])} | {_cell(w['hypothesis'])} | "
            f"{_cell(w['ctc_text'] or '')} |"
        )
    lines += ["", "Error: the suite's per-utterance measure (WER for ASR suites, 100 - F1 or 100 - ROUGE-L "
              "otherwise).", ""]  # fmt: skip
    return "\n".join(lines)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(v, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


# --- plots (Figure + Agg canvas: no pyplot global state) ----------------------------------------------


def _figure(width: float = 6.0, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_latency(summary: dict, path: Path) -> str | None:
    stages = summary["latency"]["stages"]
    if not stages:
        return None
    fig = _figure()
    ax = fig.subplots()
    names = list(stages)
    ax.barh(names, [stages[n]["mean_ms"] for n in names], color="tab:blue", label="mean")
    ax.scatter([stages[n]["p90_ms"] for n in names], names, color="black", marker="|", s=200, label="p90")
    ax.invert_yaxis()
    ax.set(xlabel="ms per utterance", title="Latency per stage")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.savefig(path, format="png", dpi=100)
    return path.name


def _plot_rates(rates: list[float], summary: dict, path: Path) -> str:
    fig = _figure()
    ax = fig.subplots()
    ax.hist(rates, bins=min(20, max(5, len(rates))), color="tab:green")
    frame_rate = summary["compression"].get("frame_rate_hz")
    title = "Compressed tokens per second" + (f" (encoder: {frame_rate:.0f} frames/s)" if frame_rate else "")
    ax.set(xlabel="tokens / s into the LLM", ylabel="utterances", title=title)
    ax.grid(alpha=0.3)
    fig.savefig(path, format="png", dpi=100)
    return path.name


def _quality_bars(summary: dict) -> dict[str, float]:
    bars = {}
    if "wer" in summary["ctc"]:
        bars["greedy CTC"] = summary["ctc"]["wer"]
    c = summary["compression"]
    if "uncompressed_llm_wer" in c:
        bars["LLM, every frame"] = c["uncompressed_llm_wer"]
    if "llm_wer" in c:
        bars["LLM, compressed"] = c["llm_wer"]
    return bars


def _plot_quality(summary: dict, path: Path) -> str:
    bars = _quality_bars(summary)
    fig = _figure()
    ax = fig.subplots()
    drawn = ax.bar(list(bars), list(bars.values()), color=["tab:gray", "tab:orange", "tab:blue"][: len(bars)])
    ax.bar_label(drawn, fmt="%.1f")
    ax.set(ylabel="WER %", title="Transcript quality along the pipeline")
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, format="png", dpi=100)
    return path.name
