"""Every SGLANG_* environment knob, in one place, with its default."""

from __future__ import annotations

import os


def _float(name: str, default: float) -> float:
    v = os.environ.get(name)
    return default if v in (None, "") else float(v)


def _int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return default if v in (None, "") else int(v)


def _bool(name: str, default: bool) -> bool:
    v = os.environ.get(name)
    return default if v in (None, "") else v.lower() in ("1", "true", "yes", "on")


class _Env:
    # PD disaggregation runtime (names and defaults as in SGLang)
    @property
    def bootstrap_timeout(self) -> float:
        return _float("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", 300.0)

    @property
    def waiting_timeout(self) -> float:
        return _float("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", 300.0)

    @property
    def heartbeat_interval(self) -> float:
        return max(0.2, _float("SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL", 5.0))

    @property
    def heartbeat_max_failure(self) -> int:
        return max(1, _int("SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE", 2))

    @property
    def transfer_threads(self) -> int:
        return max(1, _int("SGLANG_DISAGGREGATION_THREAD_POOL_SIZE", 4))

    @property
    def tp_staging_bytes(self) -> int:
        """PD between different TP sizes: staging buffer per KV manager (tp_staging.py); 0: off."""
        return max(0, _int("SGLANG_DISAGGREGATION_TP_STAGING_MB", 256)) << 20

    @property
    def max_transfer_batch(self) -> int:
        """Most blocks in one transfer-engine batch call (huge batches fail on Mooncake TCP)."""
        return max(1, _int("SGLANG_MOONCAKE_MAX_TRANSFER_BATCH_INDICES", 128))

    @property
    def bootstrap_fetch_attempts(self) -> int:
        """Decode: tries (one per second) to fetch a prefill's info before its requests fail."""
        return max(1, _int("SGLANG_DISAGGREGATION_BOOTSTRAP_FETCH_ATTEMPTS", 15))

    @property
    def bootstrap_secret(self) -> str:
        """Prefill: what its ranks' PUT /route must carry (X-Bootstrap-Secret). Empty (the
        default): the bootstrap server draws a random one per instance and hands it to the
        manager in its own process; set it when another process runs the bootstrap server."""
        return os.environ.get("SGLANG_DISAGGREGATION_BOOTSTRAP_SECRET", "")

    @property
    def host_ip(self) -> str:
        """The address this machine's servers advertise to peers when their --host is a
        wildcard (SGLang's SGLANG_HOST_IP, then HOST_IP); empty: found from the routes."""
        return (os.environ.get("SGLANG_HOST_IP") or os.environ.get("HOST_IP") or "").strip()

    @property
    def transfer_timeout(self) -> float:
        """Prefill: longest wait for one transfer-engine write to complete before it fails."""
        return _float("SGLANG_DISAGGREGATION_TRANSFER_TIMEOUT", 120.0)

    @property
    def nixl_backend(self) -> str:
        return os.environ.get("SGLANG_DISAGGREGATION_NIXL_BACKEND", "UCX")

    @property
    def nixl_progress_interval(self) -> float:
        """Decode: seconds between NIXL progress calls (a WRITE target needs progress)."""
        return max(1e-4, _float("SGLANG_DISAGGREGATION_NIXL_PROGRESS_INTERVAL", 0.001))

    @property
    def deferred_decode_kv_release(self) -> bool:
        """Decode: keep an abandoned request's pages until its prefill acknowledges the abort
        (its in-flight writes into them drained), or the timeout below passes."""
        return _bool("SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE", True)

    @property
    def deferred_decode_kv_release_timeout(self) -> float:
        return _float("SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_TIMEOUT", 30.0)

    @property
    def test_transfer_delay(self) -> float:
        """Test only: prefill sleeps this long before each KV write it has started (so an
        abort lands while the write is in flight)."""
        return max(0.0, _float("SGLANG_TEST_DISAGG_TRANSFER_DELAY", 0.0))

    @property
    def test_failure_prob(self) -> float:
        """Test only: the fraction of requests whose KV transfer fails (each request draws once,
        when its sender or receiver is created; the failure shows at its first poll after the
        bootstrap), on the side where it is set."""
        return _float("SGLANG_TEST_DISAGG_FAILURE_PROB", 0.0)

    @property
    def test_write_failure_prob(self) -> float:
        """Test only: the fraction of the prefill's transfer-engine writes that fail (the
        request fails on both sides; the decode is not marked dead), Mooncake and NIXL alike."""
        return min(1.0, max(0.0, _float("SGLANG_TEST_DISAGG_WRITE_FAILURE_PROB", 0.0)))

    @property
    def test_write_delay_ms(self) -> float:
        """Test only: the prefill waits this many milliseconds before each transfer-engine
        write (a slow NIC)."""
        return max(0.0, _float("SGLANG_TEST_DISAGG_WRITE_DELAY_MS", 0.0))

    @property
    def test_corrupt_metadata(self) -> tuple[str, int]:
        """Test only: ``RID_PREFIX:TP_RANK``: on that decode TP rank, the metadata row of a
        request whose rid starts with RID_PREFIX reads as another room's (a corrupted row)."""
        prefix, _, rank = os.environ.get("SGLANG_TEST_DISAGG_CORRUPT_METADATA", "").rpartition(":")
        return (prefix, int(rank)) if prefix and rank.isdigit() else ("", -1)

    @property
    def dead_scheduler_exit_delay(self) -> float:
        """Once a scheduler process (any rank) is gone, the HTTP server answers 503 this many
        seconds, then exits with code 1 (as SGLang's server dies with its scheduler); < 0:
        it keeps answering 503 until stopped."""
        return _float("SGLANG_DEAD_SCHEDULER_EXIT_DELAY", 5.0)

    # HTTP server health (names and defaults as in SGLang)
    @property
    def health_check_timeout(self) -> float:
        """/health: seconds the scheduler gets to answer before the server reports 503."""
        return max(0.1, _float("SGLANG_HEALTH_CHECK_TIMEOUT", 20.0))

    @property
    def test_step_delay(self) -> float:
        """Test only: the scheduler sleeps this long before each forward step (so a long
        generation outlasts a loaded machine's reaction to a client hanging up)."""
        return max(0.0, _float("SGLANG_TEST_STEP_DELAY", 0.0))

    @property
    def test_block_scheduler_rid(self) -> str:
        """Test only: the scheduler hangs in the forward step of the request with this rid (so
        a test can see /health go 503 and the --watchdog-timeout fire)."""
        return os.environ.get("SGLANG_TEST_BLOCK_SCHEDULER_RID", "")

    # engine
    @property
    def num_threads(self) -> int:
        """torch CPU threads of a scheduler (0: torch's default)."""
        return _int("SGLANG_CPU_THREADS", 0)

    @property
    def cpu_kernels(self) -> bool:
        """bf16 CPU kernels (layers/cpu_kernels.c); off: torch ops only."""
        return _bool("SGLANG_CPU_KERNELS", True)

    @property
    def cpu_kernel_dir(self) -> str:
        """Where the CPU kernels are compiled to."""
        default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                               "sglang")
        return os.environ.get("SGLANG_CPU_KERNEL_DIR") or default

    @property
    def cpu_kernel_isa(self) -> str:
        """Which build of the CPU kernels to load: auto (the best this CPU runs), avx512, avx2 or
        portable (one this CPU lacks is refused: torch ops)."""
        return (os.environ.get("SGLANG_CPU_KERNEL_ISA") or "auto").lower()

    @property
    def cpu_gemm(self) -> str:
        """bf16 linear layers on CPU: auto (oneDNN's packed bf16 where the CPU has a native bf16
        path, else the panels of layers/cpu_gemm.c), onednn, panel (only that one) or torch."""
        return (os.environ.get("SGLANG_CPU_GEMM") or "auto").lower()


envs = _Env()
