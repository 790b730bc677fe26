"""The demo in headless Chromium: upload a clip, press Run, find the transcript on the page.

Drives Debian's /usr/bin/chromium (apt-get install chromium) with playwright's Python client
(pip install playwright); no browser build is ever downloaded. Skips, saying which is missing,
when either is absent. SPOKENLM_CHROMIUM overrides the executable's path. The API mode runs against
the real Serve app (tests/ui/conftest.py).
"""

import os
import shutil
import tempfile

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SPOKENLM_CHROMIUM", "/usr/bin/chromium")
# --headless and --user-data-dir come from launch_persistent_context(headless=True, user_data_dir=...)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  # a fake microphone (a beep) that needs no permission prompt, for the recording test
                  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # fmt: skip
TIMEOUT_MS = 60_000  # the first run on a busy 2-core machine loads torch kernels: allow a minute


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright); browser test skipped"
    )
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SPOKENLM_CHROMIUM)")
    profile = tempfile.mkdtemp(prefix="spokenlm-chromium-")  # a fresh --user-data-dir per run
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, permissions=["microphone"]
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def upload_and_run(page, url: str, clip) -> None:
    page.goto(url)
    page.locator("#audio input[type=file]").set_input_files(str(clip))
    page.locator("#audio audio, #audio .waveform-container, #audio [data-testid='waveform-Speech']").first.wait_for()
    page.locator("#run").click()


def test_upload_run_and_see_the_transcript(page, local_app_url, tiny_bundle, example_clips):
    from playwright.sync_api import expect

    from spokenlm.audio import load_audio
    from spokenlm.lm import GenerationConfig
    from spokenlm.model import load_bundle
    from spokenlm.tasks import TaskRequest

    clip = example_clips[0]
    # the page's defaults: asr, greedy, 64 new tokens
    expected = load_bundle(tiny_bundle).run(
        [load_audio(clip)], [TaskRequest(task="asr")], GenerationConfig(max_new_tokens=64)
    )[0]
    upload_and_run(page, local_app_url, clip)
    expect(page.locator("#status")).to_contain_text("Done: asr", timeout=TIMEOUT_MS)
    expect(page.locator("#transcript textarea")).to_have_value(expected.result.text)
    expect(page.locator("#ctc textarea")).to_have_value(expected.transcript)
    expect(page.locator("#segments-plot img")).to_be_visible()  # the matplotlib figure
    expect(page.locator("#timing")).to_contain_text("compress")


@pytest.mark.slow
def test_api_mode_transcript_and_bad_audio_message(page, serve_api_url, serve_generation, launch, tiny_bundle,
                                                   example_clips, bad_audio_file):  # fmt: skip
    from playwright.sync_api import expect

    from spokenlm.audio import load_audio
    from spokenlm.model import load_bundle
    from spokenlm.tasks import TaskRequest
    from ui.app import build_app

    clip = example_clips[0]  # the Serve app refuses the other, longer than its max_duration_s
    expected = load_bundle(tiny_bundle).run(
        [load_audio(clip)], [TaskRequest(task="asr")], serve_generation
    )[0]
    url = launch(build_app(api_url=serve_api_url))
    upload_and_run(page, url, clip)
    expect(page.locator("#transcript textarea")).to_have_value(expected.result.text, timeout=TIMEOUT_MS)
    expect(page.locator("#ctc textarea")).to_have_value(expected.transcript)
    expect(page.locator("#timing")).to_contain_text("server/llm")

    page.goto(url)
    page.locator("#audio input[type=file]").set_input_files(str(bad_audio_file))
    page.locator("#run").click()
    expect(page.locator("#status")).to_contain_text("Error: not a recognised audio format: file 'notes.wav'")
    expect(page.locator("body")).not_to_contain_text("Traceback")


def test_record_from_the_microphone_and_run(page, local_app_url):
    from playwright.sync_api import expect

    page.goto(local_app_url)
    page.locator("#audio button[aria-label='Record audio']").click()
    page.locator("#audio button", has_text="Record").first.click()
    page.wait_for_timeout(1500)  # 1.5 s of Chromium's fake microphone
    page.locator("#audio button", has_text="Stop").first.click()
    page.locator("#audio audio[src]").first.wait_for(state="attached")  # the recording, ready to play
    page.locator("#run").click()
    expect(page.locator("#status")).to_contain_text("Done: asr", timeout=TIMEOUT_MS)
    expect(page.locator("#record")).to_contain_text("audio.wav")  # Gradio sends the recording as WAV


def test_pick_an_example_clip_and_run(page, local_app_url):
    from playwright.sync_api import expect

    page.goto(local_app_url)
    page.get_by_text("sense_and_sensibility_01_austen_64kb-0930.wav").click()
    page.locator("#audio audio[src]").first.wait_for(state="attached")
    page.locator("#run").click()
    expect(page.locator("#status")).to_contain_text("Done: asr", timeout=TIMEOUT_MS)
    expect(page.locator("#record")).to_contain_text("sense_and_sensibility_01_austen_64kb-0930.wav")
