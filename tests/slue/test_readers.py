"""SLUE readers on directories written by hand the way the official downloads unpack.

TSVs are written as plain text (tab-separated, header first) exactly as released, and audio with
soundfile in the released formats (VoxPopuli .ogg, VoxCeleb and TED .flac, HVB and SQA-5 .wav).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spokenlm.slue.readers import (
    DEFAULT_SPLIT,
    NerSpan,
    SlueDataError,
    load_clip,
    read_hvb,
    read_nel,
    read_slue,
    read_sqa5,
    read_ted,
    read_voxceleb,
    read_voxpopuli,
    read_word2time,
)

SR = 16_000


def _tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _audio(path: Path, seconds: float = 0.5, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR, **kwargs)


# --- SLUE-VoxPopuli ------------------------------------------------------------------------------

VP_HEADER = ["id", "raw_text", "normalized_text", "speaker_id", "split", "raw_ner", "normalized_ner"]
VP_ROWS = [
    [
        "20150518-0900-PLENARY-15-en_20150518-18:48:27_2",
        "We all agreed in Strasbourg on Monday.",
        "we all agreed in strasbourg on monday",
        "1185",
        "dev",
        "[['GPE', 17, 10], ['DATE', 31, 6]]",
        "[['GPE', 17, 10], ['DATE', 31, 6]]",
    ],
    ["20180530-0900-PLENARY-26-en_20180530-20:01:52_0", "Madam President.", "madam president", "NA", "dev", "None", "None"],
    ["20180530-0900-PLENARY-26-en_20180530-20:01:52_1", "The EU and the EU.", "the eu and the eu", "96", "dev",
     "[['ORG', 4, 2], ['ORG', 15, 2]]", "[['ORG', 4, 2], ['ORG', 15, 2]]"],
]  # fmt: skip


@pytest.fixture
def slue_root(tmp_path) -> Path:
    vp = tmp_path / "slue-voxpopuli"
    _tsv(vp / "slue-voxpopuli_dev.tsv", VP_HEADER, VP_ROWS)
    for row in VP_ROWS[:2]:  # the third recording is missing
        _audio(vp / "dev" / f"{row[0]}.ogg", format="OGG", subtype="VORBIS")
    return tmp_path


def test_voxpopuli_reads_records_with_dev_as_default_split(slue_root):
    assert DEFAULT_SPLIT == "dev"
    data = read_voxpopuli(slue_root)
    assert (data.corpus, data.split, data.blind, len(data)) == ("slue-voxpopuli", "dev", False, 3)
    first, second, third = data.records
    assert first.normalized_text == "we all agreed in strasbourg on monday"
    assert first.normalized_ner == (NerSpan("GPE", 17, 10), NerSpan("DATE", 31, 6))
    assert first.entities() == [("GPE", "strasbourg"), ("DATE", "monday")]
    assert first.audio_path == slue_root / "slue-voxpopuli" / "dev" / f"{first.id}.ogg"
    assert second.normalized_ner == () and second.entities() == []  # "None": no entity
    assert second.speaker_id == "NA"  # keep_default_na=False: "NA" stays a string
    assert third.entities() == [("ORG", "eu"), ("ORG", "eu")]
    # the corpus directory itself works as well
    assert len(read_voxpopuli(slue_root / "slue-voxpopuli", "dev")) == 3


def test_voxpopuli_missing_audio_is_listed_not_fatal(slue_root):
    data = read_voxpopuli(slue_root)
    missing_id = VP_ROWS[2][0]
    assert [m.id for m in data.missing_audio] == [missing_id]
    assert data.missing_audio[0].path == slue_root / "slue-voxpopuli" / "dev" / f"{missing_id}.ogg"
    assert [r.id for r in data.records_with_audio()] == [VP_ROWS[0][0], VP_ROWS[1][0]]
    with pytest.raises(SlueDataError, match=r"1 of 3 audio files of slue-voxpopuli dev are missing: '.*_1\.ogg'"):
        data.check_audio()


def test_voxpopuli_blind_test_split(slue_root):
    _tsv(slue_root / "slue-voxpopuli" / "slue-voxpopuli_test_blind.tsv", ["id", "speaker_id", "split"],
         [["20180530-x_0", "12", "test"]])  # fmt: skip
    data = read_voxpopuli(slue_root, "test")
    assert data.blind and data.records[0].normalized_ner is None and data.records[0].entities() is None
    assert data.records[0].audio_path.parent.name == "test"


def test_wrong_directory_errors_name_what_was_expected(tmp_path):
    with pytest.raises(SlueDataError, match=r"SLUE data directory '.*nope' does not exist"):
        read_voxpopuli(tmp_path / "nope")
    (tmp_path / "slue-voxceleb").mkdir()
    expected = tmp_path / "slue-voxpopuli" / "slue-voxpopuli_dev.tsv"
    with pytest.raises(SlueDataError, match=f"no slue-voxpopuli dev split under .*expected '{expected}'"):
        read_voxpopuli(tmp_path)


def test_missing_columns_are_named(tmp_path):
    _tsv(tmp_path / "slue-voxpopuli" / "slue-voxpopuli_dev.tsv", VP_HEADER[:-2], [r[:-2] for r in VP_ROWS])
    with pytest.raises(SlueDataError, match=r"is missing columns: raw_ner, normalized_ner \(it has: id, "):
        read_voxpopuli(tmp_path)


def test_malformed_ner_labels_are_rejected_without_eval(tmp_path):
    bad = [VP_ROWS[0][:5] + ["None", "__import__('os').getcwd()"]]
    _tsv(tmp_path / "slue-voxpopuli" / "slue-voxpopuli_dev.tsv", VP_HEADER, bad)
    with pytest.raises(SlueDataError, match="line 2: normalized_ner .* is not a Python literal"):
        read_voxpopuli(tmp_path)
    bad = [VP_ROWS[0][:5] + ["None", "[['GPE', 17, 100]]"]]
    _tsv(tmp_path / "slue-voxpopuli" / "slue-voxpopuli_dev.tsv", VP_HEADER, bad)
    with pytest.raises(SlueDataError, match=r"span \['GPE', 17, 100\] lies outside the 37-character text"):
        read_voxpopuli(tmp_path)
    bad = [VP_ROWS[0][:5] + ["None", "[['CITY', 17, 10]]"]]
    _tsv(tmp_path / "slue-voxpopuli" / "slue-voxpopuli_dev.tsv", VP_HEADER, bad)
    with pytest.raises(SlueDataError, match="unknown entity tag 'CITY'"):
        read_voxpopuli(tmp_path)


def test_unknown_split_and_suite(slue_root):
    with pytest.raises(SlueDataError, match="unknown split 'train'; expected one of fine-tune, dev, test"):
        read_voxpopuli(slue_root, "train")
    with pytest.raises(SlueDataError, match="unknown SLUE suite 'librispeech'"):
        read_slue("librispeech", slue_root)
    assert len(read_slue("voxpopuli", slue_root)) == 3


# --- SLUE-VoxCeleb -------------------------------------------------------------------------------

VC_HEADER = ["id", "normalized_text", "speaker_id", "split", "sentiment", "start_second", "end_second"]


def test_voxceleb_cuts_skips_unscored_sentiments_and_loads_the_clip(tmp_path):
    vc = tmp_path / "slue-voxceleb"
    _tsv(vc / "slue-voxceleb_dev.tsv", VC_HEADER, [
        ["id10059_229vKIGbxrI_00001", "and i love it", "id10059", "dev", "Positive", "0.5", "1.5"],
        ["id10059_229vKIGbxrI_00002", "nan", "id10059", "dev", "Neutral", "0", "1.25"],
        ["id10060_x_00001", "well it was", "id10060", "dev", "<mixed>", "0", "1"],
    ])  # fmt: skip
    _audio(vc / "dev_raw" / "id10059_229vKIGbxrI_00001.flac", seconds=2.0)
    data = read_voxceleb(tmp_path)
    assert [r.id for r in data] == ["id10059_229vKIGbxrI_00001", "id10059_229vKIGbxrI_00002"]
    assert data.skipped == ("id10060_x_00001: sentiment '<mixed>' is not one of Negative, Neutral, Positive",)
    first, second = data.records
    assert (first.start_s, first.end_s, first.sentiment) == (0.5, 1.5, "Positive")
    assert first.audio_path == vc / "dev_raw" / "id10059_229vKIGbxrI_00001.flac"
    assert second.normalized_text == "nan"  # a word, not a missing value
    assert [m.id for m in data.missing_audio] == ["id10059_229vKIGbxrI_00002"]
    clip = load_clip(first.audio_path, first.start_s, first.end_s)
    assert clip.shape == (SR,)  # [0.5, 1.5] s of a 2 s recording at 16 kHz
    assert load_clip(first.audio_path).shape == (2 * SR,)


def test_voxceleb_blind_test_without_cuts(tmp_path):
    _tsv(tmp_path / "slue-voxceleb" / "slue-voxceleb_test_blind.tsv", ["id", "speaker_id", "split"],
         [["id1_a_00001", "id1", "test"]])  # fmt: skip
    data = read_voxceleb(tmp_path, "test")
    record = data.records[0]
    assert data.blind and record.sentiment is None and record.start_s is None
    assert record.audio_path.parent.name == "test_raw"


def test_voxceleb_bad_cut_is_rejected(tmp_path):
    _tsv(tmp_path / "slue-voxceleb" / "slue-voxceleb_dev.tsv", VC_HEADER,
         [["a", "x", "s", "dev", "Neutral", "2.0", "1.0"]])  # fmt: skip
    with pytest.raises(SlueDataError, match=r"line 2: cut \[2.0, 1.0\] s is empty or negative"):
        read_voxceleb(tmp_path)


# --- SLUE-HVB ------------------------------------------------------------------------------------

HVB_HEADER = ["issue_id", "speaker_id", "text", "utt_index", "channel", "role", "start_ms", "duration_ms",
              "intent", "dialog_acts", "split"]  # fmt: skip


def test_hvb_multi_label_dialog_acts_and_audio_names(tmp_path):
    hvb = tmp_path / "slue-hvb"
    _tsv(hvb / "slue-hvb_dev.tsv", HVB_HEADER, [
        ["0a1b", "7", "i lost my card", "3", "1", "caller", "1520", "2480", "replace_card",
         "['statement_problem', 'question_general']", "dev"],
        ["0a1b", "8", "okay", "4", "2", "agent", "4000", "500", "replace_card", "['acknowledge']", "dev"],
    ])  # fmt: skip
    _audio(hvb / "dev" / "0a1b_1520_4000.wav")
    data = read_hvb(tmp_path)
    first, second = data.records
    assert first.id == "0a1b_1520_4000" and first.audio_path == hvb / "dev" / "0a1b_1520_4000.wav"
    assert first.dialog_acts == ("question_general", "statement_problem")  # DIALOG_ACTS order
    assert (first.role, first.text) == ("caller", "i lost my card")
    assert [m.id for m in data.missing_audio] == ["0a1b_4000_4500"]


def test_hvb_unknown_dialog_act(tmp_path):
    _tsv(tmp_path / "slue-hvb" / "slue-hvb_dev.tsv", HVB_HEADER,
         [["i", "1", "hi", "0", "1", "caller", "0", "100", "x", "['greeting']", "dev"]])  # fmt: skip
    with pytest.raises(SlueDataError, match="line 2: unknown dialog acts 'greeting'"):
        read_hvb(tmp_path)


# --- SLUE-TED ------------------------------------------------------------------------------------

TED_HEADER = ["id", "transcript", "speaker", "split", "title", "abstract"]


def test_ted_dev_and_the_train_spelling_of_fine_tune(tmp_path):
    _tsv(tmp_path / "slue-ted_dev" / "slue-ted_dev.tsv", TED_HEADER,
         [["1234", "so today i want to", "Jane Doe", "dev", "A talk", "Why talks matter."]])  # fmt: skip
    _audio(tmp_path / "slue-ted_dev" / "dev" / "1234.flac")
    dev = read_ted(tmp_path)
    assert dev.records[0].abstract == "Why talks matter." and dev.records[0].title == "A talk"
    assert dev.missing_audio == ()
    _tsv(tmp_path / "slue-ted_train" / "slue-ted_train.tsv", TED_HEADER,
         [["99", "hello", "X", "train", "T", "A."]])  # fmt: skip
    fine_tune = read_ted(tmp_path, "fine-tune")
    assert fine_tune.records[0].audio_path == tmp_path / "slue-ted_train" / "fine-tune" / "99.flac"
    with pytest.raises(SlueDataError, match="no slue-ted test split under"):
        read_ted(tmp_path, "test")


# --- SLUE-SQA-5 ----------------------------------------------------------------------------------

SQA_HEADER = ["question_id", "raw_question_text", "normalized_question_text", "question_speaker_id",
              "document_id", "raw_document_text", "normalized_document_text", "document_speaker_id",
              "normalized_answer", "answer_spans"]  # fmt: skip


def test_sqa5_records_answer_spans_and_word2time(tmp_path):
    sqa = tmp_path / "slue-sqa5"
    _tsv(sqa / "slue-sqa5_dev.tsv", SQA_HEADER, [
        ["q1", "\"Who wrote it?", "\"who wrote it", "s1", "d1", "Orwell wrote it.", "orwell wrote it",
         "s9", "orwell", "[['orwell', 0.4, 0.9]]"],
        ["q2", "When?", "when", "s2", "d1", "Orwell wrote it.", "orwell wrote it", "s9", "orwell",
         "[['orwell', 0.4, 0.9], ['orwell', 3.0, 3.5]]"],
    ])  # fmt: skip — the stray '"' opening q1's text is taken literally, not as quoting
    _audio(sqa / "dev" / "question" / "q1.wav")
    _audio(sqa / "dev" / "document" / "d1.wav")
    (sqa / "dev" / "word2time").mkdir(parents=True)
    (sqa / "dev" / "word2time" / "d1.txt").write_text("0\torwell\t0.4\t0.9\n\n1\twrote\t0.9\t1.2\n")
    data = read_sqa5(tmp_path)
    q1, q2 = data.records
    assert q1.question_text == '"who wrote it' and q1.document_text == "orwell wrote it"
    assert [(a.answer, a.start_s, a.end_s) for a in q2.answer_spans] == [("orwell", 0.4, 0.9), ("orwell", 3.0, 3.5)]
    assert [(m.id, m.path.name) for m in data.missing_audio] == [("q2", "q2.wav")]  # d1 is there
    words = read_word2time(q1.word2time_path)
    assert [(w.word, w.start_s, w.end_s) for w in words] == [("orwell", 0.4, 0.9), ("wrote", 0.9, 1.2)]


# --- VoxPopuli NEL -------------------------------------------------------------------------------


def test_nel_reads_slue_toolkit_alignment_files(slue_root):
    nel = slue_root / "slue-voxpopuli" / "nel"
    nel.mkdir()
    utt = VP_ROWS[0][0]
    words = {utt: [["", 0.0, 0.3], ["we", 0.3, 0.5], ["#strasbourg", 0.5, 1.1], ["#", 1.1, 1.2]],
             VP_ROWS[1][0]: [["madam", 0.0, 0.4]]}  # fmt: skip
    (nel / "dev_tagged_word_alignments.json").write_text(json.dumps(words))
    (nel / "dev_entity_alignments.csv").write_text(
        f"id,entity_phrase,start,end,entity_label\n{utt},strasbourg,0.5,1.1,GPE\n"
    )
    data = read_nel(slue_root)
    first, second = data.records
    assert [(w.word, w.in_entity) for w in first.words] == [("", False), ("we", False), ("strasbourg", True), ("", True)]
    assert [(e.phrase, e.start_s, e.end_s, e.label) for e in first.entities] == [("strasbourg", 0.5, 1.1, "GPE")]
    assert second.entities == () and not data.blind
    assert first.audio_path == slue_root / "slue-voxpopuli" / "dev" / f"{utt}.ogg"
    assert data.missing_audio == ()
    # the blind test has word alignments only
    (nel / "test_tagged_word_alignments.json").write_text(json.dumps({"t1": [["hi", 0.0, 0.2]]}))
    test = read_nel(slue_root, "test")
    assert test.blind and test.records[0].entities is None
    assert [m.id for m in test.missing_audio] == ["t1"]
    with pytest.raises(SlueDataError, match="VoxPopuli NEL has no fine-tune split; expected one of dev, test"):
        read_nel(slue_root, "fine-tune")


def test_nel_missing_files_name_the_expected_path(slue_root):
    with pytest.raises(SlueDataError, match="no VoxPopuli NEL dev split under .*dev_tagged_word_alignments.json"):
        read_nel(slue_root)
