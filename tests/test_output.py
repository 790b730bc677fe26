"""spokenlm.output: the record of every task round-trips through from_record, and a dict that is not a
record is refused by name; SpeechLM.stream gives the same answer as SpeechLM.run."""

import dataclasses
import re

import pytest

from spokenlm.audio import load_audio
from spokenlm.lm import GenerationConfig
from spokenlm.model import load_bundle
from spokenlm.output import RECORD_KEYS, RecordError, RunOutput
from spokenlm.tasks import (
    TASK_NAMES,
    Answer,
    DialogActs,
    Entities,
    Entity,
    Sentiment,
    Summary,
    TaskRequest,
    Transcript,
    Translation,
)

GREEDY = GenerationConfig(max_new_tokens=8)
RESULTS = {
    "asr": (TaskRequest(task="asr"), Transcript(text="the cat sat")),
    "translate": (TaskRequest(task="translate", target_lang="de"), Translation(text="die katze", target_lang="de")),
    "ner": (TaskRequest(task="ner"), Entities(text="i met john", entities=(
        Entity(tag="PERSON", text="john", start_char=6, end_char=10, start_s=0.51, end_s=0.9),
        Entity(tag="GPE", text="i", start_char=0, end_char=1)))),
    "sentiment": (TaskRequest(task="sentiment"), Sentiment(label=None)),
    "dialog-act": (TaskRequest(task="dialog-act"), DialogActs(acts=("question_check", "thanks"))),
    "qa": (TaskRequest(task="qa", question="who?"), Answer(text="john", question="who?", start_s=0.5, end_s=0.9)),
    "summarize": (TaskRequest(task="summarize"), Summary(text="a meeting")),
}  # fmt: skip


def _output(task: str) -> RunOutput:
    request, result = RESULTS[task]
    return RunOutput(request=request, result=result, transcript="i met jon", duration_s=1.23456,
                     spans_s=((0.0, 0.02), (0.5, 0.9)), tokens_per_second=1.62, timing_ms={"encoder": 3.21, "llm": 9.87},
                     path="a.wav")  # fmt: skip


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_record_round_trips(task):
    output = _output(task)
    record = output.to_record()
    assert tuple(record) == RECORD_KEYS
    back = RunOutput.from_record(record)
    wire_rounded = dataclasses.replace(output, duration_s=1.235, timing_ms={"encoder": 3.2, "llm": 9.9})
    assert back == wire_rounded  # nothing else it carries is lost
    assert back.to_record() == record
    result_field = {"asr": "text", "translate": "translation", "ner": "entities", "sentiment": "sentiment",
                    "dialog-act": "dialog_acts", "qa": "answer", "summarize": "summary"}[task]  # fmt: skip
    others = {"entities", "sentiment", "dialog_acts", "translation", "answer", "summary"} - {result_field}
    assert all(record[k] is None for k in others)


def test_record_values():
    record = _output("ner").to_record()
    assert record["text"] == "i met john" and record["ctc_text"] == "i met jon"
    assert record["duration_s"] == 1.235 and record["timing_ms"] == {"encoder": 3.2, "llm": 9.9}
    assert record["entities"][0] == {"tag": "PERSON", "text": "john", "start_char": 6, "end_char": 10,
                                     "start_s": 0.51, "end_s": 0.9}  # fmt: skip
    assert _output("qa").to_record()["answer_span_s"] == [0.5, 0.9]
    assert _output("translate").to_record()["text"] == "i met jon"  # the CTC transcript where the task has none
    assert _output("ner").describe() == "'i met john' [PERSON: john, GPE: i]"
    assert _output("summarize").describe() == "'a meeting'"


def test_from_record_names_what_is_wrong():
    record = _output("asr").to_record()
    with pytest.raises(RecordError, match=re.escape("missing keys ['target_lang'], unknown keys ['target_language']")):
        RunOutput.from_record({("target_language" if k == "target_lang" else k): v for k, v in record.items()})
    with pytest.raises(RecordError, match="record of an invalid request: unsupported target language 'xx'"):
        RunOutput.from_record(_output("translate").to_record() | {"target_lang": "xx"})
    with pytest.raises(RecordError, match="a translate record needs 'translation', got null"):
        RunOutput.from_record(_output("translate").to_record() | {"translation": None})
    with pytest.raises(RecordError, match="a record is a JSON object, got list"):
        RunOutput.from_record([])


def test_with_audio_puts_the_decoding_first():
    output = _output("asr").with_audio(path="b.flac", load_ms=1.5)
    assert output.path == "b.flac" and list(output.timing_ms) == ["load_audio", "encoder", "llm"]


def test_stream_gives_runs_answer_as_it_is_decoded(tiny_bundle, example_clips):
    """Greedy, sampled, with a CTC lookup draft and with the hybrid prompt: the deltas join to the text,
    and the last event is the record `run` gives."""
    model = load_bundle(tiny_bundle)
    wav = load_audio(example_clips[0])
    sample = GenerationConfig(strategy="sample", seed=3, max_new_tokens=10)
    for request, generation in [(TaskRequest(task="asr"), GREEDY), (TaskRequest(task="summarize"), sample),
                                (TaskRequest(task="asr"), GenerationConfig(max_new_tokens=8, ctc_draft=True))]:  # fmt: skip
        events = list(model.stream(wav, request, generation))
        *deltas, last = events
        assert all(isinstance(d, str) for d in deltas) and isinstance(last, RunOutput)
        (expected,) = model.run([wav], [request], generation)
        assert last.result == expected.result
        assert last.to_record() | {"timing_ms": {}} == expected.to_record() | {"timing_ms": {}}
        assert "".join(deltas) == last.result.text or " ".join("".join(deltas).split()) == last.result.text
    model.llm.prompt_transcript = True  # the hybrid prompt goes through the same path
    (expected,) = model.run([wav], [TaskRequest(task="asr")], GREEDY)
    assert list(model.stream(wav, TaskRequest(task="asr"), GREEDY))[-1].result == expected.result


def test_run_encodes_a_recording_once_for_several_tasks(tiny_bundle, example_clips):
    model = load_bundle(tiny_bundle)
    wav = load_audio(example_clips[0])
    requests = [TaskRequest(task="asr"), TaskRequest(task="ner")]
    calls = []
    hook = model.encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    shared = model.run([wav], requests, GREEDY, recording=[0, 0])
    hook.remove()
    assert len(calls) == 1
    assert [o.result for o in shared] == [o.result for o in model.run([wav, wav], requests, GREEDY)]
    with pytest.raises(ValueError, match=re.escape("recording indices [1] are not among the 1 recordings")):
        model.run([wav], requests, GREEDY, recording=[0, 1])
