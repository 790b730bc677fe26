"""spokenlm.peers.Pocketsphinx and bench/pipeline.py (`spokenlm bench pipeline`): our bundle, pocketsphinx,
Whisper tiny.en through transformers and faster-whisper on the same clips (WhisperPeer and FasterWhisper
themselves are tested in test_peers.py)."""

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


def _tiny_en() -> Path:
    try:
        from spokenlm.bases import WHISPER_TINY_EN, resolve_base

        return resolve_base(WHISPER_TINY_EN)
    except Exception as e:  # BaseError when not fetched
        pytest.skip(f"Whisper tiny.en base not available: {e}")


def _last_line(out: str) -> dict[str, str]:
    last = out.strip().splitlines()[-1]
    assert last.startswith("bench pipeline: "), last
    return dict(field.split("=", 1) for field in last.removeprefix("bench pipeline: ").split())


@needs_librivox
@pytest.mark.slow
def test_spokenlm_bench_pipeline_puts_the_bundle_beside_three_peers(tiny_bundle, capsys):
    whisper = _tiny_en()
    code = main(["bench", "pipeline", "--model", str(tiny_bundle), "--whisper", str(whisper),
                 "--tsv", str(LIBRIVOX / "manifest.tsv"), "--max-new-tokens", "4", "--batch", "2", "--threads", "1",
                 "--speedups", "merge,bf16"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "UNTRAINED" in out
    for name in ("ours", r"ours\[merge,bf16\]", "pocketsphinx", "whisper_hf", "faster_whisper"):
        assert re.search(rf"^\| {name} \| [\d.]+ \| [\d.]+ \| \d+ \| -?\d+ \| ", out, re.M), name
    line = _last_line(out)
    assert list(line) == [
        "clips", "audio_min", "ours_wer", "ours_rtf", "ours_rss_mb",
        "ours+merge+bf16_wer", "ours+merge+bf16_rtf", "ours+merge+bf16_rss_mb",
        "pocketsphinx_wer", "pocketsphinx_rtf", "pocketsphinx_rss_mb",
        "whisper_hf_wer", "whisper_hf_rtf", "whisper_hf_rss_mb",
        "faster_whisper_wer", "faster_whisper_rtf", "faster_whisper_rss_mb", "ratio_is", "ratio",
    ]  # fmt: skip
    v = {k: float(x) for k, x in line.items() if k != "ratio_is"}
    assert v["clips"] == 5 and line["ratio_is"] == "faster_whisper_rtf/ours_rtf"
    assert v["pocketsphinx_wer"] < 50  # percent; measured 27
    assert v["whisper_hf_wer"] <= 10 and v["faster_whisper_wer"] <= 10  # issue 14: WER <= 0.10; measured 4.2
    assert all(v[f"{n}_rtf"] > 0 and v[f"{n}_rss_mb"] > 100 for n in ("ours", "pocketsphinx", "whisper_hf", "faster_whisper"))
    assert v["ratio"] == pytest.approx(v["faster_whisper_rtf"] / v["ours_rtf"], rel=0.02, abs=0.01)


@pytest.mark.slow
def test_bench_pipeline_without_a_bundle_compares_the_peers_and_says_so(tiny_whisper, example_clips, capsys):
    code = main(["bench", "pipeline", "--peers-only", "--whisper", str(tiny_whisper["ct2_int8"]),
                 "--tsv", str(example_clips[0].parent / "manifest.tsv"), "--threads", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "note: --peers-only: comparing the peers only" in out
    line = _last_line(out)
    assert line["clips"] == "2" and line["ours"] == "none" and "ours_wer" not in line
    assert line["ratio_is"] == "faster_whisper_rtf/whisper_hf_rtf"
    ratio = float(line["faster_whisper_rtf"]) / float(line["whisper_hf_rtf"])
    assert float(line["ratio"]) == pytest.approx(ratio, rel=0.02, abs=0.01)


def test_bench_pipeline_refuses_what_is_not_a_bundle(tmp_path, capsys):
    assert main(["bench", "pipeline", "--model", str(tmp_path), "--tsv", "x.tsv"]) == 2
    assert f"--model {tmp_path}: no spokenlm.json there, so not a bundle" in capsys.readouterr().err
    assert main(["bench", "pipeline", "--model", str(tmp_path), "--peers-only", "--tsv", "x.tsv"]) == 2
    assert "give --model or --peers-only, not both" in capsys.readouterr().err
    assert main(["bench", "pipeline", "--peers-only"]) == 2
    assert "no clips: give --manifest and/or --tsv" in capsys.readouterr().err
    assert main(["bench", "pipeline", "--speedups", "merge,fp8", "--tsv", "x.tsv"]) == 2
    assert "--speedups 'merge,fp8': unknown LLM speed-up(s) ['fp8']; expected some of merge, bf16, int8" in capsys.readouterr().err
    assert main(["bench", "pipeline", "--peers-only", "--speedups", "int8", "--tsv", "x.tsv"]) == 2
    assert "--speedups needs a bundle (--model, or models/default)" in capsys.readouterr().err
    assert main(["bench", "pipeline", "--speedups", "ctc-draft,fp8", "--tsv", "x.tsv"]) == 2
    assert "--speedups 'ctc-draft,fp8': unknown LLM speed-up(s) ['fp8']" in capsys.readouterr().err


def test_ctc_draft_is_a_decoding_item_of_a_variant_not_an_llm_change():
    import runpy

    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "pipeline.py"))
    assert bench["variant_speedups"]("ours[merge,ctc-draft]") == "merge"
    assert bench["variant_speedups"]("ours[ctc-draft]") == "" and bench["variant_speedups"]("ours") == ""
    assert bench["variant_ctc_draft"]("ours[merge, ctc-draft]") and not bench["variant_ctc_draft"]("ours[merge]")
    assert bench["describe"]("ours[ctc-draft]").endswith("LLM speed-ups none, speculative from the CTC transcript")
