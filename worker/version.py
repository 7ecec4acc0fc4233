"""opskeeper's own version, from the installed distribution."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """opskeeper's installed version."""
    try:
        return metadata.version("opskeeper")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"
