"""The bench's registry and runner.

Every figure group is a ``"module:function"`` reference in :data:`REGISTRY`;
the function (sync or async) returns ``{figure name: figure dict}`` where a
figure has ``value``, ``unit``, ``baseline``, ``baseline_label``, ``ratio``
(to its raw baseline) and ``detail``. Adding a figure is one line here and one
module in this package (``calllog_rows``, ``social_webhook``,
``webhook_delivery``… as their issues land). Modules are imported only when
their group runs.

After the run every figure gets ``ratio_to_ingest``: its rate over
``ingest_http``'s rate in the same run (a figure in µs/msg is first turned
into a rate, 1e6/value). A group marked ``ratio`` pulls ``ingest_http`` in
when run alone with ``--only``, so its ratio is there too.
"""

from __future__ import annotations

import importlib
import inspect
import time
from typing import Any, Callable, NamedTuple


class Group(NamedTuple):
    ref: str  # "module:function" returning {figure name: figure dict}
    figures: tuple[str, ...]
    ratio: bool = False  # --only runs ingest_http too, for ratio_to_ingest


#: group → what it runs and the figures it gives, in running order
REGISTRY: dict[str, Group] = {
    "ingest_http": Group("gateway.bench.ingest:figures", ("ingest_http", "wechat_callback_aes", "telegram_webhook")),
    "pipeline": Group("gateway.bench.pipeline:figures", ("pipeline", "pipeline_bare"), ratio=True),
    "sustained": Group("gateway.bench.sustained:figures", ("sustained",), ratio=True),
    "assign_store": Group("gateway.bench.assign_store:figures", ("assign_next_store",), ratio=True),
    "email": Group("gateway.bench.email_parse:figures", ("email_parse",)),
    "email_io": Group("gateway.bench.email_smtp:figures", ("email_smtp_accept",)),
    "wechat": Group("gateway.bench.wechat:figures", ("wechat_parse_aes",)),
    "telegram": Group("gateway.bench.telegram:figures", ("telegram_webhook_parse",)),
    "rules": Group("gateway.bench.rules:figures", ("rules_eval_100", "rules_eval_1000", "rules_eval_10000")),
    "assign": Group("gateway.bench.assign:figures", ("assign_decisions",)),
    "social": Group("gateway.bench.social:figures", ("social_webhook",)),
    "api_list": Group("gateway.bench.api_list:figures", ("api_ticket_list_100k",)),
    "calllog": Group("gateway.bench.calllog:figures", ("calllog_rows",)),
    "webchat": Group("gateway.bench.webchat:figures", ("webchat_push",)),
    "webhooks": Group("gateway.bench.webhooks:figures", ("webhook_delivery",), ratio=True),
    "console": Group("gateway.bench.console:figures", ("console_page",)),
    "redis": Group("gateway.bench.redis_instances:figures", ("redis_ingest", "redis_pipeline")),
    "redis_assign": Group("gateway.bench.redis_assign:figures", ("redis_assign_next",)),
    "redis_api_list": Group("gateway.bench.redis_api_list:figures", ("redis_api_ticket_list_100k",)),
}


def _resolve(ref: str) -> Callable[[], Any]:
    mod_name, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod_name), attr)


async def _call(fn: Callable[[], Any]) -> dict:
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(REGISTRY)
    names = [g for g, grp in REGISTRY.items() if only == g or only in grp.figures]
    if any(REGISTRY[g].ratio for g in names) and "ingest_http" not in names:
        names.insert(0, "ingest_http")
    return names


def _rate(fig: dict) -> float | None:
    value, unit = fig.get("value"), str(fig.get("unit", ""))
    if not isinstance(value, (int, float)) or value <= 0:
        return None
    if unit.endswith("/s"):
        return float(value)
    if unit.startswith("µs/"):
        return 1e6 / value
    return None


def add_ratio_to_ingest(out: dict[str, dict]) -> None:
    ingest = out.get("ingest_http", {}).get("value")
    if not isinstance(ingest, (int, float)) or ingest <= 0:
        return
    for fig in out.values():
        rate = _rate(fig) if "error" not in fig else None
        if rate is not None:
            fig["ratio_to_ingest"] = round(rate / ingest, 3)


async def run(only: str | None, log: Callable[[str], None]) -> dict:
    """Run every group (or the one giving figure/group ``only``); one failing
    group is reported as an error and does not hide the others."""
    out: dict[str, Any] = {}
    for name in _selected(only):
        group = REGISTRY[name]
        log(f"bench: {name} …")
        t0 = time.perf_counter()
        try:
            figures = await _call(_resolve(group.ref))
        except Exception as exc:  # noqa: BLE001 - reported in the output
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"bench: {name}: error {exc}")
            continue
        for fname, fig in figures.items():
            if not only or only in (name, fname) or name == "ingest_http" and fname == "ingest_http":
                out[fname] = fig
        log(f"bench: {name} done in {time.perf_counter() - t0:.1f}s")
    add_ratio_to_ingest(out)
    return out
