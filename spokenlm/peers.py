"""Peer recognizers that ship their own models, to compare our bundles against on the same clips.

pocketsphinx (CMU Sphinx 5) is a real English recognizer with its US-English acoustic model, a
dictionary and a general-domain 3-gram LM inside the wheel, so it runs here with nothing to download.
The same model also force-aligns a known transcript (``PocketsphinxAligner``): an HMM aligner, the kind
(like the Montreal Forced Aligner) that word boundaries are usually measured against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from spokenlm.audio import SAMPLE_RATE
from spokenlm.data.text import normalize


class Pocketsphinx:
    """pocketsphinx's default US-English recognizer; one utterance per call."""

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as e:  # pragma: no cover - pinned in requirements.txt
            raise ImportError("pocketsphinx is not installed: pip install -r requirements.txt") from e
        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, wav: torch.Tensor) -> str:
        """A mono 16 kHz float waveform (S,) -> its transcript, normalized as our references are."""
        _decode(self._decoder, wav)
        hyp = self._decoder.hyp()
        return normalize(hyp.hypstr) if hyp is not None else ""


@dataclass(frozen=True)
class WordTime:
    word: str
    start_s: float
    end_s: float


class PocketsphinxAligner:
    """Word-level forced alignment of a known transcript with pocketsphinx's US-English HMM acoustic
    model and pronunciation dictionary (Viterbi over the words' phone HMMs, optional silences between).

    Frames are 10 ms; frame t's analysis window is [10 t, 10 t + 25.6) ms, so with the convention
    "frame t covers [t / r + c, (t + 1) / r + c)" (window centred) c = FRAME_SHIFT_S. Words come back
    with [start_s, end_s) in those seconds; silences and fillers are left out.
    """

    FRAME_RATE_HZ = 100.0
    FRAME_SHIFT_S = 0.0128 - 0.005  # the window centre of frame 0 minus the nominal 0.5 / rate

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def missing_words(self, text: str) -> list[str]:
        """The words of ``text`` that the dictionary has no pronunciation for (they cannot align)."""
        return [w for w in dict.fromkeys(text.split()) if self._decoder.lookup_word(w) is None]

    def align(self, wav: torch.Tensor, text: str) -> list[WordTime]:
        """The words of ``text`` (normalized: lower case, space separated) timed on ``wav`` (mono 16 kHz).
        ValueError naming the problem: no words, words without a pronunciation, or no alignment found
        (the text is not what was said, or the audio is too short for it)."""
        words = text.split()
        if not words:
            raise ValueError("nothing to align: the transcript has no words")
        missing = self.missing_words(text)
        if missing:
            raise ValueError(f"no pronunciation in pocketsphinx's dictionary for: {', '.join(missing)}")
        self._decoder.set_align_text(" ".join(words))
        _decode(self._decoder, wav)
        timed = [
            WordTime(_VARIANT.sub("", seg.word), seg.start_frame / self.FRAME_RATE_HZ + self.FRAME_SHIFT_S,
                     (seg.end_frame + 1) / self.FRAME_RATE_HZ + self.FRAME_SHIFT_S)
            for seg in self._decoder.seg() or ()  # None when the search found no path
            if not _FILLER.fullmatch(seg.word)
        ]  # fmt: skip
        if [w.word for w in timed] != words:
            raise ValueError(f"pocketsphinx found no alignment of {len(words)} words in {wav.shape[-1] / SAMPLE_RATE:.2f} s")
        return timed


_VARIANT = re.compile(r"\(\d+\)$")  # "the(2)": the second pronunciation of "the"
_FILLER = re.compile(r"<.*>|\[.*\]|\(NULL\)")  # <sil>, <s>, </s>, [NOISE], (NULL)


def _decode(decoder, wav: torch.Tensor) -> None:
    if not isinstance(wav, torch.Tensor) or wav.dim() != 1:
        raise ValueError(f"expected a mono waveform (S,), got shape {tuple(getattr(wav, 'shape', ()))}")
    pcm = (wav.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
