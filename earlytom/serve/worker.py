"""One model, many connections: requests run one at a time on a single worker thread (the pipeline is not
re-entrant), wait in a bounded queue, and never block the event loop."""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """More requests are waiting than --max-queue allows."""


class Worker:
    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue = {max_queue}: allow 0 or more waiting requests")
        self.max_queue = max_queue
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="earlytom-model")
        self.pending = 0  # running + waiting; touched only on the event loop's thread

    @property
    def waiting(self) -> int:
        return max(self.pending - 1, 0)

    def submit(self, job: Callable[[], T]) -> "asyncio.Future[T]":
        """Run `job` on the model thread after the requests before it; QueueFull if the queue is full."""
        if self.pending > self.max_queue:
            raise QueueFull(f"the model is busy and {self.waiting} requests wait for it (--max-queue {self.max_queue})")
        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, job)
        future.add_done_callback(self.done)
        return future

    def done(self, _future: asyncio.Future) -> None:
        self.pending -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
