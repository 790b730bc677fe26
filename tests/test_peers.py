"""spokenlm.peers: WhisperPeer and FasterWhisper on a tiny random Whisper and its CTranslate2
conversions, and on the real tiny.en when its base is fetched (`spokenlm bases fetch`).

Parity: the CTranslate2 dir, read by our reader, decodes to the same token ids as the HF dir it was
converted from (greedy and beam), and both equal transformers' own ``generate`` with its own
suppress-token processors (which WhisperPeer replaces with precomputed masks).
(Pocketsphinx's tests live in test_bench_pipeline.py.)
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from spokenlm.audio import load_audio
from spokenlm.peers import FasterWhisper, WhisperPeer, english_normal_form
from spokenlm.slue.metrics import word_error_rate

LIBRIVOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech" / "librivox_smoke"
NEW_TOKENS = 8  # random models rarely stop: keep their decodes short


def _audio(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(int(seconds * 16_000), generator=g)


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    return [_audio(2.0, 0), _audio(0.5, 1), _audio(5.0, 2)]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_ctranslate2_dir_decodes_as_the_hf_dir_and_as_transformers(tiny_whisper, clips, num_beams) -> None:
    from transformers import WhisperFeatureExtractor

    from spokenlm.encoders.whisper import load_whisper_model

    hf = WhisperPeer(tiny_whisper["hf"], num_beams=num_beams, max_new_tokens=NEW_TOKENS).decode(clips)
    ct2 = WhisperPeer(tiny_whisper["ct2_float32"], num_beams=num_beams, max_new_tokens=NEW_TOKENS).decode(clips)
    assert [d.token_ids for d in ct2] == [d.token_ids for d in hf]
    assert [d.text for d in ct2] == [d.text for d in hf]
    # the reference: transformers' generate with its own (per-step isin) suppress processors
    model, _ = load_whisper_model(tiny_whisper["hf"])
    feats = WhisperFeatureExtractor()([c.numpy() for c in clips], sampling_rate=16_000, return_tensors="pt",
                                      return_attention_mask=True)  # fmt: skip
    ref = model.generate(feats.input_features, attention_mask=feats.attention_mask, max_new_tokens=NEW_TOKENS,
                         num_beams=num_beams)  # fmt: skip
    assert [d.token_ids for d in hf] == [[i for i in row.tolist() if i != 27] for row in ref]
    for d in hf:  # the fixture suppresses 25 ("z") always, and 8 ("i") and <|endoftext|> first
        assert len(d.token_ids) == NEW_TOKENS and 25 not in d.token_ids and d.token_ids[0] != 8


def test_batched_equals_one_at_a_time_and_int8_stays_close(tiny_whisper, clips) -> None:
    batched = WhisperPeer(tiny_whisper["hf"], batch_size=3, max_new_tokens=NEW_TOKENS).decode(clips)
    single = WhisperPeer(tiny_whisper["hf"], batch_size=1, max_new_tokens=NEW_TOKENS)
    assert [single.decode([c])[0] for c in clips] == batched
    int8 = WhisperPeer(tiny_whisper["ct2_int8"], max_new_tokens=NEW_TOKENS).decode(clips)
    assert all(a.token_ids[0] == b.token_ids[0] for a, b in zip(int8, batched))  # de-quantized weights, not equal ones
    text = single.transcribe(clips[0])
    assert isinstance(text, str) and text == " ".join(batched[0].text.split())  # a-z and spaces: normalize keeps them


def test_faster_whisper_runs_the_tiny_conversion(tiny_whisper, clips) -> None:
    peer = FasterWhisper(tiny_whisper["ct2_int8"], cpu_threads=1)
    assert peer.english_only and peer.language == "en"
    text = peer.transcribe(clips[0])  # a random model: any words, but normalized ones
    assert isinstance(text, str) and text == text.lower() and text == " ".join(text.split())


def test_bad_inputs_and_settings_are_named(tiny_whisper, monkeypatch) -> None:
    peer = WhisperPeer(tiny_whisper["hf"], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"expected a mono waveform \(S,\), got shape \(2, 16000\)"):
        peer.transcribe(torch.zeros(2, 16000))
    with pytest.raises(ValueError, match=r"expected float samples in \[-1, 1\], got torch.int16"):
        peer.transcribe(torch.zeros(16000, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"expected a mono waveform \(S,\), got no samples"):
        peer.transcribe(torch.zeros(0))
    with pytest.raises(ValueError, match="audio of 31.00 s is longer than Whisper's 30 s window; cut it first"):
        peer.transcribe(torch.zeros(31 * 16000))
    with pytest.raises(ValueError, match="num_beams must be a positive int, got 0"):
        WhisperPeer(tiny_whisper["hf"], num_beams=0)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int in \[1, 444\] for .*, got 445"):
        WhisperPeer(tiny_whisper["hf"], max_new_tokens=445)
    with pytest.raises(ValueError, match="is an English-only Whisper: language must be 'en', got 'de'"):
        WhisperPeer(tiny_whisper["hf"], language="de")
    with pytest.raises(FileNotFoundError, match="no CTranslate2 model.bin in"):
        FasterWhisper(tiny_whisper["hf"])
    fw = FasterWhisper(tiny_whisper["ct2_int8"], cpu_threads=1)
    with pytest.raises(ValueError, match=r"expected a mono waveform \(S,\), got shape \(2, 100\)"):
        fw.transcribe(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="cpu_threads must be an int >= 0"):
        FasterWhisper(tiny_whisper["ct2_int8"], cpu_threads=-1)
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"faster-whisper is not installed: pip install faster-whisper==1\.2\.1"):
        FasterWhisper(tiny_whisper["ct2_int8"])


def test_english_normal_form_scores_written_and_spoken_forms_alike() -> None:
    assert english_normal_form("And Mr. Dashwood paid 25 dollars, didn't he?") == english_normal_form(
        "and mister dashwood paid twenty five dollars did not he"
    )
    assert english_normal_form("He was, uh, ill-disposed.") == "he was ill disposed"


# ---------------------------------------------------------------------------------------------
# The real tiny.en (issue 14's Done-when: WER <= 0.10 on librivox_smoke)


@pytest.fixture(scope="module")
def tiny_en() -> Path:
    try:
        from spokenlm.bases import WHISPER_TINY_EN, resolve_base

        return resolve_base(WHISPER_TINY_EN)
    except Exception as e:  # BaseError when not fetched
        pytest.skip(f"Whisper tiny.en base not available: {e}")


@pytest.fixture(scope="module")
def librivox() -> tuple[list[torch.Tensor], list[str]]:
    if not LIBRIVOX.is_dir():
        pytest.skip("needs ../shared/data/speech/librivox_smoke")
    with (LIBRIVOX / "manifest.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [load_audio(LIBRIVOX / r["file"]) for r in rows], [r["transcript"] for r in rows]


def _wer(refs: list[str], hyps: list[str]) -> float:
    return word_error_rate([english_normal_form(r) for r in refs], [english_normal_form(h) for h in hyps]).wer


@pytest.mark.slow
def test_real_tiny_en_through_transformers_greedy(tiny_en, librivox) -> None:
    wavs, refs = librivox
    peer = WhisperPeer(tiny_en)  # greedy
    # English-only: the prompt is <|startoftranscript|> <|notimestamps|>, no detected language token
    assert peer.english_only and "lang_to_id" not in peer._generation.to_dict()
    hyps = peer.transcribe_batch(wavs)
    assert hyps[0].startswith("and mr john dashwood had then leisure")
    assert _wer(refs, hyps) <= 10.0  # percent; measured 4.2 (an "ill disposed" heard as "old sposed")


@pytest.mark.slow
def test_real_tiny_en_through_faster_whisper(tiny_en, librivox) -> None:
    wavs, refs = librivox
    peer = FasterWhisper(tiny_en, cpu_threads=2)  # int8, beam 5, no VAD
    hyps = peer.transcribe_batch(wavs)
    assert _wer(refs, hyps) <= 10.0  # percent; measured 4.2
