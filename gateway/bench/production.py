"""The production configuration the bench measures, and its traffic.

What users run: the shipped rules (``rules/`` of this checkout), a directory
(:data:`DIRECTORY_YAML`: the teams the shipped rules name — ``frontline``,
``senior``, ``billing``, ``social-media`` — with agents online and capacity,
and SLA policies on business-hours calendars), info-level JSON logs (to a
file) and metrics on. The clock is pinned to a Tuesday in Shanghai business
hours and then advances with real time, so figures do not depend on the hour
the bench runs (the after-hours rule would otherwise auto-reply at night).

The traffic (:func:`message`): API-channel messages, a quarter from new
customers and three quarters follow-ups from customers already seen (a
follow-up joins its open ticket), texts drawn from a dozen variants that hit
different rules: order questions (root → frontline), refunds (billing),
outages (urgent), password resets (self-service auto-reply), a VIP sender
(senior), in Chinese and English.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

#: Tuesday 2026-12-01 11:00 in Shanghai
PINNED = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
NEW_SHARE = 4  # one message in NEW_SHARE is from a new customer


def _agents(team: str, n: int, skills: str, capacity: str) -> str:
    return "".join(f"  - {{id: {team}-{i}, name: {team} {i}, teams: [{team}], skills: {skills}, "
                   f"capacity: {capacity}, presence: online}}\n" for i in range(n))


DIRECTORY_YAML = (
    "calendars:\n"
    "  cn-office: {timezone: Asia/Shanghai, hours: {weekdays: [09:00-12:00, 13:30-18:00]}, holidays: CN}\n"
    "teams:\n"
    "  frontline: {title: Frontline, calendar: cn-office}\n"
    "  senior: {title: Senior, calendar: cn-office, sticky: true}\n"
    "  billing: {title: Billing, calendar: cn-office, sticky: true,"
    " overflow: [{after: 10m, widen_to: [frontline]}]}\n"
    "  social-media: {title: Social media, calendar: cn-office}\n"
    "agents:\n"
    + _agents("frontline", 30, "{general: 2, english: 2}", "{chat: 8, email: 30, call: 1}")
    + _agents("senior", 8, "{vip: 2, english: 3}", "{chat: 5, email: 20, call: 1}")
    + _agents("billing", 10, "{billing: 3, disputes: 1}", "{chat: 5, email: 25}")
    + _agents("social-media", 6, "{social: 2}", "{chat: 10}")
    + "sla_policies:\n"
    "  - {id: urgent, match: {priority: [urgent]}, calendar: 24x7,"
    " targets: {first_response: 15m, next_response: 30m, resolution: 4h}}\n"
    "  - {id: high, match: {priority: [high]}, calendar: cn-office,"
    " targets: {first_response: 1h, next_response: 2h, resolution: 8h}}\n"
    "  - {id: standard, calendar: cn-office, targets: {first_response: 2h, next_response: 4h, resolution: 24h},"
    " warn_at: 0.75}\n"
)

_TEXTS = [
    ("订单查询", "您好，我的订单 {n} 还没有到，请帮忙查一下物流"),
    ("Where is my parcel", "Hi, order {n} has not arrived yet. Could you check where it is?"),
    ("退款", "我要申请退款，订单号 {n}，商品有质量问题"),
    ("Refund please", "I would like a refund for order {n}, it arrived broken."),
    (None, "网站打不开了，一直 500 error，订单 {n} 没法付款"),
    ("Site is down", "Your checkout is down for everyone here, order {n} is stuck."),
    (None, "忘记密码了，怎么重置密码？账号 {n}"),
    ("发票", "请问订单 {n} 的发票什么时候开？公司抬头已经发过了"),
    (None, "谢谢，收到了 {n}"),
    ("Question about my account", "Can I change the delivery address for order {n}?"),
    (None, "还有一个问题：{n} 可以改成周末送货吗"),
    ("售后", "商品 {n} 坏了，能换一个吗"),
]
VIP = "ceo@bigcustomer.example"


def sender_of(n: int) -> str:
    """Message ``n``'s sender: every NEW_SHARE-th message a new customer,
    the others a customer seen before (spread over all of them)."""
    if n % NEW_SHARE == 0:
        return f"c{n // NEW_SHARE}@example.cn"
    seen = n // NEW_SHARE + 1
    k = (n * 7919) % seen
    return VIP if k == 1 else f"c{k}@example.cn"


def message(n: int, prefix: str = "m") -> bytes:
    """The n-th message of the mix, as the API channel's JSON body."""
    subject, text = _TEXTS[(n * 31) % len(_TEXTS)]
    body: dict[str, Any] = {"external_id": f"{prefix}{n}", "sender": {"kind": "email", "value": sender_of(n)},
                            "text": text.format(n=n)}
    if subject:
        body["subject"] = subject
    return json.dumps(body, ensure_ascii=False).encode()


MIX = (f"API channel; 1 in {NEW_SHARE} from a new customer, the rest follow-ups from customers already seen; "
       f"{len(_TEXTS)} text variants (order questions, refunds → billing, outages → urgent, password resets → "
       "auto-reply, a VIP sender → senior; Chinese and English)")


def pinned_clock() -> Callable[[], datetime]:
    """Business hours in Shanghai, advancing with real time (monotonic).

    As cheap as the daemon's own clock (``routing.model.utcnow``, ~0.25 µs),
    so the figures measure the daemon, not the harness: one ``fromtimestamp``
    of a float, where ``PINNED + timedelta(seconds=…)`` built a timedelta and
    added it (~0.9 µs, and the pipeline reads the clock several times per
    message)."""
    offset = PINNED.timestamp() - time.monotonic()
    monotonic, fromtimestamp, utc = time.monotonic, datetime.fromtimestamp, timezone.utc
    return lambda: fromtimestamp(offset + monotonic(), utc)


def config(data_dir: Path, *, workers: int | None = None, channels: dict | None = None) -> Any:
    """The production configuration, with its directory file written into
    ``data_dir`` (and ``channels`` configured: the bench's WeChat account for
    the ``sustained`` figure's WeChat steps)."""
    from gateway.config import load

    from gateway.config import PipelineConfig

    if workers is None:  # the shipped default: what users run
        workers = PipelineConfig().workers
    data_dir.mkdir(parents=True, exist_ok=True)
    directory = data_dir / "directory.yaml"
    directory.write_text(DIRECTORY_YAML, encoding="utf-8")
    return load(None, environ={"OMNIGATE_API_TOKEN": "bench-token", "OMNIGATE_DATA_DIR": str(data_dir),
                               "OMNIGATE_PIPELINE__WORKERS": str(workers), "OMNIGATE_LOG_LEVEL": "info",
                               "OMNIGATE_LOG_FORMAT": "json", "OMNIGATE_RULES_DIR": str(RULES_DIR),
                               "OMNIGATE_DIRECTORY": str(directory),
                               # A/B of the fair-share gate: OMNIGATE_PIPELINE__ADMISSION_RATIO=0 omnigate bench …
                               **{k: v for k, v in os.environ.items() if k.startswith("OMNIGATE_PIPELINE__ADMISSION_")}},
                flags={"channels": channels} if channels else None)


def create_app(config: Any, clock: Callable[[], datetime], store: Any = None) -> Any:
    """The real app, every time-dependent part reading ``clock``."""
    from gateway import app as app_module

    return app_module.create_app(config, store=store, clock=clock)
