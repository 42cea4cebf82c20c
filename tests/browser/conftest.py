"""Browser tests: Debian's Chromium driven by Playwright (never a downloaded
browser), a real ``omnigate serve`` subprocess, and a host page on another
loopback origin that embeds the widget with its one ``<script>`` tag.

Integration tests: under ``CI=true`` they never skip (scripts/test installs
chromium and fonts-noto-cjk when missing)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.daemon import free_port, stop, wait_ready
from tests.gateway.test_crash import start

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SECRET = "browser-test-site-secret"


def _need_browser():
    try:
        import playwright  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed")


@pytest.fixture
async def browser():
    _need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


class Daemon:
    """A real ``omnigate serve`` with one webchat site, restartable on the same data."""

    def __init__(self, tmp_path: Path, page_origin: str):
        self.dir = tmp_path
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (tmp_path / "site.secret").write_text(SECRET)
        (tmp_path / "omnigate.yaml").write_text(yaml.safe_dump({"webchat": {"sites": {"shop": {
            "origins": [page_origin], "secret_file": str(tmp_path / "site.secret"), "color": "#0a7d4f",
            "greeting": {"en": "Hi! Ask us anything.", "zh-CN": "您好！请问有什么可以帮您？"}},
            "desk": {"origins": [page_origin], "prechat": True}}}}))
        self.proc = None

    async def start(self):
        self.proc = start(self.dir / "data", self.port, env={"OMNIGATE_CONFIG": str(self.dir / "omnigate.yaml"),
                                                             "OMNIGATE_RULES_DIR": str(self.dir / "no-rules")})
        await wait_ready(self.base, self.proc)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
async def site(tmp_path):
    """(daemon, page_url(name)) — host pages served from their own origin."""
    _need_browser()
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    daemon = Daemon(tmp_path, origin)
    pages: dict[str, str] = {}

    async def page(request):
        if request.match_info["name"] not in pages:
            raise web.HTTPNotFound()
        return web.Response(text=pages[request.match_info["name"]], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", page_port).start()
    await daemon.start()

    def host_page(name: str, head: str = "", lang: str = "en", site: str = "shop") -> str:
        pages[name] = (f"<!doctype html><html lang='{lang}'><head><title>Shop {name}</title>"
                       "<style>div{color:red!important;font-size:40px!important}button{display:none!important}</style>"
                       f"{head}</head><body><h1>Shop</h1>"
                       f"<script src='{daemon.base}/channels/webchat/widget.js?site={site}' async></script></body></html>")
        return f"{origin}/{name}"

    try:
        yield daemon, host_page
    finally:
        daemon.stop()
        await runner.cleanup()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
