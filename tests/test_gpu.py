"""On a CUDA device: the tiny bundle reads the example clips into the same greedy ASR tokens as on the
CPU, and batched greedy decoding on the GPU equals decoding each item alone. Skipped without CUDA.

TF32 is turned off for these tests: it rounds matmul and convolution inputs to 10 mantissa bits,
enough to flip a CTC argmax (which frames reach the LLM) and so the tokens, while plain fp32 on GPU
and CPU differ only in summation order.
"""

import pytest
import torch

from spokenlm.audio import load_audio
from spokenlm.lm import GenerationConfig
from spokenlm.model import SpeechLM, load_bundle
from spokenlm.tasks import TaskRequest, build_prompt

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GENERATION = GenerationConfig(max_new_tokens=16)


@pytest.fixture(autouse=True)
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def speech_prompts(model: SpeechLM, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapter output (B, N, D_llm) and lengths (B,) of the recordings, on the model's device."""
    device = next(model.parameters()).device
    speech = model.encode_recordings(waves)
    return model.adapter(speech.embeddings.to(device)), speech.lengths.to(device)


@torch.inference_mode()
def asr_token_ids(model: SpeechLM, waves: list[torch.Tensor]) -> list[list[int]]:
    projected, lengths = speech_prompts(model, waves)
    prompts = [build_prompt(TaskRequest(task="asr"))] * len(waves)
    return [out.token_ids for out in model.llm.generate(prompts, projected, lengths, GENERATION)]


def test_cuda_gives_the_cpu_greedy_asr_tokens(tiny_bundle, example_clips):
    waves = [load_audio(clip) for clip in example_clips]
    cpu_model, cuda_model = load_bundle(tiny_bundle), load_bundle(tiny_bundle).to("cuda")
    assert asr_token_ids(cuda_model, waves) == asr_token_ids(cpu_model, waves)
    # A random LLM often repeats one token, so also compare what it was fed: the same CTC segments.
    with torch.inference_mode():
        cpu_speech, cpu_lengths = speech_prompts(cpu_model, waves)
        cuda_speech, cuda_lengths = speech_prompts(cuda_model, waves)
    assert cuda_lengths.tolist() == cpu_lengths.tolist()
    torch.testing.assert_close(cuda_speech.cpu(), cpu_speech, atol=1e-4, rtol=1e-4)


def test_batched_greedy_generate_on_cuda_equals_one_item_at_a_time(tiny_bundle, example_clips):
    model = load_bundle(tiny_bundle).to("cuda")
    waves = [load_audio(clip) for clip in example_clips]
    # every clip under prompts of different lengths, so the batch is left-padded unevenly
    requests = [TaskRequest(task="asr"), TaskRequest(task="qa", question="who is the speaker talking about?")]
    items = [(i, build_prompt(r)) for i in range(len(waves)) for r in requests]
    prompts = [prompt for _, prompt in items]
    llm = model.llm
    with torch.inference_mode():
        projected, lengths = speech_prompts(model, waves)
        index = torch.tensor([i for i, _ in items], device="cuda")
        batched = llm.generate(prompts, projected[index], lengths[index], GENERATION)
        batched_logits, _ = llm.prefill(*llm.embed_prompts(prompts, projected[index], lengths[index]))  # (B, V)
        for k, ((i, prompt), out) in enumerate(zip(items, batched)):
            speech, speech_lengths = projected[i : i + 1, : int(lengths[i])], lengths[i : i + 1]
            alone = llm.generate([prompt], speech, speech_lengths, GENERATION)[0]
            assert out.token_ids == alone.token_ids, prompt
            # a random LLM often repeats one token: the first step's logits say more than the tokens
            alone_logits, _ = llm.prefill(*llm.embed_prompts([prompt], speech, speech_lengths))
            torch.testing.assert_close(batched_logits[k : k + 1], alone_logits, atol=1e-4, rtol=1e-4)
