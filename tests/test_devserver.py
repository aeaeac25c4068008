"""Smoke tests: the private Prosody and ejabberd work for our push tests.

Four servers: Prosody 0.12 and ejabberd 23.01 (system packages), Prosody 13
and ejabberd 24.12 (bookworm-backports, unpacked by .ci/install-backports.sh).
The fixtures prosody_server, prosody13_server, ejabberd_server,
ejabberd2412_server, xmpp_server and xmpp come from tests/servers.py through
conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import devservers
import pytest
from devservers import Ejabberd2412Server, EjabberdServer, Prosody13Server
from servers import SERVER_CLASSES, Connections, make_account
from slixmpp import JID, Iq
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from slixmpp_push import devserver
from slixmpp_push.devserver import (
    DevServer,
    DevServerError,
    DevServerUnavailable,
    ProsodyServer,
)

PUSH_NS = "urn:xmpp:push:0"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
DATA_NS = "jabber:x:data"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"


def _processes_in_group(pgid: int) -> list[str]:
    """Command lines of the processes whose process group is ``pgid`` (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            # fields after the ")" closing the command name: state ppid pgrp ...
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(Path(f"/proc/{entry}/cmdline").read_text().replace("\0", " "))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _start_time(pid: int) -> str | None:
    """The start time of a live (not zombie) process, None when there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _requires(kind: str) -> None:
    reason = SERVER_CLASSES[kind].unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):  # CI installs every server: missing is a failure
            pytest.fail(reason)
        pytest.skip(reason)


# ------------------------------------------------------------------ lifecycle


@pytest.mark.parametrize("kind", sorted(SERVER_CLASSES))
async def test_start_register_stop_leaves_nothing_behind(
    kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _requires(kind)
    server = SERVER_CLASSES[kind]()
    before = await server.register("early", "pw")  # before start
    assert before == "early@localhost"

    began = time.monotonic()
    await server.start()
    started = time.monotonic() - began
    pid = server.pid
    assert pid is not None
    workdir = server.workdir
    helpers = devserver._descendants(pid)  # Erlang: erl_child_setup, memsup, eimp
    try:
        for port in (server.c2s_port, server.component_port):
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        assert await server.register("late", "pw") == "late@localhost"
        with pytest.raises(DevServerError, match="already"):
            await server.register("late", "pw")
    finally:
        began = time.monotonic()
        await server.stop()
        stopped = time.monotonic() - began

    with capsys.disabled():
        print(f"\n{server.name}: ready in {started:.2f} s, stopped in {stopped:.2f} s")
    assert not server.running and server.pid is None
    assert not workdir.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert _processes_in_group(pid) == []
    assert devserver._descendants(pid) == {}
    assert [p for p, started in helpers.items() if _start_time(p) == started] == []
    assert server.log_text()  # still readable after the folder is gone
    await server.stop()  # idempotent


async def test_context_manager_and_given_workdir(tmp_path: Path) -> None:
    _requires(ProsodyServer.key())
    async with ProsodyServer(
        workdir=tmp_path / "p", smacks_hibernation_time=2, push_max_hibernation_timeout=3
    ) as server:
        assert server.running
        config = server.config_path.read_text()
        assert "smacks_hibernation_time = 2" in config
        assert "push_max_hibernation_timeout = 3" in config
        assert 'modules_disabled = { "s2s"; "s2s_auth_certs" }' in config
    assert not server.running
    assert (tmp_path / "p" / "prosody.log").exists()  # a given folder is kept


async def test_port_taken_between_choice_and_bind_is_retried(
    monkeypatch: pytest.MonkeyPatch, xmpp_server: DevServer
) -> None:
    cls = type(xmpp_server)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real = devserver._free_ports
    calls = []

    def first_one_taken(count: int, host: str = "127.0.0.1") -> list[int]:
        ports = real(count, host)
        calls.append(ports)
        return [taken, *ports[1:]] if len(calls) == 1 else ports

    monkeypatch.setattr(devserver, "_free_ports", first_one_taken)
    server = cls(ready_timeout=20)
    try:
        await server.start()
        assert len(calls) == 2
        assert server.c2s_port != taken
    finally:
        await server.stop()
        blocker.close()


async def test_readiness_without_proc_falls_back_to_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _requires(ProsodyServer.key())
    monkeypatch.setattr(devserver, "_listening_ports", lambda pid: None)
    async with ProsodyServer() as server:
        assert server.running


async def test_start_failure_raises_with_log_tail() -> None:
    _requires(ProsodyServer.key())
    server = ProsodyServer(extra_config=["this is not Lua"], ready_timeout=10)
    with pytest.raises(DevServerError) as raised:
        await server.start()
    assert "console output" in str(raised.value) or "prosody.log" in str(raised.value)
    assert "Lua" in str(raised.value) or "lua" in str(raised.value)
    assert not server.running


def test_unavailable_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devserver.shutil, "which", lambda _: None)
    for cls, package in (
        (ProsodyServer, "prosody-modules"),
        (EjabberdServer, "ejabberd"),
        (Prosody13Server, "install-backports.sh"),
        (Ejabberd2412Server, "install-backports.sh"),
    ):
        assert not cls.available()
        reason = cls.unavailable_reason()
        assert reason is not None and package in reason
        with pytest.raises(DevServerUnavailable, match=package):
            asyncio.run(cls().start())


def test_backports_prefix_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(devservers.SERVERS_PREFIX_ENV, str(tmp_path))
    assert devservers.servers_prefix() == tmp_path
    for cls, folder in ((Prosody13Server, "prosody13"), (Ejabberd2412Server, "ejabberd24.12")):
        reason = cls.unavailable_reason()
        assert reason is not None
        assert str(tmp_path / folder) in reason and "install-backports.sh" in reason
    monkeypatch.delenv(devservers.SERVERS_PREFIX_ENV)
    assert devservers.servers_prefix() == Path(devservers.DEFAULT_SERVERS_PREFIX)


def _loaded_files(pid: int) -> set[str]:
    """Files mapped into process ``pid`` (shared libraries, NIFs)."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            found.add(fields[5])
    return found


async def test_each_release_runs_its_own_code(xmpp_server: DevServer) -> None:
    """The backports releases run from the private prefix, the system ones never do."""
    prefix = str(devservers.servers_prefix())
    log = xmpp_server.log_text()
    private = isinstance(xmpp_server, Prosody13Server | Ejabberd2412Server)
    if isinstance(xmpp_server, ProsodyServer):
        announced = {"0.12": "Prosody version 0.12.", "13": "Prosody version 13.0.1"}
        assert announced[xmpp_server.version] in log
        config = xmpp_server.config_path.read_text()
        paths = next(line for line in config.splitlines() if line.startswith("plugin_paths"))
        assert (prefix in paths) == private
        assert ('"/usr/lib/prosody' in paths) != private  # the system's module folder
        assert ("cloud_notify_extensions" in config) == private
    else:
        announced = {"23.01": "ejabberd 23.01-1 is started", "24.12": "ejabberd 24.12-3~bpo12+1 is"}
        assert announced[xmpp_server.version] in log
        # The NIFs loaded show which p1_* applications the code path picked:
        # 24.12 must not run bookworm's older ones, 23.01 never the private ones.
        assert xmpp_server.pid is not None
        nifs = [f for f in _loaded_files(xmpp_server.pid) if "/lib/p1_" in f]
        assert any("/p1_xmpp-" in f for f in nifs), nifs
        assert all(f.startswith(f"{prefix}/ejabberd24.12/") == private for f in nifs), nifs
        if not private:
            assert any(f.startswith("/usr/lib/erlang/lib/p1_xmpp-1.6.1/") for f in nifs), nifs


async def test_prosody13_advertises_the_tigase_extensions(
    prosody13_server: Prosody13Server, xmpp: Connections
) -> None:
    """mod_cloud_notify_extensions is loaded: what Siskin and Snikket look for."""
    alice = await make_account(prosody13_server, "alice")
    client = await xmpp.client(prosody13_server, alice)
    info = await client.plugin["xep_0030"].get_info(jid=JID(alice.jid), local=False, timeout=5)
    features = set(info["disco_info"]["features"])
    assert {
        PUSH_NS,
        "tigase:push:encrypt:0",
        "tigase:push:encrypt:aes-128-gcm",
        "tigase:push:jingle:0",
        "tigase:push:priority:0",
        "tigase:push:filter:ignore-unknown:0",
        "tigase:push:filter:muted:0",
        "tigase:push:filter:groupchat:0",
    } <= features


async def test_prosody13_without_extensions(xmpp: Connections) -> None:
    _requires(Prosody13Server.key())
    async with Prosody13Server(cloud_notify_extensions=False) as server:
        alice = await make_account(server, "alice")
        client = await xmpp.client(server, alice)
        info = await client.plugin["xep_0030"].get_info(
            jid=JID(alice.jid), local=False, timeout=5
        )
        features = set(info["disco_info"]["features"])
        await xmpp.close()
    assert PUSH_NS in features
    assert not any(f.startswith("tigase:") for f in features)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root is refused")
async def test_prosody13_as_root_needs_run_as_root() -> None:
    """Prosody 13 refuses to run as root and exits (0.12 refuses and hangs)."""
    _requires(Prosody13Server.key())
    server = Prosody13Server(extra_config=["run_as_root = false"], ready_timeout=10)
    began = time.monotonic()
    with pytest.raises(DevServerError, match="exited while starting") as raised:
        await server.start()
    assert "Prosody doesn't need to be run as root" in str(raised.value)
    assert time.monotonic() - began < 5


# --------------------------------------------------------------- XMPP smoke


async def test_clients_and_component_connect(xmpp_server: DevServer, xmpp: Connections) -> None:
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    a = await xmpp.client(xmpp_server, alice)
    b = await xmpp.client(xmpp_server, bob)
    assert a.boundjid.bare == alice.jid and b.boundjid.bare == bob.jid

    info = await a.plugin["xep_0030"].get_info(jid=JID(alice.jid), local=False, timeout=5)
    assert PUSH_NS in info["disco_info"]["features"]

    component = await xmpp.component(xmpp_server)
    assert component.boundjid.bare == xmpp_server.component.jid


def _enable_iq(client: object, node: str, secret: str, app_server: str) -> Iq:
    iq = client.make_iq_set()  # type: ignore[attr-defined]
    iq.xml.append(
        ET.fromstring(
            f"<enable xmlns='{PUSH_NS}' jid='{app_server}' node='{node}'>"
            f"<x xmlns='{DATA_NS}' type='submit'>"
            f"<field var='FORM_TYPE' type='hidden'><value>{PUBLISH_OPTIONS}</value></field>"
            f"<field var='secret'><value>{secret}</value></field>"
            "</x></enable>"
        )
    )
    return iq


async def _capture_publishes(server: DevServer, xmpp: Connections) -> asyncio.Queue[Iq]:
    """Connect the push component; every publish it gets is answered and queued."""
    component = await xmpp.component(server)
    published: asyncio.Queue[Iq] = asyncio.Queue()

    def on_publish(iq: StanzaBase) -> None:
        assert isinstance(iq, Iq)
        published.put_nowait(iq)
        iq.reply(clear=True).send()

    component.register_handler(
        Callback("publish", StanzaPath("iq@type=set/pubsub/publish"), on_publish)
    )
    return published


def _summary(iq: Iq) -> dict[str, str | None]:
    """The fields of the notification's summary form."""
    return {
        field.get("var", ""): field.findtext(f"{{{DATA_NS}}}value")
        for field in iq.xml.iterfind(
            f".//{{{PUSH_NS}}}notification/{{{DATA_NS}}}x/{{{DATA_NS}}}field"
        )
    }


async def _offline_push(
    server: DevServer, xmpp: Connections, node: str, body: str
) -> tuple[Iq, str, str]:
    """Alice enables push and leaves; Bob writes to her. -> (publish, alice, bob)."""
    alice = await make_account(server, "alice")
    bob = await make_account(server, "bob")
    published = await _capture_publishes(server, xmpp)
    a = await xmpp.client(server, alice)
    result = await _enable_iq(a, node, "s3cr3t", server.component.jid).send(timeout=5)
    assert result["type"] == "result"
    await a.disconnect()

    b = await xmpp.client(server, bob)
    b.send_message(mto=JID(alice.jid), mbody=body, mtype="chat")
    iq = await asyncio.wait_for(published.get(), 10)
    return iq, alice.jid, str(b.boundjid)


async def test_xep0357_offline_message_is_published_to_the_component(
    xmpp_server: DevServer, xmpp: Connections
) -> None:
    iq, _, _ = await _offline_push(xmpp_server, xmpp, "n1", "hello alice")
    assert iq["from"].full == xmpp_server.domain  # the bare domain, not the user
    assert iq["to"].full == xmpp_server.component.jid
    pubsub = iq.xml.find(f"{{{PUBSUB_NS}}}pubsub")
    assert pubsub is not None
    publish = pubsub.find(f"{{{PUBSUB_NS}}}publish")
    assert publish is not None and publish.get("node") == "n1"
    assert publish.find(f".//{{{PUSH_NS}}}notification") is not None
    options = {
        field.get("var"): field.findtext(f"{{{DATA_NS}}}value")
        for field in pubsub.iterfind(
            f"{{{PUBSUB_NS}}}publish-options/{{{DATA_NS}}}x/{{{DATA_NS}}}field"
        )
    }
    assert options == {"FORM_TYPE": PUBLISH_OPTIONS, "secret": "s3cr3t"}
    # By default neither server reveals the body.
    assert _summary(iq).get("last-message-body") != "hello alice"


BODY_AND_SENDER = {
    "prosody": {"push_notification_with_body": True, "push_notification_with_sender": True},
    "ejabberd": {"push_include_body": True, "push_include_sender": True},
}


@pytest.mark.parametrize("kind", sorted(SERVER_CLASSES))
async def test_body_and_sender_options(kind: str) -> None:
    _requires(kind)
    cls = SERVER_CLASSES[kind]
    async with cls(**BODY_AND_SENDER[cls.family]) as server:
        connections = Connections()
        try:
            iq, _, bob = await _offline_push(server, connections, "n2", "the body")
        finally:
            await connections.close()
    summary = _summary(iq)
    assert summary["last-message-body"] == "the body"
    assert summary["last-message-sender"] in (bob, bob.split("/")[0])


async def test_xep0357_hibernated_session_is_published(
    xmpp_server: DevServer, xmpp: Connections
) -> None:
    """Stream management with resumption works: a dropped session is kept and pushed for."""
    alice = await make_account(xmpp_server, "alice")
    bob = await make_account(xmpp_server, "bob")
    published = await _capture_publishes(xmpp_server, xmpp)
    a = await xmpp.client(xmpp_server, alice, plugins=("xep_0030", "xep_0198"))
    assert a.plugin["xep_0198"].sm_id, "the server did not grant a resumable session"
    a.send_presence()
    await _enable_iq(a, "hib", "s3cr3t", xmpp_server.component.jid).send(timeout=5)
    a.abort()  # the TCP connection drops without </stream>: the session hibernates

    b = await xmpp.client(xmpp_server, bob)
    await asyncio.sleep(0.2)  # let the server notice the dropped connection
    sent = time.monotonic()
    b.send_message(mto=JID(alice.jid), mbody="are you there?", mtype="chat")
    iq = await asyncio.wait_for(published.get(), 10)
    publish = iq.xml.find(f"{{{PUBSUB_NS}}}pubsub/{{{PUBSUB_NS}}}publish")
    assert publish is not None and publish.get("node") == "hib"
    print(f"{type(xmpp_server).__name__}: hibernated push after {time.monotonic() - sent:.3f} s")
