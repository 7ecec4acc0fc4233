"""npm's semver, as npm audit and npm outdated apply it: a line-by-line port of node-semver 7.x in loose mode.

Why our own: the Python `node-semver` package disagrees with npm on prereleases, which is
exactly where advisories hide (it misses `2.0.0-rc.5` against `<2.0.0` even with
`include_prerelease`, and orders `alpha.10` before `alpha.2`); 77 of 990 pairs differed in
the differential test (tests/test_semver.py runs npm's own module beside this one). The
regular expressions are built from the same tokens as node-semver's `internal/re.js`, with
its "safe" bounded repetitions, so a hostile range cannot make matching slow.

Everything here is loose (`v1.2.3`, `=1.2.3`, `1.2.3beta` parse, as npm reads lockfiles);
`include_prerelease` is npm audit's switch, off for picking what `npm update` installs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

MAX_LENGTH = 256
MAX_SAFE_INTEGER = 2**53 - 1
_LDN = "[a-zA-Z0-9-]"


def _safe(value: str) -> str:
    """node-semver's makeSafeRegex: bound every `*` and `+` on whitespace, digits and identifiers."""
    for token, most in ((r"\s", 1), (r"\d", MAX_LENGTH), (_LDN, MAX_LENGTH - 6)):
        value = value.replace(f"{token}*", f"{token}{{0,{most}}}").replace(f"{token}+", f"{token}{{1,{most}}}")
    return value


_NUM = r"0|[1-9]\d*"
_NUML = r"\d+"
_NONNUM = rf"\d*[a-zA-Z-]{_LDN}*"
_MAIN = rf"({_NUM})\.({_NUM})\.({_NUM})"
_MAINL = rf"({_NUML})\.({_NUML})\.({_NUML})"
_PRID = f"(?:{_NONNUM}|{_NUM})"
_PRIDL = f"(?:{_NONNUM}|{_NUML})"
_PRE = rf"(?:-({_PRID}(?:\.{_PRID})*))"
_PREL = rf"(?:-?({_PRIDL}(?:\.{_PRIDL})*))"
_BUILD = rf"(?:\+({_LDN}+(?:\.{_LDN}+)*))"
_LOOSEPLAIN = rf"[v=\s]*{_MAINL}{_PREL}?{_BUILD}?"
_GTLT = "((?:<|>)?=?)"
_XID = rf"{_NUM}|x|X|\*"
_XIDL = rf"{_NUML}|x|X|\*"
_XPLAIN = rf"[v=\s]*({_XID})(?:\.({_XID})(?:\.({_XID})(?:{_PRE})?{_BUILD}?)?)?"
_XPLAINL = rf"[v=\s]*({_XIDL})(?:\.({_XIDL})(?:\.({_XIDL})(?:{_PREL})?{_BUILD}?)?)?"


def _re(source: str) -> re.Pattern[str]:
    return re.compile(_safe(source), re.ASCII)


LOOSE = _re(f"^{_LOOSEPLAIN}$")
XRANGE = _re(rf"^{_GTLT}\s*{_XPLAINL}$")
TILDETRIM = _re(r"(\s*)(?:~>?)\s+")
TILDE = _re(f"^(?:~>?){_XPLAINL}$")
CARETTRIM = _re(r"(\s*)(?:\^)\s+")
CARET = _re(f"^(?:\\^){_XPLAINL}$")
COMPARATOR = _re(rf"^{_GTLT}\s*({_LOOSEPLAIN})$|^$")
COMPARATORTRIM = _re(rf"(\s*){_GTLT}\s*({_LOOSEPLAIN}|{_XPLAIN})")
HYPHEN = _re(rf"^\s*({_XPLAINL})\s+-\s+({_XPLAINL})\s*$")
BUILD = _re(_BUILD)
STAR = _re(r"(<|>)?=?\s*\*")
GTE0 = _re(r"^\s*>=\s*0\.0\.0\s*$")
GTE0PRE = _re(r"^\s*>=\s*0\.0\.0-0\s*$")
_SPACES = re.compile(r"\s+")
_DIGITS = re.compile(r"^[0-9]+$")

Identifier = int | str


@dataclass(frozen=True, order=False)
class SemVer:
    """A parsed version; compares as node-semver does (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[Identifier, ...]

    @property
    def version(self) -> str:
        main = f"{self.major}.{self.minor}.{self.patch}"
        return f"{main}-{'.'.join(map(str, self.prerelease))}" if self.prerelease else main

    def __lt__(self, other: SemVer) -> bool:
        return self.compare(other) < 0

    @property
    def key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        """A sort key in npm's order, compared in C: a release after its prereleases, numeric ids before others."""
        ids = tuple((0, i) if isinstance(i, int) else (1, i) for i in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if ids else 1, ids)

    def compare(self, other: SemVer) -> int:
        main = (self.major, self.minor, self.patch)
        theirs = (other.major, other.minor, other.patch)
        if main != theirs:
            return -1 if main < theirs else 1
        return _compare_pre(self.prerelease, other.prerelease)


def _compare_pre(a: tuple[Identifier, ...], b: tuple[Identifier, ...]) -> int:
    if a and not b:
        return -1
    if b and not a:
        return 1
    for x, y in zip(a, b, strict=False):
        if x != y:
            return _compare_ids(x, y)
    return (len(a) > len(b)) - (len(a) < len(b))


def _compare_ids(a: Identifier, b: Identifier) -> int:
    anum, bnum = isinstance(a, int) or bool(_DIGITS.match(a)), isinstance(b, int) or bool(_DIGITS.match(b))
    if anum and bnum:
        x, y = int(a), int(b)
        return (x > y) - (x < y)
    if anum:
        return -1
    if bnum:
        return 1
    sa, sb = str(a), str(b)
    return (sa > sb) - (sa < sb)


@lru_cache(maxsize=65536)
def parse(version: str) -> SemVer | None:
    """The version npm would read from `version` (loose), or None where npm throws."""
    if len(version) > MAX_LENGTH:
        return None
    m = LOOSE.match(version.strip())
    if not m:
        return None
    major, minor, patch = int(m[1]), int(m[2]), int(m[3])
    if max(major, minor, patch) > MAX_SAFE_INTEGER:
        return None
    pre: tuple[Identifier, ...] = ()
    if m[4]:
        pre = tuple(int(i) if _DIGITS.match(i) and int(i) < MAX_SAFE_INTEGER else i for i in m[4].split("."))
    return SemVer(major, minor, patch, pre)


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 like node-semver's compare (loose); ValueError names an invalid version."""
    x, y = parse(a), parse(b)
    if x is None or y is None:
        raise ValueError(f"not a version npm reads: {a if x is None else b!r}")
    return x.compare(y)


def _is_x(part: str | None) -> bool:
    return not part or part.lower() == "x" or part == "*"


@dataclass(frozen=True)
class Comparator:
    operator: str
    semver: SemVer | None  # None is node-semver's ANY

    @property
    def value(self) -> str:
        return "" if self.semver is None else self.operator + self.semver.version

    def test(self, version: SemVer) -> bool:
        if self.semver is None:
            return True
        c = version.compare(self.semver)
        return {"": c == 0, ">": c > 0, ">=": c >= 0, "<": c < 0, "<=": c <= 0}[self.operator]


def _comparator(text: str) -> Comparator:
    m = COMPARATOR.match(" ".join(text.split()))
    if m is None:
        raise ValueError(f"invalid comparator {text!r}")
    operator = "" if m[1] in (None, "=") else m[1]
    if not m[2]:
        return Comparator(operator, None)
    semver = parse(m[2])
    if semver is None:
        raise ValueError(f"invalid version {m[2]!r}")
    return Comparator(operator, semver)


def _tilde(comp: str, z: str) -> str:
    def repl(m: re.Match[str]) -> str:
        major, minor, patch, pre = m[1], m[2], m[3], m[4]
        if _is_x(major):
            return ""
        if _is_x(minor):
            return f">={major}.0.0{z} <{int(major) + 1}.0.0-0"
        if _is_x(patch):
            return f">={major}.{minor}.0{z} <{major}.{int(minor) + 1}.0-0"
        if pre:
            return f">={major}.{minor}.{patch}-{pre} <{major}.{int(minor) + 1}.0-0"
        return f">={major}.{minor}.{patch} <{major}.{int(minor) + 1}.0-0"

    return TILDE.sub(repl, comp, count=1)


def _caret(comp: str, z: str) -> str:
    def repl(m: re.Match[str]) -> str:
        major, minor, patch, pre = m[1], m[2], m[3], m[4]
        if _is_x(major):
            return ""
        if _is_x(minor):
            return f">={major}.0.0{z} <{int(major) + 1}.0.0-0"
        if _is_x(patch):
            if major == "0":
                return f">={major}.{minor}.0{z} <{major}.{int(minor) + 1}.0-0"
            return f">={major}.{minor}.0{z} <{int(major) + 1}.0.0-0"
        low = f">={major}.{minor}.{patch}-{pre}" if pre else f">={major}.{minor}.{patch}"
        if major == "0":
            if minor == "0":
                return f"{low} <{major}.{minor}.{int(patch) + 1}-0"
            return f"{low} <{major}.{int(minor) + 1}.0-0"
        return f"{low} <{int(major) + 1}.0.0-0"

    return CARET.sub(repl, comp, count=1)


def _xrange(comp: str, include_prerelease: bool) -> str:
    comp = comp.strip()

    def repl(m: re.Match[str]) -> str:
        gtlt, major, minor, patch = m[1], m[2], m[3], m[4]
        if (_is_x(major) and not _is_x(minor)) or (_is_x(minor) and patch and not _is_x(patch)):
            return comp  # invalidXRangeOrder
        xmajor = _is_x(major)
        xminor = xmajor or _is_x(minor)
        anyx = xminor or _is_x(patch)
        if gtlt == "=" and anyx:
            gtlt = ""
        pr = "-0" if include_prerelease else ""
        if xmajor:
            return "<0.0.0-0" if gtlt in (">", "<") else "*"
        if gtlt and anyx:
            big, mid, small = int(major), 0 if xminor else int(minor), 0
            if gtlt == ">":
                gtlt = ">="
                if xminor:
                    big, mid = big + 1, 0
                else:
                    mid += 1
            elif gtlt == "<=":
                gtlt = "<"
                if xminor:
                    big += 1
                else:
                    mid += 1
            if gtlt == "<":
                pr = "-0"
            return f"{gtlt}{big}.{mid}.{small}{pr}"
        if xminor:
            return f">={major}.0.0{pr} <{int(major) + 1}.0.0-0"
        if anyx:
            return f">={major}.{minor}.0{pr} <{major}.{int(minor) + 1}.0-0"
        return m[0]

    return XRANGE.sub(repl, comp, count=1)


def _hyphen(include_prerelease: bool) -> Callable[[re.Match[str]], str]:
    incpr = "-0" if include_prerelease else ""

    def repl(m: re.Match[str]) -> str:
        start, fmaj, fmin, fpat, fpre = m[1], m[2], m[3], m[4], m[5]
        end, tmaj, tmin, tpat, tpre = m[7], m[8], m[9], m[10], m[11]
        if _is_x(fmaj):
            low = ""
        elif _is_x(fmin):
            low = f">={fmaj}.0.0{incpr}"
        elif _is_x(fpat):
            low = f">={fmaj}.{fmin}.0{incpr}"
        elif fpre:
            low = f">={start}"
        else:
            low = f">={start}{incpr}"
        if _is_x(tmaj):
            high = ""
        elif _is_x(tmin):
            high = f"<{int(tmaj) + 1}.0.0-0"
        elif _is_x(tpat):
            high = f"<{tmaj}.{int(tmin) + 1}.0-0"
        elif tpre:
            high = f"<={tmaj}.{tmin}.{tpat}-{tpre}"
        elif include_prerelease:
            high = f"<{tmaj}.{tmin}.{int(tpat) + 1}-0"
        else:
            high = f"<={end}"
        return f"{low} {high}".strip()

    return repl


def _each(comp: str, fn: Callable[[str], str]) -> str:
    return " ".join(fn(c) for c in comp.strip().split())


def _desugar(comp: str, z: str, include_prerelease: bool) -> str:
    """node-semver's parseComparator: carets, tildes, x-ranges and stars become plain comparators."""
    comp = BUILD.sub("", comp, count=1)
    comp = _each(comp, lambda c: _caret(c, z))
    comp = _each(comp, lambda c: _tilde(c, z))
    comp = " ".join(_xrange(c, include_prerelease) for c in comp.split())
    return STAR.sub("", comp.strip(), count=1)


def _parse_set(text: str, include_prerelease: bool) -> tuple[Comparator, ...]:
    z = "-0" if include_prerelease else ""
    text = BUILD.sub("", text)
    text = HYPHEN.sub(_hyphen(include_prerelease), text, count=1)
    text = COMPARATORTRIM.sub(lambda m: f"{m[1]}{m[2]}{m[3]}", text)
    text = TILDETRIM.sub(lambda m: f"{m[1]}~", text)
    text = CARETTRIM.sub(lambda m: f"{m[1]}^", text)
    parts = [_desugar(comp, z, include_prerelease) for comp in text.split(" ")]
    gte0 = GTE0PRE if include_prerelease else GTE0
    found = [gte0.sub("", c.strip(), count=1) for c in _SPACES.split(" ".join(parts))]
    found = [c for c in found if COMPARATOR.match(c)]
    unique: dict[str, Comparator] = {}
    for comp in map(_comparator, found):
        if comp.value == "<0.0.0-0":
            return (comp,)
        unique[comp.value] = comp
    if len(unique) > 1:
        unique.pop("", None)
    return tuple(unique.values())


@lru_cache(maxsize=16384)
def parse_range(text: str, include_prerelease: bool = False) -> tuple[tuple[Comparator, ...], ...] | None:
    """The comparator sets of a range (any one of which must hold), or None where npm throws."""
    raw = _SPACES.sub(" ", text.strip())
    try:
        sets = [s for s in (_parse_set(part.strip(), include_prerelease) for part in raw.split("||")) if s]
    except ValueError:
        return None
    if not sets:
        return None
    if len(sets) > 1:
        first = sets[0]
        sets = [s for s in sets if s[0].value != "<0.0.0-0"] or [first]
        for s in sets:
            if len(s) == 1 and s[0].value == "":
                sets = [s]
                break
    return tuple(sets)


def _test_set(comparators: tuple[Comparator, ...], version: SemVer, include_prerelease: bool) -> bool:
    if not all(c.test(version) for c in comparators):
        return False
    if version.prerelease and not include_prerelease:
        return any(c.semver is not None and c.semver.prerelease
                   and (c.semver.major, c.semver.minor, c.semver.patch) == (version.major, version.minor, version.patch)
                   for c in comparators)  # fmt: skip
    return True


def satisfies(version: str, range_: str, *, include_prerelease: bool = False) -> bool:
    """node-semver's `satisfies(version, range, {loose: true, includePrerelease})`: False where npm throws."""
    sets = parse_range(range_, include_prerelease)
    parsed = parse(version) if version else None
    if sets is None or parsed is None:
        return False
    return any(_test_set(s, parsed, include_prerelease) for s in sets)


def valid_range(range_: str) -> bool:
    """Whether npm reads `range_` as a range at all."""
    return parse_range(range_) is not None


def max_satisfying(versions: Iterable[str], range_: str, *, include_prerelease: bool = False) -> str | None:
    """The highest of `versions` in the range, as node-semver's maxSatisfying."""
    best: tuple[SemVer, str] | None = None
    for version in versions:
        if satisfies(version, range_, include_prerelease=include_prerelease):
            parsed = parse(version)
            if parsed is not None and (best is None or parsed.compare(best[0]) > 0):
                best = (parsed, version)
    return best[1] if best else None
