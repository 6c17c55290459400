from __future__ import annotations

from pathlib import Path

import pytest

from gshare.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gshare.toml"
    path.write_text(text)
    return path


def test_defaults_and_queues(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            '[scheduler]\nadmins = ["alice"]\n'
            '[queues.gpu]\ndefault_time_limit = "2h"\nmax_time_limit = "1d"\n',
        )
    )
    assert cfg.admins == ("alice",) and cfg.default_queue == "gpu"
    assert (
        cfg.queues["gpu"].default_time_limit_s == 7200
        and cfg.queues["gpu"].max_time_limit_s == 86400
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scheduler\n", "not valid TOML"),
        ("[schedular]\n", "unknown section [schedular]"),
        ("[scheduler]\nadmins = 'alice'\n", "admins must be a list"),
        ("[scheduler]\nnode_lease_s = 1\nheartbeat_s = 5\n", "heartbeat_s < node_lease_s"),
        ("[queues.a]\ndefault_time_limit = 'soon'\n", "bad duration 'soon'"),
        ("[scheduler]\ndefault_queue = 'x'\n", "default_queue 'x' is not a configured queue"),
        ("[store]\nsqlite_synchronous = 'maybe'\n", "sqlite_synchronous"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "none.toml")
