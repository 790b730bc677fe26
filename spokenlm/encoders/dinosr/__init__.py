"""DinoSR as a spokenlm speech encoder, its self-supervised pre-training objective, and its checkpoints.

DinoSR (Liu et al., 2023, "DinoSR: Self-Distillation and Online Clustering for Self-supervised Speech
Representation Learning", §2): a student Transformer sees masked spans of its input frames; a teacher,
the exponential moving average (EMA) of the student, sees the unmasked input. The output of each of
the teacher's top K layers (the feed-forward block's output before its residual, as in data2vec) is
instance-normalised over time and assigned to the nearest codeword of that layer's own codebook of V
codewords; the student predicts the codeword index of every masked frame with one linear head per
codebook (cross-entropy, masked frames only, averaged over codebooks). Codebooks are learned by online
clustering, not gradient: each codeword is an EMA of the sum and the count of the targets assigned to
it (§2.2, decay 0.9), codeword = sum / count. The teacher's decay anneals linearly from 0.999 to 0.9999.

The network follows the authors' fairseq model (Alexander-H-Liu/dinosr, models/dinosr.py), so their
checkpoint loads by renaming keys: a feature extractor, a LayerNorm and a linear projection to the
model dim, a stack of grouped convolutions adding relative positions, and a post-LN Transformer. As in
the authors' code only the Transformer (pos-conv excluded) has an EMA teacher; the feature extractor,
projection and positional convolutions are shared, so the teacher reads the student's unmasked frames.

Two feature extractors (``frontend``):
- "waveform": the wav2vec 2.0 conv stack on raw 16 kHz audio (layer norm in every block, as DinoSR),
  7 convs of total stride 320 → 50 Hz. Faithful; the pretrained checkpoint's frontend.
- "fbank": 80-bin log-mel filterbanks (25 ms window, 10 ms hop, per-utterance mean/variance
  normalisation) and a 2-layer conv2d subsampler (×2 → 50 Hz, or ×4 → 25 Hz). On this CPU raw-waveform
  SSL costs 2.5–4× per audio hour what an fbank model does (FEASIBILITY.md), so ``dinosr_tiny()``,
  the CPU-trained default, uses it at 50 Hz (a character CTC at 25 Hz has too little slack).

This package holds, one module per concern (every name is importable from the package):
- ``encoder.py``: ``DinoSREncoderConfig`` and the presets ``dinosr_base()`` (the paper's) /
  ``dinosr_tiny()`` (CPU); ``DinoSREncoder``, the student as a ``SpeechEncoder``: (wav, lengths) ->
  ``EncoderOutput``; ``build_dinosr_encoder``; ``instance_norm`` (the fbank frontend's, and the
  teacher targets');
- ``objective.py``: ``DinoSRPretrainer`` (student + EMA teacher + codebooks + heads + mask embedding)
  with ``forward`` -> ``DinoSRLossOutput``, ``update_codebooks`` and ``ema_step``; the pieces it is
  made of as plain functions (``compute_span_mask``, ``nearest_codeword``, ``ema_codebook_update``,
  ``ema_decay_at``); ``build_dinosr_pretrainer``;
- ``checkpoints.py``: ``save_dinosr_encoder`` / ``load_dinosr_encoder``, and ``load_fairseq_dinosr`` /
  ``convert_fairseq_dinosr_state_dict`` for the authors' fairseq checkpoints.

Not here: the training loop (a recipe), fine-tuning heads (``spokenlm/compress``).
Deviations from the authors' code, all for padded batches or for a CPU: positional convolutions re-zero
padded frames between blocks and target instance-norm uses each item's own frames, so batched equals
single-item output (the authors' pad-dependent ends differ); masks are not equalised across the batch
(``require_same_masks``), the targets being flattened anyway; the optional teacher freeze after 200k
steps (``freeze_teacher_step``) is not implemented.
"""

from spokenlm.encoders.dinosr.checkpoints import (
    convert_fairseq_dinosr_state_dict,
    load_dinosr_encoder,
    load_fairseq_dinosr,
    save_dinosr_encoder,
)
from spokenlm.encoders.dinosr.encoder import (
    FBANK_FRAME_RATE_HZ,
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    WIN_LENGTH,
    DinoSREncoder,
    DinoSREncoderConfig,
    LayerChoice,
    build_dinosr_encoder,
    dinosr_base,
    dinosr_tiny,
    dinosr_tiny_conformer,
    mel_filterbank,
)
from spokenlm.encoders.dinosr.objective import (
    DinoSRLossOutput,
    DinoSRPretrainer,
    build_dinosr_pretrainer,
    compute_span_mask,
    ema_codebook_update,
    ema_decay_at,
    instance_norm,
    nearest_codeword,
)

__all__ = [
    "FBANK_FRAME_RATE_HZ", "HOP_LENGTH", "N_FFT", "N_MELS", "WIN_LENGTH", "DinoSREncoder", "DinoSREncoderConfig",
    "DinoSRLossOutput", "DinoSRPretrainer", "LayerChoice", "build_dinosr_encoder", "build_dinosr_pretrainer",
    "compute_span_mask", "convert_fairseq_dinosr_state_dict", "dinosr_base", "dinosr_tiny", "dinosr_tiny_conformer",
    "ema_codebook_update", "ema_decay_at", "instance_norm", "load_dinosr_encoder", "load_fairseq_dinosr",
    "mel_filterbank", "nearest_codeword", "save_dinosr_encoder",
]  # fmt: skip
