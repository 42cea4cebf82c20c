"""Where channels are found: the built-in folders and third-party packages.

Built-in connectors are listed by their folder's ``manifest.json``; a
third-party package registers one through the ``omnigate.connectors``
entry-point group, whose object is a manifest dict (or a module with a
``MANIFEST`` dict). Everything is validated at start-up with a specific error
(:class:`RegistryError`), and nothing but the manifest is read until a parser
or a connector is asked for, so ``omnigate parse email`` imports the email
parser and nothing else.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from connectors.base import ParseFn

ENTRY_POINT_GROUP = "omnigate.connectors"
_HERE = Path(__file__).parent
_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")
_TRANSPORTS = {"webhook", "push", "poll", "none"}


class RegistryError(Exception):
    """A connector's manifest or code is wrong; says which and what."""


@dataclass(frozen=True)
class Manifest:
    channel: str
    transport: str
    parser: str  # "module:function"
    connector: str | None = None  # "module:Class"
    options: dict[str, Any] = field(default_factory=dict)
    parse_channels: tuple[str, ...] = ()  # extra `omnigate parse` names served by this parser
    source: str = ""  # where it was found, for error messages

    @property
    def secret_options(self) -> frozenset[str]:
        return frozenset(k for k, v in self.options.items() if isinstance(v, dict) and v.get("secret"))


def _manifest_from(data: Any, source: str, expect_channel: str | None = None) -> Manifest:
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: manifest must be an object, got {type(data).__name__}")
    known = {"channel", "transport", "parser", "connector", "options", "parse_channels", "description"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RegistryError(f"{source}: unknown manifest key(s) {', '.join(unknown)}")
    for key in ("channel", "transport", "parser"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise RegistryError(f"{source}: manifest needs a string {key!r}")
    ch = data["channel"]
    if not _NAME.match(ch):
        raise RegistryError(f"{source}: channel name {ch!r} must match [a-z][a-z0-9_-]*")
    if expect_channel is not None and ch != expect_channel:
        raise RegistryError(f"{source}: manifest channel {ch!r} differs from its name {expect_channel!r}")
    if data["transport"] not in _TRANSPORTS:
        raise RegistryError(f"{source}: transport {data['transport']!r} is not one of {sorted(_TRANSPORTS)}")
    for key in ("parser", "connector"):
        v = data.get(key)
        if v is not None and (not isinstance(v, str) or v.count(":") != 1):
            raise RegistryError(f"{source}: {key} must be 'module:attribute', got {v!r}")
    extra = data.get("parse_channels", [])
    if not isinstance(extra, list) or not all(isinstance(x, str) and _NAME.match(x) for x in extra):
        raise RegistryError(f"{source}: parse_channels must be a list of channel names")
    return Manifest(
        channel=ch,
        transport=data["transport"],
        parser=data["parser"],
        connector=data.get("connector"),
        options=dict(data.get("options") or {}),
        parse_channels=tuple(extra),
        source=source,
    )


@cache
def builtin_manifests() -> dict[str, Manifest]:
    out: dict[str, Manifest] = {}
    for path in sorted(_HERE.glob("*/manifest.json")):
        folder = path.parent.name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RegistryError(f"{path}: not valid JSON: {exc}") from None
        out[folder] = _manifest_from(data, str(path), expect_channel=folder)
    return out


def _entry_point_manifests() -> dict[str, Manifest]:
    out: dict[str, Manifest] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {ep.name} = {ep.value}"
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party package must not hide the others' errors
            raise RegistryError(f"{source}: cannot be loaded: {type(exc).__name__}: {exc}") from None
        data = getattr(obj, "MANIFEST", obj)
        m = _manifest_from(data, source, expect_channel=ep.name)
        out[m.channel] = m
    return out


@cache
def manifests() -> dict[str, Manifest]:
    """Every known connector by channel; built-ins win over a same-named plug-in."""
    found = builtin_manifests()
    extra = _entry_point_manifests()
    clash = sorted(set(found) & set(extra))
    if clash:
        raise RegistryError(f"third-party connector(s) {', '.join(clash)} reuse a built-in channel name")
    return {**found, **extra}


def parse_channels() -> dict[str, Manifest]:
    """`omnigate parse` names → the manifest whose parser serves them.

    A parser that serves several names (``phone`` serving ``asterisk`` and
    ``freeswitch``) finds the name it was called under in ``context["channel"]``.
    """
    out: dict[str, Manifest] = {}
    for m in manifests().values():
        out[m.channel] = m
        for extra in m.parse_channels:
            out.setdefault(extra, m)
    return out


def _load(ref: str, source: str) -> Any:
    mod_name, _, attr = ref.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise RegistryError(f"{source}: cannot import {mod_name}: {exc}") from None
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise RegistryError(f"{source}: {mod_name} has no attribute {attr!r}") from None


#: channel → its parser, for the manifests it was found in (:func:`parser_for`).
_parsers: dict[str, tuple[dict[str, Manifest], ParseFn]] = {}


def parser_for(channel: str) -> ParseFn:
    """The pure parser of a channel (imports only that channel's parse module).

    Called once per journal entry, so the answer is kept per channel for as
    long as :func:`manifests` returns the same registry (clearing its cache,
    as the tests do, finds the parsers again)."""
    found = manifests()
    kept = _parsers.get(channel)
    if kept is not None and kept[0] is found:
        return kept[1]
    fn = _find_parser(channel)
    _parsers[channel] = (found, fn)
    return fn


def _find_parser(channel: str) -> ParseFn:
    m = parse_channels().get(channel)
    if m is None:
        raise RegistryError(f"unknown channel {channel!r}; known: {', '.join(sorted(parse_channels()))}")
    ref = m.parser
    fn = _load(ref, m.source)
    if not callable(fn):
        raise RegistryError(f"{m.source}: parser {ref} is not callable")
    return fn


def connector_class(channel: str) -> type | None:
    m = manifests().get(channel)
    if m is None:
        raise RegistryError(f"unknown channel {channel!r}")
    if m.connector is None:
        return None
    cls = _load(m.connector, m.source)
    missing = [name for name in ("routes", "run", "send", "close") if not callable(getattr(cls, name, None))]
    if missing:
        raise RegistryError(f"{m.source}: connector {m.connector} lacks {', '.join(missing)}")
    return cls


def validate_all(channels: list[str] | None = None) -> list[str]:
    """Load every (or the named) connector's parser and class; return the
    errors, one specific line each. Used at start-up and in the tests."""
    errors: list[str] = []
    try:
        ms = manifests()
    except RegistryError as exc:
        return [str(exc)]
    for ch in channels or sorted(ms):
        if ch not in ms:
            errors.append(f"unknown channel {ch!r}")
            continue
        try:
            parser_for(ch)
            connector_class(ch)
        except RegistryError as exc:
            errors.append(str(exc))
    return errors
