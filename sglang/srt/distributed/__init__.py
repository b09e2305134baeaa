"""Tensor parallelism over ``torch.distributed`` (gloo on CPU, NCCL on CUDA): the process group,
this rank's place in it, the collectives the TP layers use, and how attention heads split."""

from sglang.srt.distributed.parallel_state import (
    HeadSplit,
    broadcast_objects,
    destroy_tp_group,
    gather_objects,
    get_tp_rank,
    get_tp_size,
    head_split,
    init_tp_group,
    tp_all_gather,
    tp_all_reduce,
    tp_min_int,
    tp_min_ints,
)

__all__ = [
    "HeadSplit",
    "broadcast_objects",
    "destroy_tp_group",
    "gather_objects",
    "get_tp_rank",
    "get_tp_size",
    "head_split",
    "init_tp_group",
    "tp_all_gather",
    "tp_all_reduce",
    "tp_min_int",
    "tp_min_ints",
]
