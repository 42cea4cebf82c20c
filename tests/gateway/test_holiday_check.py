"""The running gateway warns when a calendar in use lacks holiday data:
/readyz detail, a gauge, a log line (explicit ``now``; horizon constructed)."""

from __future__ import annotations

from datetime import datetime, timezone

import routing.calendar as calmod
from gateway import holidaycheck
from gateway.app import create_app
from tests.gateway.conftest import RULES, make_config


async def test_readyz_metric_and_log_name_the_calendar_without_holiday_data(aiohttp_client, tmp_path, monkeypatch):
    monkeypatch.setattr(calmod, "CN_LAST_YEAR", 2030)
    monkeypatch.setattr(holidaycheck, "CN_LAST_YEAR", 2030)
    (tmp_path / "directory.yaml").write_text(
        "calendars:\n  cn-office: {hours: {weekdays: 09:00-18:00}}\n  berlin: {holidays: none}\n"
        "teams: {frontline: {title: F, calendar: cn-office}, billing: {title: B}, senior: {title: S},"
        " social-media: {title: M}}\n"
        "agents: [{id: a-1, name: A, teams: [frontline], skills: {billing: 2, disputes: 1, vip: 1, social: 1}}]\n")
    app = create_app(make_config(tmp_path, rules_dir=RULES, directory=str(tmp_path / "directory.yaml")))
    client = await aiohttp_client(app)
    check = app[holidaycheck.STATE]
    logged = []
    monkeypatch.setattr(holidaycheck.log, "warning", lambda event, **kw: logged.append((event, kw)))

    assert check.check(datetime(2030, 6, 1, tzinfo=timezone.utc)) == {}
    body = await (await client.get("/readyz")).json()
    assert body["detail"]["holiday_data"] == {"ok": True, "missing": {}} and logged == []

    missing = check.check(datetime(2030, 12, 1, tzinfo=timezone.utc))  # 2031 within 60 days
    assert missing == {"cn-office": [2031], "rules:business_hours": [2031]}
    r = await client.get("/readyz")
    detail = (await r.json())["detail"]["holiday_data"]
    assert r.status == 200 and detail["missing"] == {"cn-office": [2031], "rules:business_hours": [2031]}
    assert "cn-office" in detail["warning"]
    text = (await (await client.get("/metrics")).read()).decode()
    assert 'omnigate_calendar_holiday_data_missing{calendar="cn-office"} 1.0' in text
    assert [e for e, _ in logged] == ["calendar.holiday_data_missing"]
    assert logged[0][1]["calendars"] == {"cn-office": [2031], "rules:business_hours": [2031]}

    check.check(datetime(2030, 6, 2, tzinfo=timezone.utc))  # data again (a newer package, say): the gauge drops
    text = (await (await client.get("/metrics")).read()).decode()
    assert 'omnigate_calendar_holiday_data_missing{calendar="cn-office"} 0.0' in text
