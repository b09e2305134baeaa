"""Benchmark prompts, drawn as SGLang 0.5's bench_serving draws them so that one seed gives the
same prompts and token counts in both tools: ``random`` (ShareGPT text cut or repeated to the
drawn lengths; without ``--dataset-path`` the packaged English corpus stands in for ShareGPT),
``random-ids`` (consecutive token ids from a random offset), ``sharegpt`` (a local JSON file) and
``generated-shared-prefix`` (groups of prompts sharing a random system prompt).

``rng`` is a ``random.Random(seed)`` and ``np_rng`` a ``np.random.RandomState(seed)``: the same
streams SGLang gets from ``random.seed(seed)`` and ``np.random.seed(seed)``."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np

ASSISTANT_SUFFIX = "Assistant:"
CORPUS = Path(__file__).resolve().parents[1] / "tools" / "data" / "corpus.txt"


@dataclass
class DatasetRow:
    prompt: Union[str, List[int]]
    prompt_len: int
    output_len: int
    image_data: Optional[str] = None
    timestamp: Optional[float] = None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def _conversation_pairs(dataset: list[dict]) -> list[tuple[str, str]]:
    """First two turns of every conversation with at least two (SGLang's filter)."""
    convs = [d.get("conversations", d.get("conversation", [])) for d in dataset]
    return [(c[0]["value"], c[1]["value"]) for c in convs if len(c) >= 2]


def load_sharegpt(path: str) -> list[tuple[str, str]]:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a ShareGPT file is a JSON list of {{'conversations': [...]}}")
    return _conversation_pairs(data)


def corpus_pairs() -> list[tuple[str, str]]:
    """The packaged corpus as ShareGPT-like pairs: consecutive paragraphs."""
    paras = [p.strip() for p in CORPUS.read_text().split("\n\n") if p.strip()]
    return [(paras[i], paras[i + 1]) for i in range(len(paras) - 1)]


def _remove_suffix(text: str, suffix: str) -> str:
    return text[: -len(suffix)] if suffix and text.endswith(suffix) else text


def sample_sharegpt_requests(dataset_path: str, num_requests: int, tokenizer, rng: random.Random,
                             fixed_output_len: Optional[int] = None,
                             context_len: Optional[int] = None, prompt_suffix: str = "",
                             apply_chat_template: bool = False) -> List[DatasetRow]:
    if fixed_output_len is not None and fixed_output_len < 4:
        raise ValueError("output_len too small")
    dataset = load_sharegpt(dataset_path)
    rng.shuffle(dataset)
    rows: List[DatasetRow] = []
    for prompt, completion in dataset:
        if len(rows) == num_requests:
            break
        if prompt_suffix:
            prompt = _remove_suffix(prompt, ASSISTANT_SUFFIX) + prompt_suffix + ASSISTANT_SUFFIX
        if apply_chat_template:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                   add_generation_prompt=True, tokenize=False)
            if tokenizer.bos_token:
                prompt = prompt.replace(tokenizer.bos_token, "")
        prompt_len = len(tokenizer.encode(prompt))
        output_len = (len(tokenizer.encode(completion)) if fixed_output_len is None
                      else fixed_output_len)
        if prompt_len < 2 or output_len < 2:
            continue
        if context_len and prompt_len + output_len > context_len:
            continue
        rows.append(DatasetRow(prompt=prompt, prompt_len=prompt_len, output_len=output_len))
    return rows


def sample_random_requests(input_len: int, output_len: int, num_prompts: int, range_ratio: float,
                           tokenizer, rng: random.Random, np_rng: np.random.RandomState,
                           dataset_path: str = "", random_sample: bool = True,
                           return_text: bool = True) -> List[DatasetRow]:
    input_lens = np_rng.randint(max(int(input_len * range_ratio), 1), input_len + 1,
                                size=num_prompts)
    output_lens = np_rng.randint(int(output_len * range_ratio), output_len + 1, size=num_prompts)
    rows: List[DatasetRow] = []
    if random_sample:
        dataset = load_sharegpt(dataset_path) if dataset_path else corpus_pairs()
        rng.shuffle(dataset)
        for prompt, _ in dataset:
            i = len(rows)
            if i == num_prompts:
                break
            ids = tokenizer.encode(prompt)
            if not ids:
                continue
            n = int(input_lens[i])
            ids = ids[:n] if len(ids) > n else (ids * ((n + len(ids) - 1) // len(ids)))[:n]
            rows.append(DatasetRow(prompt=tokenizer.decode(ids) if return_text else ids,
                                   prompt_len=n, output_len=int(output_lens[i])))
        if len(rows) < num_prompts:
            raise ValueError(f"the dataset has {len(rows)} usable conversations, fewer than "
                             f"--num-prompts {num_prompts}")
    else:
        vocab = tokenizer.vocab_size
        offsets = np_rng.randint(0, vocab, size=num_prompts)
        for i in range(num_prompts):
            ids = [int((offsets[i] + i + j) % vocab) for j in range(input_lens[i])]
            rows.append(DatasetRow(prompt=tokenizer.decode(ids) if return_text else ids,
                                   prompt_len=int(input_lens[i]),
                                   output_len=int(output_lens[i])))
    return rows


def gen_prompt(tokenizer, token_num: int, rng: random.Random) -> str:
    """``token_num`` ids drawn uniformly from the vocabulary. SGLang draws from
    ``get_vocab().values()`` in dict order, which a fast tokenizer builds from a hash map in a
    different order in every process; sorting the ids makes one seed give one dataset."""
    return tokenizer.decode(rng.choices(sorted(tokenizer.get_vocab().values()), k=token_num))


def sample_generated_shared_prefix_requests(num_groups: int, prompts_per_group: int,
                                            system_prompt_len: int, question_len: int,
                                            output_len: int, tokenizer,
                                            rng: random.Random) -> List[DatasetRow]:
    systems = [gen_prompt(tokenizer, system_prompt_len, rng) for _ in range(num_groups)]
    questions = [gen_prompt(tokenizer, question_len, rng)
                 for _ in range(num_groups * prompts_per_group)]
    rows = []
    for g, system in enumerate(systems):
        for q in questions[g * prompts_per_group:(g + 1) * prompts_per_group]:
            full = f"{system}\n\n{q}"
            rows.append(DatasetRow(prompt=full, prompt_len=len(tokenizer.encode(full)),
                                   output_len=output_len))
    rng.shuffle(rows)
    return rows


def get_dataset(args: Any, tokenizer, rng: random.Random,
                np_rng: np.random.RandomState) -> List[DatasetRow]:
    name = args.dataset_name
    if name == "sharegpt":
        rows = sample_sharegpt_requests(
            args.dataset_path, args.num_prompts, tokenizer, rng,
            fixed_output_len=args.sharegpt_output_len, context_len=args.sharegpt_context_len,
            prompt_suffix=args.prompt_suffix, apply_chat_template=args.apply_chat_template)
    elif name in ("random", "random-ids"):
        rows = sample_random_requests(
            args.random_input_len, args.random_output_len, args.num_prompts,
            args.random_range_ratio, tokenizer, rng, np_rng, dataset_path=args.dataset_path,
            random_sample=name == "random", return_text=not args.tokenize_prompt)
    elif name == "generated-shared-prefix":
        rows = sample_generated_shared_prefix_requests(
            args.gsp_num_groups, args.gsp_prompts_per_group, args.gsp_system_prompt_len,
            args.gsp_question_len, args.gsp_output_len, tokenizer, rng)
    else:
        raise ValueError(f"Unknown dataset: {name}")
    if not rows:
        raise ValueError(f"dataset {name!r} gave no requests")
    print(f"#Input tokens: {sum(r.prompt_len for r in rows)}")
    print(f"#Output tokens: {sum(r.output_len for r in rows)}")
    return rows
