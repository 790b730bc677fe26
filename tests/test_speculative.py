"""spokenlm.lm.speculative_generate: draft-then-verify decoding is exact.

Greedy: the same tokens as the target alone, for any draft (itself, an unrelated random model, a
text-only draft) and any block size, in uneven left-padded batches with speech. Sampling: the joint
distribution of the first tokens matches the target's exact distribution (computed by enumeration),
while the draft's own distribution does not, so the check can fail.
"""

import itertools

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config

from spokenlm.adapter import AdapterConfig, build_adapter
from spokenlm.lm import (
    DraftLM,
    GenerationConfig,
    SpeechLLM,
    build_llm,
    sampling_probs,
    speculative_generate,
)
from spokenlm.decoding import stream_tokens
from spokenlm.tokenizer import train_bpe_tokenizer

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "speech recognition turns audio into text",
    "she sells sea shells by the sea shore",
    "the meeting starts at nine in the morning",
] * 8
PROMPTS = ["transcribe: <audio> text:", "<audio>", "the speech <audio> says, in a few words, that"]
SPEECH_LENGTHS = torch.tensor([5, 2, 4])


def tiny(family: str, tok, *, hidden: int, layers: int, seed: int, init: float = 0.3) -> SpeechLLM:
    torch.manual_seed(seed)
    common = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=256,
        initializer_range=init,  # peaked random LMs: their greedy paths and distributions differ
        tie_word_embeddings=False,
    )
    config = LlamaConfig(**common) if family == "llama" else Qwen2Config(**common)
    return build_llm(config, tok).eval()


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXT, vocab_size=300)


@pytest.fixture(scope="module")
def speech():
    torch.manual_seed(0)
    return torch.randn(3, 5, 32)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_output_equals_the_target_alone_for_every_draft(tok, speech, family):
    target = tiny(family, tok, hidden=32, layers=2, seed=1)
    other = tiny("llama", tok, hidden=16, layers=1, seed=2)
    torch.manual_seed(3)
    drafts = {
        "itself": DraftLM(llm=target, adapter=build_adapter(AdapterConfig(input_dim=32, output_dim=32, kind="linear"))),
        "random, own adapter": DraftLM(
            llm=other, adapter=build_adapter(AdapterConfig(input_dim=32, output_dim=16, hidden_dim=8))
        ),
        "random, text only": DraftLM(llm=other),
    }
    drafts["itself"].adapter.proj.weight.data = torch.eye(32)  # the draft hears exactly the target's speech
    drafts["itself"].adapter.proj.bias.data.zero_()
    plain = target.generate(PROMPTS, speech, SPEECH_LENGTHS, GenerationConfig(max_new_tokens=12))
    assert len({tuple(o.token_ids) for o in plain}) == 3
    for (name, draft), k in itertools.product(drafts.items(), (1, 3, 5)):
        config = GenerationConfig(max_new_tokens=12, draft_tokens=k)
        outputs, stats = speculative_generate(target, draft, PROMPTS, speech, SPEECH_LENGTHS, config)
        assert outputs == plain, (name, k)
        assert target.generate(PROMPTS, speech, SPEECH_LENGTHS, config, draft=draft) == plain
        if name == "itself":
            assert stats.acceptance_rate == 1.0
            # every block but the first token's yields k + 1 tokens (eos may end it sooner)
            assert stats.target_forwards <= 1 + -(-11 // (k + 1))
        else:
            assert stats.acceptance_rate < 1.0


def test_batched_items_match_one_at_a_time(tok, speech):
    target = tiny("llama", tok, hidden=32, layers=2, seed=1)
    draft = DraftLM(llm=tiny("llama", tok, hidden=16, layers=1, seed=5))
    config = GenerationConfig(max_new_tokens=10, draft_tokens=4)
    batched, _ = speculative_generate(target, draft, PROMPTS, speech, SPEECH_LENGTHS, config)
    alone = [
        speculative_generate(target, draft, [p], speech[i : i + 1], SPEECH_LENGTHS[i : i + 1], config)[0][0]
        for i, p in enumerate(PROMPTS)
    ]
    assert batched == alone


def _exact_joint(target: SpeechLLM, prompt: str, config: GenerationConfig, length: int) -> dict[tuple, float]:
    """P(first `length` tokens, or fewer ending in eos) under the target's filtered sampling rule."""
    joint: dict[tuple, float] = {}

    def walk(prefix: tuple, prob: float) -> None:
        if len(prefix) == length:
            joint[prefix] = prob
            return
        embeds, mask = target.embed_prompts([prompt])
        if prefix:
            prefix_embeds = target.model.get_input_embeddings()(torch.tensor([prefix]))
            embeds = torch.cat([embeds, prefix_embeds], dim=1)
            mask = torch.ones(1, embeds.shape[1], dtype=torch.long)
        logits, _ = target.prefill(embeds, mask)
        probs = sampling_probs(logits, config)[0]
        for token in probs.nonzero().flatten().tolist():
            if token in target.eos_token_ids:  # generation stops there
                joint[prefix + (token,)] = prob * float(probs[token])
            else:
                walk(prefix + (token,), prob * float(probs[token]))

    with torch.inference_mode():
        walk((), 1.0)
    return joint


def _total_variation(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(x, 0.0) - q.get(x, 0.0)) for x in set(p) | set(q))


def test_sampling_draws_from_the_target_distribution_not_the_drafts(tok):
    target = tiny("llama", tok, hidden=32, layers=2, seed=1, init=0.5)
    draft_llm = tiny("llama", tok, hidden=32, layers=2, seed=1, init=0.5)
    with torch.no_grad():  # a draft that is often, not always, right: the target with a noisy head
        head = draft_llm.model.get_output_embeddings().weight
        head.add_(0.1 * torch.randn(head.shape, generator=torch.Generator().manual_seed(4)))
    draft = DraftLM(llm=draft_llm)
    prompt = "the quick brown"
    config = GenerationConfig(strategy="sample", top_k=3, temperature=1.5, max_new_tokens=4, draft_tokens=3)
    exact = _exact_joint(target, prompt, config, 4)
    assert abs(sum(exact.values()) - 1) < 1e-5
    draft_only = _exact_joint(draft_llm, prompt, config, 4)

    counts: dict[tuple, int] = {}
    drafted = accepted = 0
    for seed in range(8):  # 8 batches of 1000 copies: the batch-minimum rule is exercised too
        config_s = GenerationConfig(**{**config.__dict__, "seed": seed})
        outputs, stats = speculative_generate(target, draft, [prompt] * 1000, config=config_s)
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
        for o in outputs:
            key = tuple(o.token_ids + target.eos_token_ids[:1] if o.finished else o.token_ids)
            counts[key] = counts.get(key, 0) + 1
    n = sum(counts.values())
    empirical = {k: v / n for k, v in counts.items()}
    assert 0.2 < accepted / drafted < 0.95
    assert set(empirical) <= set(exact)  # never a token outside the target's top-k
    # 8000 draws over <= 81 outcomes: sampling noise keeps TV near 0.04; the draft's own law is far off
    assert _total_variation(empirical, exact) < 0.08
    assert _total_variation(draft_only, exact) > 0.3


def test_bad_pairings_and_settings_are_refused(tok, speech):
    target = tiny("llama", tok, hidden=32, layers=2, seed=1)
    other_tok = train_bpe_tokenizer(["completely different words here"] * 10, vocab_size=280)
    with pytest.raises(ValueError, match="draft and target tokenizers differ"):
        speculative_generate(target, DraftLM(llm=tiny("llama", other_tok, hidden=16, layers=1, seed=0)), PROMPTS[:1])
    wrong = DraftLM(
        llm=tiny("llama", tok, hidden=16, layers=1, seed=0),
        adapter=build_adapter(AdapterConfig(input_dim=8, output_dim=16, hidden_dim=8)),
    )
    with pytest.raises(ValueError, match="draft adapter maps 8 -> 16 dims, but target speech has 32"):
        speculative_generate(target, wrong, PROMPTS, speech, SPEECH_LENGTHS)
    draft = DraftLM(llm=target)
    with pytest.raises(ValueError, match="not beam search"):
        speculative_generate(target, draft, ["hello"], config=GenerationConfig(strategy="beam"))
    with pytest.raises(ValueError, match="needs draft_tokens >= 1"):
        speculative_generate(target, draft, ["hello"], config=GenerationConfig(draft_tokens=0))
    with pytest.raises(ValueError, match=r"draft_tokens must be in \[0, 32\]"):
        GenerationConfig(draft_tokens=33).validate()
    # with draft_tokens=0 or beam search, generate ignores the draft
    plain = target.generate(["hello"], config=GenerationConfig(max_new_tokens=4))
    assert target.generate(["hello"], config=GenerationConfig(max_new_tokens=4, draft_tokens=0), draft=draft) == plain


def test_a_lookup_draft_of_the_right_text_is_accepted_in_runs_and_changes_nothing(tok, speech):
    from spokenlm.lm import LookupDraft

    target = tiny("llama", tok, hidden=32, layers=2, seed=1)
    config = GenerationConfig(max_new_tokens=12, draft_tokens=4)
    plain = target.generate(PROMPTS, speech, SPEECH_LENGTHS, GenerationConfig(max_new_tokens=12))
    right = LookupDraft([o.token_ids for o in plain])  # what a good CTC transcript is to an ASR output
    outputs, stats = speculative_generate(target, right, PROMPTS, speech, SPEECH_LENGTHS, config)
    assert outputs == plain
    assert stats.acceptance_rate > 0.9 and stats.target_forwards <= 1 + 3 and stats.draft_forwards == 0
    wrong = LookupDraft(["she sells sea shells", "", "the meeting starts at nine"])
    outputs, stats = speculative_generate(target, wrong, PROMPTS, speech, SPEECH_LENGTHS, config)
    assert outputs == plain
    assert target.generate(PROMPTS, speech, SPEECH_LENGTHS, config, draft=wrong) == plain
    with pytest.raises(ValueError, match="got 1 lookup references for 3 prompts"):
        speculative_generate(target, LookupDraft(["x"]), PROMPTS, speech, SPEECH_LENGTHS, config)


def test_a_lookup_draft_that_opens_is_verified_in_the_prefill(tok, speech):
    from spokenlm.lm import LookupDraft

    target = tiny("llama", tok, hidden=32, layers=2, seed=1)
    config = GenerationConfig(max_new_tokens=12, draft_tokens=4)
    plain = target.generate(PROMPTS, speech, SPEECH_LENGTHS, GenerationConfig(max_new_tokens=12))
    refs = [o.token_ids for o in plain]
    _, after = speculative_generate(target, LookupDraft(refs), PROMPTS, speech, SPEECH_LENGTHS, config)
    outputs, opened = speculative_generate(target, LookupDraft(refs, opens=True), PROMPTS, speech, SPEECH_LENGTHS, config)
    assert outputs == plain
    # the first block rides on the prefill: one forward fewer, and its drafts are counted
    assert opened.target_forwards == after.target_forwards - 1 and opened.drafted > after.drafted
    assert opened.acceptance_rate > 0.9
    # a reference of one token answers the whole of a 2-token request in the prefill's forward
    short = GenerationConfig(max_new_tokens=2, draft_tokens=4)
    two = target.generate(PROMPTS, speech, SPEECH_LENGTHS, short)
    outputs, stats = speculative_generate(target, LookupDraft([o.token_ids[:1] for o in two], opens=True), PROMPTS,
                                          speech, SPEECH_LENGTHS, short)  # fmt: skip
    assert outputs == two and stats.target_forwards == 1
    # wrong openings, or only some prompts opening, change nothing either
    wrong = LookupDraft(["she sells sea shells", "", "the meeting starts at nine"], opens=[True, True, False])
    assert speculative_generate(target, wrong, PROMPTS, speech, SPEECH_LENGTHS, config)[0] == plain
    some = LookupDraft(refs, opens=[False, True, True])
    assert target.generate(PROMPTS, speech, SPEECH_LENGTHS, config, draft=some) == plain
    streamed = [[] for _ in PROMPTS]
    for block in stream_tokens(target, PROMPTS, speech, SPEECH_LENGTHS, config, draft=LookupDraft(refs, opens=True)):
        for ids, new in zip(streamed, block):
            ids += new
    assert streamed == [o.token_ids for o in plain]
    with pytest.raises(ValueError, match="got 2 opens flags for 3 lookup references"):
        speculative_generate(target, LookupDraft(refs, opens=[True, False]), PROMPTS, speech, SPEECH_LENGTHS, config)


@pytest.mark.parametrize("opens", [False, True])
def test_sampling_with_a_lookup_draft_keeps_the_target_distribution(tok, opens):
    from spokenlm.lm import LookupDraft

    target = tiny("llama", tok, hidden=32, layers=2, seed=1, init=0.5)
    prompt = "the quick brown"
    config = GenerationConfig(strategy="sample", top_k=3, temperature=1.5, max_new_tokens=4, draft_tokens=3)
    exact = _exact_joint(target, prompt, config, 4)
    likely = max(exact, key=exact.get)  # the reference continues the most likely path: often accepted
    reference = list(likely)
    counts: dict[tuple, int] = {}
    drafted = accepted = 0
    for seed in range(8):
        config_s = GenerationConfig(**{**config.__dict__, "seed": seed})
        outputs, stats = speculative_generate(target, LookupDraft([reference] * 1000, opens=opens), [prompt] * 1000, config=config_s)
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
        for o in outputs:
            key = tuple(o.token_ids + target.eos_token_ids[:1] if o.finished else o.token_ids)
            counts[key] = counts.get(key, 0) + 1
    n = sum(counts.values())
    assert drafted > 0 and 0 < accepted < drafted
    assert _total_variation({k: v / n for k, v in counts.items()}, exact) < 0.08
