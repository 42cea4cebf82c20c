"""A throw-away dovecot IMAP server for the integration tests.

Everything lives in one temporary directory: the configuration (no
``/etc/dovecot`` include), ``base_dir`` and ``state_dir`` (so it never meets
a system instance), a passwd-file for passdb and userdb, the maildirs and
the log. It listens on a free loopback port without TLS (plain auth is fine
on 127.0.0.1 in a test) and runs in the foreground (``dovecot -F``) as a
child process.

Dovecot refuses to run ``imap-login`` as root, so the login and internal
users are Debian's ``dovenull`` and ``dovecot``, and mail is stored as
``dovecot`` in maildirs chowned to it.

One server runs per test module (starting and stopping costs about a
second); each test gets a user of its own (from users made up front), so
tests never see each other's mail. Import the fixtures into the test module:

- ``dovecot``: a fresh user on a normal server;
- ``dovecot_without_idle``: a fresh user on a server whose CAPABILITY lacks
  IDLE (to exercise a client's polling fallback).

Both skip when dovecot is not installed, and fail under ``CI=true``.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import need

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
PASSWORD = "s3cret-test"
_START_DEADLINE_S = 15.0
# users are made up front: dovecot notices a changed passwd-file at most once a second
_USERS = 50

_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# a refused login answers at once (the default waits 2 s against guessing)
auth_failure_delay = 0
first_valid_uid = 1
default_login_user = dovenull
default_internal_user = dovecot
mail_uid = dovecot
mail_gid = dovecot
mail_location = maildir:~/Maildir
# maildir changes are seen through inotify; this bounds the wait if not
mailbox_idle_check_interval = 1 secs
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
# no auth penalty: one test's refused login must not slow the next tests'
# logins from 127.0.0.1 (Authentication.Penalty in dovecot's wiki)
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""

# the capability list dovecot 2.3 advertises after login, less IDLE
_NO_IDLE = "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE SORT UNSELECT CHILDREN NAMESPACE UIDPLUS MOVE\n"


@dataclass(frozen=True)
class Dovecot:
    """A running server: where it listens and its files."""

    host: str
    port: int
    root: Path
    unused: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def add_user(self) -> DovecotServer:
        """A user of its own, with an empty maildir."""
        n = next(self.unused)
        if n > _USERS:
            raise RuntimeError(f"the dovecot fixture has only {_USERS} users per server")
        return DovecotServer(self.host, self.port, f"agent{n}", PASSWORD, self.root)


@dataclass(frozen=True)
class DovecotServer:
    """What a test needs: where the server is and how to log in."""

    host: str
    port: int
    user: str
    password: str
    root: Path

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kick(self) -> None:
        """Drop every connection of this user (server side), as a restarted
        or failing server would."""
        subprocess.run(
            [DOVEADM, "-c", str(self.root / "dovecot.conf"), "kick", self.user],
            check=True, capture_output=True, timeout=10,
        )


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _prepare(root: Path, port: int, extra_conf: str) -> Path:
    """Write the config, the passwd-file and the users' maildirs; return the config."""
    dovecot = pwd.getpwnam("dovecot")
    # the unprivileged dovecot processes must be able to reach the tree
    root.chmod(0o755)
    lines = []
    for n in range(1, _USERS + 1):
        home = root / "home" / f"agent{n}"
        (home / "Maildir").mkdir(parents=True)
        lines.append(f"agent{n}:{{PLAIN}}{PASSWORD}::::{home}::\n")
    for path in (root / "home", *(root / "home").rglob("*")):
        os.chown(path, dovecot.pw_uid, dovecot.pw_gid)
    (root / "passwd").write_text("".join(lines))
    conf = root / "dovecot.conf"
    conf.write_text(_CONF.format(root=root, port=port) + extra_conf)
    return conf


def _wait_until_listening(proc: subprocess.Popen, port: int, root: Path) -> None:
    deadline = time.monotonic() + _START_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            log = (root / "dovecot.log").read_text(errors="replace") if (root / "dovecot.log").exists() else ""
            pytest.fail(f"dovecot exited with {proc.returncode}: {out}\n{log}")
        if _accepts(port):
            return
        time.sleep(0.05)
    pytest.fail(f"dovecot did not listen on 127.0.0.1:{port} within {_START_DEADLINE_S}s")


def _available() -> tuple[bool, str]:
    if not Path(DOVECOT).exists():
        return False, f"{DOVECOT} is not installed (apt-get install dovecot-imapd)"
    try:
        pwd.getpwnam("dovecot")
        pwd.getpwnam("dovenull")
    except KeyError:
        return False, "the dovecot/dovenull system users are missing"
    if os.geteuid() != 0:
        return False, "starting dovecot with its own users needs root"
    return True, ""


@contextmanager
def running_dovecot(extra_conf: str = "") -> Iterator[Dovecot]:
    """A dovecot on a free loopback port, stopped and removed on exit."""
    ok, why = _available()
    need("dovecot", ok, why)
    root = Path(tempfile.mkdtemp(prefix="omnigate-dovecot-"))
    port = free_port()
    conf = _prepare(root, port, extra_conf)
    proc = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_until_listening(proc, port, root)
        yield Dovecot("127.0.0.1", port, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


@pytest.fixture(scope="module")
def dovecot_server_without_idle() -> Iterator[Dovecot]:
    with running_dovecot(_NO_IDLE) as server:
        yield server


@pytest.fixture
def dovecot(dovecot_server: Dovecot) -> DovecotServer:
    return dovecot_server.add_user()


@pytest.fixture
def dovecot_without_idle(dovecot_server_without_idle: Dovecot) -> DovecotServer:
    return dovecot_server_without_idle.add_user()
