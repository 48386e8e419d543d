"""Installing gitqueue as README.md says: a wheel built from the checkout, into a fresh venv.

Offline: the wheel is built without build isolation (setuptools and `wheel`, test extras, come
from this interpreter), and the venv sees this interpreter's site-packages for the dependencies
(dulwich, click, filelock, tomli-w), so that nothing is fetched. Everything gitqueue itself runs
comes from the venv's copy, never from this checkout.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from helpers import REPO

DATA_FILE = "gitqueue/data/pkgsrc-subset.presolve"


def run(*args, **kwargs):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def installed_env(tmp_path) -> dict:
    """The environment of a user's shell: no PYTHONPATH naming this checkout, no configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITQUEUE_", "PYTHONPATH"))}
    return dict(env, GITQUEUE_CONFIG=str(tmp_path / "none.toml"), PIP_DISABLE_PIP_VERSION_CHECK="1")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """gitqueue's wheel, built by `pip wheel` from a copy of the checkout (nothing lands in it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "gitqueue", source / "gitqueue", ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist",
        source, env=installed_env(tmp))
    [built] = os.listdir(tmp / "dist")
    return str(tmp / "dist" / built)


def test_the_wheel_holds_the_package_and_its_data(wheel):
    assert os.path.basename(wheel) == "gitqueue-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        data = z.read(DATA_FILE)
    assert data == (REPO / DATA_FILE).read_bytes()
    assert {"gitqueue/__main__.py", "gitqueue/cli/main.py", "gitqueue/importers/jsonl.py"} <= names
    assert "gitqueue/py.typed" in names  # PEP 561: type checkers read the annotations of an installed gitqueue
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_the_installed_wheel_runs_the_demo(wheel, tmp_path):
    """python3 -m pip install ./gitqueue-0.1.0-py3-none-any.whl in a venv, then `gitqueue demo`."""
    venv = tmp_path / "venv"
    env = installed_env(tmp_path)
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv)
    python = venv / "bin" / "python"
    # The venv has no pip of its own: this interpreter's, run by the venv's python, installs there.
    run(python, "-m", "pip", "install", "--no-index", wheel, env=env)
    where = run(python, "-c", "import gitqueue; print(gitqueue.__file__)", env=env, cwd=tmp_path).stdout
    assert where.startswith(str(venv)), f"gitqueue imported from {where}, not the venv"
    # The whole demo takes a minute: watch it build a few packages, then stop it as Ctrl-C does.
    # One worker: the demo's simulated crash (a SIGKILL) needs several.
    demo = subprocess.Popen([venv / "bin" / "gitqueue", "demo", tmp_path / "demo", "--workers", "1", "--speed", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines = []
    try:
        deadline = time.monotonic() + 60
        for line in demo.stdout:
            lines.append(line)
            if " ok " in line and int(line.split(" ok ")[1].split()[0]) >= 5 or time.monotonic() > deadline:
                break
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    out = "".join(lines) + rest
    # The packaged graph was found and read from the venv's copy.
    assert lines[0] == f"queue {tmp_path / 'demo' / 'queue.git'}: 279 jobs, 1977 dependencies, 0 prefailed\n", out
    assert "interrupted: stopping workers (they release their jobs)" in out
    actions = run("git", "-C", tmp_path / "demo" / "queue.git", "log",
                  "--format=%(trailers:key=Gitqueue-Action,valueonly)").stdout.split()
    assert actions.count("report") >= 5 and actions[-2:] == ["import", "init"], actions
    assert "demo-1:" in (tmp_path / "demo" / "demo-1.log").read_text()
