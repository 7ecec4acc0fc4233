"""Node.js release data (reference §5): the release index and the release schedule."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from worker.http import DEFAULT_TIMEOUT, AsyncApi

NODE_INDEX = "https://nodejs.org/dist/index.json"
NODE_SCHEDULE = "https://raw.githubusercontent.com/nodejs/Release/main/schedule.json"


async def release_data(index_url: str, schedule_url: str,
                       timeout: timedelta = DEFAULT_TIMEOUT) -> tuple[dict[str, Any], str]:  # fmt: skip
    """The schedule (parsed) and the index (as text: index.json or index.tab); raises HttpError."""
    api = AsyncApi("Node.js release data", "", timeout=timeout)
    try:
        # Both at once, each to its end (return_exceptions), so no failure leaves the other's socket to the GC.
        schedule, index = await asyncio.gather(api.get(schedule_url), api.get(index_url), return_exceptions=True)
    finally:
        await api.close()
    if isinstance(schedule, BaseException):
        raise schedule
    if isinstance(index, BaseException):
        raise index
    parsed: dict[str, Any] = api.parse(schedule)
    return parsed, index.text
