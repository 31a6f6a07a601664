"""Bidirectional streams (ClassifyStream, ModelStreamInfer): every request of a stream runs as its own
task, so requests on one stream can share a batch, and each answer is written as soon as it is ready.

A request's own failure is the API's to answer in-stream (each API has its own error format); a failure of
the stream itself (an item that does not deserialize) ends the RPC through the error boundary, and a stream
the client cancelled just ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")


async def answer_concurrently(
    requests: AsyncIterator[Request], answer: Callable[[Request, int], Awaitable[Answer]]
) -> AsyncIterator[Answer]:
    """Yield `answer(request, n)` for the n-th request of the stream, in order of completion. `answer` must
    not raise for a failed request: it returns that request's error answer."""
    answers: asyncio.Queue[Answer | None] = asyncio.Queue()
    running: set[asyncio.Task[None]] = set()

    async def one(request: Request, n: int) -> None:
        answers.put_nowait(await answer(request, n))

    async def read() -> None:
        try:
            n = 0
            async for request in requests:
                task = asyncio.create_task(one(request, n))
                n += 1
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*running, return_exceptions=True)
        finally:
            answers.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (item := await answers.get()) is not None:
            yield item
        await asyncio.wait([reader])
        if not reader.cancelled() and (error := reader.exception()) is not None:
            raise error  # the request stream itself broke: the boundary answers it
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()
