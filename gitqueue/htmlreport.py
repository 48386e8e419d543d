"""The bulk build report as a static web site: one page, inline CSS and SVG, nothing to fetch.

The page works from the file system and from any web server. Files are written aside and
renamed into place, so the report can be regenerated (cron, a post-receive hook) while a web
server serves it.
"""

import os
import shutil
from html import escape

from . import svg
from .bulkreport import duration_text, platform_text, summary_rows, text, time_text

CSS = """
body{font:14px/1.4 sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:2px 10px;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}td.n,th.n{text-align:right}
.state-failed,.state-indirect-failed{color:#b0281e}.state-prefailed,.state-indirect-prefailed{color:#8a5a00}
.state-skipped,.state-indirect-skipped{color:#666}.muted{color:#777}
details pre{white-space:pre-wrap;font-size:12px;background:#f6f6f6;padding:6px;max-width:900px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.bar{background:#eee;width:400px;height:14px;display:inline-block;vertical-align:middle}
.bar span{display:block;background:#3a9a4a;height:14px}
"""


def write(outdir: str, data: dict, logs_dir: str | None = None, log_url: str | None = None) -> list[str]:
    """Write the report site for `data` (bulkreport.build) into `outdir`; return the paths written.

    Build logs of failed packages are linked: copied from `logs_dir` (the package tree's
    logs/, laid out logs/JOB/NAME by `gitqueue publish`) into outdir/logs/ when there, else
    linked under `log_url` when given.
    """
    os.makedirs(outdir, exist_ok=True)
    links = {}
    written = []
    for u in data["unsuccessful"]:
        if not u["log"]:
            continue
        rel = f"logs/{u['job']}/{u['log']}"
        source = os.path.join(logs_dir, u["job"], u["log"]) if logs_dir else None
        if source and os.path.isfile(source):
            target = os.path.join(outdir, rel)
            if not os.path.isfile(target) or os.path.getsize(target) != os.path.getsize(source):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = f"{target}.{os.getpid()}.tmp"
                shutil.copyfile(source, tmp)
                os.replace(tmp, target)
                written.append(target)
            links[u["job"]] = rel
        elif log_url:
            links[u["job"]] = f"{log_url.rstrip('/')}/{u['job']}/{u['log']}"
    for name, content in (("index.html", page(data, links)), ("report.txt", text(data))):
        path = os.path.join(outdir, name)
        _write_atomic(path, content.encode("utf-8"))
        written.append(path)
    return written


def _write_atomic(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Markup(str):
    """Text that is already HTML: a table cell shows it as it is (every other cell is escaped)."""


def _cell(value) -> str:
    return value if isinstance(value, Markup) else escape(str(value))


def _table(table_id, headers, rows, numeric=()) -> str:
    """A table; every header and cell is escaped unless it is Markup."""
    out = [f'<table id="{table_id}">']
    if headers:
        out.append("<thead><tr>")
        out += [f'<th{" class=n" if i in numeric else ""}>{_cell(h)}</th>' for i, h in enumerate(headers)]
        out.append("</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td{" class=n" if i in numeric else ""}>{_cell(cell)}</td>' for i, cell in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _pkg(row) -> str:
    return row.get("pkgpath") or row["job"]


def _state(state: str) -> Markup:
    return Markup(f'<span class="state-{escape(state)}">{escape(state)}</span>')


def page(data: dict, links: dict | None = None) -> str:
    """The HTML of the report page; `links` maps a job to the URL of its build log."""
    links = links or {}
    s = data["settings"]
    counts = data["counts"]
    title = f"Bulk build report: {data['queue']}"
    state = "finished" if data["finished"] else "in progress"
    built = counts["success"] + counts["failed"] + counts["indirect-failed"]
    goal = data["total"] - sum(counts[k] for k in ("prefailed", "indirect-prefailed", "skipped", "indirect-skipped"))
    share = built / goal if goal else 1.0
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">Build {state}; queue commit <code>{escape(data["commit"][:12])}</code>.</p>',
        f'<p><span class="bar"><span style="width:{share * 100:.1f}%"></span></span> '
        f"{built} of {goal} buildable packages done ({share:.1%})</p>",
        "<h2>Summary</h2>",
        _table("summary", None, [
            ["Platform", platform_text(s)],
            ["pkgsrc branch", s.get("pkgsrc_branch") or "-"],
            ["Started", time_text(data["started"])],
            ["Ended", time_text(data["ended"]) if data["ended"] is not None else "still running"],
            ["Duration", duration_text(data["duration"])],
        ]),
        _table("counts", ["Packages", "Count"],
               [["Total", data["total"]]] + [[label, n] for label, n in summary_rows(data)], numeric=(1,)),
    ]
    if data["truncated"]:
        parts.append('<p class="muted">The history read starts after the build began: times are partial.</p>')
    parts.append("<h2>Packages causing the most breakage</h2>")
    if data["breakage"]:
        parts.append(_table("breakage", ["Package", "Name", "Breaks", "State", "Maintainer"], [
            [_pkg(r), r["job"], r["breaks"], _state(r["state"]), r["maintainer"] or ""]
            for r in data["breakage"]], numeric=(2,)))
    else:
        parts.append("<p>No failed package keeps another from building.</p>")
    legend = "".join(f'<span style="background:{color}"></span>{name}' for name, color in svg.COLORS.items())
    parts += [
        "<h2>Progress over time</h2>",
        '<p class="muted">Time since the first claim, from commit times (the workers\' clocks).</p>',
        svg.progress(data["progress"], goal),
        "<h2>Timeline of the workers</h2>",
        f'<p class="legend">{legend}</p>',
        svg.timeline(data["attempts"], now=data["generated"] if not data["finished"] else None),
        "<h2>Workers</h2>",
    ]
    parts.append(_table("workers", ["Worker", "Built", "Failed", "Released", "Reclaimed", "Building", "Busy",
                                    "Speed", "First seen", "Last seen"], [
        [w["worker"], w["success"], w["failure"], w["released"], w["reclaimed"], w["building"],
         duration_text(w["busy"]), f'{w["speed"]:.2f}x' if w["speed"] else "-", time_text(w["first"]),
         time_text(w["last"])] for w in data["workers"]], numeric=(1, 2, 3, 4, 5, 6, 7)))
    parts.append('<p class="muted">Speed: measured build time divided by the estimate (lower is faster).</p>')
    parts.append(f"<h2>Unsuccessful packages ({len(data['unsuccessful'])})</h2>")
    rows = []
    for u in data["unsuccessful"]:
        reason = u["reason"]
        if u["state"] == "failed" and u.get("log_tail"):
            reason = Markup(f"<details><summary>{escape(reason)}</summary>"
                            f"<pre>{escape(u['log_tail'])}</pre></details>")
        link = links.get(u["job"])
        log = Markup(f'<a href="{escape(link)}">log</a>') if link else ""
        rows.append([_pkg(u), u["job"], _state(u["state"]), reason, u["breaks"] or "", u["maintainer"] or "", log])
    parts.append(_table("unsuccessful", ["Package", "Name", "State", "Reason", "Breaks", "Maintainer", "Log"], rows,
                        numeric=(4,)))
    parts.append(f'<p class="muted">Generated by gitqueue at {time_text(data["generated"])}. '
                 'Plain text: <a href="report.txt">report.txt</a>.</p></body></html>')
    return "\n".join(parts) + "\n"
