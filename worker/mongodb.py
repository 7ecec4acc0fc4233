"""Connecting to the operator's MongoDB (backups, drills, restores), and saying in one sentence why it failed.

pymongo lets a keyword argument override the same option in the URI; an operator who wrote
`serverSelectionTimeoutMS=2000` in the URI means it, so our defaults apply only where the URI is
silent. pymongo's server-selection error carries the whole topology description (hundreds of
characters of `<TopologyDescription ...>`); a run's summary and a terminal get the hosts and the
reason instead.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator

#: Defaults for every client we open: fail in 10 s when no server answers, not pymongo's 30.
DEFAULTS = {"serverSelectionTimeoutMS": 10_000}


SCHEMES = ("mongodb://", "mongodb+srv://")


def check_uri(uri: str, where: str = "a MongoDB URI") -> str:
    """`uri` if it is a MongoDB connection string; else ValueError naming the scheme it has (never the rest, which
    may hold a password). `mongdb://host/db` is a typo to catch at `validate`, not at 3 a.m."""
    if uri.startswith(SCHEMES):
        return uri
    scheme = uri.split("://", 1)[0] + "://" if "://" in uri else None
    got = f"it starts with {scheme!r}" if scheme else "it has no scheme"
    raise ValueError(f"{where} must start with mongodb:// or mongodb+srv://; {got}")


#: A MongoDB URI in a job's options: checked when the schedule is loaded.
MongoUri = Annotated[str, AfterValidator(check_uri)]


def uri_options(uri: str) -> set[str]:
    """The option names a MongoDB URI sets, lower-cased (MongoDB's options are case-insensitive)."""
    return {key.lower() for key, _ in parse_qsl(urlsplit(uri).query, keep_blank_values=True)}


def connect(uri: str, appname: str, **options: Any) -> Any:
    """A MongoClient for `uri`: `options` and `DEFAULTS` apply where the URI does not set the same option."""
    from pymongo import MongoClient

    given = uri_options(uri)
    chosen = {k: v for k, v in {**DEFAULTS, **options}.items() if k.lower() not in given}
    return MongoClient(uri, appname=appname, **chosen)


_HOST_ERROR = re.compile(r"(?P<host>[^\s,()]+:\d+): (?:\[Errno [-\d]+\] )?(?P<reason>[^(]+?)\s*\(configured timeouts")


def unreachable(exc: BaseException) -> str | None:
    """`cannot reach HOST[, HOST]: reason (no answer within N s)` for pymongo's server-selection and connection
    errors; None for any other error."""
    from pymongo.errors import ConnectionFailure

    if not isinstance(exc, ConnectionFailure):
        return None
    text = str(exc).split(", Topology Description:", 1)[0]
    waited = re.search(r", Timeout: ([\d.]+)s$", text)
    found = [(m["host"], m["reason"].strip()) for m in _HOST_ERROR.finditer(text)]
    if not found:
        return f"cannot reach the server: {text.splitlines()[0] if text else type(exc).__name__}"
    hosts = ", ".join(sorted({h for h, _ in found}))
    reasons = "; ".join(sorted({r for _, r in found}))
    within = f" (no server answered within {float(waited[1]):g} s)" if waited else ""
    return f"cannot reach {hosts}: {reasons}{within}"
