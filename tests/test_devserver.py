"""Smoke tests: the private Prosody and ejabberd work for our push tests.

The fixtures prosody_server, ejabberd_server, xmpp_server and xmpp come from
tests/servers.py through conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from servers import SERVER_CLASSES, Connections, make_account
from slixmpp import JID, Iq
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from slixmpp_push import devserver
from slixmpp_push.devserver import DevServer, DevServerError, DevServerUnavailable, ProsodyServer

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
        if os.environ.get("CI"):  # CI installs both servers: missing is a failure
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
    _requires("prosody")
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
    _requires("prosody")
    monkeypatch.setattr(devserver, "_listening_ports", lambda pid: None)
    async with ProsodyServer() as server:
        assert server.running


async def test_start_failure_raises_with_log_tail() -> None:
    _requires("prosody")
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
        (devserver.EjabberdServer, "ejabberd"),
    ):
        assert not cls.available()
        reason = cls.unavailable_reason()
        assert reason is not None and package in reason
        with pytest.raises(DevServerUnavailable, match=package):
            asyncio.run(cls().start())


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


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("prosody", {"push_notification_with_body": True, "push_notification_with_sender": True}),
        ("ejabberd", {"push_include_body": True, "push_include_sender": True}),
    ],
)
async def test_body_and_sender_options(kind: str, options: dict[str, Any]) -> None:
    _requires(kind)
    async with SERVER_CLASSES[kind](**options) as server:
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
