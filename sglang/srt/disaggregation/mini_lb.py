"""Entry point: ``python -m sglang.srt.disaggregation.mini_lb --prefill URL --decode URL``.

The balancer lives in the ``lb`` package next to this file.
"""

from __future__ import annotations

from sglang.srt.disaggregation.lb.app import build_app, main
from sglang.srt.disaggregation.lb.args import LBArgs, parse_args

__all__ = ["LBArgs", "build_app", "main", "parse_args"]

if __name__ == "__main__":
    main()
