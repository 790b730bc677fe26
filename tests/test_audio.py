"""Tests for spokenlm.audio: decoding, validation messages, resampling, batching, silence splitting."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spokenlm import audio
from spokenlm.audio import (
    MAX_CHUNK_S,
    MIN_DURATION_S,
    SAMPLE_RATE,
    AudioBatch,
    AudioChunk,
    AudioError,
    batch_audio,
    load_audio,
    split_on_silence,
)

SPEECH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech" / "librivox_smoke"


def sine(freq_hz: float, sample_rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_hz(wav: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> float:
    spectrum = torch.fft.rfft(wav.double()).abs()
    return float(spectrum.argmax()) * sample_rate / wav.shape[0]


def raises(message: str):
    return pytest.raises(AudioError, match=f"^{re.escape(message)}$")


# ---------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt, subtype, suffix", [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac")])
def test_lossless_round_trip_is_exact(tmp_path, fmt, subtype, suffix):
    pcm = np.round(sine(440, SAMPLE_RATE, 0.5) * 32767).astype(np.int16)
    path = tmp_path / f"a.{suffix}"
    sf.write(path, pcm, SAMPLE_RATE, format=fmt, subtype=subtype)

    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.shape == pcm.shape
    np.testing.assert_array_equal(wav.numpy(), pcm / np.float32(32768))  # same scale as int16 arrays
    assert torch.equal(load_audio(pcm, sample_rate=SAMPLE_RATE), wav)
    # str paths, bytes, bytearray and memoryview decode to the same samples
    data = path.read_bytes()
    for source in (str(path), data, bytearray(data), memoryview(data)):
        assert torch.equal(load_audio(source), wav)


@pytest.mark.parametrize(
    "fmt, subtype, suffix",
    [("OGG", "VORBIS", "ogg"), ("OGG", "OPUS", "opus"), ("MP3", "MPEG_LAYER_III", "mp3")],
)
def test_lossy_round_trip_keeps_length_and_pitch(tmp_path, fmt, subtype, suffix):
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"the installed libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}/{subtype}")
    rate = 48_000 if subtype == "OPUS" else 44_100  # Opus only runs at 8/12/16/24/48 kHz
    x = np.stack([sine(440, rate, 1.0), sine(440, rate, 1.0)], axis=1)  # (S, 2) as soundfile writes
    path = tmp_path / f"a.{suffix}"
    sf.write(path, x, rate, format=fmt, subtype=subtype)

    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.ndim == 1
    assert abs(wav.shape[0] - SAMPLE_RATE) <= 0.02 * SAMPLE_RATE  # codec delay/padding is small
    assert abs(peak_hz(wav) - 440) <= 2
    assert torch.equal(load_audio(path.read_bytes()), wav)


def test_m4a_and_webm_fall_back_to_ffmpeg(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed, cannot write M4A/WebM")
    try:
        from torchcodec.decoders import AudioDecoder  # noqa: F401
    except Exception as e:
        pytest.skip(f"torchcodec is unavailable: {e}")
    src = tmp_path / "a.wav"
    sf.write(src, sine(440, 48_000, 1.0), 48_000)
    for suffix, codec in (("m4a", "aac"), ("webm", "libopus")):
        out = tmp_path / f"a.{suffix}"
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-c:a", codec, str(out)],
            check=True,
        )
        wav = load_audio(out)
        assert abs(wav.shape[0] - SAMPLE_RATE) <= 0.05 * SAMPLE_RATE, suffix  # AAC adds priming samples
        assert abs(peak_hz(wav) - 440) <= 2, suffix


# ----------------------------------------------------------------------------------------- arrays


def test_integer_pcm_is_scaled_to_unit_range():
    pad = np.zeros(SAMPLE_RATE // 10, dtype=np.int64)  # reach MIN_DURATION_S

    def load(values, dtype):
        return load_audio(np.concatenate([np.array(values), pad]).astype(dtype), sample_rate=SAMPLE_RATE)[:3]

    assert load([-32768, 0, 16384], np.int16).tolist() == [-1.0, 0.0, 0.5]
    assert load([-(2**31), 0, 2**30], np.int32).tolist() == [-1.0, 0.0, 0.5]
    assert load([0, 128, 192], np.uint8).tolist() == [-1.0, 0.0, 0.5]


def test_float_arrays_and_tensors_are_taken_as_is():
    x = sine(440, SAMPLE_RATE, 0.2, amp=1.5)  # out of [-1, 1]: accepted, not clipped
    ref = load_audio(x, sample_rate=SAMPLE_RATE)
    np.testing.assert_array_equal(ref.numpy(), x)
    assert torch.equal(load_audio(x.astype(np.float64), sample_rate=SAMPLE_RATE), ref)
    assert torch.equal(load_audio(torch.from_numpy(x), sample_rate=16000.0), ref)  # whole-number float rate
    t = torch.from_numpy(x).requires_grad_()
    assert torch.equal(load_audio(t, sample_rate=SAMPLE_RATE), ref)
    bf16 = load_audio(torch.from_numpy(x).bfloat16(), sample_rate=SAMPLE_RATE)
    assert bf16.dtype == torch.float32 and torch.allclose(bf16, ref, atol=1e-2)


def test_channels_are_averaged_on_either_axis():
    left, right = sine(440, SAMPLE_RATE, 0.2), np.zeros(SAMPLE_RATE // 5, np.float32)
    expected = left / 2
    channels_first = np.stack([left, right])  # (2, S)
    for arr in (channels_first, channels_first.T, torch.from_numpy(channels_first)):
        np.testing.assert_allclose(load_audio(arr, sample_rate=SAMPLE_RATE).numpy(), expected, atol=1e-7)
    assert load_audio(left[None, :], sample_rate=SAMPLE_RATE).shape == left.shape  # (1, S)


@pytest.mark.parametrize(
    "rate, freq", [(8_000, 1_000.0), (22_050, 2_000.0), (44_100, 3_000.0), (48_000, 440.0)]
)
def test_resampling_keeps_duration_and_pitch(rate, freq):
    x = sine(freq, rate, 1.0)
    x = np.concatenate([x, x[:7]])  # an odd length: output is ceil(S * 16000 / rate)
    wav = load_audio(x, sample_rate=rate)
    assert wav.dtype == torch.float32
    assert wav.shape == (math.ceil(x.shape[0] * SAMPLE_RATE / rate),)
    assert abs(peak_hz(wav) - freq) <= 1.5


def test_odd_sample_rate_is_rounded_instead_of_building_a_huge_filter():
    # gcd(47999, 16000) = 1: an exact resampler would need a 16000 x 48000 kernel (3 GB)
    x = sine(1_000, 48_000, 0.2)
    wav = load_audio(x, sample_rate=47_999)
    assert wav.shape == (x.shape[0] // 3,)
    assert abs(peak_hz(wav) - 1_000) <= 5


def test_stereo_file_is_downmixed_and_resampled(tmp_path):
    x = np.stack([sine(1_000, 44_100, 0.5), sine(1_000, 44_100, 0.5, amp=0.1)], axis=1)
    sf.write(tmp_path / "s.wav", x, 44_100, subtype="FLOAT")
    wav = load_audio(tmp_path / "s.wav")
    assert wav.shape == (8_000,)
    assert abs(wav.abs().max().item() - 0.3) < 0.01  # mean of 0.5 and 0.1 amplitudes
    assert abs(peak_hz(wav) - 1_000) <= 2


# ----------------------------------------------------------------------------------------- errors


def test_encoded_input_errors(tmp_path):
    ok = tmp_path / "ok.wav"
    sf.write(ok, sine(440, SAMPLE_RATE, 0.5), SAMPLE_RATE, subtype="PCM_16")
    data = ok.read_bytes()
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    hint = "expected WAV, FLAC, OGG, MP3, M4A or WebM"

    with raises("empty audio input: 0 bytes"):
        load_audio(b"")
    with raises(f"not a recognised audio format: 11-byte input starting with b'hello wo'; {hint}"):
        load_audio(b"hello world")
    with raises(f"not a recognised audio format: 72-byte input starting with {png[:8]!r}; {hint}"):
        load_audio(png)
    with raises("could not decode 20-byte input: corrupt or truncated WAV data"):
        load_audio(data[:20])  # header cut inside the fmt chunk
    with raises("could not decode 104-byte input: corrupt or truncated WAV data"):
        load_audio(b"RIFF" + bytes(range(100)))
    with raises("could not decode 44-byte input: truncated WAV data: the data chunk declares 16000 bytes, "
                "only 0 are present"):
        load_audio(data[:44])  # a complete header, its samples cut off
    with raises("audio has no samples (duration 0.000 s)"):
        load_audio(_wav_with_data_size(data[:44], 0))  # a complete header that declares no samples
    with raises("sample_rate applies only to array input; 16044-byte input carries its own sample rate "
                "(got sample_rate=16000)"):
        load_audio(data, sample_rate=16000)

    names = ("missing.wav", "empty.wav", "x.png", "t.wav")
    missing, empty, garbage, truncated = (tmp_path / n for n in names)
    empty.write_bytes(b"")
    garbage.write_bytes(png)
    truncated.write_bytes(data[:30])
    with raises(f"audio file not found: '{missing}'"):
        load_audio(missing)
    with raises(f"audio path is a directory, not a file: '{tmp_path}'"):
        load_audio(tmp_path)
    with raises(f"empty audio file: '{empty}' is 0 bytes"):
        load_audio(empty)
    with raises(f"not a recognised audio format: file '{garbage}' starting with {png[:8]!r}; {hint}"):
        load_audio(garbage)
    with raises(f"could not decode file '{truncated}': corrupt or truncated WAV data") as info:
        load_audio(str(truncated))
    assert isinstance(info.value, ValueError) and info.value.__cause__ is not None  # decoder error chained
    with raises(f"sample_rate applies only to array input; file '{ok}' carries its own sample rate "
                "(got sample_rate=8000)"):
        load_audio(ok, sample_rate=8000)


def test_duration_errors(tmp_path):
    x = sine(440, SAMPLE_RATE, 2.0)
    with raises("audio has no samples (duration 0.000 s)"):
        load_audio(np.zeros(0, np.float32), sample_rate=SAMPLE_RATE)
    with raises("audio has no samples (duration 0.000 s)"):
        load_audio(np.zeros((2, 0), np.float32), sample_rate=SAMPLE_RATE)
    with raises("audio too short: 0.050 s, minimum is 0.100 s"):
        load_audio(x[:800], sample_rate=SAMPLE_RATE)
    assert load_audio(x[: int(MIN_DURATION_S * SAMPLE_RATE)], sample_rate=SAMPLE_RATE).shape == (1600,)
    with raises("audio too long: 2.000 s, maximum is 1.500 s"):
        load_audio(x, sample_rate=SAMPLE_RATE, max_duration_s=1.5)
    sf.write(tmp_path / "long.flac", x, SAMPLE_RATE)
    with raises("audio too long: 2.000 s, maximum is 1.000 s"):  # caught from the header, before decoding
        load_audio(tmp_path / "long.flac", max_duration_s=1)
    with raises("invalid max_duration_s 0: expected a positive number of seconds"):
        load_audio(x, sample_rate=SAMPLE_RATE, max_duration_s=0)


def test_sample_errors():
    x = sine(440, SAMPLE_RATE, 0.2)
    bad = x.copy()
    bad[[3, 50, 900]] = [np.nan, np.inf, -np.inf]
    with raises("audio contains 3 non-finite samples (NaN or Inf) out of 3200"):
        load_audio(bad, sample_rate=SAMPLE_RATE)
    with raises("audio contains 3 non-finite samples (NaN or Inf) out of 6400"):
        load_audio(np.stack([bad, x]), sample_rate=SAMPLE_RATE)
    for arr, dtype in [
        (x.astype(np.complex64), "complex64"),
        (x > 0, "bool"),
        (np.zeros(3200, np.int8), "int8"),
        (np.zeros(3200, np.int64), "int64"),
        (np.array([0.0] * 3200, dtype=object), "object"),
        (torch.zeros(3200, dtype=torch.int64), "int64"),
    ]:
        with raises(f"unsupported sample dtype {dtype}: expected float, int16, int32 or uint8 samples"):
            load_audio(arr, sample_rate=SAMPLE_RATE)
    with raises("expected audio of shape (samples,), (channels, samples) or (samples, channels), "
                "got shape (2, 2, 3200)"):
        load_audio(np.zeros((2, 2, 3200), np.float32), sample_rate=SAMPLE_RATE)
    with raises("expected at most 8 channels, got shape (16, 3200): a 2-D array is (channels, samples) or "
                "(samples, channels); load a batch one clip at a time"):
        load_audio(np.zeros((16, 3200), np.float32), sample_rate=SAMPLE_RATE)


def test_source_and_sample_rate_errors():
    x = sine(440, SAMPLE_RATE, 0.2)
    expected = "expected a path (str or os.PathLike), bytes, a numpy array or a torch Tensor"
    with raises(f"unsupported audio source type int: {expected}"):
        load_audio(3)
    with raises(f"unsupported audio source type dict: {expected}"):
        load_audio({"array": x})
    with raises("sample_rate is required for array input"):
        load_audio(x)
    for rate in (0, -16000, float("nan"), float("inf"), 16000.5, "16000", True):
        with raises(f"invalid sample_rate {rate!r}: expected a positive whole number of Hz"):
            load_audio(x, sample_rate=rate)
    with raises("sample rate 500 Hz is outside the supported range 1000 to 768000 Hz"):
        load_audio(x, sample_rate=500)


def _wav_with_data_size(header: bytes, n: int) -> bytes:
    """A 44-byte canonical WAV header with its data chunk size set to n."""
    return header[:40] + n.to_bytes(4, "little")


def _encoded(fmt: str, subtype: str, rate: int, seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, sine(440, rate, seconds), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt, subtype, rate, message",
    [
        ("WAV", "PCM_16", 16_000, "truncated WAV data: the data chunk declares 32000 bytes, only "),
        ("WAV", "FLOAT", 16_000, "truncated WAV data: the data chunk declares 64000 bytes, only "),
        ("OGG", "VORBIS", 44_100, "OGG data"),
        ("OGG", "OPUS", 48_000, "OGG data"),
        ("MP3", "MPEG_LAYER_III", 44_100, "truncated MP3 data: "),
        ("FLAC", "PCM_16", 16_000, "corrupt or truncated FLAC data"),
    ],
)
def test_truncated_files_are_refused_in_every_format(fmt, subtype, rate, message):
    """A prefix of a file is not a shorter recording: libsndfile would decode what survives (WAV, OGG,
    MP3) without a word; spokenlm checks the container against its own sizes, pages and frames (MP3: the
    last frame must be whole, and the stream as long as its Xing header says)."""
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"the installed libsndfile cannot write {fmt}/{subtype}")
    data = _encoded(fmt, subtype, rate)
    assert load_audio(data).shape[0] > 0.9 * SAMPLE_RATE  # whole, it decodes
    for keep in (0.5, 0.8, 0.97):
        cut = data[: int(len(data) * keep)]
        with pytest.raises(AudioError, match=f"^could not decode {len(cut)}-byte input: ") as info:
            load_audio(cut)
        assert message in str(info.value), (keep, str(info.value))


def test_truncated_ogg_names_the_cut_page():
    data = _encoded("OGG", "VORBIS", 44_100)
    pages = [i for i in range(len(data)) if data.startswith(b"OggS", i)]
    last = pages[-1]
    with raises(f"could not decode {last}-byte input: truncated OGG data: the last page is not marked end-of-stream"):
        load_audio(data[:last])  # cut exactly between pages
    with raises(f"could not decode {last + 30}-byte input: truncated OGG data: the page at byte {last} is cut off "
                f"at byte {last + 30}"):
        load_audio(data[: last + 30])
    with raises(f"could not decode {len(data) + 4}-byte input: corrupt OGG data: no page at byte {len(data)} of "
                f"{len(data) + 4}"):
        load_audio(data + b"junk")


def test_truncated_m4a_and_webm_are_refused(tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed, cannot write M4A/WebM")
    src = tmp_path / "a.wav"
    sf.write(src, sine(440, 48_000, 4.0), 48_000)
    for suffix, codec in (("m4a", "aac"), ("webm", "libopus")):
        out = tmp_path / f"a.{suffix}"
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-c:a", codec,
                        str(out)], check=True)  # fmt: skip
        data = out.read_bytes()
        cut = data[: len(data) // 2]
        with pytest.raises(AudioError, match=rf"^could not decode {len(cut)}-byte input: (corrupt or )?truncated "):
            load_audio(cut)


def test_wav_header_whose_sample_width_does_not_fit_its_frames():
    data = bytearray(_encoded("WAV", "PCM_16", 16_000))
    data[34:36] = (7).to_bytes(2, "little")  # bits per sample: 7, over 2-byte frames of 16-bit data
    with raises("could not decode 32044-byte input: inconsistent WAV header: 1 channel(s) of 7-bit samples need "
                "1-byte frames, but the header says 2 bytes"):
        load_audio(bytes(data))
    data[22:24] = (2).to_bytes(2, "little")  # 2 channels, as if each frame held two 8-bit samples
    data[34:36] = (8).to_bytes(2, "little")
    assert load_audio(bytes(data)).shape == (16_000,)  # consistent: read as 8-bit stereo, as it says


def test_float_samples_far_outside_unit_range_are_refused():
    x = sine(440, SAMPLE_RATE, 0.2)
    assert load_audio(x * 3, sample_rate=SAMPLE_RATE).abs().max() > 1  # some headroom is audio
    loud = x.copy()
    loud[7] = 1e30
    expected = ("audio samples reach 1e+30, far outside [-1, 1] (limit 10): float samples must be scaled to "
                "[-1, 1]; integer PCM passed as float?")  # fmt: skip
    with raises(expected):
        load_audio(loud, sample_rate=SAMPLE_RATE)
    buf = io.BytesIO()
    sf.write(buf, loud, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    with raises(expected):
        load_audio(buf.getvalue())
    with raises("audio samples reach 1.638e+04, far outside [-1, 1] (limit 10): float samples must be scaled "
                "to [-1, 1]; integer PCM passed as float?"):
        load_audio(np.round(x * 32767), sample_rate=SAMPLE_RATE)


def test_non_regular_files_are_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    result: list = []

    def load():  # opening a FIFO without a writer would block forever: run it where a hang is visible
        try:
            load_audio(fifo)
        except AudioError as e:
            result.append(str(e))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert result == [f"not a regular file: '{fifo}' is a FIFO (named pipe)"]
    with raises("not a regular file: '/dev/null' is a character device"):
        load_audio("/dev/null")


# --------------------------------------------------------------------------------------- batching


def test_batch_pads_right_with_zeros():
    waves = [torch.ones(5), torch.full((3,), 2.0, dtype=torch.float64), torch.ones(7)]
    batch = batch_audio(waves)
    assert isinstance(batch, AudioBatch)
    assert batch.wav.shape == (3, 7) and batch.wav.dtype == torch.float32
    assert batch.lengths.tolist() == [5, 3, 7] and batch.lengths.dtype == torch.int64
    assert batch.wav[1].tolist() == [2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert batch.wav[0, 5:].abs().sum() == 0
    for w, row, n in zip(waves, batch.wav, batch.lengths):
        assert torch.equal(row[:n], w.float())


def test_batch_errors():
    with raises("cannot batch an empty list of waveforms"):
        batch_audio([])
    with raises("waveform 1 must be 1-D (samples,), got shape (2, 5)"):
        batch_audio([torch.ones(5), torch.ones(2, 5)])
    with raises("waveform 0 must be a torch Tensor, got ndarray"):
        batch_audio([np.ones(5)])


# -------------------------------------------------------------------------------- long recordings


def assert_contiguous_cover(chunks: list[AudioChunk], wav: torch.Tensor, max_chunk_s: float = MAX_CHUNK_S):
    start = 0
    for chunk in chunks:
        assert chunk.start_s == start / SAMPLE_RATE  # exact offset of this chunk's first sample
        assert MIN_DURATION_S * SAMPLE_RATE <= chunk.wav.shape[0] <= max_chunk_s * SAMPLE_RATE
        assert chunk.end_s == pytest.approx((start + chunk.wav.shape[0]) / SAMPLE_RATE)
        start += chunk.wav.shape[0]
    assert torch.equal(torch.cat([c.wav for c in chunks]), wav)


def no_vad(wav, min_silence_s):
    raise AssertionError("the VAD must not run on audio that fits one chunk")


def test_short_audio_is_one_chunk_without_vad(monkeypatch):
    monkeypatch.setattr(audio, "_speech_timestamps", no_vad)
    wav = torch.randn(int(MAX_CHUNK_S * SAMPLE_RATE))  # exactly the limit
    [chunk] = split_on_silence(wav)
    assert chunk.wav is wav and chunk.start_s == 0.0
    [chunk] = split_on_silence(wav[:5000], max_chunk_s=1.0)
    assert chunk.wav.shape == (5000,)


def fake_vad(regions_s):
    return lambda wav, min_silence_s: [(int(a * SAMPLE_RATE), int(b * SAMPLE_RATE)) for a, b in regions_s]


@pytest.mark.parametrize(
    "regions_s, expected_cut_s",
    [
        ([(0, 18), (18.2, 25), (27, 40)], 26.0),  # the longest pause in [15, 30] s, not the latest
        ([(0, 10), (11, 40)], 10.5),  # no pause in [15, 30] s: the last pause before it
        ([(0, 0.5), (1.5, 40)], 1.0),
    ],
)
def test_cut_rules_with_a_fake_vad(monkeypatch, regions_s, expected_cut_s):
    monkeypatch.setattr(audio, "_speech_timestamps", fake_vad(regions_s))
    wav = torch.randn(40 * SAMPLE_RATE) * 0.1
    chunks = split_on_silence(wav)
    assert chunks[1].start_s == expected_cut_s
    assert_contiguous_cover(chunks, wav)


def test_speech_longer_than_a_chunk_is_cut_at_its_quietest_point(monkeypatch):
    monkeypatch.setattr(audio, "_speech_timestamps", fake_vad([(0, 70)]))  # one 70 s speech region
    gen = torch.Generator().manual_seed(0)
    wav = torch.randn(70 * SAMPLE_RATE, generator=gen) * 0.1
    wav[20 * SAMPLE_RATE : int(20.2 * SAMPLE_RATE)] = 0.0  # the only quiet moment in [15, 30] s
    chunks = split_on_silence(wav)
    assert 20.0 <= chunks[1].start_s <= 20.2
    assert_contiguous_cover(chunks, wav)


def test_pure_silence_is_cut_at_the_limit(monkeypatch):
    monkeypatch.setattr(audio, "_speech_timestamps", fake_vad([]))
    wav = torch.zeros(65 * SAMPLE_RATE)
    chunks = split_on_silence(wav)
    assert chunks[1].start_s == 30.0
    assert_contiguous_cover(chunks, wav)


def test_split_errors():
    with raises("split_on_silence expects a 1-D float waveform at 16000 Hz, got (2, 100)"):
        split_on_silence(torch.zeros(2, 100))
    with raises("split_on_silence expects a 1-D float waveform at 16000 Hz, got ndarray"):
        split_on_silence(np.zeros(100))
    with raises("invalid max_chunk_s 0.5: expected at least 1.0 s"):
        split_on_silence(torch.zeros(100), max_chunk_s=0.5)


@pytest.fixture(scope="module")
def speech_with_pauses():
    """~70 s of real read speech: 5 LibriVox clips, twice, with 1.5-2.5 s of silence between clips.

    Returns the waveform and the inserted silences as [(start, end)) sample indices.
    """
    clips = sorted(SPEECH_DIR.glob("*.wav"))
    if not clips:
        pytest.skip(f"no real speech clips in {SPEECH_DIR}")
    speech = [load_audio(p) for p in clips] * 2
    pieces, silences, pos = [], [], 0
    for i, clip in enumerate(speech):
        gap = torch.zeros(int((1.5 + 0.5 * (i % 3)) * SAMPLE_RATE))
        pieces += [clip, gap]
        silences.append((pos + clip.shape[0], pos + clip.shape[0] + gap.shape[0]))
        pos += clip.shape[0] + gap.shape[0]
    return torch.cat(pieces), silences


def test_long_speech_is_cut_inside_pauses(speech_with_pauses):
    wav, silences = speech_with_pauses
    assert 60 < wav.shape[0] / SAMPLE_RATE < 80
    chunks = split_on_silence(wav)
    assert len(chunks) >= 3
    assert_contiguous_cover(chunks, wav)
    for chunk in chunks[1:]:
        cut = round(chunk.start_s * SAMPLE_RATE)
        assert any(a < cut < b for a, b in silences), f"cut at {chunk.start_s:.2f} s is not in a pause"


def test_concurrent_splits_match_a_sequential_one(speech_with_pauses):
    wav = speech_with_pauses[0][: 40 * SAMPLE_RATE]
    expected = [c.start_s for c in split_on_silence(wav, max_chunk_s=15.0)]
    results = [None] * 2

    def work(i):
        results[i] = [c.start_s for c in split_on_silence(wav, max_chunk_s=15.0)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected, expected]


def test_import_is_light():
    code = (
        "import sys, spokenlm.audio; "
        "print(sorted(m for m in ('silero_vad', 'torchcodec') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
