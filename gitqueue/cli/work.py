"""`gitqueue work`: the worker loop, its options those of config.WorkerSettings."""

import sys

import click

from .main import cli, context, queue_option, worker_option


def settings_options(f):
    """The options of WorkerSettings fields that are options of `gitqueue work` (see config.py)."""
    from ..config import options

    for field in reversed(options()):
        kind = str if field.metadata["minimum"] is None else float
        f = click.option(field.metadata["option"], field.name, type=kind, help=field.metadata["doc"],
                         default=field.default, show_default=field.default is not None)(f)
    return f


@cli.command("work", context_settings={"ignore_unknown_options": True})
@queue_option
@worker_option
@click.option("--once", is_flag=True, help="Build one job, then stop.")
@click.option("--max-jobs", type=click.IntRange(min=1), help="Build at most this many jobs, then stop.")
@settings_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def work_cmd(queue_url, worker, once, max_jobs, command, **options):
    """Claim, build with COMMAND, report; repeat until the queue is finished.

    COMMAND runs with GITQUEUE_JOB, GITQUEUE_VERSION, GITQUEUE_PKGPATH, GITQUEUE_LEASE,
    GITQUEUE_DEPS, GITQUEUE_OUTPUT, GITQUEUE_PACKAGES, GITQUEUE_LOGS (its phase logs) and
    MULTI_VERSION variables in its environment, and the job's build info (pbulk's KEY=value lines)
    on standard input and in GITQUEUE_BUILD_INFO, so that pbulk's pkg-build runs as it is
    (docs/pkgsrc.md); exit 0 means success. The config file's before_build runs before each
    build; if it fails, the job goes back and the worker stops (exit 1).

    \b
    Example: gitqueue work --worker hp300-1 -- /usr/pbulk/libexec/pbulk/pkg-build
    """
    from ..memory import lean_worker

    lean_worker()  # before anything imports hashlib: the worker runs for weeks on small machines
    from ..config import options as option_fields
    from ..errors import SettingInvalid
    from ..worker import Worker

    ctx = context(queue_url, worker)
    try:
        settings = ctx.settings(**options)
    except SettingInvalid as e:  # the config file's values were checked as it was read: an option's
        hint = {f.name: f.metadata["option"] for f in option_fields()}.get(e.key)
        raise click.BadParameter(e.problem, param_hint=hint) from None
    with ctx.open() as queue:
        w = Worker(queue, ctx.worker(), list(command), settings, out=lambda line: click.echo(line, err=True))
        code = w.run(max_jobs=1 if once else max_jobs)
    sys.exit(code)
