"""The engine gives transformers' greedy answers, alone and in mixed batches.

Reference: ``transformers`` ``generate`` (greedy) on the same local model. The engine runs with a
small chunked-prefill size and a warm prefix cache, so a mixed batch exercises chunking, prefix
hits and decode batching at once.
"""

from __future__ import annotations

import pytest
import torch

PROMPTS = [
    "Once upon a time",
    "The lighthouse keeper",
    "In the morning the baker opened the door and",
    "The river ran past the old mill, and the children who lived in the village "
    "liked to watch the water turn the wheel. One day",
    "Hello",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def hf(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32).eval()
    return tok, model


def hf_greedy(hf, prompt: str) -> tuple[list[int], torch.Tensor]:
    tok, model = hf
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=MAX_NEW, do_sample=False, output_scores=True,
            return_dict_in_generate=True, pad_token_id=tok.pad_token_id or 0,
        )
    new = out.sequences[0, ids.shape[1]:].tolist()
    scores = torch.stack(out.scores)[:, 0].float()
    eos = set(model.generation_config.eos_token_id if isinstance(
        model.generation_config.eos_token_id, list) else [model.generation_config.eos_token_id])
    for i, t in enumerate(new):  # HF pads after EOS; the engine stops at EOS
        if t in eos:
            return new[: i + 1], scores[: i + 1]
    return new, scores


@pytest.fixture(scope="module", params=[1, 4], ids=["page1", "page4"])
def engine(request, tiny_model):
    from sglang import Engine

    eng = Engine(model_path=tiny_model, chunked_prefill_size=16, page_size=request.param,
                 max_total_tokens=4096, device="cpu")
    yield eng
    eng.shutdown()


def assert_pool_whole(engine) -> None:
    state = engine.get_server_info()["internal_states"][0]
    pool = state["kv_pool"]
    assert state["num_running_reqs"] == 0 and state["num_waiting_reqs"] == 0
    assert pool["used_by_requests_pages"] == 0, pool
    assert pool["protected_pages"] == 0, pool
    assert pool["free_pages"] + pool["cached_pages"] == pool["total_pages"], pool


def test_greedy_alone_matches_transformers(engine, hf):
    engine.flush_cache()
    for prompt in PROMPTS:
        ref, _ = hf_greedy(hf, prompt)
        out = engine.generate(prompt, {"max_new_tokens": MAX_NEW, "temperature": 0})
        assert out["output_ids"] == ref, prompt
        assert out["meta_info"]["completion_tokens"] == len(ref)
    assert_pool_whole(engine)


def test_mixed_batch_with_chunking_and_prefix_hits_matches_transformers(engine, hf):
    # warm the prefix cache with the first two prompts, then send everything at once,
    # including prompts that extend the cached ones
    engine.generate(PROMPTS[:2], {"max_new_tokens": 4, "temperature": 0})
    batch = PROMPTS + [PROMPTS[3] + " the miller", PROMPTS[0] + " there was"]
    refs = [hf_greedy(hf, p)[0] for p in batch]
    outs = engine.generate(batch, {"max_new_tokens": MAX_NEW, "temperature": 0})
    assert [o["output_ids"] for o in outs] == refs
    assert any(o["meta_info"]["cached_tokens"] > 0 for o in outs), "no prefix-cache hit"
    assert_pool_whole(engine)


def test_output_logprobs_match_transformers_scores(engine, hf):
    prompt = PROMPTS[2]
    ref, scores = hf_greedy(hf, prompt)
    out = engine.generate(prompt, {"max_new_tokens": MAX_NEW, "temperature": 0},
                          return_logprob=True, top_logprobs_num=3)
    lps = out["meta_info"]["output_token_logprobs"]
    assert [t for _, t, _ in lps] == ref
    ref_lp = torch.log_softmax(scores, -1)
    for i, (lp, tok, _) in enumerate(lps):
        assert abs(lp - ref_lp[i, tok].item()) < 1e-3, (i, lp, ref_lp[i, tok].item())
    top = out["meta_info"]["output_top_logprobs"][0]
    assert [t for _, t, _ in top] == ref_lp[0].topk(3).indices.tolist()
    assert_pool_whole(engine)


def test_input_logprobs_match_transformers(engine, hf):
    tok, model = hf
    prompt = PROMPTS[3]
    ids = tok(prompt).input_ids
    out = engine.generate(prompt, {"max_new_tokens": 1, "temperature": 0},
                          return_logprob=True, logprob_start_len=0)
    inp = out["meta_info"]["input_token_logprobs"]
    assert len(inp) == len(ids) and inp[0][0] is None
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    for j in range(1, len(ids)):
        assert inp[j][1] == ids[j]
        assert abs(inp[j][0] - ref[j - 1, ids[j]].item()) < 1e-3
    assert_pool_whole(engine)


def _decided(ids: list[int], scores: torch.Tensor, tol: float) -> list[int]:
    """The greedy tokens before the first step whose top two logits are within ``tol``: past a
    tie at bf16 resolution, another summation order may rightly pick the other token."""
    top2 = scores.topk(2, dim=-1).values
    for i, (a, b) in enumerate(top2.tolist()):
        if a - b <= tol:
            return ids[:i]
    return ids


def test_bf16_engine_with_cpu_kernels_matches_transformers_bf16(tiny_model):
    """In bf16 the engine runs its C kernels (norm, RoPE, KV store, decode attention over the
    pool; the linear layers too where the CPU has no native bf16): greedy output equals
    transformers' bf16 ``generate``, alone and as a mixed batch with chunked prefill and prefix
    hits, up to the first step where transformers' own top two logits tie within two bf16 ulps
    (0.125 at logits of 8 to 16): its matmul may sum in another order than the engine's."""
    from sglang import Engine
    from sglang.srt.layers import cpu_kernels
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).eval()
    greedy = [hf_greedy((tok, model), p) for p in PROMPTS]
    refs = [_decided(ids, scores, tol=0.125) for ids, scores in greedy]
    assert sum(map(len, refs)) >= 0.5 * sum(len(ids) for ids, _ in greedy)  # (73 of 120 here)
    eng = Engine(model_path=tiny_model, dtype="bfloat16", chunked_prefill_size=16, page_size=4,
                 max_total_tokens=4096, device="cpu")
    try:
        # where no C compiler is found the torch ops run instead, and must give the same answers
        assert eng.get_server_info()["cpu_kernels"] is (cpu_kernels.get() is not None)
        sp = {"max_new_tokens": MAX_NEW, "temperature": 0}
        for prompt, ref in zip(PROMPTS, refs):
            assert eng.generate(prompt, sp)["output_ids"][: len(ref)] == ref, prompt
        outs = eng.generate(PROMPTS, sp)  # warm prefix cache: every prompt hits
        assert [o["output_ids"][: len(r)] for o, r in zip(outs, refs)] == refs
        assert outs[3]["meta_info"]["cached_tokens"] >= 16  # the long prompt: whole pages hit
        assert_pool_whole(eng)
    finally:
        eng.shutdown()
