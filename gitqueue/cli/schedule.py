"""Scheduling commands: simulate (and the priority and no-way lists)."""

import click

from .main import cli, emit, json_option


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
