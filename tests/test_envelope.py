"""The loudness-envelope syllable segmenter (spokenlm/envelope.py): where it cuts on audio built to have
known syllables, how its cuts land on an encoder's frames, and its errors."""

import math

import numpy as np
import pytest
import torch

from spokenlm.audio import SAMPLE_RATE
from spokenlm.envelope import EnvelopeConfig, envelope_boundaries, envelope_segment_batch, envelope_segments


def _syllables(levels_and_seconds: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    """A 300 Hz tone whose amplitude steps through (level, seconds) pieces, with smooth 30 ms ramps,
    plus faint noise; level 0 is silence."""
    rng = np.random.default_rng(seed)
    amplitude = np.concatenate([np.full(round(s * SAMPLE_RATE), a) for a, s in levels_and_seconds])
    ramp = round(0.03 * SAMPLE_RATE)
    amplitude = np.convolve(amplitude, np.ones(ramp) / ramp, mode="same")
    t = np.arange(len(amplitude)) / SAMPLE_RATE
    return amplitude * np.sin(2 * np.pi * 300 * t) + 1e-5 * rng.standard_normal(len(t))


# three syllables: loud 0.2 s, a dip to 5 % at 0.30 s, loud; a silence from 0.6 to 0.9 s; one more
AUDIO = [(0.0, 0.1), (0.5, 0.15), (0.025, 0.1), (0.5, 0.25), (0.0, 0.3), (0.4, 0.3), (0.0, 0.1)]
DIP_S, REGIONS_S = 0.30, [(0.1, 0.6), (0.9, 1.2)]


def test_cuts_at_the_dip_and_bounds_speech_at_the_silences():
    found = envelope_boundaries(torch.from_numpy(_syllables(AUDIO)).float())
    assert len(found.regions) == 2 and len(found.cuts) == 1
    for (start, end), (want_start, want_end) in zip(found.regions, REGIONS_S):
        assert start == pytest.approx(want_start, abs=0.03) and end == pytest.approx(want_end, abs=0.03)
    assert found.cuts[0] == pytest.approx(DIP_S, abs=0.015)
    # a shallower dip than prominence_db is no cut
    assert envelope_boundaries(_syllables(AUDIO), EnvelopeConfig(prominence_db=40.0)).cuts == []


def test_segments_on_encoder_frames_are_ordered_disjoint_and_within():
    wav = _syllables(AUDIO)
    frames = len(wav) // 320
    spans = envelope_segments(wav, num_frames=frames, frame_rate_hz=50.0)
    assert len(spans) == 3
    assert all(0 <= s < e <= frames for s, e in spans) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert spans[0][1] == spans[1][0] == round(DIP_S * 50)  # the dip splits the first region
    # a frame shift of c seconds moves every boundary by c * rate frames the other way
    shifted = envelope_segments(wav, num_frames=frames, frame_rate_hz=50.0, shift_s=0.04)
    assert [(s + 2, e + 2) for s, e in shifted] == spans
    # frames past the encoder's last are clipped, and spans left empty are dropped
    assert envelope_segments(wav, num_frames=40, frame_rate_hz=50.0) == [(s, min(e, 40)) for s, e in spans if s < 40]


def test_batch_equals_per_item_and_ignores_padding():
    a, b = _syllables(AUDIO), _syllables(AUDIO[:4], seed=1)
    batch = torch.zeros(2, len(a))
    batch[0], batch[1, : len(b)] = torch.from_numpy(a), torch.from_numpy(b)
    batch[1, len(b) :] = 0.9  # loud padding must not count
    lengths = torch.tensor([len(a), len(b)])
    frames = lengths // 320
    got = envelope_segment_batch(batch, lengths, frames, frame_rate_hz=50.0)
    want = [envelope_segments(x, num_frames=int(n), frame_rate_hz=50.0) for x, n in ((a, frames[0]), (b, frames[1]))]
    assert got == want and len(got[1]) == 2


def test_silence_and_short_audio_have_no_segments():
    assert envelope_segments(np.zeros(SAMPLE_RATE), num_frames=50, frame_rate_hz=50.0) == []
    assert envelope_boundaries(np.ones(10)).regions == []  # shorter than one hop


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: envelope_boundaries(np.zeros((2, 100))), r"one mono waveform \(S,\), got shape \(2, 100\)"),
        (lambda: envelope_boundaries(np.array([0.0, math.nan] * 200)), "wav has NaN or infinite samples"),
        (lambda: envelope_boundaries(np.zeros(400), EnvelopeConfig(silence_db=-1)), "envelope silence_db must be"),
        (lambda: envelope_boundaries(np.zeros(400), EnvelopeConfig(smooth_s=math.inf)), "envelope smooth_s must be"),
        (lambda: envelope_boundaries(np.zeros(400), EnvelopeConfig(hop_s=1e-6)), "hop_s must span at least one sample"),
        (lambda: envelope_segments(np.zeros(400), num_frames=-1, frame_rate_hz=50.0), "need num_frames >= 0"),
    ],
)
def test_bad_input_names_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()
