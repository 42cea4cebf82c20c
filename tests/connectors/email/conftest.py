"""Fixtures of the email I/O tests: an in-memory ConnectorContext (journal
deduplicated by (account, key), state that survives a simulated restart, a
real supervisor), a self-signed certificate for STARTTLS/TLS, and helpers to
run a connector and wait on conditions with a deadline (never a fixed sleep).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connectors.email.client import EmailConnector
from tests.connectors.memory import Entry, MemoryContext as BaseMemoryContext  # noqa: F401 (Entry: for tests)

PATIENCE_S = 20.0  # a safety net against a hung test, not a timing assertion


@dataclass
class MemoryContext(BaseMemoryContext):
    channel: str = "email"


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Wait until ``predicate()`` holds; fail after PATIENCE_S."""
    deadline = asyncio.get_running_loop().time() + PATIENCE_S
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def listening(port: int) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = asyncio.get_running_loop().time() + PATIENCE_S
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"nothing listens on 127.0.0.1:{port}")
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return


@asynccontextmanager
async def running(ctx: MemoryContext) -> AsyncIterator[EmailConnector]:
    """An EmailConnector running in the background; closed (and awaited) on exit."""
    connector = EmailConnector(ctx)
    task = asyncio.create_task(connector.run())
    try:
        yield connector
    finally:
        await connector.close()
        await asyncio.wait_for(task, PATIENCE_S)


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this certificate."""
        return ssl.create_default_context(cafile=str(self.cert))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for ``localhost`` / ``127.0.0.1``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    root = tmp_path_factory.mktemp("tls")
    out = Cert(root / "cert.pem", root / "key.pem")
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out

