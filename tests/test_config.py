"""The schedule file: realistic mistakes each give one precise FILE:LINE:COL line and exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from tests.conftest import ROOT, opskeeper, write
from worker.cli import main
from worker.registry import OPTIONS
from worker.schedule import ConfigError, load_config

KINDS = ", ".join(sorted(OPTIONS))
GOOD_JOB = """\
  - id: deps
    kind: command
    schedule: "@weekly"
    options:
      argv: [pnpm, audit, --json]
"""

CASES = [
    # (name, file text, expected problem line without the "FILE:" prefix)
    (
        "bad cron field",
        'jobs:\n  - id: backup\n    kind: command\n    schedule: "0 3 * * 8"\n    options: {argv: [true]}\n',
        "4:15: jobs[0] (backup).schedule: '0 3 * * 8': day-of-week: 8 is out of range; it must be 0-7 or sun-sat",
    ),
    (
        "hour out of range",
        'jobs:\n  - id: backup\n    kind: command\n    schedule: "0 25 * * *"\n    options: {argv: [true]}\n',
        "4:15: jobs[0] (backup).schedule: '0 25 * * *': hour: 25 is out of range; it must be 0-23",
    ),
    (
        "four cron fields",
        "jobs:\n  - id: backup\n    kind: command\n    schedule: 0 3 * *\n    options: {argv: [true]}\n",
        "4:15: jobs[0] (backup).schedule: '0 3 * *': a cron expression has 5 fields "
        "(minute hour day-of-month month day-of-week), this has 4",
    ),
    (
        "unknown kind",
        "jobs:\n  - id: backup\n    kind: mongodumb\n    schedule: '@daily'\n",
        "3:11: jobs[0] (backup).kind: unknown kind 'mongodumb'; known kinds: " + KINDS,
    ),
    (
        "misspelt kind",
        "jobs:\n  - id: backup\n    kind: comand\n    schedule: '@daily'\n",
        "3:11: jobs[0] (backup).kind: unknown kind 'comand'; did you mean 'command'? known kinds: " + KINDS,
    ),
    (
        "duplicate id",
        "jobs:\n" + GOOD_JOB + GOOD_JOB,
        "7:9: jobs[1] (deps).id: duplicate id 'deps': jobs[0] already uses it",
    ),
    (
        "unknown key in a job",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n    timout: 5m\n    options: {argv: [x]}\n",
        "5:5: jobs[0] (deps).timout: unknown key 'timout'; did you mean 'timeout'?",
    ),
    (
        "unknown key in options",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n    options:\n      argv: [x]\n"
        "      warn_code: [1]\n",
        "7:7: jobs[0] (deps).options.warn_code: unknown key 'warn_code'; did you mean 'warn_codes'?",
    ),
    (
        "bad duration",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n    timeout: 10 minutes\n"
        "    options: {argv: [x]}\n",
        "5:14: jobs[0] (deps).timeout: '10 minutes': not a duration; write it like 90s, 30m, 2h, 1d or 1h30m",
    ),
    (
        "duration without unit",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n    misfire_grace: 600\n"
        "    options: {argv: [x]}\n",
        "5:20: jobs[0] (deps).misfire_grace: '600': a duration needs a unit, e.g. 600s or 600m",
    ),
    (
        "missing variable",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n"
        "    options: {argv: [curl, '${HEALTH_URL}']}\n",
        "5:28: jobs[0] (deps).options.argv[1]: environment variable HEALTH_URL is not set "
        "(write ${HEALTH_URL:-default} for a default)",
    ),
    (
        "wrong type in options",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n    options:\n      argv: [x]\n"
        "      warn_codes: [one]\n",
        "7:20: jobs[0] (deps).options.warn_codes[0]: Input should be a valid integer, unable to parse string "
        "as an integer, got 'one'",
    ),
    (
        "yaml syntax error",
        "jobs:\n  - id: deps\n    kind: command\n   schedule: '@weekly'\n",
        "4:4: yaml: invalid YAML: ",
    ),
    (
        "tab indentation",
        "jobs:\n\t- id: deps\n",
        "2:1: yaml: invalid YAML: ",
    ),
    (
        "empty file",
        "",
        "1:1: (file): the file is empty; it needs at least a 'jobs:' list",
    ),
    (
        "comments only",
        "# nothing here yet\n",
        "1:1: (file): the file is empty; it needs at least a 'jobs:' list",
    ),
    (
        "jobs missing",
        "timezone: UTC\n",
        "1:1: jobs: 'jobs' is required: a list of jobs",
    ),
    (
        "jobs is a mapping",
        "jobs:\n  deps:\n    kind: command\n",
        "2:3: jobs: expected a list of jobs, got a dict",
    ),
    (
        "unknown timezone",
        "timezone: Europe/Berln\njobs:\n" + GOOD_JOB,
        "1:11: timezone: unknown IANA time zone 'Europe/Berln'; did you mean 'Europe/Berlin'?",
    ),
    (
        "bad id",
        "jobs:\n  - id: Nightly Backup\n    kind: command\n    schedule: '@daily'\n    options: {argv: [x]}\n",
        "2:9: jobs[0] (Nightly Backup).id: 'Nightly Backup' is not a valid id: use 1-50 lowercase letters, "
        "digits, '-' or '_', starting with a letter or digit (it becomes the Sentry monitor slug)",
    ),
    (
        "missing schedule",
        "jobs:\n  - id: deps\n    kind: command\n    options: {argv: [x]}\n",
        "2:5: jobs[0] (deps).schedule: 'schedule' is required",
    ),
    (
        "unknown alert status",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n    alert_on: [fail, down]\n"
        "    options: {argv: [x]}\n",
        "5:22: jobs[0] (deps).alert_on[1]: 'down' is not a status; use one of ok, warn, fail, error, timeout, "
        "missed, interrupted",
    ),
    (
        "never-occurring date",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '0 0 30 2 *'\n    options: {argv: [x]}\n",
        "4:15: jobs[0] (deps).schedule: '0 0 30 2 *': this date never occurs, so the job would never run",
    ),
    (
        "shell with several argv items",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n    options:\n"
        "      shell: true\n      argv: [pnpm, audit]\n",
        "6:7: jobs[0] (deps).options: with shell: true, argv must be a single string: the script /bin/sh runs",
    ),
    (
        "unknown default key",
        "defaults:\n  retrys: 2\njobs:\n" + GOOD_JOB,
        "2:3: defaults.retrys: unknown key 'retrys'; did you mean 'retries'?",
    ),
    (
        "secret in argv",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n"
        "    options: {argv: [pnpm, audit, '--token=${NPM_TOKEN:-x}']}\n",
        "5:35: jobs[0] (deps).options.argv[2]: ${NPM_TOKEN} is a secret and argv is visible in the process list; "
        "pass it in options.env and refer to it there (in a shell script as $NPM_TOKEN)",
    ),
    (
        "duplicate key in a job",
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n    schedule: '@daily'\n"
        "    options: {argv: [x]}\n",
        "5:5: jobs[0] (deps).schedule: duplicate key 'schedule': each key may appear once",
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_mistake_gives_one_precise_line(
    name: str, text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`opskeeper validate` exits 78 and prints the mistake as FILE:LINE:COL: place: message."""
    path = write(tmp_path / "jobs.yaml", text)
    code = main(["validate", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 78, name
    problem_lines = [line for line in err.splitlines() if line.startswith(str(path))]
    assert any(line.startswith(f"{path}:{expected}") for line in problem_lines), err
    assert "Traceback" not in err


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Several mistakes in one file are all listed, in file order."""
    text = (
        "timezone: Mars/Olympus\n"
        "jobs:\n"
        "  - id: a\n    kind: command\n    schedule: '61 * * * *'\n    options: {argv: [x]}\n"
        "  - id: b\n    kind: nope\n    schedule: '@daily'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "j.yaml", text), OPTIONS)
    lines = [f"{p.line}:{p.col} {p.where}" for p in info.value.problems]
    assert lines == ["1:11 timezone", "5:15 jobs[0] (a).schedule", "8:11 jobs[1] (b).kind"]


def test_validate_as_a_process_prints_no_traceback(tmp_path: Path, env: dict[str, str]) -> None:
    """A real `opskeeper validate` process on a broken file: exit 78, the error line, no traceback."""
    path = write(tmp_path / "jobs.yaml", "jobs:\n  - id: x\n    kind: command\n    schedule: '0 3 * * 8'\n")
    result = opskeeper("validate", "--config", str(path), env=env)
    assert result.code == 78
    assert re.search(rf"^{re.escape(str(path))}:4:15: jobs\[0\] \(x\)\.schedule: ", result.stderr, re.M)
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A schedule file that does not exist is named, with the reason, as a usage error (64)."""
    code = main(["validate", "--config", str(tmp_path / "nope.yaml")])
    assert code == 64
    assert "nope.yaml:1:1: (file): cannot read the schedule file: No such file or directory" in capsys.readouterr().err


def test_valid_file_prints_job_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file: exit 0 and `OK: N jobs`."""
    path = write(tmp_path / "jobs.yaml", "jobs:\n" + GOOD_JOB)
    assert main(["validate", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "OK: 1 jobs"


def test_defaults_apply_and_jobs_override(tmp_path: Path) -> None:
    """`defaults` fill in what a job leaves out; a job's own value wins."""
    text = (
        "defaults:\n  timeout: 5m\n  retries: 2\n  alert_on: [fail]\n"
        "jobs:\n" + GOOD_JOB + "  - id: other\n    kind: command\n    schedule: every 1h\n    timeout: 2h\n"
        "    options: {argv: [x]}\n"
    )
    config = load_config(write(tmp_path / "j.yaml", text), OPTIONS)
    deps, other = config.jobs
    assert (deps.timeout.total_seconds(), deps.retries, [s.value for s in deps.alert_on]) == (300, 2, ["fail"])
    assert other.timeout.total_seconds() == 7200
    assert deps.misfire_grace.total_seconds() == 600  # the built-in default


def test_interpolation_defaults_escapes_and_secret_tracking(tmp_path: Path) -> None:
    """`${VAR}`, `${VAR:-default}` and `$$` work; values of secret-named variables are remembered."""
    text = (
        "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n    options:\n"
        "      argv: [curl, '${APP_URL:-http://localhost:3000}/api/health', 'cost: $$5']\n"
        "      env: {NPM_TOKEN: '${NPM_TOKEN}'}\n"
    )
    env = {"NPM_TOKEN": "npm_abcdefghijklmnop"}
    config = load_config(write(tmp_path / "j.yaml", text), OPTIONS, env=env)
    options = config.jobs[0].options
    assert options.argv == ("curl", "http://localhost:3000/api/health", "cost: $5")
    assert options.env == {"NPM_TOKEN": "npm_abcdefghijklmnop"}
    assert "npm_abcdefghijklmnop" in config.secrets


def test_variable_file_supplies_a_secret(tmp_path: Path) -> None:
    """`${VAR}` falls back to the file named by VAR_FILE, and that value counts as secret."""
    secret = write(tmp_path / "token", "s3cret-from-file\n")
    text = "jobs:\n  - id: deps\n    kind: command\n    schedule: '@weekly'\n"
    text += "    options: {argv: [x], env: {T: '${TOKEN}'}}\n"
    config = load_config(write(tmp_path / "j.yaml", text), OPTIONS, env={"TOKEN_FILE": str(secret)})
    assert config.jobs[0].options.env["T"] == "s3cret-from-file"
    assert "s3cret-from-file" in config.secrets


def test_shipped_schedules_are_valid() -> None:
    """Every schedule under config/ validates."""
    files = sorted((ROOT / "config").glob("*.yaml"))
    assert files
    for path in files:
        load_config(path, OPTIONS, env={})


def test_readme_example_is_valid(tmp_path: Path) -> None:
    """The complete example in the README is a valid schedule."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example-schedule -->\s*```yaml\n(.*?)```", readme, re.S)
    assert match, "README lost its example schedule"
    config = load_config(write(tmp_path / "readme.yaml", match.group(1)), OPTIONS, env={})
    assert len(config.jobs) >= 3


def test_every_yaml_block_in_the_readme_is_valid(tmp_path: Path) -> None:
    """Each whole schedule in the README validates, and its job snippets together make one valid schedule."""
    import textwrap

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"^( *)```yaml\n(.*?)^\1```", readme, re.S | re.M)
    blocks = [textwrap.dedent(body) for _indent, body in found]
    whole = [b for b in blocks if b.lstrip().startswith(("timezone", "defaults", "jobs"))]
    snippets = [b for b in blocks if b not in whole]
    assert whole
    assert len(snippets) >= 5
    for i, block in enumerate(whole):
        load_config(write(tmp_path / f"readme{i}.yaml", block), OPTIONS, env={})
    # Snippets refer to each other (a drill's backup_job, a service's health job), as in one real schedule.
    load_config(write(tmp_path / "snippets.yaml", "jobs:\n" + "".join(snippets)), OPTIONS, env={})


def test_options_naming_another_job_must_name_one_of_its_kind(tmp_path: Path) -> None:
    """A drill's or review's backup_job and a service's health job are checked when the file is read."""
    text = """jobs:
  - {id: api, kind: health, schedule: every 1m, options: {endpoints: [{name: a, url: "http://x/"}]}}
  - {id: nightly, kind: backup, schedule: "@daily", options: {uri: "mongodb://x/"}}
  - {id: drill, kind: restore_drill, schedule: "@monthly", options: {backup_job: nightly-backup}}
  - {id: weekly, kind: weekly_review, schedule: "@weekly", options: {backup_job: api}}
  - {id: ok, kind: security_review, schedule: "@quarterly", options: {backup_job: nightly}}
  - id: deploys
    kind: deploys
    schedule: every 5m
    options: {services: [{name: web, service_id: srv-a1, health: api-helth}]}
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "j.yaml", text), OPTIONS)
    assert [f"{p.line}:{p.col} {p.where}: {p.message}" for p in info.value.problems] == [
        "4:82 jobs[2] (drill).options.backup_job: no backup job 'nightly-backup' in this schedule; "
        "backup jobs: 'nightly'",
        "5:82 jobs[3] (weekly).options.backup_job: no backup job 'api' in this schedule; backup jobs: 'nightly'",
        "10:66 jobs[5] (deploys).options.services[0].health: no health job 'api-helth' in this schedule; "
        "health jobs: 'api'",
    ]


# --- hostile files ------------------------------------------------------------------------

LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
    + "jobs: *i\n"
)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    """Every problem `load_config` names for this text (it must raise ConfigError, nothing else)."""
    path = write(tmp_path / "jobs.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, OPTIONS, env={})
    return [str(p).removeprefix(f"{path}:") for p in caught.value.problems]


def test_a_billion_laughs_file_is_refused_before_it_expands(tmp_path: Path) -> None:
    """9 levels of 10 aliases in under 1 KB: one problem naming the cap, at once (no expansion is built)."""
    assert len(LAUGHS) < 1000
    assert problems_of(tmp_path, LAUGHS) == [
        "1:1: yaml: the file expands to more than 100000 values through YAML aliases; write the jobs out"
    ]


def test_a_recursive_alias_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    """An anchor that contains itself, and 5000 '[' after jobs:, each give one named problem."""
    assert problems_of(tmp_path, "jobs: &a [*a]\n")[0].endswith("expands to more than 100000 values through "
                                                              "YAML aliases; write the jobs out")  # fmt: skip
    assert problems_of(tmp_path, "jobs: " + "[" * 5000 + "\n") == [
        "1:38: yaml: nested deeper than 32 levels; a schedule needs far fewer"
    ]


def test_huge_durations_and_files_are_named_errors(tmp_path: Path) -> None:
    """timeout: 99999999999d and a 2 MB file are each one problem, never an OverflowError."""
    text = "jobs:\n  - id: a\n    kind: command\n    schedule: '@daily'\n    timeout: 99999999999d\n" \
           "    options: {argv: ['true']}\n"  # fmt: skip
    assert problems_of(tmp_path, text) == ["5:14: jobs[0] (a).timeout: '99999999999d' is longer than 10 years; "
                                           "no schedule setting needs that"]  # fmt: skip
    big = "jobs:\n" + GOOD_JOB + "# padding\n" * 220_000
    assert problems_of(tmp_path, big) == [f"1:1: (file): the file has {len(big)} bytes, over the limit of 1024 KiB "
                                          "for a schedule"]  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "message"),
    [("timeout: 0s", "timeout: a timeout must be longer than 0s"),
     ("timeout: 8d", "timeout: 8d is over the limit of 7d (Sentry Crons' longest max_runtime)"),
     ("jitter: 15m", "jitter (15m) must be shorter than misfire_grace (10m): a run pushed past the grace is missed")],
)  # fmt: skip
def test_durations_that_cannot_work_are_refused(tmp_path: Path, setting: str, message: str) -> None:
    """A zero or over-7-day timeout, and jitter not shorter than misfire_grace, are refused with the rule."""
    text = (
        f"jobs:\n  - id: a\n    kind: command\n    schedule: '@daily'\n    {setting}\n    options: {{argv: ['true']}}\n"
    )
    [problem] = problems_of(tmp_path, text)
    assert problem.endswith(message)
    assert problem.startswith(("5:", "2:"))


def test_a_wrong_reference_is_reported_with_the_other_errors(tmp_path: Path) -> None:
    """A drill naming a missing backup job is reported in the same pass as a bad cron field elsewhere."""
    text = ("jobs:\n  - id: drill\n    kind: restore_drill\n    schedule: '@weekly'\n"
            "    options: {backup_job: nighty}\n"
            "  - id: nightly\n    kind: backup\n    schedule: '0 3 * * 8'\n")  # fmt: skip
    problems = problems_of(tmp_path, text)
    assert len(problems) == 2
    assert problems[0].startswith(
        "5:27: jobs[0] (drill).options.backup_job: no backup job 'nighty' in this schedule; backup jobs: 'nightly'"
    )
    assert problems[1].startswith("8:15: jobs[1] (nightly).schedule: '0 3 * * 8'")


@pytest.mark.slow
def test_validate_on_hostile_files_prints_problems_not_tracebacks(tmp_path: Path) -> None:
    """`opskeeper validate` on each hostile file exits 78 (config) naming the file; no traceback."""
    for text in (LAUGHS, "jobs: " + "[" * 5000 + "\n", "jobs:\n  - id: a\n    timeout: 99999999999d\n"):
        path = write(tmp_path / "jobs.yaml", text)
        result = opskeeper("validate", "--config", str(path), env={"PATH": "/usr/bin:/bin"}, timeout=60)
        assert result.code == 78, result.stderr
        assert "Traceback" not in result.stderr
        assert str(path) in result.stderr


@hypothesis.settings(max_examples=300, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(st.text(alphabet=st.sampled_from(list("jobs:-idkn \n[]{}&*!<>'\"#|0123456789ace,.$")), max_size=300))
def test_the_loader_never_raises_anything_but_config_error(text: str) -> None:
    """Fuzzed schedule text: load either succeeds or raises ConfigError, never any other exception."""
    from worker.schedule import parse_config

    problems: list[object] = []
    try:
        parse_config("jobs:\n" + text, "fuzz.yaml", OPTIONS, {})
    except ConfigError as exc:
        problems = list(exc.problems)
        assert problems, "a ConfigError always names at least one problem"
