"""Builds the model on its device, loads its weights, and runs forward passes on the KV pool.

Under tensor parallelism (the process group joined before, ``sglang.srt.distributed``) it builds
this rank's share of the model; its KV pool holds only this rank's KV heads."""

from __future__ import annotations

import logging
import time

import torch

from sglang.srt.base_types import ForwardMode
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.distributed import get_tp_rank, get_tp_size, head_split
from sglang.srt.layers.attention_backend import TorchAttnBackend
from sglang.srt.layers.forward_batch import ForwardBatch
from sglang.srt.mem_cache.kv_dtype import resolve_kv_cache_dtype
from sglang.srt.mem_cache.memory_pool import KVLayout, KVPool
from sglang.srt.model_executor.weight_loader import LOAD_FORMATS, init_dummy_weights, iter_weights
from sglang.srt.models.registry import get_model_class
from sglang.srt.utils.device import torch_device

logger = logging.getLogger(__name__)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.type == "cpu" or (a.index or 0) == (b.index or 0)


class ModelRunner:
    def __init__(
        self,
        config: ModelConfig,
        device: str = "cpu",
        gpu_id: int = 0,
        load_format: str = "auto",
        seed: int = 42,
    ):
        if load_format not in LOAD_FORMATS:
            raise ValueError(f"load format must be one of {LOAD_FORMATS}, got {load_format!r}")
        self.config = config
        self.device = torch_device(device, gpu_id)
        self.dtype = config.torch_dtype
        self.kv_pool: KVPool | None = None
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        self.heads = head_split(config.num_heads, config.num_kv_heads, self.tp_size, self.tp_rank)

        t0 = time.perf_counter()
        model_cls = get_model_class(config.architecture)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)  # parameters are created in the model dtype
        try:
            with torch.device(self.device):
                model = model_cls(config)
        finally:
            torch.set_default_dtype(default_dtype)
        if load_format == "dummy":
            init_dummy_weights(model, seed)
        else:
            model.load_weights(iter_weights(config.path, load_format))
        model.post_load()
        self.model = model.eval()
        self.attn_backend = TorchAttnBackend(
            self.heads.num_heads, self.heads.num_kv_heads, config.head_dim, config.head_dim**-0.5
        )
        logger.info(
            "loaded %s (%s, %s, TP rank %d of %d) on %s in %.1fs",
            config.architecture,
            load_format,
            str(self.dtype).removeprefix("torch."),
            self.tp_rank,
            self.tp_size,
            self.device,
            time.perf_counter() - t0,
        )

    def kv_layout(self, page_size: int, kv_cache_dtype: str = "auto") -> KVLayout:
        """The pool's layout (this rank's KV heads); ``kv_cache_dtype`` as
        ``--kv-cache-dtype`` (auto: the model's)."""
        c = self.config
        dtype = resolve_kv_cache_dtype(kv_cache_dtype, self.dtype)
        return KVLayout(c.num_layers, self.heads.num_kv_heads, c.head_dim, page_size, dtype)

    def set_kv_pool(self, pool: KVPool) -> None:
        if pool.num_layers != self.config.num_layers:
            raise ValueError(
                f"KV pool has {pool.num_layers} layers, the model {self.config.num_layers}"
            )
        if not _same_device(pool.device, self.device):
            raise ValueError(f"KV pool is on {pool.device}, the model on {self.device}")
        self.kv_pool = pool
        self.attn_backend.set_kv_pool(pool, self.dtype)

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """float32 logits [len(rows), vocab] for rows ``fb.logits_indices`` (default: the last
        new token of every request)."""
        if self.kv_pool is None:
            raise RuntimeError("set_kv_pool must be called before forward")
        dev = self.device
        if fb.logits_indices is not None:
            rows = fb.logits_indices.to(dev, non_blocking=True)
        elif fb.mode == ForwardMode.DECODE:
            rows = None  # one token per request: every row, in order
        else:
            rows = fb.last_token_rows().to(dev, non_blocking=True)
        return self.model(
            fb.input_ids.to(dev, non_blocking=True),
            fb.positions.to(dev, non_blocking=True),
            rows,
            fb,
            self.attn_backend,
        )
