"""Daemon configuration: /etc/hostwarden/hostwarden.toml. Every key optional; unknown keys are errors."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostwarden.bpf.monitor import RUN_TIME_STATS_MODES
from hostwarden.bpf.programs import RssSource
from hostwarden.endpoints import DEFAULT_SOCKET

DEFAULT_CONFIG_PATH = Path("/etc/hostwarden/hostwarden.toml")
RSS_SOURCES = tuple(source.value for source in RssSource)
DEFAULT_METRICS_PORT = 9477


class ConfigError(ValueError):
    """A bad configuration; the message names the key."""


@dataclass(frozen=True)
class DaemonConfig:
    socket: str = DEFAULT_SOCKET
    socket_group: str = "hostwarden"
    call_socket: bool = True  # the tool-call socket beside `socket` (hostwarden.call_socket)
    state_dir: Path = Path("/var/lib/hostwarden")
    cgroup_root: str | None = None  # None: the systemd-delegated subtree, else <cgroup2 mount>/hostwarden
    policy: Path = Path("/etc/hostwarden/policy.toml")
    event_queue_size: int = 1024
    retention_days: float = 30.0
    tcp_address: str | None = None  # optional "host:port", only with mTLS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None


@dataclass(frozen=True)
class MetricsConfig:
    address: str = f"127.0.0.1:{DEFAULT_METRICS_PORT}"  # port 0: pick one and log it; "" disables


@dataclass(frozen=True)
class BpfConfig:
    enabled: bool = True
    # When the kernel counts the programs' run time (their cost metrics): see RUN_TIME_STATS_MODES.
    run_time_stats: str = "sampled"
    # How processes' RSS is counted where there is no memory.peak (RssSource: docs/bpf.md).
    rss: str = RssSource.SAMPLED.value


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    bpf: BpfConfig = field(default_factory=BpfConfig)
    # Validated by the parts that own them (hostwarden.power, hostwarden.attest).
    power: dict[str, Any] = field(default_factory=dict)
    attest: dict[str, Any] = field(default_factory=dict)
    source: str = "built-in defaults"


_PATH_KEYS = {"state_dir", "policy", "tls_cert", "tls_key", "tls_client_ca"}


def _section(cls: type, name: str, table: object) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    defaults = cls()
    values: dict[str, Any] = {}
    for key, value in table.items():
        if not hasattr(defaults, key):
            known = ", ".join(sorted(defaults.__dataclass_fields__))
            raise ConfigError(f"{name}.{key}: unknown key (known: {known})")
        default = getattr(defaults, key)
        if key in _PATH_KEYS:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{name}.{key}: expected a non-empty path string, got {value!r}")
            value = Path(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}.{key}: expected true or false, got {value!r}")
        elif isinstance(default, int | float):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name}.{key}: expected a non-negative number, got {value!r}")
            value = type(default)(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{name}.{key}: expected a string, got {value!r}")
        values[key] = value
    return cls(**values)


def parse_config(text: str, source: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name == "daemon":
            sections[name] = _section(DaemonConfig, name, table)
        elif name == "metrics":
            sections[name] = _section(MetricsConfig, name, table)
        elif name == "bpf":
            sections[name] = _section(BpfConfig, name, table)
        elif name in ("power", "attest"):
            if not isinstance(table, dict):
                raise ConfigError(f"[{name}] must be a table")
            sections[name] = table
        else:
            raise ConfigError(f"{name}: unknown section (known: daemon, metrics, bpf, power, attest)")
    config = Config(source=source, **sections)
    if config.bpf.run_time_stats not in RUN_TIME_STATS_MODES:
        raise ConfigError(f"bpf.run_time_stats: expected one of {', '.join(RUN_TIME_STATS_MODES)}, "
                          f"got {config.bpf.run_time_stats!r}")
    if config.bpf.rss not in RSS_SOURCES:
        raise ConfigError(f"bpf.rss: expected one of {', '.join(RSS_SOURCES)}, got {config.bpf.rss!r}")
    if config.daemon.event_queue_size < 1:
        raise ConfigError("daemon.event_queue_size: must be at least 1")
    if config.daemon.tcp_address and not (config.daemon.tls_cert and config.daemon.tls_key
                                          and config.daemon.tls_client_ca):
        raise ConfigError("daemon.tcp_address: TCP is served only with mTLS: set tls_cert, tls_key and "
                          "tls_client_ca too")
    return config


def load_config(path: Path | None) -> Config:
    """The file's config; with no path, the default file if it exists, else built-in defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    return parse_config(text, str(path))
