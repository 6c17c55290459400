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
        ("[queues.a]\ndefault_mem = 'lots'\n", "[queues.a]: default_mem: bad memory size"),
        ("[queues.a]\ndefault_mem = -1\n", "default_mem: bad memory size '-1'"),
        ("[queues.a]\ndefault_mem = 1.5\n", "default_mem must be a size"),
        ("[queues.a]\ndefault_mem = '99999999999T'\n", "default_mem: 99999999999T is more"),
        ("[server]\nmunge_root = 'yes'\n", "[server]: munge_root must be a bool"),
        ("[agent]\nconfine = 'maybe'\n", "[agent]: confine must be auto or off"),
        ("[agent]\npids_max = -1\n", "[agent]: pids_max must be between 0 and"),
        ("[agent]\npids_max = nan\n", "pids_max must be a int"),
        ("[agent]\ncgroup_root = '../escape'\n", "cgroup_root: '../escape': '..' is not"),
        ("[agent]\ncgroup_root = ''\n", "cgroup_root: '' must be a path"),
        ('[agent]\ncgroup_root = "a\\u0000b"\n', "b' is not a plain name"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_confinement_settings(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            '[agent]\nconfine = "off"\ncgroup_root = "/gshare/jobs"\npids_max = 512\n'
            '[queues.gpu]\ndefault_mem = "32G"\n[queues.small]\ndefault_mem = 2048\n',
        )
    )
    assert (cfg.agent_confine, cfg.agent_cgroup_root, cfg.agent_pids_max) == (
        "off",
        "/gshare/jobs",
        512,
    )
    assert cfg.queues["gpu"].default_mem_mb == 32 * 1024
    assert cfg.queues["small"].default_mem_mb == 2048  # a number: MB, as gsub --mem 2048
    defaults = load_config(write(tmp_path, "[queues.gpu]\n"))
    assert defaults.agent_confine == "auto" and defaults.queues["gpu"].default_mem_mb == 0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "none.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\ntcp = "nowhere"\n', "[server] tcp: expected HOST:PORT"),
        ('[server]\nagent_tcp = "0.0.0.0:7711"\n', "agent_tcp needs [server.tls]"),
        ('[server]\nsockets = "x"\n', "unknown key 'sockets'"),
        ('[server.tls]\ncert_file = "CERT"\n', "cert_file and key_file go together"),
        ('[server.tls]\ncert_file = "/no/such.pem"\n', "cert_file '/no/such.pem'"),
        ('[server.tls]\nca_file = "CERT"\n', "ca_file needs cert_file"),
        ('[agent]\ncert_file = "CERT"\nkey_file = "CERT"\n', "cert_file needs ca_file"),
        ('[agent]\nca_file = "a\\u0000b"\n', "[agent]: ca_file"),
        ('[client]\nscheduler = "x"\n', "[client]: scheduler: expected HOST:PORT"),
        ("[client]\nca_file = 1\n", "[client]: ca_file must be a str"),
    ],
)
def test_remote_settings_are_checked_at_load(tmp_path: Path, text: str, message: str) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text.replace("CERT", str(cert))))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_remote_settings_load(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    cfg = load_config(
        write(
            tmp_path,
            f'[server]\ntcp = "0.0.0.0:7710"\nagent_tcp = "0.0.0.0:7711"\n'
            f'munge_socket = "/run/munge/munge.socket.2"\n'
            f'[server.tls]\ncert_file = "{pem}"\nkey_file = "{pem}"\nca_file = "{pem}"\n'
            f'[client]\nscheduler = "sched:7710"\nca_file = "{pem}"\n',
        )
    )
    assert cfg.tls.enabled and cfg.agent_tcp == "0.0.0.0:7711"
    assert cfg.munge_socket == "/run/munge/munge.socket.2"
    assert cfg.client.scheduler == "sched:7710" and cfg.client.ca_file == str(pem)
