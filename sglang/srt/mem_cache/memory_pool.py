"""The paged KV pool: one contiguous buffer that a transfer engine can register and write into.

Layout: ``buffer[kv, layer, page, token_in_page, kv_head, head_dim]`` with ``kv`` 0 for K and 1
for V. A token's slot is ``page * page_size + token_in_page``. One page of one layer's K (or V) is
contiguous (``item_len`` bytes), and consecutive pages are adjacent, so a run of consecutive pages
moves as one block.
The storage dtype may be narrower than the model's (``--kv-cache-dtype``, see ``kv_dtype``):
the transfer engine moves the stored bytes, so ``item_len`` counts storage bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang.srt.mem_cache.kv_dtype import KVCodec, kv_dtype_name


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem


class KVPool:
    def __init__(self, layout: KVLayout, num_pages: int, device: str | torch.device = "cpu"):
        self.layout = layout
        self.num_pages = num_pages
        self.page_size = layout.page_size
        self.num_layers = layout.num_layers
        self.size = num_pages * layout.page_size  # token slots
        self.dtype = layout.dtype
        self.device = torch.device(device)
        shape = (2, layout.num_layers, num_pages, layout.page_size, layout.num_kv_heads,
                 layout.head_dim)
        self.buffer = torch.zeros(
            shape,
            dtype=layout.dtype,
            device=self.device,
        )
        # Token-slot views: [slots, kv_heads, head_dim] per layer.
        self._k = [self.buffer[0, i].view(self.size, layout.num_kv_heads, layout.head_dim)
                   for i in range(layout.num_layers)]
        self._v = [self.buffer[1, i].view(self.size, layout.num_kv_heads, layout.head_dim)
                   for i in range(layout.num_layers)]

    def k_buffer(self, layer: int) -> torch.Tensor:
        return self._k[layer]

    def v_buffer(self, layer: int) -> torch.Tensor:
        return self._v[layer]

    @property
    def dtype_name(self) -> str:
        """The storage dtype as ``--kv-cache-dtype`` spells it (``fp8_e4m3``, ``bfloat16``)."""
        return kv_dtype_name(self.dtype)

    def get_kv(self, layer: int, loc: torch.Tensor, dtype: torch.dtype):
        """K/V of token slots ``loc`` as ``dtype`` (fp8 pages widened)."""
        codec = KVCodec(self.dtype, dtype)
        return (codec.decode(codec.view(self._k[layer])[loc]),
                codec.decode(codec.view(self._v[layer])[loc]))

    # ---- what a transfer engine needs -------------------------------------------------
    @property
    def item_len(self) -> int:
        """Bytes of one page of one layer's K (or V)."""
        return self.buffer[0, 0, 0].numel() * self.buffer.element_size()

    def data_ptrs(self) -> list[int]:
        """Base address of each layer's K region, then each layer's V region."""
        return [self.buffer[kv, i].data_ptr() for kv in (0, 1) for i in range(self.num_layers)]

    def data_lens(self) -> list[int]:
        return [self.num_pages * self.item_len] * (2 * self.num_layers)

    def total_bytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()
