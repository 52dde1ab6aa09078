"""The bridge between the event loop and the engine thread.

Owns: `EngineClient`. Imports: anyio, stdlib, engine. Used by: server.routes, server.app.

One thread owns the `Engine` (DESIGN.md): handlers post add/abort commands to a thread-safe
inbox; the thread drains it, runs one step, and hands the step's outputs back to the event loop
through a blocking portal without waiting for them to be handled (the next step starts at
once); in the event loop each request's memory stream receives its own. When idle the thread
blocks on the inbox. A fault inside a step fails only the requests of that step; the
thread keeps serving.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections.abc import AsyncIterator

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from engine import Engine, EngineStats, Grammar, RequestOutput, SamplingParams

logger = logging.getLogger(__name__)


class EngineFault(RuntimeError):
    """The engine failed while computing this request."""


class EngineClient:
    def __init__(self, engine: Engine, max_queue: int = 64):
        self.engine = engine
        self.max_queue = max_queue
        self.stats: EngineStats = engine.stats()  # as the engine thread last reported it
        # Requests sent to the inbox / taken from it: each written by one thread only.
        self._sent = 0
        self._taken = 0
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, MemoryObjectSendStream] = {}
        self._step_observers: list = []
        self._portal: anyio.from_thread.BlockingPortal | None = None

    def on_step(self, observer) -> None:
        """Call observer(seconds, n_tokens) after each step, in the event loop (metrics)."""
        self._step_observers.append(observer)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the engine: queued in it, or still in the inbox."""
        return self.stats.waiting + self._sent - self._taken

    @property
    def full(self) -> bool:
        return self.queue_depth >= self.max_queue

    async def run(self) -> None:
        """Run the engine thread until cancelled; the thread then finishes its step and stops."""
        try:
            async with anyio.from_thread.BlockingPortal() as self._portal:
                await anyio.to_thread.run_sync(self._loop, abandon_on_cancel=True,
                                               limiter=anyio.CapacityLimiter(1))
        finally:
            self._inbox.put(("stop",))

    async def generate(self, request_id: str, prompts: list[list[int]], params: SamplingParams,
                       n: int = 1, grammar: Grammar | None = None) -> AsyncIterator[RequestOutput]:
        """Outputs of every choice of every prompt, step by step; prompt i runs in the engine as
        request `{request_id}#{i}`, constrained by a fork of `grammar` if one is given. Leaving
        early (the client went away, every choice met a stop string) aborts what is left in the
        engine before its next step. Close it with `contextlib.aclosing` so that happens at once."""
        send, receive = anyio.create_memory_object_stream(math.inf)
        ids = [f"{request_id}#{i}" for i in range(len(prompts))]
        for i, (rid, prompt) in enumerate(zip(ids, prompts)):
            self._streams[rid] = send
            self._sent += 1
            own = grammar if i == 0 or grammar is None else grammar.fork()
            self._inbox.put(("add", rid, prompt, params, n, own))
        left = {rid: n for rid in ids}
        try:
            async with receive:
                async for item in receive:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if item.finished:
                        left[item.request_id] -= 1
                        if not any(left.values()):
                            return
        finally:
            send.close()
            for rid in ids:
                self._streams.pop(rid, None)
                if left[rid]:
                    self._inbox.put(("abort", rid))

    # ------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        engine = self.engine
        while True:
            if not self._drain(block=not engine.has_unfinished):
                return
            if not engine.has_unfinished:
                continue
            start = time.perf_counter()
            try:
                outputs = engine.step()
            except Exception as e:  # noqa: BLE001 - a fault fails this step's requests only
                logger.exception("engine step failed")
                outputs = self._fail_all(e)
            elapsed = time.perf_counter() - start
            self._report()
            if not self._hand_over(outputs, elapsed, self.stats.last_step_tokens):
                return

    def _hand_over(self, outputs: list, elapsed: float, n_tokens: int = 0) -> bool:
        """Queue the step's outputs for the event loop; False once it is gone (shutdown)."""
        try:
            self._portal.start_task_soon(self._deliver_soon, outputs, elapsed, n_tokens)
            return True
        except RuntimeError:
            return False

    async def _deliver_soon(self, outputs: list, elapsed: float, n_tokens: int) -> None:
        self._deliver(outputs, elapsed, n_tokens)  # no await: deliveries run in step order

    def _drain(self, block: bool) -> bool:
        """Apply queued commands; False when told to stop."""
        while True:
            try:
                cmd = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            except queue.Empty:
                if block:
                    continue
                return True
            block = False
            if cmd[0] == "stop":
                return False
            if cmd[0] == "add":
                _, rid, prompt, params, n, grammar = cmd
                self._taken += 1
                try:
                    self.engine.add_request(rid, prompt, params, n, grammar)
                except ValueError as e:
                    if not self._hand_over([(rid, EngineFault(str(e)))], 0.0):
                        return False
            elif cmd[0] == "abort":
                self.engine.abort(cmd[1])
            self._report()

    def _fail_all(self, error: Exception) -> list:
        ids = self.engine.request_ids()
        for rid in ids:
            self.engine.abort(rid)
        return [(rid, EngineFault(f"engine fault: {type(error).__name__}")) for rid in ids]

    def _report(self) -> None:
        self.stats = self.engine.stats()  # one immutable snapshot, replaced whole

    # ------------------------------------------------------------ event loop side

    def _deliver(self, outputs: list, step_seconds: float, n_tokens: int) -> None:
        if step_seconds:
            for observer in self._step_observers:
                observer(step_seconds, n_tokens)
        for out in outputs:
            rid, item = (out.request_id, out) if isinstance(out, RequestOutput) else out
            stream = self._streams.get(rid)
            if stream is not None:
                try:
                    stream.send_nowait(item)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # its reader is gone; its generate() is aborting the request
