"""Redaction: known secrets and credential-shaped text are masked wherever they appear."""

from __future__ import annotations

import io
import json

import pytest

from worker.reporting.log import configure, get_logger
from worker.reporting.redact import Redactor
from worker.settings import Settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mongodb+srv://admin:hunter2@cluster0.x.mongodb.net/db?retryWrites=true",
         "mongodb+srv://admin:***@cluster0.x.mongodb.net/db?retryWrites=true"),
        ("https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/1", "https://***@o1.ingest.sentry.io/1"),
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
        ('curl -H "Authorization: token ghp_xxxxxxxxxxxx"', 'curl -H "Authorization: token ***"'),
        ("login failed: password=hunter2 user=bob", "login failed: password=*** user=bob"),
        ("GET /v1/x?api_key=abcd1234&page=2", "GET /v1/x?api_key=***&page=2"),
        ("https://example.com/api/health", "https://example.com/api/health"),
        ("exit code 1 after 30s", "exit code 1 after 30s"),
    ],
)  # fmt: skip
def test_credential_patterns_are_masked(text: str, expected: str) -> None:
    """Passwords in URLs, DSN keys, Authorization headers and key=value secrets are masked; the rest stays."""
    assert Redactor().text(text) == expected


def test_known_values_are_masked_longest_first() -> None:
    """Configured secret values are masked even inside other text; short values are ignored."""
    redactor = Redactor(["abc", "s3cr3t-value", "s3cr3t-value-extended"])
    assert redactor.text("x s3cr3t-value-extended y s3cr3t-value abc") == "x *** y *** abc"


def test_nested_structures_and_sensitive_keys() -> None:
    """Dicts and lists are walked; values under secret-sounding keys are masked whole."""
    redacted = Redactor(["tok_live_1234"])(
        {"headers": {"Authorization": "Basic Zm9vOmJhcg=="}, "password": "x1", "items": ["tok_live_1234", 3],
         "count": 5, "note": ("tok_live_1234",)}
    )  # fmt: skip
    assert redacted == {"headers": {"Authorization": "***"}, "password": "***", "items": ["***", 3], "count": 5,
                        "note": ("***",)}  # fmt: skip


def test_log_lines_are_redacted() -> None:
    """A secret passed to the logger never reaches the rendered JSON line."""
    stream = io.StringIO()
    configure("json", Redactor(["npm_0123456789abcdef"]), stream=stream)
    get_logger(job_id="deps").info("job.finished", summary="token npm_0123456789abcdef rejected",
                                   url="mongodb://u:pw12345@h/db")  # fmt: skip
    line = json.loads(stream.getvalue())
    assert line["summary"] == "token *** rejected"
    assert line["url"] == "mongodb://u:***@h/db"
    assert line["event"] == "job.finished"
    assert line["job_id"] == "deps"


def test_settings_expose_only_credential_parts_as_secrets() -> None:
    """A secret URL contributes its password (or DSN key), so logs keep the host readable."""
    settings = Settings(OPSKEEPER_LEDGER="mongodb://ops:pw-123456@db:27017/opskeeper",
                        SENTRY_DSN="https://abcdef0123456789@o1.ingest.sentry.io/5")  # fmt: skip
    assert sorted(settings.secret_values()) == ["abcdef0123456789", "pw-123456"]
    assert Settings(OPSKEEPER_LEDGER="var/opskeeper.db").secret_values() == []
