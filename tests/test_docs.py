"""The documentation agrees with the command line: help examples, README commands, exit statuses."""

import re

import pytest
from click.testing import CliRunner

from gitqueue import errors
from gitqueue.cli.main import cli

from helpers import REPO

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
