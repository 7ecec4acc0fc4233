"""Masks secrets in anything about to leave the process: log lines, Sentry payloads, ledger rows.

Two nets: the exact values of every configured secret, and patterns for credentials that
turn up unannounced (a password inside a connection string, a bearer token in an error).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"

_SENSITIVE_KEY = re.compile(
    r"pass(word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|authorization|cookie|dsn|credential",
    re.I,
)
_PATTERNS = (
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:@/\s]*:)(?P<secret>[^@/\s]+)(?=@)", re.I), r"\g<head>" + MASK),
    # A DSN-style key alone in the user part: https://0123abcd...@o1.ingest.sentry.io/1
    (re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://)(?P<secret>[A-Za-z0-9_-]{16,})(?=@)", re.I), r"\g<head>" + MASK),
    # Authorization: Bearer abc / Authorization=Basic abc
    (
        re.compile(
            r"(?P<head>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|digest|token)\s+)?)[^\s\"',;]+", re.I
        ),
        r"\g<head>" + MASK,
    ),
    (re.compile(r"(?P<head>\bbearer\s+)[A-Za-z0-9._~+/-]{8,}=*", re.I), r"\g<head>" + MASK),
    # URI query parameters that carry credentials, whatever they are called by the driver:
    # ?authMechanismProperties=AWS_SESSION_TOKEN:..., &tlsCertificateKeyFilePassword=..., &sslpassword=...,
    # presigned URLs' X-Amz-Signature / X-Amz-Credential / X-Amz-Security-Token, SAS `sig`.
    (
        re.compile(
            r"(?P<head>[?&;](?:authMechanismProperties|sig|[\w.-]*(?:password|passwd|pwd|secret|token|signature|"
            r"credential|api[_-]?key|access[_-]?key)[\w.-]*)=)(?!\*\*\*)[^&\s#\"']+",
            re.I,
        ),
        r"\g<head>" + MASK,
    ),
    # password=..., token: ..., AWS_SESSION_TOKEN:..., sslPEMKeyPassword=... (a key ending in a secret word)
    (
        re.compile(
            r"(?P<head>(?<!\w)\w*?(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|sentry_key)"
            r"[\"']?\s*(?:[=:]|%3[AaDd])\s*[\"']?)(?!\*\*\*)[^\s\"'&,;]+",
            re.I,
        ),
        r"\g<head>" + MASK,
    ),
)
# Values shorter than this are too likely to occur by chance ("1", "true") to mask.
_MIN_SECRET_LEN = 4


_SECRET_QUERY_KEY = re.compile(r"pass(word|wd)?|pwd|secret|token|signature|credential|api[_-]?key|access[_-]?key|"
                               r"^sig$", re.I)  # fmt: skip


def url_secrets(text: str) -> set[str]:
    """The secret parts of a URL, each as written and URI-decoded: its password, and the values of query
    parameters that carry credentials (`password=`, `...Token=`; in MongoDB's `authMechanismProperties`, each
    `KEY:value` pair whose key names a secret, such as AWS_SESSION_TOKEN). Empty for anything else. Pure."""
    if "://" not in text:
        return set()
    found: set[str] = set()
    with contextlib.suppress(ValueError):
        parts = urlsplit(text)
        if parts.password:
            found.add(parts.password)
        for raw in parts.query.split("&"):
            key, _, value = raw.partition("=")
            if not value:
                continue
            if key.lower() == "authmechanismproperties":
                for form in (value, unquote(value)):  # `:` and `,` may be written %3A and %2C
                    for pair in form.split(","):
                        name, _, inner = pair.partition(":")
                        if inner and _SECRET_QUERY_KEY.search(name):
                            found.add(inner)
            elif _SECRET_QUERY_KEY.search(unquote(key)):
                found.add(value)
    decoded = {unquote(v) for v in found} | {unquote(v.replace("+", " ")) for v in found}
    return {v for v in found | decoded if len(v) >= _MIN_SECRET_LEN}


class Redactor:
    """Replaces known secret values and credential-shaped text with `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Learn more secret values (e.g. from a reloaded schedule). Safe across threads.

        A URL's password and its secret query values are learnt too (`url_secrets`), as written and decoded: a
        child process (mongodump, a script) may print any of them alone, without the name the patterns know.
        """
        learnt = set()
        for secret in secrets:
            learnt.add(secret)
            learnt.update(url_secrets(secret))
        known = set(self._secrets) | {s for s in learnt if s and len(s) >= _MIN_SECRET_LEN}
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = tuple(sorted(known, key=len, reverse=True))

    def text(self, value: str) -> str:
        """`value` with every secret masked."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            value = pattern.sub(replacement, value)
        return value

    def __call__(self, value: Any) -> Any:
        """A copy of a JSON-like value (dicts, lists, strings) with secrets masked."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                key: MASK
                if isinstance(key, str) and _SENSITIVE_KEY.search(key) and isinstance(item, str | bytes) and item
                else self(item)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self(item) for item in value)
        return value
