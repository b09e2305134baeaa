"""mini_lb, the prefill/decode load balancer (``python -m sglang.srt.disaggregation.mini_lb``).

- ``args``: the command line.
- ``pool``: the servers and the round-robin choice of a (prefill, decode) pair.
- ``bodies``: bootstrap and rid injection, input-logprob merging, SSE parsing (pure functions).
- ``proxy``: one request sent to both servers at once, with failure handling.
- ``app``: the aiohttp routes.
"""
