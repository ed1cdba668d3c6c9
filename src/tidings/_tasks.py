"""Stopping background tasks for good."""

from __future__ import annotations

import asyncio

__all__ = ["stop_task"]


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it is done.

    Cancels again while it is not: on Python 3.11 ``asyncio.wait_for`` (used by
    redis-py, among others) can swallow a cancellation, leaving a loop running.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled():
        task.exception()  # retrieved: a failed task is stopped too, without a warning
