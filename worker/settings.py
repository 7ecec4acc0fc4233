"""Environment and secrets, read in one place (pydantic-settings).

Every secret is a SecretStr and may instead be read from a file named by `NAME_FILE`
(Render secret files, Docker/Kubernetes secrets), so it never has to sit in the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.mongodb import check_uri
from worker.reporting.redact import url_secrets
from worker.timespec import parse_duration


class SettingsError(Exception):
    """The environment is invalid; the message names each variable and its rule."""


def _seconds(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


Seconds = Annotated[timedelta, BeforeValidator(_seconds)]


class Settings(BaseSettings):
    """opskeeper's environment. Field aliases are the variable names operators set."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    config_path: Path = Field(Path("config/jobs.yaml"), alias="OPSKEEPER_CONFIG")
    ledger: SecretStr = Field(SecretStr("var/opskeeper.db"), alias="OPSKEEPER_LEDGER")
    """A file path selects SQLite; a mongodb:// or mongodb+srv:// URL selects MongoDB."""
    log_format: Literal["json", "console"] | None = Field(None, alias="OPSKEEPER_LOG_FORMAT")
    shutdown_grace: Seconds = Field(timedelta(seconds=25), alias="OPSKEEPER_SHUTDOWN_GRACE")
    """Render kills a worker maxShutdownDelaySeconds after SIGTERM (30 s unless set; render.yaml sets 300)."""
    reload_poll: Seconds = Field(timedelta(seconds=2), alias="OPSKEEPER_RELOAD_POLL")
    lease_ttl: Seconds = Field(timedelta(seconds=15), alias="OPSKEEPER_LEASE_TTL")
    """How long the scheduler lease lasts unrenewed: a crashed leader's successor waits this long at most."""
    lease_renew: Seconds = Field(timedelta(seconds=5), alias="OPSKEEPER_LEASE_RENEW")
    """How often the leader renews, a standby asks, and every instance heartbeats."""
    sentry_dsn: SecretStr | None = Field(None, alias="SENTRY_DSN")
    sentry_environment: str = Field("production", alias="SENTRY_ENVIRONMENT")
    sentry_release: str | None = Field(None, alias="SENTRY_RELEASE")
    sentry_traces_sample_rate: float | None = Field(None, ge=0.0, le=1.0, alias="SENTRY_TRACES_SAMPLE_RATE")
    """Default share of runs traced; unset: by each job's frequency (see worker/reporting/sentry.sample_rate)."""
    sentry_org: str | None = Field(None, alias="SENTRY_ORG")
    sentry_auth_token: SecretStr | None = Field(None, alias="SENTRY_AUTH_TOKEN")
    """With SENTRY_ORG: resolves an outage's issue on recovery (event:write), writes releases (project:releases)."""
    sentry_api_url: str = Field("https://sentry.io", alias="SENTRY_API_URL")
    status_page: str | None = Field(None, alias="OPSKEEPER_STATUS_PAGE")
    """Where the daemon keeps the status page: a file path or s3://bucket/key (written private)."""
    status_page_public: bool = Field(False, alias="OPSKEEPER_STATUS_PAGE_PUBLIC")
    status_page_link: Seconds | None = Field(None, alias="OPSKEEPER_STATUS_PAGE_LINK")
    """For an S3 page: log a presigned link valid this long after each write (at most 7 days)."""

    @model_validator(mode="after")
    def _timing(self) -> Settings:
        if self.shutdown_grace >= timedelta(seconds=300):
            raise ValueError(f"OPSKEEPER_SHUTDOWN_GRACE ({self.shutdown_grace.total_seconds():g}s) must be under "
                             "300s, Render's longest maxShutdownDelaySeconds, with time left to record "
                             "and flush")  # fmt: skip
        if self.lease_renew * 2 > self.lease_ttl:
            raise ValueError(f"OPSKEEPER_LEASE_RENEW ({self.lease_renew.total_seconds():g}s) must be at most half of "
                             f"OPSKEEPER_LEASE_TTL ({self.lease_ttl.total_seconds():g}s), so one missed renewal "
                             "does not lose the lease")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _ledger_place(self) -> Settings:
        # A URL that is not MongoDB's would otherwise become a SQLite file named "mongdb:/host/db".
        target = self.ledger.get_secret_value()
        if "://" in target:
            check_uri(target, "OPSKEEPER_LEDGER (a mongodb:// URL, or a SQLite file's path)")
        return self

    @model_validator(mode="after")
    def _release_from_render(self) -> Settings:
        if not self.sentry_release and os.environ.get("RENDER_GIT_COMMIT"):
            object.__setattr__(self, "sentry_release", os.environ["RENDER_GIT_COMMIT"])
        if self.sentry_dsn is not None and not self.sentry_dsn.get_secret_value().strip():
            object.__setattr__(self, "sentry_dsn", None)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _SecretFiles(settings_cls))

    def secret_values(self) -> list[str]:
        """Every secret's plain value (and the credential parts of secret URLs), for the redactors."""
        values: list[str] = []
        for secret in (self.ledger, self.sentry_dsn):
            if secret is None:
                continue
            text = secret.get_secret_value()
            if "://" not in text:
                continue  # a SQLite path is not secret
            parts = urlsplit(text)
            # The password (and query credentials), or a DSN's key: masking these keeps the rest readable.
            values.extend(url_secrets(text))
            if parts.password is None and parts.username:
                values.extend({parts.username, unquote(parts.username)})
        return values


# Environment variables whose names say they hold a secret (RENDER_API_KEY, GITHUB_TOKEN,
# AWS_SECRET_ACCESS_KEY, ...): jobs may read these directly, so their values are masked too.
# Whole words of a name only for the short ones: KEYCLOAK_REALM or SESSIONS_PER_DAY are no secrets.
SECRET_ENV_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|APIKEY|PRIVATE_KEY|_PWD(?:_|$)"  # not PWD: the working directory
    r"|(?:^|_)(?:KEY|KEYS|DSN|AUTH|COOKIE|SESSION|PASS)(?:_|$)", re.I,
)  # fmt: skip
_FLAG_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null", "enabled", "disabled"})


def secret_env_values(environ: Mapping[str, str]) -> list[str]:
    """Values of secret-named environment variables, and the passwords in URL-valued ones (also decoded)."""
    # Values under 4 characters and flag words ("true", "off") are settings, and masking them would garble logs.
    values = [v for k, v in environ.items() if SECRET_ENV_NAME.search(k) and len(v) >= 4
              and v.lower() not in _FLAG_WORDS]  # fmt: skip
    for value in environ.values():
        values.extend(url_secrets(value))  # MONGODB_URI's password and its query's credentials
    return values


class _SecretFiles(PydanticBaseSettingsSource):
    """`NAME_FILE=/path` supplies the secret NAME from that file (trailing newline dropped)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            if info.annotation not in (SecretStr, SecretStr | None) or not info.alias:
                continue
            if os.environ.get(info.alias):
                continue  # the variable itself wins over its _FILE
            path = os.environ.get(f"{info.alias}_FILE")
            if path:
                found[name] = read_secret_file(f"{info.alias}_FILE", path)
        return found


def read_secret_file(variable: str, path: str) -> str:
    """The secret in `path`; an error names the variable that pointed there."""
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError(f"{variable}={path}: cannot read the secret file: {reason}") from None


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; SettingsError names every bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            name = ".".join(str(p) for p in error["loc"])
            value = error.get("input")
            message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
            if not name:  # a rule across variables: its message names them; its input is every setting
                lines.append(message)
                continue
            shown = "" if "SENTRY_DSN" in name or "LEDGER" in name else f" (got {value!r})"
            lines.append(f"{name}: {message}{shown}")
        raise SettingsError("invalid environment:\n" + "\n".join(lines)) from None
