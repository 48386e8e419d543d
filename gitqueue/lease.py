"""The protocol: claim, heartbeat, report, release and reclaim leases on jobs.

Every state change is one commit on the queue branch, decided against the freshest tip inside a
`Queue.transact`, so the remote's compare-and-swap on the branch is the mutual exclusion.
"""

import dataclasses
import json
import math
import os

from . import records
from .errors import (
    GitqueueError,
    LeaseLost,
    NothingReady,
    QueueFinished,
    TooManyLeases,
    UnknownJob,
    error_from_json,
    error_to_json,
)
from .files import write_json
from .layout import (
    DEFAULT_MAX_RECORD_BYTES,
    JOB_DIRS,
    check_job_name,
    check_worker_name,
    heartbeat_path,
    max_attempts,
    max_leases,
    record_path,
)
from .queue import Change, IndexBehind, trailers
from .records import utc
from .text import printable


@dataclasses.dataclass(frozen=True)
class Claim:
    """A job leased to a worker: what its build needs to know."""

    job: str
    version: str
    pkgpath: str | None
    lease: str  # the lease's token: it fences the report
    deps: list[str]
    multi_version: dict[str, str]

    def as_dict(self) -> dict:
        """The JSON form, as `gitqueue claim --json` prints it."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """The leases of a worker after a heartbeat: still its own, or reclaimed meanwhile."""

    held: list[str]
    lost: list[str]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What `settle` did for one request: a result recorded or the error why not; a job claimed or
    the error why not (NothingReady, QueueFinished, or the worker's own problem)."""

    result: dict | None = None
    report_error: GitqueueError | None = None
    claim: Claim | None = None
    claim_error: GitqueueError | None = None

    def to_json(self) -> dict:
        """A JSON object for another process (see spool.py); `from_json` rebuilds the Outcome."""
        return {"result": self.result, "report_error": self.report_error and error_to_json(self.report_error),
                "claim": self.claim and self.claim.as_dict(),
                "claim_error": self.claim_error and error_to_json(self.claim_error)}

    @classmethod
    def from_json(cls, data: dict) -> "Outcome":
        return cls(data.get("result"), data.get("report_error") and error_from_json(data["report_error"]),
                   data.get("claim") and Claim(**data["claim"]),
                   data.get("claim_error") and error_from_json(data["claim_error"]))


def identity(worker: str) -> str:
    return f"{worker} <{worker}@gitqueue>"


def read_job_record(reader, kind_dir: str, name: str) -> dict | None:
    """The parsed record of job `name` in `kind_dir` (jobs, leases, results, ...) of `reader`'s tree, or None."""
    path = record_path(kind_dir, name)
    data = reader.read(path)
    return None if data is None else records.load_at(JOB_DIRS[kind_dir], data, path)


_read = read_job_record


def fenced_tokens(retries: dict | None) -> set[str]:
    """The lease tokens an administrator's retry or update fenced (retries record): no result under them is kept."""
    return {t for e in (retries or {}).get("retried", ()) for t in e.get("fenced", ())}


def transient_failures(declines: dict | None, retries: dict | None) -> int:
    """How many transient failures the job has had since it was last retried or updated."""
    entries = (declines or {}).get("declined", [])
    since = max((e["declines"] for e in (retries or {}).get("retried", ())), default=0)
    return sum(1 for e in entries[since:] if e.get("transient"))


def transient_backoff(failures: int) -> float:
    """Seconds before the worker that had the `failures`-th transient failure is offered the job again.

    Other workers may take it at once; the one that failed waits 5 minutes, then 20, then 80
    (at most a day): Hydra's doubling, a little steeper, so that a host whose disk filled up does
    not take the job back before anyone else.
    """
    return min(86400.0, 300.0 * 4 ** max(0, failures - 1))


def _heartbeat_change(queue, reader, worker, host=None) -> tuple[str, bytes]:
    path = heartbeat_path(worker)
    data = reader.read(path)
    seq = 0
    if data is not None:
        seq = records.load_at("heartbeat", data, path)["seq"] + 1
    rec = {"worker": worker, "seq": seq, "at": utc(queue.clock())}
    if host:
        rec["host"] = host
    return path, records.dumps("heartbeat", rec)


def _describe(job: dict) -> str:
    return f"{job['name']} ({job['pkgpath']})" if job.get("pkgpath") else job["name"]


class Overlay:
    """A tree reader that sees the changes already decided in this commit on top of the tip."""

    def __init__(self, reader):
        self.base = reader
        self.tree_id = reader.tree_id
        self.files = {}

    def read(self, path):
        return self.files[path] if path in self.files else self.base.read(path)

    def blob_id(self, path):
        if path in self.files:
            return None if self.files[path] is None else b"pending"
        return self.base.blob_id(path)


# A commit of several actions keeps their subjects whole up to SUBJECT_LIMIT characters; longer,
# it names packages per action, as many as fit, and never goes past MAX_SUBJECT.
SUBJECT_LIMIT = 100
MAX_SUBJECT = 120


class Batch:
    """Several claims and reports decided into one commit (see `settle`)."""

    def __init__(self, reader):
        self.reader = Overlay(reader)
        self.subjects = []
        self.actions = []  # (action, job) of each subject
        self.trailers = []
        self.claimed = []  # scheduler.Busy of the claims decided so far
        self.leases = {}  # worker -> live leases gained (claims) or lost (reports) in this commit

    def add(self, files: dict, subject: str, facts: dict):
        self.reader.files.update(files)
        self.subjects.append(subject)
        self.actions.append((facts["Action"], facts["Job"]))
        self.trailers.append(trailers(facts))

    def change(self):
        """The Change: one subject line; with several actions, one body line per action."""
        if not self.subjects:
            return None
        if len(self.subjects) == 1:
            return Change(dict(self.reader.files), f"{self.subjects[0]}\n\n{self.trailers[0]}")
        subject = "; ".join(self.subjects)
        if len(subject) > SUBJECT_LIMIT:
            subject = short_subject(self.actions)
        body = "\n".join(self.subjects)
        return Change(dict(self.reader.files), f"{subject}\n\n{body}\n\n" + "".join(self.trailers))


def short_subject(actions: list[tuple[str, str]]) -> str:
    """A subject for `git log --oneline` naming the packages of several (action, job) pairs.

    Jobs are grouped by action, in order: "report a-1, p-2 (+3 more); claim b-1, c-1". Each action
    names at least its first job; more are named while the subject stays within SUBJECT_LIMIT
    characters. Names are cut short only when the first ones alone would pass MAX_SUBJECT.
    """
    groups: dict[str, list[str]] = {}
    for action, job in actions:
        groups.setdefault(action, []).append(job)
    shown = dict.fromkeys(groups, 1)
    width = MAX_SUBJECT

    def text():
        parts = []
        for action, jobs in groups.items():
            names = [job if len(job) <= width else job[: width - 3] + "..." for job in jobs[: shown[action]]]
            more = len(jobs) - shown[action]
            parts.append(f"{action} {', '.join(names)}" + (f" (+{more} more)" if more else ""))
        return "; ".join(parts)

    if len(text()) > MAX_SUBJECT:
        # " (+NNN more)" and "; " around each action's name.
        width = max(16, (MAX_SUBJECT - sum(len(action) + 15 for action in groups)) // len(groups))
        return text()
    grown = True
    while grown:  # name one more job of each action in turn, while it fits
        grown = False
        for action, jobs in groups.items():
            if shown[action] < len(jobs):
                shown[action] += 1
                if len(text()) <= SUBJECT_LIMIT:
                    grown = True
                else:
                    shown[action] -= 1
    return text()


def claim(queue, worker: str, host: str | None = None, platform: dict | None = None) -> Claim:
    """Lease the best ready job for `worker`.

    With `platform` (see platform.describe), refuses with PinMismatch a queue whose pins
    (architecture, OS release, pkgsrc branch and revision) this worker does not meet, and
    records the description in the lease.
    Raises NothingReady when nothing is ready now, QueueFinished when nothing is left.
    """
    check_worker_name(worker)
    chosen: list[Claim] = []

    def decide(tip, reader):
        batch = Batch(reader)
        chosen[:] = [_claim_step(queue, batch, worker, host, platform)]
        return batch.change()

    queue.transact(decide, identity(worker), may_defer=True)
    queue.index.remember_claim(chosen[0].job, worker, chosen[0].lease)
    return chosen[0]


def _claim_step(queue, batch, worker, host, platform, request=None) -> Claim:
    """Decide the claim of the best ready job for `worker` into `batch`; return the job as claim does.

    With `request` (an id), a lease already taken for that request is returned instead: a
    request settled by a process that died before handing over the outcome is not claimed twice.
    """
    from . import scheduler

    reader = batch.reader
    if request is not None:
        if queue.index_behind:
            # A lease taken for this request by a process that died before it updated the
            # index would be missed; with the index at the tip it is not.
            raise IndexBehind()
        for name in queue.index.leased_to(worker):
            lease = _read(reader, "leases", name)
            if lease is not None and lease.get("request") == request:
                return _claimed(_read(reader, "jobs", name), token=lease["token"])
    settings = queue.settings(reader)
    if platform is not None:
        from .platform import check

        check(settings, platform)
    index = queue.index
    held = index.leases_held(worker) + batch.leases.get(worker, 0)
    cap = max_leases(settings)
    if held >= cap and queue.index_behind:
        raise IndexBehind()
    if held >= cap:
        raise TooManyLeases(f"{worker} already holds {held} live lease{'s' if held > 1 else ''}, the most this "
                            f"queue allows (max_leases {cap}): report or release one first")
    now = queue.clock()
    speeds = index.speeds()
    factor = speeds.factor(worker)
    busy = index.busy(speeds, now, exclude=worker) + [b for b in batch.claimed if b.worker != worker]
    # Jobs claimed earlier in this commit still look ready to the index: look past them.
    limit = scheduler.candidates_needed(factor, busy) + len(batch.claimed)
    candidates = [c for c in index.ready(worker, limit, now) if not reader.blob_id(record_path("leases", c.name))]
    accepted = scheduler.choose(candidates, factor, busy, now, speeds.measured(worker))
    for cand in accepted:
        name = cand.name
        job = _read(reader, "jobs", name)
        if job is None or reader.blob_id(record_path("leases", name)) or reader.blob_id(
            record_path("results", name)
        ):
            continue  # the index is behind the tree: trust the tree
        if ((queue.index_behind or record_path("declines", name) in reader.files)
                and _held_back(reader, name, worker, now)):
            continue  # given back since the index's commit or in this very commit: the index does not know yet
        if not all(_status(reader, d) == "success" for d in job["deps"]):
            continue
        token = os.urandom(16).hex()
        lease = {"job": name, "worker": worker, "token": token, "claimed_at": utc(queue.clock())}
        if host:
            lease["host"] = host
        if platform:
            lease["platform"] = platform
        if request is not None:
            lease["request"] = request
        if queue.signer is not None:
            lease["signer"] = queue.signer.fingerprint
        hb_path, hb = _heartbeat_change(queue, reader, worker, host)
        batch.claimed.append(scheduler.Busy(worker, factor, now + cand.est * factor))
        batch.leases[worker] = batch.leases.get(worker, 0) + 1
        batch.add({record_path("leases", name): records.dumps("lease", lease), hb_path: hb},
                  f"claim {_describe(job)} by {worker}",
                  {"Action": "claim", "Job": name, "Version": job["version"], "Pkgpath": job.get("pkgpath"),
                   "Worker": worker, "Lease": token})
        return _claimed(job, token)
    if queue.index_behind:
        raise IndexBehind()  # nothing or nothing ready, as far as an index behind the tip knows
    if candidates and not accepted:
        raise NothingReady(f"nothing for {worker} now: faster workers will finish the "
                           f"{len(candidates)} ready jobs sooner",
                           retry_after=scheduler.next_chance(factor, busy, now))
    counts = index.counts()
    if counts["ready"] > len(batch.claimed) or counts["leased"] or counts["waiting"] or batch.claimed:
        ready = max(0, counts["ready"] - len(batch.claimed))
        declined = f", {ready} ready but declined by {worker}" if ready else ""
        raise NothingReady(
            f"nothing ready for {worker} now ({counts['leased'] + len(batch.claimed)} leased, "
            f"{counts['waiting']} waiting{declined})"
        )
    raise QueueFinished("queue finished: every job has a final state")


def _held_back(reader, name: str, worker: str, now: float) -> bool:
    from .index import decline_rows

    until = dict(decline_rows(_read(reader, "declines", name) or {"declined": []})).get(worker, 0.0)
    return until is None or until > now


def _claimed(job, token) -> Claim:
    return Claim(job["name"], job["version"], job.get("pkgpath"), token, job["deps"], job.get("multi_version", {}))


def _status(reader, name):
    rec = _read(reader, "results", name)
    return rec["status"] if rec else None


# Fields of a result that a build adds beyond its status, log and packages (see the result schema).
BUILD_FIELDS = ("up_to_date", "failed_phase", "phase_logs", "installed", "transient")


def build_fields(values: dict) -> dict:
    """The BUILD_FIELDS of `values` that are set (a report request, a worker's outcome)."""
    return {key: values[key] for key in BUILD_FIELDS if values.get(key)}


class AlreadyRecorded(dict):
    """What `report` returns when the outcome it reports was already in the queue: recorded by an
    earlier run of the same report (the same worker, lease token and outcome) whose reply was lost.
    Nothing was written; the dict is the record as the queue has it (or the requeued outcome)."""


def report(queue, worker: str, job: str, status: str, token: str | None = None,
           duration: float | None = None, log: dict | None = None, log_tail: str | None = None,
           packages: list[dict] | None = None, platform: dict | None = None, extra: dict | None = None) -> dict:
    """Record the result of `job` and end the lease.

    Fencing: the lease in the tree must carry this worker's token. If the lease was reclaimed
    and nobody holds the job, a late success is kept (marked late); anything else raises LeaseLost
    and writes nothing. `extra` holds BUILD_FIELDS of the result (up_to_date, failed_phase,
    phase_logs, installed).

    Retrying is safe: when this worker's outcome under the lease's token (`token`, else the one
    this cache remembers from the claim) is already recorded, with the same status (and
    transient or not), nothing is written and it is returned as an AlreadyRecorded; a different
    status under that token raises LeaseLost.
    """
    check_worker_name(worker)
    check_job_name(job)
    if status not in ("success", "failure"):
        raise GitqueueError(f"status must be success or failure, not {status!r}")
    result: dict = {}

    def decide(tip, reader):
        batch = Batch(reader)
        result.clear()
        result.update(_report_step(queue, batch, worker, job, status, token, duration, log, log_tail,
                                   packages, platform, retried=True, extra=extra))
        return batch.change()

    commit, _ = queue.transact(decide, identity(worker))
    queue.index.forget_claim(job)
    return result if commit is not None else AlreadyRecorded(result)


def recorded_outcome(queue, reader, worker: str, job: str, token: str) -> dict | None:
    """What is already recorded for `worker`'s lease on `job` under `token`: its result, or the
    outcome of a transient failure that sent the job back to the queue; None when neither is."""
    job_rec = _read(reader, "jobs", job)
    if job_rec is None:
        return None
    return _recorded(queue, reader, worker, job_rec, token, _read(reader, "results", job), _read(reader, "leases", job))


def _recorded(queue, reader, worker, job_rec, token, existing, lease) -> dict | None:
    if existing is not None and existing["token"] == token and existing["worker"] == worker:
        return existing
    if lease is not None and lease["token"] == token:
        return None  # the lease is live: nothing ended it yet
    # Gone back to the queue under this token; another worker may have claimed or built it since.
    return _requeued(queue, reader, worker, job_rec, token)


def _outcome_text(status: str, transient: bool, requeued: bool = False) -> str:
    if requeued:
        return "a transient failure (back to the queue)"
    return f"a {'transient ' if transient else ''}{status}"


def _report_step(queue, batch, worker, job, status, token=None, duration=None, log=None, log_tail=None,
                 packages=None, platform=None, retried=False, extra=None) -> dict:
    """Decide the result of `job` into `batch` (see report); return the result record.

    With `retried`, a result this worker already recorded under the lease token (`token`, else the
    one this cache remembers) is returned as is, and so is the outcome of a transient failure that
    already went back to the queue under it: the request may have been settled by a process that
    died before handing over the outcome, or pushed by one whose reply was lost. A different
    outcome under that token (another status, transient or not) raises LeaseLost.
    """
    reader = batch.reader
    tok = token or queue.index.my_claims(worker).get(job)
    job_rec = _read(reader, "jobs", job)
    if job_rec is None:
        raise UnknownJob(f"unknown job {job}")
    existing = _read(reader, "results", job)
    lease = _read(reader, "leases", job)
    if retried and tok is not None:
        done = _recorded(queue, reader, worker, job_rec, tok, existing, lease)
        if done is not None:
            transient = bool((extra or {}).get("transient"))
            if (done["status"], bool(done.get("transient"))) != (status, transient):
                said = _outcome_text(done["status"], bool(done.get("transient")), bool(done.get("requeued")))
                raise LeaseLost(f"{job}: the lease of {worker} under token {tok} already ended with {said}; this "
                                f"report of {_outcome_text(status, transient)} differs from it; nothing recorded")
            return done
    if existing is not None:
        raise LeaseLost(
            f"{job} already has a result ({existing['status']} by {existing['worker']}); nothing recorded"
        )
    late = False
    if lease is None:
        if tok is None:
            raise LeaseLost(f"{job} is not leased by {worker}")
        lapsed = _read(reader, "lapsed", job)
        if not any(e["worker"] == worker and e["token"] == tok for e in (lapsed or {}).get("lapsed", ())):
            raise LeaseLost(f"{job} is not leased by {worker} under token {tok} (nor was such a lease reclaimed); "
                            "nothing recorded")
        if tok in fenced_tokens(_read(reader, "retries", job)):
            raise LeaseLost(f"{job}: the lease of {worker} under token {tok} was fenced by an administrator's "
                            "retry or update; nothing recorded")
        if status != "success":
            raise LeaseLost(f"{job}: the lease of {worker} was reclaimed; a late failure is not recorded")
        late = True
    elif lease["worker"] != worker or (tok is not None and lease["token"] != tok):
        other = " under another token" if lease["worker"] == worker else f", not by {worker}"
        raise LeaseLost(f"{job} is leased by {lease['worker']}{other}; nothing recorded")
    else:
        tok = lease["token"]
    if (extra or {}).get("transient"):
        if status != "failure":
            raise GitqueueError(f"{job}: only a failure can be transient")
        if lease is None:
            raise LeaseLost(f"{job}: the lease of {worker} was reclaimed; a late failure is not recorded")
        failures = transient_failures(_read(reader, "declines", job), _read(reader, "retries", job)) + 1
        cap = max_attempts(queue.settings(reader))
        if failures < cap:
            return _requeue(queue, batch, worker, job_rec, lease, failures, cap, log_tail)
    rec = {"job": job, "version": job_rec["version"], "status": status, "worker": worker, "token": tok,
           "finished_at": utc(queue.clock())}
    if duration is not None:
        rec["duration"] = round(float(duration), 3)
    if late:
        rec["late"] = True
    if log:
        rec["log"] = log
    if log_tail:
        rec["log_tail"] = log_tail[-4000:]
    if packages:
        rec["packages"] = packages
    if platform:
        rec["platform"] = platform
    rec.update(build_fields(extra or {}))
    if queue.signer is not None:
        rec["signer"] = queue.signer.fingerprint
    data = records.dumps("result", rec)
    if rec.get("installed") and len(data) > 1024 and len(data) > queue.settings(reader).get(
            "max_record_bytes", DEFAULT_MAX_RECORD_BYTES):
        # The list of what the build installed is the one part that may grow with the job (a
        # package with hundreds of dependencies): without it the result still fits the server's
        # limit, and each dependency's own result names its packages.
        del rec["installed"]
        data = records.dumps("result", rec)
    hb_path, hb = _heartbeat_change(queue, reader, worker)
    files: dict[str, bytes | None] = {record_path("results", job): data, hb_path: hb}
    if lease is not None:
        files[record_path("leases", job)] = None
        batch.leases[worker] = batch.leases.get(worker, 0) - 1
    took = f" in {duration:.0f} s" if duration is not None else ""
    batch.add(files, f"report {_describe(job_rec)}: {status} by {worker}{took}{' (late)' if late else ''}",
              {"Action": "report", "Job": job, "Version": job_rec["version"], "Pkgpath": job_rec.get("pkgpath"),
               "Worker": worker, "Status": status, "Lease": tok, "Duration": rec.get("duration"),
               "Late": "true" if late else None, "Up-To-Date": "true" if rec.get("up_to_date") else None,
               "Failed-Phase": rec.get("failed_phase")})
    return rec


def _requeue(queue, batch, worker, job_rec, lease, failures, cap, log_tail) -> dict:
    """Decide a transient failure that leaves attempts: the lease ends and the job goes back to
    the queue, recorded as a transient entry of its declines record (which does not keep the
    worker from it, only holds it back from that worker for a while: transient_backoff)."""
    reader = batch.reader
    job = job_rec["name"]
    said = [line.strip() for line in (log_tail or "").splitlines() if line.strip()]
    reason = printable(f"transient failure, attempt {failures} of {cap}" + (f": {said[-1]}" if said else ""))[:1000]
    declines = _read(reader, "declines", job) or {"job": job, "declined": []}
    declines["declined"].append({"worker": worker, "reason": reason, "at": utc(queue.clock()), "transient": True,
                                 "token": lease["token"]})
    hb_path, hb = _heartbeat_change(queue, reader, worker)
    batch.leases[worker] = batch.leases.get(worker, 0) - 1
    batch.add({record_path("leases", job): None, record_path("declines", job): records.dumps("decline", declines),
               hb_path: hb},
              f"release {_describe(job_rec)} by {worker}: {reason}"[:200],
              {"Action": "release", "Job": job, "Version": job_rec["version"], "Worker": worker,
               "Lease": lease["token"], "Reason": reason, "Declined": "false", "Transient": "true"})
    return _requeue_outcome(job_rec, worker, lease["token"], failures, cap)


def _requeue_outcome(job_rec, worker, token, failures, cap) -> dict:
    return {"job": job_rec["name"], "version": job_rec["version"], "status": "failure", "worker": worker,
            "token": token, "transient": True, "requeued": True, "attempt": failures, "max_attempts": cap}


def _requeued(queue, reader, worker, job_rec, token) -> dict | None:
    """What `_requeue` returned for `worker`'s transient failure under `token`, if its transient
    entry is in the job's declines record; else None."""
    job = job_rec["name"]
    entries = (_read(reader, "declines", job) or {}).get("declined", [])
    at = next((i for i in reversed(range(len(entries))) if entries[i].get("transient")
               and entries[i].get("token") == token and entries[i]["worker"] == worker), None)
    if at is None:
        return None
    # Counted as it was then: since the newest retry before the entry.
    retried = (_read(reader, "retries", job) or {}).get("retried", ())
    since = max((e["declines"] for e in retried if e["declines"] <= at), default=0)
    failures = sum(1 for e in entries[since:at + 1] if e.get("transient"))
    return _requeue_outcome(job_rec, worker, token, failures, max_attempts(queue.settings(reader)))


def settle(queue, requests: list[dict], identity_of: str) -> list[Outcome]:
    """Decide several workers' reports and claims into one commit; one Outcome per request.

    A request is {"worker", "host"?, "platform"?, "id"?, "report"?: {"job", "status", "token",
    "duration", "log", "log_tail", "packages"}, "claim"?: bool}. What one request cannot do (a
    lost lease, nothing ready) does not stop the others: it is that request's Outcome's error.
    Errors of the whole commit (the remote) are raised.
    """
    outcomes: list[Outcome] = []

    def decide(tip, reader):
        batch = Batch(reader)
        outcomes.clear()
        for req in requests:
            out: dict = {}
            rep = req.get("report")
            if rep is not None:
                try:
                    out["result"] = _report_step(
                        queue, batch, req["worker"], rep["job"], rep["status"], rep.get("token"),
                        rep.get("duration"), rep.get("log"), rep.get("log_tail"), rep.get("packages"),
                        req.get("platform"), retried=rep.get("token") is not None, extra=build_fields(rep))
                except (LeaseLost, UnknownJob) as e:
                    out["report_error"] = e
            if req.get("claim"):
                try:
                    out["claim"] = _claim_step(queue, batch, req["worker"], req.get("host"), req.get("platform"),
                                               req.get("id"))
                except GitqueueError as e:  # nothing ready, finished, or this worker's own problem (pins)
                    out["claim_error"] = e
            outcomes.append(Outcome(**out))
        return batch.change()

    queue.transact(decide, identity_of)
    for req, out in zip(requests, outcomes):
        if out.result is not None:
            queue.index.forget_claim(out.result["job"])
        if out.claim is not None:
            queue.index.remember_claim(out.claim.job, req["worker"], out.claim.lease)
    return outcomes


def release(queue, worker: str, job: str, reason: str = "released", token: str | None = None,
            decline: bool = True) -> None:
    """Give `job` back; it is offered to other workers and (with `decline`) never again to `worker`."""
    check_worker_name(worker)
    check_job_name(job)
    # One line, its controls escaped (a tool's coloured message): a decline record refuses them.
    reason = printable(" ".join(reason.split()))[:1000] or "released"

    def decide(tip, reader):
        tok = token or queue.index.my_claims(worker).get(job)
        job_rec = _read(reader, "jobs", job)
        if job_rec is None:
            raise UnknownJob(f"unknown job {job}")
        lease = _read(reader, "leases", job)
        if lease is None or lease["worker"] != worker or (tok is not None and lease["token"] != tok):
            if lease is None:
                raise LeaseLost(f"{job} is not leased; nothing released")
            other = " under another token" if lease["worker"] == worker else f", not by {worker}"
            raise LeaseLost(f"{job} is leased by {lease['worker']}{other}; nothing released")
        files: dict[str, bytes | None] = {record_path("leases", job): None}
        if decline:
            declines = _read(reader, "declines", job) or {"job": job, "declined": []}
            declines["declined"].append({"worker": worker, "reason": reason, "at": utc(queue.clock())})
            files[record_path("declines", job)] = records.dumps("decline", declines)
        hb_path, hb = _heartbeat_change(queue, reader, worker)
        files[hb_path] = hb
        message = f"release {_describe(job_rec)} by {worker}: {reason}\n\n" + trailers(
            {"Action": "release", "Job": job, "Version": job_rec["version"], "Worker": worker,
             "Lease": lease["token"], "Reason": reason, "Declined": "true" if decline else "false"}
        )
        return Change(files, message)

    queue.transact(decide, identity(worker))
    queue.index.forget_claim(job)


def heartbeat(queue, worker: str) -> Heartbeat:
    """Tell the queue that `worker` is alive; return which of its leases it still holds.

    A heartbeat never recreates a lease: jobs reclaimed from this worker are reported as lost.
    """
    check_worker_name(worker)
    out: dict[str, list[str]] = {}

    def decide(tip, reader):
        mine = queue.index.my_claims(worker)
        held: list[str] = []
        lost: list[str] = []
        for job, tok in sorted(mine.items()):
            lease = _read(reader, "leases", job)
            (held if lease and lease["worker"] == worker and lease["token"] == tok else lost).append(job)
        out.update(held=held, lost=lost)
        hb_path, hb = _heartbeat_change(queue, reader, worker)
        message = f"heartbeat {worker} ({len(held)} held)\n\n" + trailers(
            {"Action": "heartbeat", "Worker": worker, "Held": " ".join(held) or None}
        )
        return Change({hb_path: hb}, message)

    queue.transact(decide, identity(worker))
    for job in out["lost"]:
        queue.index.forget_claim(job)
    return Heartbeat(out["held"], out["lost"])


def reclaim(queue, operator: str = "reclaim", now: float | None = None, ttl: int | None = None) -> list[dict]:
    """Release every lease whose worker has not been heard from for longer than the lease TTL.

    Expiry is decided on this machine's clock only. Each run records, in this cache, the
    heartbeat record of every worker that holds a lease and when this machine first saw that
    exact record; a lease expires once its worker's record has stayed unchanged for more than
    the TTL as measured here. Times written by workers are never compared with this clock.
    Returns the reclaimed leases as {"job", "worker", "silent_for"}.
    """
    clock = queue.clock if now is None else (lambda: now)
    state_path = os.path.join(queue.cache_dir, "reclaim-observed.json")
    try:
        with open(state_path) as f:
            observed = json.load(f)
    except (FileNotFoundError, ValueError):
        observed = {}
    reclaimed = []
    with queue.lock():
        tip, reader = queue.sync()
    settings = queue.settings(reader)
    lease_ttl = ttl if ttl is not None else settings["lease_ttl"]
    t = clock()
    fresh = {}
    expired = []
    for path, sha in reader.walk_files("leases"):
        lease = records.load_at("lease", queue.remote.object_store[sha].as_raw_string(), path)
        worker = lease["worker"]
        hb = reader.blob_id(heartbeat_path(worker)) or sha
        key = hb.decode()
        seen = observed.get(worker)
        first = seen[1] if seen and seen[0] == key else t
        fresh[worker] = [key, first]
        if t - first > lease_ttl:
            expired.append((lease, t - first))
    write_json(state_path, fresh)

    for lease, silent in expired:
        job = lease["job"]

        def decide(tip, reader, lease=lease, silent=silent):
            current = _read(reader, "leases", job)
            if current is None or current["token"] != lease["token"]:
                return None
            hb = reader.blob_id(heartbeat_path(lease["worker"]))
            if hb is not None and hb.decode() != fresh[lease["worker"]][0]:
                return None  # heard from since we looked
            job_rec = _read(reader, "jobs", job) or {"name": job}
            why = f"not heard from for {math.ceil(silent)} s (ttl {lease_ttl} s)"
            message = f"reclaim {_describe(job_rec)} from {lease['worker']}: {why}\n\n" + trailers(
                {"Action": "reclaim", "Job": job, "Worker": lease["worker"], "Lease": lease["token"],
                 "Reason": why, "By": operator}
            )
            # The lapsed lease is kept on record: its worker may still report a late success under
            # this token, and the server and publish accept a late result only for such a lease.
            lapsed = _read(reader, "lapsed", job) or {"job": job, "lapsed": []}
            lapsed["lapsed"].append({"worker": lease["worker"], "token": lease["token"], "at": utc(clock()),
                                     "reason": why})
            return Change({record_path("leases", job): None,
                           record_path("lapsed", job): records.dumps("lapsed", lapsed)}, message)

        commit, change = queue.transact(decide, identity(operator))
        if commit is not None:
            reclaimed.append({"job": job, "worker": lease["worker"], "silent_for": math.ceil(silent)})
    return reclaimed
