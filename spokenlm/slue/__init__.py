"""SLUE and SLUE Phase-2 data and metrics: read the official downloads, score as slue-toolkit does.

- ``spokenlm.slue.readers``: one reader per published layout (VoxPopuli, VoxCeleb, HVB, TED, SQA-5,
  VoxPopuli NEL) returning typed records, the missing audio files, and whether the split is blind.
- ``spokenlm.slue.sources``: the same SLUE-VoxPopuli / -VoxCeleb splits from a Hugging Face dataset,
  a Lhotse CutSet, a Kaldi data dir or a spokenlm manifest (``read_slue_data("hf:DIR", ...)``).
- ``spokenlm.slue.metrics``: WER, NER F1 (micro/macro, standard/label, raw/combined), sentiment
  and dialog-act F1, ROUGE, SQA-5 and NEL frame-F1, NEL word-F1, SLUE-score; all in percent.

Importing this package is light: pandas, jiwer, sklearn and rouge-score load on first use.
"""

from spokenlm.slue.metrics import (
    PRF,
    ClassificationScores,
    NelScores,
    NerScores,
    RougeScores,
    SqaScores,
    WerResult,
    dialog_act_scores,
    ner_report,
    ner_scores,
    nel_scores,
    normalize_asr_text,
    normalize_phrase,
    rouge_scores,
    sentiment_scores,
    slue_score,
    sqa_frame_f1,
    word_error_rate,
)
from spokenlm.slue.readers import (
    DEFAULT_SPLIT,
    READERS,
    SPLITS,
    AnswerSpan,
    EntityTiming,
    HvbRecord,
    MissingAudio,
    NelRecord,
    NerSpan,
    SlueDataError,
    SlueSplit,
    Sqa5Record,
    TedRecord,
    VoxCelebRecord,
    VoxPopuliRecord,
    WordTiming,
    load_clip,
    read_hvb,
    read_nel,
    read_slue,
    read_sqa5,
    read_ted,
    read_voxceleb,
    read_voxpopuli,
    read_word2time,
)
from spokenlm.slue.sources import read_slue_data

__all__ = [
    "DEFAULT_SPLIT", "READERS", "SPLITS", "AnswerSpan", "EntityTiming", "HvbRecord", "MissingAudio",
    "NelRecord", "NerSpan", "SlueDataError", "SlueSplit", "Sqa5Record", "TedRecord", "VoxCelebRecord",
    "VoxPopuliRecord", "WordTiming", "load_clip", "read_hvb", "read_nel", "read_slue", "read_sqa5",
    "read_ted", "read_voxceleb", "read_voxpopuli", "read_word2time", "read_slue_data",
    "PRF", "ClassificationScores", "NelScores", "NerScores", "RougeScores", "SqaScores", "WerResult",
    "dialog_act_scores", "ner_report", "ner_scores", "nel_scores", "normalize_asr_text",
    "normalize_phrase", "rouge_scores", "sentiment_scores", "slue_score", "sqa_frame_f1",
    "word_error_rate",
]  # fmt: skip
