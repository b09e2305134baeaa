"""sglang.bench_serving as pure logic: the metric arithmetic on recorded timings against
hand-computed figures (numpy's percentiles), goodput, the printed block and JSONL keys, argument
checks, and the dataset generators on the real tiny tokenizer (same seed, same prompts; range
ratio bounds; ShareGPT from a small JSON file written here; shared-prefix groups)."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest

from sglang.bench_serving import make_args
from sglang.bench_serving.datasets import (get_dataset, load_tokenizer,
                                           sample_generated_shared_prefix_requests,
                                           sample_random_requests, sample_sharegpt_requests)
from sglang.bench_serving.metrics import calculate_metrics, parse_goodput
from sglang.bench_serving.report import build_details, build_result, format_result
from sglang.bench_serving.request_funcs import RequestFuncOutput

# Three successful requests and one failure, timings in seconds.
OUTS = [
    RequestFuncOutput(success=True, ttft=0.10, latency=0.50, output_len=5,
                      itl=[0.1, 0.1, 0.1, 0.1], generated_text="a"),
    RequestFuncOutput(success=True, ttft=0.20, latency=1.20, output_len=3,
                      itl=[0.4, 0.6], generated_text="b"),
    RequestFuncOutput(success=True, ttft=0.30, latency=0.30, output_len=1, itl=[],
                      generated_text="c"),
    RequestFuncOutput(success=False, error="HTTP 400 Bad Request: too long"),
]
PROMPT_LENS = [10, 20, 30, 40]
DUR = 2.0


def test_metrics_equal_hand_computed():
    m, output_lens = calculate_metrics(PROMPT_LENS, OUTS, DUR, None,
                                       parse_goodput(["ttft:250", "e2e:1000"]))
    assert output_lens == [5, 3, 1, 0]
    assert (m.completed, m.failed, m.total_input, m.total_output) == (3, 1, 60, 9)
    assert m.request_throughput == pytest.approx(1.5)
    assert m.input_throughput == pytest.approx(30.0)
    assert m.output_throughput == pytest.approx(4.5)
    assert m.total_throughput == pytest.approx(34.5)
    assert m.concurrency == pytest.approx((0.5 + 1.2 + 0.3) / 2.0)
    ttfts, e2es = [0.1, 0.2, 0.3], [0.5, 1.2, 0.3]
    tpots = [(0.5 - 0.1) / 4, (1.2 - 0.2) / 2]  # output_len 1: no TPOT
    itls = [0.1] * 4 + [0.4, 0.6]
    assert m.mean_ttft_ms == pytest.approx(200.0)
    assert m.median_ttft_ms == pytest.approx(200.0)
    assert m.p99_ttft_ms == pytest.approx(np.percentile(ttfts, 99) * 1000)
    assert m.p99_ttft_ms == pytest.approx(298.0)  # linear interpolation: 0.2 + 0.98 * 0.1
    assert m.mean_tpot_ms == pytest.approx(np.mean(tpots) * 1000)
    assert m.mean_tpot_ms == pytest.approx(300.0)
    assert m.p99_tpot_ms == pytest.approx(np.percentile(tpots, 99) * 1000)
    assert m.mean_itl_ms == pytest.approx(1400 / 6)
    assert m.median_itl_ms == pytest.approx(100.0)
    assert m.p95_itl_ms == pytest.approx(np.percentile(itls, 95) * 1000)
    assert m.max_itl_ms == pytest.approx(600.0)
    assert m.std_itl_ms == pytest.approx(np.std(itls) * 1000)
    assert m.mean_e2e_latency_ms == pytest.approx(2000 / 3)
    assert m.median_e2e_latency_ms == pytest.approx(500.0)
    assert m.p90_e2e_latency_ms == pytest.approx(1060.0)  # 0.5 + 0.8 * 0.7
    assert m.p99_e2e_latency_ms == pytest.approx(np.percentile(e2es, 99) * 1000)
    # Goodput: request 1 meets ttft<=250 and e2e<=1000; request 2 misses e2e; 3 misses ttft.
    assert m.request_goodput == pytest.approx(0.5)
    m2, _ = calculate_metrics(PROMPT_LENS, OUTS, DUR, None, parse_goodput(["tpot:200"]))
    assert m2.request_goodput == pytest.approx(1.0)  # tpots 100, 500 and (none ->) 0 ms


def test_no_streaming_figures_are_zero_and_goodput_absent():
    outs = [RequestFuncOutput(success=True, ttft=0.4, latency=0.4, output_len=8)]
    m, _ = calculate_metrics([16], outs, 1.0)
    assert m.mean_itl_ms == 0 and m.max_itl_ms == 0 and m.request_goodput is None
    assert m.mean_tpot_ms == 0 and m.mean_ttft_ms == pytest.approx(400.0)


@pytest.mark.parametrize("bad", [["ttft"], ["foo:10"], ["ttft:abc"], ["e2e:-1"]])
def test_goodput_refuses_bad_slos(bad):
    with pytest.raises(ValueError, match="goodput"):
        parse_goodput(bad)


def test_parse_goodput_spellings():
    assert parse_goodput(["ttft:5 tpot:2.5", "e2el:9"]) == {"ttft": 5.0, "tpot": 2.5, "e2e": 9.0}


def test_block_and_jsonl_keys():
    args = make_args(backend="sglang-oai", dataset_name="random-ids", goodput=["ttft:250"],
                     max_concurrency=4)
    m, lens = calculate_metrics(PROMPT_LENS, OUTS, DUR, None, parse_goodput(args.goodput))
    text = format_result(args, m, DUR)
    for label in ("Serving Benchmark Result", "Backend:", "Traffic request rate:",
                  "Max request concurrency:", "Successful requests:", "Failed requests:",
                  "Benchmark duration (s):", "Total input tokens:", "Total generated tokens:",
                  "Total generated tokens (retokenized):", "Request throughput (req/s):",
                  "Request goodput (req/s):", "Input token throughput (tok/s):",
                  "Output token throughput (tok/s):", "Total token throughput (tok/s):",
                  "Concurrency:", "P90 E2E Latency (ms):", "P99 TTFT (ms):", "P99 TPOT (ms):",
                  "P95 ITL (ms):", "Max ITL (ms):"):
        assert label in text, label
    assert "{:<40} {:<10.2f}".format("Request throughput (req/s):", 1.5) in text
    result = build_result(args, m, DUR, None, None) | build_details(OUTS, lens)
    for key in ("backend", "dataset_name", "request_rate", "max_concurrency", "duration",
                "completed", "total_input_tokens", "total_output_tokens",
                "total_output_tokens_retokenized", "request_throughput", "input_throughput",
                "output_throughput", "mean_e2e_latency_ms", "median_e2e_latency_ms",
                "std_e2e_latency_ms", "p99_e2e_latency_ms", "mean_ttft_ms", "median_ttft_ms",
                "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "std_tpot_ms",
                "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "std_itl_ms", "p95_itl_ms",
                "p99_itl_ms", "concurrency", "accept_length", "input_lens", "output_lens",
                "ttfts", "itls", "generated_texts", "errors", "request_goodput"):
        assert key in result, key
    assert result["errors"][3].startswith("HTTP 400") and result["output_lens"] == [5, 3, 1, 0]
    json.dumps(result)  # serialisable as one JSONL line


@pytest.mark.parametrize("kw, msg", [
    ({"backend": "vllm"}, "--backend"), ({"num_prompts": 0}, "--num-prompts"),
    ({"random_range_ratio": 1.5}, "range-ratio"), ({"request_rate": 0}, "request-rate"),
    ({"dataset_name": "sharegpt"}, "dataset-path"), ({"goodput": ["x:1"], "dataset_name": "random"}, "goodput"),
    ({"tokenize_prompt": True, "backend": "sglang-oai", "dataset_name": "random"}, "tokenize"),
])
def test_bad_arguments_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_args(**kw)


def test_make_args_refuses_unknown_names():
    with pytest.raises(TypeError, match="num_prompt"):
        make_args(num_prompt=3)


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(tiny_model)


def _rngs(seed):
    return random.Random(seed), np.random.RandomState(seed)


@pytest.mark.parametrize("random_sample", [True, False])
def test_random_same_seed_same_prompts_and_bounds(tok, random_sample):
    def draw(seed):
        return sample_random_requests(80, 20, 24, 0.25, tok, *_rngs(seed),
                                      random_sample=random_sample)

    a, b, c = draw(3), draw(3), draw(4)
    assert [(r.prompt, r.prompt_len, r.output_len) for r in a] == \
           [(r.prompt, r.prompt_len, r.output_len) for r in b]
    assert [(r.prompt_len, r.output_len) for r in a] != [(r.prompt_len, r.output_len) for r in c]
    assert all(20 <= r.prompt_len <= 80 and 5 <= r.output_len <= 20 for r in a)
    # SGLang's draw: input lengths first, then output lengths, from np.random.seed(seed).
    ref = np.random.RandomState(3)
    assert [r.prompt_len for r in a] == list(ref.randint(20, 81, size=24))
    assert [r.output_len for r in a] == list(ref.randint(5, 21, size=24))


def test_random_ids_tokenized_prompts_have_exact_lengths(tok):
    rows = sample_random_requests(50, 8, 6, 1.0, tok, *_rngs(1), random_sample=False,
                                  return_text=False)
    assert all(len(r.prompt) == 50 == r.prompt_len and r.output_len == 8 for r in rows)
    assert all(r.prompt == [(r.prompt[0] + j) % tok.vocab_size for j in range(50)]
               for r in rows)


def test_sharegpt_from_local_file(tok, tmp_path):
    path = tmp_path / "sg.json"
    convs = [{"conversations": [{"from": "human", "value": f"Question {i}: tell me about cats"},
                                {"from": "gpt", "value": "Cats are small furry animals. " * i}]}
             for i in range(1, 9)]
    convs.append({"conversations": [{"from": "human", "value": "only one turn"}]})
    path.write_text(json.dumps(convs))
    rows = sample_sharegpt_requests(str(path), 5, tok, random.Random(0))
    again = sample_sharegpt_requests(str(path), 5, tok, random.Random(0))
    assert [r.prompt for r in rows] == [r.prompt for r in again] and len(rows) == 5
    for r in rows:
        assert r.prompt.startswith("Question ") and r.prompt_len == len(tok.encode(r.prompt))
        i = int(r.prompt.split()[1].rstrip(":"))
        assert r.output_len == len(tok.encode("Cats are small furry animals. " * i))
    fixed = sample_sharegpt_requests(str(path), 20, tok, random.Random(0), fixed_output_len=7)
    assert len(fixed) == 8 and {r.output_len for r in fixed} == {7}  # one-turn entry dropped
    args = make_args(dataset_name="sharegpt", dataset_path=str(path), num_prompts=3,
                     sharegpt_output_len=9)
    via = get_dataset(args, tok, *_rngs(args.seed))
    assert len(via) == 3 and {r.output_len for r in via} == {9}


def test_generated_shared_prefix_groups(tok):
    rows = sample_generated_shared_prefix_requests(3, 4, 40, 10, 6, tok, random.Random(2))
    again = sample_generated_shared_prefix_requests(3, 4, 40, 10, 6, tok, random.Random(2))
    assert [r.prompt for r in rows] == [r.prompt for r in again] and len(rows) == 12
    systems = {r.prompt.split("\n\n")[0] for r in rows}
    assert len(systems) == 3 and all(r.output_len == 6 for r in rows)
    assert all(r.prompt_len == len(tok.encode(r.prompt)) for r in rows)
