from pathlib import Path

import pytest

from ferryman.config import load_config
from ferryman.errors import ConfigError
from tests import fakes


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ferryman.yaml"
    path.write_text(text)
    return path


BASE = """
systems:
  inbox: {connector: csv, directory: %(dir)s/in}
  out: {connector: csv, directory: %(dir)s/out}
pipelines:
  t2c: {from: inbox.tickets, to: out.tickets}
"""


def test_valid_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE % {"dir": tmp_path}), environ={})
    assert config.pipelines["t2c"].target_refs() == [("out", "tickets")]
    assert config.pipelines["t2c"].overlap.total_seconds() == 120


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        ("pipelines:\n  p: {from: a.tickets, to: b.tickets, page_sise: 3}\n", "pipelines.p.page_sise", "unknown key"),
        ("systems:\n  a: {connector: nope}\n", "systems.a.connector", "unknown connector 'nope'"),
        ("systems:\n  a: {connector: csv}\n", "systems.a.directory", "required key is missing"),
        ("pipelines:\n  p: {from: tickets, to: b.tickets}\n", "pipelines.p.from", "is not 'system.stream'"),
        (
            "pipelines:\n  p: {from: a.tickets, to: b.tickets, schedule: {every: 5 parsecs}}\n",
            "pipelines.p.schedule.every",
            "not a duration",
        ),
        (
            "systems:\n  a: {connector: csv, directory: /x}\npipelines:\n  p: {from: a.tickets, to: a.widgets}\n",
            "pipelines.p.to.0",
            "no stream 'widgets'",
        ),
        (
            "systems:\n  a: {connector: csv, directory: /x}\npipelines:\n  p: {from: a.tickets, to: zz.tickets}\n",
            "pipelines.p.to.0",
            "unknown system 'zz'",
        ),
    ],
)
def test_invalid_config_names_the_key_path(tmp_path: Path, text: str, path: str, problem: str) -> None:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert info.value.path == path
    assert problem in str(info.value)
    assert str(file) in str(info.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    file = write(tmp_path, "systems:\n  a: {connector: csv\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        load_config(file, environ={})


def test_env_overrides_any_key_including_hyphenated_names(tmp_path: Path) -> None:
    text = BASE.replace("t2c", "tickets-to-csv") % {"dir": tmp_path}
    env = {"FERRYMAN_PIPELINES__TICKETS_TO_CSV__PAGE_SIZE": "42", "FERRYMAN_STATE__URL": "sqlite:///x.db"}
    config = load_config(write(tmp_path, text), environ=env)
    assert config.pipelines["tickets-to-csv"].page_size == 42
    assert config.state.url == "sqlite:///x.db"


def test_plain_ferryman_env_vars_are_not_overrides(tmp_path: Path) -> None:
    # a secret kept in FERRYMAN_SOMETHING must not be read as an unknown config key
    config = load_config(write(tmp_path, BASE % {"dir": tmp_path}), environ={"FERRYMAN_HELPDESK_KEY": "x"})
    assert "t2c" in config.pipelines


@pytest.fixture
def memory() -> None:
    fakes.register()


def test_secret_from_env_reference(tmp_path: Path, memory: None) -> None:
    text = "systems:\n  m: {connector: memory, store: s, api_key: '${APP_KEY}'}\n"
    config = load_config(write(tmp_path, text), environ={"APP_KEY": "s3cr3t-value"})
    assert config.system_options("m").api_key.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(config.system_options("m"))


def test_secret_from_systemd_credential(tmp_path: Path, memory: None) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "app-key").write_text("from-credential-file\n")
    text = "systems:\n  m: {connector: memory, store: s, api_key: '${credential:app-key}'}\n"
    config = load_config(write(tmp_path, text), environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.system_options("m").api_key.get_secret_value() == "from-credential-file"


def test_literal_secret_is_refused(tmp_path: Path, memory: None) -> None:
    text = "systems:\n  m: {connector: memory, store: s, api_key: literally-in-yaml}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.path == "systems.m.api_key"
    assert "references" in str(info.value)
    assert "literally-in-yaml" not in str(info.value)


def test_missing_env_reference_names_variable_and_key(tmp_path: Path, memory: None) -> None:
    text = "systems:\n  m: {connector: memory, store: s, api_key: '${NOT_SET_ANYWHERE}'}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.path == "systems.m.api_key"
    assert "NOT_SET_ANYWHERE" in str(info.value)


def test_two_one_way_pipelines_cannot_write_one_target(tmp_path: Path) -> None:
    text = BASE % {"dir": tmp_path} + "  other: {from: inbox.tickets, to: out.tickets}\n"
    with pytest.raises(ConfigError, match="one writer per target"):
        load_config(write(tmp_path, text), environ={})


def test_a_section_with_every_key_commented_out_means_defaults(tmp_path: Path) -> None:
    text = "state:\n  # url: sqlite:///x.db\nlog:\n" + BASE % {"dir": tmp_path}
    config = load_config(write(tmp_path, text), environ={})
    assert config.state.url is None and config.log.level == "info"


def test_an_unknown_timezone_is_a_config_error_wherever_it_is(tmp_path: Path) -> None:
    text = (BASE % {"dir": tmp_path}).replace(
        "to: out.tickets}", "to: out.tickets, schedule: {cron: '*/5 * * * *', timezone: Mars/Olympus}}"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.path == "pipelines.t2c.schedule.timezone" and "unknown timezone 'Mars/Olympus'" in str(info.value)
    text = BASE.replace("directory: %(dir)s/in}", "directory: %(dir)s/in, timezone: Europe/Berlinn}") % {
        "dir": tmp_path
    }
    with pytest.raises(ConfigError, match="Europe/Berlinn") as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.path == "systems.inbox.timezone"
