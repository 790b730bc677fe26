"""Sylber segmentation time vs audio length: it must grow linearly (Cho et al., 2024, §3.3).

Times ``spokenlm.encoders.sylber.segment`` on 50 Hz features (HuBERT-base width, 768) for
10 s ... 10 min of audio and prints the time per second of audio, for two inputs:
- random frames, the worst case for boundary count: no two frames are similar, so every frame is
  its own segment and every frame boundary is merge-checked;
- syllable-like frames: constant random directions over 4-16 frames plus noise, with short
  silences, so the post-pass refines boundaries inside wide windows (half of each neighbour).
Linear cost keeps time per second flat, so the last line's ratio = time(10 min) / time(10 s) / 60
(random frames) stays near 1; an O(T^2) algorithm would give ~60.

    python bench/sylber_scaling.py [--dim 768] [--min-seconds 1.0]

Each point is the median of as many runs as fit in --min-seconds (at least 3): on a shared machine
the median is steadier than the minimum, which rewards the many short runs of small inputs with
lucky quiet moments. BLAS is held to one thread: the scan is sequential, and small matrix products
only lose to thread start-up.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy / torch load their BLAS

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from spokenlm.encoders.sylber import segment

FRAME_RATE_HZ = 50
DURATIONS_S = [10, 30, 60, 120, 300, 600]


def syllable_like(frames: int, dim: int, g: torch.Generator) -> torch.Tensor:
    """(frames, dim): runs of 4-16 frames around one random direction (norm ~28), noise, and a
    quarter of the runs replaced by silence (norm ~0.3)."""
    lengths = torch.randint(4, 17, (frames // 4 + 1,), generator=g)
    lengths = lengths[: int((lengths.cumsum(0) < frames).sum()) + 1]
    x = torch.randn(len(lengths), dim, generator=g).repeat_interleave(lengths, dim=0)[:frames]
    x = x + 0.3 * torch.randn(x.shape, generator=g)
    silent = (torch.rand(len(lengths), generator=g) < 0.25).repeat_interleave(lengths)[:frames]
    return torch.where(silent[:, None], 0.01 * x, x)


def median_time(features: torch.Tensor, min_seconds: float) -> tuple[float, int]:
    """Median seconds per ``segment`` call and the segment count."""
    runs: list[float] = []
    count = 0
    while len(runs) < 3 or sum(runs) < min_seconds:
        start = time.perf_counter()
        count = len(segment(features))
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time spent per point, at least")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    times: dict[str, dict[int, float]] = {"random": {}, "syllable-like": {}}
    print(f"{'input':>13} {'audio':>6} {'frames':>7} {'segments':>8} {'time s':>8} {'ms per s of audio':>18}")
    for kind, make in (("random", lambda t: torch.randn(t, args.dim, generator=g)),
                       ("syllable-like", lambda t: syllable_like(t, args.dim, g))):
        for seconds in DURATIONS_S:
            features = make(seconds * FRAME_RATE_HZ)  # (T, D)
            elapsed, count = median_time(features, args.min_seconds)
            times[kind][seconds] = elapsed
            print(f"{kind:>13} {seconds:>5}s {len(features):>7} {count:>8} {elapsed:>8.3f} "
                  f"{1000 * elapsed / seconds:>18.3f}")
    ratios = {kind: t[600] / t[10] / 60 for kind, t in times.items()}
    per_second = ", ".join(f"{s}s={1000 * t / s:.2f}ms" for s, t in times["random"].items())
    print(
        f"bench sylber-scaling: dim={args.dim} random frames, time per second of audio: {per_second}; "
        f"syllable-like ratio={ratios['syllable-like']:.2f}; ratio={ratios['random']:.2f}"
    )


if __name__ == "__main__":
    main()
