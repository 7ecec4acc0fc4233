"""What every storage promises: the objects it lists, a streaming upload, the interface itself.

Apart from `open_storage` so that the local and S3 stores import these without importing the
package that picks between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class StoredObject:
    """One object in storage."""

    key: str
    size: int
    modified: datetime


class Upload(Protocol):
    """A streaming write that becomes visible only on commit; abort leaves nothing behind."""

    def write(self, data: bytes) -> int: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class Storage(Protocol):
    """Backup storage: keys are '/'-separated paths below the configured prefix."""

    display: str
    """Where this is, for messages (no credentials)."""

    def upload(self, key: str, estimate: Callable[[], int | None] | None = None) -> Upload:
        """A streaming write; `estimate()` (the likely size in bytes) lets S3 size a large archive's parts."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def open(self, key: str) -> BinaryIO: ...

    def objects(self, prefix: str = "") -> list[StoredObject]: ...

    def delete(self, key: str) -> None: ...

    def abort_abandoned(self, prefix: str) -> list[str]:
        """Clean up uploads under `prefix` that a crashed run left unfinished; their keys."""
        ...

    def exists(self, key: str) -> bool: ...
