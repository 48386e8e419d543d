"""Scheduling commands: simulate, the priority list and the no-way lists."""

import click

from .main import cli, context, emit, json_option, queue_option


def _floats(text):
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected numbers separated by commas") from None
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter(f"{text!r}: expected positive numbers separated by commas")
    return values


@cli.command("simulate")
@click.argument("graph", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["presolve", "jsonl"]), help="Input format (default: guessed).")
@click.option("--workers", type=click.IntRange(min=1), required=True, help="Number of workers.")
@click.option("--slowness", default="1", show_default=True,
              help="Time multipliers cycled over the workers, e.g. 1,4.")
@click.option("--estimate-error", type=click.FloatRange(0, 0.99), default=0.0, show_default=True,
              help="The scheduler sees each duration off by a factor in [1-E, 1+E].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--policy", type=click.Choice(["fifo", "pbulk", "critical-path", "gitqueue", "all"]), default="all",
              show_default=True)
@json_option
def simulate_cmd(graph, fmt, workers, slowness, estimate_error, seed, policy, as_json):
    """Run scheduling policies over GRAPH in virtual time and compare makespans.

    JSONL est_seconds are the true durations. Prints per policy the makespan, the lower bound
    max(critical path x fastest multiplier, total work / sum of 1/multiplier) and their ratio.

    \b
    Example: gitqueue simulate bulk.jsonl --workers 8 --slowness 1,4 --estimate-error 0.5
    """
    from ..importers import load_graph
    from ..simulate import POLICIES, simulate

    jobs = load_graph(graph, fmt)
    multipliers = _floats(slowness)
    policies = POLICIES if policy == "all" else (policy,)
    rows = [simulate(jobs, workers, p, multipliers, estimate_error, seed) for p in policies]
    emit(rows, as_json, lambda: "\n".join(
        [f"{'policy':14} {'workers':>7} {'makespan s':>12} {'lower bound s':>14} {'ratio':>7}"]
        + [f"{r['policy']:14} {r['workers']:7} {r['makespan']:12.0f} {r['lower_bound']:14.0f} {r['ratio']:7.3f}"
           for r in rows]))


@cli.group("priority")
def priority_group():
    """The priority list: packages (and all they need) built ahead of the rest.

    \b
    Example: gitqueue priority add 'firefox*' lang/perl5 --queue /srv/queues/q.git
    """


@priority_group.command("add")
@click.argument("patterns", nargs=-1, required=True)
@queue_option
@json_option
def priority_add(patterns, queue_url, as_json):
    """Put PATTERNS (PKGNAME, base name or PKGPATH; * and ? allowed) on the priority list.

    \b
    Example: gitqueue priority add 'firefox*' lang/perl5 --queue /srv/queues/q.git
    """
    _priority(queue_url, as_json, add=patterns)


@priority_group.command("remove")
@click.argument("patterns", nargs=-1, required=True)
@queue_option
@json_option
def priority_remove(patterns, queue_url, as_json):
    """Take PATTERNS off the priority list.

    \b
    Example: gitqueue priority remove 'firefox*' --queue /srv/queues/q.git
    """
    _priority(queue_url, as_json, remove=patterns)


@priority_group.command("list")
@queue_option
@json_option
def priority_list(queue_url, as_json):
    """Show the priority list.

    \b
    Example: gitqueue priority list --queue /srv/queues/q.git
    """
    from ..lists import read_priority

    packages = _read_list(queue_url, read_priority)
    emit(packages, as_json, lambda: "\n".join(packages) or "the priority list is empty")


def _read_list(queue_url, read):
    with context(queue_url).open() as queue:
        _, reader = queue.fetch()
        return read(reader)


def _priority(queue_url, as_json, add=(), remove=()):
    from ..admin import change_priority

    _check_patterns(add + remove)
    with context(queue_url).open() as queue:
        packages = change_priority(queue, list(add), list(remove))
    emit(packages, as_json, lambda: "\n".join(packages) or "the priority list is empty")


def _check_patterns(patterns):
    from .. import records
    from ..errors import RecordInvalid

    for p in patterns:
        try:
            records.validate("priority", {"packages": [p]})
        except RecordInvalid:
            raise click.BadParameter(f"{p!r} is not a package pattern") from None


@cli.group("noway")
def noway_group():
    """Packages that must not be built on an architecture ("no way" lists).

    \b
    Example: gitqueue noway add 'icu-*' --reason "panics m68k hosts" --queue /srv/queues/q.git
    """


@noway_group.command("add")
@click.argument("patterns", nargs=-1, required=True)
@click.option("--reason", required=True, help="Why (shown in status and reports).")
@click.option("--arch", default=None, help="Architecture (default: the queue's; '' for all).")
@queue_option
@json_option
def noway_add(patterns, reason, arch, queue_url, as_json):
    """Never build PATTERNS on ARCH; their dependents become indirect-skipped.

    \b
    Example: gitqueue noway add 'icu-*' 'clisp-*' --reason "panics m68k hosts" --queue /srv/queues/q.git
    """
    from ..admin import change_noway

    _check_patterns(patterns)
    with context(queue_url).open() as queue:
        arch = _arch(queue, arch)
        entries = change_noway(queue, add=[{"pattern": p, "arch": arch, "reason": " ".join(reason.split())}
                                           for p in patterns])
    emit(entries, as_json, lambda: _noway_text(entries))


@noway_group.command("remove")
@click.argument("patterns", nargs=-1, required=True)
@click.option("--arch", default=None, help="Architecture (default: the queue's; '' for all).")
@queue_option
@json_option
def noway_remove(patterns, arch, queue_url, as_json):
    """Allow PATTERNS on ARCH again.

    \b
    Example: gitqueue noway remove 'icu-*' --queue /srv/queues/q.git
    """
    from ..admin import change_noway

    with context(queue_url).open() as queue:
        arch = _arch(queue, arch)
        entries = change_noway(queue, remove=[(p, arch) for p in patterns])
    emit(entries, as_json, lambda: _noway_text(entries))


@noway_group.command("list")
@queue_option
@json_option
def noway_list(queue_url, as_json):
    """Show the no-way lists of every architecture.

    \b
    Example: gitqueue noway list --queue /srv/queues/q.git
    """
    from ..lists import read_noway

    entries = _read_list(queue_url, read_noway)
    emit(entries, as_json, lambda: _noway_text(entries))


def _arch(queue, arch):
    if arch is not None:
        return arch
    _, reader = queue.fetch()
    return queue.settings(reader).get("arch", "")


def _noway_text(entries):
    return "\n".join(f"{e['pattern']}\t{e['arch'] or '*'}\t{e['reason']}" for e in entries) or "no entries"
