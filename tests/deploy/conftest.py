"""What the deploy/ tests share: the files, the config keys an environment
variable names, and a daemon started the way a deploy file starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict:
    """The test process's environment without any OMNIGATE_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIGATE_") or k == "OMNIGATE_CORPUS"}
    return {**env, **extra}


def config_key(env_name: str) -> tuple[str, ...]:
    """``OMNIGATE_EMAIL__SMTP__LISTEN`` → ``("email", "smtp", "listen")``
    (``_FILE`` dropped), as gateway.config.env_overrides reads it."""
    from gateway.config import ENV_PREFIX, PATH_KEYS

    path = [p.lower() for p in env_name[len(ENV_PREFIX):].split("__")]
    if path[-1].endswith("_file") and path[-1] not in PATH_KEYS:
        path[-1] = path[-1][: -len("_file")]
    return tuple(path)


#: Keys the deploy files set whose feature lands on another branch: the Redis
#: backend (t-redis: redis_url is refused until then). Once it lands, the
#: tests below load it too.
PENDING = {("redis_url",)}


def key_is_known(key: tuple[str, ...]) -> bool:
    """A top-level Config field, a field of one of its nested sections, or a
    connector's option."""
    from connectors.registry import manifests
    from gateway.config import Config

    fields = {f.name: f.type for f in msgspec.structs.fields(Config)}
    if key[0] in fields and key[0] != "channels":
        if len(key) == 1:
            return True
        kind = fields[key[0]]
        return isinstance(kind, type) and issubclass(kind, msgspec.Struct) and key[1] in kind.__struct_fields__
    manifest = manifests().get(key[0])
    if manifest is None:
        return False
    names = {tuple("*" if s.startswith("<") else s for s in n.split(".")) for n in manifest.options}
    rest = key[1:]
    return any(len(n) == len(rest) and all(a in ("*", b) for a, b in zip(n, rest)) for n in names)


def landed(key: tuple[str, ...]) -> bool:
    from gateway.config import NOT_AVAILABLE

    return key_is_known(key) and key[0] not in NOT_AVAILABLE


def loadable_env(env: dict[str, str], secrets_dir: Path) -> dict[str, str]:
    """A deployment's OMNIGATE_* environment as this branch can load it:
    pending keys that have not landed are left out; ``*_FILE`` paths point
    at stand-in files under ``secrets_dir``."""
    out = {}
    secrets_dir.mkdir(parents=True, exist_ok=True)
    for name, value in env.items():
        if not name.startswith("OMNIGATE_"):
            continue
        key = config_key(name)
        if key in PENDING and not landed(key):
            continue
        if name.endswith("_FILE"):
            stand_in = secrets_dir / key[-1]
            stand_in.write_text("redis://127.0.0.1:6379/0\n" if key == ("redis_url",) else "s3cret-" + key[-1])
            value = str(stand_in)
        out[name] = value
    return out


def http(method: str, url: str, body: bytes | None = None, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=body,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited {proc.returncode}: {proc.stderr.read().decode()[-3000:]}")
        try:
            if http("GET", f"{base}/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("omnigate serve did not answer /healthz")


def yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
