"""The workers registry commands: worker add, list, revoke, allowed-signers."""

import os

import click

from .main import cli, context, emit, json_option, queue_option


@cli.group("worker")
def worker_group():
    """Registered workers: who may claim and report, with which SSH key (docs/trust.md).

    \b
    Example: GITQUEUE_SIGNING_KEY=~/.ssh/admin gitqueue worker add vax-1 --key vax-1.pub --owner 'Jo <jo@example.org>'
    """


@worker_group.command("add")
@click.argument("name")
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False),
              help="The worker's SSH public key (FILE.pub).")
@click.option("--owner", default="", help="Who runs it (name and mail address).")
@click.option("--arch", default="", help="Its machine architecture, for people.")
@queue_option
@json_option
def worker_add_cmd(name, key_file, owner, arch, queue_url, as_json):
    """Register worker NAME with its public key (an administrative commit).

    Several workers may share one key: the worker processes of one host.

    \b
    Example: gitqueue worker add vax-1 --key vax-1.pub --arch vax --queue ssh://master/srv/q.git
    """
    from ..registry import add_worker, read_key

    path = os.path.expanduser(key_file)
    with open(path) as f:
        key = read_key(f.read(), path)
    with context(queue_url).open() as queue:
        rec = add_worker(queue, name, key, owner, arch)
    emit(rec, as_json, f"registered worker {name}")


@worker_group.command("revoke")
@click.argument("name")
@click.option("--reason", default="", help="Why (recorded in the registry and the history).")
@queue_option
@json_option
def worker_revoke_cmd(name, reason, queue_url, as_json):
    """Revoke worker NAME: nothing it signs from now on is accepted; its past stays verifiable.

    \b
    Example: gitqueue worker revoke vax-1 --reason 'key lost with the disk'
    """
    from ..registry import revoke_worker

    with context(queue_url).open() as queue:
        rec = revoke_worker(queue, name, reason)
    emit(rec, as_json, f"revoked worker {name} at {rec['revoked_at']}")


@worker_group.command("list")
@queue_option
@json_option
def worker_list_cmd(queue_url, as_json):
    """List the registered workers (and the queue's admins).

    \b
    Example: gitqueue worker list --json
    """
    from ..registry import admins, workers
    from ..signing import fingerprint

    with context(queue_url).open() as queue:
        _, reader = queue.fetch()
        settings = queue.settings(reader)
        registered = workers(reader)
    rows = [dict(rec, role="worker", fingerprint=fingerprint(rec["key"])) for _, rec in sorted(registered.items())]
    rows = [{"name": n, "key": k, "role": "admin", "fingerprint": fingerprint(k)}
            for n, k in sorted(admins(settings).items())] + rows

    def text():
        if not rows:
            return "no registered workers and no admins: this queue is not signed"
        lines = [f"{'name':20} {'role':7} {'fingerprint':52} {'owner / state'}"]
        for r in rows:
            state = f"revoked {r['revoked_at']}" if r.get("revoked_at") else r.get("owner", "")
            lines.append(f"{r['name']:20} {r['role']:7} {r['fingerprint']:52} {state}")
        return "\n".join(lines)

    emit(rows, as_json, text)


@worker_group.command("allowed-signers")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE instead of printing.")
@queue_option
def worker_allowed_signers_cmd(output, queue_url):
    """Print git's allowed-signers file for the queue's admins and workers.

    With it, plain git verifies every commit: revoked keys are valid only before their revocation.

    \b
    Example: gitqueue worker allowed-signers -o keys && git -c gpg.ssh.allowedSignersFile=keys log --show-signature
    """
    from ..files import replace_file
    from ..registry import allowed_signers, workers

    with context(queue_url).open() as queue:
        _, reader = queue.fetch()
        text = allowed_signers(queue.settings(reader), workers(reader))
    if output:
        replace_file(output, text)
    else:
        click.echo(text, nl=False)
