"""Syllable-like segments from the loudness envelope: the unsupervised first-stage segmentation that
the Sylber recipe distils from.

Sylber's first training stage (Cho et al., 2024, §3.2) regresses segment-averaged features over the
segments of another model (SD-HuBERT), which already has a syllabic organisation; only the second
stage segments the teacher's own features. A student that starts from a small, briefly trained encoder
has no such organisation, and self-segmentation then only sharpens whatever boundaries it begins with
(on this project's corpus: word-boundary recall within 50 ms 0.53 at 4.8 segments/s, against 0.44 for
random boundaries). The oldest unsupervised syllable segmenter instead cuts at the dips of the speech
loudness between vowel nuclei (Mermelstein, 1975, "Automatic segmentation of speech into syllabic
units"); on the corpus's dev split it reaches 0.78 at a similar rate with no model at all. It uses no
transcript, so the Sylber model stays self-supervised.

1. The envelope: log energy of `hop_s` hops of the waveform (dB), smoothed by a Gaussian of
   `smooth_s` standard deviation.
2. Speech: hops whose smoothed level is within `silence_db` of the utterance's loudest hop.
3. Boundaries: the edges of each speech region, and the local minima of the envelope inside a region
   that dip at least `prominence_db` below the peaks on both sides (``scipy.signal.find_peaks`` on the
   negated envelope: its prominence is exactly this dip depth).
4. Segments: consecutive boundaries inside a speech region, mapped to an encoder's frames (frame t
   covers [t / rate + shift, (t + 1) / rate + shift) seconds), as ``(start, end)`` spans like
   ``spokenlm.encoders.sylber.segment`` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks
from torch import Tensor

from spokenlm.audio import SAMPLE_RATE

Span = tuple[int, int]  # [start_frame, end_frame)


@dataclass(frozen=True)
class EnvelopeConfig:
    """Defaults chosen on the corpus's dev split (the HMM word alignments of 66 utterances): recall 0.78
    and precision 0.51 within 50 ms at 4.9 boundaries per second."""

    hop_s: float = 0.010
    smooth_s: float = 0.015  # Gaussian standard deviation of the smoothing
    prominence_db: float = 1.0  # how deep a dip must be to cut there
    silence_db: float = 35.0  # hops this far below the utterance's loudest are non-speech

    def validate(self) -> None:
        for name in ("hop_s", "smooth_s", "prominence_db", "silence_db"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"envelope {name} must be a finite number > 0, got {value!r}")
        if round(self.hop_s * SAMPLE_RATE) < 1:
            raise ValueError(f"envelope hop_s must span at least one sample, got {self.hop_s!r}")


@dataclass(frozen=True)
class EnvelopeBoundaries:
    regions: list[tuple[float, float]]  # speech regions, seconds, ordered and disjoint
    cuts: list[float]  # envelope dips inside the regions, seconds, ordered


def envelope_boundaries(wav: Tensor | np.ndarray, config: EnvelopeConfig = EnvelopeConfig()) -> EnvelopeBoundaries:
    """Speech regions and syllable cuts of one 16 kHz mono waveform (S,). Audio shorter than one hop,
    or silent throughout, has no region."""
    config.validate()
    x = np.asarray(wav.detach().cpu().float().numpy() if isinstance(wav, Tensor) else wav, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"wav must be one mono waveform (S,), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("wav has NaN or infinite samples")
    hop = round(config.hop_s * SAMPLE_RATE)
    n = len(x) // hop
    if n == 0 or not np.any(x):
        return EnvelopeBoundaries([], [])
    db = 10 * np.log10(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-10)  # (n,)
    level = gaussian_filter1d(db, config.smooth_s / config.hop_s, mode="nearest")
    speech = level > level.max() - config.silence_db
    edges = np.flatnonzero(np.diff(np.concatenate([[0], speech.astype(np.int8), [0]])))  # starts, ends alternate
    regions = [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]  # hops [a, b)
    dips, _ = find_peaks(-level, prominence=config.prominence_db)
    cuts = [(d + 0.5) * config.hop_s for d in dips if speech[d]]  # a dip's time is its hop's centre
    return EnvelopeBoundaries([(a * config.hop_s, b * config.hop_s) for a, b in regions], cuts)


def envelope_segments(
    wav: Tensor | np.ndarray,
    *,
    num_frames: int,
    frame_rate_hz: float,
    shift_s: float = 0.0,
    config: EnvelopeConfig = EnvelopeConfig(),
) -> list[Span]:
    """The envelope's segments of one waveform on an encoder's ``num_frames`` frames: ordered, disjoint,
    within [0, num_frames), none empty (cuts that land on the same frame collapse)."""
    if num_frames < 0 or not frame_rate_hz > 0:
        raise ValueError(f"need num_frames >= 0 and frame_rate_hz > 0, got {num_frames}, {frame_rate_hz}")
    found = envelope_boundaries(wav, config)

    def frame(t: float) -> int:
        return min(max(round((t - shift_s) * frame_rate_hz), 0), num_frames)

    spans: list[Span] = []
    cuts = iter(found.cuts)
    cut = next(cuts, None)
    for start_s, end_s in found.regions:
        points = [frame(start_s)]
        while cut is not None and cut < end_s:
            points.append(frame(cut))
            cut = next(cuts, None)
        points.append(frame(end_s))
        spans += [(a, b) for a, b in zip(points, points[1:]) if b > a]
    return spans


def envelope_segment_batch(
    wav: Tensor,
    lengths: Tensor,
    frame_lengths: Tensor,
    *,
    frame_rate_hz: float,
    shift_s: float = 0.0,
    config: EnvelopeConfig = EnvelopeConfig(),
) -> list[list[Span]]:
    """``envelope_segments`` of each item of a padded batch. wav: (B, S); lengths: (B,) valid samples;
    frame_lengths: (B,) the encoder's valid frames per item."""
    return [
        envelope_segments(wav[i, : int(lengths[i])], num_frames=int(frame_lengths[i]), frame_rate_hz=frame_rate_hz,
                          shift_s=shift_s, config=config)  # fmt: skip
        for i in range(len(wav))
    ]
