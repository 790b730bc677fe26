"""The embedded default bundle and the untrained demo bundle that stands in for it.

`default_bundle()` is the bundle every surface uses when given none (`spokenlm demo`, `spokenlm
serve`, the UI): models/default/ of a source checkout when it exists, else a small bundle with random
weights built once in the cache (`build_untrained_bundle`), whose outputs are untrained noise: it
shows the graph works end to end, not that it understands speech. EXAMPLES are the clips the demo runs.
"""

from __future__ import annotations

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


def default_bundle(*, on_build: Callable[[Path], None] | None = None) -> Path:
    """models/default when it holds a bundle, else the untrained demo bundle in the cache
    (`<cache>/untrained-demo`, spokenlm.bases.cache_dir), built on first use; `on_build(path)` is
    called before building it (it takes a few seconds), so a surface can say so."""
    from spokenlm.bases import cache_dir

    if (DEFAULT_BUNDLE / "spokenlm.json").is_file():
        return DEFAULT_BUNDLE
    path = cache_dir() / "untrained-demo"
    if not (path / "spokenlm.json").is_file():
        if on_build is not None:
            on_build(path)
        build_untrained_bundle(path)
    return path


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
