"""Data: the synthetic multitask speech corpus (DESIGN.md §5).

- `text`       speakable text (numbers in words), SLUE-style normalization with offset maps, the
               shared text corpora;
- `templates`  labelled template sentences: NER, sentiment, dialog acts, QA passages, summaries;
- `voices`     piper and espeak-ng voices, per-utterance settings, augmentation;
- `synth`      the plan, the parallel resumable build, SLUE TSV / JSONL writers and the CLI.

    from spokenlm.data import SynthConfig, build_corpus
    stats = build_corpus(SynthConfig(hours=0.5, workers=2), "corpus-small")
"""

from spokenlm.data.synth import CorpusError, CorpusStats, SynthConfig, build_corpus, plan_corpus, synth_main
from spokenlm.data.voices import VoiceConfig

__all__ = ["CorpusError", "CorpusStats", "SynthConfig", "VoiceConfig", "build_corpus", "plan_corpus", "synth_main"]
