"""gshare.toml: the scheduler's configuration, validated at load (README: Configuration).

One public namespace over private modules: the settings and their defaults (`_model`),
the readers of typed values (`_fields`), the TLS, client, Slurm and MQTT sections
(`_sections`), the [fairshare] section (`_fairshare`), and the whole file (`_parse`).
"""

from __future__ import annotations

from gshare.clientconfig import ClientConfig, client_config
from gshare.config._fairshare import MAX_QUOTA_GPUS, MAX_RECLAIM_AFTER_S, MAX_TYPE_CHARS
from gshare.config._fields import MAX_PIDS, check_cgroup_root
from gshare.config._model import (
    AccountConfig,
    Config,
    ConfigError,
    MqttConfig,
    QueueConfig,
    Quota,
    SlurmConfig,
    TlsConfig,
    UserLimitsConfig,
)
from gshare.config._parse import load_config, parse_config
from gshare.config._sections import SLURM_MODES, parse_mqtt_url, with_mqtt_url
from gshare.paths import SYSTEM_CONFIG, SYSTEM_SOCKET, default_state_dir

__all__ = [
    "MAX_PIDS",
    "MAX_QUOTA_GPUS",
    "MAX_RECLAIM_AFTER_S",
    "MAX_TYPE_CHARS",
    "SLURM_MODES",
    "SYSTEM_CONFIG",
    "SYSTEM_SOCKET",
    "AccountConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "MqttConfig",
    "QueueConfig",
    "Quota",
    "SlurmConfig",
    "TlsConfig",
    "UserLimitsConfig",
    "check_cgroup_root",
    "client_config",
    "default_state_dir",
    "load_config",
    "parse_config",
    "parse_mqtt_url",
    "with_mqtt_url",
]
