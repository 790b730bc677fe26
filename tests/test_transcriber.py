"""The bundle's transcriber (Whisper's reading for the hybrid prompt, spokenlm/transcriber.py) and
the ASR answer taken from the prompt's transcript, on the tiny random Whisper of conftest.py."""

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

from spokenlm.audio import load_audio
from spokenlm.model import (
    BundleError,
    load_bundle,
    load_bundle_transcriber,
    load_bundle_transcriber_config,
    request_prompts,
    save_bundle,
    set_bundle_transcriber,
)
from spokenlm.tasks import TRANSCRIPT_HINT, TaskRequest
from spokenlm.transcriber import (
    Alternative,
    ChunkReadings,
    Scores,
    TranscriberConfig,
    WhisperTranscriber,
    choose_prompt_texts,
    ctc_confidence,
    ctc_log_likelihood,
    cut_packed_reading,
    pack_windows,
    read_transcriber_config,
    transcriber_config_from_json,
)


def _config(tiny_whisper, **changes) -> TranscriberConfig:
    # the random model reads ~1 token per character: its readings would all count as loops at 8/s
    return TranscriberConfig(base=None, path=str(tiny_whisper["ct2_int8"]), cpu_threads=1,
                             max_tokens_per_second=1000.0, **changes)  # fmt: skip


def _ctc_inputs(vocab, waves, frames_per_s=50, seed=0):
    """Random CTC log-probabilities (T, V) for each wave, and a CTC transcript for each."""
    gen = torch.Generator().manual_seed(seed)
    log_probs = [torch.randn(max(1, int(w.shape[-1] / 16000 * frames_per_s)), vocab.size, generator=gen).log_softmax(-1)
                 for w in waves]  # fmt: skip
    return ["a cat", "the dog", ""][: len(waves)], log_probs


@pytest.fixture(scope="module")
def vocab():
    from spokenlm.compress.vocab import CharVocab

    return CharVocab("abcdefghijklmnopqrstuvwxyz' ")


def test_whisper_scores_chunks_deterministically_whatever_the_batch(tiny_whisper, example_clips, vocab):
    transcriber = WhisperTranscriber(_config(tiny_whisper))
    waves = [load_audio(c) for c in example_clips[:2]]
    waves.append(waves[0][:16000])
    texts, log_probs = _ctc_inputs(vocab, waves)  # the third: a CTC head that read nothing
    batched = transcriber.score(waves, texts, log_probs, vocab)
    alone = WhisperTranscriber(_config(tiny_whisper, batch_size=1)).score(waves, texts, log_probs, vocab)
    assert len(batched) == 3 and [r.whisper for r in batched] == [r.whisper for r in alone]
    for one, other, wav, text in zip(batched, alone, waves, texts):
        assert one.ctc == text and one.duration_s == pytest.approx(wav.shape[-1] / 16000)
        assert re.fullmatch(r"[a-z0-9' ]*", one.whisper)  # normalized as our transcripts
        assert one.whisper_tokens > 0 and math.isfinite(one.whisper_logprob) and one.whisper_logprob <= 0
        for mine, theirs in ((one.whisper_scores, other.whisper_scores), (one.ctc_scores, other.ctc_scores)):
            assert mine.ctc == pytest.approx(theirs.ctc) and mine.decoder == pytest.approx(theirs.decoder, abs=1e-3)
            assert mine.ctc <= 0 and mine.decoder <= 0
    assert batched[2].ctc_scores.ctc == pytest.approx(log_probs[2][:, 0].sum().item())  # "": every frame blank
    with pytest.raises(ValueError, match=r"^got 3 chunks, 2 CTC transcripts, 3 CTC log-prob rows$"):
        transcriber.score(waves, texts[:2], log_probs, vocab)
    with pytest.raises(ValueError, match=r"^a transcriber reads 30-s windows; got a 31.0-s chunk \(the bundle's max_chunk_s"):
        transcriber.score([torch.zeros(31 * 16000)], ["a"], [log_probs[0]], vocab)
    assert all(r.whisper_scores.lm == r.ctc_scores.lm == 0.0 for r in batched)  # no word LM given
    # where the CTC head read what Whisper read, there is nothing to choose: no decoder score
    agreed = transcriber.score(waves, [r.whisper for r in batched], log_probs, vocab)
    for one, reading in zip(agreed, batched):
        assert one.whisper == one.ctc == reading.whisper and one.choose(_config(tiny_whisper)) == reading.whisper
        assert math.isnan(one.whisper_scores.decoder) and math.isnan(one.ctc_scores.decoder)
        assert one.ctc_scores.ctc == pytest.approx(ctc_log_likelihood(log_probs[batched.index(reading)], reading.whisper, vocab))


@pytest.mark.parametrize(("whisper", "pack_s"), [("tiny_whisper", 0.0), ("tiny_whisper_timestamps", 26.0)])
def test_the_beam_s_n_best_readings_are_scored_as_its_best(whisper, pack_s, example_clips, vocab, request):
    """`num_hypotheses`: the beam's best reading is the same as with one hypothesis; the others are
    the beam's further readings, each once and none the best or the CTC one, scored by the CTC head
    and by the decoder's forced log-probability as the best one is."""
    waves = [load_audio(c) for c in example_clips[:2]]
    waves.append(waves[0][:16000])
    texts, log_probs = _ctc_inputs(vocab, waves)
    config = _config(request.getfixturevalue(whisper), beam_size=4, pack_s=pack_s)
    one = WhisperTranscriber(config).score(waves, texts, log_probs, vocab)
    four = WhisperTranscriber(dataclasses.replace(config, num_hypotheses=4)).score(waves, texts, log_probs, vocab)
    assert not any(r.others for r in one)
    # the random model's readings differ late: alone, its beam offers more; packed, each cut where its chunk ends reads the same
    assert any(r.others for r in four) == (pack_s == 0)
    rescored = WhisperTranscriber(config)
    for best, chunk, wav, log_prob in zip(one, four, waves, log_probs):
        assert (chunk.whisper, chunk.whisper_tokens) == (best.whisper, best.whisper_tokens)
        assert chunk.whisper_scores.decoder == pytest.approx(best.whisper_scores.decoder, abs=1e-3, nan_ok=True)
        texts_seen = [a.text for a in chunk.others]
        assert len(set(texts_seen)) == len(texts_seen) and not {chunk.whisper, chunk.ctc, ""} & set(texts_seen)
        assert [a.rank for a in chunk.others] == sorted(a.rank for a in chunk.others) and all(1 <= a.rank < 4 for a in chunk.others)
        for other in chunk.others:
            assert other.scores.ctc == pytest.approx(ctc_log_likelihood(log_prob, other.text, vocab))
            if not chunk.packed:  # alone in its window: the same forced score as when it is the CTC head's reading
                (forced,) = rescored.score([wav], [other.text], [log_prob], vocab)
                assert other.scores.decoder == pytest.approx(forced.ctc_scores.decoder, abs=1e-3)
        # with one hypothesis the rule weighs what it did before
        assert chunk.choose(config) == best.choose(config)
        assert [t for t, _ in chunk.candidates(dataclasses.replace(config, num_hypotheses=4))][2 if chunk.whisper != chunk.ctc else 1 :] == texts_seen


def test_whisper_leaves_the_chunks_the_ctc_head_is_sure_of(tiny_whisper, example_clips, vocab):
    """`confident_ctc`: a chunk whose CTC transcript scores at least the threshold per second is not
    read; the others are read and scored as without the gate (one chunk per window)."""
    waves = [load_audio(c) for c in example_clips[:2]]
    waves.append(waves[0][:16000])
    texts, log_probs = _ctc_inputs(vocab, waves)
    config = _config(tiny_whisper)
    ungated = WhisperTranscriber(config).score(waves, texts, log_probs, vocab)
    confidence = [ctc_confidence(r.ctc_scores, r.duration_s, config) for r in ungated]
    threshold = sorted(confidence)[1]  # the two surest chunks are left to the CTC head
    gated = WhisperTranscriber(dataclasses.replace(config, confident_ctc=threshold)).score(waves, texts, log_probs, vocab)
    assert sum(r.confident for r in gated) == 2
    for one, other, sure in zip(gated, ungated, confidence):
        assert one.confident == (sure >= threshold) and one.ctc == other.ctc
        assert one.ctc_scores.ctc == pytest.approx(other.ctc_scores.ctc)
        if one.confident:
            assert (one.whisper, one.whisper_tokens) == ("", 0) and math.isnan(one.whisper_scores.decoder)
            assert one.choose(config) == one.ctc
        else:
            assert one.whisper == other.whisper and one.whisper_scores.decoder == pytest.approx(other.whisper_scores.decoder, abs=1e-3)

    class Unread:  # no chunk to read: Whisper's model is never called
        def __getattr__(self, name):
            raise AssertionError(f"Whisper's {name} was called")

    everything = WhisperTranscriber(dataclasses.replace(config, confident_ctc=-1000.0))
    everything._model = Unread()
    assert [r.confident for r in everything.score(waves, texts, log_probs, vocab)] == [True] * 3


def test_the_decoder_attends_to_each_chunk_s_frames_and_the_margin():
    from types import SimpleNamespace

    encoded = np.arange(2 * 1500, dtype=np.float32).reshape(2, 1500, 1)  # each frame holds its own index
    waves = [np.zeros(16000 * 3), np.zeros(16000 * 1), np.zeros(16000 * 25)]
    jobs = [(0, 0, 0.0), (0, 1, 5.0), (1, 2, 0.0)]  # (window row, chunk, offset s)
    whole = SimpleNamespace(config=TranscriberConfig())
    attended, frames = WhisperTranscriber._attended(whole, encoded, [600, 600, 2500], jobs, waves)
    assert attended.shape == (3, 1500, 1) and frames == [600, 600, 600]  # the whole window; frames as given per row
    near = SimpleNamespace(config=TranscriberConfig(attend_margin_s=1.0))
    attended, frames = WhisperTranscriber._attended(near, encoded, [600, 600, 2500], jobs[:2], waves)
    # the longest need (chunk 0: 3 s at the start, 1 s after it) sets the length: 200 frames, then the
    # window's last second (50 frames)
    assert attended.shape == (2, 250, 1) and frames == [500, 500]
    assert list(attended[0, :200, 0]) == list(range(0, 200)) and list(attended[0, 200:, 0]) == list(range(1450, 1500))
    assert list(attended[1, :200, 0]) == list(range(200, 400))  # 1 s (50 frames) of margin before frame 250
    late = SimpleNamespace(config=TranscriberConfig(attend_margin_s=1.0))
    attended, _ = WhisperTranscriber._attended(late, encoded, [600], [(0, 1, 28.0)], waves)
    assert list(attended[0, :, 0]) == list(range(1300, 1500))  # its span (1350-1499) meets the tail: one run of 150 + 50
    # with a chunk of 25 s every job attends to 1300 + 50 frames
    attended, frames = WhisperTranscriber._attended(near, encoded, [600, 600, 2500], jobs, waves)
    assert attended.shape == (3, 1350, 1) and frames == [2700] * 3
    assert attended[2, 0, 0] == 1500 and attended[2, 1299, 0] == 2799 and attended[2, 1300, 0] == 2950
    # where a span and the tail would fill the window, every job attends to all of its window
    wide = SimpleNamespace(config=TranscriberConfig(attend_margin_s=5.0))
    attended, frames = WhisperTranscriber._attended(wide, encoded, [600, 600, 2500], jobs, waves)
    assert attended.shape == (3, 1500, 1) and frames == [600, 600, 600]


def test_a_margin_as_wide_as_the_window_reads_as_the_whole_window(tiny_whisper_timestamps, example_clips, vocab):
    config = TranscriberConfig(base=None, path=str(tiny_whisper_timestamps["ct2_float32"]), compute_type="float32",
                               cpu_threads=1, max_tokens_per_second=1000.0, pack_s=26.0)  # fmt: skip
    waves = [load_audio(c)[: 3 * 16000] for c in example_clips[:2]] * 2 + [load_audio(example_clips[0])]
    texts = ["a cat", "the dog", "a dog", "cat", "a"]
    log_probs = _ctc_inputs(vocab, waves)[1]
    whole = WhisperTranscriber(config).score(waves, texts, log_probs, vocab)
    wide = WhisperTranscriber(dataclasses.replace(config, attend_margin_s=30.0)).score(waves, texts, log_probs, vocab)
    assert [r.whisper for r in wide] == [r.whisper for r in whole]
    for one, other in zip(wide, whole):
        assert one.ctc_scores.decoder == pytest.approx(other.ctc_scores.decoder, abs=1e-4, nan_ok=True)
    near = WhisperTranscriber(dataclasses.replace(config, attend_margin_s=0.5)).score(waves, texts, log_probs, vocab)
    assert len(near) == 5 and all(math.isfinite(r.ctc_scores.decoder) or r.whisper == r.ctc for r in near)


def test_the_ctc_confidence_is_per_second_with_the_rules_lm_weight():
    scores = Scores(ctc=-10.0, decoder=math.nan, lm=-4.0)
    assert ctc_confidence(scores, 2.0, TranscriberConfig(lm_weight=0.5)) == -6.0  # (-10 - 2) / 2 s
    assert ctc_confidence(scores, 2.0, TranscriberConfig()) == -5.0  # lm_weight 0: the LM term is off
    assert ctc_confidence(scores, 0.1, TranscriberConfig()) == -20.0  # a tenth of a second counts as half of one
    assert ctc_confidence(Scores(-math.inf, 0.0, 0.0), 1.0, TranscriberConfig()) == -math.inf  # no CTC path: never sure


def test_the_word_lm_scores_both_readings_when_the_compressor_has_one(tiny_whisper, example_clips, vocab, tmp_path):
    from spokenlm.compress.beam import SentenceLM
    from spokenlm.ngram import fit_ngram

    lm_path = fit_ngram(["a cat", "the dog", "a dog"], 2).write_arpa(tmp_path / "lm.arpa")
    waves = [load_audio(c) for c in example_clips[:2]]
    texts, log_probs = _ctc_inputs(vocab, waves)
    scored = WhisperTranscriber(_config(tiny_whisper, lm_weight=0.5)).score(waves, texts, log_probs, vocab, lm_path=lm_path)
    lm = SentenceLM(lm_path)
    for reading in scored:
        assert reading.ctc_scores.lm == pytest.approx(lm.log10_prob(reading.ctc) * math.log(10))
        assert reading.whisper_scores.lm == pytest.approx(lm.log10_prob(reading.whisper) * math.log(10))
        assert reading.ctc_scores.lm < 0
    with pytest.raises(ValueError, match=r"^lm_weight is 0.5, but the CTC compressor has no word LM to score readings with"):
        WhisperTranscriber(_config(tiny_whisper, lm_weight=0.5)).score(waves, texts, log_probs, vocab)


def test_the_decoder_score_is_the_forced_log_probability_of_the_tokens(tiny_whisper, example_clips, vocab):
    """Parity with transformers: the same Whisper (float32), teacher-forced on the same mel features,
    each token's probability among the text tokens (ids below <|endoftext|>, as Whisper's aligner)."""
    from transformers import WhisperForConditionalGeneration

    config = dataclasses.replace(_config(tiny_whisper), compute_type="float32", path=str(tiny_whisper["ct2_float32"]))
    transcriber = WhisperTranscriber(config)
    wav = load_audio(example_clips[0])
    text = "a cat sat"
    (scored,) = transcriber.score([wav], [text], _ctc_inputs(vocab, [wav])[1], vocab)
    hf = WhisperForConditionalGeneration.from_pretrained(tiny_whisper["hf"]).eval()
    from faster_whisper.audio import pad_or_trim

    mel = torch.from_numpy(pad_or_trim(transcriber._features(wav.numpy())))[None].float()
    prompt = transcriber._prompt
    tokens = transcriber._tokenizer.encode(" " + text)
    with torch.no_grad():
        logits = hf(input_features=mel, decoder_input_ids=torch.tensor([prompt + tokens])).logits[0]
    logits = logits[:, : transcriber._tokenizer.eot].log_softmax(-1)
    expected = sum(logits[len(prompt) - 1 + k, t].item() for k, t in enumerate(tokens))
    assert scored.ctc_scores.decoder == pytest.approx(expected, rel=5e-3)  # CTranslate2 and torch kernels differ a little


def test_short_chunks_are_packed_into_windows_on_the_timestamp_grid():
    windows = pack_windows([3.0, 4.01, 0.5, 20.0, 2.0, 31.0, 1.0], ["a", "b", "c", "d", "", "x", "y"], 26.0, 2.0)
    assert [(w.chunks, w.offsets) for w in windows] == [
        ((0, 1, 2), (0.0, 5.0, 11.02)),  # 4.01 s + 2 s of gap: the next chunk starts on the 20-ms grid
        ((4,), (0.0,)),  # an empty CTC reading goes alone
        ((5,), (0.0,)),  # longer than pack_s: alone
        ((3, 6), (0.0, 22.0)),  # 20 s did not fit after 13.54 s; the 1-s chunk fits after it
    ]  # fmt: skip
    assert sorted(c for w in windows for c in w.chunks) == list(range(7))


def test_a_packed_reading_is_cut_where_the_next_chunk_begins():
    ts = lambda seconds: 100 + round(seconds / 0.02)  # noqa: E731 - timestamp tokens from id 100
    # the chunk runs 5.0-9.0 s; CTranslate2 echoes the start; two segments inside, then the next chunk's
    ids = [ts(5.0), 1, 2, 3, ts(8.0), ts(8.2), 4, ts(8.8), ts(11.2), 7, 8, ts(12.0)]
    assert cut_packed_reading(ids, 9.0, 100, gap_s=2.0, ended=True) == [1, 2, 3, 4]
    assert cut_packed_reading(ids[1:], 9.0, 100, gap_s=2.0, ended=True) == [1, 2, 3, 4]  # no echo: the same
    # a segment closing just past the gap (Whisper's ends stray) is the chunk's; far past it, not
    assert cut_packed_reading([1, 2, ts(11.4), ts(11.4), 7], 9.0, 100, gap_s=2.0, ended=True) == [1, 2]
    assert cut_packed_reading([1, 2, ts(11.6), ts(11.6), 7], 9.0, 100, gap_s=2.0, ended=True) is None
    # never closed: the end of the reading (eot) keeps it, the length limit (a loop) does not
    assert cut_packed_reading([1, 2, 3], 9.0, 100, gap_s=2.0, ended=True) == [1, 2, 3]
    assert cut_packed_reading([1, 2, 3], 9.0, 100, gap_s=2.0, ended=False) is None
    assert cut_packed_reading([ts(5.0), ts(7.0)], 9.0, 100, gap_s=2.0, ended=True) == []


def test_packed_windows_read_every_chunk_and_score_as_teacher_forcing(tiny_whisper_timestamps, example_clips, vocab):
    """Several chunks in one window: each chunk gets a reading (packed, or alone where its share was
    unclear), and a packed chunk's decoder score is the teacher-forced log-probability of its tokens
    after the timestamp of its start, on the packed window (transformers, float32)."""
    from faster_whisper.audio import pad_or_trim
    from transformers import WhisperForConditionalGeneration

    config = TranscriberConfig(base=None, path=str(tiny_whisper_timestamps["ct2_float32"]), compute_type="float32",
                               cpu_threads=1, max_tokens_per_second=1000.0, pack_s=26.0)  # fmt: skip
    transcriber = WhisperTranscriber(config)
    waves = [load_audio(c)[: 3 * 16000] for c in example_clips[:2]] * 2
    texts, log_probs = _ctc_inputs(vocab, waves)
    texts = ["a cat", "the dog", "a dog", "cat"]
    scored = transcriber.score(waves, texts, log_probs, vocab)
    assert [r.ctc for r in scored] == texts and all(math.isfinite(r.ctc_scores.decoder) for r in scored)
    alone = WhisperTranscriber(dataclasses.replace(config, pack_s=0.0)).score(waves, texts, log_probs, vocab)
    for one, other in zip(scored, alone):
        assert one.ctc_scores.ctc == pytest.approx(other.ctc_scores.ctc)  # the CTC head's score knows no windows
        if not one.packed:  # read again alone: as the unpacked transcriber reads it
            assert (one.whisper, one.whisper_scores.decoder) == (other.whisper, pytest.approx(other.whisper_scores.decoder, abs=1e-3))
    (window,) = pack_windows([w.shape[-1] / 16000 for w in waves], texts, 26.0, 2.0)
    assert window.offsets == (0.0, 5.0, 10.0, 15.0)
    mel = torch.from_numpy(pad_or_trim(transcriber._features(transcriber._window_audio(window, [w.numpy() for w in waves]))))
    hf = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_timestamps["hf"]).eval()
    eot = transcriber._tokenizer.eot
    for chunk, offset in zip(window.chunks, window.offsets):
        prefix = [*transcriber._stamped, transcriber._timestamp(offset)]
        tokens = transcriber._tokenizer.encode(" " + texts[chunk])
        with torch.no_grad():
            logits = hf(input_features=mel[None].float(), decoder_input_ids=torch.tensor([prefix + tokens])).logits[0]
        logits = logits[:, :eot].log_softmax(-1)
        expected = sum(logits[len(prefix) - 1 + k, t].item() for k, t in enumerate(tokens))
        got = scored[chunk].ctc_scores.decoder
        if scored[chunk].packed:
            assert got == pytest.approx(expected, rel=5e-3), chunk
    assert any(r.packed for r in scored)


def test_the_bf16_encoder_reads_the_window_as_ctranslate2_does(tiny_whisper, example_clips, vocab):
    """The same encoder weights in torch under bfloat16 autocast: near CTranslate2's float32 encoding,
    and the transcriber still reads and scores every chunk."""
    from faster_whisper.audio import pad_or_trim

    exact = WhisperTranscriber(dataclasses.replace(_config(tiny_whisper), compute_type="float32", path=str(tiny_whisper["ct2_float32"])))
    fast = WhisperTranscriber(dataclasses.replace(_config(tiny_whisper), bf16_encoder=True))
    wav = load_audio(example_clips[0])
    mel = pad_or_trim(exact._features(wav.numpy()))
    reference, encoded = exact._encode(mel), fast._encode(mel)
    assert encoded.shape == reference.shape == (1, 1500, 16)
    assert np.abs(encoded - reference).mean() / np.abs(reference).mean() < 0.03  # bfloat16's ~3 significant digits
    waves = [wav, wav[:16000]]
    texts, log_probs = _ctc_inputs(vocab, waves)
    scored = fast.score(waves, texts, log_probs, vocab)
    assert [r.ctc for r in scored] == texts and all(math.isfinite(r.ctc_scores.decoder) for r in scored)


def test_the_ctc_score_sums_every_alignment():
    """Parity with brute force: log P(text) = logsumexp over every frame path that collapses to it."""
    import itertools

    from spokenlm.compress.vocab import CharVocab

    vocab = CharVocab("ab")  # 3^5 paths; no space, which normalizing would strip from a path's ends
    torch.manual_seed(0)
    log_probs = torch.randn(5, vocab.size).log_softmax(-1)
    for text in ("ab", "aa", "ba", "a", ""):
        target = vocab.encode(text)
        paths = [p for p in itertools.product(range(vocab.size), repeat=5) if vocab.encode(vocab.ctc_decode(list(p))) == target]
        assert paths
        brute = torch.logsumexp(torch.stack([sum(log_probs[t, k] for t, k in enumerate(p)) for p in paths]), 0)
        assert ctc_log_likelihood(log_probs, text, vocab) == pytest.approx(brute.item(), abs=1e-4)
    assert ctc_log_likelihood(log_probs[:2], "aba", vocab) == -math.inf  # 3 labels cannot fit in 2 frames


def _reading(whisper, ctc, w, c, *, tokens=3, seconds=2.0):
    return ChunkReadings(whisper=whisper, ctc=ctc, whisper_scores=Scores(*w), ctc_scores=Scores(*c), whisper_tokens=tokens,
                         whisper_logprob=-0.1, duration_s=seconds)  # fmt: skip


def test_the_rule_takes_the_reading_both_models_prefer():
    config = TranscriberConfig(ctc_weight=0.5, length_bonus=0.0)
    # Scores(ctc, decoder): the CTC head finds Whisper's "two" likely, the decoder its own reading too
    assert _reading("two", "to", (-3.0, -1.0), (-2.0, -9.0)).choose(config) == "two"  # -2 > -5.5
    assert _reading("thank you", "two", (-40.0, -0.5), (-2.0, -6.0)).choose(config) == "two"  # a hallucination
    assert _reading("one", "won", (-4.0, -2.0), (-3.0, -3.0)).choose(config) == "won"  # a tie: the CTC reading
    # the weight decides where the two models disagree
    split = _reading("w", "c", (-10.0, -1.0), (-1.0, -10.0))
    assert split.choose(TranscriberConfig(ctc_weight=0.2)) == "w" and split.choose(TranscriberConfig(ctc_weight=0.8)) == "c"
    assert split.choose(TranscriberConfig(ctc_weight=0.0)) == "w" and split.choose(TranscriberConfig(ctc_weight=1.0)) == "c"
    # an impossible CTC path (-inf) weighs nothing when its weight is 0, and loses otherwise
    impossible = _reading("w", "c", (-math.inf, -1.0), (-2.0, -5.0))
    assert impossible.choose(TranscriberConfig(ctc_weight=0.0)) == "w" and impossible.choose(config) == "c"
    # the length bonus: per word
    short_long = _reading("a b c", "a", (-3.0, -3.0), (-1.0, -1.0))
    assert short_long.choose(config) == "a" and short_long.choose(TranscriberConfig(length_bonus=1.5)) == "a b c"
    # a chunk Whisper left to the CTC head (confident_ctc) takes the CTC reading, whatever the scores
    assert dataclasses.replace(_reading("two", "to", (-3.0, -1.0), (-2.0, -9.0)), confident=True).choose(config) == "to"
    # Whisper's empty reading or a decoding loop (100 tokens in 2 s) always loses
    assert _reading("", "c", (0.0, 0.0), (-9.0, -9.0)).choose(config) == "c"
    assert _reading("w w w", "c", (0.0, 0.0), (-9.0, -9.0), tokens=100).choose(config) == "c"
    # per recording, its chunks' choices joined in order (an empty one skipped)
    chunks = [[_reading("two", "to", (-3.0, -1.0), (-2.0, -9.0)), _reading("", "", (0.0, 0.0), (0.0, 0.0))],
              [_reading("x", "y", (-1.0, -1.0), (-2.0, -2.0)), _reading("z", "q", (-5.0, -5.0), (-1.0, -1.0))]]  # fmt: skip
    assert choose_prompt_texts(chunks, config) == ["two", "x q"]


def test_the_rule_weighs_the_beam_s_further_readings_up_to_num_hypotheses():
    four = TranscriberConfig(beam_size=4, num_hypotheses=4, ctc_weight=0.5)
    # the beam's best ("old supposed") is the decoder's favourite, its second the CTC head's by more
    chunk = dataclasses.replace(
        _reading("old supposed", "neild spots", (-30.0, -13.0), (-20.0, -40.0)),
        others=(Alternative("ill disposed", Scores(-25.0, -14.0), 1), Alternative("all deposed", Scores(-40.0, -20.0), 3)),
    )  # fmt: skip
    assert chunk.choose(four) == "ill disposed"  # -19.5 > -21.5 (the best), -30 (the CTC reading), -30 (the fourth)
    assert chunk.choose(dataclasses.replace(four, num_hypotheses=1)) == "old supposed"  # the beam's best alone
    assert chunk.choose(dataclasses.replace(four, num_hypotheses=2)) == "ill disposed"  # rank 1 < 2
    assert [t for t, _ in chunk.candidates(dataclasses.replace(four, num_hypotheses=3))] == ["neild spots", "old supposed", "ill disposed"]
    # where Whisper's best is the CTC reading, a further reading may still win; a tie keeps the earlier
    agreed = dataclasses.replace(_reading("a b", "a b", (-5.0, -5.0), (-5.0, -5.0)), others=(Alternative("a c", Scores(-4.0, -4.0), 1),))
    assert agreed.choose(four) == "a c" and agreed.choose(TranscriberConfig()) == "a b"
    tie = dataclasses.replace(agreed, others=(Alternative("a c", Scores(-5.0, -5.0), 1),))
    assert tie.choose(four) == "a b"
    # a chunk left to the CTC head, or one Whisper read as a loop, takes the CTC reading whatever the others
    assert dataclasses.replace(chunk, confident=True).choose(four) == "neild spots"
    assert dataclasses.replace(chunk, whisper_tokens=100).choose(four) == "neild spots"


def test_the_word_lm_tells_apart_what_both_models_hear_alike():
    # Scores(ctc, decoder, lm): "four" said alone; both acoustic models slightly prefer "for"
    four = _reading("for", "four", (-2.0, -1.0, -10.8), (-2.0, -1.5, -4.7))
    assert four.choose(TranscriberConfig()) == "for"  # lm_weight 0: the LM term is off
    assert four.choose(TranscriberConfig(lm_weight=0.1)) == "four"  # -1.5 - 1.08 < -1.75 - 0.47
    assert four.choose(TranscriberConfig(ctc_weight=0.0, lm_weight=0.05)) == "for"  # -1.0 - 0.54 > -1.5 - 0.235


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base": None}, "a transcriber needs exactly one of base and path"),
        ({"path": "x"}, "a transcriber needs exactly one of base and path"),
        ({"base": "smollm2-135m-instruct"}, "unknown transcriber base 'smollm2-135m-instruct'; expected one of whisper-tiny.en"),
        ({"ctc_weight": 1.5}, "ctc_weight must be a number in [0, 1], got 1.5"),
        ({"ctc_weight": float("nan")}, "ctc_weight must be a number in [0, 1], got nan"),
        ({"length_bonus": float("inf")}, "length_bonus must be a number in [-100, 100] (log-probability per word), got inf"),
        ({"length_bonus": "1"}, "length_bonus must be a number in [-100, 100] (log-probability per word), got '1'"),
        ({"lm_weight": -0.1}, "lm_weight must be a number in [0, 10], got -0.1"),
        ({"lm_weight": True}, "lm_weight must be a number in [0, 10], got True"),
        ({"batch_size": 0}, "batch_size must be an int in [1, 256], got 0"),
        ({"beam_size": 0}, "beam_size must be an int in [1, 16], got 0"),
        ({"num_hypotheses": 2}, "num_hypotheses must be an int in [1, beam_size=1], got 2"),
        ({"num_hypotheses": 0, "beam_size": 4}, "num_hypotheses must be an int in [1, beam_size=4], got 0"),
        ({"num_hypotheses": True}, "num_hypotheses must be an int in [1, beam_size=1], got True"),
        ({"cpu_threads": -1}, "cpu_threads must be an int >= 0, got -1"),
        ({"max_tokens_per_second": 0}, "max_tokens_per_second must be > 0, got 0"),
        ({"pack_s": 3.0}, "pack_s must be 0 (one chunk per window) or within [5, 30] seconds, got 3.0"),
        ({"pack_s": 31}, "pack_s must be 0 (one chunk per window) or within [5, 30] seconds, got 31"),
        ({"pack_gap_s": 0.0}, "pack_gap_s must be within [0.2, 5] seconds, got 0.0"),
        ({"bf16_encoder": "yes"}, "bf16_encoder must be true or false, got 'yes'"),
        ({"attend_margin_s": 0.0}, "attend_margin_s must be null or within [0.2, 30] seconds, got 0.0"),
        ({"attend_margin_s": True}, "attend_margin_s must be null or within [0.2, 30] seconds, got True"),
        ({"confident_ctc": 0.5}, "confident_ctc must be null or a log-likelihood per second in [-1000, 0], got 0.5"),
        ({"confident_ctc": float("nan")}, "confident_ctc must be null or a log-likelihood per second in [-1000, 0], got nan"),
        ({"confident_ctc": "-5"}, "confident_ctc must be null or a log-likelihood per second in [-1000, 0], got '-5'"),
    ],
)
def test_bad_transcriber_configs_are_named(changes, message):
    import dataclasses

    with pytest.raises(ValueError) as err:
        dataclasses.replace(TranscriberConfig(), **changes).validate()
    assert str(err.value) == message


def test_transcriber_json_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^t: unknown field\(s\) threshold$"):
        transcriber_config_from_json({"threshold": 1}, where="t")
    with pytest.raises(ValueError, match=r"^t: min_logprob is no longer a transcriber setting: the confidence threshold was replaced"):
        transcriber_config_from_json({"min_logprob": -0.2}, where="t")
    with pytest.raises(FileNotFoundError, match="no transcriber.json at"):
        read_transcriber_config(tmp_path)
    (tmp_path / "transcriber.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_transcriber_config(tmp_path)


def test_a_bundle_with_a_transcriber_prompts_with_the_chosen_reading(hybrid_bundle, tiny_whisper, example_clips):
    config = _config(tiny_whisper, ctc_weight=0.3, length_bonus=0.5)
    set_bundle_transcriber(hybrid_bundle, config)
    try:
        assert load_bundle_transcriber_config(hybrid_bundle) == config
        # a server's replica sets CTranslate2's threads; the bundle's settings are otherwise kept
        assert load_bundle_transcriber(hybrid_bundle, cpu_threads=2).config == dataclasses.replace(config, cpu_threads=2)
        model = load_bundle(hybrid_bundle)
        waves = [load_audio(c) for c in example_clips[:2]]
        speech = model.encode_recordings(waves)
        # one chunk per clip: its CTC reading is the transcript; its Whisper reading the transcriber's own
        assert [[c.ctc for c in chunks] for chunks in speech.readings] == [[t] for t in speech.transcripts]
        vocab = model.compressor.vocab
        alone = WhisperTranscriber(config).score(waves, speech.transcripts, [torch.zeros(1, vocab.size)] * 2, vocab)
        assert [[c.whisper for c in chunks] for chunks in speech.readings] == [[r.whisper] for r in alone]
        assert speech.prompt_texts == choose_prompt_texts(speech.readings, config)
        assert all("transcriber" in t for t in speech.timing_ms)
        prompts = request_prompts(model.llm, [TaskRequest(task="asr")] * 2, speech.char_times,
                                  prompt_texts=speech.prompt_texts)  # fmt: skip
        for prompt, text in zip(prompts, speech.prompt_texts):
            assert f"{TRANSCRIPT_HINT}{text}\n" in prompt
        # one recording alone and batched again keep its readings
        assert speech.item(1).prompt_texts == [speech.prompt_texts[1]] and speech.item(1).readings == [speech.readings[1]]
        again = type(speech).batch([speech.item(1), speech.item(0)])
        assert again.prompt_texts == speech.prompt_texts[::-1] and again.readings == speech.readings[::-1]
    finally:
        set_bundle_transcriber(hybrid_bundle, None)
    assert json.loads((hybrid_bundle / "spokenlm.json").read_text())["transcriber"] is None
    assert load_bundle(hybrid_bundle).transcriber is None


def test_a_transcriber_needs_chunks_that_fit_whisper_s_window(hybrid_bundle, tiny_whisper, tmp_path):
    model = load_bundle(hybrid_bundle)
    model.max_chunk_s = 60.0
    long_chunks = save_bundle(model, tmp_path / "long-chunks")
    with pytest.raises(BundleError, match=r"a transcriber reads 30-s windows, but the bundle cuts recordings into chunks of up to 60.0 s$"):
        set_bundle_transcriber(long_chunks, _config(tiny_whisper))
    with pytest.raises(ValueError, match=r"^a transcriber reads 30-s windows: max_chunk_s must be at most that, got 60.0$"):
        type(model)(encoder=model.encoder, compressor=model.compressor, adapter=model.adapter, llm=model.llm,
                    max_chunk_s=60.0, transcriber=WhisperTranscriber(_config(tiny_whisper)))  # fmt: skip


def test_an_lm_weight_needs_a_compressor_with_a_word_lm(hybrid_bundle, tiny_whisper):
    assert load_bundle(hybrid_bundle).compressor.lm_path is None
    with pytest.raises(BundleError, match=r"lm_weight is 0.2, but the bundle's compressor has no word LM \(a compressor from the ctc-lm"):
        set_bundle_transcriber(hybrid_bundle, _config(tiny_whisper, lm_weight=0.2))
    assert load_bundle_transcriber_config(hybrid_bundle) is None  # nothing written


def test_a_transcriber_needs_a_hybrid_prompt_llm(tiny_bundle, tiny_whisper):
    with pytest.raises(BundleError, match="trained without a transcript in the prompt; a transcriber has no use"):
        set_bundle_transcriber(tiny_bundle, _config(tiny_whisper))
    meta = json.loads((tiny_bundle / "spokenlm.json").read_text())
    assert meta.get("transcriber") is None  # refused: nothing written


def test_asr_answered_from_the_transcript_skips_the_llm(hybrid_bundle, example_clips, tmp_path, monkeypatch):
    model = load_bundle(hybrid_bundle)
    model.llm.asr_from_transcript = True
    saved = save_bundle(model, tmp_path / "asr-from-transcript")
    model = load_bundle(saved)
    assert model.llm.asr_from_transcript
    wav = load_audio(example_clips[0])
    decoded: list[int] = []
    generate = model.llm.generate

    def counting(prompts, *args, **kwargs):
        decoded.append(len(prompts))
        return generate(prompts, *args, **kwargs)

    monkeypatch.setattr(model.llm, "generate", counting)
    requests = [TaskRequest(task="asr"), TaskRequest(task="sentiment"), TaskRequest(task="asr")]
    outputs = model.run([wav], requests, recording=[0, 0, 0])
    assert outputs[0].result.text == outputs[0].transcript == outputs[2].result.text
    assert decoded == [1]  # only the sentiment request reached the LLM
    assert outputs[1].request.task == "sentiment"
    (alone,) = model.run([wav], [TaskRequest(task="asr")])
    assert alone.result.text == outputs[0].transcript and decoded == [1]
    streamed = list(model.stream(wav, TaskRequest(task="asr")))
    assert streamed[0] == outputs[0].transcript and streamed[-1].result.text == outputs[0].transcript
    assert decoded == [1]
    with torch.inference_mode():  # the flag off: the LLM decodes ASR again
        model.llm.asr_from_transcript = False
        model.run([wav], [TaskRequest(task="asr")])
    assert decoded == [1, 1]


def test_the_bundle_command_sets_and_clears_the_options(hybrid_bundle, tiny_whisper, tmp_path, capsys):
    from spokenlm.cli import main

    out = tmp_path / "transcriber-run"
    out.mkdir()
    (out / "transcriber.json").write_text(json.dumps({"base": None, "path": str(tiny_whisper["ct2_int8"]),
                                                      "ctc_weight": 0.4}))  # fmt: skip
    assert main(["bundle", "set", str(hybrid_bundle), "--transcriber", str(out), "--asr-from-transcript", "on"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["asr_from_transcript"] is True and shown["transcriber"]["ctc_weight"] == 0.4
    model = load_bundle(hybrid_bundle)
    assert model.llm.asr_from_transcript and model.transcriber.config.ctc_weight == 0.4
    assert main(["bundle", "set", str(hybrid_bundle), "--transcriber", "none", "--asr-from-transcript", "off"]) == 0
    capsys.readouterr()
    model = load_bundle(hybrid_bundle)
    assert not model.llm.asr_from_transcript and model.transcriber is None
    assert main(["bundle", "set", str(hybrid_bundle)]) == 2
    assert "give --transcriber, --asr-from-transcript, --head, --drop-head, --translator and/or --grounded" in capsys.readouterr().err
    assert main(["bundle", "set", str(tmp_path), "--asr-from-transcript", "on"]) == 2
    assert "spokenlm.json is missing" in capsys.readouterr().err


def test_the_default_bundle_falls_back_to_the_trained_part_then_an_untrained_one(tmp_path, monkeypatch):
    from spokenlm import demo

    monkeypatch.setenv("SPOKENLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "DEFAULT_BUNDLE", tmp_path / "default")
    monkeypatch.setattr(demo, "TRAINED_PART", tmp_path / "part")
    built: list = []
    untrained = demo.default_bundle(on_build=built.append)
    assert built == [untrained] and demo.default_bundle_note(untrained) is None
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "spokenlm.json").write_text("{}")
    assert demo.default_bundle() == tmp_path / "part"
    assert "models/default does not exist yet" in demo.default_bundle_note(tmp_path / "part")
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "spokenlm.json").write_text("{}")
    assert demo.default_bundle() == tmp_path / "default" and demo.default_bundle_note(tmp_path / "default") is None


def test_a_bundle_carries_its_transcriber_s_decoder_lora(hybrid_bundle, tiny_whisper, example_clips, tmp_path):
    """`set_bundle_transcriber` copies the LoRA in and names it relative to the bundle: a copy of the
    bundle elsewhere reads the same, `save_bundle` copies it again, and taking the transcriber away
    takes it too."""
    import shutil

    from spokenlm.whisper_tune import add_decoder_lora, load_whisper_for_tuning

    torch.manual_seed(0)
    lora = add_decoder_lora(load_whisper_for_tuning(tiny_whisper["ct2_float32"]), rank=2, alpha=4, dropout=0.0, targets=("fc1",))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    lora.save_pretrained(str(tmp_path / "lora"))
    plain_config = dataclasses.replace(_config(tiny_whisper), path=str(tiny_whisper["ct2_float32"]))  # a LoRA needs float weights
    config = dataclasses.replace(plain_config, decoder_lora=str(tmp_path / "lora"))
    set_bundle_transcriber(hybrid_bundle, config)
    try:
        assert load_bundle_transcriber_config(hybrid_bundle).decoder_lora == "whisper_lora"
        moved = tmp_path / "moved"
        shutil.copytree(hybrid_bundle, moved)
        shutil.rmtree(tmp_path / "lora")  # the bundle has its own copy
        model = load_bundle(moved)
        assert model.transcriber.decoder_lora == moved / "whisper_lora"
        wav = load_audio(example_clips[0])
        vocab = model.compressor.vocab
        ours = model.transcriber.score([wav], ["a cat"], [torch.zeros(1, vocab.size)], vocab)
        plain = WhisperTranscriber(plain_config).score([wav], ["a cat"], [torch.zeros(1, vocab.size)], vocab)
        assert ours[0].ctc_scores.decoder != pytest.approx(plain[0].ctc_scores.decoder, rel=1e-3)
        resaved = save_bundle(model, tmp_path / "resaved")
        assert (resaved / "whisper_lora" / "adapter_model.safetensors").is_file()
        assert load_bundle_transcriber_config(resaved).decoder_lora == "whisper_lora"
        set_bundle_transcriber(moved, load_bundle_transcriber_config(moved))  # set again from its own copy
        assert (moved / "whisper_lora" / "adapter_config.json").is_file()
        set_bundle_transcriber(moved, None)
        assert not (moved / "whisper_lora").exists()
    finally:
        set_bundle_transcriber(hybrid_bundle, None)
    assert not (hybrid_bundle / "whisper_lora").exists()


def test_a_reading_longer_than_the_decoder_s_context_scores_minus_infinity(tiny_whisper, example_clips, vocab):
    """A CTC transcript (or a looping Whisper reading) of more tokens than Whisper's 448 positions
    hold cannot be forced through its decoder: it scores -inf instead of failing the batch."""
    transcriber = WhisperTranscriber(dataclasses.replace(_config(tiny_whisper), max_tokens_per_second=8.0))
    wav = load_audio(example_clips[0])
    fits = ("ab" * 300)[: 448 - len(transcriber._prompt) - 3]  # the tiny tokenizer: a token per character, the space included
    too_long = fits + "a"
    log_probs = [torch.zeros(2000, vocab.size).log_softmax(-1)] * 2
    scored = transcriber.score([wav, wav], [fits, too_long], log_probs, vocab)
    assert math.isfinite(scored[0].ctc_scores.decoder)
    assert scored[1].ctc_scores.decoder == -math.inf
