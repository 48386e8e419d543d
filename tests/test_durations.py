"""Durations of earlier builds: from a build-time TSV or an earlier queue, as the estimates of an import."""

import lzma

import pytest

from gitqueue import lease
from gitqueue.durations import apply_times, load_times

from helpers import BUILD_TIMES, SUBSET, gitqueue, job, make_queue, open_queue
from test_lists import GRAPH


def test_history_from_a_tsv_and_from_an_earlier_queue(tmp_path):
    tsv = tmp_path / "times.tsv"
    tsv.write_text("pkgpath\thistory_pkgname\toutcome\tduration_s\n"
                   "devel/gmake\tgmake-4.4\tsuccess\t312.5\ntextproc/icu\ticu-77\tfailure\t10\n")
    times = load_times(str(tsv))
    assert times == {"gmake-4.4": 312.5, "devel/gmake": 312.5}
    jobs = [dict(j) for j in GRAPH]
    assert apply_times(jobs, times) == 1
    assert jobs[3]["est_seconds"] == 312.5 and jobs[3]["est_source"] == "history"
    # An earlier queue's results are history too.
    old = make_queue(tmp_path, [job("gmake-4.4.1", pkgpath="devel/gmake")], name="old.git")
    with open_queue(old, tmp_path) as q:
        lease.claim(q, "w1")
        lease.report(q, "w1", "gmake-4.4.1", "success", duration=200)
    with open_queue(old, tmp_path, host="reader") as q:
        from gitqueue.durations import _from_queue
        assert _from_queue(q) == {"gmake-4.4.1": 200, "devel/gmake": 200}
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    from gitqueue.errors import ImportRefused
    with pytest.raises(ImportRefused, match="needs columns pkgpath and duration_s"):
        load_times(str(bad))


def test_import_with_real_build_times(tmp_path):
    url = str(tmp_path / "q.git")
    env = {"GITQUEUE_CACHE": str(tmp_path / "c")}
    times = tmp_path / "pkgsrc-build-times.tsv"
    times.write_bytes(lzma.decompress(BUILD_TIMES.read_bytes()))
    assert gitqueue("init", url, env=env).returncode == 0
    p = gitqueue("import", url, SUBSET, "--history", times, "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert '"estimated_from_history": 254' in p.stdout
