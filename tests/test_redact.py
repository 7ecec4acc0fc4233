"""Redaction: known secrets and credential-shaped text are masked wherever they appear."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

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


QUERY_SECRETS = ("TokTok1234", "KeyPw1234", "Hunter2Secret", "SigSig1234")
HOSTILE_URI = ("mongodb://app@db.internal/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:TokTok1234"
               "&tlsCertificateKeyFilePassword=KeyPw1234&sslpassword=Hunter2Secret&authSource=%24external")  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HOSTILE_URI, "mongodb://app@db.internal/?authMechanism=MONGODB-AWS&authMechanismProperties=***"
                      "&tlsCertificateKeyFilePassword=***&sslpassword=***&authSource=%24external"),
        ("authMechanismProperties=AWS_SESSION_TOKEN%3ATokTok1234", "authMechanismProperties=AWS_SESSION_TOKEN%3A***"),
        ("props AWS_SESSION_TOKEN:TokTok1234,SERVICE_NAME:mongodb", "props AWS_SESSION_TOKEN:***,SERVICE_NAME:mongodb"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=SigSig1234&X-Amz-Expires=60",
         "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60"),
        ("mongodump --sslPEMKeyPassword=KeyPw1234 --db=app", "mongodump --sslPEMKeyPassword=*** --db=app"),
    ],
)  # fmt: skip
def test_credentials_in_uri_query_strings_are_masked(text: str, expected: str) -> None:
    """Every credential-bearing query parameter (Atlas AWS IAM, TLS key passwords, presigned URLs) is masked."""
    assert Redactor().text(text) == expected


def test_decoded_passwords_and_short_secrets_are_masked_but_not_words() -> None:
    """A URL-encoded password is masked in both forms; a 6-character secret too; KEYCLOAK_REALM is no secret."""
    from worker.settings import secret_env_values

    env = {"MONGODB_URI": "mongodb://app:Sup3r%40Secret%2Fpw%2Bx@db/", "DB_PASS": "abc123", "FEATURE_TOKEN": "true",
           "KEYCLOAK_REALM": "production", "SESSIONS_PER_DAY": "1000"}  # fmt: skip
    redactor = Redactor(secret_env_values(env))
    assert (
        redactor.text("auth failed for Sup3r@Secret/pw+x and Sup3r%40Secret%2Fpw%2Bx") == "auth failed for *** and ***"
    )
    assert redactor.text("login abc123 in production, 1000 a day, true") == "login *** in production, 1000 a day, true"
    literal = Redactor(["mongodb://app:Sup3r%40Secret%2Fpw%2Bx@db/"])  # a URI written in the schedule file
    assert literal.text("bad password Sup3r@Secret/pw+x") == "bad password ***"


@pytest.mark.slow
def test_query_string_secrets_reach_no_channel(tmp_path: Path, mongo_uri: str, sentry: Any) -> None:
    """Manifest, ledger, stdout, stderr and Sentry never carry a credential from a URI's query string."""
    from tests.conftest import clean_env, opskeeper, write

    # An option pymongo ignores (with a warning), so the backup succeeds and its manifest names the source.
    uri = mongo_uri.rstrip("/") + "/?sslpassword=Hunter2Secret&authMechanismProperties=AWS_SESSION_TOKEN:TokTok1234"
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: nightly
    kind: backup
    schedule: "@daily"
    options: {{uri: "{uri}", databases: [nothing_here], storage: "{tmp_path / "b"}"}}
  - id: echo
    kind: command
    schedule: "@daily"
    options:
      argv: [sh, -c, 'echo "connecting to $TARGET"; exit 1']
      env: {{TARGET: "{HOSTILE_URI}&sig=SigSig1234"}}
""")  # fmt: skip
    env = clean_env(OPSKEEPER_LEDGER=str(tmp_path / "l.db"), SENTRY_DSN=sentry.dsn)
    outputs = [opskeeper("run-now", job, "--config", str(config), "--json", env=env) for job in ("nightly", "echo")]
    assert [r.code for r in outputs] == [0, 2], [r.stdout[-600:] for r in outputs]
    history = opskeeper("history", "--json", env=env)
    sentry.wait_items("event", 1)
    channels = {
        "manifest": next((tmp_path / "b").rglob("*.manifest.json")).read_text(),
        "stdout/stderr": " ".join(r.stdout + r.stderr for r in outputs),
        "ledger": history.stdout,
        "sentry": json.dumps([sentry.items(kind) for kind in ("event", "check_in", "transaction")], default=str),
    }
    assert "connecting to mongodb://app@db.internal/?authMechanism=MONGODB-AWS&authMechanismProperties=***" in \
        channels["ledger"]  # fmt: skip
    for name, text in channels.items():
        for secret in QUERY_SECRETS:
            assert secret not in text, f"{secret} leaked into the {name}"


def test_a_uri_query_secret_printed_alone_and_decoded_by_a_child_is_masked(tmp_path: Path) -> None:
    """A child that prints only the decoded session token of a MongoDB URI (not its name, not the URI): the run's
    summary, stdout tail and the ledger mask it, whether the URI came from the environment or the schedule file."""
    from tests.conftest import clean_env, opskeeper, write

    token, decoded = "FwoGZXIvYXdz%2FTokTok9876", "FwoGZXIvYXdz/TokTok9876"
    uri = f"mongodb://app@db.internal/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN%3A{token}"
    script = (
        "import os, sys, urllib.parse; q = urllib.parse.unquote(os.environ['T'].split('TOKEN%3A')[1]); "
        "print('using', q); sys.exit(1)"
    )
    config = write(tmp_path / "jobs.yaml", f"""\
jobs:
  - id: from-env
    kind: command
    schedule: "@daily"
    options: {{argv: [{sys.executable!r}, -c, "{script}"], env: {{T: "${{MONGODB_URI}}"}}}}
  - id: from-file
    kind: command
    schedule: "@daily"
    options: {{argv: [{sys.executable!r}, -c, "{script}"], env: {{T: "{uri}"}}}}
""")  # fmt: skip
    env = clean_env(OPSKEEPER_LEDGER=str(tmp_path / "l.db"), MONGODB_URI=uri)
    for job in ("from-env", "from-file"):
        result = opskeeper("run-now", job, "--config", str(config), "--json", env=env)
        assert result.code == 2, result.stderr
        out = json.loads(result.stdout)
        assert out["summary"].endswith("exited 1: using ***")
        assert decoded not in result.stdout + result.stderr
    assert decoded not in opskeeper("history", "--json", env=env).stdout
