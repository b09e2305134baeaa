"""mini_lb, the prefill/decode load balancer (``python -m sglang.srt.disaggregation.mini_lb``).

- ``args``: the command line.
- ``pool``: the servers, their requests in flight, the choice of a (prefill, decode) pair.
- ``policy``: ``--policy`` random, round_robin, power_of_two, cache_aware (sglang-router's names).
- ``bodies``: bootstrap and rid injection, input-logprob merging, SSE parsing (pure functions).
- ``health``: health checks and circuit breakers (which servers are in rotation).
- ``legs``: plain calls, aborts, the job and its errors; ``proxy``: one attempt sent to both
  servers at once, with failure handling; ``route``: pair choice and one retry.
- ``app``: the aiohttp routes.
"""
