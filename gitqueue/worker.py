"""The worker loop: claim a job, run the build command, heartbeat while it runs, report, repeat.

One process, one thread: dulwich repositories and clients are not thread-safe, so heartbeats
happen between waits on the build command rather than in a background thread.
"""

import dataclasses
import fcntl
import hashlib
import os
import re
import signal
import stat
import subprocess
import time
from typing import TYPE_CHECKING

from .backoff import Backoff, jittered
from .config import WorkerSettings
from .errors import GitqueueError, LeaseLost, NothingReady, PackageRefused, PushRefused, QueueFinished, RemoteError
from .layout import min_heartbeat_seconds
from .lease import Claim, claim, heartbeat, recorded_outcome, release, report
from .text import printable

if TYPE_CHECKING:
    from .spool import Spool

REFUSALS_TO_STOP = 3  # the server refusing this worker's pushes that many times in a row
# Jobs given back in a row because of this worker's own trouble (its transfers, its disk) before
# it stops claiming: a broken worker must not churn the queue's history.
OWN_TROUBLE_TO_STOP = 3
# Times one job may be given back by this worker for one cause before it declines the job.
SAME_CAUSE_TO_DECLINE = 2

LOG_TAIL = 4000
REST_AFTER = 1.0  # seconds a build runs before the worker gives its own memory back (Queue.rest)
MAX_LEFT_OUT = 10  # lines naming the output files a job does not upload; then a count
DEFAULT_PKGNAME_COMMAND = "bmake show-var VARNAME=PKGNAME"


def log_name(job: str, token: str | None = None) -> str:
    """The name a build log of `job` gets in the package tree and its result: JOB-LEASE8.log for
    the lease `token` (JOB.log without one), the job's name shortened to fit `layout.is_log_name`."""
    from .layout import MAX_LOG_NAME

    suffix = f"-{token[:8]}.log" if token else ".log"
    return job[: MAX_LOG_NAME - len(suffix)] + suffix


@dataclasses.dataclass(frozen=True)
class Built:
    """What one run of the build command left: its status and time, its log, its phase logs'
    directory, the job's packages in the packages directory before it ran, the dependencies'
    packages it was given; whether the command said its failure was not the package's fault."""

    status: str
    duration: float
    log_path: str
    logs: str
    before: dict
    installed: list
    transient: bool = False


# The build command's "not the package's fault, try again" (sysexits.h EX_TEMPFAIL).
EX_TEMPFAIL = 75


def describe_log(path: str, name: str | None = None):
    """({"name", "size", "sha256"}, last few KB as text) of a build log (named `name`, default its own).

    The text has its control characters escaped (colours, carriage returns): a result record
    refuses them. The log itself is uploaded as it is.
    """
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
            size += len(chunk)
        f.seek(max(0, size - LOG_TAIL))
        tail = f.read().decode("utf-8", "replace")
    # Escapes make it longer: keep the end, which says why the build failed.
    return {"name": name or os.path.basename(path), "size": size, "sha256": h.hexdigest()}, \
        printable(tail, keep_newlines=True)[-LOG_TAIL:]


def job_environment(job: Claim, base: dict | None = None) -> dict:
    """The environment a build command sees for the claimed `job`."""
    env = dict(os.environ if base is None else base)
    env.update(
        GITQUEUE_JOB=job.job,
        GITQUEUE_VERSION=job.version,
        GITQUEUE_PKGPATH=job.pkgpath or "",
        GITQUEUE_LEASE=job.lease,
        GITQUEUE_DEPS=" ".join(job.deps),
    )
    for key, value in job.multi_version.items():
        env[key] = value
    return env


def transfer_options(queue, settings: WorkerSettings) -> dict:
    """upload()/download() keyword arguments of a worker: its settings, over rsync_rsh or the
    queue's own ssh command (with its connection reuse)."""
    return settings.transfer(settings.rsync_rsh or queue.ssh_command)


def report_build(queue, worker: str, job: str, status: str, *, token: str | None = None,
                 duration: float | None = None, log_file: str | None = None, package_files=(),
                 settings: WorkerSettings | None = None, platform: dict | None = None,
                 transient: bool = False) -> dict:
    """Upload a build's packages and log to the queue's package tree, then record its result.

    Args:
        queue: the Queue.
        worker: the worker that holds the lease on `job`.
        job: the job's name.
        status: "success" or "failure".
        token: the lease's token (default: the one this host's cache remembers for `job`).
        duration: build time in seconds.
        log_file: the build log, recorded (and uploaded, with packages) as JOB.log.
        package_files: built packages, uploaded into incoming/LEASE/ first (see transfer.upload_build).
        settings: how to reach the package tree (WorkerSettings: rsync_rsh, transfers).
        platform: this worker's description (platform.describe), recorded in the result.
        transient: a failure that is not the package's fault (see lease.report).

    Returns:
        The result record (see lease.report): a lease.AlreadyRecorded when an earlier run of the
        same report had recorded it (its reply lost); nothing is uploaded or written then.

    Raises:
        PackageRefused: a package whose name the queue does not allow for `job` (before any upload).
        TransferError: an upload that failed; nothing is recorded then.
        LeaseLost: `job` is not (or no longer) held by `worker`, or its lease already ended with
            another outcome than this one.
    """
    log, tail = describe_log(log_file, log_name(job)) if log_file else (None, None)
    packages = None
    if package_files:
        from .transfer import TransferError, upload_build

        _, reader = queue.fetch()
        queue_settings = queue.settings(reader)
        check_package_names(reader, queue_settings, job, package_files)
        tree = queue_settings.get("packages_url")
        token = token or queue.index.my_claims(worker).get(job)
        if not tree:
            raise GitqueueError(f"{queue.url}: the queue has no packages_url to upload packages to")
        if not token:
            raise GitqueueError(f"no lease token of {job} on this host: give the token that claim returned")
        # A report run again after its reply was lost: the files went up and the result is in, and
        # incoming/TOKEN is no longer the lease's to write. report() returns (or refuses) it.
        if recorded_outcome(queue, reader, worker, job, token) is None:
            sent = upload_build(tree, token, list(package_files), log_file, log and log["name"],
                                **transfer_options(queue, settings or WorkerSettings()))
            if sent.log_error:
                raise TransferError(sent.log_error)
            packages = sent.packages
    return report(queue, worker, job, status, token, duration, log, tail if status == "failure" else None,
                  packages=packages, platform=platform, extra={"transient": True} if transient else None)


def check_package_names(reader, queue_settings: dict, job: str, package_files) -> None:
    """Refuse, with PackageRefused, a package file that the result of `job` may not name."""
    from . import records
    from .errors import UnknownJob
    from .layout import check_job_name, package_name_problem, record_path

    path = record_path("jobs", check_job_name(job))
    data = reader.read(path)
    if data is None:
        raise UnknownJob(f"unknown job {job}")
    job_rec = records.load_at("job", data, path)
    for file in package_files:
        problem = package_name_problem(os.path.basename(file), job_rec, queue_settings)
        if problem:
            raise PackageRefused(file, problem)


class BuildLocks:
    """One lock file per lease that a `gitqueue work` process of this host is working on.

    The process holds an flock on running/TOKEN from the moment it has the lease until the lease
    is settled or given back. The kernel drops the lock when the process dies, however it dies,
    so a lock file whose lock is free names a lease whose build was lost: a crash, a kill, a
    reboot. Without this, a worker started again within the lease TTL kept the dead build's
    lease alive with its heartbeats, and nobody ever built the job.
    """

    _TOKEN = re.compile(r"[0-9a-f]{16,64}")

    def __init__(self, directory: str):
        self.directory = directory
        self._made = False

    def _path(self, token: str) -> str:
        if not self._TOKEN.fullmatch(token):
            raise ValueError(f"not a lease token: {token!r}")
        return os.path.join(self.directory, token)

    def hold(self, token: str) -> int:
        """Lock running/TOKEN for this process; returns the descriptor that holds the lock."""
        path = self._path(token)
        if not self._made:  # once: a mkdir that fails with EEXIST still costs a system call per job
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._made = True
        # Locked before it appears under its name: a lock file is never seen unlocked while alive.
        tmp = os.path.join(self.directory, f".{token}.{os.getpid()}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.replace(tmp, path)
        except OSError:
            os.close(fd)
            raise
        return fd

    def let_go(self, token: str, fd: int) -> None:
        """The lease is settled or given back: remove its lock file, then unlock."""
        try:
            os.unlink(self._path(token))
        except FileNotFoundError:
            pass
        os.close(fd)

    def lost(self, token: str) -> bool:
        """Whether running/TOKEN exists and no live process holds its lock."""
        path = self._path(token)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                return os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                return False  # let go of meanwhile: settled
        finally:
            os.close(fd)

    def tokens(self) -> list[str]:
        """The tokens that have a lock file here."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [name for name in names if self._TOKEN.fullmatch(name)]

    def forget(self, token: str) -> None:
        try:
            os.unlink(self._path(token))
        except FileNotFoundError:
            pass


class Worker:
    """Runs `command` for one job after another until the queue is finished or told to stop.

    Args:
        queue: the Queue (gitqueue.open_queue) to work on.
        name: this worker's name.
        command: the build command and its arguments (see job_environment).
        settings: a WorkerSettings (default: all defaults).
        out: called with each line of progress (printable text).
    """

    def __init__(self, queue, name: str, command: list[str], settings: WorkerSettings | None = None, out=print):
        settings = settings or WorkerSettings()
        self.queue = queue
        self.name = name
        self.command = command
        self.settings = settings
        self.host = settings.host
        self.platform = settings.platform()
        # Asked in the job's directory, with its MULTI_VERSION variables, for the PKGNAME that
        # the local tree would build now (pkgsrc: bmake show-var VARNAME=PKGNAME).
        self.pkgname_command = settings.pkgname_command or (DEFAULT_PKGNAME_COMMAND if settings.pkgsrc_dir else None)
        self.packages_dir = settings.packages_dir or os.path.join(queue.cache_dir, "packages")
        self.transfer = transfer_options(queue, settings)
        self.packages_url: str | None = None
        self.queue_settings: dict | None = None
        self.retry_after: float | None = None
        # Lines quote server replies, reasons and names that others wrote: no control gets through.
        self.out = lambda line: out(printable(line))
        self.stop_signal: int | None = None
        self.child: subprocess.Popen | None = None
        self.log_dir = os.path.join(queue.cache_dir, "logs")
        self.locks = BuildLocks(os.path.join(queue.cache_dir, "running"))
        self.held: tuple[str, int] | None = None  # (token, descriptor) of the lease this process works on
        self.done = 0
        self.spool: Spool | None = None
        self.refusals = 0
        self.trouble = 0  # jobs given back in a row because of this worker's own trouble
        # Whether the last build ran REST_AFTER or longer: then the next one starts with the
        # worker at rest. True at first: a new worker's first claim built its index.
        self.builds_take_long = True
        self.given_back: dict[tuple[str, str], int] = {}  # (job, cause) -> times given back for it

    def _on_signal(self, signum, frame):
        self.stop_signal = signum
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self, max_jobs: int | None = None) -> int:
        """The loop. Returns the exit status: 0 finished (or max_jobs built), 128+signal."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._loop(max_jobs)
        finally:
            self._hold(None)
            for s, handler in old.items():
                signal.signal(s, handler)

    def _hold(self, job) -> None:
        """Hold the lock of `job`'s lease (None: of no lease), letting go of the one held before."""
        token = job.lease if job is not None else None
        if self.held is not None and self.held[0] != token:
            self.locks.let_go(*self.held)
            self.held = None
        if token is not None and self.held is None:
            self.held = (token, self.locks.hold(token))

    def _give_back_lost_builds(self) -> None:
        """Give back the leases this host took whose build no process runs any more."""
        held = self.held[0] if self.held is not None else None
        lost = {token for token in self.locks.tokens() if token != held and self.locks.lost(token)}
        if not lost:
            return
        # The index is shared with this host's other processes: read it under the cache's lock.
        with self.queue.lock():
            claims = self.queue.index.my_claims(self.name)
        for job, token in sorted(claims.items()):
            if token not in lost:
                continue
            where = f" on {self.host}" if self.host else " here"
            reason = f"its build{where} was lost: the gitqueue work process building it stopped"
            try:
                release(self.queue, self.name, job, reason, token, decline=False)
                self.out(f"{self.name}: gave back {job}: {reason}")
            except LeaseLost:
                with self.queue.lock():
                    self.queue.index.forget_claim(job)  # reclaimed or settled meanwhile
            except GitqueueError as e:
                self.out(f"{self.name}: could not give back {job} ({reason}): {e}")
                continue
            self.locks.forget(token)

    def _loop(self, max_jobs):
        _, reader = self.queue.fetch()
        settings = self.queue.settings(reader)
        self.queue_settings = settings
        ttl = settings["lease_ttl"]
        self.packages_url = settings.get("packages_url")
        # Never faster than the server accepts heartbeats (min_heartbeat_seconds).
        every = max(self.settings.heartbeat_every or max(ttl / 4, 0.5), min_heartbeat_seconds(settings))
        idle = Backoff(0.2, self.settings.max_wait)
        job = None
        asked = False  # whether job is the answer of a claim made at the end of the last round
        while self.stop_signal is None:
            self._hold(job)
            if job is None:
                if not asked:
                    self._give_back_lost_builds()
                    job, finished = self._claim_next()
                    self._hold(job)
                    if finished:
                        return 0
                    if job is not None:
                        # A claim on its own is the first of this process or one after idling:
                        # the first builds the index, or brings it over what happened meanwhile.
                        # What that took goes back before the job's packages are fetched.
                        self.queue.rest()
                asked = False
                if job is None:
                    if self.retry_after is not None:
                        # Left to a faster worker: ask again when it should be free.
                        time.sleep(jittered(min(self.retry_after, self.settings.max_wait), 0.75, 1.25))
                        continue
                    time.sleep(idle.next())
                    continue
            idle.reset()
            skew, broken = self._version_skew(job)
            if skew:
                # A tree that has another version declines the job; a tree that cannot answer at
                # all (bmake missing, a broken checkout) is this worker's trouble.
                self._give_back(job, skew, "tree", decline=not broken, own=broken)
                job = None
                continue
            problem = self._before_build(job)
            if problem:
                # A system that cannot be made clean builds nothing right: not the package's
                # failure, and no use claiming more.
                self._give_back(job, problem, "before_build")
                raise GitqueueError(f"{self.name}: {problem}; stopping")
            missing, installed = self._fetch_dependencies(job)
            if missing:
                self._give_back(job, missing, "transfer", own=True)
                job = None
                time.sleep(jittered(idle.first))
                continue
            self.out(f"{self.name}: building {job.job}")
            try:
                outcome = self._build(job, every, installed)
            except OSError as e:  # no room for the output or the log: this machine's trouble
                self._give_back(job, f"cannot set up the build here: {e.strerror or e}: {e.filename or ''}",
                                "disk", own=True)
                job = None
                continue
            if outcome is None:
                job = None
                continue  # lease lost while building; already said so
            if self.stop_signal is not None:
                self._give_back(job, f"worker stopped by signal {self.stop_signal}", "signal")
                break
            # Report and ask for the next job in one request: with other workers of this host
            # waiting, one commit settles them all (see spool.py).
            report_req = self._prepare_report(job, outcome)
            more = max_jobs is None or self.done + (report_req is not None) < max_jobs
            job, finished = self._settle(report_req, claim_next=more)
            asked = True
            if finished or not more:
                return 0
        return 128 + (self.stop_signal or 0)

    def _settle(self, report_req, claim_next: bool):
        """Report (if `report_req`) and claim the next job through the host's spool; (job, finished?)."""
        from .lease import identity
        from .spool import Spool

        self.retry_after = None
        request = {"worker": self.name, "host": self.host, "platform": self.platform,
                   "report": report_req, "claim": claim_next, "id": os.urandom(8).hex(),
                   # one commit has one signature: only requests with the same key are settled together
                   "signer": self.queue.signer_fingerprint}
        if self.spool is None:
            self.spool = Spool(self.queue)
        delays = Backoff(1.0, 30.0)
        for _attempt in range(8):
            try:
                outcome = self.spool.submit(request, identity(self.name))
                self.refusals = 0
                break
            except RemoteError as e:
                self._refused(e)
                self.out(f"{self.name}: {e}; retrying")
                time.sleep(delays.next())
        else:
            what = f"report {report_req['job']}" if report_req else "claim"
            raise GitqueueError(f"could not {what} after 8 attempts; the remote keeps failing")
        if outcome.report_error is not None:
            self.out(f"{self.name}: {outcome.report_error}")
        elif outcome.result is not None:
            rep = outcome.result
            self.done += 1
            self.trouble = 0
            where = f"; log {self.log_path_of(rep['job'], rep['token'])}" if rep["status"] == "failure" else ""
            if rep.get("requeued"):
                where = f" (transient, attempt {rep['attempt']} of {rep['max_attempts']}: back to the queue){where}"
            elif rep.get("transient"):
                where = f" (transient, after {rep.get('max_attempts') or 'max_attempts'} attempts){where}"
            self.out(f"{self.name}: {rep['job']} {rep['status']} ({report_req.get('duration') or 0:.1f} s){where}")
        if outcome.claim is not None:
            return outcome.claim, False
        error = outcome.claim_error
        if isinstance(error, QueueFinished):
            st = self.queue.stats
            self.out(f"{self.name}: queue finished ({self.done} jobs built here; "
                     f"{st['pushes']} pushes, {st['rejected']} rejected)")
            return None, True
        if isinstance(error, NothingReady):
            self.retry_after = error.retry_after
            return None, False
        if error is not None:
            raise error
        return None, False

    def _claim_next(self):
        """(job or None, finished?): None when nothing is ready or the remote failed."""
        self.retry_after = None
        try:
            job = claim(self.queue, self.name, self.host, self.platform)
            self.refusals = 0
            return job, False
        except NothingReady as e:
            self.retry_after = e.retry_after
            return None, False
        except QueueFinished:
            st = self.queue.stats
            self.out(f"{self.name}: queue finished ({self.done} jobs built here; "
                     f"{st['pushes']} pushes, {st['rejected']} rejected)")
            return None, True
        except RemoteError as e:
            self._refused(e)
            self.out(f"{self.name}: {e}; retrying")
            return None, False

    def _refused(self, error):
        """Stop when the server keeps refusing this worker (revoked key, broken rules): retrying
        the same decision would only be refused again."""
        if not isinstance(error, PushRefused):
            self.refusals = 0
            return
        self.refusals += 1
        if self.refusals >= REFUSALS_TO_STOP:
            raise GitqueueError(f"the queue refused {self.refusals} pushes in a row; stopping: {error}")

    def _fetch_dependencies(self, job) -> tuple[str | None, list[dict]]:
        """Download the binary packages of the job's dependencies, and of theirs (pkg_add installs
        a package's dependencies with it); (a reason to give the job back, or None; the packages
        of the direct dependencies as {"name", "sha256"}: what the build installs, pulling in the
        rest, which their own results list)."""
        if not self.packages_url or not job.deps:
            return None, []
        from . import records
        from .layout import record_path
        from .transfer import TransferError, download

        results = []
        with self.queue.lock():  # read under the lock: gc --cache may not remove a pack meanwhile
            # Synced, not only fetched: a claim may have left the index behind an update of the
            # graph (Index.defer_graph), and the index knows the whole graph: no job record is
            # read (a new worker's cache has only the records it claimed; see
            # gitstore.CachedRemote._first_fetch).
            _, reader = self.queue.sync()
            direct = set(job.deps)
            for dep in [*job.deps, *(d for d in self.queue.index.requirements(job.job) if d not in direct)]:
                data = reader.read(record_path("results", dep))
                if data is not None:
                    results.append((dep, records.load_at("result", data, record_path("results", dep))))
        dest = os.path.join(self.packages_dir, "All")
        installed: dict[str, str] = {}
        for dep, result in results:
            if not result.get("packages"):
                continue
            # Published packages are in All/; until the master publishes them, in the upload area
            # of the lease that built them. Either way the result's checksums decide.
            try:
                download(result["packages"], self.packages_url, dest, attempts=1,
                         **{k: v for k, v in self.transfer.items() if k in ("rsh", "io_timeout")})
            except TransferError:
                try:
                    download(result["packages"], self.packages_url, dest, source=f"incoming/{result['token']}",
                             **self.transfer)
                except TransferError as e:
                    return f"cannot fetch the packages of {dep}: {e}", []
            if dep in job.deps:
                for package in result["packages"]:
                    installed[package["name"]] = package["sha256"]
        from .schema import MAX_INSTALLED

        if len(installed) > MAX_INSTALLED:
            self.out(f"{self.name}: {job.job} has {len(installed)} dependency packages, more than a result lists "
                     f"({MAX_INSTALLED}): its result will not list them")
            return None, []
        return None, [{"name": name, "sha256": sha} for name, sha in sorted(installed.items())]

    def _attempt_dir(self, job) -> str:
        """CACHE/bulklog/JOB-LEASE8: the build info and the phase logs of one attempt."""
        from .buildlog import BULKLOG, attempt_name

        return os.path.join(self.queue.cache_dir, BULKLOG, attempt_name(job.job, job.lease))

    def _before_build(self, job) -> str | None:
        """Run the before_build command (pbulk's client-clean, a sandbox reset); why it failed, or None."""
        command = self.settings.before_build
        if not command:
            return None
        import shutil

        attempt = self._attempt_dir(job)
        shutil.rmtree(attempt, ignore_errors=True)
        os.makedirs(attempt)
        path = os.path.join(attempt, "before_build.log")
        with open(path, "wb") as out:
            try:
                code = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, env=job_environment(job)).returncode
            except OSError as e:
                return f"before_build cannot run: {e.strerror or e}"
        if code == 0:
            return None
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 1000))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
        said = f": {printable(lines[-1])[:300]}" if lines else ""
        how = f"exit {code}" if code > 0 else f"signal {-code}"
        return f"before_build failed ({how}) before building {job.job}{said} (output: {path})"

    def _output_dir(self, job):
        return os.path.join(self.queue.cache_dir, "build", f"{job.job}-{job.lease[:8]}")

    def _build(self, job, every, installed=()) -> "Built | None":
        import shutil

        from .buildinfo import write as build_info

        os.makedirs(self.log_dir, exist_ok=True)
        log_path = os.path.join(self.log_dir, log_name(job.job, job.lease))
        output = self._output_dir(job)
        shutil.rmtree(output, ignore_errors=True)
        os.makedirs(output)
        # The attempt's directory: the build info, and pbulk's bulklog with the job's log
        # directory in it ($GITQUEUE_LOGS is $GITQUEUE_BULKLOG/PKGNAME, as pbulk lays it out).
        attempt = self._attempt_dir(job)
        bulklog = os.path.join(attempt, "bulklog")
        shutil.rmtree(bulklog, ignore_errors=True)
        logs = os.path.join(bulklog, job.job)
        os.makedirs(logs)
        info = os.path.join(attempt, "build-info")
        with open(info, "wb") as f:
            f.write(build_info(self._job_record(job)))
        before = self._own_packages(job)
        env = job_environment(job)
        env.update(GITQUEUE_OUTPUT=output, GITQUEUE_PACKAGES=self.packages_dir, GITQUEUE_BUILD_INFO=info,
                   GITQUEUE_BULKLOG=bulklog, GITQUEUE_LOGS=logs)
        rested = self.builds_take_long
        if rested:
            self.queue.rest()  # reading the job's record opened the cache repository again
        start = time.monotonic()
        with open(log_path, "wb") as log, open(info, "rb") as stdin:
            try:
                # The build info on standard input, as pbulk's master gives it to its build script.
                child = self.child = subprocess.Popen(
                    self.command, stdin=stdin, stdout=log, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True,
                )
            except OSError as e:
                log.write(f"gitqueue: cannot run {self.command[0]}: {e}\n".encode())
                return Built("failure", time.monotonic() - start, log_path, logs, before, list(installed))
            try:
                # While a build runs, until the next heartbeat, the memory is the build's
                # (Queue.rest): from its start when the builds take long, else once it has run
                # REST_AFTER. Resting costs a collection and opening the cache again, which a
                # queue of instant builds paid on every job (bench/contention.py: 3x the CPU).
                rest_at = start + min(REST_AFTER, every)
                beat_at = start + every
                while True:
                    try:
                        code = child.wait(timeout=max(0.0, (beat_at if rested else rest_at) - time.monotonic()))
                        break
                    except subprocess.TimeoutExpired:
                        if not rested:
                            rested = True
                            self.queue.rest()
                            continue
                        beat_at = time.monotonic() + every
                        if self.stop_signal is not None:
                            continue
                        held = self._still_held(job)
                        self.queue.rest()  # what the heartbeat opened
                        if not held:
                            os.killpg(child.pid, signal.SIGKILL)
                            child.wait()
                            return None
            finally:
                self.child = None
                self.builds_take_long = time.monotonic() - start >= REST_AFTER
        status = "success" if code == 0 else "failure"
        return Built(status, time.monotonic() - start, log_path, logs, before, list(installed),
                     transient=code == EX_TEMPFAIL)

    def _job_record(self, job) -> dict:
        """The job's record, as the tree this host fetched last has it."""
        from . import records
        from .layout import record_path

        path = record_path("jobs", job.job)
        with self.queue.lock():  # gc --cache may not remove a pack meanwhile
            remote = self.queue.remote
            try:  # the tip this host fetched last (the claim's): no network
                data = remote.reader(remote.repo.refs[remote.ref]).read(path)
            except KeyError:
                data = None
            if data is None:
                _, reader = self.queue.fetch()
                data = reader.read(path)
        if data is None:
            return {"name": job.job, "version": job.version, "deps": list(job.deps),
                    **({"pkgpath": job.pkgpath} if job.pkgpath else {}), "multi_version": job.multi_version}
        return records.load_at("job", data, path)

    def _own_packages(self, job) -> dict[str, tuple]:
        """{name: (size, mtime, inode)} of the files in the packages directory's All/ that may be
        the job's own packages: where pbulk's build script leaves the package it makes."""
        from .layout import package_name_problem

        directory = os.path.join(self.packages_dir, "All")
        record = {"name": job.job, "version": job.version or ""}
        found = {}
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return {}
        for entry in entries:
            if entry.name.startswith(".") or package_name_problem(entry.name, record, self.queue_settings):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[entry.name] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return found

    def _still_held(self, job) -> bool:
        try:
            beat = heartbeat(self.queue, self.name)
        except RemoteError as e:
            self.out(f"{self.name}: heartbeat failed ({e}); still building")
            return True
        if job.job in beat.lost:
            self.out(f"{self.name}: lease on {job.job} was reclaimed; stopping its build")
            return False
        return True

    def _upload(self, job, files, log_path, phase_logs):
        """Upload the build's packages `files`, its log and phase logs ((path, name) pairs);
        returns (packages, log uploaded?, phase logs uploaded).

        Raises TransferError when the packages could not be uploaded after retries.
        """
        if not self.packages_url:
            return None, False, []
        from .transfer import upload_build

        sent = upload_build(self.packages_url, job.lease, files, log_path, phase_logs=phase_logs, **self.transfer)
        if sent.log_error:
            self.out(f"{self.name}: the logs of {job.job} were not uploaded: {sent.log_error}")
        return sent.packages, sent.log is not None, sent.phase_logs

    def _package_files(self, job) -> list[str]:
        """The files the build left in its output directory that its result may name; says which
        others it leaves out, and why (the master refuses a result naming them)."""
        from .layout import package_name_problem

        output = self._output_dir(job)
        found = sorted(os.path.join(d, f) for d, _, names in os.walk(output) for f in names
                       if not f.startswith("."))
        record = {"name": job.job, "version": job.version or ""}
        keep, left_out = [], []
        for path in found:
            name = os.path.basename(path)
            problem = package_name_problem(name, record, self.queue_settings)
            if problem is None:
                keep.append(path)
            else:
                why = problem[len(name) + 4:] if problem.startswith(f"{name} is ") else problem
                left_out.append(f"{self.name}: not uploading {os.path.relpath(path, output)}: {why}")
        self._say_left_out(left_out, "files", job)
        return keep

    def _phase_logs(self, job, built: "Built") -> list[tuple[str, str, float]]:
        """(path, name, mtime) of the logs the build left in $GITQUEUE_LOGS that a result may name:
        regular files with plain .log or .txt names, at most MAX_PHASE_LOGS, in pbulk's phase
        order; says which others it leaves out.

        Each is copied first (opened without following a link) into the attempt's directory, and
        the copy is what is described and uploaded: what the build left behind may still change
        the directory, and a log swapped for a link must not upload what the link points at.
        """
        from .layout import is_log_name, package_name_problem
        from .phases import order_key
        from .schema import MAX_PHASE_LOGS

        record = {"name": job.job, "version": job.version or ""}
        kept: list[tuple[str, str, float]] = []
        left_out: list[str] = []
        try:
            entries = sorted(os.scandir(built.logs), key=lambda e: order_key(e.name))
        except FileNotFoundError:
            return []
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                why = "not a regular file"
            elif not is_log_name(entry.name):
                why = "not a plain .log or .txt file name"
            elif entry.name == log_name(job.job, job.lease) or not package_name_problem(
                    entry.name, record, self.queue_settings):
                why = "the name of the build log or of a package"
            elif len(kept) >= MAX_PHASE_LOGS:
                why = f"more than {MAX_PHASE_LOGS} logs"
            else:
                copy = self._copy_log(entry.path, os.path.join(os.path.dirname(os.path.dirname(built.logs)), "sent"),
                                      entry.name)
                if copy is not None:
                    kept.append((copy, entry.name, st.st_mtime))
                    continue
                why = "not a regular file"
            left_out.append(f"{self.name}: not uploading the log {printable(entry.name)[:100]}: {why}")
        self._say_left_out(left_out, "logs", job)
        return kept

    def _say_left_out(self, lines: list[str], what: str, job) -> None:
        """Print why files were not uploaded: the first MAX_LEFT_OUT, then how many more."""
        for line in lines[:MAX_LEFT_OUT]:
            self.out(line)
        if len(lines) > MAX_LEFT_OUT:
            self.out(f"{self.name}: not uploading {len(lines) - MAX_LEFT_OUT} more {what} of {job.job}")

    @staticmethod
    def _copy_log(path: str, directory: str, name: str) -> str | None:
        """Copy the regular file `path` (not through a link) to `directory`/`name`; the copy's path,
        or None when `path` is not a regular file (any more)."""
        import shutil

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as source:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            os.makedirs(directory, exist_ok=True)
            target = os.path.join(directory, name)
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        return target

    def _packages_made(self, job, built: "Built") -> tuple[list[str], list[dict] | None]:
        """(files to upload, packages up to date): the output directory's package files; else the
        job's package that the build left in the packages directory's All/ (pbulk's place), new or
        changed by this build; else, unchanged, the existing package found up to date, which is
        described and not uploaded."""
        from .transfer import describe

        files = self._package_files(job)
        if files:
            return files, None
        after = self._own_packages(job)
        directory = os.path.join(self.packages_dir, "All")
        made = sorted(name for name, sig in after.items() if built.before.get(name) != sig)
        if made:
            return [os.path.join(directory, name) for name in made], None
        if after:
            return [], [describe(os.path.join(directory, name)) for name in sorted(after)]
        return [], None

    def _prepare_report(self, job, built: "Built"):
        """Upload the build's files and return the report part of a spool request, or None.

        None when the upload failed and the job was given back: a result never names a file
        that is not fully uploaded.
        """
        from .phases import failed_phase, phase_of
        from .transfer import TransferError, describe

        status = built.status
        log, tail = describe_log(built.log_path)
        logs = self._phase_logs(job, built)
        extra: dict = {"installed": built.installed}
        if built.transient:
            extra["transient"] = True
        if status == "failure":
            phase = extra["failed_phase"] = failed_phase([(name, mtime) for _, name, mtime in logs])
            # The failed phase's log says why (pbulk's build script sends all of it there).
            for path, name, _ in logs:
                if phase_of(name) == phase:
                    tail = describe_log(path)[1] or tail
        elif not self.settings.keep_phase_logs:
            logs = []
        files, current = self._packages_made(job, built) if status == "success" else ([], None)
        missing = []
        if current is not None and self.packages_url:
            from .transfer import in_tree

            # Nothing is uploaded for a package the tree has already (published by an earlier
            # build); one it lacks would leave the jobs that need it nothing to fetch.
            directory = os.path.join(self.packages_dir, "All")
            missing = [p["name"] for p in current
                       if not in_tree(os.path.join(directory, p["name"]), self.packages_url, **self.transfer)]
            files = [os.path.join(directory, name) for name in missing]
        try:
            packages, log_sent, phase_logs = self._upload(job, files, built.log_path,
                                                          [(path, name) for path, name, _ in logs])
        except TransferError as e:
            self._give_back(job, f"upload failed: {e}", "transfer", own=True)
            return None
        if not self.packages_url:  # nothing to upload to: described only, as the build log is
            phase_logs = []
            for path, name, _ in logs:
                try:
                    phase_logs.append(dict(describe(path), name=name))
                except TransferError as e:  # gone or changed since: the build left something behind
                    self.out(f"{self.name}: not naming the log {name}: {e}")
        elif not log_sent:
            log = None
        if current is not None:
            # Nothing was built, so nothing was installed for it either.
            packages, extra["up_to_date"], extra["installed"] = current, True, []
            names = ", ".join(p["name"] for p in current)
            if missing:
                self.out(f"{self.name}: {job.job} is up to date: {names} stays as it is; uploaded "
                         f"{', '.join(missing)}, which the package tree lacks")
            else:
                self.out(f"{self.name}: {job.job} is up to date: {names} stays as it is, nothing uploaded")
        extra["phase_logs"] = phase_logs
        return {"job": job.job, "status": status, "token": job.lease, "duration": built.duration,
                "log": log, "log_tail": tail if status == "failure" else None, "packages": packages, **extra}

    def _version_skew(self, job) -> tuple[str | None, bool]:
        """(why this worker's tree cannot build `job` as the queue has it, or None; whether the
        tree itself is broken rather than at another version)."""
        if not self.pkgname_command or not job.pkgpath or not self.settings.pkgsrc_dir:
            return None, False
        import shlex

        directory = os.path.join(self.settings.pkgsrc_dir, job.pkgpath)
        if not os.path.isdir(directory):
            return f"sorry, my pkgsrc has no {job.pkgpath} (yet)", False
        try:
            proc = subprocess.run(shlex.split(self.pkgname_command), cwd=directory, env=job_environment(job),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"cannot ask my pkgsrc for the PKGNAME of {job.pkgpath}: {e}", True
        found = proc.stdout.strip()
        if proc.returncode != 0 or not found:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return f"cannot ask my pkgsrc for the PKGNAME of {job.pkgpath}: {last}", True
        if found != job.job:
            return f"sorry, my pkgsrc has {found}, not {job.job} (yet)", False
        return None, False

    def log_path_of(self, job: str, token: str) -> str:
        """Where this worker keeps the build log of `job` it built under the lease `token`."""
        return os.path.join(self.log_dir, log_name(job, token))

    def _give_back(self, job, reason, cause, decline=False, own=False):
        """Give `job` back, saying why; decline it once given back twice for the same cause.

        `own`: the cause is this worker's (its transfers, its disk, its tree), not the job's.
        After OWN_TROUBLE_TO_STOP such give-backs in a row the worker stops with an Error line
        rather than claim, fail and give back forever.
        """
        key = (job.job, cause)
        self.given_back[key] = self.given_back.get(key, 0) + 1
        decline = decline or self.given_back[key] >= SAME_CAUSE_TO_DECLINE
        try:
            release(self.queue, self.name, job.job, reason, job.lease, decline=decline)
            self.out(f"{self.name}: gave back {job.job}: {reason}"
                     + ("; declined (not offered to this worker again)" if decline else ""))
        except GitqueueError as e:
            self.out(f"{self.name}: could not give back {job.job} ({reason}): {e}")
        if own:
            self.trouble += 1
            if self.trouble >= OWN_TROUBLE_TO_STOP:
                raise GitqueueError(f"{self.name} gave back {self.trouble} jobs in a row because of trouble on "
                                    f"this worker, not in the jobs; stopping. The last: {reason}")
