"""The bulk build report as a static web site: one page, inline CSS and SVG, nothing to fetch.

The page works from the file system and from any web server. Files are written aside and
renamed into place, so the report can be regenerated (cron, a post-receive hook) while a web
server serves it. The page is built of `markup.Markup` templates: every value put into it is
escaped unless it is the page's own HTML.
"""

import errno
import os
import stat

from . import files, svg
from .bulkreport import duration_text, platform_text, summary_rows, text, time_text
from .layout import is_file_name, is_log_name
from .markup import Markup

CSS = Markup("""
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
""")


# The most of one build log copied into the report: its end, where the error is, after a note.
MAX_LOG_BYTES = 4 << 20


def write(outdir: str, data: dict, logs_dir: str | None = None, log_url: str | None = None) -> list[str]:
    """Write the report site for `data` (bulkreport.build) into `outdir`; return the paths written.

    The build log of each failed package is linked: copied from `logs_dir` (the package tree's
    logs/, laid out logs/JOB/NAME by `gitqueue publish`) to outdir/logs/JOB.txt, so that a web
    server serves it as text whatever its name, at most its last MAX_LOG_BYTES (after a note
    saying what was left out); else linked as `log_url`/JOB/NAME. A log whose name is not a
    plain .log or .txt file name (`layout.is_log_name`) is neither copied nor linked, and no file
    is read through a symbolic link (files.open_file).
    """
    os.makedirs(outdir, exist_ok=True)
    out_fd = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        links, written = _logs(out_fd, outdir, data["unsuccessful"], logs_dir, log_url)
        phase_links, copied = _phase_logs(out_fd, outdir, data["unsuccessful"], logs_dir, log_url)
        written += copied
        for name, content in (("index.html", page(data, links, phase_links)), ("report.txt", text(data))):
            files.write_atomic(out_fd, name, content.encode("utf-8"))
            written.append(os.path.join(outdir, name))
    finally:
        os.close(out_fd)
    return written


def _logs(out_fd: int, outdir: str, unsuccessful: list, logs_dir: str | None, log_url: str | None):
    """({job: link}, [paths written]) of the build logs of `unsuccessful` (see write)."""
    links, written = {}, []
    source_fd = _open_logs_dir(logs_dir)
    logs_fd = None
    try:
        for u in unsuccessful:
            job, name = u["job"], u["log"]
            if not (name and is_file_name(job) and is_log_name(name)):
                continue
            source = files.open_file(source_fd, job, name) if source_fd is not None else None
            if source is not None:
                if logs_fd is None:
                    logs_fd = files.open_dir(out_fd, "logs", create=True)
                    if logs_fd is None:
                        raise OSError(errno.ELOOP, "not a directory (a link?)", os.path.join(outdir, "logs"))
                target = f"{job}.txt"
                try:
                    if _copy_log(source, logs_fd, target):
                        written.append(os.path.join(outdir, "logs", target))
                finally:
                    os.close(source)
                links[job] = f"logs/{target}"
            elif log_url:
                links[job] = f"{log_url.rstrip('/')}/{job}/{name}"
    finally:
        for fd in (source_fd, logs_fd):
            if fd is not None:
                os.close(fd)
    return links, written


def _phase_logs(out_fd: int, outdir: str, unsuccessful: list, logs_dir: str | None, log_url: str | None):
    """({job: [(phase, link)]}, [paths written]) of the phase logs of `unsuccessful` (configure.log,
    ...), in pbulk's order of phases: copied from `logs_dir`/JOB/NAME to outdir/phases/JOB/PHASE.txt
    as `_logs` copies a build log, else linked as `log_url`/JOB/NAME."""
    from .phases import order_key, phase_of

    links: dict[str, list] = {}
    written: list[str] = []
    source_fd = _open_logs_dir(logs_dir)
    phases_fd = None
    try:
        for u in unsuccessful:
            job = u["job"]
            names = [n for n in u.get("phase_logs") or () if is_log_name(n) and phase_of(n)]
            if not names or not is_file_name(job):
                continue
            for name in sorted(names, key=order_key):
                phase = phase_of(name)
                source = files.open_file(source_fd, job, name) if source_fd is not None else None
                if source is not None:
                    try:
                        if phases_fd is None:
                            phases_fd = files.open_dir(out_fd, "phases", create=True)
                            if phases_fd is None:
                                raise OSError(errno.ELOOP, "not a directory (a link?)", os.path.join(outdir, "phases"))
                        job_fd = files.open_dir(phases_fd, job, create=True)
                        if job_fd is None:
                            raise OSError(errno.ELOOP, "not a directory (a link?)", os.path.join(outdir, "phases", job))
                        try:
                            if _copy_log(source, job_fd, f"{phase}.txt"):
                                written.append(os.path.join(outdir, "phases", job, f"{phase}.txt"))
                        finally:
                            os.close(job_fd)
                    finally:
                        os.close(source)
                    links.setdefault(job, []).append((phase, f"phases/{job}/{phase}.txt"))
                elif log_url:
                    links.setdefault(job, []).append((phase, f"{log_url.rstrip('/')}/{job}/{name}"))
    finally:
        for fd in (source_fd, phases_fd):
            if fd is not None:
                os.close(fd)
    return links, written


def _open_logs_dir(logs_dir: str | None) -> int | None:
    """A descriptor of the published logs' directory; None when there is none (yet)."""
    if logs_dir is None:
        return None
    try:
        return os.open(logs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # no log published yet


def _copy_log(source: int, logs_fd: int, target: str) -> bool:
    """Copy the log open as `source` to `target` in `logs_fd`, bounded; False when it is there already."""
    st = os.fstat(source)
    skipped = max(0, st.st_size - MAX_LOG_BYTES)
    note = (f"[gitqueue: the first {skipped} of the log's {st.st_size} bytes are left out here; "
            f"this is its last {MAX_LOG_BYTES} bytes]\n\n").encode() if skipped else b""
    old = files.lstat(logs_fd, target)
    if (old is not None and stat.S_ISREG(old.st_mode) and old.st_mtime_ns == st.st_mtime_ns
            and old.st_size == len(note) + st.st_size - skipped):
        return False
    data = os.pread(source, MAX_LOG_BYTES, skipped)
    files.write_atomic(logs_fd, target, note + data)
    # The source's time marks the copy, so that the next run copies only a log that changed.
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=logs_fd, follow_symlinks=False)
    return True


def _table(table_id, headers, rows, numeric=()) -> Markup:
    """A table; every header and cell is escaped unless it is Markup."""
    out = [Markup('<table id="{}">').format(table_id)]
    if headers:
        out.append(Markup("<thead><tr>"))
        out += [_TH[i in numeric].format(h) for i, h in enumerate(headers)]
        out.append(Markup("</tr></thead>"))
    out.append(Markup("<tbody>"))
    for row in rows:
        out.append(Markup("<tr>{}</tr>").format(Markup("").join(_TD[i in numeric].format(cell)
                                                                for i, cell in enumerate(row))))
    out.append(Markup("</tbody></table>"))
    return Markup("").join(out)


_TH = {False: Markup("<th>{}</th>"), True: Markup("<th class=n>{}</th>")}
_TD = {False: Markup("<td>{}</td>"), True: Markup("<td class=n>{}</td>")}


def _pkg(row) -> str:
    return row.get("pkgpath") or row["job"]


def _state(state: str) -> Markup:
    return Markup('<span class="state-{0}">{0}</span>').format(state)


def page(data: dict, links: dict | None = None, phase_links: dict | None = None) -> str:
    """The HTML of the report page; `links` maps a job to the URL of its build log, `phase_links`
    to the (phase, URL) of each of its phase logs."""
    links = links or {}
    phase_links = phase_links or {}
    s = data["settings"]
    counts = data["counts"]
    title = f"Bulk build report: {data['queue']}"
    state = "finished" if data["finished"] else "in progress"
    built = counts["success"] + counts["up-to-date"] + counts["failed"] + counts["indirect-failed"]
    goal = data["total"] - sum(counts[k] for k in ("prefailed", "indirect-prefailed", "skipped", "indirect-skipped"))
    share = built / goal if goal else 1.0
    parts = [
        Markup("<!DOCTYPE html>"), Markup('<html lang="en"><head><meta charset="utf-8">'),
        Markup('<meta name="viewport" content="width=device-width, initial-scale=1">'),
        Markup("<title>{}</title><style>{}</style></head><body>").format(title, CSS),
        Markup("<h1>{}</h1>").format(title),
        Markup('<p class="muted">Build {}; queue commit <code>{}</code>.</p>').format(state, data["commit"][:12]),
        Markup('<p><span class="bar"><span style="width:{:.1f}%"></span></span> '
               "{} of {} buildable packages done ({:.1%})</p>").format(share * 100, built, goal, share),
        Markup("<h2>Summary</h2>"),
        _table("summary", None, [
            ["Platform", platform_text(s)],
            # Only pkgsrc has branches: other package systems' queues have none to show.
            *([["pkgsrc branch", s["pkgsrc_branch"]]] if s.get("pkgsrc_branch") else []),
            ["Started", time_text(data["started"])],
            ["Ended", time_text(data["ended"]) if data["ended"] is not None else "still running"],
            ["Duration", duration_text(data["duration"])],
        ]),
        _table("counts", ["Packages", "Count"],
               [["Total", data["total"]]] + [[label, n] for label, n in summary_rows(data)], numeric=(1,)),
    ]
    if data["truncated"]:
        parts.append(Markup('<p class="muted">The history read starts after the build began: times are partial.</p>'))
    parts.append(Markup("<h2>Packages causing the most breakage</h2>"))
    if data["breakage"]:
        parts.append(_table("breakage", ["Package", "Name", "Breaks", "State", "Maintainer"], [
            [_pkg(r), r["job"], r["breaks"], _state(r["state"]), r["maintainer"] or ""]
            for r in data["breakage"]], numeric=(2,)))
    else:
        parts.append(Markup("<p>No failed package keeps another from building.</p>"))
    legend = Markup("").join(Markup('<span style="background:{}"></span>{}').format(color, name)
                             for name, color in svg.COLORS.items())
    parts += [
        Markup("<h2>Progress over time</h2>"),
        Markup('<p class="muted">Time since the first claim, from commit times (the workers\' clocks).</p>'),
        svg.progress(data["progress"], goal),
        Markup("<h2>Timeline of the workers</h2>"),
        Markup('<p class="legend">{}</p>').format(legend),
        svg.timeline(data["attempts"], now=data["generated"] if not data["finished"] else None),
        Markup("<h2>Workers</h2>"),
    ]
    parts.append(_table("workers", ["Worker", "Built", "Failed", "Released", "Reclaimed", "Building", "Busy",
                                    "Speed", "First seen", "Last seen"], [
        [w["worker"], w["success"], w["failure"], w["released"], w["reclaimed"], w["building"],
         duration_text(w["busy"]), f'{w["speed"]:.2f}x' if w["speed"] else "-", time_text(w["first"]),
         time_text(w["last"])] for w in data["workers"]], numeric=(1, 2, 3, 4, 5, 6, 7)))
    parts.append(Markup('<p class="muted">Speed: measured build time divided by the estimate (lower is faster).</p>'))
    parts.append(Markup("<h2>Unsuccessful packages ({})</h2>").format(len(data["unsuccessful"])))
    rows = []
    for u in data["unsuccessful"]:
        reason = u["reason"]
        if u["state"] == "failed" and u.get("log_tail"):
            reason = Markup("<details><summary>{}</summary><pre>{}</pre></details>").format(reason, u["log_tail"])
        link = links.get(u["job"])
        log = Markup('<a href="{}">log</a>').format(link) if link else Markup("")
        phases = [Markup('<a href="{}">{}</a>').format(url, phase) for phase, url in phase_links.get(u["job"], ())]
        if phases:
            log = Markup(" ").join([log, *phases]) if log else Markup(" ").join(phases)
        rows.append([_pkg(u), u["job"], _state(u["state"]), reason, u["breaks"] or "", u["maintainer"] or "", log])
    parts.append(_table("unsuccessful", ["Package", "Name", "State", "Reason", "Breaks", "Maintainer", "Log"], rows,
                        numeric=(4,)))
    parts.append(Markup('<p class="muted">Generated by gitqueue at {}. '
                        'Plain text: <a href="report.txt">report.txt</a>.</p></body></html>').format(
        time_text(data["generated"])))
    # Joined as Markup: a part that is plain text (not the page's own HTML) is escaped too.
    return Markup("\n").join(parts) + "\n"
