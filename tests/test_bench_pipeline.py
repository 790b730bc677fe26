"""spokenlm.peers.Pocketsphinx and bench/pipeline.py (`spokenlm bench pipeline`)."""

import re
from pathlib import Path

import pytest
import torch

from spokenlm.audio import load_audio
from spokenlm.cli import main
from spokenlm.peers import Pocketsphinx
from spokenlm.slue.metrics import word_error_rate

LIBRIVOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech" / "librivox_smoke"
needs_librivox = pytest.mark.skipif(not LIBRIVOX.is_dir(), reason="needs ../shared/data/speech/librivox_smoke")


@needs_librivox
def test_pocketsphinx_recognizes_real_read_speech():
    rows = [line.split("\t") for line in (LIBRIVOX / "manifest.tsv").read_text().splitlines()[1:]]
    peer = Pocketsphinx()
    hyps = [peer.transcribe(load_audio(LIBRIVOX / f)) for f, _ in rows]
    assert all(h == h.lower() and "," not in h for h in hyps)  # normalized like our references
    assert word_error_rate([t for _, t in rows], hyps).wer < 50  # measured 28 %: a real recognizer


def test_pocketsphinx_refuses_a_stereo_waveform_and_hears_little_in_silence():
    peer = Pocketsphinx()
    with pytest.raises(ValueError, match=r"expected a mono waveform \(S,\), got shape \(2, 16000\)"):
        peer.transcribe(torch.zeros(2, 16000))
    assert len(peer.transcribe(torch.zeros(16000)).split()) <= 1  # it says "dog" to one second of zeros


@needs_librivox
@pytest.mark.slow
def test_spokenlm_bench_pipeline_prints_both_systems(tiny_bundle, capsys):
    code = main(["bench", "pipeline", "--model", str(tiny_bundle), "--tsv", str(LIBRIVOX / "manifest.tsv"),
                 "--max-new-tokens", "4", "--batch", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "UNTRAINED" in out
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(
        r"bench pipeline: clips=5 audio_min=\S+ ours_wer=(\S+) ours_rtf=(\S+) pocketsphinx_wer=(\S+) "
        r"pocketsphinx_rtf=(\S+) ratio=(\S+)",
        last,
    )
    assert m, last
    ours_wer, ours_rtf, peer_wer, peer_rtf, ratio = map(float, m.groups())
    assert peer_wer < 50 and ours_rtf > 0 and peer_rtf > 0
    assert ratio == pytest.approx(peer_wer / ours_wer, abs=0.01)
