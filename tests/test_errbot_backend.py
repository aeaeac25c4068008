"""plugins/errbot/backends: the SlixmppXMPP backend as errbot loads it, without a server.

errbot finds it by the name in ``BACKEND`` among the ``.plug`` files under
``BOT_EXTRA_BACKEND_DIR`` and takes the one ErrBot subclass of its module. What it
does over a real connection is in ``test_errbot_e2e.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from errbot.backend_plugin_manager import BackendPluginManager
from errbot.bootstrap import CORE_BACKENDS, bot_config_defaults
from errbot.core import ErrBot
from slixmpp import JID

BACKENDS = Path(__file__).resolve().parent.parent / "plugins" / "errbot" / "backends"
USER = "bot@localhost/errbot"


def load(tmp_path: Path, **identity: Any) -> Any:
    """The backend errbot's bootstrap would build from this config.py."""
    config = SimpleNamespace(
        BACKEND="SlixmppXMPP", BOT_EXTRA_BACKEND_DIR=str(BACKENDS),
        BOT_DATA_DIR=str(tmp_path), BOT_ASYNC=False, BOT_ADMINS=("ops@localhost",),
        BOT_IDENTITY={"username": USER, "password": "secret", **identity})
    bot_config_defaults(config)
    manager = BackendPluginManager(config, "errbot.backends", "SlixmppXMPP", ErrBot,
                                   CORE_BACKENDS, [str(BACKENDS)])
    return manager.load_plugin()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Any]:
    bot = load(tmp_path, server=("127.0.0.1", 5222), tls="none")
    yield bot
    bot._errbot_thread.shutdown()
    bot._loop.close()


def test_loads_with_the_server_and_tls_it_is_given(backend: Any) -> None:
    assert type(backend).__name__ == "SlixmppXMPPBackend"
    assert backend.mode == "xmpp"  # what plugins check: it is errbot's XMPP backend
    connection = backend.conn
    assert (connection.server.host, connection.server.port) == ("127.0.0.1", 5222)
    client = connection.client
    assert client.loop is backend._loop
    assert (client.enable_direct_tls, client.enable_starttls, client.enable_plaintext) == \
        (False, False, True)
    assert client.plugin["feature_mechanisms"].unencrypted_scram  # no password in clear


def test_tls_by_default(tmp_path: Path) -> None:
    bot = load(tmp_path)
    try:
        client = bot.conn.client
        assert bot.conn.server is None  # the domain's DNS SRV records
        assert (client.enable_direct_tls, client.enable_starttls, client.enable_plaintext) \
            == (False, True, False)
        assert not client.plugin["feature_mechanisms"].unencrypted_scram
    finally:
        bot._errbot_thread.shutdown()
        bot._loop.close()


@pytest.mark.parametrize(("identity", "error"), [
    ({"server": "xmpp.example.org:5222"},
     "BOT_IDENTITY['server']: must be (host, port), for example ('xmpp.example.org', 5222); "
     "got 'xmpp.example.org:5222'"),
    ({"server": ("xmpp.example.org", "5222")}, "BOT_IDENTITY['server']: must be (host, port)"),
    ({"server": ("", 5222)}, "BOT_IDENTITY['server']: must be (host, port)"),
    ({"server": ("xmpp.example.org", 70000)}, "BOT_IDENTITY['server']: must be (host, port)"),
    ({"tls": True}, "BOT_IDENTITY['tls']: must be one of 'starttls', 'direct', 'none'; "
                    "got True"),
])
def test_bad_settings_name_the_key(tmp_path: Path, identity: dict[str, Any],
                                   error: str) -> None:
    with pytest.raises(ValueError) as raised:
        load(tmp_path, **identity)
    assert str(raised.value).startswith(error)


def test_identifiers_need_no_round_trip(backend: Any) -> None:
    """errbot's own build_identifier awaits nothing it asks slixmpp for (disco#info)."""
    person = backend.build_identifier("Alice@localhost/phone")
    assert (type(person).__name__, person.person, person.resource) == \
        ("XMPPPerson", "Alice@localhost", "phone")
    muc = backend.conn.client.plugin["xep_0045"]
    muc.rooms[None] = {JID("ops@conference.localhost"): {}}  # as join_muc leaves it
    room = backend.build_identifier("ops@conference.localhost")
    assert type(room).__name__ == "XMPPRoom" and str(room) == "ops@conference.localhost"
    occupant = backend.build_identifier("ops@conference.localhost/alice")
    assert type(occupant).__name__ == "XMPPRoomOccupant" and occupant.nick == "alice"
