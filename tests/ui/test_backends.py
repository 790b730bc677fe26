"""ui/backends.py: the in-process backend on the tiny bundle, the API client against a fake Serve API."""

import numpy as np
import pytest

from spokenlm.audio import AudioError, load_audio
from spokenlm.lm import GenerationConfig
from spokenlm.tasks import TaskRequest
from ui.backends import RECORD_KEYS, ApiBackend, ApiError, LocalBackend

GREEDY = GenerationConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def local(tiny_bundle) -> LocalBackend:
    return LocalBackend(tiny_bundle)


def test_local_backend_matches_speechlm_run_and_keeps_token_spans(local, example_clips):
    from spokenlm.cli import output_record

    clip = example_clips[0]
    result = local.run(str(clip), TaskRequest(task="ner"), GREEDY)
    reference = local.model.run([load_audio(clip)], [TaskRequest(task="ner")], GREEDY)[0]
    expected = output_record(clip.name, reference)
    assert {k: result.record[k] for k in RECORD_KEYS if k != "timing_ms"} == {
        k: expected[k] for k in RECORD_KEYS if k != "timing_ms"
    }
    assert set(result.record["timing_ms"]) == {"load_audio", "encode_compress", "adapter", "llm"}
    assert result.ctc_text == reference.transcript
    # one span per compressed token, in order, inside the recording
    duration = result.wave.shape[-1] / 16_000
    assert len(result.spans_s) == round(result.record["tokens_per_second"] * duration)
    assert all(0 <= s < e <= duration + 1e-6 for s, e in result.spans_s)
    assert [s for s, _ in result.spans_s] == sorted(s for s, _ in result.spans_s)
    assert result.notes and "untrained" in result.notes[0]


def test_local_backend_names_bad_audio_and_bad_requests(local, bad_audio_file, example_clips):
    with pytest.raises(AudioError):
        local.run(str(bad_audio_file), TaskRequest(task="asr"), GREEDY)
    with pytest.raises(ValueError, match="task 'qa' needs a non-empty question"):
        local.run(str(example_clips[0]), TaskRequest(task="qa", question=" "), GREEDY)


@pytest.mark.parametrize(
    "request_, field, expected",
    [
        (TaskRequest(task="asr"), "text", "he was not an ill disposed young man"),  # the fake API's text
        (TaskRequest(task="translate", target_lang="fr"), "translation", "[fr] no era un joven malintencionado"),
        (TaskRequest(task="sentiment"), "sentiment", "Neutral"),
        (TaskRequest(task="dialog-act"), "dialog_acts", ["statement_general"]),
        (TaskRequest(task="summarize"), "summary", "a man is described"),
        (TaskRequest(task="qa", question="who?"), "answer", "you asked: who?"),
    ],
    ids=["asr", "translate", "sentiment", "dialog-act", "summarize", "qa"],
)
def test_api_backend_routes_each_task(fake_api_url, example_clips, request_, field, expected):
    result = ApiBackend(fake_api_url).run(str(example_clips[0]), request_)
    assert result.record["task"] == request_.task
    assert result.record[field] == expected
    assert set(result.record) == set(RECORD_KEYS)
    timing = result.record["timing_ms"]
    assert next(iter(timing)) == "load_audio" and list(timing)[-1] == "round_trip"
    if request_.task not in ("translate",):  # the fake API sends its stage timing except for translate
        assert timing["server/llm"] == 40.0
    assert isinstance(result.wave, np.ndarray) and result.wave.ndim == 1


def test_api_backend_reads_entities_and_spans(fake_api_url, example_clips):
    clip = str(example_clips[0])
    ner = ApiBackend(fake_api_url).run(clip, TaskRequest(task="ner"))
    assert ner.record["entities"][0]["tag"] == "PERSON"
    assert ner.record["text"][27:36] == "young man"
    asr = ApiBackend(fake_api_url).run(clip, TaskRequest(task="asr"))
    assert asr.spans_s == [(0.0, 1.5), (1.5, 2.9)]  # verbose_json segments when no token spans
    qa = ApiBackend(fake_api_url).run(clip, TaskRequest(task="qa", question="q"))
    assert qa.spans_s == [(0.0, 1.0), (1.0, 2.0)]


def test_api_backend_shows_the_servers_error_message(fake_api_url, tmp_path):
    # audio that decodes here (FLAC) but that the fake server refuses: the server's message comes through
    import soundfile

    flac = tmp_path / "tone.flac"
    soundfile.write(flac, np.zeros(8000, dtype=np.float32), 16_000)
    with pytest.raises(
        ApiError, match=r"answered 400 to /v1/audio/transcriptions: could not decode audio: not a WAV file"
    ):
        ApiBackend(fake_api_url).run(str(flac), TaskRequest(task="asr"))


def test_api_backend_unreachable_and_bad_url(example_clips, unused_port):
    url = f"http://127.0.0.1:{unused_port()}"  # nothing listens there
    with pytest.raises(ApiError, match=f"cannot reach the Serve API at {url}"):
        ApiBackend(url, timeout_s=5).run(str(example_clips[0]), TaskRequest(task="asr"))
    with pytest.raises(ValueError, match="--api expects an http:// or https:// URL, got 'localhost:8000'"):
        ApiBackend("localhost:8000")
