"""Entry point of ``python -m sglang.bench_serving``."""

import sys

from sglang.bench_serving.args import parse_args
from sglang.bench_serving.runner import run_benchmark


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run_benchmark(args)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"bench_serving: error: {e}", file=sys.stderr)
        return 1
    return 0 if result["completed"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
