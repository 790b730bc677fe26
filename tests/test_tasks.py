import re

import pytest

from spokenlm.tasks import (
    AUDIO_TOKEN,
    COMBINED_TAGS,
    DIALOG_ACTS,
    NER_TAGS,
    TASK_NAMES,
    TASKS,
    Entity,
    TaskRequest,
    build_prompt,
    combined_tag,
    parse_entities,
    parse_output,
    tag_entities,
)


def _request(task: str) -> TaskRequest:
    extra = {"qa": {"question": "who spoke?"}, "translate": {"target_lang": "es"}}.get(task, {})
    return TaskRequest(task=task, **extra)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_prompt_holds_one_audio_marker(task):
    prompt = build_prompt(_request(task))
    assert prompt.count(AUDIO_TOKEN) == 1


def test_prompts_carry_their_parameters():
    assert "Spanish" in build_prompt(TaskRequest(task="translate", target_lang="es"))
    assert "who spoke?" in build_prompt(TaskRequest(task="qa", question="who spoke?"))


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"task": "dance"}, "unknown task 'dance'; expected one of asr, translate, ner, sentiment, dialog-act, qa, summarize"),
        ({"task": "qa"}, "task 'qa' needs a non-empty question"),
        ({"task": "qa", "question": "  "}, "task 'qa' needs a non-empty question"),
        ({"task": "translate", "target_lang": "xx"}, "unsupported target language 'xx'; expected one of es, fr, de"),
        ({"task": "translate"}, "unsupported target language None; expected one of es, fr, de"),
        ({"task": "asr", "question": "why?"}, "a question only applies to task 'qa', not 'asr'"),
        ({"task": "asr", "target_lang": "es"}, "a target language only applies to task 'translate', not 'asr'"),
    ],
)
def test_bad_requests_are_named(request_kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_prompt(TaskRequest(**request_kwargs))


def test_ner_target_round_trips_through_the_parser():
    text = "john smith flew to paris on monday"
    labels = [("PERSON", 0, 10), ("GPE", 19, 5), ("DATE", 28, 6)]
    tagged = tag_entities(text, labels)
    assert tagged == "[PERSON john smith] flew to [GPE paris] on [DATE monday]"
    parsed = parse_entities(tagged)
    assert parsed.text == text
    assert parsed.entities == (
        Entity(tag="PERSON", text="john smith", start_char=0, end_char=10),
        Entity(tag="GPE", text="paris", start_char=19, end_char=24),
        Entity(tag="DATE", text="monday", start_char=28, end_char=34),
    )
    for e in parsed.entities:
        assert parsed.text[e.start_char : e.end_char] == e.text


def test_ner_target_rejects_bad_labels():
    with pytest.raises(ValueError, match=re.escape("unknown entity tag 'PER'")):
        tag_entities("john", [("PER", 0, 4)])
    with pytest.raises(ValueError, match=re.escape("entity (GPE, 2, 9) overlaps another or lies outside the text")):
        tag_entities("in paris", [("GPE", 2, 9)])


@pytest.mark.parametrize(
    "garbage",
    ["", "[[[", "]]] [PERSON", "[FOO bar] baz", "[PERSON ]", "a [GPE b [ORG c] d] e", "\x00\ufffd", "[" * 500],
)
def test_ner_parser_never_raises_and_offsets_stay_true(garbage):
    parsed = parse_entities(garbage)
    assert "[" not in parsed.text and "]" not in parsed.text
    for e in parsed.entities:
        assert e.tag in NER_TAGS
        assert parsed.text[e.start_char : e.end_char] == e.text


def test_unknown_tags_become_plain_text():
    parsed = parse_entities("[FOO bar] met [PERSON ann]")
    assert parsed.text == "bar met ann"
    assert [(e.tag, e.text) for e in parsed.entities] == [("PERSON", "ann")]


def test_combined_tags_follow_slue():
    assert combined_tag("DATE") == combined_tag("TIME") == "WHEN"
    assert {combined_tag(t) for t in ("CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT")} == {"QUANT"}
    assert combined_tag("GPE") == combined_tag("LOC") == "PLACE"
    assert combined_tag("WORK_OF_ART") is None and combined_tag("EVENT") is None
    assert set(COMBINED_TAGS) <= set(NER_TAGS)


@pytest.mark.parametrize(
    ("text", "label"),
    [("Positive", "Positive"), ("  negative.", "Negative"), ("it is neutral", "Neutral"), ("blah", None), ("", None)],
)
def test_sentiment_parser(text, label):
    assert parse_output(TaskRequest(task="sentiment"), text).label == label


def test_dialog_act_target_and_parser_agree():
    spec = TASKS["dialog-act"]
    target = spec.target({"dialog_acts": ["statement_open", "question_check"]})
    assert target == "question_check, statement_open"
    parsed = parse_output(TaskRequest(task="dialog-act"), target + ", made_up_act")
    assert parsed.acts == ("question_check", "statement_open")
    assert set(parsed.acts) <= set(DIALOG_ACTS)


@pytest.mark.parametrize("task", TASK_NAMES)
@pytest.mark.parametrize("text", ["", "   ", "[[x", "\n\n", "Positive [PERSON a]"])
def test_every_parser_tolerates_malformed_output(task, text):
    result = parse_output(_request(task), text)
    assert result.raw == (" ".join(text.split()) if task == "ner" else text)


def test_hybrid_prompt_carries_the_transcript_after_the_speech():
    from spokenlm.tasks import AUDIO_TOKEN, TRANSCRIPT_HINT, TaskRequest, build_prompt

    plain = build_prompt(TaskRequest(task="asr"))
    hybrid = build_prompt(TaskRequest(task="asr"), transcript="  the  cat sat ")
    assert plain == f"{AUDIO_TOKEN}\nTranscribe the speech."
    assert hybrid == f"{AUDIO_TOKEN}\n{TRANSCRIPT_HINT}the cat sat\nTranscribe the speech."
    qa = build_prompt(TaskRequest(task="qa", question="who?"), transcript="")
    assert qa == f"{AUDIO_TOKEN}\n{TRANSCRIPT_HINT}\nAnswer the question about the speech. Question: who?"
