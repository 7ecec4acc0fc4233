"""The status page: one self-contained HTML file (no scripts, styles, fonts or images from elsewhere).

Drawn from `status.build_status`'s document. Charts are a few SVG shapes written here: a
row of 90 day cells and a polyline are smaller and clearer as hand-written SVG than any
charting library's output, and the worker image gains nothing. Status is shown by text
and shape as well as colour: each state has a symbol and a word, and a day's cell is
shorter the worse the day was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from html import escape
from typing import Any

from jobs.review.verdict import state
from worker.job import cut, format_size

# Okabe-Ito, readable by the colour-blind; an endpoint keeps its colour in every chart.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CELL_W, CELL_GAP, CELL_H = 6, 2, 28
#: Fewer points than this are said in words, not drawn, on the page and in the review's charts alike: one dot in
#: an empty frame, or a hairline between two, is not a trend.
TREND_MIN = 3

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;color:#1f2328;
padding:0 1rem}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eaeef2;
vertical-align:top}th{background:#f6f8fa}.state{font-weight:600;white-space:nowrap}.muted{color:#57606a}
.endpoint{margin:1rem 0 1.5rem}.legend span{margin-right:1rem}svg{display:block}time{white-space:nowrap}
.verdict{font-size:1.1rem}.attention li{margin:.2rem 0}.attention .state{margin-right:.4rem}
"""


def _colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _state(name: str | None) -> str:
    """A state as the page shows it everywhere: its symbol and word in its colour (`verdict.STATES`)."""
    shown = state(name)
    return (
        f'<span class="state" data-state="{escape(name or "never")}" style="color:{shown.colour}">'
        f"{shown.symbol} {escape((name or 'never').upper())}</span>"
    )


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} %"


def _day_cell(day: Mapping[str, Any] | None) -> tuple[str, float, str]:
    """(colour, height fraction, words) of one day: full for a clean day, shorter the worse it was."""
    if day is None or not day["checks"]:
        return "#d0d7de", 0.35, "no checks"
    up = 100 * (day["checks"] - day["failures"]) / day["checks"]
    latency = "" if day["latency_avg_ms"] is None else f", average {day['latency_avg_ms']:.0f} ms"
    words = f"{up:.2f} % up, {day['checks']} checks, {day['failures']} failed, {day['degraded']} degraded{latency}"
    if day["failures"] == 0:
        return ("#1a7f37", 1.0, words) if day["degraded"] == 0 else ("#9a6700", 0.85, words)
    if up >= 99.0:
        return "#bf8700", 0.7, words
    return "#cf222e", 0.45, words


def day_bar(days: Sequence[Mapping[str, Any]], today: date, count: int = 90) -> str:
    """One cell per day for the `count` days ending `today` (Uptime Kuma's bar), hover text on each."""
    by_day = {d["day"]: d for d in days}
    cells = []
    for i in range(count):
        day = (today - timedelta(days=count - 1 - i)).isoformat()
        colour, height, words = _day_cell(by_day.get(day))
        h = round(CELL_H * height, 1)
        cells.append(f'<rect x="{i * (CELL_W + CELL_GAP)}" y="{CELL_H - h}" width="{CELL_W}" height="{h}" rx="1" '
                     f'fill="{colour}" data-day="{day}"><title>{day}: {escape(words)}</title></rect>')  # fmt: skip
    width = count * (CELL_W + CELL_GAP)
    return (f'<svg role="img" aria-label="uptime per day, {count} days" width="{width}" height="{CELL_H}" '
            f'viewBox="0 0 {width} {CELL_H}">{"".join(cells)}</svg>')  # fmt: skip


def sparkline(values: Sequence[float | None], colour: str, label: str, *, width: int = 240, height: int = 36,
              unit: str = "day", show: Callable[[float], str] = lambda v: f"{v:g}") -> str:  # fmt: skip
    """A line through the values (gaps where None); too few to be a trend are said in words ("1 day of data")."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if not points:
        return f'<span class="muted">no {escape(label)} yet</span>'
    if len(points) < TREND_MIN:
        said = ", ".join(show(v) for _, v in points)
        return (
            f'<span class="muted">{len(points)} {escape(unit)}{"" if len(points) == 1 else "s"} of data, '
            f"too few for a trend: {escape(said)}</span>"
        )
    low, high = min(v for _, v in points), max(v for _, v in points)
    span = (high - low) or 1.0
    step = width / max(len(values) - 1, 1)

    def xy(i: int, v: float) -> str:
        return f"{round(i * step, 1)},{round(height - 4 - (v - low) / span * (height - 8), 1)}"

    # A dot per value while they are few; past that, the line and a dot on the newest value.
    dotted = points if len(points) <= 12 else points[-1:]
    marks = "".join(f'<circle cx="{xy(i, v).split(",")[0]}" cy="{xy(i, v).split(",")[1]}" r="2.5" fill="{colour}">'
                    f"<title>{v:g}</title></circle>" for i, v in dotted)  # fmt: skip
    line = ""
    if len(points) > 1:
        line = (f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                f'points="{" ".join(xy(i, v) for i, v in points)}"/>')  # fmt: skip
    return (f'<svg role="img" aria-label="{escape(label)}: {low:g} to {high:g}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{line}{marks}</svg>')  # fmt: skip


def _endpoints(status: Mapping[str, Any], today: date) -> list[str]:
    out = ['<h2 id="endpoints">Endpoints</h2>']
    if not status["endpoints"]:
        out.append('<p class="muted">No health checks recorded yet.</p>')
    out.append('<p class="legend muted">Each cell is one day (UTC), oldest left: <span>full green = no failed '
               "check</span><span>shorter amber = degraded or under 1 % failed</span><span>short red = more "
               "failed</span><span>grey stub = no checks</span></p>")  # fmt: skip
    for index, row in enumerate(status["endpoints"]):
        days = row["days"]
        by_day = {d["day"]: d["latency_avg_ms"] for d in days}
        latencies = [by_day.get((today - timedelta(days=89 - i)).isoformat()) for i in range(90)]
        bad = [d for d in days if d["failures"]][-5:]
        outages = ", ".join(f"{d['day']} ({d['failures']} failed)" for d in reversed(bad)) or "none in 90 days"
        out.append(f'<div class="endpoint" data-endpoint="{escape(row["job_id"])}/{escape(row["endpoint"])}">'
                   f'<h3 style="border-left:6px solid {_colour(index)};padding-left:.5rem">'
                   f'{escape(row["job_id"])}/{escape(row["endpoint"])} {_state(row["state"])}</h3>'
                   f'<p>Up {_pct(row["uptime_24h"])} over 24 h, {_pct(row["uptime_30d"])} over 30 days. '
                   f'Days with failures: {escape(outages)}.'
                   + (f' Last check: {escape(row["last_reason"])}' if row["state"] == "DOWN" else "") + "</p>"
                   f"{day_bar(days, today)}"
                   f'<p class="muted">Average latency per day (ms)</p>'
                   f'{sparkline(latencies, _colour(index), "latency", show=lambda v: f"{v:.0f} ms")}'
                   "</div>")  # fmt: skip
    return out


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    header = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def short_time(moment: object, missing: str = "–") -> str:
    """`2026-12-01T15:21:09.960000+00:00` -> `2026-12-01 15:21`: UTC, stated once where the times are shown."""
    return str(moment)[:16].replace("T", " ") if moment else missing


def _when(moment: str | None, missing: str = "–") -> str:
    """A time kept on one line (a narrow column must not wrap a date over three)."""
    return f"<time>{escape(short_time(moment, missing))}</time>" if moment else escape(missing)


def _backups(status: Mapping[str, Any]) -> list[str]:
    out = ['<h2 id="backups">Backups</h2>']
    if not status["backups"]:
        return [*out, '<p class="muted">No backup job in this schedule.</p>']
    rows = []
    for index, job in enumerate(status["backups"]):
        newest, verified = job["newest"] or {}, job["newest_verified"] or {}
        sizes = sparkline([s["stored_bytes"] for s in job["sizes"]], _colour(index), "size", width=160, height=28,
                          unit="backup", show=format_size)  # fmt: skip
        times = sparkline([r["recovery_s"] for r in job["recoveries"]], _colour(index), "recovery time", width=160,
                          height=28, unit="drill", show=lambda v: f"{v:.1f} s")  # fmt: skip
        rows.append([escape(job["job_id"]), _when(newest.get("at"), "none"),
                     format_size(newest.get("stored_bytes")), sizes,
                     _when(verified.get("at"), "never") + (f" ({verified['recovery_s']:.1f} s)"
                                                                        if verified.get("recovery_s") else ""),
                     times])  # fmt: skip
    chains = [f"<p>Point in time ({escape(p['job_id'])} for {escape(job['job_id'])}): "
              + (f"<strong>broken since {escape(p['broken_since'])}</strong>: {escape(p['reason'] or '')}"
                 if p["broken_since"] else f"captured through {escape(p['through'] or 'nothing yet')}") + "</p>"
              for job in status["backups"] for p in job.get("point_in_time", [])]  # fmt: skip
    return [*out, _table(["Job", "Newest", "Size", "Size trend", "Last verified (restore drill)", "Recovery trend"],
                         rows), *chains]  # fmt: skip


def _deploys(status: Mapping[str, Any]) -> list[str]:
    out = ['<h2 id="deploys">Deploys</h2>']
    if not status["deploys"]:
        return [*out, '<p class="muted">No deploys job in this schedule.</p>']
    rows = [[escape(d["service"]), escape(f"{d['newest']['commit']} ({d['newest']['status']})" if d["newest"] else "–"),
             escape(f"{d['last_good']['commit']} at {d['last_good']['good_at'] or '?'}" if d["last_good"] else "none")]
            for d in status["deploys"]]  # fmt: skip
    return [*out, _table(["Service", "Newest deploy", "Last good"], rows)]


def _dependencies(status: Mapping[str, Any]) -> list[str]:
    out = ['<h2 id="dependencies">Dependencies</h2>']
    if not status["dependencies"]:
        return [*out, '<p class="muted">No dependency report yet.</p>']
    rows = [[escape(p["project"]), escape(_advisories(p)),
             escape(", ".join(p["majors"]) or "none"), escape(f"{p['node_line'] or '?'} ({p['node'] or 'unknown'})"),
             escape(", ".join(p["gaps"]) or "–"), escape(p["checked_at"][:10])]
            for p in status["dependencies"]]  # fmt: skip
    return [*out, _table(["Project", "Advisories", "Majors behind", "Node.js", "Not checked", "Checked"], rows)]


def _advisories(project: Mapping[str, Any]) -> str:
    """Advisory counts by severity, "none" only when a source answered, else "not checked"."""
    if project["advisories"] is None:
        return "not checked (no advisory source answered)"
    return ", ".join(f"{n} {s}" for s, n in sorted(project["advisories"].items())) or "none"


def _jobs(status: Mapping[str, Any]) -> list[str]:
    rows = []
    for job in status["jobs"]:
        rows.append([escape(job["id"]), escape(job["kind"]), _state(job["last_status"] or "never"),
                     _when(job["last_run_at"]), _when(job["last_success_at"]), _when(job["next_run"]),
                     escape(cut(job["summary"], 160))])  # fmt: skip
    return ['<h2 id="jobs">Jobs</h2>', _table(["Job", "Kind", "Last run", "When (UTC)", "Last success", "Next run",
                                               "Summary"], rows)]  # fmt: skip


def attention_list(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """What needs a person, one line each, newest first; an empty list says there is nothing to do."""
    if not items:
        return ['<p class="muted">Nothing needs attention.</p>']
    lines = [f'<li>{_state("FAILING" if i["level"] == "failing" else "ATTENTION")}<strong>{escape(i["what"])}</strong>'
             + (f" (since {_when(i['since'])})" if i["since"] else "") + f": {escape(i['message'])}</li>"
             for i in items]  # fmt: skip
    return ['<ul class="attention">', *lines, "</ul>"]


def render(status: Mapping[str, Any]) -> str:
    """The whole page: the verdict and what needs attention first, then each part."""
    generated = datetime.fromisoformat(status["generated_at"])
    verdict = status["overall"]["state"]
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        # Nothing may load from anywhere: the page is one file. The icon is empty so browsers do not ask for one.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">", '<link rel="icon" href="data:,">',
        f"<title>Status: {escape(verdict.lower())}</title><style>{CSS}</style></head><body>",
        f'<h1>Operations status <span class="verdict">{_state(verdict)}</span></h1>',
        f'<p class="muted">Generated {escape(generated.strftime("%Y-%m-%d %H:%M UTC"))} by opskeeper. '
        "The verdict is the worst of every endpoint, job and check below.</p>",
        '<h2 id="attention">Needs attention</h2>', *attention_list(status["needs_attention"]),
        *_endpoints(status, generated.date()), *_backups(status), *_deploys(status), *_dependencies(status),
        *_jobs(status), "</body></html>",
    ]  # fmt: skip
    return "\n".join(parts) + "\n"
