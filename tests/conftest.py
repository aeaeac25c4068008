"""Shared fixtures: real XMPP servers (tests/servers.py), a private PostgreSQL
(tests/postgres.py) and fake providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from fakes.fake_apns import FakeApns
from fakes.fake_fcm import FakeFcm
from fakes.tls import TestCA
from postgres import own_postgres, postgres_server, postgres_url  # noqa: F401
from servers import (  # noqa: F401
    ejabberd2412_server,
    ejabberd_server,
    prosody13_server,
    prosody_server,
    scram_ejabberd,
    xmpp,
    xmpp_server,
)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest_asyncio.fixture
async def fake_apns(test_ca: TestCA) -> AsyncIterator[FakeApns]:
    async with FakeApns(test_ca, verify_client=False) as fake:
        yield fake


@pytest.fixture(scope="session")
def apns_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway ES256 (.p8) signing key, as Apple issues them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path_factory.mktemp("keys") / "AuthKey_TESTKEY123.p8"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


FCM_PROJECT = "push-e2e"


@pytest_asyncio.fixture
async def fake_fcm(test_ca: TestCA, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeFcm]:
    """A fake FCM whose OAuth endpoint the service-account credential uses too."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(test_ca.ca_file))  # google-auth's requests
    async with FakeFcm(ca=test_ca, projects=[FCM_PROJECT]) as fake:
        yield fake
