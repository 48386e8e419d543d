"""A small bulk build with known results, made through the protocol in virtual time.

Eleven packages: four built, one failure that keeps two others from building, a prefailed
package and its dependent, a no-way package and its dependent; one job given back (release),
then reclaimed from a silent worker, then built. Every commit time is T0 + the seconds below.
"""

from gitqueue import admin, lease

from helpers import make_queue, open_queue, pkg

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
TTL = 60
JOBS = [
    pkg("a-1.0", pkgpath="cat/a", est_seconds=100, maintainer="alice@example.org"),
    pkg("b-2.0", ["a-1.0"], pkgpath="cat/b", est_seconds=10),
    pkg("c-3.0", ["a-1.0"], pkgpath="cat/c", est_seconds=50, maintainer="carol@example.org"),
    pkg("d-1.0", ["c-3.0"], pkgpath="cat/d", est_seconds=60),
    pkg("e-1.0", ["d-1.0"], pkgpath="cat/e", est_seconds=60),
    pkg("f-1.0", pkgpath="cat/f", est_seconds=20),
    pkg("g-1.0", pkgpath="cat/g", est_seconds=5),
    pkg("p-1.0", pkgpath="cat/p", prefailed="broken on this platform", maintainer="pat@example.org"),
    pkg("q-1.0", ["p-1.0"], pkgpath="cat/q"),
    pkg("n-1.0", pkgpath="cat/n"),
    pkg("m-1.0", ["n-1.0"], pkgpath="cat/m"),
]
COUNTS = {"ready": 0, "waiting": 0, "leased": 0, "success": 4, "up-to-date": 0, "failed": 1, "indirect-failed": 2,
          "prefailed": 1, "indirect-prefailed": 1, "skipped": 1, "indirect-skipped": 1}
FAIL_TAIL = "cc -c main.c\nmain.c:3: error: unknown type name 'm68k_t'\n*** Error code 1\n"
LOG = {"name": "c-3.0.log", "size": 64, "sha256": "ab" * 32}


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t

    def at(self, seconds):
        self.t = T0 + seconds


def make_known_build(tmp_path, name="known.git", until=None):
    """Create the known build in tmp_path/name; return (url, clock). `until` stops after that step."""
    url = make_queue(tmp_path, JOBS, ttl=TTL, name=name)
    clock = Clock()
    q = open_queue(url, tmp_path, host=f"builder-{name}", clock=clock)
    cron = open_queue(url, tmp_path, host=f"cron-{name}", clock=clock)

    def take(worker, expected, t):
        clock.at(t)
        got = lease.claim(q, worker)
        assert got.job == expected, f"{worker} claimed {got.job}, not {expected}"

    def done(worker, name, status, t, duration, **extra):
        clock.at(t)
        lease.report(q, worker, name, status, duration=duration, **extra)

    steps = [
        lambda: admin.change_noway(q, add=[{"pattern": "n", "arch": "", "reason": "needs rust"}]),
        lambda: take("w1", "a-1.0", 0),
        lambda: take("w2", "f-1.0", 10),
        lambda: (clock.at(20), lease.release(q, "w2", "f-1.0", "no room for the work directory")),
        lambda: take("w3", "f-1.0", 30),
        lambda: done("w1", "a-1.0", "success", 110, 100),
        lambda: take("w1", "c-3.0", 110),
        lambda: (clock.at(120), lease.reclaim(cron)),
        lambda: take("w2", "b-2.0", 120),
        lambda: done("w2", "b-2.0", "success", 150, 30),
        lambda: done("w1", "c-3.0", "failure", 170, 55, log=LOG, log_tail=FAIL_TAIL),
        lambda: (clock.at(200), lease.reclaim(cron)),
        lambda: take("w2", "g-1.0", 210),
        lambda: done("w2", "g-1.0", "success", 215, 5),
        lambda: take("w1", "f-1.0", 220),
        lambda: done("w1", "f-1.0", "success", 240, 20),
    ]
    try:
        for i, step in enumerate(steps):
            if until is not None and i > until:
                break
            step()
    finally:
        q.close()
        cron.close()
    return url, clock
