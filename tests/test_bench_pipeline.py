"""spokenlm.peers.Pocketsphinx and bench/pipeline.py (`spokenlm bench pipeline`)."""

import re
from pathlib import Path

import pytest
import torch

from spokenlm.audio import load_audio
from spokenlm.cli import main
from spokenlm.peers import Pocketsphinx, PocketsphinxAligner
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


def _example(example_clips, i):
    texts = dict(line.split("\t") for line in (example_clips[0].parent / "manifest.tsv").read_text().splitlines()[1:])
    return load_audio(example_clips[i]), texts[example_clips[i].name].strip()


def test_pocketsphinx_aligner_times_every_word_in_order_and_finds_a_known_pause(example_clips):
    (a, text_a), (b, text_b) = _example(example_clips, 0), _example(example_clips, 1)
    aligner = PocketsphinxAligner()
    words = aligner.align(a, text_a)
    assert [w.word for w in words] == text_a.split()
    assert all(w.start_s < w.end_s for w in words)
    assert all(x.end_s <= y.start_s + 1e-9 for x, y in zip(words, words[1:]))
    assert 0.0 <= words[0].start_s and words[-1].end_s <= a.shape[0] / 16000 + 0.05
    # two clips with one second of silence between: the words of each stay on their own side of it
    gap_start = a.shape[0] / 16000
    joined = aligner.align(torch.cat([a, torch.zeros(16000), b]), f"{text_a} {text_b}")
    n = len(text_a.split())
    assert joined[n - 1].end_s <= gap_start + 0.05
    assert joined[n].start_s >= gap_start + 1.0 - 0.05


def test_pocketsphinx_aligner_names_what_cannot_align(example_clips):
    wav, text = _example(example_clips, 0)
    aligner = PocketsphinxAligner()
    with pytest.raises(ValueError, match="no pronunciation in pocketsphinx's dictionary for: zzqx, qqxz"):
        aligner.align(wav, f"zzqx {text} qqxz zzqx")
    with pytest.raises(ValueError, match="nothing to align: the transcript has no words"):
        aligner.align(wav, "  ")
    with pytest.raises(ValueError, match=r"pocketsphinx found no alignment of \d+ words in 0.10 s"):
        aligner.align(wav[:1600], text + " " + text)
    with pytest.raises(ValueError, match=r"expected a mono waveform \(S,\), got shape \(2, 100\)"):
        aligner.align(torch.zeros(2, 100), text)


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
