"""Configuration: one YAML file, ``OMNIGATE_*`` environment, flags (CONTRACTS.md).

Precedence is flag > environment > YAML > default. Nesting in the
environment uses ``__`` (``OMNIGATE_EMAIL__SMTP__LISTEN``); a variable ending
in ``_FILE`` reads the value from that file (``OMNIGATE_API_TOKEN_FILE``), and
so does a ``<key>_file`` key in the YAML. Secrets must not be written into
the YAML itself: a secret key given there is refused with a message that says
where to put it instead.

A channel's section is a top-level key named after the channel (``email:``,
``wechat:``…); it is handed to that connector as a plain dict, and the
connector validates it strictly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import msgspec

ENV_PREFIX = "OMNIGATE_"
DEFAULT_LISTEN = "127.0.0.1:8686"
DEFAULT_DATA_DIR = "./omnigate-data"
DEFAULT_CONFIG_FILE = "./omnigate.yaml"
#: Keys that hold secrets; they come from the environment or a file only.
SECRET_KEYS = frozenset({"api_token"})


class ConfigError(Exception):
    """The configuration is wrong; the message says which key and why."""


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: Most requests one group commit takes together.
    group_commit_max: int = 512
    #: SQLite ``synchronous``: ``full`` fsyncs the WAL at every commit (durable ack).
    synchronous: str = "full"
    readers: int = 2


class PipelineConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: Concurrent pipeline tasks; their commits share group commits.
    workers: int = 16
    #: A message whose commit keeps conflicting is failed after this many tries.
    max_conflict_retries: int = 20


class DedupeConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: Same contact, same normalized text within this window → a duplicate.
    near_window: str = "5m"


class ThreadingConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: How long after its last activity a ticket still takes a contact's new
    #: message (and a solved one is reopened), per channel; ``default`` for the rest.
    reopen_window: dict[str, str] = msgspec.field(
        default_factory=lambda: {"default": "7d", "webchat": "24h", "phone": "24h", "telegram": "3d", "wechat": "3d"}
    )
    #: Regexes with one group capturing a ticket number, tried on subject then text.
    ref_patterns: list[str] = msgspec.field(
        default_factory=lambda: [r"\[#(\d{1,12})\]", r"工单[号編编]?\s*[:：#]?\s*(\d{1,12})", r"\bticket\s*#\s*(\d{1,12})\b"]
    )
    #: Thread on an explicit reference only when the ticket belongs to the same contact.
    ref_requires_same_contact: bool = True
    #: Thread a message onto an open ticket that came through another channel.
    cross_channel: bool = True
    #: First display number of tickets.
    first_ticket_number: int = 1000


class Config(msgspec.Struct, forbid_unknown_fields=True):
    listen: str = DEFAULT_LISTEN
    data_dir: str = DEFAULT_DATA_DIR
    timezone: str = "Asia/Shanghai"
    default_region: str = "CN"
    api_token: str | None = None
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console
    max_body_bytes: int = 1024 * 1024
    redis_url: str | None = None
    #: The routing tree's folder (``*.yaml``, tests in ``tests/``); hot-reloaded.
    rules_dir: str | None = "./rules"
    directory: str | None = None
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    dedupe: DedupeConfig = msgspec.field(default_factory=DedupeConfig)
    threading: ThreadingConfig = msgspec.field(default_factory=ThreadingConfig)
    #: Channel sections (top-level keys named after a channel), as plain dicts.
    channels: dict[str, dict] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"listen must be HOST:PORT, got {self.listen!r}")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError(f"log_format must be auto, json or console, got {self.log_format!r}")
        if self.store.synchronous not in ("full", "normal", "extra"):
            raise ConfigError(f"store.synchronous must be full, normal or extra, got {self.store.synchronous!r}")
        for name, value in self.threading.reopen_window.items():
            parse_duration(value, f"threading.reopen_window.{name}")
        parse_duration(self.dedupe.near_window, "dedupe.near_window")
        for pattern in self.threading.ref_patterns:
            try:
                if re.compile(pattern).groups != 1:
                    raise ConfigError(f"threading.ref_patterns: {pattern!r} needs exactly one group")
            except re.error as exc:
                raise ConfigError(f"threading.ref_patterns: {pattern!r}: {exc}") from None

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def reopen_window_s(self, channel: str) -> float:
        w = self.threading.reopen_window
        return parse_duration(w.get(channel, w.get("default", "7d")))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float, where: str = "duration") -> float:
    """``"90s"``, ``"5m"``, ``"1h30m"``, ``"7d"`` or a number of seconds → seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip().lower()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if s[pos : m.start()].strip():
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise ConfigError(f"{where}: {text!r} is not a duration like 90s, 5m, 1h30m or 7d")
    return total


def _read_secret_file(path: str, where: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None


def _resolve_files(d: dict, where: str = "") -> dict:
    """``<key>_file: PATH`` → ``<key>: <contents>``, recursively (YAML and env)."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _resolve_files(v, f"{where}{k}.")
        elif isinstance(k, str) and k.endswith("_file") and isinstance(v, str) and k != "log_file":
            out.setdefault(k[: -len("_file")], _read_secret_file(v, f"{where}{k}"))
        else:
            out[k] = v
    return out


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def env_overrides(environ: Mapping[str, str]) -> dict:
    """``OMNIGATE_A__B_C=v`` → ``{"a": {"b_c": "v"}}``; ``…_FILE`` reads the file.
    ``OMNIGATE_TEST_*`` are the test suite's hooks (``OMNIGATE_TEST_CLOCK``,
    ``OMNIGATE_TEST_CRASH_AT``), not configuration."""
    out: dict = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "OMNIGATE_CORPUS" or name.startswith("OMNIGATE_TEST_"):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        if path[-1].endswith("_file") and path[-1] != "log_file":
            path[-1] = path[-1][: -len("_file")]
            value = _read_secret_file(value, name)
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {p} is both a value and a section")
        node[path[-1]] = value
    return out


def _line_of(text: str, key: str) -> int | None:
    m = re.search(rf"(?m)^\s*{re.escape(key)}\s*:", text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def load(
    config_file: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    channel_names: frozenset[str] | None = None,
) -> Config:
    """Build the effective configuration (flag > environment > YAML > default).

    ``config_file`` None means ``./omnigate.yaml`` if it exists; a named file
    must exist. ``channel_names`` are the top-level keys taken as channel
    sections (default: every registered connector).
    """
    environ = os.environ if environ is None else environ
    yaml_data: dict = {}
    path = config_file or environ.get("OMNIGATE_CONFIG")
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        import yaml

        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
        try:
            yaml_data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(yaml_data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        for key in SECRET_KEYS & set(yaml_data):
            line = _line_of(text, key)
            raise ConfigError(
                f"{path}:{line or '?'}: {key} is a secret and must not be in the YAML; "
                f"set {ENV_PREFIX}{key.upper()} or {key}_file (a path) instead"
            )
        yaml_data = _resolve_files(yaml_data)
    env = env_overrides(environ)
    env.pop("config", None)
    merged = _merge(_merge(yaml_data, env), {k: v for k, v in (flags or {}).items() if v is not None})
    if channel_names is None:
        from connectors.registry import manifests

        channel_names = frozenset(manifests())
    merged.setdefault("channels", {})
    for name in list(merged):
        if name in channel_names:
            section = merged.pop(name)
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: a channel section must be a mapping")
            merged["channels"][name] = _merge(merged["channels"].get(name, {}), section)
    try:
        return msgspec.convert(merged, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"configuration: {exc}") from None
    except ConfigError:
        raise
