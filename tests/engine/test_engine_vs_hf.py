"""The engine gives transformers' greedy answers, alone and in mixed batches.

Reference: ``transformers`` ``generate`` (greedy) on the same local model. The engine runs with a
small chunked-prefill size and a warm prefix cache, so a mixed batch exercises chunking, prefix
hits and decode batching at once. In bf16, transformers' float32 forward over the engine's own
tokens, step by step.
"""

from __future__ import annotations

import shutil

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


# bf16 against float32 transformers, teacher-forced on the engine's own tokens: the largest
# difference allowed between a logprob of the engine and the reference's, and between the
# reference's top logit and its logit of the engine's pick, at every step. The tiny model's
# logits reach 16, where a bf16 ulp is 0.0625; bf16 rounding through its 4 layers moves them by
# up to about 0.2 on every path checked (transformers' own bf16 as much), while an engine bug
# (attention missing the newest token, RoPE off by one, a GEMM dropping a column) moves them by
# 4 to 10.
BF16_TOL = 0.5

# The engine's CPU paths, forced (scheduler environment), that a CPU of each kind would take:
BF16_PATHS = {
    "auto": {},  # this CPU's own pick (Zen 4: AVX-512 kernels + oneDNN's bf16 linears)
    "avx2-panels": {"SGLANG_CPU_KERNEL_ISA": "avx2", "SGLANG_CPU_GEMM": "panel"},  # Zen 3
    "portable": {"SGLANG_CPU_KERNEL_ISA": "portable"},  # kernels with no vector intrinsics
    "torch-ops": {"SGLANG_CPU_KERNELS": "0"},  # where no C compiler builds the kernels
}


def _assert_tracks_float32(hf, prompt: str, out: dict) -> None:
    """Every greedy pick of the engine is within ``BF16_TOL`` of the top of transformers'
    float32 logits at that step (its forward over the prompt and the engine's tokens), and the
    engine's logprobs (its pick's and its top 5) are within ``BF16_TOL`` of the reference's."""
    tok, model = hf
    ids, new = tok(prompt).input_ids, out["output_ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids + new])).logits[0, len(ids) - 1 : -1].float()
    ref_lp = torch.log_softmax(ref, -1)
    picks = out["meta_info"]["output_token_logprobs"]
    tops = out["meta_info"]["output_top_logprobs"]
    assert [t for _, t, _ in picks] == new and len(tops) == len(new)
    for step, t in enumerate(new):
        gap = (ref[step].max() - ref[step, t]).item()
        assert gap <= BF16_TOL, (prompt, step, t, gap)
        for lp, tt, _ in [picks[step], *tops[step]]:
            err = abs(lp - ref_lp[step, tt].item())
            assert err <= BF16_TOL, (prompt, step, tt, lp, ref_lp[step, tt].item())


@pytest.mark.parametrize("path", BF16_PATHS, ids=list(BF16_PATHS))
def test_bf16_engine_with_cpu_kernels_tracks_transformers(tiny_model, hf, path, tmp_path,
                                                          monkeypatch):
    """In bf16 the engine runs its C kernels (norm, RoPE, KV store, decode attention over the
    pool; the linear layers too where the CPU has no native bf16), alone and as a mixed batch
    with chunked prefill and prefix hits, on each path of a CPU kind this machine can run. Its
    greedy tokens need not equal transformers' bf16 ``generate``: where the top two logits are
    within bf16 noise, either summation order may rightly pick the other token (and how often
    that happens depends on the CPU). So each step is checked on its own, teacher-forced."""
    from sglang import Engine
    from sglang.srt.layers import cpu_kernel_build, cpu_kernels

    from sglang.srt.env import envs

    kernel_dir = tmp_path / "kernels"  # holds only the build this path must load
    build = None
    for name, value in BF16_PATHS[path].items():  # the rest as the environment says
        monkeypatch.setenv(name, value)
    wants_kernels = envs.cpu_kernels and cpu_kernels.get() is not None  # (a compiler here)
    if wants_kernels:
        try:
            isa = cpu_kernel_build.pick_isa(cpu_kernel_build.cpu_features(), envs.cpu_kernel_isa)
        except RuntimeError as e:
            pytest.skip(f"not a path this CPU can run: {e}")
        build = cpu_kernel_build.build(isa)
        kernel_dir.mkdir()
        shutil.copy(build, kernel_dir / build.name)
    monkeypatch.setenv("SGLANG_CPU_KERNEL_DIR", str(kernel_dir))
    eng = Engine(model_path=tiny_model, dtype="bfloat16", chunked_prefill_size=16, page_size=4,
                 max_total_tokens=4096, device="cpu")
    try:
        # where no C compiler is found the torch ops run instead, and must hold as well
        assert eng.get_server_info()["cpu_kernels"] is wants_kernels
        built = sorted(p.name for p in kernel_dir.iterdir()) if kernel_dir.exists() else []
        assert built == ([build.name] if build else []), built  # it loaded that one
        sp = {"max_new_tokens": MAX_NEW, "temperature": 0}
        for prompt in PROMPTS:
            out = eng.generate(prompt, sp, return_logprob=True, top_logprobs_num=5)
            _assert_tracks_float32(hf, prompt, out)
        outs = eng.generate(PROMPTS, sp, return_logprob=True, top_logprobs_num=5)
        for prompt, out in zip(PROMPTS, outs):  # warm prefix cache: every prompt hits
            _assert_tracks_float32(hf, prompt, out)
        assert outs[3]["meta_info"]["cached_tokens"] >= 16  # the long prompt: whole pages hit
        assert_pool_whole(eng)
    finally:
        eng.shutdown()
