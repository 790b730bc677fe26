import json
import re

import pytest

from spokenlm.cli import main
from spokenlm.output import RECORD_KEYS


def test_run_json_prints_one_record_per_good_file_and_names_each_bad_one(tiny_bundle, example_clips, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio at all")
    missing = tmp_path / "missing.flac"
    files = [str(example_clips[0]), str(empty), str(text), str(missing), str(example_clips[1])]

    status = main(["run", "--model", str(tiny_bundle), "--task", "ner", "--json", "--max-new-tokens", "6", *files])

    out, err = capsys.readouterr()
    assert status == 2
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == [files[0], files[4]]
    for record in records:
        assert tuple(record) == RECORD_KEYS
        assert record["task"] == "ner"
        assert list(record["timing_ms"]) == ["load_audio", "encoder", "compress", "adapter", "llm"]
        assert isinstance(record["entities"], list)
        assert record["sentiment"] is None and record["translation"] is None and record["summary"] is None
        assert record["tokens_per_second"] > 0
    assert err.splitlines() == [
        f"spokenlm: {empty}: empty audio file: '{empty}' is 0 bytes",
        f"spokenlm: {text}: not a recognised audio format: file '{text}' starting with b'this is '; "
        "expected WAV, FLAC, OGG, MP3, M4A or WebM",
        f"spokenlm: {missing}: audio file not found: '{missing}'",
    ]


@pytest.mark.parametrize(
    ("task_args", "field"),
    [
        (["--task", "asr"], "text"),
        (["--task", "translate", "--target-lang", "fr"], "translation"),
        (["--task", "sentiment"], "sentiment"),
        (["--task", "dialog-act"], "dialog_acts"),
        (["--task", "qa", "--question", "who?"], "answer"),
        (["--task", "summarize"], "summary"),
    ],
)
def test_run_fills_the_field_of_each_task(tiny_bundle, example_clips, capsys, task_args, field):
    status = main(["run", "--model", str(tiny_bundle), *task_args, "--json", "--max-new-tokens", "4", str(example_clips[0])])
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert status == 0
    if field != "sentiment":  # an untrained model may name no sentiment (null)
        assert record[field] is not None
    assert all(record[k] is None for k in ("entities", "answer") if k != field)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "qa"], "spokenlm: error: task 'qa' needs a non-empty question"),
        (["--task", "asr", "--max-new-tokens", "-1"], "spokenlm: error: max_new_tokens"),
    ],
)
def test_bad_parameters_give_one_line_and_exit_2(tiny_bundle, example_clips, capsys, args, message):
    status = main(["run", "--model", str(tiny_bundle), *args, str(example_clips[0])])
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith(message)


def test_a_missing_bundle_is_one_line(tmp_path, example_clips, capsys):
    status = main(["run", "--model", str(tmp_path), "--task", "asr", str(example_clips[0])])
    assert status == 2
    assert capsys.readouterr().err == (
        f"spokenlm: error: {tmp_path} is not a spokenlm bundle: spokenlm.json is missing\n"
    )


def test_demo_runs_every_task_and_says_it_is_untrained(tiny_bundle, capsys):
    status = main(["demo", "--model", str(tiny_bundle), "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert status == 0
    assert "UNTRAINED" in out
    for task in ("asr", "translate", "ner", "sentiment", "dialog-act", "qa", "summarize"):
        assert re.search(rf"^  {re.escape(task)}\s", out, flags=re.M), task


def test_run_refuses_a_fifo_at_once_and_runs_the_files_after_it(tiny_bundle, example_clips, tmp_path, capsys):
    import os
    import threading

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # opening it would block until a writer came: forever
    files = [str(fifo), str(example_clips[0])]
    result: list[int] = []
    args = ["run", "--model", str(tiny_bundle), "--task", "asr", "--json", "--max-new-tokens", "4", *files]
    thread = threading.Thread(target=lambda: result.append(main(args)), daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert result == [2], "spokenlm run hung on a FIFO"
    out, err = capsys.readouterr()
    assert err == f"spokenlm: {fifo}: not a regular file: '{fifo}' is a FIFO (named pipe)\n"
    assert [json.loads(line)["path"] for line in out.splitlines()] == [files[1]]
