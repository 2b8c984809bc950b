"""One asyncio event loop per process, run by a daemon thread, for the streaming backends.

vLLM's ``AsyncLLM`` and an ``AsyncOpenAI`` client belong to the loop they were first used on. Every shard task of
a process (each a thread of the task runner) hands its rows to this one loop, so the rows of all shards reach
one engine together, with no lock between them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

_LOOP: asyncio.AbstractEventLoop | None = None
_THREAD: threading.Thread | None = None
_LOCK = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's streaming loop, started on first use."""
    global _LOOP, _THREAD
    with _LOCK:
        if _LOOP is None or _LOOP.is_closed() or _THREAD is None or not _THREAD.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="evol-streaming-loop", daemon=True)
            thread.start()
            _LOOP, _THREAD = loop, thread
        return _LOOP


def on_background_loop() -> bool:
    """Whether the caller runs on the streaming loop's thread (where blocking on it would deadlock)."""
    return _THREAD is not None and threading.current_thread() is _THREAD


def run_on_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the process's streaming loop and wait for its result, from any other thread."""
    if on_background_loop():
        coro.close()
        raise RuntimeError("run_on_loop called from the streaming loop itself: await the coroutine instead")
    return asyncio.run_coroutine_threadsafe(coro, background_loop()).result()


def gather_on_loop(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` together on the process's streaming loop and wait for their results, in order."""
    async def together() -> list[T]:
        return list(await asyncio.gather(*coros))

    return run_on_loop(together())
