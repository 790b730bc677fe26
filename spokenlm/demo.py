"""`spokenlm demo`: every task on the example clips, with the embedded default bundle.

Until a trained default bundle exists under models/default/, the demo builds a small bundle with
random weights (`build_untrained_bundle`), runs the full graph on it, and says plainly that its
output is untrained noise: it shows the graph works end to end, not that it understands speech.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from spokenlm.model import CompressorConfig, EncoderConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"
EXAMPLES = REPO_ROOT / "examples"

# Sentences for the untrained bundle's tokenizer; real text, so the BPE merges look like English.
_TOKENIZER_TEXT = [
    "he was not an ill disposed young man",
    "he might even have been made amiable himself",
    "transcribe the speech", "translate the speech into spanish", "summarize the speech",
    "what is the sentiment of the speech answer negative neutral or positive",
    "which dialog acts does the speech perform", "answer the question about the speech",
    "the birch canoe slid on the smooth planks", "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well", "these days a chicken leg is a rare dish",
]  # fmt: skip


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "spokenlm"


def build_untrained_bundle(
    out_dir: str | Path,
    *,
    encoder: EncoderConfig | None = None,
    compressor: Callable[[int], CompressorConfig] | None = None,
) -> Path:
    """Build and save a small random-weight bundle: `encoder` (default: tiny wav2vec 2.0), the
    compressor `compressor(encoder.model_dim)` returns (default: CTC frame averaging), tiny Llama."""
    from spokenlm.compress.ctc import CTCCompressorConfig
    from spokenlm.encoders.wav2vec2 import wav2vec2_tiny
    from spokenlm.model import LLMConfig, SpeechLMConfig, build_speechlm, save_bundle
    from spokenlm.tokenizer import train_bpe_tokenizer

    import torch

    out_dir = Path(out_dir)
    tokenizer_dir = out_dir / "_tokenizer"
    tokenizer = train_bpe_tokenizer(_TOKENIZER_TEXT * 4, vocab_size=400, out_dir=tokenizer_dir)
    encoder = encoder or wav2vec2_tiny()
    compressor = compressor or (lambda dim: CTCCompressorConfig(input_dim=dim, mode="frame_averaging"))
    torch.manual_seed(0)
    config = SpeechLMConfig(
        encoder=encoder,
        compressor=compressor(encoder.model_dim),
        llm=LLMConfig(
            architecture={
                "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
                "max_position_embeddings": 2048, "tie_word_embeddings": True,
            },  # fmt: skip
            tokenizer=str(tokenizer_dir),
            lora_rank=4,
        ),
        adapter_hidden_dim=64,
    )
    model = build_speechlm(config)
    save_bundle(model, out_dir)
    return out_dir


def run_demo(*, model_dir: str | None, generation) -> int:
    from spokenlm.audio import load_audio
    from spokenlm.cli import describe
    from spokenlm.model import load_bundle
    from spokenlm.tasks import TaskRequest

    if model_dir is None and (DEFAULT_BUNDLE / "spokenlm.json").is_file():
        model_dir = str(DEFAULT_BUNDLE)
    if model_dir is None:
        model_dir = str(_cache_dir() / "untrained-demo")
        if not (Path(model_dir) / "spokenlm.json").is_file():
            print(f"building an untrained demo bundle in {model_dir} ...", flush=True)
            build_untrained_bundle(model_dir)
    model = load_bundle(model_dir)
    if not model.info.trained:
        print(
            "NOTE: this bundle is UNTRAINED (random weights): the outputs below are noise. "
            "They show the full graph running end to end (audio -> wav2vec 2.0 -> CTC compressor -> "
            "adapter -> LLM -> task parser), not speech understanding.",
            flush=True,
        )
    clips = sorted(EXAMPLES.glob("*.wav"))
    if not clips:
        print(f"spokenlm: no example clips in {EXAMPLES}", file=sys.stderr)
        return 1
    requests = [
        TaskRequest(task="asr"),
        TaskRequest(task="translate", target_lang="es"),
        TaskRequest(task="ner"),
        TaskRequest(task="sentiment"),
        TaskRequest(task="dialog-act"),
        TaskRequest(task="qa", question="who is the speaker talking about?"),
        TaskRequest(task="summarize"),
    ]
    print(f"model: {model_dir}")
    for clip in clips:
        wav = load_audio(clip)
        print(f"\n{clip.name} ({wav.shape[-1] / 16000:.1f} s)")
        start = time.perf_counter()
        outputs = model.run([wav] * len(requests), requests, generation)  # all tasks in one batch
        if outputs[0].transcript is not None:  # the CTC compressor's own greedy reading of the audio
            print(f"  {'(ctc)':<11} {outputs[0].transcript!r}")
        for output in outputs:
            print(f"  {output.request.task:<11} {describe(output)}")
        print(
            f"  ({outputs[0].tokens_per_second:.1f} speech tokens/s into the LLM, "
            f"{(time.perf_counter() - start):.2f} s for all tasks)"
        )
    return 0
