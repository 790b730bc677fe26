"""Answers held to the prompt's transcript (spokenlm/grounding.py) and the bundle option that turns it on."""

import json

import pytest

from spokenlm.grounding import (
    SHORT_WORDS,
    answer_spans,
    best_span,
    ground,
    ground_answer,
    ground_entities,
    ground_summary,
    transcript_sentence,
)
from spokenlm.tasks import Answer, Entities, Sentiment, Summary, parse_entities


def test_an_entity_takes_the_transcript_span_most_like_it():
    transcript = "the third photograph identified by marina oswald depicts the entrance to general walker's driveway"
    tagged = parse_entities("the third photograph i've been to find by [PERSON marina oswalt] depicts the entrance "
                            "to [PERSON general walkers] drive away")  # fmt: skip
    grounded = ground_entities(tagged, transcript)
    assert grounded.text == transcript
    assert [(e.tag, e.text) for e in grounded.entities] == [("PERSON", "marina oswald"), ("PERSON", "general walker's")]
    for e in grounded.entities:
        assert transcript[e.start_char : e.end_char] == e.text


def test_an_entity_the_transcript_does_not_hold_is_dropped():
    # make demo's first clip, as the LLM tagged it before grounding
    tagged = parse_entities("[PERSON heather bernstein] was not an old man [PERSON a young man]")
    grounded = ground_entities(tagged, "he was not an ill disposed young man")
    assert grounded.text == "he was not an ill disposed young man"
    # the invented name goes; words that were said stay an entity as tagged (grounding judges words, not tags)
    assert [(e.tag, e.text) for e in grounded.entities] == [("PERSON", "young man")]
    assert ground_entities(tagged, "").entities == ()  # nothing heard: nothing to hold an entity to


def test_overlapping_entities_keep_the_most_similar_and_come_in_transcript_order():
    transcript = "tony moreno flew from maine to japan"
    tagged = parse_entities("[GPE japan] and [PERSON tony moreno] and [PERSON tony] from [GPE main]")
    grounded = ground_entities(tagged, transcript)
    # "tony" overlaps "tony moreno" (both exact): the earlier-tagged exact one wins the tie; "main" ~ "maine" 0.89
    assert [(e.tag, e.text, e.start_char) for e in grounded.entities] == [
        ("PERSON", "tony moreno", 0), ("GPE", "maine", 22), ("GPE", "japan", 31)]  # fmt: skip


def test_best_span_prefers_the_earliest_of_equals_and_reads_lengths_near_the_phrase():
    assert best_span("the", "the cat and the dog") == ((0, 3), 1.0)
    (span, ratio) = best_span("indian ocean", "animals in the indian ocean are endangered")
    assert span == (15, 27) and ratio == 1.0
    assert best_span("", "a b") is None and best_span("a", "  ") is None


def test_a_qa_answer_becomes_the_span_it_matches_or_stays_as_written():
    transcript = "derek wakes up at half past nine and takes the train to fleming foundation"
    assert ground_answer(Answer("flemming foundation", "where?"), transcript).text == "fleming foundation"
    assert ground_answer(Answer("half past nine", "when?"), transcript).text == "half past nine"
    unheard = Answer("hugh albert", "who?")
    assert ground_answer(unheard, transcript) is unheard


def test_answer_spans_are_every_short_run_of_words_once():
    assert answer_spans("a b a b", max_words=2) == ["a", "a b", "b", "b a"]
    assert answer_spans("x y z") == ["x", "x y", "x y z", "y", "y z", "z"]
    assert answer_spans("   ") == []


def test_a_one_sentence_recording_is_its_own_summary_and_a_passage_keeps_the_llm_s():
    heard = "he was not an ill disposed young man"
    # make demo's first clip: the LLM's summary invents a name
    assert ground_summary(Summary("Eric Johnson was not a young man."), heard).text == "He was not an ill disposed young man."
    passage = ("amanda wakes up at three in the afternoon she runs one hundred fifty one miles before breakfast and then "
               "takes the train to smith foods after work she studies bengali with a tutor")  # fmt: skip
    assert len(passage.split()) > SHORT_WORDS
    written = Summary("Amanda works at Smith Foods and is learning Bengali.")
    assert ground_summary(written, passage) is written
    assert ground_summary(written, "   ") is written  # nothing heard: nothing to say instead
    twenty = " ".join(["word"] * SHORT_WORDS)
    assert ground_summary(written, twenty).text == twenty[0].upper() + twenty[1:] + "."


def test_the_transcript_as_a_sentence_is_restored_when_a_truecaser_is_given():
    from spokenlm.translator import Truecaser

    assert transcript_sentence("i met tom in paris") == "I met tom in paris."
    assert transcript_sentence("i met tom in paris", Truecaser({"i": "I", "tom": "Tom", "paris": "Paris"})) == "I met Tom in Paris."
    assert transcript_sentence("") == ""


def test_ground_leaves_other_results_and_missing_transcripts_alone():
    sentiment = Sentiment(label="Positive")
    assert ground(sentiment, "it was great") is sentiment
    tagged = Entities(text="x", entities=())
    assert ground(tagged, None) is tagged


def test_a_grounded_bundle_holds_the_llm_s_entities_to_its_transcript(hybrid_bundle, example_clips, tmp_path, monkeypatch):
    """End to end on the tiny bundle: the LLM's text (stubbed: an invented name and a heard word) is
    parsed, grounded to the prompt's transcript and located in the audio; the option survives a save."""
    import shutil

    from spokenlm.audio import load_audio
    from spokenlm.decoding import GenerationOutput
    from spokenlm.lm import GenerationConfig
    from spokenlm.model import BundleError, load_bundle, save_bundle, set_bundle_grounded
    from spokenlm.tasks import TaskRequest

    bundle = tmp_path / "bundle"
    shutil.copytree(hybrid_bundle, bundle)
    set_bundle_grounded(bundle, True)
    assert json.loads((bundle / "spokenlm.json").read_text())["llm"]["grounded"] is True
    model = load_bundle(bundle)
    assert model.llm.grounded
    speech = model.encode_recordings([load_audio(example_clips[0])])
    heard = speech.prompt_texts[0] if speech.prompt_texts is not None else speech.transcripts[0]
    word = heard.split()[0]

    def generate(prompts, *args, **kwargs):
        return [GenerationOutput(text=f"[PERSON heather bernstein] said [ORG {word}]", token_ids=[], finished=True) for _ in prompts]

    monkeypatch.setattr(model.llm, "generate", generate)
    (out,) = model.run([load_audio(example_clips[0])], [TaskRequest(task="ner")], GenerationConfig(max_new_tokens=8))
    assert out.result.text == heard
    assert [(e.tag, e.text) for e in out.result.entities] == [("ORG", word)]
    assert out.result.entities[0].start_s is not None  # located in the audio through the CTC characters
    assert load_bundle(save_bundle(model, tmp_path / "saved")).llm.grounded
    from spokenlm.lm import LLMSpeedups, speed_up_llm

    assert speed_up_llm(model.llm, LLMSpeedups(dtype="bfloat16")).grounded  # sped up, it answers as before
    set_bundle_grounded(bundle, False)
    assert not load_bundle(bundle).llm.grounded
    plain = tmp_path / "plain"
    shutil.copytree(hybrid_bundle, plain)
    meta = json.loads((plain / "spokenlm.json").read_text())
    meta["llm"]["prompt_transcript"] = False
    (plain / "spokenlm.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"its LLM reads no transcript in the prompt; there is none to hold its answers to$"):
        set_bundle_grounded(plain, True)


def test_reply_log_probs_match_teacher_forcing_one_reply_at_a_time(tiny_bundle):
    """The shared-prefix scorer against a plain forward of prompt + reply, per reply (parity)."""
    import torch

    from spokenlm.lm import IGNORE_INDEX
    from spokenlm.model import load_bundle

    llm = load_bundle(tiny_bundle).llm
    torch.manual_seed(0)
    speech, lengths = torch.randn(1, 5, llm.model_dim), torch.tensor([4])
    prompt = "<audio>\nAnswer the question about the speech. Question: who?"
    replies = ["", "the", "a cat sat on the mat", "sat", "the birch canoe slid"]
    fast = llm.reply_log_probs(prompt, speech, lengths, replies, batch_size=2)
    for reply, score in zip(replies, fast):
        batch = llm._assemble([prompt], speech, lengths, [reply], padding_side="right")
        with torch.no_grad():
            logits = llm.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).logits[0, :-1]
        labels = batch.labels[0, 1:]
        scored = labels != IGNORE_INDEX
        expected = logits[scored].float().log_softmax(-1).gather(-1, labels[scored, None]).sum()
        assert score == pytest.approx(expected.item(), abs=1e-3), reply
    assert llm.reply_log_probs(prompt, speech, lengths, []) == []


def test_a_grounded_qa_answer_heard_nowhere_becomes_the_likeliest_span(hybrid_bundle, example_clips, tmp_path, monkeypatch):
    import shutil

    from spokenlm.audio import load_audio
    from spokenlm.decoding import GenerationOutput
    from spokenlm.lm import GenerationConfig
    from spokenlm.model import load_bundle, request_prompts, set_bundle_grounded
    from spokenlm.tasks import TaskRequest

    bundle = tmp_path / "bundle"
    shutil.copytree(hybrid_bundle, bundle)
    set_bundle_grounded(bundle, True)
    model = load_bundle(bundle)
    wave = load_audio(example_clips[0])
    speech = model.encode_recordings([wave])
    heard = speech.prompt_texts[0] if speech.prompt_texts is not None else speech.transcripts[0]
    assert heard.split(), "the tiny bundle's CTC head writes something for the example clip"
    request = TaskRequest(task="qa", question="who is the speaker talking about?")
    answers = iter(["hugh albert", heard.split()[-1]])

    def generate(prompts, *args, **kwargs):
        return [GenerationOutput(text=next(answers), token_ids=[], finished=True) for _ in prompts]

    monkeypatch.setattr(model.llm, "generate", generate)
    (out,) = model.run([wave], [request], GenerationConfig(max_new_tokens=8))
    spans = answer_spans(heard)
    prompt = request_prompts(model.llm, [request], speech.char_times, [0], prompt_texts=speech.prompt_texts)[0]
    scores = model.llm.reply_log_probs(prompt, speech.projected[:1], speech.lengths[:1], spans)
    assert out.result.text == spans[scores.index(max(scores))]  # the LLM's likeliest span, not the invented name
    (kept,) = model.run([wave], [request], GenerationConfig(max_new_tokens=8))
    assert kept.result.text == heard.split()[-1]  # an answer that was heard stays


def test_the_bundle_command_turns_grounding_on_and_off(hybrid_bundle, tmp_path, capsys):
    import shutil

    from spokenlm.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(hybrid_bundle, bundle)
    assert main(["bundle", "set", str(bundle), "--grounded", "on"]) == 0
    assert json.loads(capsys.readouterr().out)["grounded"] is True
    assert main(["bundle", "set", str(bundle), "--grounded", "off"]) == 0
    assert json.loads(capsys.readouterr().out)["grounded"] is False
