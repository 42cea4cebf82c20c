"""SLA badges tick on the server's clock in a real browser (Debian's chromium
through Playwright; never a downloaded browser).

The gateway's clock is pinned (``FakeClock``, the business-hours instant);
the browser's clock is set hours off it with Playwright's ``page.clock``, as
on an agent's PC whose clock is wrong, and moved by hand. The page carries
the server's time (``body[data-now]``), and console.js judges the badges at
the browser's time plus that offset: a first-response target due in an hour,
with the console's warning 10 minutes before it, stays green, turns amber at
50 minutes and red at 60 minutes of the *server's* time, whatever the
browser's clock says. (With the browser's own clock, the badge of a browser
two hours ahead turns red at the first tick, and one three hours behind
never turns amber or red in time.)
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from gateway.app import create_app
from gateway.config import load
from tests.clock import BUSINESS_HOURS, INSTANTS, FakeClock
from tests.console.conftest import DIRECTORY, agent_token, console_env
from tests.console.test_browser import PATIENCE_MS, browser, browser_available  # noqa: F401 (fixtures)
from tests.console.test_console import SLA_POLICY, api_message

pytestmark = [pytest.mark.integration]

SERVER_NOW = INSTANTS[BUSINESS_HOURS]


@pytest.fixture
async def gateway(aiohttp_client, tmp_path, browser_available):  # noqa: F811
    clock = FakeClock(SERVER_NOW)  # pinned: only the browser's clock moves in these tests
    env = console_env(tmp_path, DIRECTORY + SLA_POLICY, OMNIGATE_CONSOLE__SLA_WARNING_MINUTES="10")
    client = await aiohttp_client(create_app(load(None, environ=env, flags={}), clock=clock),
                                  server_kwargs={"host": "127.0.0.1"})
    await api_message(client, "退款还没到账", ext="sla-1", subject="退款")  # first response due in 1 h
    return client


async def badge(page) -> str:
    """The queue's one SLA badge's state class (sla-ok, sla-warning, sla-breached)."""
    classes = (await page.locator(".sla[data-due]").get_attribute("class")).split()
    return next(c for c in classes if c != "sla")


@pytest.mark.parametrize("skew, locale", [(timedelta(hours=2), "zh-CN"), (timedelta(hours=-3), "en-US")],
                         ids=["browser-2h-ahead", "browser-3h-behind"])
async def test_sla_badges_follow_the_servers_clock_not_the_browsers(gateway, browser, skew, locale) -> None:
    context = await browser.new_context(locale=locale, timezone_id="Asia/Shanghai")
    page = await context.new_page()
    page.set_default_timeout(PATIENCE_MS)
    browser_start: datetime = SERVER_NOW + skew
    await page.clock.install(time=browser_start)
    token = await agent_token(gateway.app, "a-lilei", "lead")
    await page.goto(str(gateway.make_url("/console/login")))
    await page.fill("#token", token)
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/queue")
    await page.goto(str(gateway.make_url("/console/queue?view=all")))
    assert await page.locator("body").get_attribute("data-now") == str(int(SERVER_NOW.timestamp() * 1000))
    assert await badge(page) == "sla-ok"  # as the server rendered it: 60 minutes left

    # the ticks of the first minute (the browser's clock hours off): still green
    await page.clock.fast_forward("01:00")
    assert await badge(page) == "sla-ok"
    # 50 minutes of the server's time: the console's warning, 10 minutes before the due time
    await page.clock.fast_forward("49:30")
    assert await badge(page) == "sla-warning"
    # past the due time: breached
    await page.clock.fast_forward("10:00")
    assert await badge(page) == "sla-breached"
    await context.close()
