"""The maintenance command: gc."""

import click

from .main import cli, context, emit, json_option, queue_option


@cli.command("gc")
@click.argument("url", required=False)
@queue_option
@click.option("--cache", is_flag=True,
              help="Trim this host's cache of an ssh:// or git:// queue to its tip instead.")
@click.option("--grace", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="With --cache: remove what an earlier run superseded this long ago "
                   "(default 3600; 0: remove at once).")
@click.option("--keep-logs", type=click.IntRange(min=0), default=None, metavar="N",
              help="With --cache: build logs of jobs no longer held to keep, the newest (default 200).")
@json_option
def gc_cmd(url, queue_url, cache, grace, keep_logs, as_json):
    """Pack a local-path queue's loose objects, or trim a worker's cache (--cache).

    On a local-path queue (the master) loose objects are packed with `git repack` (git must be
    installed, as it is where workers are served over ssh); on a worker, --cache keeps
    only the objects of the current tree in the host's cache of the queue; what that
    supersedes is removed by a later run, --grace seconds on, so that commands reading an
    older tip meanwhile still find it. --cache also removes the build output directories that
    `gitqueue work` left for jobs this host no longer holds (uploaded: the package tree has
    them), and their logs but the newest --keep-logs. Safe while workers run (run it from
    cron); refs are never rewritten. Exit status 1 when git is missing or fails, or the queue
    is not a repository of that kind.

    \b
    Example: gitqueue gc /srv/queues/2026Q4-m68k.git
    """
    from ..gc import gc_cache, gc_repository
    from ..gitstore import is_local_path

    ctx = context(queue_url)
    with ctx.open(url) as queue:
        if cache or not is_local_path(queue.url):
            out = gc_cache(queue, **{k: v for k, v in (("grace", grace), ("keep_logs", keep_logs)) if v is not None})
        else:
            path = queue.url[7:] if queue.url.startswith("file://") else queue.url
            out = gc_repository(path)
    b, a = out["before"], out["after"]
    waiting = out.get("superseded", {}).get("files")
    o = out.get("outputs")
    emit(out, as_json, lambda: (
        f"{b['loose']} loose objects, {b['packs']} packs, {b['bytes'] / 1e6:.1f} MB -> "
        f"{a['loose']} loose objects, {a['packs']} packs, {a['bytes'] / 1e6:.1f} MB "
        f"in {out['seconds']:.1f} s"
        + (f"; {waiting} superseded files ({out['superseded']['bytes'] / 1e6:.1f} MB) "
           "wait for a later gc --cache" if waiting else "")
        + (f"\nremoved {o['builds']} build directories ({o['build_bytes'] / 1e6:.1f} MB) and {o['logs']} logs "
           f"({o['log_bytes'] / 1e6:.1f} MB) of jobs this host no longer holds" if o is not None else "")))
