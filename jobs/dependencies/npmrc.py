"""npm's configuration as the project's own npm would read it (reference §16).

Sources, lowest to highest: the user's `~/.npmrc` (or `NPM_CONFIG_USERCONFIG`), the project's
`.npmrc` (beside the lockfile the project installs from: a workspace's root), then
`npm_config_*` / `NPM_CONFIG_*` environment variables. npm's builtin and global
(`$PREFIX/etc/npmrc`) files are not read: a worker's image has neither, and they are the
installation's, not the project's. Keys and values may hold `${VAR}`, expanded from the
environment as @npmcli/config does (`${VAR?}` is empty when unset; an unset `${VAR}` stays as
written). Hand-written: npm's `.npmrc` is its own dialect of ini (no sections in practice,
`key[]=` arrays, `${}` expansion, nerf-darted credential keys), which no Python ini reader parses
the way npm does.

Credentials are keyed to a registry host and path (`//npm.acme.dev/:_authToken=…`) and are sent
only to URLs under that key, as npm-registry-fetch matches them (the longest key first).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlsplit

#: npm's own expansion pattern (@npmcli/config lib/env-replace.js): escapes, the name, an optional `?`.
_ENV = re.compile(r"(?<!\\)(\\*)\$\{([^${}?]+)(\?)?\}")
#: Settings that change which versions resolve or how peers are treated; the rest of npm's are not ours to judge.
FLAGS = ("legacy-peer-deps", "strict-peer-deps", "engine-strict", "save-exact")
_CREDENTIALS = ("_authToken", "_auth", "username", "_password", "certfile", "keyfile")


def expand(text: str, environ: Mapping[str, str]) -> str:
    """`text` with `${VAR}` replaced from `environ`, as npm replaces it. Pure."""

    def replace(match: re.Match[str]) -> str:
        escapes, name, optional = match[1], match[2], match[3]
        if len(escapes) % 2:  # an odd number of backslashes escapes the `$`
            return match[0][(len(escapes) + 1) // 2 :]
        value = environ.get(name)
        return escapes[len(escapes) // 2 :] + (value if value is not None else "" if optional else f"${{{name}}}")

    return _ENV.sub(replace, text)


def parse_npmrc(text: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The key=value settings of one `.npmrc`, expanded; comments (`;`, `#`) and sections skipped. Pure.

    A quoted value is unquoted; `key[]=` entries are joined with newlines (npm's arrays).
    """
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#" or (line.startswith("[") and line.endswith("]")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, value = line, "true"  # a bare key is a true flag, as ini reads it
        key, value = expand(key.strip(), environ), expand(value.strip(), environ)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key.endswith("[]"):
            key = key[:-2]
            found[key] = f"{found[key]}\n{value}" if key in found else value
        else:
            found[key] = value
    return found


def nerf(url: str) -> str:
    """npm's credential key of a registry URL: `//host[:port]/path/`, no scheme, query or user. Pure."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return f"//{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{path}"


@dataclass(frozen=True)
class NpmConfig:
    """The merged settings, and which files they came from (for the report)."""

    values: Mapping[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    default_registry: str = "https://registry.npmjs.org/"

    @property
    def registry(self) -> str:
        """The registry for unscoped packages."""
        return self.values.get("registry") or self.default_registry

    def registry_for(self, package: str) -> str:
        """The registry this package is fetched from: its scope's, else the default one."""
        if package.startswith("@") and "/" in package:
            scoped = self.values.get(f"{package.split('/', 1)[0]}:registry")
            if scoped:
                return scoped
        return self.registry

    def flag(self, name: str) -> bool:
        """A boolean setting (`legacy-peer-deps`, …), false unless set to true."""
        return self.values.get(name, "").strip().lower() == "true"

    def before(self, now: datetime, package: str = "") -> datetime | None:
        """The publication cutoff npm applies (`before`, else now - `min-release-age` days); None without one.

        A package matching `min-release-age-exclude` has none. Raises ValueError naming a bad value.
        """
        excluded = [p for key in ("min-release-age-exclude", "pnpm:minimumReleaseAgeExclude")
                    for p in self.values.get(key, "").splitlines() if p.strip()]  # fmt: skip
        if package and any(fnmatchcase(package, p.strip()) for p in excluded):
            return None
        minutes = self.values.get("pnpm:minimumReleaseAge", "").strip()
        if minutes:  # pnpm's, in minutes
            try:
                return now - timedelta(minutes=float(minutes)) if float(minutes) > 0 else None
            except ValueError:
                raise ValueError(
                    f"pnpm-workspace.yaml minimumReleaseAge {minutes!r}: not a number of minutes"
                ) from None
        if self.values.get("before"):
            text = self.values["before"].strip()
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"before={text!r}: not a date npm reads (use 2026-11-30 or an ISO 8601 time)"
                ) from None
            return moment if moment.tzinfo else moment.replace(tzinfo=now.tzinfo)
        age = self.values.get("min-release-age", "").strip()
        if not age:
            return None
        try:
            days = float(age)
        except ValueError:
            raise ValueError(f"min-release-age={age!r}: not a number of days") from None
        return now - timedelta(days=days) if days > 0 else None

    def credentials_key(self, url: str) -> str | None:
        """The longest `//host/path/` key holding credentials that `url` is under, as npm-registry-fetch finds it."""
        key = nerf(url)
        while len(key) > 2:
            if any(f"{key}:{c}" in self.values for c in _CREDENTIALS):
                return key
            key = re.sub(r"([^/]+|/)$", "", key)
        return None

    def auth_headers(self, url: str) -> dict[str, str]:
        """The Authorization header npm would send to `url` (empty when no credentials are keyed to it)."""
        key = self.credentials_key(url)
        if key is None:
            return {}
        token = self.values.get(f"{key}:_authToken")
        if token:
            return {"Authorization": f"Bearer {token}"}
        basic = self.values.get(f"{key}:_auth")
        if basic:
            return {"Authorization": f"Basic {basic}"}
        user, password = self.values.get(f"{key}:username"), self.values.get(f"{key}:_password")
        if user and password:  # npm keeps the password base64-encoded in .npmrc
            plain = base64.b64decode(password).decode("utf-8", "replace")
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{plain}".encode()).decode()}
        return {}

    @property
    def secrets(self) -> list[str]:
        """Every credential value, for the redactor."""
        return [v for k, v in self.values.items() if k.rpartition(":")[2] in ("_authToken", "_auth", "_password") and v]

    def for_child(self) -> str:
        """The settings as one `.npmrc`, expanded, for a package manager run in a scratch copy: the project's
        and the user's settings have the same effect there, and no secret goes into the child's environment."""
        lines = []
        for key, value in self.values.items():
            if key.startswith(("cache", "prefix", "userconfig", "globalconfig", "store-dir")):
                continue  # places on this machine: the scratch copy has its own
            lines += [f"{key}[]={v}" for v in value.splitlines()] if "\n" in value else [f"{key}={value}"]
        return "".join(f"{line}\n" for line in lines)


def read_npm_config(folder: Path, environ: Mapping[str, str] | None = None, *,
                    home: Path | None = None) -> NpmConfig:  # fmt: skip
    """The settings npm would use for a project installed from `folder` (where its lockfile is).

    Raises ValueError naming the file and line when a `.npmrc` cannot be read.
    """
    env = dict(os.environ if environ is None else environ)
    user = Path(env["NPM_CONFIG_USERCONFIG"]) if env.get("NPM_CONFIG_USERCONFIG") else None
    user = user or (Path(env["npm_config_userconfig"]) if env.get("npm_config_userconfig") else None)
    user = user or (home or Path(env.get("HOME") or Path.home())) / ".npmrc"
    values: dict[str, str] = {}
    files = []
    for path in (user, folder / ".npmrc"):
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: cannot be read ({exc})") from None
            values.update(parse_npmrc(text, env))
            files.append(str(path))
    for name, value in env.items():  # as @npmcli/config's loadEnv: npm_config_legacy_peer_deps is legacy-peer-deps
        if name.lower().startswith("npm_config_") and value != "":
            key = name[len("npm_config_") :]
            values[key if key.startswith("//") else re.sub(r"(?!^)_", "-", key).lower()] = value
    values.update(pnpm_settings(folder))
    return NpmConfig(values, tuple(files))


def pnpm_settings(folder: Path) -> dict[str, str]:
    """pnpm-workspace.yaml's release-age settings, as `pnpm:` keys (pnpm reads them beside `.npmrc`'s)."""
    path = folder / "pnpm-workspace.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot be read ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        return {}
    found = {}
    if doc.get("minimumReleaseAge") is not None:
        found["pnpm:minimumReleaseAge"] = str(doc["minimumReleaseAge"])
    if isinstance(doc.get("minimumReleaseAgeExclude"), list):
        found["pnpm:minimumReleaseAgeExclude"] = "\n".join(map(str, doc["minimumReleaseAgeExclude"]))
    return found
