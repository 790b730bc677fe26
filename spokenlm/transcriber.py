"""A second reading of the audio for the hybrid prompt: the Whisper base's own decoder.

The hybrid prompt carries a transcript as text after the speech tokens (`build_prompt(request,
transcript)`, as DeSTA2 does with its recognizer's). The CTC head this project trains on its synthetic
corpus reads those voices well but real ones poorly (LibriVox: 42 % WER), while the decoder of the
pinned Whisper tiny.en base, trained on real speech, reads LibriVox at ~7 % but the corpus's odder
synthetic voices and isolated FSDD digits worse, and hallucinates on some ("thank you" for a "two").
So each recording gets both readings and the prompt takes Whisper's where Whisper is confident (its
mean token log-probability at least `min_logprob`, picked on the dev split by the `transcriber`
recipe), else the CTC transcript. The LLM then reads a transcript whose errors it can still fix
against the speech tokens, as it was trained to.

Decoding is faster-whisper's (CTranslate2, int8, greedy at temperature 0, no VAD, no timestamps, one
recording per call: it slides its own 30-s windows over long ones); it is a pinned dependency already
(the ASR peer users would pick), so nothing here re-implements Whisper's decoding loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from torch import Tensor

TRANSCRIBER_FILE = "transcriber.json"  # in a bundle and in the transcriber recipe's OUT


@dataclass(frozen=True, kw_only=True)
class TranscriberConfig:
    """How the prompt transcript is read: a CTranslate2 Whisper base (or dir) and the confidence rule."""

    base: str | None = "whisper-tiny.en"
    """A pretrained base pinned in spokenlm/bases.py (`KNOWN_BASES`); or None and `path`."""

    path: str | None = None
    """A CTranslate2 Whisper directory (model.bin, tokenizer.json) instead of a base."""

    min_logprob: float = -0.3
    """Whisper's reading is used when its mean token log-probability is at least this; below it the
    CTC transcript is (-inf: always Whisper's; 0: practically never)."""

    beam_size: int = 1
    compute_type: str = "int8"
    cpu_threads: int = 0  # 0: CTranslate2 chooses
    max_tokens_per_second: float = 8.0
    """A reading longer than this many tokens per second of audio is a decoding loop, not speech
    (English speech is ~3-4 Whisper tokens/s): the CTC transcript is used instead."""

    def validate(self) -> None:
        if (self.base is None) == (self.path is None):
            raise ValueError("a transcriber needs exactly one of base and path")
        if self.base is not None:
            from spokenlm.bases import KNOWN_BASES

            if self.base not in KNOWN_BASES or not self.base.startswith("whisper"):
                whisper = [name for name in KNOWN_BASES if name.startswith("whisper")]
                raise ValueError(f"unknown transcriber base {self.base!r}; expected one of {', '.join(whisper)}")
        if not (isinstance(self.min_logprob, (int, float)) and not math.isnan(self.min_logprob) and self.min_logprob <= 0):
            raise ValueError(f"min_logprob must be a number <= 0 (a mean log-probability), got {self.min_logprob!r}")
        if not (isinstance(self.beam_size, int) and 1 <= self.beam_size <= 16):
            raise ValueError(f"beam_size must be an int in [1, 16], got {self.beam_size!r}")
        if not (isinstance(self.cpu_threads, int) and self.cpu_threads >= 0):
            raise ValueError(f"cpu_threads must be an int >= 0, got {self.cpu_threads!r}")
        if not self.max_tokens_per_second > 0:
            raise ValueError(f"max_tokens_per_second must be > 0, got {self.max_tokens_per_second!r}")


def transcriber_config_to_json(config: TranscriberConfig) -> dict:
    return dataclasses.asdict(config)


def transcriber_config_from_json(data: dict, *, where: str = "transcriber") -> TranscriberConfig:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(TranscriberConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    config = TranscriberConfig(**data)
    config.validate()
    return config


def read_transcriber_config(path: str | Path) -> TranscriberConfig:
    """A transcriber.json (a bundle's, or the transcriber recipe's OUT/transcriber.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRANSCRIBER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {TRANSCRIBER_FILE} at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return transcriber_config_from_json(data, where=str(path))


@dataclass(frozen=True)
class Reading:
    """Whisper's reading of one recording: normalized text, mean token log-probability, tokens."""

    text: str
    logprob: float
    tokens: int


class WhisperTranscriber:
    """Whisper's reading of recordings (module docstring); `choose` applies the confidence rule."""

    def __init__(self, config: TranscriberConfig, *, bundle: str | Path | None = None) -> None:
        config.validate()
        self.config = config
        if config.base is not None:
            from spokenlm.bases import KNOWN_BASES, resolve_base

            path = resolve_base(KNOWN_BASES[config.base], bundle=bundle)
        else:
            path = Path(config.path)
        from spokenlm.peers import FasterWhisper

        # FasterWhisper checks the directory (model.bin, tokenizer.json: faster-whisper would download one)
        self._peer = FasterWhisper(path, compute_type=config.compute_type, beam_size=config.beam_size,
                                   cpu_threads=config.cpu_threads)  # fmt: skip

    def read(self, waves: Sequence[Tensor]) -> list[Reading]:
        """Mono 16 kHz recordings (S,) -> Whisper's reading of each, normalized as our transcripts are
        (numbers spelled out, lower case, no punctuation)."""
        from spokenlm.data.text import normalize, speakable

        readings = []
        for wav in waves:
            segments, _ = self._peer.model.transcribe(
                wav.detach().float().cpu().numpy(), language=self._peer.language, beam_size=self.config.beam_size,
                temperature=0.0, vad_filter=False, without_timestamps=True, condition_on_previous_text=False,
            )  # fmt: skip
            segments = list(segments)  # a generator: decoding happens here
            tokens = sum(len(s.tokens) for s in segments)
            raw = " ".join(s.text.strip() for s in segments).strip()
            logprob = sum(s.avg_logprob * len(s.tokens) for s in segments) / tokens if tokens else -math.inf
            readings.append(Reading(text=normalize(speakable(raw) or raw), logprob=logprob, tokens=tokens))
        return readings

    def choose(self, readings: Sequence[Reading], ctc_texts: Sequence[str], durations_s: Sequence[float]) -> list[str]:
        return choose_prompt_texts(readings, ctc_texts, durations_s, self.config)


def choose_prompt_texts(
    readings: Sequence[Reading], ctc_texts: Sequence[str], durations_s: Sequence[float], config: TranscriberConfig
) -> list[str]:
    """Per recording: Whisper's text when it is confident (`min_logprob`), not empty and not a
    decoding loop (`max_tokens_per_second`); else the CTC transcript."""
    if not len(readings) == len(ctc_texts) == len(durations_s):
        raise ValueError(f"got {len(readings)} readings, {len(ctc_texts)} CTC transcripts, {len(durations_s)} durations")
    out = []
    for reading, ctc, seconds in zip(readings, ctc_texts, durations_s):
        looping = reading.tokens > config.max_tokens_per_second * max(seconds, 1.0)
        usable = reading.text and not looping and reading.logprob >= config.min_logprob
        out.append(reading.text if usable else ctc)
    return out


def load_transcriber(config: TranscriberConfig | None, *, bundle: str | Path | None = None) -> WhisperTranscriber | None:
    return None if config is None else WhisperTranscriber(config, bundle=bundle)

