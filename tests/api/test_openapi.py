"""The OpenAPI document: generated from the types, complete, and true.

- every ``/api/v1`` route the app serves is in the document, and every
  documented operation is served (a new endpoint without a table row fails);
- schemathesis, against a real app on a loopback port serving that
  document: a bounded number of generated requests per operation, 0 server
  errors, every response matching its documented status, content type and
  schema.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import msgspec
import pytest
import schemathesis
from schemathesis import GenerationMode
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.openapi import documented_routes, document
from tests.api.conftest import api_config
from tests.gateway.conftest import AUTH, RULES, make_config


def _served(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and path.startswith("/api/v1/") and route.method not in ("HEAD", "*"):
            out.add((route.method, path))
    return out


def test_every_api_route_is_documented_and_every_documented_route_is_served(tmp_path):
    app = create_app(api_config(tmp_path))
    served, documented = _served(app), documented_routes()
    assert served - documented == set(), "routes missing from gateway/openapi.py OPS"
    assert documented - served == set(), "documented operations nobody serves"
    doc = document()
    assert doc["openapi"] == "3.1.0"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"]["401"]["content"]["application/problem+json"], (method, path)
            assert all("$ref" in c["schema"] for r in op["responses"].values() for c in r.get("content", {}).values()
                       if r is not op["responses"].get("200") or op["operationId"] != "openapi"), (method, path)


def test_the_cli_prints_the_served_document(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "openapi"], capture_output=True, timeout=60)
    assert out.returncode == 0
    assert msgspec.json.decode(out.stdout) == msgspec.json.decode(msgspec.json.encode(document()))


class _Server:
    """The app on a loopback port, on its own event loop in a thread (schemathesis calls it synchronously)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def __enter__(self) -> "_Server":
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


def _seed(server: _Server, base: str) -> None:
    """A few tickets and contacts so lists and lookups have something to answer."""
    import requests

    for i in range(3):
        body = {"external_id": f"s{i}", "sender": {"kind": "email", "value": f"s{i}@example.cn"}, "text": "发票"}
        assert requests.post(f"{base}/channels/api/messages", json=body, headers=AUTH, timeout=10).status_code == 202


EXAMPLES = 20


@pytest.mark.integration
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(tmp_path):
    # the shipped rules (their teams need no directory); the API's own role tests use a directory
    # webhooks.workers 0: endpoints the fuzzer creates get no deliveries (no traffic but loopback)
    config = make_config(tmp_path, rules_dir=RULES, rest={"rate_limit_per_minute": 0}, webhooks={"workers": 0})
    with _Server(create_app(config)) as server:
        base = f"http://127.0.0.1:{server.port}"
        _seed(server, base)
        schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json", headers=AUTH)
        checks = [not_a_server_error, status_code_conformance, content_type_conformance,
                  response_schema_conformance]
        failures: list[str] = []
        operations = set()
        for result in schema.get_all_operations():
            op = result.ok()
            operations.add((op.method.upper(), op.path))
            # positive: valid requests; negative: invalid ones, which must be a documented 4xx, never a 500
            for mode, n in ((GenerationMode.POSITIVE, EXAMPLES), (GenerationMode.NEGATIVE, EXAMPLES // 2)):

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                def run(case) -> None:
                    response = case.call(base_url=base, headers=AUTH)
                    case.validate_response(response, checks=checks)

                try:
                    run()
                except Exception as exc:  # noqa: BLE001 - collected: every operation is tried
                    failures.append(f"{mode.value} {op.method.upper()} {op.path}: {exc}")
        # schemathesis does not test the document it was loaded from
        assert operations == documented_routes() - {("GET", "/api/v1/openapi.json")}
        assert failures == [], "\n\n".join(failures)
