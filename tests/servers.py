"""Pytest fixtures and helpers for tests against real Prosody / ejabberd.

Servers (see :mod:`slixmpp_push.devserver` and :mod:`devservers`): four, two releases
each of Prosody and ejabberd, each started on first use and stopped at the end of the
session. Each has the virtual host ``localhost``, c2s on plain TCP and the
component ``push.localhost`` (``server.component.jid`` / ``.secret``).

Fixtures
    ``prosody_server``      session-scoped :class:`~slixmpp_push.devserver.ProsodyServer`
                            (Prosody 0.12, system Debian package)
    ``prosody13_server``    session-scoped :class:`~devservers.Prosody13Server`
                            (Prosody 13.0.1 from bookworm-backports, private prefix;
                            ``mod_cloud_notify_extensions`` enabled)
    ``ejabberd_server``     session-scoped :class:`~devservers.EjabberdServer`
                            (ejabberd 23.01, system Debian package)
    ``ejabberd2412_server`` session-scoped :class:`~devservers.Ejabberd2412Server`
                            (ejabberd 24.12 from bookworm-backports, private prefix)
    ``xmpp_server``         parametrised over all four: a test using it runs once per
                            server, with the ids ``ejabberd23.01``, ``ejabberd24.12``,
                            ``prosody0.12``, ``prosody13`` (``-k prosody13`` picks one).
                            Branch on the family with ``isinstance(server, ProsodyServer)``
                            (a Prosody13Server is one) and on the release with
                            ``server.version`` / ``server.version_info()``
    ``xmpp``                function-scoped :class:`Connections`: connects clients and
                            components in the test's event loop and disconnects them
                            all after the test

``SERVER_FIXTURES`` maps each fixture name to its class, ``SERVER_CLASSES``
each test id (``DevServer.key()``) to its class. Each server adds its own run of
every ``xmpp_server`` test (about 45 s per server for the e2e files today): to
run them on fewer, set ``SLIXMPP_PUSH_TEST_SERVERS=prosody13,ejabberd24.12``
(comma-separated ids). CI runs all four.

Helpers
    ``unique_user(prefix)``                   a user name no other test uses
    ``await make_account(server, prefix)``    a new account -> :class:`Account`
    ``await connect_client(server, account)`` a logged-in ``ClientXMPP``
    ``await connect_component(server)``       a ``ComponentXMPP`` with its handshake done
    ``await disconnect(xmpp)``

Using them: ``tests/conftest.py`` imports the fixtures (pytest finds fixtures
in a conftest by name)::

    from servers import (  # noqa: F401
        ejabberd2412_server, ejabberd_server, prosody13_server, prosody_server, xmpp, xmpp_server)

(``tests/`` has no ``__init__.py``, so pytest puts ``tests/`` on ``sys.path``
and the module is ``servers``; with an ``__init__.py`` it would be
``tests.servers``). A test module may import them too: the servers are
shared through a reference count, so importing the fixtures in several places
still starts one server of each kind per session. Only the servers some
selected test asks for are started (Prosody ~0.1-0.2 s, ejabberd ~1-1.8 s). A test::

    async def test_offline_push(prosody_server, xmpp):
        alice = await make_account(prosody_server, "alice")
        client = await xmpp.client(prosody_server, alice)
        push = await xmpp.component(prosody_server)
        ...

Event loops (pytest-asyncio 1.x, ``asyncio_mode = "auto"``): the server
fixtures are *synchronous* session fixtures. A DevServer keeps no asyncio
object between calls (the process is a ``subprocess.Popen``), so the fixture
starts and stops it in a private, short-lived event loop, and every test keeps
its own function-scoped loop: no ``loop_scope`` marks, no session loop, and
tests using a server mix freely with other async tests. What must live in the
test's loop (slixmpp objects bind to the loop current when created) is made
inside the test, by the ``xmpp`` fixture or the helpers.

When a server is not installed its fixtures skip the test, naming the Debian
package (or, for the backports releases, ``.ci/install-backports.sh`` and the
prefix it unpacks into); when the environment variable ``CI`` is set they fail
instead.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from devservers import Ejabberd2412Server, EjabberdServer, Prosody13Server
from slixmpp import ClientXMPP, ComponentXMPP

from slixmpp_push.devserver import (
    ComponentSpec,
    DevServer,
    ProsodyServer,
)

__all__ = [
    "SERVER_CLASSES",
    "SERVER_FIXTURES",
    "Account",
    "Connections",
    "XmppConnectError",
    "connect_client",
    "connect_component",
    "disconnect",
    "ejabberd2412_server",
    "ejabberd_server",
    "make_account",
    "own_server",
    "prosody13_server",
    "prosody_server",
    "scram_ejabberd",
    "unique_user",
    "xmpp",
    "xmpp_server",
]

T = TypeVar("T")
S = TypeVar("S", bound=DevServer)

#: fixture name -> server class (one shared instance of each per session)
SERVER_FIXTURES: dict[str, type[DevServer]] = {
    "prosody_server": ProsodyServer,
    "prosody13_server": Prosody13Server,
    "ejabberd_server": EjabberdServer,
    "ejabberd2412_server": Ejabberd2412Server,
}
#: test id ("prosody0.12", "prosody13", "ejabberd23.01", "ejabberd24.12") -> class
SERVER_CLASSES: dict[str, type[DevServer]] = {
    cls.key(): cls for cls in SERVER_FIXTURES.values()
}
_FIXTURE_OF: dict[str, str] = {cls.key(): name for name, cls in SERVER_FIXTURES.items()}


def _xmpp_server_params() -> list[str]:
    """The test ids ``xmpp_server`` runs over: all, or ``$SLIXMPP_PUSH_TEST_SERVERS``."""
    wanted = os.environ.get("SLIXMPP_PUSH_TEST_SERVERS", "")
    keys = [key.strip() for key in wanted.split(",") if key.strip()]
    unknown = sorted(set(keys) - set(SERVER_CLASSES))
    if unknown:
        raise ValueError(
            f"SLIXMPP_PUSH_TEST_SERVERS names unknown servers {unknown}; "
            f"known: {', '.join(sorted(SERVER_CLASSES))}"
        )
    return sorted(keys or SERVER_CLASSES)

# ------------------------------------------------------------------ servers

_shared: dict[str, DevServer] = {}
_users: dict[str, int] = {}


def _run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion in a private event loop (no loop may be running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError(
            "a dev server fixture was set up from inside a running event loop "
            "(request.getfixturevalue in an async test?): request it as a parameter"
        )
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def _require(cls: type[DevServer]) -> None:
    """Skip when ``cls`` cannot run here, but fail under CI, where every server must."""
    reason = cls.unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def own_server(server: S) -> Iterator[S]:
    """A server configured for one test module: the body of a module-scoped fixture,
    ``yield from own_server(ProsodyServer(extra_modules=("pep",)))``."""
    _require(type(server))
    _run_blocking(server.start())
    try:
        yield server
    finally:
        _run_blocking(server.stop())


def _session_server(kind: str) -> Iterator[DevServer]:
    cls = SERVER_CLASSES[kind]
    _require(cls)
    if kind not in _shared:
        server = cls()
        _run_blocking(server.start())
        _shared[kind] = server
    _users[kind] = _users.get(kind, 0) + 1
    try:
        yield _shared[kind]
    finally:
        _users[kind] -= 1
        if _users[kind] == 0:
            _run_blocking(_shared.pop(kind).stop())


@pytest.fixture(scope="session")
def scram_ejabberd() -> Iterator[DevServer]:
    """ejabberd 24.12 offering SCRAM on its plain-TCP client port (``ejabberd2412_server``
    offers PLAIN only, because 24.12 refuses slixmpp's first SCRAM attempt there): for
    tests that a client gets past that refusal."""
    yield from own_server(Ejabberd2412Server(extra_config={"disable_sasl_mechanisms": []}))


@pytest.fixture(scope="session")
def prosody_server() -> Iterator[ProsodyServer]:
    """Prosody 0.12 + mod_cloud_notify (system packages) for the whole session."""
    for server in _session_server(ProsodyServer.key()):
        assert type(server) is ProsodyServer
        yield server


@pytest.fixture(scope="session")
def prosody13_server() -> Iterator[Prosody13Server]:
    """Prosody 13 + core mod_cloud_notify + mod_cloud_notify_extensions (backports)."""
    for server in _session_server(Prosody13Server.key()):
        assert isinstance(server, Prosody13Server)
        yield server


@pytest.fixture(scope="session")
def ejabberd_server() -> Iterator[EjabberdServer]:
    """ejabberd 23.01 + mod_push (system package) for the whole session."""
    for server in _session_server(EjabberdServer.key()):
        assert type(server) is EjabberdServer
        yield server


@pytest.fixture(scope="session")
def ejabberd2412_server() -> Iterator[Ejabberd2412Server]:
    """ejabberd 24.12 + mod_push (backports, private prefix) for the whole session."""
    for server in _session_server(Ejabberd2412Server.key()):
        assert isinstance(server, Ejabberd2412Server)
        yield server


@pytest.fixture(params=_xmpp_server_params())
def xmpp_server(request: pytest.FixtureRequest) -> DevServer:
    """Each server in turn: the test runs once per release (ids ``prosody13``…)."""
    server = request.getfixturevalue(_FIXTURE_OF[request.param])
    assert isinstance(server, DevServer)
    return server


# ----------------------------------------------------------------- accounts

_counter = itertools.count(1)


def unique_user(prefix: str = "user") -> str:
    """A lowercase user name that no other test of this run uses."""
    return f"{prefix.lower()}{next(_counter)}x{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Account:
    jid: str
    password: str


async def logged(server: DevServer, text: str, timeout: float = 5.0) -> str:
    """The server's log once it holds ``text`` (servers write a line a moment after they
    act: ejabberd's logger is asynchronous); AssertionError with the log after ``timeout``."""
    deadline = time.monotonic() + timeout
    while text not in (log := server.log_text()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log of {server} within {timeout} s:\n"
                                 f"{log[-3000:]}")
        await asyncio.sleep(0.05)
    return log


async def make_account(server: DevServer, prefix: str = "user") -> Account:
    """Register a fresh account on ``server``."""
    password = secrets.token_urlsafe(12)
    jid = await server.register(unique_user(prefix), password)
    return Account(jid, password)


# --------------------------------------------------------------- connecting


class XmppConnectError(Exception):
    """A client or component could not connect or authenticate."""


_FAILURE_EVENTS = ("failed_auth", "no_auth", "connection_failed", "stream_error", "disconnected")


async def _connect(
    xmpp: ClientXMPP | ComponentXMPP, address: tuple[str, int], timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[None] = loop.create_future()

    def started(_: Any) -> None:
        if not outcome.done():
            outcome.set_result(None)

    def failer(event: str) -> Any:
        def failed(data: Any) -> None:
            if not outcome.done():
                outcome.set_exception(XmppConnectError(f"{xmpp.boundjid}: {event}: {data}"))

        return failed

    handlers = [("session_start", started)] + [(e, failer(e)) for e in _FAILURE_EVENTS]
    for event, handler in handlers:
        xmpp.add_event_handler(event, handler)
    try:
        xmpp.connect(*address)
        await asyncio.wait_for(outcome, timeout)
    except BaseException as exc:
        xmpp.cancel_connection_attempt()
        xmpp.abort()
        if isinstance(exc, asyncio.TimeoutError):
            raise XmppConnectError(
                f"{xmpp.boundjid}: no session within {timeout} s at {address}"
            ) from None
        raise
    finally:
        for event, handler in handlers:
            xmpp.del_event_handler(event, handler)


async def connect_client(
    server: DevServer,
    account: Account,
    *,
    resource: str = "test",
    plugins: Sequence[str] = ("xep_0030",),
    plugin_config: Mapping[str, Mapping[str, Any]] | None = None,
    timeout: float = 10.0,
) -> ClientXMPP:
    """A ``ClientXMPP`` logged in to ``server`` over plain TCP, after ``session_start``.

    With ``xep_0198`` among the plugins it also waits until stream management
    is enabled (resumable: ``client.plugin["xep_0198"].sm_id`` is set). Sends
    no presence (the caller decides whether the account looks online).
    """
    config: dict[str, dict[str, Any]] = {
        "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True}
    }
    for name, options in (plugin_config or {}).items():
        config.setdefault(name, {}).update(options)
    client = ClientXMPP(f"{account.jid}/{resource}", account.password, plugin_config=config)
    # No TLS in the dev servers: connect the plain way only (no xmpps attempt).
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    for plugin in plugins:
        client.register_plugin(plugin)
    await _connect(client, server.c2s_address, timeout)
    if "xep_0198" in plugins and not client.plugin["xep_0198"].enabled_in:
        # session_start comes before the server's <enabled/>: wait for it, so
        # that the session is resumable (sm_id set) when this returns.
        try:
            await client.wait_until("sm_enabled", timeout)
        except TimeoutError:
            client.abort()
            raise XmppConnectError(f"{client.boundjid}: stream management not enabled") from None
    return client


async def connect_component(
    server: DevServer,
    spec: ComponentSpec | None = None,
    *,
    plugins: Sequence[str] = ("xep_0030", "xep_0060"),
    timeout: float = 10.0,
    **options: Any,
) -> ComponentXMPP:
    """A ``ComponentXMPP`` (XEP-0114) with its handshake done.

    ``spec`` defaults to the server's ``push.<domain>``; ``options`` go to
    ``ComponentXMPP`` (``fix_error_ns``...). ``xep_0060`` is loaded so that
    pubsub publish IQs parse (``iq['pubsub']['publish']``).
    """
    spec = spec or server.component
    component = ComponentXMPP(spec.jid, spec.secret, server.host, server.component_port, **options)
    for plugin in plugins:
        component.register_plugin(plugin)
    await _connect(component, server.component_address, timeout)
    return component


async def disconnect(xmpp: ClientXMPP | ComponentXMPP, wait: float = 2.0) -> None:
    """Close the stream and wait until the connection is gone."""
    if xmpp.transport is None:
        return
    try:
        await asyncio.wait_for(xmpp.disconnect(wait=wait), wait + 1.0)
    except TimeoutError:
        xmpp.abort()


class Connections:
    """Connects clients and components and disconnects them after the test."""

    def __init__(self) -> None:
        self.opened: list[ClientXMPP | ComponentXMPP] = []

    async def client(self, server: DevServer, account: Account, **options: Any) -> ClientXMPP:
        client = await connect_client(server, account, **options)
        self.opened.append(client)
        return client

    async def component(
        self, server: DevServer, spec: ComponentSpec | None = None, **options: Any
    ) -> ComponentXMPP:
        component = await connect_component(server, spec, **options)
        self.opened.append(component)
        return component

    async def close(self) -> None:
        await asyncio.gather(*(disconnect(x) for x in self.opened), return_exceptions=True)
        self.opened.clear()


@pytest_asyncio.fixture
async def xmpp() -> AsyncIterator[Connections]:
    """A :class:`Connections` bound to this test; everything it opened is closed after."""
    connections = Connections()
    try:
        yield connections
    finally:
        await connections.close()
