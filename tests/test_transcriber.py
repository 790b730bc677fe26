"""The bundle's transcriber (Whisper's reading for the hybrid prompt, spokenlm/transcriber.py) and
the ASR answer taken from the prompt's transcript, on the tiny random Whisper of conftest.py."""

import json
import math
import re

import pytest
import torch

from spokenlm.audio import load_audio
from spokenlm.model import (
    BundleError,
    load_bundle,
    load_bundle_transcriber_config,
    request_prompts,
    save_bundle,
    set_bundle_transcriber,
)
from spokenlm.tasks import TRANSCRIPT_HINT, TaskRequest
from spokenlm.transcriber import (
    Reading,
    TranscriberConfig,
    WhisperTranscriber,
    choose_prompt_texts,
    read_transcriber_config,
    transcriber_config_from_json,
)


def _config(tiny_whisper, **changes) -> TranscriberConfig:
    # the random model reads ~1 token per character: its readings would all count as loops at 8/s
    return TranscriberConfig(base=None, path=str(tiny_whisper["ct2_int8"]), cpu_threads=1,
                             max_tokens_per_second=1000.0, **changes)  # fmt: skip


@pytest.fixture(scope="module")
def hybrid_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with an LLM that reads a transcript in its prompt."""
    model = load_bundle(tiny_bundle)
    model.llm.prompt_transcript = True
    return save_bundle(model, tmp_path_factory.mktemp("hybrid") / "bundle")


def test_whisper_reads_each_recording_once_deterministically(tiny_whisper, example_clips):
    transcriber = WhisperTranscriber(_config(tiny_whisper))
    waves = [load_audio(c) for c in example_clips[:2]]
    first, again = transcriber.read(waves), transcriber.read(list(reversed(waves)))
    assert len(first) == 2 and first == list(reversed(again))
    for reading in first:
        assert reading.tokens > 0 and math.isfinite(reading.logprob) and reading.logprob <= 0
        assert re.fullmatch(r"[a-z0-9' ]*", reading.text)  # normalized as our transcripts


def test_the_rule_takes_whisper_only_when_confident_and_sane():
    config = TranscriberConfig(min_logprob=-0.3)
    readings = [
        Reading("confident", -0.1, 3),
        Reading("unsure", -0.9, 3),
        Reading("", -0.05, 0),  # nothing read
        Reading("loop loop loop", -0.01, 100),  # 100 tokens in 2 s: a decoding loop
        Reading("at the threshold", -0.3, 4),
    ]
    ctc = ["a", "b", "c", "d", "e"]
    assert choose_prompt_texts(readings, ctc, [2.0] * 5, config) == ["confident", "b", "c", "d", "at the threshold"]
    assert choose_prompt_texts(readings[:2], ctc[:2], [2.0] * 2, TranscriberConfig(min_logprob=-math.inf)) == [
        "confident", "unsure",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"^got 2 readings, 1 CTC transcripts, 2 durations$"):
        choose_prompt_texts(readings[:2], ["a"], [1.0, 1.0], config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base": None}, "a transcriber needs exactly one of base and path"),
        ({"path": "x"}, "a transcriber needs exactly one of base and path"),
        ({"base": "smollm2-135m-instruct"}, "unknown transcriber base 'smollm2-135m-instruct'; expected one of whisper-tiny.en"),
        ({"min_logprob": 0.5}, "min_logprob must be a number <= 0 (a mean log-probability), got 0.5"),
        ({"min_logprob": float("nan")}, "min_logprob must be a number <= 0 (a mean log-probability), got nan"),
        ({"beam_size": 0}, "beam_size must be an int in [1, 16], got 0"),
        ({"cpu_threads": -1}, "cpu_threads must be an int >= 0, got -1"),
        ({"max_tokens_per_second": 0}, "max_tokens_per_second must be > 0, got 0"),
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
    with pytest.raises(FileNotFoundError, match="no transcriber.json at"):
        read_transcriber_config(tmp_path)
    (tmp_path / "transcriber.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_transcriber_config(tmp_path)


def test_a_bundle_with_a_transcriber_prompts_with_the_chosen_reading(hybrid_bundle, tiny_whisper, example_clips):
    config = _config(tiny_whisper, min_logprob=-math.inf)
    set_bundle_transcriber(hybrid_bundle, config)
    try:
        assert load_bundle_transcriber_config(hybrid_bundle) == config
        model = load_bundle(hybrid_bundle)
        waves = [load_audio(c) for c in example_clips[:2]]
        speech = model.encode_recordings(waves)
        readings = WhisperTranscriber(config).read(waves)
        assert speech.prompt_texts == [r.text for r in readings]  # min_logprob -inf: always Whisper's
        assert all("transcriber" in t for t in speech.timing_ms)
        prompts = request_prompts(model.llm, [TaskRequest(task="asr")] * 2, speech.char_times,
                                  prompt_texts=speech.prompt_texts)  # fmt: skip
        for prompt, reading in zip(prompts, readings):
            assert f"{TRANSCRIPT_HINT}{reading.text}\n" in prompt
        # one recording alone and batched again keep their reading
        assert speech.item(1).prompt_texts == [readings[1].text]
        assert type(speech).batch([speech.item(1), speech.item(0)]).prompt_texts == [readings[1].text, readings[0].text]
        # a threshold no reading reaches: the CTC transcript, as without a transcriber
        set_bundle_transcriber(hybrid_bundle, _config(tiny_whisper, min_logprob=-1e-9))
        assert load_bundle(hybrid_bundle).encode_recordings(waves).prompt_texts == speech.transcripts
    finally:
        set_bundle_transcriber(hybrid_bundle, None)
    assert json.loads((hybrid_bundle / "spokenlm.json").read_text())["transcriber"] is None
    assert load_bundle(hybrid_bundle).transcriber is None


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
                                                      "min_logprob": -0.4}))  # fmt: skip
    assert main(["bundle", "set", str(hybrid_bundle), "--transcriber", str(out), "--asr-from-transcript", "on"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["asr_from_transcript"] is True and shown["transcriber"]["min_logprob"] == -0.4
    model = load_bundle(hybrid_bundle)
    assert model.llm.asr_from_transcript and model.transcriber.config.min_logprob == -0.4
    assert main(["bundle", "set", str(hybrid_bundle), "--transcriber", "none", "--asr-from-transcript", "off"]) == 0
    capsys.readouterr()
    model = load_bundle(hybrid_bundle)
    assert not model.llm.asr_from_transcript and model.transcriber is None
    assert main(["bundle", "set", str(hybrid_bundle)]) == 2
    assert "give --transcriber and/or --asr-from-transcript" in capsys.readouterr().err
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
