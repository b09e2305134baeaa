"""sglang.Engine: the same engine in-process, without HTTP."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Optional, Union

from sglang.srt.managers.io_struct import GenerateReqInput
from sglang.srt.server_args import ServerArgs


class Engine:
    """``Engine(model_path=..., **server_args)``; ``generate(prompt, sampling_params)``."""

    def __init__(self, **kwargs: Any):
        from sglang.srt.entrypoints.launcher import launch_engine

        self.server_args = ServerArgs(**kwargs)
        self.tokenizer_manager, self._handle = launch_engine(self.server_args)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(
        self,
        prompt: Optional[Union[str, list[str]]] = None,
        sampling_params: Optional[Union[dict, list[dict]]] = None,
        input_ids: Optional[Union[list[int], list[list[int]]]] = None,
        return_logprob: Union[bool, list[bool]] = False,
        logprob_start_len: Union[int, list[int]] = -1,
        top_logprobs_num: Union[int, list[int]] = 0,
    ) -> Union[dict, list[dict]]:
        obj = GenerateReqInput(
            text=prompt, input_ids=input_ids, sampling_params=sampling_params,
            return_logprob=return_logprob, logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
        )
        items = obj.normalize()
        tm = self.tokenizer_manager

        async def one(it: GenerateReqInput) -> dict:
            out = None
            async for out in tm.generate_request(it, None, tokenized=tm.validator.validate(it)):
                pass
            return out

        async def run_all() -> list[dict]:
            return list(await asyncio.gather(*[one(it) for it in items]))

        outs = self._run(run_all())
        return outs if obj.is_batch else outs[0]

    def get_server_info(self) -> dict:
        return self._run(self.tokenizer_manager.get_server_info())

    def flush_cache(self) -> bool:
        return self._run(self.tokenizer_manager.flush_cache())

    def shutdown(self) -> None:
        self._handle.shutdown()

        async def _cancel() -> None:
            task = self.tokenizer_manager._loop_task
            if task is not None:
                task.cancel()

        self._run(_cancel())
        self._loop.call_soon_threadsafe(self._loop.stop)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
