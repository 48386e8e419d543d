"""The documentation agrees with the command line: help examples, README commands, exit statuses."""

import json
import re
import shlex

import pytest
from click.testing import CliRunner

from gitqueue import errors
from gitqueue.cli.main import cli

from helpers import REPO, gitqueue

README = (REPO / "README.md").read_text()
COMMANDS = sorted(cli.list_commands(None))


def help_text(name: str) -> str:
    result = CliRunner().invoke(cli, [name, "--help"], prog_name="gitqueue", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout


def example(name: str) -> str:
    """The command line after 'Example:' in the command's help text."""
    text = cli.get_command(None, name).help or ""
    assert "Example:" in text, f"gitqueue {name}: no 'Example:' in its help"
    return " ".join(text.split("Example:", 1)[1].split())


def test_the_commands_are_registered():
    assert {"init", "import", "claim", "heartbeat", "report", "release", "reclaim", "status", "work",
            "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(name):
    assert f"gitqueue {name}" in example(name)
    assert "Example:" in help_text(name)


def test_help_examples_are_not_broken_across_lines():
    broken = [name for name in COMMANDS if f"Example: {example(name)}" not in help_text(name)]
    assert broken == []


@pytest.mark.parametrize("name", COMMANDS)
def test_readme_mentions_every_command(name):
    mentioned = re.search(rf"`gitqueue {name}\b", README) is not None
    assert mentioned, f"README.md does not mention `gitqueue {name}`"
    # ... and it has a row in the command table.
    row = re.search(rf"^\| `gitqueue {name}\b[^`]*` \|", README, re.M) is not None
    assert row, f"README.md's command table has no row for `gitqueue {name}`"


def test_readme_documents_no_command_that_does_not_exist():
    rows = re.findall(r"^\| `gitqueue ([a-z-]+)", README, re.M)
    assert rows and sorted(set(rows) - set(COMMANDS)) == []


def exit_statuses() -> str:
    m = re.search(r"\*\*Exit statuses\*\*(.*?)\n\n", README, re.S)
    assert m, "README.md has no **Exit statuses** paragraph"
    return " ".join(m.group(1).split())


@pytest.mark.parametrize("code, commands, meaning", [
    (errors.EXIT_NOTHING_READY, "`claim`", "nothing ready now, retry later"),
    (errors.EXIT_FINISHED, "`claim`", "queue finished, nothing left to do"),
    (errors.EXIT_LEASE_LOST, "`report`/`release`/`heartbeat`", "the job is not (or no longer) held by this worker"),
])
def test_readme_documents_the_exit_statuses(code, commands, meaning):
    assert f" {code} {commands}: {meaning}" in exit_statuses()


def test_readme_documents_errors_and_usage_errors():
    text = exit_statuses()
    assert "0 done" in text
    assert f"{errors.EXIT_ERROR} error, with one `Error: ...` line on stderr" in text
    assert "2 usage error" in text


def test_the_exit_statuses_of_the_library_are_the_documented_ones():
    assert (errors.EXIT_ERROR, errors.EXIT_NOTHING_READY, errors.EXIT_FINISHED, errors.EXIT_LEASE_LOST) == (1, 3, 4, 5)
    assert errors.NothingReady.exit_code == 3 and errors.QueueFinished.exit_code == 4
    assert errors.LeaseLost.exit_code == 5 and errors.UnknownJob.exit_code == 1


# -- docs/import.md: the graph formats ------------------------------------------------------------

IMPORT_DOC = (REPO / "docs" / "import.md").read_text()


def fenced(text: str, lang: str) -> list[str]:
    """The contents of the code blocks fenced as ```lang in `text`, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.M | re.S)


def test_the_documented_jsonl_keys_are_the_accepted_ones():
    from gitqueue.importers import jsonl

    table = re.search(r"^\| key \| required \| value \|\n\| --- .*?\n((?:\|.*\n)+)", IMPORT_DOC, re.M).group(1)
    rows = [re.match(r"\| `(\w+)` \| (yes|no) \|", line).groups() for line in table.splitlines()]
    assert sorted(key for key, _ in rows) == sorted(jsonl.KEYS)
    assert [key for key, required in rows if required == "yes"] == list(jsonl.REQUIRED)


def test_the_documented_jsonl_example_imports_and_builds_as_documented(tmp_path):
    """The example of docs/import.md, run through the real `gitqueue import` with its shown output."""
    [graph] = fenced(IMPORT_DOC, "jsonl")
    (tmp_path / "graph.jsonl").write_text(graph)
    queue = tmp_path / "srv" / "example.git"
    env = {"GITQUEUE_CACHE": str(tmp_path / "cache"), "GITQUEUE_CONFIG": str(tmp_path / "none.toml")}
    session = next(block for block in fenced(IMPORT_DOC, "sh") if "gitqueue import" in block)
    for command, *shown in (part.splitlines() for part in session.split("$ ")[1:]):
        args = shlex.split(command.replace("/srv/queues/example.git", str(queue)))
        assert args[0] == "gitqueue"
        proc = gitqueue(*args[1:], env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        expected = "".join(line + "\n" for line in shown).replace("/srv/queues/example.git", str(queue))
        assert proc.stdout == expected, command
    # ... and builds as the text after it says: five built, one prefailed, one indirect-prefailed.
    assert gitqueue("work", "--queue", queue, "--worker", "w1", "--", "true", env=env).returncode == 0
    counts = json.loads(gitqueue("status", "--queue", queue, "--json", env=env).stdout)["counts"]
    assert (counts["success"], counts["prefailed"], counts["indirect-prefailed"]) == (5, 1, 1)
    assert "Five jobs get built; `broken-1.0` is prefailed and `viewer-2.0`" in IMPORT_DOC


LIBRARY_DOC = (REPO / "docs" / "library.md").read_text()


def test_the_library_example_runs_as_documented(tmp_path):
    """The example of docs/library.md, run as a script against a real local bare queue."""
    import os
    import subprocess
    import sys

    from helpers import job, make_queue

    url = make_queue(tmp_path, [job("gmake-4.4.1", version="4.4.1", pkgpath="devel/gmake")])
    example = next(block for block in fenced(LIBRARY_DOC, "python") if "queue.claim()" in block)
    [shown] = fenced(LIBRARY_DOC, "text")
    script = tmp_path / "example.py"
    script.write_text(example.replace('"/srv/queues/2026Q4-m68k.git"', repr(url)))
    work = tmp_path / "work"
    work.mkdir()
    # HOME: the default cache, ~/.cache/gitqueue, is this test's own.
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown
    assert (tmp_path / ".cache" / "gitqueue").is_dir()
    assert json.loads(gitqueue("status", "--queue", url, "--json").stdout)["counts"]["success"] == 1
    # Run again, it has nothing left to claim.
    proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout == "the queue is finished\n1 of 1 jobs done\n", proc.stderr


def test_readme_links_the_library_documentation():
    assert "(docs/library.md)" in README
