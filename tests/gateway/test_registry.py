"""The connector registry: built-ins, third-party entry points, validation."""

from __future__ import annotations

from importlib import metadata

import pytest

from connectors import registry


def test_builtin_connectors_validate():
    assert registry.validate_all() == []
    names = set(registry.parse_channels())
    assert {"api", "email", "wechat", "wecom", "telegram"} <= names


def _fake_entry_points(monkeypatch, value, name="acme"):
    ep = metadata.EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [ep] if group == ep.group else [])
    registry.manifests.cache_clear()


@pytest.fixture(autouse=True)
def _clear_cache():
    registry.manifests.cache_clear()
    yield
    registry.manifests.cache_clear()


ACME = {"channel": "acme", "transport": "webhook", "parser": "connectors.api.parse:parse"}


def test_third_party_connector_is_found_through_entry_points(monkeypatch):
    import tests.gateway.test_registry as me

    me.MANIFEST = ACME
    _fake_entry_points(monkeypatch, "tests.gateway.test_registry:MANIFEST")
    assert "acme" in registry.manifests() and registry.validate_all(["acme"]) == []
    assert registry.parser_for("acme") is registry.parser_for("api")


@pytest.mark.parametrize("manifest,error", [
    ({**ACME, "transport": "carrier-pigeon"}, "transport 'carrier-pigeon'"),
    ({**ACME, "channel": "other"}, "differs from its name 'acme'"),
    ({**ACME, "parsr": "x:y"}, "unknown manifest key(s) parsr"),
    ({**ACME, "parser": "connectors.api.parse:nope"}, "has no attribute 'nope'"),
    ({**ACME, "parser": "no.such.module:parse"}, "cannot import no.such.module"),
    ({**ACME, "connector": "connectors.api.parse:parse"}, "lacks routes, run, send, close"),
    ({**ACME, "channel": "api"}, "reuse a built-in channel name"),
])
def test_bad_third_party_manifests_fail_with_a_specific_error(monkeypatch, manifest, error):
    import tests.gateway.test_registry as me

    me.MANIFEST = manifest
    _fake_entry_points(monkeypatch, "tests.gateway.test_registry:MANIFEST", name=manifest["channel"]
                       if manifest["channel"] == "api" else "acme")
    errors = registry.validate_all()
    assert any(error in e for e in errors), errors


def test_unloadable_entry_point(monkeypatch):
    _fake_entry_points(monkeypatch, "tests.gateway.no_such_module:MANIFEST")
    assert "cannot be loaded" in registry.validate_all()[0]
