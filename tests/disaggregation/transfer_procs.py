"""A prefill or decode KV manager in its own process (spawned), driven from the test over a pipe.

Each process holds a real KVPool and MetadataBuffers and a real transfer engine; the test calls
methods of ``Node`` remotely: ``node.call("send", room, pages, True)``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import traceback
from typing import Any, Iterator, Optional

import numpy as np

LAYOUT = {"num_layers": 4, "num_kv_heads": 2, "head_dim": 16}


class Node:
    """Lives in the child process."""

    def setup(
        self,
        backend: str,
        mode: str,
        bootstrap_port: int,
        page_size: int = 4,
        dtype: str = "bfloat16",
        num_pages: int = 64,
        meta_rows: int = 8,
        env: Optional[dict[str, str]] = None,
        layout: Optional[dict[str, int]] = None,
        tp: Optional[dict[str, Any]] = None,
        device: str = "cpu",
    ) -> dict[str, Any]:
        """``tp``: this node is rank ``rank`` of ``size`` of a server of a model with
        ``num_heads`` attention heads (``layout`` gives the model's total KV heads; the pool
        holds this rank's share); a prefill rank > 0 registers with rank 0's bootstrap server
        using ``secret``."""
        os.environ.update(env or {})
        import torch

        from sglang.srt.disaggregation.base.conn import KVArgs
        from sglang.srt.disaggregation.common.metadata_buffers import MetadataBuffers
        from sglang.srt.disaggregation.utils import get_kv_class
        from sglang.srt.mem_cache.memory_pool import KVLayout, KVPool

        from sglang.srt.distributed.parallel_state import head_split

        shape = dict(layout or LAYOUT)
        tp = dict(tp or {})
        size, rank = tp.get("size", 1), tp.get("rank", 0)
        num_heads = tp.get("num_heads", shape["num_kv_heads"])
        local = head_split(num_heads, shape["num_kv_heads"], size, rank).num_kv_heads
        self.backend = backend
        self.pool = KVPool(KVLayout(**{**shape, "num_kv_heads": local}, page_size=page_size,
                                    dtype=getattr(torch, dtype)), num_pages, device)
        self.meta = MetadataBuffers(meta_rows)
        ptrs, lens, item_lens = self.meta.ptrs_lens_item_lens()
        args = KVArgs(
            kv_data_ptrs=self.pool.data_ptrs(),
            kv_buffer=self.pool.buffer,
            device=str(self.pool.buffer.device.type),
            kv_data_lens=self.pool.data_lens(),
            kv_item_len=self.pool.item_len,
            aux_data_ptrs=ptrs,
            aux_data_lens=lens,
            aux_item_lens=item_lens,
            page_size=page_size,
            kv_dtype=str(self.pool.dtype),
            model_shape=shape,
            bootstrap_port=bootstrap_port,
            extra={"bootstrap_host": "127.0.0.1"},
            engine_rank=rank,
            tp_size=size,
            num_heads=num_heads,
        )
        if rank > 0 and mode == "prefill":
            args.extra.update(start_bootstrap_server=False, bootstrap_secret=tp["secret"])
        self.mgr = get_kv_class(backend, "manager")(args, mode)
        self.cls = get_kv_class(backend, "sender" if mode == "prefill" else "receiver")
        self.conns: dict[int, Any] = {}
        return self.mgr.describe()

    def set_env(self, env: dict[str, Optional[str]]) -> None:
        """Knobs are read when used, so tests can change them on a running manager."""
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def fill_random(self, seed: int) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        raw = self.pool.buffer.view(torch.uint8)
        raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8, generator=g))

    def zero(self) -> None:
        self.pool.buffer.zero_()
        for i in range(self.meta.size):
            self.meta.reset(i)

    def pool_bytes(self) -> bytes:
        import torch

        return self.pool.buffer.view(torch.uint8).cpu().numpy().tobytes()

    def open(self, room: int, bootstrap_addr: str) -> None:
        self.conns[room] = self.cls(self.mgr, bootstrap_addr, room)

    def poll(self, room: int) -> int:
        return int(self.conns[room].poll())

    def poll_many(self, rooms: list[int], times: int) -> list[int]:
        """Poll each room ``times`` times; the last statuses."""
        out = []
        for room in rooms:
            for _ in range(times):
                st = int(self.conns[room].poll())
            out.append(st)
        return out

    def open_extra(self, room: int, bootstrap_addr: str) -> tuple[int, str]:
        """Open a second conn for ``room`` (as a second request with that room would), poll and
        clear it at once; its (status, failure reason). ``self.conns[room]`` is untouched."""
        conn = self.cls(self.mgr, bootstrap_addr, room)
        st = int(conn.poll())
        reason = str(conn.failure_exception()) if st == 0 else ""
        conn.abort()
        conn.clear()
        return st, reason

    def failed_peers(self) -> list[str]:
        decodes = self.mgr.prefill.decodes
        return [p for p in list(decodes.peers) if p in decodes.failed]

    def wait(self, room: int, states: list[int], timeout: float = 20.0) -> tuple[int, str]:
        """Poll until the status is one of ``states``; (status, failure reason)."""
        conn = self.conns[room]
        deadline = time.monotonic() + timeout
        while True:
            st = int(conn.poll())
            if st in states or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        return st, (str(conn.failure_exception()) if st == 0 else "")

    def init(self, room: int, num_pages: int, aux_index: int) -> None:
        self.conns[room].init(num_pages, aux_index)

    def send(self, room: int, pages: list[int], last: bool) -> None:
        self.conns[room].send(np.asarray(pages, dtype=np.int32), last)

    def send_metadata(self, room: int, pages: list[int], aux_index: int) -> None:
        self.conns[room].send_metadata(np.asarray(pages, dtype=np.int32), aux_index)

    def set_aux(self, idx: int, room: int, first_token: int, cached: int,
                logprob: Optional[float], top: list[tuple[float, int]]) -> None:
        self.meta.set_buf(idx, room, first_token, cached, logprob, top)

    def get_aux(self, idx: int) -> dict[str, Any]:
        return self.meta.get_buf(idx)

    def abort(self, room: int) -> None:
        self.conns[room].abort()

    def clear(self, room: int) -> None:
        self.conns.pop(room).clear()

    def drained(self, room: int) -> bool:
        return self.conns[room].writes_drained()

    def wait_drained(self, room: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.conns[room].writes_drained() and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.conns[room].writes_drained()

    def secret(self) -> str:
        return self.mgr.bootstrap_server.secret

    def room_counts(self) -> dict[str, int]:
        """Rooms (and prefill destinations) the manager still tracks."""
        side = self.mgr.prefill or self.mgr.decode
        out = {"rooms": len(side.rooms._rooms)}
        if self.mgr.prefill is not None:
            out["infos"] = len(self.mgr.prefill.infos)
        return out

    def endpoint(self) -> str:
        """This manager's control-plane (ZMQ PULL) endpoint."""
        return self.mgr.endpoint

    def control_alive(self) -> bool:
        return self.mgr.control._thread.is_alive()

    def metric(self, room: int) -> dict[str, Any]:
        return self.conns[room].get_transfer_metric()

    def shutdown(self) -> None:
        self.mgr.shutdown()


def _serve(conn: Any) -> None:
    node = Node()
    while True:
        try:
            method, args, kwargs = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", getattr(node, method)(*args, **kwargs)))
        except Exception:
            conn.send(("err", traceback.format_exc()))
        if method == "shutdown":
            return


class Proc:
    """Test-side handle of one spawned Node."""

    def __init__(self, name: str):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), name=name, daemon=True)
        self.proc.start()
        child.close()

    def call(self, method: str, *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
        self.start(method, *args, **kwargs)
        return self.result(method, timeout)

    def start(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._conn.send((method, args, kwargs))

    def result(self, method: str, timeout: float = 30.0) -> Any:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"{self.proc.name}.{method} gave no answer in {timeout}s")
        status, value = self._conn.recv()
        if status == "err":
            raise RuntimeError(f"{self.proc.name}.{method} failed:\n{value}")
        return value

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)

    def close(self) -> None:
        """Shut the manager down cleanly, then end the process without waiting for the
        interpreter's (slow) teardown."""
        if self.proc.is_alive():
            try:
                self.call("shutdown", timeout=10)
            except Exception:
                pass
        self.kill()


@contextlib.contextmanager
def pd_pair(
    backend: str,
    prefill_kw: Optional[dict[str, Any]] = None,
    decode_kw: Optional[dict[str, Any]] = None,
    **common: Any,
) -> Iterator[tuple[Proc, Proc, str]]:
    """A prefill and a decode process (set up in parallel); yields (prefill, decode, addr)."""
    from sglang.srt.disaggregation.common.utils import free_port

    port = free_port()
    procs: list[Proc] = []
    try:
        p, d = Proc(f"prefill-{backend}"), Proc(f"decode-{backend}")
        procs += [p, d]
        p.start("setup", backend, "prefill", port, **{**common, **(prefill_kw or {})})
        d.start("setup", backend, "decode", port, **{**common, **(decode_kw or {})})
        p.result("setup", timeout=60)
        d.result("setup", timeout=60)
        yield p, d, f"127.0.0.1:{port}"
    finally:
        for proc in procs:
            proc.close()


def new_proc(backend: str, mode: str, port: int, **kw: Any) -> Proc:
    proc = Proc(f"{mode}-{backend}")
    try:
        proc.call("setup", backend, mode, port, timeout=60, **kw)
    except Exception:
        proc.kill()
        raise
    return proc
