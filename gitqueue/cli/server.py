"""Server-side commands: install the pre-receive hook, verify a queue's history, the ssh forced command."""

import os
import shlex
import sys

import click

from ..errors import QueueNotFound
from .main import cli, context, json_option, queue_option


@cli.group("hooks")
def hooks_group():
    """Install the server's pre-receive hook into a bare queue repository.

    \b
    Example: gitqueue hooks install /srv/queues/2026Q4-m68k.git
    """


@hooks_group.command("install")
@click.argument("repo", type=click.Path(file_okay=False, exists=True))
@click.option("--force", is_flag=True, help="Replace a pre-receive hook that gitqueue did not write.")
@click.option("--python", "python", metavar="PATH", help="Interpreter for the hook (default: this one).")
@click.option("--max-input-size", metavar="BYTES", default="32M", show_default=True,
              help="The largest push git accepts (receive.maxInputSize; K, M, G).")
def hooks_install(repo, force, python, max_input_size):
    """Install (or update) hooks/pre-receive in the bare repository REPO.

    The hook refuses, over ssh:// and git://, every push that breaks the queue's rules; the
    repository's git checks every object a push brings (receive.fsckObjects) and refuses pushes
    larger than --max-input-size.

    \b
    Example: gitqueue hooks install /srv/queues/2026Q4-m68k.git
    """
    from ..hook import install, main_module_dir

    obj = click.get_current_context().find_root().obj or {}
    from .commands import _bytes

    path = install(os.path.abspath(repo), python or sys.executable, obj.get("branch") or "main",
                   main_module_dir(), force, _bytes(max_input_size, "--max-input-size"))
    click.echo(f"installed {path}")


@cli.command("verify")
@click.argument("url", required=False)
@queue_option
@click.option("--admin-key", metavar="KEY", help="Public key file or SHA256 fingerprint that must have signed "
                                                 "the first commit.")
@click.option("--packages", "packages_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="The package tree (All/, incoming/): check every success result's files against it.")
@json_option
def verify_cmd(url, queue_url, admin_key, packages_dir, as_json):
    """Replay the whole history of a queue and check every signature and rule.

    Prints a summary and the first violation with the commit that made it; exits 1 on any.

    \b
    Example: gitqueue verify ssh://bulk@master.example.org/srv/queues/2026Q4-m68k.git --admin-key admin.pub
    """
    from ..audit import replay
    from ..rules import Options

    from ..gitstore import is_local_path

    ctx = context(queue_url=url or queue_url)
    root_key = _fingerprint_of(admin_key) if admin_key else None
    if not ctx.queue_url:
        raise click.UsageError("no queue given: pass URL or --queue, or set GITQUEUE_QUEUE")
    if is_local_path(ctx.queue_url):
        with ctx.open() as queue:
            tip = queue.remote.fetch()
            if tip is None:
                raise QueueNotFound(f"{queue.url}: no queue on branch {queue.branch}")
            audit = replay(queue.remote, tip, Options(root_key=root_key), packages_dir)
    else:
        audit = _replay_remote(ctx, Options(root_key=root_key), packages_dir)
    from ..text import printable

    if as_json:
        import json

        click.echo(json.dumps(audit.as_dict(), indent=2))
    else:
        click.echo(printable(_summary(audit), keep_newlines=True))
    if audit.violations:
        v = audit.violations[0]
        click.echo(printable(f"Error: commit {v.commit}{' ' + v.path if v.path else ''}: {v.message} [{v.rule}]"),
                   err=True)
        sys.exit(1)


def _fingerprint_of(spec: str) -> str:
    from ..errors import GitqueueError
    from ..signing import fingerprint

    if spec.startswith("SHA256:"):
        return spec
    try:
        with open(spec) as f:
            return fingerprint(f.read().strip())
    except OSError as e:
        raise click.BadParameter(f"{spec}: {e.strerror}", param_hint="--admin-key") from None
    except GitqueueError as e:
        raise click.BadParameter(f"{spec}: {e}", param_hint="--admin-key") from None


def _replay_remote(ctx, options, packages_dir):
    """Fetch the whole history of a network queue into this host's cache and replay it."""
    import hashlib

    from dulwich.repo import Repo

    from ..audit import replay
    from ..gitstore import fetch_history

    digest = hashlib.sha256(f"{ctx.queue_url}\0{ctx.branch}".encode()).hexdigest()[:12]
    path = os.path.join(ctx.cache_dir, f"verify-{digest}.git")
    tip = fetch_history(ctx.queue_url, path, ctx.branch, ctx.ssh())
    if tip is None:
        raise QueueNotFound(f"{ctx.queue_url}: no queue on branch {ctx.branch}")
    with Repo(path) as repo:
        return replay(repo.object_store, tip, options, packages_dir)


def _summary(audit) -> str:
    lines = [f"{audit.commits} commits: {audit.claims} claims, {audit.results} results "
             f"({audit.late} late), {audit.reclaims} reclaims"]
    if audit.signed:
        by = ", ".join(f"{who} {n}" for who, n in sorted(audit.signed.items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(f"signed commits: {sum(audit.signed.values())} ({by}); unsigned: {audit.unsigned}")
    else:
        lines.append(f"unsigned queue: no signatures to check ({audit.unsigned} unsigned commits)")
    if audit.packages_checked or audit.packages_unreachable:
        lines.append(f"packages: {audit.packages_checked} match their results, "
                     f"{len(audit.packages_unreachable)} not reachable")
    lines.append(f"violations: {len(audit.violations)}")
    return "\n".join(lines)


@cli.command("serve")
@click.option("--worker", "worker", metavar="NAME", help="The worker this ssh key belongs to.")
@click.option("--repo", metavar="PATH", required=True, help="The bare queue repository.")
@click.option("--packages", "packages_dir", metavar="DIR",
              help="The package tree: uploads go to DIR/incoming/TOKEN of the worker's leases.")
@click.option("--no-downloads", is_flag=True, help="Refuse reading the package tree too.")
@click.option("--print-authorized-keys", "print_keys", is_flag=True,
              help="Print an authorized_keys line per registered key of the queue at --repo, and exit.")
@click.option("--command", "serve_command", metavar="CMD", default="gitqueue",
              help="How authorized_keys lines start gitqueue (with --print-authorized-keys).")
def serve_cmd(worker, repo, packages_dir, no_downloads, print_keys, serve_command):
    """The ssh forced command of a worker's key: git for the queue and rsync uploads, nothing else.

    Reads SSH_ORIGINAL_COMMAND; runs git-upload-pack or git-receive-pack on --repo (telling the
    pre-receive hook who pushes), rrsync read-only on DIR, or rrsync write-only into
    DIR/incoming/TOKEN of one of the worker's leases, within the queue's upload quota; refuses
    anything else, and everything once the worker is revoked. Exit 1 on a refusal (one line).

    \b
    Example: gitqueue serve --print-authorized-keys --repo /srv/queues/2026Q4-m68k.git --packages /srv/packages/m68k
    """
    if print_keys:
        click.echo(_authorized_keys(repo, packages_dir, serve_command, no_downloads), nl=False)
        return
    if not worker:
        raise click.UsageError("--worker NAME is required")
    from ..serve import RepoState, decide, run_upload

    obj = click.get_current_context().find_root().obj or {}
    state = RepoState(os.path.abspath(repo), obj.get("branch") or "main")
    try:
        decision = decide(os.environ.get("SSH_ORIGINAL_COMMAND"), worker, repo, packages_dir, not no_downloads,
                          state, user_auth=_user_auth(), home=os.path.expanduser("~"))
    finally:
        state.close()
    if decision.refused:
        _refuse(decision.refusal)
    if decision.upload is not None:
        sys.exit(run_upload(decision, dict(os.environ), out=sys.stdout.fileno(), err=sys.stderr.fileno()))
    try:
        os.execvpe(decision.argv[0], list(decision.argv), {**os.environ, **decision.env})
    except OSError as e:
        _refuse(f"cannot run {decision.argv[0]} on this host: {e.strerror}")


def _user_auth() -> str | None:
    """What sshd wrote about this session's authentication (ExposeAuthInfo yes), if it did."""
    from ..serve import MAX_USER_AUTH

    path = os.environ.get("SSH_USER_AUTH")
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read(MAX_USER_AUTH).decode("ascii", "replace")
    except OSError:
        return None


def _refuse(message):
    from ..transfer import SERVE_REFUSAL

    click.echo(f"{SERVE_REFUSAL}{message}", err=True)
    sys.exit(1)


def _authorized_keys(repo, packages_dir, serve_command, no_downloads) -> str:
    """One `command="gitqueue serve ...",restrict KEY name` line per distinct unrevoked worker key."""
    from dulwich.repo import Repo

    from ..rules import load_registry

    obj = click.get_current_context().find_root().obj or {}
    ref = b"refs/heads/" + (obj.get("branch") or "main").encode()
    with Repo(repo) as r:
        reg = load_registry(r.object_store, r.object_store[r.refs[ref]].tree)
    lines = []
    seen = set()
    for name, rec in sorted(reg.workers.items()):
        if rec.get("revoked_at") or rec["key"] in seen:
            continue
        seen.add(rec["key"])
        parts = ["serve", "--worker", name, "--repo", os.path.abspath(repo)]
        if packages_dir:
            parts += ["--packages", os.path.abspath(packages_dir)]
        if no_downloads:
            parts.append("--no-downloads")
        command = (serve_command + " " + " ".join(shlex.quote(p) for p in parts)).replace('"', '\\"')
        lines.append(f'command="{command}",restrict {rec["key"]} gitqueue-{name}\n')
    return "".join(lines)
