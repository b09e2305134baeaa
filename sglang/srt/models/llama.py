"""Llama-family decoder (Llama, Mistral; Qwen2/Qwen3 reuse it with a few switches).

Fused QKV and gate_up projections (one matmul each), RoPE from a precomputed table, paged-KV
attention through the backend, and the LM head only on the rows whose logits are wanted. Under
tensor parallelism each rank builds its share (its heads, its MLP slice, its vocabulary rows)
and ``load_weights`` hands each layer the whole checkpoint tensor to cut its slice from.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
import torch.nn as nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.attention_backend import TorchAttnBackend
from sglang.srt.layers.embedding import LMHead, VocabEmbedding
from sglang.srt.layers.forward_batch import ForwardBatch
from sglang.srt.layers.layernorm import RMSNorm, rms_normalize
from sglang.srt.layers.linear import GateUpLinear, QKVParallelLinear, RowParallelLinear
from sglang.srt.layers.rotary_embedding import RopeBatch, RotaryEmbedding, rope_inv_freq

# checkpoint projection name -> (fused module name, shard index)
_STACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class Attention(nn.Module):
    def __init__(
        self, cfg: ModelConfig, layer_id: int, qkv_bias: bool, o_bias: bool, qk_norm: bool
    ):
        super().__init__()
        hf = cfg.hf_config
        self.layer_id = layer_id
        self.head_dim = cfg.head_dim
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, bias=qkv_bias
        )
        self.num_heads = self.qkv_proj.split.num_heads  # this rank's
        self.num_kv_heads = self.qkv_proj.split.num_kv_heads
        self.qk_size = (self.num_heads + self.num_kv_heads) * cfg.head_dim
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, o_bias)
        self.q_norm: Optional[RMSNorm] = None
        self.k_norm: Optional[RMSNorm] = None
        if qk_norm:  # Qwen3: RMSNorm over head_dim of every q and k head, before RoPE
            self.q_norm = RMSNorm(cfg.head_dim, hf.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, hf.rms_norm_eps)
        self.qk_norm_weight: Optional[torch.Tensor] = None

    def post_load(self) -> None:
        if self.q_norm is not None and self.k_norm is not None:
            # One norm over all q and k heads at once, with the per-head weights stacked.
            self.qk_norm_weight = torch.cat(
                (
                    self.q_norm.weight.expand(self.num_heads, -1),
                    self.k_norm.weight.expand(self.num_kv_heads, -1),
                )
            )

    def forward(
        self,
        x: torch.Tensor,
        rope: RopeBatch,
        fb: ForwardBatch,
        backend: TorchAttnBackend,
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        qk = qkv[:, : self.qk_size].view(t, self.num_heads + self.num_kv_heads, self.head_dim)
        if self.qk_norm_weight is not None:
            qk = self.qk_norm_weight * rms_normalize(qk, self.q_norm.eps)
        qk = rope.rotate(qk, self.num_heads, self.num_kv_heads)
        q = qk[:, : self.num_heads].view(t, -1)
        k = qk[:, self.num_heads :].view(t, -1)
        v = qkv[:, self.qk_size :]
        return self.o_proj(backend.forward(q, k, v, self.layer_id, fb))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_up_proj = GateUpLinear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x))  # gate_up_proj applies silu(gate) * up


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, arch: dict[str, bool]):
        super().__init__()
        hf = cfg.hf_config
        self.self_attn = Attention(cfg, layer_id, arch["qkv_bias"], arch["o_bias"], arch["qk_norm"])
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, arch["mlp_bias"])
        self.input_layernorm = RMSNorm(cfg.hidden_size, hf.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, hf.rms_norm_eps)

    def forward(self, h, residual, rope, fb, backend) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = h
            h = self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.self_attn(h, rope, fb, backend)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, arch: dict[str, bool]):
        super().__init__()
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, arch) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.hf_config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    @staticmethod
    def arch_options(hf: Any) -> dict[str, bool]:
        bias = bool(getattr(hf, "attention_bias", False))
        mlp_bias = bool(getattr(hf, "mlp_bias", False))
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": False, "mlp_bias": mlp_bias}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, self.arch_options(cfg.hf_config))
        tied = self.model.embed_tokens if cfg.tie_word_embeddings else None
        self.lm_head = LMHead(cfg.vocab_size, cfg.hidden_size, tied_to=tied)
        inv_freq, scaling = rope_inv_freq(cfg.hf_config, cfg.head_dim)
        max_pos = max(cfg.context_length, getattr(cfg.hf_config, "max_position_embeddings", 0))
        self.rotary = RotaryEmbedding(cfg.head_dim, max_pos, inv_freq, scaling, cfg.torch_dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        rows: Optional[torch.Tensor],
        fb: ForwardBatch,
        backend: TorchAttnBackend,
    ) -> torch.Tensor:
        """float32 logits [len(rows), vocab] for the flattened token rows ``rows`` (None: all)."""
        rope = self.rotary.lookup(positions)
        h = self.model.embed_tokens(input_ids)
        residual = None
        for layer in self.model.layers:
            h, residual = layer(h, residual, rope, fb, backend)
        if rows is not None:
            h, residual = h[rows], residual[rows]
        h, _ = self.model.norm(h, residual)
        return self.lm_head(h)

    def post_load(self) -> None:
        """After the weights are in: derived tensors, then CPU weight pre-packing."""
        for layer in self.model.layers:
            layer.self_attn.post_load()
        for module in self.modules():
            if hasattr(module, "prepack_cpu"):
                module.prepack_cpu()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.named_parameters())
        modules = dict(self.named_modules())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb" in name:
                continue
            if name == "lm_head.weight" and self.lm_head.tied:
                continue
            parts = name.split(".")
            if len(parts) >= 3 and parts[-2] in _STACKED:
                fused, shard = _STACKED[parts[-2]]
                target = ".".join(parts[:-2] + [fused])
                if target not in modules:
                    raise ValueError(f"checkpoint tensor {name!r} has no place in the model")
                modules[target].load_shard(parts[-1], shard, tensor)
                loaded.add(f"{target}.{parts[-1]}#{shard}")
                continue
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in the model")
            module, _, pname = name.rpartition(".")
            if hasattr(modules[module], "load_param"):  # cuts its tensor-parallel slice
                modules[module].load_param(pname, tensor)
                loaded.add(name)
                continue
            if params[name].shape != tensor.shape:
                shapes = f"{tuple(tensor.shape)} in the checkpoint, {tuple(params[name].shape)}"
                raise ValueError(f"{name}: shape {shapes} in the model")
            params[name].data.copy_(tensor)
            loaded.add(name)
        expected = set()
        for pname in params:
            mod = pname.rpartition(".")[0]
            shards = getattr(modules[mod], "output_sizes", None)
            expected |= {f"{pname}#{i}" for i in range(len(shards))} if shards else {pname}
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"checkpoint lacks weights for: {', '.join(missing[:8])}")
