"""Sylber: syllabic embeddings from raw audio, as a spokenlm speech encoder and segmenter.

Sylber (Cho et al., 2024 / ICLR 2025, "Sylber: Syllabic Embedding Representation of Speech from Raw
Audio"). A HuBERT-like student is trained by segment-level self-distillation (§3.2): an EMA teacher
segments its own features with a linear-time greedy algorithm (§3.3) and the student regresses, frame
by frame, the segment-averaged teacher features (zero on non-speech frames). The features become
piecewise constant over syllables, so the same greedy algorithm finds syllables at inference and a
syllable is the mean of its frames (``spokenlm.compress.syllable``).

This package holds, one module per concern (every name is importable from the package):
- ``encoder.py``: ``SylberEncoderConfig``, presets ``sylber_base()`` (HuBERT-base, first 9 layers: the
  released model) and ``sylber_tiny()`` (log-mel frontend, trains on a CPU), and ``SylberEncoder``,
  the network behind the ``SpeechEncoder`` seam, with a pluggable frontend (raw-waveform conv stack |
  log-mel); ``build_sylber_encoder``;
- ``objective.py``: ``SylberObjectiveConfig``, ``SylberDistillation`` (wraps ANY ``SpeechEncoder`` as
  the student, keeps its EMA teacher), the typed ``SylberLoss``, and ``NormThresholdEstimator``, the
  online speech/non-speech feature-norm threshold (two EMA Gaussians);
- ``checkpoints.py``: ``save_sylber_encoder`` / ``load_sylber_encoder``; the loader also reads the
  authors' released checkpoint (transformers ``HubertModel`` names, 9 layers) and maps its names.
The segmentation itself (``segment``, ``segment_batch``, ``pool_segments``) sits next to the
compressors that use it, in ``spokenlm.compress.segment``; it is re-exported here.

Not here: noise augmentation (pass an augmented ``student_wav``), the optimiser loop (recipes), where
first-stage segments come from (the paper: SD-HuBERT; the recipe: ``spokenlm.envelope``; either is
passed to ``SylberDistillation.forward`` as ``segments``).
"""

from spokenlm.compress.segment import (
    MERGE_THRESHOLD,
    NORM_THRESHOLD,
    Span,
    check_thresholds,
    pool_segments,
    segment,
    segment_batch,
)
from spokenlm.encoders.sylber.checkpoints import (
    config_from_state_dict,
    load_sylber_encoder,
    official_state_dict_to_ours,
    save_sylber_encoder,
)
from spokenlm.encoders.sylber.encoder import (
    SylberEncoder,
    SylberEncoderConfig,
    build_sylber_encoder,
    sylber_base,
    sylber_tiny,
)
from spokenlm.encoders.sylber.objective import (
    NormThresholdEstimator,
    SylberDistillation,
    SylberLoss,
    SylberObjectiveConfig,
)

__all__ = [
    "MERGE_THRESHOLD",
    "NORM_THRESHOLD",
    "NormThresholdEstimator",
    "Span",
    "SylberDistillation",
    "SylberEncoder",
    "SylberEncoderConfig",
    "SylberLoss",
    "SylberObjectiveConfig",
    "build_sylber_encoder",
    "check_thresholds",
    "config_from_state_dict",
    "load_sylber_encoder",
    "official_state_dict_to_ours",
    "pool_segments",
    "save_sylber_encoder",
    "segment",
    "segment_batch",
    "sylber_base",
    "sylber_tiny",
]
