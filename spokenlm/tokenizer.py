"""The text tokenizer: a byte-level BPE trained with Hugging Face ``tokenizers``.

Holds the special-token names every part of spokenlm agrees on (``<s>``, ``</s>``, ``<pad>``,
``<unk>`` and the ``<audio>`` marker that the LLM prompt replaces with speech embeddings, as in
Speech-LLaMA, Wu et al. 2023, §2.3) and ``train_bpe_tokenizer``, used by the text-LM recipe, the tests
and the untrained demo bundle. A tokenizer of any real checkpoint is loaded by ``spokenlm.lm.load_llm``
instead; this file never loads one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from spokenlm.tasks import AUDIO_TOKEN

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

# Fixed ids 0..4: the order of this tuple is the order the trainer assigns them.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, AUDIO_TOKEN)


def train_bpe_tokenizer(
    texts: Iterable[str], *, vocab_size: int, out_dir: str | Path | None = None, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; save it (``save_pretrained``) to ``out_dir`` when given.

    Encoding with ``add_special_tokens=True`` prepends ``<s>`` (as Llama does); ``</s>`` is left to
    the caller, who knows where a target ends. Byte-level means no text is ever ``<unk>``.
    """
    # 256 byte symbols + the special tokens must fit; anything above that is merges.
    smallest = 256 + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ValueError(f"vocab_size must be >= {smallest} (256 bytes + special tokens), got {vocab_size}")

    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[AUDIO_TOKEN],
        clean_up_tokenization_spaces=False,  # decode(encode(text)) == text, byte for byte
        model_max_length=1 << 20,  # no limit of its own; the LLM's context is the limit
    )
    if out_dir is not None:
        hf_tok.save_pretrained(str(out_dir))
    return hf_tok
