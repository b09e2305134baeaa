"""A SmolLM2-135M-shaped Llama (random weights) against HF in float32, short prompts.

Tolerance: max |logit difference| <= 1e-3 (30 layers, vocab 49152, hidden 576 accumulate more
float32 rounding than the tiny models; logits here are O(1)).
"""

from __future__ import annotations

import pytest
import torch
from me_helpers import PagedDriver, hf_logits, max_diff, random_llama, save_and_load

TOL = 1e-3
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    model = random_llama(SMOLLM2_135M)
    return model, save_and_load(model, tmp_path_factory.mktemp("smollm2"))


def test_smollm2_shape_prefill_chunk_and_decode(smol):
    hf, runner = smol
    cfg = runner.config
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert (
        cfg.tie_word_embeddings
        and runner.model.lm_head.weight is runner.model.model.embed_tokens.weight
    )
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 49152, (12,), generator=g).tolist()
    forced = torch.randint(0, 49152, (2,), generator=g).tolist()
    ref = hf_logits(hf, prompt + forced)
    assert ref.abs().max() > 1.0  # the comparison is not between near-zero numbers
    d = PagedDriver(runner, page_size=16)
    a, b = d.extend([("r", prompt[:5])])[0], d.extend([("r", prompt[5:])])[0]
    assert max_diff(torch.cat([a, b]), ref[:12]) <= TOL
    for step, tok in enumerate(forced):
        out = d.decode([("r", tok)])
        assert max_diff(out[0], ref[12 + step]) <= TOL
