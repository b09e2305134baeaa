"""Old home of the forward-pass input: ``ForwardBatch`` now lives in ``sglang.srt.layers``
(layers and models read it) and ``ForwardMode`` in the bottom layer ``sglang.srt.base_types``.
Re-exported here for code not yet switched."""

from sglang.srt.base_types import ForwardMode
from sglang.srt.layers.forward_batch import ForwardBatch

__all__ = ["ForwardBatch", "ForwardMode"]
