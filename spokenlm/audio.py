"""Audio in: load, validate, downmix, resample to 16 kHz, batch, and cut long recordings at pauses.

This is the first pipeline stage and the library's audio boundary: everything past it may assume
mono float32 at ``SAMPLE_RATE`` with a sane duration and finite samples. Every bad input raises
``AudioError`` naming the problem; the decoder's own exception, if any, is chained as its cause.

- ``load_audio``: a path, encoded bytes, or a numpy array / torch Tensor → (S,) float32 at 16 kHz.
  Files and bytes are decoded by libsndfile (soundfile: WAV, FLAC, OGG Vorbis/Opus, MP3, AIFF, ...);
  MP4/M4A and WebM, which libsndfile cannot read, fall back to torchcodec (FFmpeg) when installed.
- ``batch_audio``: a list of waveforms → ``AudioBatch`` (right-zero-padded wav + lengths), the shape
  every ``SpeechEncoder`` takes.
- ``split_on_silence``: a long waveform → contiguous ``AudioChunk``s of at most ``MAX_CHUNK_S``, cut
  inside pauses found by silero-vad, so each chunk fits an encoder window and keeps its time offset.

It does not compute features (that is the encoder's job) and never writes audio.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

SAMPLE_RATE = 16_000  # Hz; every encoder in spokenlm is trained at this rate
MIN_DURATION_S = 0.1  # shorter clips give the 20 ms-stride conv stack only a handful of frames
MAX_DURATION_S = 3600.0  # default cap for load_audio: 1 h is ~230 MB of float32 at 16 kHz
MAX_CHUNK_S = 30.0  # longest piece split_on_silence hands to an encoder (Whisper's window too)

MAX_ABS_SAMPLE = 10.0  # 20 dB over full scale: louder float samples are unscaled PCM or garbage, not audio
MAX_CHANNELS = 8  # 7.1 surround; a 2-D array with more on both axes is likely a batch, not a clip
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000

# An exact sinc resampler for sr -> 16 kHz builds a (16000/g, sr/g) kernel, g = gcd(sr, 16000).
# Rates like 47999 Hz make that billions of floats (a denial of service hidden in a WAV header),
# so above this size the rate is rounded to the nearest 100 Hz first (kernel <= 160 x 7680).
_MAX_RESAMPLE_KERNEL = 1 << 22

_FRAME = SAMPLE_RATE // 100  # 10 ms frames for the quietest-point search
_UNKNOWN_SIZE = 0x7FFF0000  # WAV data sizes from here up (and 0) are placeholders of streamed writers
_OGG_EOS = 0x04  # header_type flag of a logical stream's last page (RFC 3533 section 6)
# MPEG audio frame headers (ISO 11172-3 section 2.4.2.3): kbit/s by (MPEG-1?, layer) and bitrate index,
# sample rates by version bits (MPEG-2.5, -, MPEG-2, MPEG-1) and rate index.
_MP3_KBPS = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}
_FORMATS_HINT = "WAV, FLAC, OGG, MP3, M4A or WebM"
_NEEDS_FFMPEG = {"MP4/M4A", "WebM/Matroska"}  # containers libsndfile cannot open


class AudioError(ValueError):
    """Audio that cannot be used: undecodable, wrong shape or type, too short or long, non-finite."""


@dataclass(frozen=True)
class AudioBatch:
    """Waveforms padded for an encoder; pass ``(batch.wav, batch.lengths)`` to a ``SpeechEncoder``."""

    wav: Tensor  # (B, S_max) float32 at 16 kHz, zero-padded on the right
    lengths: Tensor  # (B,) int64, valid samples per item


@dataclass(frozen=True)
class AudioChunk:
    """One piece of a longer recording, as cut by ``split_on_silence``."""

    wav: Tensor  # (S,) a view into the original waveform (no copy)
    start_s: float  # offset of wav[0] in the original recording, = start_sample / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.start_s + self.wav.shape[-1] / SAMPLE_RATE


# ---------------------------------------------------------------------------------------- loading


def load_audio(
    source: str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Tensor,
    *,
    sample_rate: int | None = None,
    max_duration_s: float = MAX_DURATION_S,
) -> Tensor:
    """Load ``source`` as mono float32 (S,) at ``SAMPLE_RATE``.

    source:
      - a path (str or os.PathLike) or encoded bytes: the file's own sample rate is used and
        ``sample_rate`` must be None. Integer PCM is scaled to [-1, 1) by the decoder.
      - a numpy array or torch Tensor of samples, with ``sample_rate`` required. Shape (S,), or 2-D
        with channels on the shorter axis: (C, S) as torchaudio writes it or (S, C) as soundfile
        does, C <= MAX_CHANNELS. dtype: any float (taken as is, no clipping; |x| <= MAX_ABS_SAMPLE), or PCM
        integers int16 and int32 (divided by 2**15 / 2**31) or uint8 (offset 128, divided by 128). Other
        dtypes (int8, int64, bool, complex, object) are rejected: in practice they are labels or
        token ids passed by mistake, not audio.
    Channels are averaged; the result is resampled with ``torchaudio.functional.resample``. Rates
    must lie in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]; one with no small ratio to 16 kHz (47999 Hz)
    is taken as the nearest multiple of 100 Hz, see _MAX_RESAMPLE_KERNEL.
    Raises AudioError for anything unusable; duration must be in [MIN_DURATION_S, max_duration_s].
    Files and bytes must be whole: a WAV or OGG shorter than its own header or pages say, a WAV header
    whose sample width does not fit its frame size, or an FFmpeg decode shorter than the container's
    duration is an AudioError, not a transcript of whatever prefix survives. Paths must be regular files
    (a FIFO or a device would block or never end).
    """
    if not (isinstance(max_duration_s, (int, float)) and max_duration_s > 0):  # also rejects NaN
        raise AudioError(f"invalid max_duration_s {max_duration_s!r}: expected a positive number of seconds")

    if isinstance(source, (str, os.PathLike)):
        _no_rate_for_encoded(sample_rate, f"file '{os.fspath(source)}'")
        samples, sr = _decode_file(Path(source), max_duration_s)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise AudioError("empty audio input: 0 bytes")
        _no_rate_for_encoded(sample_rate, f"{len(data)}-byte input")
        samples, sr = _decode_bytes(data, max_duration_s)
    elif isinstance(source, (np.ndarray, Tensor)):
        if sample_rate is None:
            raise AudioError("sample_rate is required for array input")
        sr = _check_sample_rate_arg(sample_rate)
        samples = _array_to_channels_first(source)
    else:
        raise AudioError(
            f"unsupported audio source type {type(source).__name__}: expected a path "
            "(str or os.PathLike), bytes, a numpy array or a torch Tensor"
        )
    return _to_mono_16k(samples, sr, max_duration_s)


def _no_rate_for_encoded(sample_rate: object, what: str) -> None:
    if sample_rate is not None:
        raise AudioError(
            f"sample_rate applies only to array input; {what} carries its own sample rate "
            f"(got sample_rate={sample_rate!r})"
        )


def _check_sample_rate_arg(sample_rate: object) -> int:
    ok = isinstance(sample_rate, (int, float, np.integer, np.floating)) and not isinstance(sample_rate, bool)
    if not ok or not math.isfinite(sample_rate) or sample_rate <= 0 or sample_rate != int(sample_rate):
        raise AudioError(f"invalid sample_rate {sample_rate!r}: expected a positive whole number of Hz")
    return int(sample_rate)


def _check_rate_range(sr: int) -> None:
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"sample rate {sr} Hz is outside the supported range {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )


def _check_duration(num_samples: int, sr: int, max_duration_s: float) -> None:
    duration = num_samples / sr
    if num_samples == 0:
        raise AudioError(f"audio has no samples (duration {duration:.3f} s)")
    if duration < MIN_DURATION_S:
        raise AudioError(f"audio too short: {duration:.3f} s, minimum is {MIN_DURATION_S:.3f} s")
    if duration > max_duration_s:
        raise AudioError(f"audio too long: {duration:.3f} s, maximum is {max_duration_s:.3f} s")


def _sniff(head: bytes) -> str | None:
    """Container named by the first bytes, or None when they look like no audio format we know."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64"):
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "OGG"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "MP3"  # an ID3 tag or an MPEG audio frame sync
    if head[:4] == b"FORM":
        return "AIFF"
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM/Matroska"
    return {b"caff": "CAF", b".snd": "AU"}.get(head[:4])


def _decode_file(path: Path, max_duration_s: float) -> tuple[np.ndarray, int]:
    if not path.exists():
        raise AudioError(f"audio file not found: '{path}'")
    if path.is_dir():
        raise AudioError(f"audio path is a directory, not a file: '{path}'")
    kind = _special_file_kind(path.stat().st_mode)
    if kind is not None:  # opening a FIFO blocks until a writer comes; a device may never end
        raise AudioError(f"not a regular file: '{path}' is {kind}")
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError as e:
        raise AudioError(f"could not read audio file '{path}': {e.strerror or e}") from e
    if not head:
        raise AudioError(f"empty audio file: '{path}' is 0 bytes")
    return _decode(str(path), head, f"file '{path}'", max_duration_s)


def _special_file_kind(mode: int) -> str | None:
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def _decode_bytes(data: bytes, max_duration_s: float) -> tuple[np.ndarray, int]:
    return _decode(data, data[:12], f"{len(data)}-byte input", max_duration_s)


def _decode(src: str | bytes, head: bytes, what: str, max_duration_s: float) -> tuple[np.ndarray, int]:
    """Decode with libsndfile, or FFmpeg for containers it lacks → ((C, S) float32, sample rate)."""
    import soundfile as sf

    def opened():  # soundfile consumes file objects, so bytes need a fresh one per call
        return io.BytesIO(src) if isinstance(src, bytes) else src

    fmt = _sniff(head)
    try:
        info = sf.info(opened())
    except Exception as e:  # libsndfile cannot open it: unknown format, or a damaged header
        if fmt is None:
            raise AudioError(
                f"not a recognised audio format: {what} starting with {head[:8]!r}; expected {_FORMATS_HINT}"
            ) from e
        if fmt in _NEEDS_FFMPEG:
            return _decode_ffmpeg(src, fmt, what, max_duration_s)
        raise AudioError(f"could not decode {what}: corrupt or truncated {fmt} data") from e

    # Check the header before decoding, so an hour-long (or lying) file costs nothing.
    _check_rate_range(info.samplerate)
    if info.frames > 0:
        _check_duration(info.frames, info.samplerate, max_duration_s)
    _check_container(opened(), fmt, what)
    try:
        samples, sr = sf.read(opened(), dtype="float32", always_2d=True)  # (S, C)
    except Exception as e:
        raise AudioError(f"could not decode {what}: corrupt or truncated {fmt or info.format} data") from e
    return samples.T, sr


def _decode_ffmpeg(src: str | bytes, fmt: str, what: str, max_duration_s: float) -> tuple[np.ndarray, int]:
    try:
        from torchcodec.decoders import AudioDecoder
    except Exception as e:  # not installed, or FFmpeg's shared libraries are missing
        raise AudioError(
            f"could not decode {what}: {fmt} needs torchcodec with FFmpeg, which is not available"
        ) from e
    try:
        decoder = AudioDecoder(src)
        sr = int(decoder.metadata.sample_rate)
        _check_rate_range(sr)
        header_s = decoder.metadata.duration_seconds
        if header_s is not None and header_s > max_duration_s:
            _check_duration(math.ceil(header_s * sr), sr, max_duration_s)
        samples = decoder.get_all_samples().data  # (C, S) float32 in [-1, 1]
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"could not decode {what}: corrupt or truncated {fmt} data") from e
    decoded_s = samples.shape[-1] / sr
    if header_s is not None and decoded_s < header_s - max(0.1, 0.02 * header_s):  # a frame or two of slack
        raise AudioError(
            f"could not decode {what}: truncated {fmt} data: the container says {header_s:.3f} s, "
            f"only {decoded_s:.3f} s decode"
        )
    return samples.numpy(), sr


# ------------------------------------------------------------------------- container structure


def _check_container(f, fmt: str | None, what: str) -> None:
    """Structural checks libsndfile skips: it decodes the prefix of a truncated WAV or OGG without a
    word, and reads a WAV whose bit depth does not fit its frame size as some other layout."""
    with f if hasattr(f, "read") else open(f, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        if fmt == "WAV":
            _check_wav(f, size, what)
        elif fmt == "OGG":
            _check_ogg(f, size, what)
        elif fmt == "MP3":
            f.seek(0)
            _check_mp3(f.read(), what)


def _check_wav(f, size: int, what: str) -> None:
    """RIFF/RIFX chunks up to `data`: the fmt chunk's sample width fits its frame size, and the data
    chunk is as long as it says (RF64/BW64 keep their sizes in ds64, which libsndfile checks)."""
    f.seek(0)
    riff = f.read(12)
    if riff[:4] not in (b"RIFF", b"RIFX"):
        return
    order = ">" if riff[:4] == b"RIFX" else "<"
    pos = 12
    while pos + 8 <= size:
        f.seek(pos)
        chunk, n = struct.unpack(order + "4sI", f.read(8))
        if chunk == b"fmt ":
            _check_wav_fmt(f.read(min(n, 40)), order, what)
        elif chunk == b"data":
            if 0 < n < _UNKNOWN_SIZE and pos + 8 + n > size:
                raise AudioError(
                    f"could not decode {what}: truncated WAV data: the data chunk declares {n} bytes, "
                    f"only {size - pos - 8} are present"
                )
            return
        pos += 8 + n + (n & 1)  # chunks are padded to an even size


def _check_wav_fmt(fmt: bytes, order: str, what: str) -> None:
    if len(fmt) < 16:
        return  # libsndfile has refused it already
    tag, channels, _, _, block_align, bits = struct.unpack(order + "HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the subformat GUID starts with the tag
        (tag,) = struct.unpack(order + "H", fmt[24:26])
    if tag not in (1, 3):  # integer PCM and IEEE float; compressed formats define their own blocks
        return
    width = -(-bits // 8)  # a sample occupies whole bytes
    if channels == 0 or bits == 0 or block_align != channels * width:
        raise AudioError(
            f"could not decode {what}: inconsistent WAV header: {channels} channel(s) of {bits}-bit samples "
            f"need {channels * width}-byte frames, but the header says {block_align} bytes"
        )


def _check_ogg(f, size: int, what: str) -> None:
    """Ogg pages (RFC 3533) run back to back to the end of the data, the last one marked end-of-stream."""
    pos, flags = 0, 0
    while pos < size:
        f.seek(pos)
        head = f.read(27)
        if len(head) < 27 or head[:4] != b"OggS":
            raise AudioError(f"could not decode {what}: corrupt OGG data: no page at byte {pos} of {size}")
        table = f.read(head[26])  # lacing values: the page's segment sizes
        end = pos + 27 + head[26] + sum(table)
        if len(table) < head[26] or end > size:
            raise AudioError(f"could not decode {what}: truncated OGG data: the page at byte {pos} is cut off at byte {size}")
        pos, flags = end, head[5]
    if not flags & _OGG_EOS:
        raise AudioError(f"could not decode {what}: truncated OGG data: the last page is not marked end-of-stream")


def _check_mp3(data: bytes, what: str) -> None:
    """MPEG audio frames, walked from the first one (after an ID3v2 tag) to the end (before ID3v1 or APE
    tags): the last frame must be whole. The walk stops without a verdict at anything that is not a frame
    header (junk between frames, free-format bitrate), where decoders resynchronise."""
    pos, end = 0, len(data)
    if data[:3] == b"ID3" and len(data) >= 10:  # ID3v2: 10-byte header, syncsafe size, optional footer
        pos = 10 + ((data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F))
        pos += 10 if data[5] & 0x10 else 0
    if data[end - 128 : end - 125] == b"TAG":  # ID3v1
        end -= 128
    if data[end - 32 : end - 24] == b"APETAGEX":  # APE footer; its size counts the items and the footer
        tag_size, flags = struct.unpack("<I4xI", data[end - 20 : end - 8])
        end -= tag_size + (32 if flags & 0x80000000 else 0)
    first = _mp3_frame_length(data[pos : pos + 4])
    if first is not None:  # a Xing/Info (LAME) header in the first frame: flags, then frames and byte counts
        tag = max(data.find(b"Xing", pos, pos + first), data.find(b"Info", pos, pos + first))
        if tag >= 0 and len(data) >= tag + 16:
            flags = int.from_bytes(data[tag + 4 : tag + 8], "big")
            declared = int.from_bytes(data[tag + 12 : tag + 16], "big") if flags & 3 == 3 else 0
            if flags & 3 == 2:
                declared = int.from_bytes(data[tag + 8 : tag + 12], "big")
            if declared > end - pos:
                raise AudioError(
                    f"could not decode {what}: truncated MP3 data: its Xing header declares {declared} bytes, "
                    f"only {end - pos} are present"
                )
    while pos + 4 <= end:
        length = _mp3_frame_length(data[pos : pos + 4])
        if length is None:
            return
        if pos + length > end:
            raise AudioError(
                f"could not decode {what}: truncated MP3 data: the frame at byte {pos} needs {length} bytes, "
                f"only {end - pos} are present"
            )
        pos += length


def _mp3_frame_length(head: bytes) -> int | None:
    """Bytes in the MPEG audio frame that starts with the 4-byte `head`, or None if it is no frame header."""
    if head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version, layer = (head[1] >> 3) & 3, 4 - ((head[1] >> 1) & 3)
    kbps_index, rate_index, padding = head[2] >> 4, (head[2] >> 2) & 3, (head[2] >> 1) & 1
    if version == 1 or layer == 4 or kbps_index in (0, 15) or rate_index == 3:  # reserved or free-format
        return None
    mpeg1 = version == 3
    bitrate = _MP3_KBPS[(mpeg1, layer)][kbps_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4
    return (144 if layer == 2 or mpeg1 else 72) * bitrate // rate + padding


def _array_to_channels_first(x: np.ndarray | Tensor) -> np.ndarray:
    """Samples given as an array → (C, S) float32, PCM integers scaled to [-1, 1]."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    if x.ndim not in (1, 2):
        raise AudioError(
            "expected audio of shape (samples,), (channels, samples) or (samples, channels), "
            f"got shape {tuple(x.shape)}"
        )
    if x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    elif x.dtype == np.int16:
        x = x.astype(np.float32) / 2.0**15
    elif x.dtype == np.int32:
        x = x.astype(np.float32) / 2.0**31
    elif x.dtype == np.uint8:  # 8-bit WAV is unsigned with silence at 128
        x = (x.astype(np.float32) - 128.0) / 128.0
    else:
        raise AudioError(f"unsupported sample dtype {x.dtype}: expected float, int16, int32 or uint8 samples")
    if x.ndim == 1:
        return x[None, :]
    if x.size == 0:
        return x.reshape(1, 0)
    if min(x.shape) > MAX_CHANNELS:
        raise AudioError(
            f"expected at most {MAX_CHANNELS} channels, got shape {tuple(x.shape)}: a 2-D array is "
            "(channels, samples) or (samples, channels); load a batch one clip at a time"
        )
    return x if x.shape[0] <= x.shape[1] else x.T  # channels are the shorter axis


def _to_mono_16k(samples: np.ndarray, sr: int, max_duration_s: float) -> Tensor:
    """(C, S) float32 at ``sr`` → validated (S,) float32 at SAMPLE_RATE."""
    _check_rate_range(sr)
    _check_duration(samples.shape[1], sr, max_duration_s)
    bad = samples.size - int(np.count_nonzero(np.isfinite(samples)))
    if bad:  # checked before resampling, which would smear one NaN over the whole filter width
        raise AudioError(f"audio contains {bad} non-finite samples (NaN or Inf) out of {samples.size}")
    peak = float(np.abs(samples).max())
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            f"audio samples reach {peak:.4g}, far outside [-1, 1] (limit {MAX_ABS_SAMPLE:g}): float samples "
            "must be scaled to [-1, 1]; integer PCM passed as float?"
        )
    wav = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=0, dtype=np.float32)))  # (S,)
    if sr != SAMPLE_RATE:
        import torchaudio.functional as AF

        g = math.gcd(sr, SAMPLE_RATE)
        if (sr // g) * (SAMPLE_RATE // g) > _MAX_RESAMPLE_KERNEL:
            sr = round(sr / 100) * 100  # timing error < 50 Hz / sr, see _MAX_RESAMPLE_KERNEL
        if sr != SAMPLE_RATE:
            wav = AF.resample(wav, sr, SAMPLE_RATE)
    return wav.to(torch.float32).contiguous()


# --------------------------------------------------------------------------------------- batching


def batch_audio(waves: Sequence[Tensor]) -> AudioBatch:
    """Stack 1-D waveforms into a right-zero-padded (B, S_max) float32 batch with their lengths.

    The batch lives on the device of ``waves[0]``.
    """
    if len(waves) == 0:
        raise AudioError("cannot batch an empty list of waveforms")
    for i, w in enumerate(waves):
        if not isinstance(w, Tensor):
            raise AudioError(f"waveform {i} must be a torch Tensor, got {type(w).__name__}")
        if w.ndim != 1:
            raise AudioError(f"waveform {i} must be 1-D (samples,), got shape {tuple(w.shape)}")
    device = waves[0].device
    lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.int64, device=device)  # (B,)
    wav = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32, device=device)  # (B, S_max)
    for i, w in enumerate(waves):
        wav[i, : w.shape[0]] = w
    return AudioBatch(wav=wav, lengths=lengths)


# -------------------------------------------------------------------------------- long recordings

_vad_model = None  # silero-vad, loaded on first use; its ~2 MB TorchScript ships in the wheel
_vad_lock = threading.Lock()  # the model carries recurrent state across windows: one caller at a time


def _speech_timestamps(wav: Tensor, min_silence_s: float) -> list[tuple[int, int]]:
    """Speech regions of a 16 kHz (S,) waveform as [(start, end)) sample indices, in order."""
    global _vad_model
    import silero_vad

    with _vad_lock, torch.no_grad():
        if _vad_model is None:
            _vad_model = silero_vad.load_silero_vad()
        found = silero_vad.get_speech_timestamps(
            wav,
            _vad_model,
            sampling_rate=SAMPLE_RATE,
            min_silence_duration_ms=int(round(min_silence_s * 1000)),
        )
    return [(int(s["start"]), int(s["end"])) for s in found]


def split_on_silence(
    wav: Tensor,
    *,
    max_chunk_s: float = MAX_CHUNK_S,
    min_silence_s: float = 0.1,
) -> list[AudioChunk]:
    """Cut a 16 kHz mono waveform (S,) into contiguous chunks of at most ``max_chunk_s``.

    Audio no longer than ``max_chunk_s`` comes back as one chunk holding ``wav`` itself, and the VAD
    is not loaded. Otherwise silero-vad finds pauses (non-speech stretches of at least
    ``min_silence_s``, plus leading and trailing non-speech) and cuts are chosen left to right;
    from a chunk start p, with window W = [p + max/2, p + max]:
      1. the longest pause touching W, cut at its midpoint (clamped into W): sentence breaks win
         over short word gaps, and chunks stay at least half the maximum;
      2. else the latest pause whose midpoint lies in [p + MIN_DURATION_S, p + max/2), cut there:
         a shorter chunk beats cutting a word;
      3. else (one speech region longer than max/2) a hard cut at the quietest 10 ms frame in W.
    No cut leaves a chunk shorter than MIN_DURATION_S. Nothing is dropped: the chunks are views
    of ``wav`` whose concatenation is ``wav``, and ``start_s`` is exact (start sample / 16000).
    """
    if not isinstance(wav, Tensor) or wav.ndim != 1 or not wav.is_floating_point():
        shape = tuple(wav.shape) if isinstance(wav, Tensor) else type(wav).__name__
        raise AudioError(f"split_on_silence expects a 1-D float waveform at {SAMPLE_RATE} Hz, got {shape}")
    if not max_chunk_s >= 1.0:
        raise AudioError(f"invalid max_chunk_s {max_chunk_s!r}: expected at least 1.0 s")
    if not min_silence_s > 0:
        raise AudioError(f"invalid min_silence_s {min_silence_s!r}: expected a positive number of seconds")

    n = wav.shape[0]
    max_len = int(max_chunk_s * SAMPLE_RATE)
    if n <= max_len:
        return [AudioChunk(wav=wav, start_s=0.0)]

    mono = wav.detach().to("cpu", torch.float32)
    edges = [0] + [i for region in _speech_timestamps(mono, min_silence_s) for i in region] + [n]
    pauses = [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b > a]  # complement of speech

    cuts = [0]
    while n - cuts[-1] > max_len:
        cuts.append(_next_cut(mono, cuts[-1], pauses, max_len))
    cuts.append(n)
    return [AudioChunk(wav=wav[a:b], start_s=a / SAMPLE_RATE) for a, b in zip(cuts[:-1], cuts[1:])]


def _next_cut(wav: Tensor, p: int, pauses: list[tuple[int, int]], max_len: int) -> int:
    """End of the chunk that starts at sample p (see split_on_silence for the rule)."""
    n = wav.shape[0]
    min_len = int(MIN_DURATION_S * SAMPLE_RATE)
    lo, hi = p + max_len // 2, min(p + max_len, n - min_len)  # lo < hi as max_len >= 1 s

    touching = [(a, b) for a, b in pauses if a <= hi and b >= lo]
    if touching:
        a, b = max(touching, key=lambda ab: ab[1] - ab[0])
        return min(max((a + b) // 2, lo), hi)
    before = [(a + b) // 2 for a, b in pauses if p + min_len <= (a + b) // 2 < lo]
    if before:
        return before[-1]

    k = (hi - lo) // _FRAME
    if k == 0:
        return hi
    energy = wav[lo : lo + k * _FRAME].view(k, _FRAME).pow(2).mean(dim=1)  # (k,)
    quietest = k - 1 - int(torch.argmin(energy.flip(0)))  # ties go to the latest frame
    return lo + quietest * _FRAME + _FRAME // 2
