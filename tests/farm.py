"""A master deployed as README.md and docs/trust.md describe it, for tests that attack it.

The build account `gq-bulk` (a real system user, made once per machine) owns the queue repository
and the package tree. Its authorized_keys holds the lines `gitqueue serve --print-authorized-keys`
prints, one per registered worker key, so every worker key runs `gitqueue serve` as its forced
command; the pre-receive hook is installed by `gitqueue hooks install`; cron's commands (reclaim,
publish, html) run as that account, with the reclaim administrator's private key in its home.
Workers log in over a real sshd on 127.0.0.1 with their own keys, as that account only.

The account's processes run /usr/bin/python3 with a copy of this checkout's gitqueue and of its
dependencies in a world-readable directory: the test interpreter may live in a home directory
that other accounts cannot read.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from dulwich.repo import Repo

from gitqueue import registry
from gitqueue.admin import import_jobs, init_queue
from gitqueue.queue import Queue
from gitqueue.signing import Signer

from signed_queue import keypair

BULK = "gq-bulk"
PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[1]
# What the account's gitqueue imports: the package and its dependencies, copied as they are.
LIBRARIES = ("gitqueue", "dulwich", "click", "filelock", "tomli_w")


def unavailable() -> str | None:
    """Why a farm cannot be set up here, or None."""
    if os.geteuid() != 0:
        return "needs root, to create the build account and start sessions as it"
    for tool in ("useradd", "usermod", "runuser", "rrsync", "git"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not os.access(PYTHON, os.X_OK):
        return f"{PYTHON} not found"
    return None


def ensure_account(name: str) -> pwd.struct_passwd:
    """The system account `name`, made if missing (a home, /bin/sh, no password, not locked)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--create-home", "--shell", "/bin/sh", name], check=True,
                       capture_output=True)
        # sshd refuses keys for a locked account ("!" in the password field); "*" is no password.
        subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
        return pwd.getpwnam(name)


class Farm:
    """The master (account, repository, package tree, forced commands, hook) and the workers' keys.

    A signed queue: administrators alice (her key stays with the tests, as on her own machine)
    and cron (the reclaim administrator: its key lives in the build account's ~/.ssh); workers
    w1 and w2, each with its own key, which is also its ssh login key.
    """

    def __init__(self, sshd, keys_dir: Path, jobs: list[dict], lease_ttl: int = 60, limits: dict | None = None):
        self.sshd = sshd
        self.account = ensure_account(BULK)
        self.home = Path(self.account.pw_dir)
        self.root = Path(tempfile.mkdtemp(prefix="gq-farm-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.lib = self.root / "lib"
        self.srv = self.root / "srv"
        self.repo = self.srv / "queue.git"
        self.tree = self.srv / "packages"
        self.keys_dir = keys_dir
        self._copy_libraries()
        self.tree.mkdir(parents=True)

        self.keys = {n: keypair(keys_dir, n) for n in ("alice", "k1", "k2", "stranger")}
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        self.cron_key = keypair(ssh_dir, "reclaim-admin")
        self.keys["cron"] = self.cron_key
        self.signers = {n: Signer.from_key_file(str(p)) for n, p in self.keys.items()}
        admins = [{"name": n, "key": self.signers[n].public_key} for n in ("alice", "cron")]
        with self.admin_queue() as q:
            init_queue(q, "farm", lease_ttl=lease_ttl, packages_url=self.packages_url, admins=admins,
                       limits=limits)
            import_jobs(q, jobs, "farm.jsonl")
            for worker, key in (("w1", "k1"), ("w2", "k2")):
                registry.add_worker(q, worker, self.signers[key].public_key)
        subprocess.run(["chown", "-R", f"{BULK}:", str(ssh_dir)], check=True)
        self.as_bulk("hooks", "install", self.repo, check=True)
        self.authorize()

    # -- the master ------------------------------------------------------------------------------

    def _copy_libraries(self) -> None:
        self.lib.mkdir()
        for name in LIBRARIES:
            module = __import__(name)
            source = Path(module.__file__).parent if module.__file__.endswith("__init__.py") else Path(module.__file__)
            if name == "gitqueue":
                source = REPO / "gitqueue"
            target = self.lib / source.name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target)
        subprocess.run(["chmod", "-R", "a+rX", str(self.root)], check=True)

    @property
    def gitqueue_command(self) -> str:
        """How the account starts gitqueue (the --command of --print-authorized-keys)."""
        return f"env PYTHONPATH={self.lib} {PYTHON} -m gitqueue"

    def as_bulk(self, *args, env: dict | None = None, check: bool = False, timeout: float = 120,
                input: str | None = None) -> subprocess.CompletedProcess:
        """Run `gitqueue ARGS` as the build account (as its cron would)."""
        argv = ["runuser", "-u", BULK, "--", "env", "-i", f"HOME={self.home}", "PATH=/usr/bin:/bin",
                f"PYTHONPATH={self.lib}", *[f"{k}={v}" for k, v in (env or {}).items()],
                PYTHON, "-m", "gitqueue", *map(str, args)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"gitqueue {' '.join(map(str, args))} as {BULK} exited {proc.returncode}: "
                                 f"{proc.stderr}")
        return proc

    def as_bulk_git(self, *args) -> subprocess.CompletedProcess:
        """Run `git -C REPO ARGS` as the build account."""
        return subprocess.run(["runuser", "-u", BULK, "--", "git", "-C", str(self.repo), *args], check=True,
                              capture_output=True, text=True)

    def authorize(self) -> str:
        """Write the build account's authorized_keys from the registry, as README says; return it."""
        proc = self.as_bulk("serve", "--print-authorized-keys", "--repo", self.repo, "--packages", self.tree,
                            "--command", self.gitqueue_command, check=True)
        self._lines(proc.stdout)
        return proc.stdout

    def _lines(self, text: str | None) -> None:
        """Make `text` this farm's part of the account's authorized_keys (None: remove it); the
        farms of a test session share the account, each with its own keys."""
        parts = self.sshd.__dict__.setdefault("farm_lines", {})
        if text is None:
            parts.pop(str(self.root), None)
        else:
            parts[str(self.root)] = text
        path = self.sshd.authorized_keys_of(BULK)
        path.write_text("".join(parts.values()))
        os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def admin_queue(self, who: str = "alice") -> Queue:
        """The queue as a local path, for an administrator with a shell on the master.

        Use it as a context manager: what it wrote is given back to the account on exit.
        """
        farm = self

        class AdminQueue(Queue):
            def __exit__(self, *exc):
                super().__exit__(*exc)
                farm.give_back()

        return AdminQueue(str(self.repo), str(self.keys_dir / f"cache-admin-{who}"), signer=self.signers[who])

    def give_back(self) -> None:
        """Make the account own the repository and the tree again (after root wrote there)."""
        subprocess.run(["chown", "-R", f"{BULK}:", str(self.srv)], check=True)

    def tip(self) -> bytes:
        with Repo(str(self.repo)) as repo:
            return repo.refs[b"refs/heads/main"]

    def files(self, directory: Path | None = None) -> dict[str, bytes]:
        """{relative path: bytes} of every file below the package tree (or `directory`)."""
        base = directory or self.tree
        out = {}
        for d, _, names in os.walk(base):
            for n in names:
                p = Path(d, n)
                out[str(p.relative_to(base))] = b"<symlink>" if p.is_symlink() else p.read_bytes()
        return out

    # -- the workers ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ssh://{BULK}@{self.sshd.host}:{self.sshd.port}{self.repo}"

    @property
    def packages_url(self) -> str:
        return f"ssh://{BULK}@{self.sshd.host}:{self.sshd.port}{self.tree}"

    def ssh_command(self, key: str) -> str:
        """The ssh command of a worker logging in with its key `key` (a name in self.keys)."""
        return shlex.join(["ssh", "-F", "/dev/null", "-i", str(self.keys[key]), "-o", "IdentitiesOnly=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])

    def worker_env(self, key: str, cache: Path) -> dict:
        """The environment of `gitqueue` commands run by the worker holding key `key`."""
        return {"GITQUEUE_CACHE": str(cache), "GITQUEUE_SSH_COMMAND": self.ssh_command(key),
                "GITQUEUE_SIGNING_KEY": str(self.keys[key]), "GITQUEUE_QUEUE": self.url,
                "GITQUEUE_CONFIG": str(cache / "none.toml"), "GITQUEUE_SSH_REUSE": "0"}

    def worker_queue(self, key: str, cache: Path) -> Queue:
        return Queue(self.url, str(cache), ssh_command=self.ssh_command(key), signer=self.signers[key])

    def ssh(self, key: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `command` over ssh as the build account with the key `key` (its forced command decides)."""
        argv = [*shlex.split(self.ssh_command(key)), "-p", str(self.sshd.port), f"{BULK}@{self.sshd.host}", *command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def rsync(self, key: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """rsync with the worker key `key` to or from the master (paths as `{remote}:PATH`)."""
        rsh = f"{self.ssh_command(key)} -p {self.sshd.port}"
        argv = ["rsync", "-e", rsh, *[a.replace("{remote}", f"{BULK}@{self.sshd.host}") for a in args]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        self._lines(None)
        shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["Farm", "BULK", "unavailable", "keypair"]
