"""Commands that show a build: status, html (the bulk build report), history, diff, log."""

import time

import click

from ..buildlog import MAX_BYTES as LOG_MAX_BYTES
from ..text import printable_lines
from .main import cli, context, emit, json_option, queue_option


def _duration(seconds):
    from ..bulkreport import duration_text

    return duration_text(seconds)


def _ago(seconds):
    return "-" if seconds is None else _duration(seconds)


@cli.command("status")
@queue_option
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until interrupted.")
@click.option("--interval", type=click.FloatRange(min=0.5), default=10, show_default=True,
              help="Seconds between redraws with --watch.")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many expiring leases and blockers to show.")
@json_option
def status_cmd(queue_url, watch, interval, top, as_json):
    """Show progress, rates, workers, expiring leases and the top blockers.

    Times come from the workers' clocks and are hints. Exit 0, or 1 when the queue cannot be
    read.

    \b
    Example: gitqueue status --queue /srv/queues/2026Q4-m68k --watch
    """
    from ..live import status

    with context(queue_url).open() as queue:
        while True:
            data = status(queue, top=top)
            if watch and not as_json:
                click.clear()
            emit(data, as_json, lambda: status_text(data))
            if not watch:
                return
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return


def _bar(share, width=40):
    filled = int(round(width * share))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def status_text(data) -> str:
    """The human text of `gitqueue status`."""
    c = data["counts"]
    eta = data.get("eta_seconds")
    churn = data.get("churn") or {}
    # Jobs given back faster than jobs get built: no estimate is honest then.
    stuck = churn.get("workers") or churn.get("released_last_hour", 0) > max(churn.get("built_last_hour", 0), 2)
    if data["finished"]:
        to_go = ""
    elif stuck:
        to_go = (f", no estimate: {churn['released_last_hour']} jobs given back and {churn['built_last_hour']} "
                 "built in the last hour (see churn below)")
    else:
        to_go = f", about {_duration(eta)} to go" if eta else ""
    lines = [f"queue {data['queue']}: {data['done']}/{data['total']} done ({data['progress']:.1%})"
             + (" - finished" if data["finished"] else "") + to_go]
    lines.append("  ".join(f"{state} {n}" for state, n in c.items()))
    if not data["total"]:
        return printable_lines(lines)
    lines.append(f"{_bar(data['build_progress'])} {data['built']}/{data['buildable']} buildable built "
                 f"({data['build_progress']:.1%})")
    rate = data["rate"]
    if data["started"]:
        overall = f"{rate['overall']:g}" if rate["overall"] is not None else "-"
        lines.append(f"rate: {overall} packages/h overall, {rate['last_hour']} in the last hour; "
                     f"started {data['started']}, "
                     + ("finished in " if data["finished"] else "running for ") + _duration(data["elapsed"]))
    if data["workers"]:
        lines.append("workers:")
        lines.append(f"  {'worker':16} {'current job':32} {'for':>8} {'heard':>8} {'done':>5} "
                     f"{'failed':>6} {'speed':>6}")
        for w in data["workers"]:
            speed = f"{w['speed']:.2f}x" if w["speed"] else "-"
            lines.append(f"  {w['worker']:16} {w['job'] or '-':32} {_ago(w['for']):>8} {_ago(w['last_heard']):>8} "
                         f"{w['done']:5} {w['failed']:6} {speed:>6}")
    if data["expiring"]:
        lines.append(f"leases closest to expiry (lease ttl {data['settings']['lease_ttl']} s):")
        for x in data["expiring"]:
            left = "-" if x["expires_in"] is None else (
                "due now" if x["expires_in"] <= 0 else f"in {_duration(x['expires_in'])}")
            lines.append(f"  {x['job']:40} {x['worker']:16} silent {_ago(x['silent']):>8}, expires {left}")
    if not data["finished"] and (churn.get("jobs") or churn.get("workers")):
        lines.append("churn (jobs given back instead of built):")
        for w in churn.get("workers", []):
            lines.append(f"  worker {w['worker']:16} gave back {w['given_back']} jobs since it last reported one: "
                         "in trouble? (gitqueue history, its own output)")
        for j in churn.get("jobs", []):
            lines.append(f"  {j['job']:40} given back {j['given_back']} times")
    if data["blockers"]:
        lines.append("top blockers (failed packages keeping others from building):")
        for b in data["blockers"]:
            phase = f", failed in {b['phase']}" if b.get("phase") else ""
            lines.append(f"  {b['job']:40} {b['pkgpath'] or '-':30} breaks {b['breaks']}{phase}")
    if data.get("failures"):
        lines.append("newest failures:")
        for f in data["failures"]:
            where = f"failed in {f['phase']}" if f.get("phase") else "failed"
            lines.append(f"  {f['job']:40} {f['pkgpath'] or '-':30} {where}")
    if data.get("skipped"):
        lines.append("skipped (no way on this architecture):")
        lines.extend(f"  {s['job']:40} {s['reason']}" for s in data["skipped"])
    return printable_lines(lines)


@cli.command("html")
@click.argument("outdir", required=False, type=click.Path(file_okay=False))
@click.option("--text", "as_text", is_flag=True, help="Print the plain-text report (for a mailing list) instead.")
@click.option("--logs", "logs_dir", type=click.Path(file_okay=False),
              help="Published build logs (JOB/NAME) to copy into OUTDIR/logs/JOB.txt and link [default: "
                   "logs/ of the queue's package tree when it is on this machine].")
@click.option("--log-url", metavar="URL", help="Link logs to URL/JOB/NAME when they are not copied.")
@queue_option
@json_option
def html_cmd(outdir, as_text, logs_dir, log_url, queue_url, as_json):
    """Write the bulk build report to OUTDIR as a static site (index.html, report.txt).

    The page needs no network: CSS and pictures (SVG) are inline. Failed builds' logs are copied
    as text (OUTDIR/logs/JOB.txt, the last 4 MiB of each); only plain .log and .txt names are
    copied or linked. Regenerate it from cron or a post-receive hook while the build runs; files
    are replaced atomically. Exit 0, 1 when the queue cannot be read or OUTDIR written, 2 without
    OUTDIR (unless --text or --json).

    \b
    Example: gitqueue html /var/www/bulk/2026Q4-m68k --queue /srv/queues/2026Q4-m68k.git
    """
    import os

    from ..bulkreport import build, text

    if not outdir and not (as_text or as_json):
        raise click.UsageError("give OUTDIR, or --text or --json to print the report")
    with context(queue_url).open() as queue:
        data = build(queue)
    if outdir:
        from ..htmlreport import write

        if logs_dir is None:
            from ..publish import LOGS, local_tree

            tree = local_tree(data["settings"])
            logs_dir = os.path.join(tree, LOGS) if tree is not None else None
        written = write(outdir, data, logs_dir=logs_dir, log_url=log_url)
        if not (as_text or as_json):
            logs = sum(1 for p in written if os.sep + "logs" + os.sep in p)
            click.echo(f"wrote {os.path.join(outdir, 'index.html')}: {data['total']} packages, "
                       f"{len(data['unsuccessful'])} unsuccessful, {logs} logs copied")
    if as_text:
        click.echo(text(data), nl=False)
    elif as_json:
        emit(data, True, "")


@cli.command("history")
@click.argument("package")
@click.option("--queue", "queue_urls", multiple=True, metavar="URL",
              help="A queue to look in (repeatable: earlier builds first) [env GITQUEUE_QUEUE].")
@json_option
def history_cmd(package, queue_urls, as_json):
    """List every attempt at PACKAGE (PKGNAME, base name or package path) in one or more builds.

    Each job's attempts are numbered (#) from 1 in the order claimed: `gitqueue log JOB
    --attempt N` prints the log of one.

    Exit 0; 1 when no queue has the package or a queue cannot be read.

    \b
    Example: gitqueue history devel/gmake --queue /srv/queues/2026Q3-m68k --queue /srv/queues/2026Q4-m68k
    """
    from contextlib import ExitStack

    from ..history import package_history

    ctx = context(queue_urls[0] if queue_urls else None)
    with ExitStack() as stack:
        queues = [stack.enter_context(ctx.open(url)) for url in (queue_urls or [None])]
        rows = package_history(queues, package)
    emit(rows, as_json, lambda: history_text(rows))


def history_text(rows) -> str:
    from ..bulkreport import time_text

    lines = [f"{'queue':16} {'job':32} {'#':>2} {'worker':14} {'started':20} {'took':>8}  {'result':18} log"]
    for r in rows:
        result = r["result"] + (" (late)" if r["late"] else "")
        took = _duration(r["duration"]) if r["duration"] is not None else "-"
        started = time_text(r["start"]).removesuffix(" UTC") if r["start"] is not None else "-"
        tail = r["log"] or (r["reason"] or "")
        lines.append(f"{r['queue']:16} {r['job']:32} {r['attempt'] or '-':>2} {r['worker'] or '-':14} {started:20} "
                     f"{took:>8}  {result:18} {tail}")
    return printable_lines(lines)


@cli.command("diff")
@click.argument("old")
@click.argument("new")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many of the largest build-time changes to list.")
@json_option
def diff_cmd(old, new, limit, as_json):
    """Compare two builds (queue URLs): newly failing, newly fixed, still failing, build times.

    Packages are matched by package path and base name, so version updates compare. Exit 0;
    1 when a queue cannot be read.

    \b
    Example: gitqueue diff /srv/queues/2026Q3-m68k /srv/queues/2026Q4-m68k
    """
    from ..history import compare

    ctx = context()
    with ctx.open(old) as before, ctx.open(new) as after:
        data = compare(before, after, limit=limit)
    emit(data, as_json, lambda: diff_text(data))


def diff_text(data) -> str:
    lines = [f"{data['old']} -> {data['new']}: {len(data['newly_failing'])} newly failing, "
             f"{len(data['newly_fixed'])} newly fixed, {len(data['still_failing'])} still failing, "
             f"{len(data['added'])} added, {len(data['removed'])} removed"]
    for key, title in (("newly_failing", "newly failing"), ("newly_fixed", "newly fixed"),
                       ("still_failing", "still failing")):
        if data[key]:
            lines.append(f"{title}:")
            for r in data[key]:
                was = f"{r['old']} ({r['old_state']})" if r["old"] else "(new)"
                breaks = f", breaks {r['breaks']}" if r["breaks"] else ""
                lines.append(f"  {r['pkgpath'] or '-':30} {r['new']:32} was {was}{breaks}")
    if data["time_changes"]:
        lines.append("largest build-time changes:")
        for c in data["time_changes"]:
            sign = "+" if c["change"] >= 0 else "-"
            lines.append(f"  {c['pkgpath'] or '-':30} {c['new']:32} {_duration(c['old_seconds']):>10} -> "
                         f"{_duration(c['new_seconds']):>10} ({sign}{_duration(abs(c['change']))})")
    return printable_lines(lines)


def _phase(value):
    """A --phase value: a phase name (letters, digits, - and _), else a usage error."""
    from ..phases import phase_of

    if value is not None and phase_of(f"{value}.log") != value:
        raise click.BadParameter(f"{value!r} is not a phase name (lower-case letters, digits, '-' and '_')")
    return value


@cli.command("log")
@click.argument("job")
@click.option("--attempt", type=click.IntRange(min=1), metavar="N",
              help="The Nth attempt, as `gitqueue history JOB` numbers them [default: the latest].")
@click.option("--tail", type=click.IntRange(min=1), metavar="N", help="Print only the log's last N lines.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=LOG_MAX_BYTES, show_default=True, metavar="BYTES",
              help="Print at most the log's last BYTES bytes (a line on stderr says what was left out).")
@click.option("--raw", is_flag=True, help="Print the log's bytes as they are, control characters included.")
@click.option("--tree", type=click.Path(file_okay=False),
              help="The package tree on this machine (default: the queue's packages_url).")
@click.option("--phase", metavar="PHASE", callback=lambda ctx, param, value: _phase(value),
              help="Print the log of this build phase (configure, build, ...: the result's phase logs) instead.")
@queue_option
def log_cmd(job, attempt, tail, max_bytes, raw, tree, phase, queue_url):
    """Print the build log of JOB's latest attempt (or of --attempt N), or of one of its phases.

    With --phase, the log the build command wrote for that phase into $GITQUEUE_LOGS (pbulk's
    configure.log for --phase configure), found as the build log is.

    Read from this host's cache when this host built that attempt, else from the package tree:
    its logs/JOB/ or incoming/LEASE/ when the tree is on this machine (the master: --tree, or a
    packages_url that is a directory), else fetched with rsync from the queue's packages_url, as
    `gitqueue work` fetches packages. A log from
    the tree is shown only if it matches the size and SHA-256 its result recorded. Control
    characters are shown escaped (\\x1b) unless --raw. Exit 0; 1 when there is no such job, the
    attempt has no log, or the log cannot be fetched or does not match its result.

    \b
    Example: gitqueue log gmake-4.4.1 --phase configure --tail 40 --queue /srv/queues/2026Q4-m68k.git
    """
    from ..buildlog import read_log
    from ..text import printable
    ctx = context(queue_url)
    settings = ctx.settings()
    # How `gitqueue work` reaches the package tree: the same ssh, the same retries.
    transfer = settings.transfer(settings.rsync_rsh)
    with ctx.open() as queue:
        got = read_log(queue, job, attempt, max_bytes=max_bytes, tail=tail, tree=tree, transfer=transfer,
                       phase=phase)
    if got["cut"] == "max_bytes":
        click.echo(f"gitqueue: the first {got['skipped']} of the log's {got['size']} bytes are left out "
                   f"(--max-bytes); {printable(got['where'])}", err=True)
    data = got["data"]
    if raw:
        click.get_binary_stream("stdout").write(data)
    elif data:
        text = printable(data.decode("utf-8", "replace"), keep_newlines=True)
        click.echo(text, nl=not text.endswith("\n"))
