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

import difflib
import functools
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
#: (Channel secrets are those their connector's manifest marks ``"secret": true``.)
SECRET_KEYS = frozenset({"api_token"})
#: Keys ending in ``_file`` that are options themselves (a path), not ``<key>_file`` references.
PATH_KEYS = frozenset({"log_file", "ca_file"})
#: Keys that are known but whose feature has not landed: refused, not ignored.
NOT_AVAILABLE: dict[str, str] = {}


class ConfigError(Exception):
    """The configuration is wrong; the message says which key and why."""


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: Most requests one group commit takes together.
    group_commit_max: int = 512
    #: SQLite ``synchronous``: ``full`` fsyncs the WAL at every commit (durable ack).
    synchronous: str = "full"
    readers: int = 2
    #: With ``redis_url``: the prefix of every key (several deployments may share one Redis).
    redis_prefix: str = "og:"
    #: With ``redis_url``: a journal entry another instance claimed and left
    #: idle this long (it died) is taken over (XAUTOCLAIM).
    redis_claim_idle_s: float = 60.0
    #: With ``redis_url``: a journal append is acknowledged only once this many
    #: replicas have it (Redis ``WAIT``; 0: the primary's AOF alone).
    redis_wait_replicas: int = 0
    #: With ``redis_url``: attachments up to this size live in Redis, bigger ones in ``attachments_dir``.
    redis_attachment_max_bytes: int = 1024 * 1024
    #: With ``redis_url``: a folder every instance mounts (NFS, a ReadWriteMany volume) for the
    #: attachments above ``redis_attachment_max_bytes``; unset: every attachment goes to Redis.
    attachments_dir: str | None = None
    #: With ``redis_url``: the lease of work with one owner across instances (an
    #: IMAP mailbox, a polling bot, a tailed file); a dead
    #: owner's work is taken over after at most this long.
    redis_lease_s: float = 15.0


class PipelineConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: Concurrent pipeline tasks; their commits share group commits (the
    #: more in flight, the larger a group and the less CPU per message:
    #: see ARCHITECTURE.md "Performance").
    workers: int = 64
    #: A message whose commit keeps conflicting is failed after this many tries.
    max_conflict_retries: int = 20
    #: While the pipeline is starved (a backlog and a busy event loop), intakes
    #: admitted per entry it settles (gateway/admission.py); 0: no gate.
    admission_ratio: float = 2.0
    #: The longest an intake waits at the gate before it goes through anyway (never refused).
    admission_max_delay_s: float = 0.5
    #: While the pipeline is starved, the API channel (503 + ``Retry-After``) and
    #: SMTP (451 4.3.2) refuse an intake that would wait at the gate, instead of
    #: delaying it; other channels are only ever delayed (gateway/admission.py).
    admission_shed: bool = True
    #: While the pipeline is starved, intakes (on any channel) per entry it
    #: settles past which the API channel and SMTP are refused (the others
    #: are admitted up to ``admission_ratio``, then delayed).
    admission_shed_ratio: float = 1.0
    #: Pending journal entries at which SMTP answers 451 4.3.2 and the API
    #: channel 503 + ``Retry-After`` (0: no limit; other channels never refuse).
    backlog_limit: int = 0
    #: ``Retry-After`` (seconds) of the API channel's 503 at the backlog limit or when shed.
    backlog_retry_after_s: int = 30

    def __post_init__(self) -> None:
        if self.admission_ratio < 0:
            raise ConfigError(f"pipeline.admission_ratio must be 0 (off) or more, got {self.admission_ratio}")
        if self.admission_shed_ratio <= 0:
            raise ConfigError(f"pipeline.admission_shed_ratio must be above 0, got {self.admission_shed_ratio}")
        if not 0 < self.admission_max_delay_s <= 2:
            # WeChat waits 5 s for an answer, three tries: a delay must stay far below that
            raise ConfigError("pipeline.admission_max_delay_s must be above 0 and at most 2 (seconds), "
                              f"got {self.admission_max_delay_s}")
        if self.backlog_limit < 0:
            raise ConfigError(f"pipeline.backlog_limit must be 0 (off) or more, got {self.backlog_limit}")
        if not 1 <= self.backlog_retry_after_s <= 3600:
            raise ConfigError("pipeline.backlog_retry_after_s must be 1 to 3600 (seconds), "
                              f"got {self.backlog_retry_after_s}")


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


class RestConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The REST API under ``/api/v1`` (``rest:`` in the YAML; ``api:`` is the API channel)."""

    #: Requests per minute each token may make (a token bucket; 0: no limit).
    rate_limit_per_minute: int = 6000
    #: Requests a token may make at once above the steady rate.
    rate_limit_burst: int = 1000
    #: Contact attributes agents (role ``agent``) do not see: omitted from every answer.
    sensitive_attributes: list[str] = msgspec.field(
        default_factory=lambda: ["id_number", "passport", "address", "birthday", "bank_account"])
    #: Seconds a token (and its agent's teams) stays in the in-process cache; a
    #: revocation through the API (``omnigate tokens revoke`` uses it while a
    #: daemon runs) clears it at once.
    token_cache_s: float = 10.0


class ConsoleConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The agent console at ``/console`` (``console:`` in the YAML; gateway/console/)."""

    #: Seconds without a heartbeat from any open console page before an online agent goes away.
    presence_grace_s: float = 120.0
    #: Hours a console sign-in lasts (the session also ends when its token is revoked or expires).
    session_hours: float = 12.0
    #: A YAML file of canned replies loaded at start (``- {name, text, language?}``); existing names are kept.
    canned_replies_yaml: str | None = None
    #: The agents' time zone for dates on the console (an IANA name); default: ``timezone``.
    timezone: str | None = None
    #: Minutes before an SLA breach at which the countdown turns amber at the latest (the policy's own warning turns it amber when it fires).
    sla_warning_minutes: int = 15


class WebhookEndpointConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``webhooks.endpoints.<name>`` (CONTRACTS.md "Webhooks (outbound)")."""

    url: str
    #: ``whsec_…``; two lines during a rotation (both sign). From ``secret_file`` or the environment only.
    secret: str | None = None
    #: Event types or prefixes (``ticket.``); empty: all.
    events: list[str] = msgspec.field(default_factory=list)
    allow_private: bool = False
    enabled: bool = True
    description: str | None = None


class WebhooksConfig(msgspec.Struct, forbid_unknown_fields=True):
    endpoints: dict[str, WebhookEndpointConfig] = msgspec.field(default_factory=dict)
    #: Deliveries in flight at once, across endpoints (0: this node sends none; events wait in the queue).
    workers: int = 16
    #: Back-off: the first retry comes within this (jittered), then doubles up to ``max_delay``.
    first_retry: str = "5s"
    max_delay: str = "1h"
    #: How long an event is retried before it goes to the dead letters.
    retry_horizon: str = "24h"
    timeout: str = "15s"
    #: Consecutive failures that open an endpoint's circuit breaker (then one probe at a time).
    breaker_threshold: int = 20
    #: Attempts kept in each endpoint's delivery log (and no older than ``retention.delivery_log``).
    delivery_log_max: int = 1000


class DeskConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``desks.<name>`` (CONTRACTS.md "Help-desk sync"; gateway/desks/)."""

    kind: str  # zammad | zendesk | freshdesk | generic
    url: str
    #: API token (Zammad access token, Zendesk API token, Freshdesk API key); from ``token_file`` or the env.
    token: str | None = None
    #: Zendesk: the agent e-mail the API token belongs to (``email/token:TOKEN``).
    email: str | None = None
    #: The way back: Zammad's webhook HMAC secret, Zendesk's webhook signing secret, Freshdesk's header token.
    webhook_secret: str | None = None
    #: ``push`` (the desk's webhook nudges ``/channels/desks/<name>``) or ``poll`` (every ``poll_interval``).
    mode: str = "push"
    poll_interval: str = "60s"
    #: ``omnigate`` (omnigate's rules, assignment and SLA decide; the desk is told) or ``desk``.
    ownership: str = "omnigate"
    allow_private: bool = False
    timeout: str = "15s"
    #: Zammad: the group new tickets go to; Freshdesk: ``group_id``; Zendesk: ``group_id``.
    group: str | None = None
    #: Requesters with neither e-mail nor phone get ``<kind>-<id>@<placeholder_domain>``.
    placeholder_domain: str = "omnigate.invalid"
    #: generic: a JSON document per event type with ``{ticket.number}``-style placeholders.
    templates: dict[str, Any] = msgspec.field(default_factory=dict)


class RetentionConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Pruning (hourly). A duration, or ``null``/``0`` for never."""

    #: Delivered outbox rows (sent replies, events every endpoint has taken).
    outbox: str | None = "7d"
    #: Rows of ``webhook_log``.
    delivery_log: str | None = "7d"
    #: Raw payloads of *processed* journal entries (the row and its idempotency key stay; failed entries are kept).
    journal_raw: str | None = "90d"


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
    #: Addresses or networks (``10.0.0.0/8``) whose ``X-Forwarded-For``/``Forwarded``
    #: headers are believed for the client's IP; anyone else's are ignored.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    #: The address the outside world uses for this gateway (``https://support.example.com``,
    #: CONTRACTS.md): the base of signed URLs (Twilio's X-Twilio-Signature) for every
    #: section that does not set its own ``public_url``.
    public_url: str | None = None
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    dedupe: DedupeConfig = msgspec.field(default_factory=DedupeConfig)
    threading: ThreadingConfig = msgspec.field(default_factory=ThreadingConfig)
    rest: RestConfig = msgspec.field(default_factory=RestConfig)
    webhooks: WebhooksConfig = msgspec.field(default_factory=WebhooksConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    desks: dict[str, DeskConfig] = msgspec.field(default_factory=dict)
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
    #: Channel sections (top-level keys named after a channel), as plain dicts.
    channels: dict[str, dict] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"listen must be HOST:PORT, got {self.listen!r}")
        if self.public_url is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", self.public_url):
            raise ConfigError(f"public_url must be an http(s) URL such as https://support.example.com, "
                              f"got {self.public_url!r}")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError(f"log_format must be auto, json or console, got {self.log_format!r}")
        if self.redis_url is not None:
            if not self.redis_url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
                raise ConfigError("redis_url must be redis://, rediss://, unix:// or redis+sentinel://, "
                                  f"got {self.redis_url[:40]!r}")
            if self.redis_url.startswith("redis+sentinel://"):
                from gateway.store.redis_conn import parse_sentinel_url

                try:
                    parse_sentinel_url(self.redis_url)
                except ValueError as exc:
                    raise ConfigError(f"redis_url: {exc} (redis+sentinel://host:port,host:port/service)") from None
        if self.store.attachments_dir is not None and self.redis_url is None:
            raise ConfigError("store.attachments_dir is the shared folder of a redis_url deployment; on SQLite "
                              "attachments live in data_dir/attachments (remove store.attachments_dir)")
        if self.store.redis_attachment_max_bytes < 0:
            raise ConfigError("store.redis_attachment_max_bytes must be 0 or more")
        if self.store.synchronous not in ("full", "normal", "extra"):
            raise ConfigError(f"store.synchronous must be full, normal or extra, got {self.store.synchronous!r}")
        for name, value in self.threading.reopen_window.items():
            parse_duration(value, f"threading.reopen_window.{name}")
        parse_duration(self.dedupe.near_window, "dedupe.near_window")
        import ipaddress

        for p in self.trusted_proxies:
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise ConfigError(f"trusted_proxies: {p!r} is not an address or network") from None
        for key in ("first_retry", "max_delay", "retry_horizon", "timeout"):
            parse_duration(getattr(self.webhooks, key), f"webhooks.{key}")
        for key in ("outbox", "delivery_log", "journal_raw"):
            if getattr(self.retention, key):
                parse_duration(getattr(self.retention, key), f"retention.{key}")
        for name, ep in self.webhooks.endpoints.items():
            if not ep.url.startswith(("http://", "https://")):
                raise ConfigError(f"webhooks.endpoints.{name}.url must be an http(s) URL, got {ep.url!r}")
            env = _env_name(("webhooks", "endpoints", name, "secret"))
            if not ep.secret:
                raise ConfigError(f"webhooks.endpoints.{name} lacks its secret (whsec_…): put the path of a file "
                                  f"holding it in webhooks.endpoints.{name}.secret_file, or set {env}")
            from standardwebhooks.webhooks import Webhook

            for line in ep.secret.splitlines():
                try:
                    if line.strip():
                        Webhook(line.strip())
                except Exception:  # noqa: BLE001 - binascii errors and the library's own
                    raise ConfigError(f"webhooks.endpoints.{name}: the secret is not whsec_ + base64 "
                                      "(one per line; two during a rotation)") from None
        for name, desk in self.desks.items():
            where = f"desks.{name}"
            if desk.kind not in ("zammad", "zendesk", "freshdesk", "generic"):
                raise ConfigError(f"{where}.kind must be zammad, zendesk, freshdesk or generic, got {desk.kind!r}")
            if not desk.url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.url must be an http(s) URL, got {desk.url!r}")
            if desk.mode not in ("push", "poll"):
                raise ConfigError(f"{where}.mode must be push or poll, got {desk.mode!r}")
            if desk.ownership not in ("omnigate", "desk"):
                raise ConfigError(f"{where}.ownership must be omnigate or desk, got {desk.ownership!r}")
            parse_duration(desk.poll_interval, f"{where}.poll_interval")
            parse_duration(desk.timeout, f"{where}.timeout")
            if desk.kind != "generic" and not desk.token:
                raise ConfigError(f"{where} lacks its API token: set {where}.token_file (or "
                                  f"{_env_name(('desks', name, 'token'))})")
            if desk.kind == "zendesk" and not desk.email:
                raise ConfigError(f"{where}.email is required for Zendesk (the token's agent)")
            if desk.kind != "generic" and desk.mode == "push" and not desk.webhook_secret:
                raise ConfigError(f"{where}: mode push needs webhook_secret_file (the way back is verified)")
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
    if isinstance(text, str):
        return _parse_duration(text, where)
    return _parse_duration.__wrapped__(text, where)  # not hashable: refused below, as before


@functools.lru_cache(maxsize=256)  # the pipeline asks for the reopen window on every message
def _parse_duration(text: str, where: str) -> float:
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
        elif isinstance(k, str) and k.endswith("_file") and isinstance(v, str) and k not in PATH_KEYS:
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
        if path[-1].endswith("_file") and path[-1] not in PATH_KEYS:
            path[-1] = path[-1][: -len("_file")]
            value = _read_secret_file(value, name)
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {p} is both a value and a section")
        node[path[-1]] = value
    return out


class _Node:
    """A YAML mapping key with where it was written (1-based line)."""

    __slots__ = ("path", "line", "children")

    def __init__(self, path: tuple[str, ...], line: int) -> None:
        self.path, self.line = path, line
        self.children: dict[str, _Node] = {}


def _key_tree(text: str) -> _Node:
    """Every mapping key of the document with its line (PyYAML's node marks)."""
    import yaml

    root = _Node((), 1)
    try:
        doc = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return root

    def walk(node: Any, into: _Node, depth: int) -> None:
        if depth > 64 or not isinstance(node, yaml.MappingNode):
            return
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue
            child = _Node((*into.path, str(k.value)), k.start_mark.line + 1)
            into.children[str(k.value)] = child
            walk(v, child, depth + 1)

    walk(doc, root, 0)
    return root


def _seg_match(pattern: str, key: str) -> bool:
    return pattern in ("*", key) or (pattern.startswith("<") and pattern.endswith(">"))


def _is_secret(path: tuple[str, ...], patterns: list[tuple[str, ...]]) -> bool:
    """A manifest option ``accounts.*.token`` (or ``token``: any depth) matches a
    key path when it matches the path's tail, segment by segment."""
    for pat in patterns:
        if len(pat) <= len(path) and all(_seg_match(p, k) for p, k in zip(pat, path[-len(pat):])):
            return True
    return False


def _env_name(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(re.sub(r"[^A-Za-z0-9_]", "_", p).upper() for p in path)


def _refuse_secret(file: str, node: _Node) -> ConfigError:
    *parents, key = node.path
    dotted = ".".join(node.path)
    account = f" (account {parents[-1]!r})" if len(parents) >= 2 else ""
    file_key = ".".join((*parents, f"{key}_file"))
    return ConfigError(
        f"{file}:{node.line}: {dotted}{account} is a secret and must not be in the YAML; "
        f"set {_env_name(node.path)} (or {_env_name(node.path)}_FILE) in the environment, "
        f"or put the path of a file holding it in {file_key}"
    )


def _unknown_key(file: str, node: _Node, valid: set[str], section: str) -> ConfigError:
    key = node.path[-1]
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"{file}:{node.line}: unknown key {'.'.join(node.path)!r} in {section}{hint}")


def _struct_keys(kind: type[msgspec.Struct]) -> set[str]:
    return set(kind.__struct_fields__)


def _option_tree(options: Mapping[str, Any]) -> dict:
    """Manifest option names (``smtp.listen``, ``imap.<account>.host``) → a key tree."""
    tree: dict = {}
    for name in options:
        node = tree
        for seg in name.split("."):
            seg = "*" if seg.startswith("<") and seg.endswith(">") else seg
            node = node.setdefault(seg, {})
    return tree


def _check_keys(file: str, node: _Node, valid: dict, section: str) -> None:
    """Unknown keys under ``node`` against ``valid`` (a key tree; ``*`` a
    wildcard level; an empty subtree is not checked further)."""
    if not valid:
        return
    wildcard = valid.get("*")
    for key, child in node.children.items():
        base = key[: -len("_file")] if key.endswith("_file") else key
        if key in valid or base in valid:
            _check_keys(file, child, valid.get(key, valid.get(base, {})), section)
        elif wildcard is not None:
            _check_keys(file, child, wildcard, section)
        else:
            raise _unknown_key(file, child, {k for k in valid if k != "*"}, section)


def _check_required_secrets(channels: Mapping[str, Any], channel_names: frozenset[str],
                            file: str | None, tree: _Node | None) -> None:
    """A secret the manifest marks ``"required": true`` and an account lacks:
    name the account and where to put it (the ``*_file`` key, the variable)."""
    from connectors.registry import manifests

    for channel, manifest in manifests().items():
        section = channels.get(channel)
        if channel not in channel_names or not isinstance(section, dict):
            continue
        for name, spec in manifest.options.items():
            if not (isinstance(spec, dict) and spec.get("secret") and spec.get("required")):
                continue
            *parents, key = ("*" if p.startswith("<") else p for p in name.split("."))
            level: list[tuple[tuple[str, ...], Any]] = [((channel,), section)]
            for seg in parents:
                level = [((*path, k), v) for path, node in level if isinstance(node, dict)
                         for k, v in node.items() if seg in ("*", k) and isinstance(v, dict)]
            for path, node in level:
                if key in node:
                    continue
                where = tree
                for p in path:
                    where = where.children.get(p) if where is not None else None
                at = f"{file}:{where.line}: " if file and where is not None else ""
                account = f" (account {path[-1]!r})" if len(path) >= 3 else ""
                raise ConfigError(
                    f"{at}{'.'.join(path)}{account} lacks its {key}, a secret: put the path of a file holding it "
                    f"in {'.'.join((*path, key))}_file, or set {_env_name((*path, key))} "
                    f"(or {_env_name((*path, key))}_FILE)"
                )


def _check_yaml(file: str, text: str, channel_names: frozenset[str]) -> _Node:
    """Secrets, unknown keys and features not available yet, each with ``file:line``."""
    tree = _key_tree(text)
    from connectors.registry import manifests

    known = {k: v for k, v in manifests().items() if k in channel_names}
    for key, node in tree.children.items():
        if key in SECRET_KEYS:
            raise _refuse_secret(file, node)
        if key in NOT_AVAILABLE:
            raise ConfigError(f"{file}:{node.line}: {NOT_AVAILABLE[key]}")
    # channel secrets, at any depth of the channel's section (the manifest is the one source)
    for channel, manifest in known.items():
        section = tree.children.get(channel)
        if section is None:
            continue
        patterns = [tuple(n.split(".")) for n in manifest.secret_options]
        stack = list(section.children.values())
        while stack:
            node = stack.pop()
            if _is_secret(node.path[1:], patterns):
                raise _refuse_secret(file, node)
            stack.extend(node.children.values())
    # typos: top level, the nested sections, and each channel section's keys
    top = _struct_keys(Config) - {"channels"} | set(channel_names)
    nested = {"store": StoreConfig, "pipeline": PipelineConfig, "dedupe": DedupeConfig, "threading": ThreadingConfig,
              "rest": RestConfig, "retention": RetentionConfig, "console": ConsoleConfig}
    for key, node in tree.children.items():
        base = key[: -len("_file")] if key.endswith("_file") else key
        if key not in top and base not in top:
            raise _unknown_key(file, node, top, "the configuration")
        if key in nested:
            _check_keys(file, node, {k: {} for k in _struct_keys(nested[key])}, key)
        elif key == "webhooks":  # the endpoints' secrets come from secret_file or the environment
            for ep in (node.children.get("endpoints") or _Node((), 0)).children.values():
                if "secret" in ep.children:
                    raise _refuse_secret(file, ep.children["secret"])
            _check_keys(file, node, {**{k: {} for k in _struct_keys(WebhooksConfig)}, "endpoints": {
                "*": {k: {} for k in _struct_keys(WebhookEndpointConfig)}}}, key)
        elif key in known and known[key].options:
            _check_keys(file, node, _option_tree(known[key].options), f"the {key} section (see its manifest)")
    return tree


def _default_smtp_listen(merged: dict) -> None:
    """An SMTP listener without ``listen`` binds the host HTTP binds, port
    2525: ``0.0.0.0`` in the container (``OMNIGATE_LISTEN=0.0.0.0:8686``),
    loopback by default."""
    smtp = merged["channels"].get("email", {}).get("smtp") if isinstance(merged["channels"].get("email"), dict) else None
    if isinstance(smtp, dict) and "listen" not in smtp:
        host = str(merged.get("listen") or DEFAULT_LISTEN).rpartition(":")[0]
        smtp["listen"] = f"{host}:2525"


def config_path(config_file: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The YAML file ``serve`` reads: ``--config``, else ``OMNIGATE_CONFIG``,
    else ``./omnigate.yaml`` when it exists; None for none."""
    environ = os.environ if environ is None else environ
    path = config_file or environ.get("OMNIGATE_CONFIG")
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    return path


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
    tree: _Node | None = None
    path = config_path(config_file, environ)
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
        if channel_names is None:
            from connectors.registry import manifests

            channel_names = frozenset(manifests())
        tree = _check_yaml(str(path), text, channel_names)
        yaml_data = _resolve_files(yaml_data)
    env = env_overrides(environ)
    env.pop("config", None)
    merged = _merge(_merge(yaml_data, env), {k: v for k, v in (flags or {}).items() if v is not None})
    for key, why in NOT_AVAILABLE.items():
        if merged.get(key):
            raise ConfigError(f"{key}: {why}")
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
    if isinstance(merged.get("trusted_proxies"), str):  # OMNIGATE_TRUSTED_PROXIES=10.0.0.1,10.0.0.0/8
        merged["trusted_proxies"] = [p.strip() for p in merged["trusted_proxies"].split(",") if p.strip()]
    _default_smtp_listen(merged)
    _check_required_secrets(merged["channels"], channel_names, str(path) if path else None, tree)
    try:
        return msgspec.convert(merged, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"configuration: {exc}") from None
    except ConfigError:
        raise
