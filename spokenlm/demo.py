"""The embedded default bundle, and what stands in for it until models/default/ holds one.

`default_bundle()` is the bundle every surface uses when given none (`spokenlm demo`, `spokenlm
serve`, the UI), the first that exists of:
1. models/default/ of a source checkout: a bundle that met issue 15's bar;
2. models/parts/speechlm/bundle: the best trained part so far (models/parts/README.md has its
   measured figures; below that bar, which `default_bundle_note` says);
3. a small bundle with random weights built once in the cache (`build_untrained_bundle`), whose
   outputs are untrained noise: it shows the graph works end to end, not that it understands speech.
EXAMPLES are the clips the demo runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from spokenlm.model import CompressorConfig, EncoderConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"
TRAINED_PART = REPO_ROOT / "models" / "parts" / "speechlm" / "bundle"
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


def default_bundle(*, on_build: Callable[[Path], None] | None = None) -> Path:
    """The first of models/default, the trained part and the untrained demo bundle in the cache
    (`<cache>/untrained-demo`, spokenlm.bases.cache_dir) that exists (module docstring); the
    untrained one is built on first use, and `on_build(path)` is called before (it takes a few
    seconds), so a surface can say so."""
    from spokenlm.bases import cache_dir

    for path in (DEFAULT_BUNDLE, TRAINED_PART):
        if (path / "spokenlm.json").is_file():
            return path
    path = cache_dir() / "untrained-demo"
    if not (path / "spokenlm.json").is_file():
        if on_build is not None:
            on_build(path)
        build_untrained_bundle(path)
    return path


def default_bundle_note(path: str | Path) -> str | None:
    """What a user should know before reading the outputs of the default bundle at `path`, when it is
    the trained part standing in for models/default; else None (an untrained bundle says so itself:
    `BundleInfo.trained`)."""
    if Path(path).resolve() != TRAINED_PART.resolve():
        return None
    return (
        "models/default does not exist yet: this is the best trained part, models/parts/speechlm/bundle. It meets "
        "issue 15's figures on held-out speech, but models/train_default.sh does not yet make it in one run "
        "(measured figures and how it was made: models/parts/README.md)."
    )


def build_untrained_bundle(
    out_dir: str | Path,
    *,
    encoder: EncoderConfig | None = None,
    compressor: Callable[[int], CompressorConfig] | None = None,
) -> Path:
    """Build and save a small random-weight bundle: `encoder` (default: tiny wav2vec 2.0), the
    compressor `compressor(encoder.model_dim)` returns (default: CTC frame averaging), tiny Llama."""
    import torch

    from spokenlm.adapter import AdapterConfig
    from spokenlm.compress.ctc import CTCCompressorConfig
    from spokenlm.encoders.wav2vec2 import wav2vec2_tiny
    from spokenlm.lm import LoRAConfig
    from spokenlm.model import LLMConfig, SpeechLMConfig, build_speechlm, save_bundle
    from spokenlm.tokenizer import train_bpe_tokenizer

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
            lora=LoRAConfig(rank=4, alpha=8),
        ),
        adapter=AdapterConfig(hidden_dim=64),
    )
    model = build_speechlm(config)
    save_bundle(model, out_dir)
    return out_dir
