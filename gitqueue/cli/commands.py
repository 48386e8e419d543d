"""The queue and worker commands."""

import os
import sys

import click

from .main import cli, context, emit, json_option, queue_option, worker_option


@cli.command("init")
@click.argument("url")
@click.option("--name", help="Name of this build (default: the repository's name).")
@click.option("--arch", default="", help="Machine architecture every worker must have (uname -m).")
@click.option("--os-release", default="", help="OS release every worker must run: what `uname -r` says "
                                                "(10.1), on Linux ID-VERSION_ID of /etc/os-release (debian-12).")
@click.option("--pkgsrc-branch", default="", help="pkgsrc branch every worker must build from.")
@click.option("--pkgsrc-revision", default="", help="pkgsrc tree revision every worker must build from.")
@click.option("--lease-ttl", type=int, default=3600, show_default=True,
              help="Seconds without a word from a worker before its leases may be reclaimed.")
@click.option("--packages-url", default="", metavar="URL",
              help="The shared package tree: a path or host:/path reached with rsync over ssh.")
@click.option("--admin", "admin_keys", multiple=True, metavar="NAME=FILE.pub",
              help="An administrator and their SSH public key; makes the queue signed (docs/trust.md).")
@click.option("--max-record-bytes", type=click.IntRange(min=1024), metavar="N",
              help="The largest file a push may add, enforced by the server hook (default 65536).")
@click.option("--max-leases", type=click.IntRange(min=1), metavar="N",
              help="Live leases one worker may hold at once (default 4).")
@click.option("--package-file", "package_files", multiple=True, metavar="PATTERN",
              help="A file name a success may name for its job: {name}, {base} (name without version) and "
                   "{version} are replaced, then matched as a shell pattern (repeatable; default {name}.tgz).")
@click.option("--upload-quota", metavar="BYTES",
              help="Bytes one worker may keep in the upload areas of its live leases (default 4G; K, M, G).")
@click.option("--min-heartbeat-seconds", type=click.FloatRange(min=0), metavar="S",
              help="Least time between two heartbeats of a worker the server accepts (default TTL/20, at most 60).")
@click.option("--max-attempts", type=click.IntRange(min=1, max=100), metavar="N",
              help="Attempts of a job that end in a transient failure (exit 75) before it fails (default 3).")
@json_option
def init_cmd(url, name, arch, os_release, pkgsrc_branch, pkgsrc_revision, lease_ttl, packages_url, admin_keys,
             max_record_bytes, max_leases, package_files, upload_quota, min_heartbeat_seconds, max_attempts,
             as_json):
    """Create a queue at URL (a local bare repository is created if missing).

    With --admin NAME=FILE.pub the queue is signed: every commit must carry the SSH signature of
    a registered worker or an admin, and this first one is signed with --signing-key (an admin's
    private key).

    \b
    Example: gitqueue init /srv/queues/2026Q4-m68k --arch m68k --pkgsrc-branch pkgsrc-2026Q4
    """
    from ..admin import init_queue
    from ..registry import read_key

    admins = []
    for spec in admin_keys:
        admin, sep, path = spec.partition("=")
        if not sep or not admin or not path:
            raise click.BadParameter(f"{spec!r}: expected NAME=FILE.pub", param_hint="--admin")
        path = os.path.expanduser(path)
        with open(path) as f:
            admins.append({"name": admin, "key": read_key(f.read(), path)})
    with context().open(url) as queue:
        name = name or os.path.basename(queue.url.rstrip("/")).removesuffix(".git") or "queue"
        limits = {"max_leases": max_leases, "package_files": list(package_files) or None,
                  "upload_quota": _bytes(upload_quota, "--upload-quota") if upload_quota else None,
                  "min_heartbeat_seconds": min_heartbeat_seconds, "max_attempts": max_attempts}
        settings = init_queue(queue, name, arch, os_release, pkgsrc_branch, lease_ttl, packages_url,
                              pkgsrc_revision, admins, max_record_bytes, limits)
        emit(settings, as_json, f"created queue {settings['name']} at {queue.url}")


def _bytes(text: str, option: str) -> int:
    """'4G' -> 4294967296: a size with an optional K, M or G (powers of 1024)."""
    import re

    m = re.fullmatch(r"\s*([0-9]+)\s*([KMG]?)B?\s*", text, re.I)
    if not m:
        raise click.BadParameter(f"{text!r}: expected a number of bytes, optionally with K, M or G",
                                 param_hint=option)
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


@cli.command("import")
@click.argument("url")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["presolve", "jsonl"]),
              help="Input format (default: jsonl for *.jsonl/*.json, else presolve; .xz is decompressed).")
@click.option("--history", "histories", multiple=True, metavar="URL-OR-FILE",
              help="Build times of an earlier build: a queue URL or a TSV with pkgpath and duration_s "
                   "(repeatable; later ones win).")
@click.option("--update", is_flag=True,
              help="Apply FILE, a new scan, to a live queue: new jobs appear, jobs gone retire, changed jobs and "
                   "their dependents build again, the others keep their results (admin).")
@click.option("--dry-run", is_flag=True, help="With --update: print what would happen, write nothing.")
@click.option("--previous", metavar="OLD_URL",
              help="An earlier queue (a previous branch's): jobs whose package it built are up to date, if the "
                   "package tree still holds that package with its checksum.")
@click.option("--up-to-date-command", metavar="CMD",
              help="With --previous: a site check run as CMD PKGNAME DEPNAME...; exit 0 means still up to date "
                   "(pbulk's pkg-up-to-date convention).")
@json_option
def import_cmd(url, file, fmt, histories, update, dry_run, previous, up_to_date_command, as_json):
    """Load a dependency graph into the queue at URL, all or nothing.

    FILE is pbulk's presolve output or a JSONL graph, one job per line (the keys and what is
    refused: docs/import.md). Estimates of build time come from --history, else from the graph
    (est_seconds, PBULK_WEIGHT), else a default; they order the build by its critical path.

    With --update the queue may already build: the scan is applied in one commit while workers
    keep building (docs/layout.md, "Updates"). Jobs whose version, dependencies or build
    settings changed, and everything that depends on them, become buildable again (their old
    results stay in the history; their live leases end and are fenced); jobs gone from the scan
    retire; the rest keep their results. --json names the jobs of each kind.

    \b
    Example: gitqueue import /srv/queues/2026Q4-m68k /var/bulk/presolve
    """
    from ..admin import import_jobs, update_jobs
    from ..importers import load_graph

    if dry_run and not update:
        raise click.BadParameter("--dry-run goes with --update", param_hint="--dry-run")
    if previous and update:
        raise click.BadParameter("--previous is for a new queue: an update keeps the unchanged jobs' results",
                                 param_hint="--previous")
    if up_to_date_command and not previous:
        raise click.BadParameter("--up-to-date-command goes with --previous", param_hint="--up-to-date-command")

    jobs = load_graph(file, fmt)
    ctx = context()
    times = {}
    for source in histories:
        from ..durations import load_times

        times.update(load_times(source, ctx.open))
    with ctx.open(url) as queue:
        if times:
            from ..durations import apply_times

            matched = apply_times(jobs, times)
        if update:
            done = update_jobs(queue, jobs, file, dry_run=dry_run)
        elif previous:
            reused = _up_to_date(ctx, queue, previous, jobs, up_to_date_command)
            counts = import_jobs(queue, jobs, file, reused, previous)
        else:
            counts = import_jobs(queue, jobs, file)
    if update:
        verb = "would update" if dry_run else "updated" if done["committed"] else "nothing to update"
        emit(done, as_json, f"{verb}: {len(done['added'])} added, {len(done['retired'])} retired, "
                            f"{len(done['rebuilt'])} rebuilt ({len(done['changed'])} changed, "
                            f"{len(done['set_aside'])} results set aside, {len(done['fenced'])} leases fenced), "
                            f"{len(done['kept'])} kept")
        return
    if times:
        counts["estimated_from_history"] = matched
    extra = f", {matched} timed by history" if times else ""
    if previous:
        extra += f", {counts['up_to_date']} up to date"
    emit(counts, as_json,
         f"imported {counts['jobs']} jobs ({counts['edges']} dependencies, {counts['prefailed']} prefailed{extra})")


def _up_to_date(ctx, queue, previous, jobs, command):
    """The jobs an earlier queue built whose packages the new queue's package tree still holds."""
    import shlex

    from ..errors import GitqueueError
    from ..publish import local_tree
    from ..reuse import previous_successes, up_to_date

    _, reader = queue.fetch()
    tree = local_tree(queue.settings(reader))
    if tree is None:
        raise GitqueueError("--previous needs the queue's packages_url to be a directory on this machine "
                            "(the package tree is checked for each reused package)")
    with ctx.open(previous) as old:
        _, old_reader = old.fetch()
        successes = previous_successes(old_reader)
    return up_to_date(jobs, successes, tree, shlex.split(command) if command else None)


@cli.command("claim")
@queue_option
@worker_option
@json_option
def claim_cmd(queue_url, worker, as_json):
    """Lease the best ready job and print it.

    Exit 0: claimed; 3: nothing ready now, retry later; 4: queue finished.

    \b
    Example: gitqueue claim --queue ssh://master/srv/queues/q --worker hp300-1 --json
    """
    from ..lease import claim

    ctx = context(queue_url, worker)
    with ctx.open() as queue:
        job = claim(queue, ctx.worker(), ctx.host, ctx.settings().platform())
    emit(job.as_dict(), as_json, lambda: f"{job.job}\t{job.pkgpath or '-'}\t{job.lease}")


@cli.command("heartbeat")
@queue_option
@worker_option
@json_option
def heartbeat_cmd(queue_url, worker, as_json):
    """Tell the queue this worker is alive and still building its jobs.

    Exit 5 if a job this host claimed for the worker was reclaimed meanwhile.

    \b
    Example: gitqueue heartbeat --worker hp300-1
    """
    from ..lease import heartbeat

    ctx = context(queue_url, worker)
    with ctx.open() as queue:
        out = heartbeat(queue, ctx.worker())
    emit({"held": out.held, "lost": out.lost}, as_json,
         lambda: "\n".join([f"held\t{j}" for j in out.held] + [f"lost\t{j}" for j in out.lost])
         or "alive, no jobs held")
    if out.lost:
        sys.exit(5)


@cli.command("report")
@click.argument("job")
@click.option("--status", type=click.Choice(["success", "failure"]), required=True)
@click.option("--log", "log_file", type=click.Path(exists=True, dir_okay=False), help="Build log to record.")
@click.option("--duration", type=float, help="Build time in seconds.")
@click.option("--package", "package_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A built package to upload to the queue's package tree first (repeatable).")
@click.option("--lease", "token", help="Lease token printed by claim (default: the one this host holds).")
@click.option("--transient", is_flag=True,
              help="With --status failure: not the package's fault (a full disk, a lost mount); the job goes back "
                   "to the queue until the queue's max_attempts.")
@queue_option
@worker_option
@json_option
def report_cmd(job, status, log_file, duration, package_files, token, transient, queue_url, worker, as_json):
    """Record the result of JOB and end its lease.

    With --package (and --log), the files are uploaded to incoming/LEASE/ of the queue's
    package tree and checked before the result names them; a file whose name the queue does not
    allow for JOB (package_files: JOB.tgz by default) is refused before anything is uploaded.
    The log is recorded (and uploaded) as JOB.log, whatever its file is called. Exit 5 if the
    job is not (or no longer) held by this worker; nothing is recorded then.

    With --transient (a failure only), the lease ends and the job goes back to the queue for
    any worker (this one after a backoff), until its max_attempts-th transient failure, which
    is recorded as a failure marked transient.

    Run again after a lost reply (the connection dropped after the master took the report), the
    same report by the same worker under the same lease says its outcome was already recorded and
    exits 0, writing nothing; another status under that lease exits 5.

    \b
    Example: gitqueue report gmake-4.4.1 --status success --log build.log --package gmake-4.4.1.tgz
    """
    from ..errors import GitqueueError, PackageRefused
    from ..lease import AlreadyRecorded
    from ..worker import report_build

    if transient and status != "failure":
        raise click.BadParameter("only a failure can be transient", param_hint="--transient")
    ctx = context(queue_url, worker)
    settings = ctx.settings()
    with ctx.open() as queue:
        try:
            result = report_build(queue, ctx.worker(), job, status, token=token, duration=duration,
                                  log_file=log_file, package_files=package_files, settings=settings,
                                  platform=settings.platform(), transient=transient)
        except PackageRefused as e:
            raise GitqueueError(f"--package {e}") from None
    if result.get("requeued"):
        text = (f"{job}: transient failure, attempt {result['attempt']} of {result['max_attempts']}: "
                "back to the queue")
    else:
        text = f"{job}: {status}{' (late)' if result.get('late') else ''}{' (transient)' if transient else ''}"
    if isinstance(result, AlreadyRecorded):
        text += " (already recorded by an earlier run of this report; nothing written)"
    emit(result, as_json, text)


@cli.command("retry")
@click.argument("jobs", nargs=-1)
@click.option("--failed", is_flag=True, help="Retry every failed job (with JOBs: those of them).")
@click.option("--since", metavar="WHEN",
              help="With --failed: only failures that finished at or after WHEN (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ).")
@click.option("--reason", required=True, help="Why (recorded in retries/ and the commit).")
@queue_option
@json_option
def retry_cmd(jobs, failed, since, reason, queue_url, as_json):
    """Make failed jobs buildable again (administrators): their failures are set aside.

    Each failure result leaves the tree (the history keeps it; retries/XX/JOB.toml names it),
    so the job is offered again and the jobs it kept from building wait for it again. Exit 1
    when a JOB has no failure result or nothing matches; nothing is written then.

    \b
    Example: gitqueue retry --failed --since 2026-11-20 --reason "distfiles mirror was down"
    """
    from ..admin import retry_jobs

    if since is not None and not failed and not jobs:
        raise click.BadParameter("give --failed (or JOBs) with --since", param_hint="--since")
    with context(queue_url).open() as queue:
        done = retry_jobs(queue, jobs, failed, since, reason)
    emit(done, as_json, lambda: "\n".join(
        f"retry {r['job']} (failed on {r['worker']}; attempt {r['attempts'] + 1} next)" for r in done))


@cli.command("release")
@click.argument("job")
@click.option("--reason", default="released", help="Why (recorded in the history).")
@click.option("--lease", "token", help="Lease token (default: the one this host holds).")
@queue_option
@worker_option
def release_cmd(job, reason, token, queue_url, worker):
    """Give JOB back: other workers get it, this one is not offered it again.

    \b
    Example: gitqueue release gmake-4.4.1 --reason "my pkgsrc has gmake-4.3, not 4.4.1"
    """
    from ..lease import release

    ctx = context(queue_url, worker)
    with ctx.open() as queue:
        release(queue, ctx.worker(), job, reason, token)
    click.echo(f"released {job}")


@cli.command("reclaim")
@queue_option
@click.option("--ttl", type=int, help="Override the queue's lease TTL (seconds).")
@json_option
def reclaim_cmd(queue_url, ttl, as_json):
    """Release the leases of workers not heard from for longer than the lease TTL (for cron).

    Expiry is measured on this machine's clock from when this machine first saw the worker's
    latest heartbeat record; run it from one host, every few minutes.

    \b
    Example: */5 * * * * gitqueue reclaim --queue /srv/queues/2026Q4-m68k
    """
    from ..lease import reclaim

    with context(queue_url).open() as queue:
        done = reclaim(queue, ttl=ttl)
    emit(done, as_json, lambda: "\n".join(
        f"reclaimed {r['job']} from {r['worker']} (silent {r['silent_for']} s)" for r in done) or "nothing to reclaim")


@cli.command("demo")
@click.argument("directory", default="gitqueue-demo", type=click.Path(file_okay=False))
@click.option("--workers", type=int, default=4, show_default=True)
@click.option("--speed", type=float, default=1.0, show_default=True, help="Build time multiplier.")
def demo_cmd(directory, workers, speed):
    """Run a local demonstration bulk build of 279 pkgsrc packages into DIRECTORY.

    \b
    Example: gitqueue demo /tmp/gq-demo && git -C /tmp/gq-demo/queue.git log --oneline | head
    """
    from ..demo import run_demo

    sys.exit(run_demo(directory, workers, speed, out=click.echo))


@cli.command("publish")
@queue_option
@click.option("--tree", type=click.Path(file_okay=False), help="The package tree (default: the queue's packages_url).")
@json_option
def publish_cmd(queue_url, tree, as_json):
    """Publish verified uploads into All/ and write pkg_summary.gz and SHA512 (on the master, cron).

    Several queues may publish into one tree: the indexes list every package that a publish run
    of any of them put in All/ (files nobody published are listed as unlisted, not indexed).

    A package is published only for its own job (PKGNAME.tgz, or the queue's package_files),
    when it matches its result's checksum, does not name itself as another package, and its
    result is proven (a late result only for a lease reclaimed from that worker). Then removes
    each upload published whole, and those no lease or result will use. Exit 1 when an upload
    is refused: it does not match its result, would overwrite another file, is not its job's,
    or its result is unproven.

    \b
    Example: */10 * * * * gitqueue publish --queue /srv/queues/q.git --tree /srv/packages/m68k
    """
    from ..errors import GitqueueError
    from ..publish import local_tree, publish, read_queue

    with context(queue_url).open() as queue:
        if tree is None:
            _, reader = queue.fetch()
            tree = local_tree(queue.settings(reader))
            if tree is None:
                raise GitqueueError("give --tree: the queue's packages_url is not a directory on this machine")
        out = publish(tree, read_queue(queue))
    emit(out, as_json, lambda: "\n".join(
        [f"published {len(out['published'])}, already {out['already']}, missing {len(out['missing'])}, "
         f"restricted {len(out['restricted'])}; {out['indexed']} packages indexed; uploads removed: "
         f"{out['removed']} published, {out['abandoned']} abandoned"]
        + [f"  {key} {item}" for key in ("published", "mismatch", "conflict", "invalid", "unproven", "unlisted")
           for item in out[key]]))
    bad = out["mismatch"] + out["conflict"] + out["invalid"] + out["unproven"]
    if bad:
        raise GitqueueError(f"{len(bad)} upload(s) refused: {', '.join(bad[:5])}"
                            + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
