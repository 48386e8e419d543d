"""WorkerSettings: one checked list of a worker's settings, for the config file, `gitqueue work` and Worker."""

import dataclasses

import pytest

from gitqueue.config import CONNECTION_KEYS, WorkerSettings, config_keys
from gitqueue.errors import SettingInvalid

from helpers import REPO, gitqueue, job, make_queue


@pytest.mark.parametrize("values, message", [
    ({"transfer_attempts": 0}, "transfer_attempts must be a positive number"),
    ({"transfer_attempts": 2.5}, "transfer_attempts must be a positive number"),
    ({"transfer_attempts": True}, "transfer_attempts must be a positive number"),
    ({"transfer_backoff": -1}, "transfer_backoff must be a positive number"),
    ({"network_timeout": float("inf")}, "network_timeout must be a positive number"),
    ({"max_wait": "soon"}, "max_wait must be a positive number"),
    ({"pkgsrc_dir": 3}, "pkgsrc_dir must be a string"),
    ({"host": ["h1"]}, "host must be a string"),
])
def test_a_setting_that_cannot_be_used_is_refused_in_one_line(values, message):
    with pytest.raises(SettingInvalid, match=f"^{message}$") as caught:
        WorkerSettings(**values)
    assert caught.value.key == next(iter(values))


def test_settings_are_values():
    settings = WorkerSettings(transfer_attempts=2, network_timeout=30)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.transfer_attempts = 3
    assert settings.transfer("ssh -x") == {"rsh": "ssh -x", "attempts": 2, "backoff": 1.0, "io_timeout": 30}
    assert WorkerSettings.from_mapping({"queue": "/q", "transfer_backoff": 0.5}).transfer_backoff == 0.5


def test_the_config_file_keys_are_the_connection_and_settings_fields():
    fields = [f.name for f in dataclasses.fields(WorkerSettings)]
    assert config_keys() == CONNECTION_KEYS + tuple(fields)
    assert {"arch", "pkgsrc_dir", "rsync_rsh", "transfer_attempts", "network_timeout"} <= set(fields)


def test_the_config_file_is_checked_by_the_settings(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("transfer_attempts = 0\n")
    env = {"GITQUEUE_CONFIG": str(config), "GITQUEUE_CACHE": str(tmp_path / "cache")}
    proc = gitqueue("status", "--queue", str(tmp_path / "q.git"), env=env)
    assert proc.returncode == 1 and proc.stderr == f"Error: {config}: transfer_attempts must be a positive number\n"
    config.write_text("max_wait = 0.5\nworker = 7\n")
    proc = gitqueue("status", "--queue", str(tmp_path / "q.git"), env=env)
    assert proc.returncode == 1 and proc.stderr == f"Error: {config}: worker must be a string\n"


def test_work_options_are_settings_fields(tmp_path):
    url = make_queue(tmp_path, [job("a-1")])
    proc = gitqueue("work", "--queue", url, "--worker", "w1", "--max-wait", "-1", "--", "true",
                    env={"GITQUEUE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "Error: Invalid value for --max-wait: must be a positive number"


def test_readme_names_every_config_key():
    readme = (REPO / "README.md").read_text()
    assert [key for key in config_keys() if f"`{key}`" not in readme] == []
