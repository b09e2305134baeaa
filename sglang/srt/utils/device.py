"""The one place that turns ``--device`` (cpu | cuda | unset) into the device a process uses."""

from __future__ import annotations

from typing import Optional

import torch


def resolve_device(device: Optional[str] = None) -> str:
    """"cpu" or "cuda": as asked, or, when unset, cuda if a GPU is visible, else cpu."""
    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
        return device
    if device != "cpu":
        raise ValueError(f"unsupported device {device!r}; use cpu or cuda")
    return device


def torch_device(device: Optional[str], gpu_id: int = 0) -> torch.device:
    """The torch device for ``device`` (resolved as above) on GPU ``gpu_id``."""
    kind = resolve_device(device)
    return torch.device("cuda", gpu_id) if kind == "cuda" else torch.device("cpu")
