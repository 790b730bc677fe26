"""The spokenlm Gradio demo: record or upload speech, pick a task, see every output of the model.

    python -m ui.app [--model DIR | --api URL] [--host 127.0.0.1] [--port 7860]

Without --api the library runs in this process (the default bundle, else an untrained one built on
first use, as `spokenlm demo` does); with --api it calls a running Serve API (ui/backends.py gives
the routes). The page shows the transcript, entities highlighted in the text, sentiment, dialog acts,
translation, answer or summary, the waveform with the compressor's token spans, and per-stage timing.
Bad input (undecodable audio, a qa task without a question, an unreachable API) is reported in the
status line, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import gradio as gr

from spokenlm.audio import AudioError
from spokenlm.tasks import TARGET_LANGUAGES, TASK_NAMES, TaskRequest
from ui.backends import ApiBackend, ApiError, Backend, LocalBackend, UIResult
from ui.render import highlighted_entities, timing_rows, waveform_figure

log = logging.getLogger("spokenlm.ui")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TASK_LABELS = {
    "asr": "transcribe (asr)", "translate": "translate", "ner": "named entities (ner)",
    "sentiment": "sentiment", "dialog-act": "dialog acts", "qa": "question answering (qa)",
    "summarize": "summarize",
}  # fmt: skip


def default_model_dir() -> str:
    """The library's default bundle: models/default, else the best trained part, else the untrained
    demo bundle (`spokenlm.demo.default_bundle`)."""
    from spokenlm.demo import default_bundle, default_bundle_note

    path = default_bundle(on_build=lambda path: log.warning("building an untrained demo bundle in %s ...", path))
    note = default_bundle_note(path)
    if note is not None:
        log.warning(note)
    return str(path)


def build_app(model_dir: str | os.PathLike | None = None, api_url: str | None = None) -> gr.Blocks:
    """The demo as a gr.Blocks; `api_url` (the Serve API) takes precedence over `model_dir`."""
    backend: Backend = ApiBackend(api_url) if api_url else LocalBackend(model_dir or default_model_dir())
    return build_blocks(backend)


def build_blocks(backend: Backend) -> gr.Blocks:
    examples = sorted(EXAMPLES.glob("*.wav"))
    with gr.Blocks(title="spokenlm demo", analytics_enabled=False) as app:
        gr.Markdown(f"# spokenlm\nSpeech in, text tasks out. Backend: {backend.description}.")
        with gr.Row():
            with gr.Column(scale=1):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech", elem_id="audio")
                task = gr.Dropdown(
                    [(label, name) for name, label in TASK_LABELS.items() if name in TASK_NAMES],
                    value="asr", label="Task", elem_id="task",
                )  # fmt: skip
                question = gr.Textbox(label="Question", visible=False, elem_id="question",
                                      placeholder="who is the speaker talking about?")  # fmt: skip
                target_lang = gr.Dropdown(
                    [(f"{name} ({code})", code) for code, name in TARGET_LANGUAGES.items()],
                    value=next(iter(TARGET_LANGUAGES)), label="Target language", visible=False, elem_id="target-lang",
                )  # fmt: skip
                with gr.Accordion("Generation", open=False):
                    strategy = gr.Radio(["greedy", "beam", "sample"], value="greedy", label="Strategy")
                    max_new_tokens = gr.Slider(1, 256, value=64, step=1, label="Max new tokens")
                    gr.Markdown("With `--api` the server's own generation settings apply.")
                run = gr.Button("Run", variant="primary", elem_id="run")
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[audio], label="Example clips")
            with gr.Column(scale=2):
                status = gr.Markdown("Upload or record speech, pick a task, press **Run**.", elem_id="status")
                transcript = gr.Textbox(label="Transcript", interactive=False, elem_id="transcript")
                ctc_text = gr.Textbox(label="CTC transcript (compressor head)", interactive=False, elem_id="ctc")
                entities = gr.HighlightedText(label="Entities", elem_id="entities", show_legend=True)
                with gr.Row():
                    sentiment = gr.Textbox(label="Sentiment", interactive=False, elem_id="sentiment")
                    dialog_acts = gr.Textbox(label="Dialog acts", interactive=False, elem_id="dialog-acts")
                translation = gr.Textbox(label="Translation", interactive=False, elem_id="translation")
                answer = gr.Textbox(label="Answer / summary", interactive=False, elem_id="answer")
                plot = gr.Plot(label="Waveform and compressed-token spans", elem_id="segments-plot")
                timing = gr.Dataframe(headers=["stage", "ms"], label="Timing", interactive=False, elem_id="timing")
                record = gr.JSON(label="Record (as `spokenlm run --json` prints it)", elem_id="record")

        def on_task(name: str):
            return gr.update(visible=name == "qa"), gr.update(visible=name == "translate")

        task.change(on_task, inputs=task, outputs=[question, target_lang], api_name=False)

        outputs = [status, transcript, ctc_text, entities, sentiment, dialog_acts, translation, answer, plot,
                   timing, record]  # fmt: skip

        def on_run(audio_path, task_name, question_text, lang, strategy_name, max_tokens):
            try:
                result = _run(backend, audio_path, task_name, question_text, lang, strategy_name, max_tokens)
            except (AudioError, ApiError, ValueError) as e:  # the user's input or the API: say what is wrong
                message = _one_line(e)
                if audio_path:  # Gradio's upload cache path means nothing to the user; the file name does
                    message = message.replace(str(audio_path), Path(audio_path).name)
                return _cleared(outputs, f"**Error:** {message}")
            except Exception as e:  # a bug: log the traceback here, show one line there
                log.exception("run failed")
                return _cleared(outputs, f"**Internal error:** {type(e).__name__}: {_one_line(e)}")
            return _rendered(result, outputs)

        run.click(on_run, inputs=[audio, task, question, target_lang, strategy, max_new_tokens], outputs=outputs,
                  api_name="run")  # fmt: skip
    return app


def _run(backend: Backend, audio_path, task_name, question_text, lang, strategy_name, max_tokens) -> UIResult:
    from spokenlm.lm import GenerationConfig

    if not audio_path:
        raise ValueError("no audio: upload a file or record from the microphone first")
    request = TaskRequest(
        task=task_name,
        question=(question_text or "").strip() if task_name == "qa" else None,
        target_lang=lang if task_name == "translate" else None,
    )
    generation = GenerationConfig(strategy=strategy_name or "greedy", max_new_tokens=int(max_tokens or 64),
                                  num_beams=4 if strategy_name == "beam" else 1)  # fmt: skip
    generation.validate()
    return backend.run(audio_path, request, generation)


def _rendered(result: UIResult, outputs: list) -> dict:
    rec = result.record
    task = rec["task"]
    status = f"Done: **{task}**"
    if isinstance(rec.get("tokens_per_second"), (int, float)):
        status += f", {rec['tokens_per_second']:.1f} speech tokens/s into the LLM"
    status = "\n\n".join([status + ".", *result.notes])
    acts = rec.get("dialog_acts")
    values = [
        status,
        rec.get("text") or "",
        result.output.transcript or "",
        highlighted_entities(rec),
        (rec.get("sentiment") or "(no sentiment label in the output)") if task == "sentiment" else "",
        (", ".join(acts) or "(no dialog act in the output)") if acts is not None else "",
        rec.get("translation") or "",
        rec.get("answer") or rec.get("summary") or "",
        waveform_figure(result.wave, result.output.spans_s, rec["entities"]),
        timing_rows(result.timing_ms),
        rec,
    ]
    return dict(zip(outputs, values))


def _cleared(outputs: list, message: str) -> dict:
    empty = [message, "", "", None, "", "", "", "", None, None, None]
    return dict(zip(outputs, empty))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui.app", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a spokenlm bundle directory (default: models/default, else untrained)")
    source.add_argument("--api", help="base URL of a running Serve API, e.g. http://127.0.0.1:8000")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="(default: 7860)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        app = build_app(model_dir=args.model, api_url=args.api)
    except (ValueError, FileNotFoundError) as e:  # a bad bundle or URL: one line, no traceback
        print(f"spokenlm ui: error: {e}", file=sys.stderr)
        return 2
    app.queue(default_concurrency_limit=1)  # one run at a time: the model is not shared across threads
    # allowed_paths: the example clips live outside the working directory when run from elsewhere
    app.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(EXAMPLES)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
