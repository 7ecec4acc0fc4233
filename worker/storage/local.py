"""Backups in a local directory: written as `.partial` files and renamed into place on commit."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from worker.storage.model import StoredObject


class LocalUpload:
    """A file that appears under its name only when committed."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        # Its own partial file: two writers of one key at once (two drills marking the same backup verified)
        # must not rename each other's file away; the last to commit wins, as on S3.
        self._partial = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
        self._file = self._partial.open("wb")

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            raise self._named(exc) from None

    def commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            raise self._named(exc) from None
        self._partial.replace(self._path)

    def _named(self, exc: OSError) -> OSError:
        """A write's error (a full disk: ENOSPC) names the file and the folder, which the OS's own does not."""
        if exc.filename:
            return exc
        return OSError(exc.errno, f"{exc.strerror} (writing {self._path.name} in {self._path.parent})",
                       str(self._partial))  # fmt: skip

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._partial.unlink()


class LocalStorage:
    """A directory tree; keys are relative paths."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.display = f"file://{self.root.resolve()}/"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key {key!r} points outside {self.root}")
        return path

    def upload(self, key: str, estimate: Callable[[], int | None] | None = None) -> LocalUpload:
        return LocalUpload(self._path(key))

    def put(self, key: str, data: bytes) -> None:
        upload = self.upload(key)
        upload.write(data)
        upload.commit()

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def objects(self, prefix: str = "") -> list[StoredObject]:
        if not self.root.exists():
            return []
        found = []
        for path in self.root.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not key.endswith(".partial"):
                st = path.stat()
                found.append(StoredObject(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return sorted(found, key=lambda o: o.key)

    def abort_abandoned(self, prefix: str) -> list[str]:
        """Remove `.partial` files under `prefix` left by a run that died."""
        gone = []
        if self.root.exists():
            for path in self.root.rglob("*.partial"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    path.unlink(missing_ok=True)
                    gone.append(key)
        return gone

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()
