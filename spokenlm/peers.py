"""Peer recognizers that ship their own models, to compare our bundles against on the same clips.

pocketsphinx (CMU Sphinx 5) is a real English recognizer with its US-English acoustic model, a
dictionary and a general-domain 3-gram LM inside the wheel, so it runs here with nothing to download.
"""

from __future__ import annotations

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
        if wav.dim() != 1:
            raise ValueError(f"expected a mono waveform (S,), got shape {tuple(wav.shape)}")
        pcm = (wav.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return normalize(hyp.hypstr) if hyp is not None else ""
