"""SLUE splits from any corpus format: what `spokenlm eval slue --data [FORMAT:]PATH` reads.

The official SLUE download (`slue:DIR`, or a directory nothing else claims) is read by
spokenlm.slue.readers as before. A Hugging Face dataset, a Lhotse CutSet, a Kaldi data dir or a
spokenlm manifest (spokenlm.corpora reads them all into SpeechRows) becomes the same SlueSplit of
SLUE records, so the job, its scoring and its submission file cannot tell where the data came from:

  voxpopuli   ASR + NER: text (normalized_text / text) and NER (normalized_ner / ner) per row
  voxceleb    ASR + sentiment: text and sentiment; the hub's start_second/end_second cut the audio

Those are the SLUE (Shon et al., 2022, §3) tasks whose labels fit one row; HVB, TED, SQA-5 and NEL
are read from their official downloads only. A source lacking a suite's label column altogether is
a blind split (test only); a row lacking it, where the source has it, is a bad row. In a spokenlm
manifest the suite is the rows labelled for its task ("ner" / "sentiment"); the others are not
part of it. Rows whose sentiment is not Negative/Neutral/Positive are left out and listed, as
read_voxceleb does for the TSVs.
"""

from __future__ import annotations

from pathlib import Path

from spokenlm.corpora import BadRows, CorpusError, SpeechRow, parse_source, read_corpus
from spokenlm.slue.readers import (
    DEFAULT_SPLIT,
    MissingAudio,
    NerSpan,
    SlueDataError,
    SlueSplit,
    VoxCelebRecord,
    VoxPopuliRecord,
    check_split,
    read_slue,
)
from spokenlm.tasks import SENTIMENTS

# The labels each suite scores, by SLUE column name (spokenlm.corpora.LABELS)
SUITE_LABELS: dict[str, tuple[str, ...]] = {
    "voxpopuli": ("normalized_text", "normalized_ner"),
    "voxceleb": ("normalized_text", "sentiment"),
}
MANIFEST_TASKS = {"voxpopuli": "ner", "voxceleb": "sentiment"}
# Where each label lives in each format, for the message of a source that lacks one
_WHERE = {
    "normalized_text": "hf: a normalized_text or text column; lhotse: the supervision text; kaldi: text",
    "normalized_ner": "hf: a normalized_ner or ner column; lhotse: supervision custom 'normalized_ner'; "
    "kaldi: utt2normalized_ner",
    "sentiment": "hf: a sentiment column; lhotse: supervision custom 'sentiment'; kaldi: utt2sentiment",
}


def read_slue_data(suite: str, data: str | Path, split: str = DEFAULT_SPLIT, *, skip_bad: bool = False) -> SlueSplit:
    """The `split` of `suite` from `data`: "FORMAT:PATH" or a path (spokenlm.corpora.detect_format).

    Raises SlueDataError for a source that cannot hold the suite and, unless `skip_bad`, for the first
    bad row; with `skip_bad` those rows are left out and listed (missing_audio, skipped)."""
    fmt, path = parse_source(data)
    if fmt == "slue":
        return read_slue(suite, path, split)
    split = check_split(split)
    if suite not in SUITE_LABELS:
        raise SlueDataError(
            f"suite {suite!r} is read from the official SLUE download only; --data {fmt}: holds "
            f"{' or '.join(SUITE_LABELS)} (the labels of one utterance per row)"
        )
    try:
        corpus = read_corpus(f"{fmt}:{path}", splits=(split,), skip_bad=skip_bad)
    except CorpusError as e:
        raise SlueDataError(str(e)) from None
    rows = list(corpus.rows)
    if fmt == "manifest":
        rows = [r for r in rows if MANIFEST_TASKS[suite] in (r.tasks or ())]
    if not rows and not corpus.missing:
        raise SlueDataError(
            f"{fmt} corpus '{path}' has no {suite} utterances of the {split} split (a source names its splits by "
            "a split column, or by train/validation/test in the name of its split directory or file)"
        )
    lacking = [label for label in SUITE_LABELS[suite] if label not in corpus.columns]
    if lacking and split != "test":
        raise SlueDataError(
            f"{fmt} corpus '{path}' has an unknown column layout for {suite} {split}: no {lacking[0]} labels "
            f"({_WHERE[lacking[0]]}); only a blind test split may lack them"
        )
    labelled = not lacking
    bad = BadRows(path, skip_bad=skip_bad)
    records, skipped = [], []
    for row in rows:
        absent = [label for label in SUITE_LABELS[suite] if labelled and label not in row.labels]
        if absent:
            bad.add(row.where, row.id, f"no {absent[0]}")
            continue
        if suite == "voxpopuli":
            records.append(_voxpopuli(row, split, labelled))
            continue
        sentiment = row.labels.get("sentiment") if labelled else None
        if labelled and sentiment not in SENTIMENTS:
            skipped.append(f"{row.id}: sentiment {sentiment!r} is not one of {', '.join(SENTIMENTS)}")
            continue
        records.append(_voxceleb(row, split, sentiment, labelled))
    try:
        bad.finish()
    except CorpusError as e:
        raise SlueDataError(str(e)) from None
    return SlueSplit(
        corpus=f"slue-{suite}",
        split=split,
        source=path,
        records=tuple(records),
        blind=not labelled,
        missing_audio=tuple(MissingAudio(id=m.id, path=m.path) for m in corpus.missing),
        skipped=tuple(corpus.skipped) + tuple(bad.skipped) + tuple(skipped),
    )


def _spans(spans) -> tuple[NerSpan, ...]:
    return tuple(NerSpan(tag=tag, start_char=start, length=length) for tag, start, length in spans)


def _voxpopuli(row: SpeechRow, split: str, labelled: bool) -> VoxPopuliRecord:
    labels = row.labels
    return VoxPopuliRecord(
        id=row.id,
        audio_path=row.audio.path,
        split=split,
        speaker_id=labels.get("speaker_id"),
        raw_text=labels.get("raw_text", labels.get("normalized_text")) if labelled else None,
        normalized_text=labels["normalized_text"] if labelled else None,
        raw_ner=_spans(labels.get("raw_ner", ())) if labelled else None,
        normalized_ner=_spans(labels["normalized_ner"]) if labelled else None,
        audio=row.audio,
    )


def _voxceleb(row: SpeechRow, split: str, sentiment: str | None, labelled: bool) -> VoxCelebRecord:
    return VoxCelebRecord(
        id=row.id,
        audio_path=row.audio.path,
        split=split,
        start_s=row.audio.start_s,
        end_s=row.audio.end_s,
        speaker_id=row.labels.get("speaker_id"),
        normalized_text=row.labels["normalized_text"] if labelled else None,
        sentiment=sentiment,
        audio=row.audio,
    )
