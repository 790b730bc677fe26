"""ui/backends.py in process: the LocalBackend's answer is SpeechLM.run's, with its token spans.
The API client (ApiBackend) is tested against the real Serve app in test_api.py."""

import numpy as np
import pytest

from spokenlm.audio import AudioError, load_audio
from spokenlm.lm import GenerationConfig
from spokenlm.output import RECORD_KEYS
from spokenlm.tasks import TaskRequest
from ui.backends import ApiBackend, ApiError, LocalBackend

GREEDY = GenerationConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def local(tiny_bundle) -> LocalBackend:
    return LocalBackend(tiny_bundle)


def test_local_backend_matches_speechlm_run_and_keeps_token_spans(local, example_clips):
    clip = example_clips[0]
    result = local.run(str(clip), TaskRequest(task="ner"), GREEDY)
    reference = local.model.run([load_audio(clip)], [TaskRequest(task="ner")], GREEDY)[0]
    expected = reference.with_audio(path=clip.name).to_record()
    assert tuple(result.record) == RECORD_KEYS
    assert {k: v for k, v in result.record.items() if k != "timing_ms"} == {
        k: v for k, v in expected.items() if k != "timing_ms"
    }
    assert list(result.timing_ms) == ["load_audio", "encoder", "compress", "adapter", "llm"]
    assert result.output.transcript == reference.transcript
    # one span per compressed token, in order, inside the recording
    spans = result.output.spans_s
    duration = result.wave.shape[-1] / 16_000
    assert len(spans) == round(result.record["tokens_per_second"] * duration)
    assert all(0 <= s < e <= duration + 1e-6 for s, e in spans)
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)
    assert result.notes and "untrained" in result.notes[0]
    assert isinstance(result.wave, np.ndarray) and result.wave.ndim == 1


def test_local_backend_names_bad_audio_and_bad_requests(local, bad_audio_file, example_clips):
    with pytest.raises(AudioError):
        local.run(str(bad_audio_file), TaskRequest(task="asr"), GREEDY)
    with pytest.raises(ValueError, match="task 'qa' needs a non-empty question"):
        local.run(str(example_clips[0]), TaskRequest(task="qa", question=" "), GREEDY)


def test_api_backend_unreachable_and_bad_url(example_clips, unused_port):
    url = f"http://127.0.0.1:{unused_port()}"  # nothing listens there
    with pytest.raises(ApiError, match=f"cannot reach the Serve API at {url}"):
        ApiBackend(url, timeout_s=5).run(str(example_clips[0]), TaskRequest(task="asr"))
    with pytest.raises(ValueError, match="--api expects an http:// or https:// URL, got 'localhost:8000'"):
        ApiBackend("localhost:8000")
