"""Node.js release data (reference §5): the release index and the release schedule."""

from __future__ import annotations

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
        # One after the other: with two at once, the first failure would leave the other's socket to the GC.
        schedule: dict[str, Any] = api.parse(await api.get(schedule_url))
        return schedule, (await api.get(index_url)).text
    finally:
        await api.close()
