"""Sylber's segmentation (Cho et al., 2024, §3.3): syllable-like segments of frame features, the step
between an encoder and the syllable compressor (``spokenlm.compress.syllable``).

``segment`` (one utterance, a linear-time greedy scan, then merge-or-refine of each similarity
boundary; O(T * D)), ``segment_batch`` (over lengths), ``pool_segments`` (segment means, one scatter
for the batch), ``check_thresholds`` and the published inference thresholds. Frames whose feature
norm is below the norm threshold are non-speech and belong to no segment.

Not here: the Sylber encoder and its objective (``spokenlm.encoders.sylber``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NORM_THRESHOLD = 2.6  # published inference default: frames with a smaller feature norm are non-speech
MERGE_THRESHOLD = 0.8  # published inference default: cosine similarity that keeps a frame in a segment
EPS = 1e-8  # the authors' epsilon inside norms

Span = tuple[int, int]  # [start_frame, end_frame)


# ----------------------------------------------------------------------------------------------
# Segmentation (§3.3): greedy scan, then merge-or-refine each similarity boundary. O(T * D).


def segment(
    features: Tensor | np.ndarray,
    *,
    norm_threshold: float = NORM_THRESHOLD,
    merge_threshold: float = MERGE_THRESHOLD,
) -> list[Span]:
    """Syllable-like segments of one utterance's frames, ordered, disjoint, within [0, T).

    features: (T, D). Three passes, each linear in T:

    1. A frame whose L2 norm is below ``norm_threshold`` is non-speech: it belongs to no segment and
       ends the current one.
    2. A greedy scan grows the current segment while the cosine similarity between the next frame
       and the segment's running mean stays >= ``merge_threshold``; otherwise that frame opens a new
       segment (a "similarity boundary"; boundaries at non-speech are final).
    3. Each similarity boundary, left to right: if the two segments' means have cosine similarity
       >= ``merge_threshold`` they merge; otherwise the boundary moves to the b in a window of half
       of each neighbour around it that maximises sum_{t<b} cos(x_t, left mean) + sum_{t>=b}
       cos(x_t, right mean). Both segments keep at least one frame.

    Segment sums are kept instead of re-averaging frames (cosine ignores scale), so a merge costs
    O(D) and a refinement O(window * D); every frame sits in at most two windows. The authors'
    reference loop counts frames across a similarity break, so a new segment's first frame carries
    the old segment's weight in its running mean; we use the true running mean, as the paper states.
    """
    x = _as_array(features)  # float32 stays a view; sums and similarities are float64
    if x.ndim != 2:
        raise ValueError(f"features must be (T, D), got shape {x.shape}")
    check_thresholds(norm_threshold, merge_threshold)
    sq = np.einsum("td,td->t", x, x, dtype=np.float64)  # (T,) squared norms
    norms = np.sqrt(sq + EPS)  # the authors' eps
    segs = _greedy_scan(x, sq, norms >= norm_threshold, merge_threshold)
    for left in segs.soft:  # left segment of each similarity boundary, in time order
        _merge_or_refine(x, norms, segs, left, merge_threshold)
    return [(s, e) for s, e, alive in zip(segs.starts, segs.ends, segs.alive) if alive]


@dataclass
class _Segments:
    """Segments as parallel lists, so merges and boundary moves are O(1) list updates."""

    starts: list[int]
    ends: list[int]
    sums: list[np.ndarray]  # sum of the segment's frames (D,); cosine ignores the 1 / count
    sq: list[float]  # |sum|^2
    alive: list[bool]  # False once merged into the next segment
    soft: list[int]  # i: segments i and i + 1 meet at a similarity break (not at non-speech)

    def close(self, start: int, end: int, total: np.ndarray, total_sq: float) -> None:
        self.starts.append(start), self.ends.append(end), self.sums.append(total), self.sq.append(total_sq)
        self.alive.append(True)


def _greedy_scan(x: np.ndarray, sq: np.ndarray, speech: np.ndarray, threshold: float) -> _Segments:
    segs = _Segments([], [], [], [], [], [])
    start, total, total_sq = -1, np.zeros(x.shape[1]), 0.0
    for t in range(len(x)):
        if not speech[t]:
            if start >= 0:
                segs.close(start, t, total, total_sq)
                start = -1
            continue
        if start < 0:
            start, total, total_sq = t, x[t].astype(np.float64), float(sq[t])
            continue
        dot = float(total @ x[t])
        # cos(running mean, x_t) == cos(running sum, x_t); the eps only guards a zero norm threshold
        if dot >= threshold * math.sqrt(total_sq * sq[t] + EPS):
            total += x[t]
            total_sq += 2 * dot + sq[t]  # |s + x|^2
        else:
            segs.soft.append(len(segs.starts))
            segs.close(start, t, total, total_sq)
            start, total, total_sq = t, x[t].astype(np.float64), float(sq[t])
    if start >= 0:
        segs.close(start, len(x), total, total_sq)
    return segs


def _merge_or_refine(x: np.ndarray, norms: np.ndarray, segs: _Segments, a: int, threshold: float) -> None:
    b = a + 1
    sa, sb = segs.sums[a], segs.sums[b]
    dot = float(sa @ sb)
    na, nb = math.sqrt(segs.sq[a] + EPS), math.sqrt(segs.sq[b] + EPS)
    if dot >= threshold * na * nb:  # similar means: b absorbs a
        segs.starts[b], segs.sums[b], segs.alive[a] = segs.starts[a], sa + sb, False
        segs.sq[b] = segs.sq[a] + 2 * dot + segs.sq[b]
        return
    boundary = segs.ends[a]
    lo = max(segs.starts[a], boundary - max(1, (boundary - segs.starts[a]) // 2))
    hi = min(segs.ends[b], boundary + max(1, (segs.ends[b] - boundary) // 2))
    first = max(0, segs.starts[a] + 1 - lo)  # candidates lo + i, i in [first, W): both keep a frame
    if first == hi - lo - 1:
        return  # one candidate: the boundary itself
    # a boundary at lo + i scores sum_{t < i} cos(x_t, a) + sum_{t >= i} cos(x_t, b) over the window,
    # i.e. (a constant) + c[i - 1] with c the prefix sums of cos(x_t, a) - cos(x_t, b)
    window = x[lo:hi]  # (W, D)
    c = np.cumsum((window @ sa / na - window @ sb / nb) / norms[lo:hi])  # (W,)
    if first == 0:  # i = 0 scores 0 and wins ties, being the first maximum (W >= 2 always)
        j = int(np.argmax(c[:-1]))
        i = j + 1 if c[j] > 0 else 0
    else:
        i = first + int(np.argmax(c[first - 1 : -1]))
    new = lo + i
    if new == boundary:
        return
    if new < boundary:
        moved = x[new:boundary].sum(axis=0)
        sa, sb = sa - moved, sb + moved
    else:
        moved = x[boundary:new].sum(axis=0)
        sa, sb = sa + moved, sb - moved
    segs.sums[a], segs.sums[b], segs.sq[a], segs.sq[b] = sa, sb, float(sa @ sa), float(sb @ sb)
    segs.ends[a] = segs.starts[b] = new


def _as_array(features: Tensor | np.ndarray) -> np.ndarray:
    """float32 / float64 as they are (no copy for a CPU tensor); anything else as float64."""
    if isinstance(features, Tensor):
        features = features.detach().cpu()
        if features.dtype not in (torch.float32, torch.float64):
            features = features.double()
        return features.numpy()
    features = np.asarray(features)
    return features if features.dtype in (np.float32, np.float64) else features.astype(np.float64)


def check_thresholds(norm_threshold: float, merge_threshold: float) -> None:
    """Raise ValueError naming a norm threshold that is not a finite number >= 0 or a merge
    threshold outside [-1, 1]."""
    if not (isinstance(norm_threshold, (int, float)) and math.isfinite(norm_threshold) and norm_threshold >= 0):
        raise ValueError(f"norm_threshold must be a finite number >= 0, got {norm_threshold!r}")
    if not (isinstance(merge_threshold, (int, float)) and -1.0 <= merge_threshold <= 1.0):
        raise ValueError(f"merge_threshold must be a cosine similarity in [-1, 1], got {merge_threshold!r}")


def segment_batch(
    features: Tensor,
    lengths: Tensor,
    *,
    norm_threshold: float = NORM_THRESHOLD,
    merge_threshold: float = MERGE_THRESHOLD,
) -> list[list[Span]]:
    """``segment`` per item over its valid frames: features (B, T, D), lengths (B,) valid frames.

    An item may get no segment at all (every valid frame below the norm threshold).
    """
    if features.ndim != 3:
        raise ValueError(f"features must be (B, T, D), got shape {tuple(features.shape)}")
    if lengths.ndim != 1 or lengths.shape[0] != features.shape[0]:
        raise ValueError(f"lengths must have shape ({features.shape[0]},), got {tuple(lengths.shape)}")
    frames = features.shape[1]
    x = _as_array(features)  # one device->host copy for the batch
    out = []
    for i, n in enumerate(lengths.tolist()):
        if not 0 <= n <= frames:
            raise ValueError(f"item {i} has length {n}; lengths must be in [0, {frames}]")
        out.append(segment(x[i, :n], norm_threshold=norm_threshold, merge_threshold=merge_threshold))
    return out


def pool_segments(features: Tensor, segments: list[list[Span]]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean of each segment's frames, differentiable, one scatter over the batch.

    features: (B, T, D); segments: per item, disjoint [start, end) spans.
    Returns embeddings (B, N, D) zero-padded, lengths (B,) int64 segments per item, and
    token_of_frame (B, T) int64: the segment index of each frame, -1 for frames in none.
    """
    batch, frames, dim = features.shape
    if len(segments) != batch:
        raise ValueError(f"got segments for {len(segments)} items, features for {batch}")
    n_max = max((len(s) for s in segments), default=0)
    token = np.full((batch, frames), -1, dtype=np.int64)
    for b, spans in enumerate(segments):
        for j, (start, end) in enumerate(spans):
            token[b, start:end] = j
    token_of_frame = torch.from_numpy(token).to(features.device)
    inside = token_of_frame >= 0  # (B, T)
    slot = (torch.arange(batch, device=features.device)[:, None] * n_max + token_of_frame)[inside]  # (K,)
    sums = features.new_zeros(batch * n_max, dim).index_add(0, slot, features[inside])
    counts = features.new_zeros(batch * n_max).index_add(0, slot, features.new_ones(slot.shape[0]))
    embeddings = (sums / counts.clamp(min=1)[:, None]).view(batch, n_max, dim)
    lengths = torch.tensor([len(s) for s in segments], dtype=torch.long, device=features.device)
    return embeddings, lengths, token_of_frame
