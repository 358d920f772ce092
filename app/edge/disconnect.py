"""Work that stops when its client leaves: the request's own task awaits the work, one watcher
task listens for the disconnect and cancels it (its queued rows are dropped)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGone(Exception):
    pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it (its queued rows
    are dropped) and raise ClientGone. One watcher task per request, nothing else."""
    task = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 - e.g. a GET's body over the limit: stop watching, the answer goes on
            return
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            if hasattr(task, "uncancel"):  # Python >= 3.11: this task goes on, to answer 499
                task.uncancel()
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()
