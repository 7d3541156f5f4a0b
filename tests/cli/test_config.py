"""Where the `unwind` command line finds its server and token (unwind_cli/client.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from unwind_cli.client import ConfigError, resolve
from unwind_cli.main import app


@pytest.fixture
def config(tmp_path, monkeypatch):
    for name in ("UNWIND_URL", "UNWIND_TOKEN", "UNWIND_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = tmp_path / "unwind" / "config.toml"
    path.parent.mkdir()
    return path


def test_the_environment_wins_over_the_config_file(config, monkeypatch):
    config.write_text('url = "http://file:8000/"\ntoken = "unw_file"\n')
    config.chmod(0o600)
    assert resolve() == ("http://file:8000", "unw_file")
    monkeypatch.setenv("UNWIND_TOKEN", "unw_env")
    monkeypatch.setenv("UNWIND_URL", "http://env:8000")
    assert resolve() == ("http://env:8000", "unw_env")
    assert resolve(url="http://option:8000") == ("http://option:8000", "unw_env")


def test_a_config_file_others_can_read_is_refused(config):
    config.write_text('token = "unw_file"\n')
    config.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        resolve()


def test_an_unknown_key_in_the_config_file_is_named(config):
    config.write_text('tokn = "unw_file"\n')
    config.chmod(0o600)
    with pytest.raises(ConfigError, match="tokn"):
        resolve()


def test_without_a_token_the_cli_says_where_to_put_one(config):
    result = CliRunner().invoke(app, ["runs"])
    assert result.exit_code == 3
    assert "UNWIND_TOKEN" in result.output and str(config) in result.output


def test_no_answer_from_the_server_exits_3(config, monkeypatch):
    monkeypatch.setenv("UNWIND_TOKEN", "unw_x")
    result = CliRunner().invoke(app, ["--url", "http://127.0.0.1:9", "show", "1"])
    assert result.exit_code == 3 and "no answer" in result.output


def test_watch_retries_a_lost_connection_until_its_timeout(config, monkeypatch):
    monkeypatch.setenv("UNWIND_TOKEN", "unw_x")
    args = ["--url", "http://127.0.0.1:9", "watch", "1", "--interval", "0.1", "--timeout", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 4
    assert result.output.count("connection lost, retrying") == 1  # said once, not every poll
    assert "timed out after 0.5 s" in result.output
