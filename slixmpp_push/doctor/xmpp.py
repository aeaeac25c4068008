"""The ``xmpp`` check: can the app server reach and log in to its XMPP server?

Component mode (XEP-0114) is checked on a raw stream (:mod:`.stream`), so that
each way it goes wrong gets its own verdict and fix: nothing listening, a
firewall, a port that is not XMPP, the client port given for the component
port, the wrong secret, an unknown component name, a virtual host instead of a
component, or a ``serve`` already connected (a PASS). Client mode first reads
the stream header raw (is this the client port?), then logs in with slixmpp
under a resource of its own, as ``serve`` would, and says why a login failed.
Either way the connection is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import secrets
import socket
import xml.etree.ElementTree as ET
from typing import Any

from ..config import XmppConfig
from .report import DEFAULT_TIMEOUT, CheckResult, failed, passed
from .stream import (
    CLIENT_NS,
    COMPONENT_NS,
    SERVER_NS,
    STREAM_NS,
    TLS_NS,
    NotXmpp,
    RawStream,
    sasl_mechanisms,
    stream_error,
)

_PORT_FIX = ("set [xmpp] port to the server's component listener (Prosody: component_ports, "
             "default 5347; ejabberd: the port of the ejabberd_service listener)")
_SECRET_FIX = ("[xmpp] secret_file/secret_env must hold the same secret as the server "
               "(Prosody: component_secret under Component \"{jid}\"; ejabberd: password of "
               "the ejabberd_service listener); ejabberd also answers not-authorized when "
               "{jid} is not in that listener's hosts")


async def check_xmpp(xmpp: XmppConfig, timeout: float = DEFAULT_TIMEOUT, *,
                     allow_plaintext: bool = False, all_active: bool = False) -> CheckResult:
    """Connect to ``[xmpp] host:port`` and authenticate, then leave at once.

    Component mode: a raw XEP-0114 handshake, so that each refusal can be named.
    Client mode: the stream header is checked raw (which port is it?), then
    slixmpp logs in with a resource of its own, so a running ``serve`` keeps its
    session. ``allow_plaintext`` lets slixmpp send the password without TLS
    (tests against a plain-TCP server only). ``all_active``: the component is one of
    several connections (its header says ``allowMultiple``, or Openfire refuses it).
    """
    where = f"{xmpp.host}:{xmpp.port}"
    stage = "connect"
    stream: RawStream | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(xmpp.host, xmpp.port)
            stream = RawStream(reader, writer)
            stage = "answer"
            if xmpp.mode == "component":
                return await _component_handshake(stream, xmpp, where, all_active)
            features = await _client_stream(stream, xmpp, where)
            if isinstance(features, CheckResult):
                return features
    except TimeoutError:
        if stage == "connect":
            return failed("xmpp", f"no TCP connection to {where} within {timeout:g} s",
                          "a firewall drops the traffic, or [xmpp] host is wrong")
        return failed("xmpp", f"connected to {where}, but no answer within {timeout:g} s",
                      f"is {where} an XMPP port? (direct TLS ports such as 5223 wait for "
                      f"a TLS handshake) {_PORT_FIX}")
    except ConnectionRefusedError:
        return failed("xmpp", f"connection refused by {where}",
                      f"nothing listens there: check [xmpp] host and port; {_PORT_FIX}")
    except socket.gaierror as exc:
        return failed("xmpp", f"cannot resolve {xmpp.host}: {exc.strerror}",
                      "check [xmpp] host (no SRV lookup is done: give a name or address)")
    except NotXmpp as exc:
        return failed("xmpp", f"{where} does not speak XMPP: {exc}", _PORT_FIX)
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return failed("xmpp", f"{where} closed the connection without an XMPP answer",
                          f"is {where} an XMPP port? {_PORT_FIX}")
        return failed("xmpp", f"cannot connect to {where}: {exc.strerror or exc}",
                      "check [xmpp] host and port, and the network in between")
    finally:
        if stream is not None:
            await stream.close()
    return await _client_login(xmpp, where, timeout, features, allow_plaintext)


async def _component_handshake(stream: RawStream, xmpp: XmppConfig, where: str,
                               all_active: bool = False) -> CheckResult:
    await stream.open(COMPONENT_NS, xmpp.jid, allow_multiple=all_active)
    if stream.header is None:
        return failed("xmpp", f"{where} closed the connection without an XMPP answer",
                      f"is {where} an XMPP port? {_PORT_FIX}")
    if stream.namespace != COMPONENT_NS:
        detail, fix = _wrong_port(where, stream.namespace, COMPONENT_NS)
        return failed("xmpp", detail, fix)
    stream_id = stream.header.get("id", "")
    handshake_sent = False
    if stream_id and not stream.elements:
        digest = hashlib.sha1((stream_id + xmpp.secret).encode()).hexdigest()
        stream.send(f"<handshake>{digest}</handshake>")
        handshake_sent = True
    element = await stream.next_element()
    if element is None:
        return failed("xmpp", f"{where} closed the stream without answering the handshake",
                      _SECRET_FIX.format(jid=xmpp.jid))
    if element.tag == f"{{{COMPONENT_NS}}}handshake" and handshake_sent:
        return passed("xmpp", f"component {xmpp.jid} authenticated at {where} "
                              "(XEP-0114 handshake accepted)")
    if element.tag == f"{{{STREAM_NS}}}features":  # a client port echoing our namespace
        offered = ", ".join(sasl_mechanisms(element)) or "none"
        return failed("xmpp", f"{where} is the client (c2s) port, not the component port: the "
                              f"server offered stream features (SASL mechanisms: {offered})",
                      _PORT_FIX)
    error = stream_error(element)
    if error is None:
        return failed("xmpp", f"unexpected answer <{element.tag}> from {where}", _PORT_FIX)
    condition, text = error
    if condition == "not-authorized":
        return failed("xmpp", f"the server refused the component handshake: "
                              f"{_said(condition, text)}", _SECRET_FIX.format(jid=xmpp.jid))
    if condition in ("host-unknown", "improper-addressing"):
        return failed("xmpp", f"the server has no component {xmpp.jid}: {_said(condition, text)}",
                      f"[xmpp] jid must be a component of the server (Prosody: Component "
                      f"\"{xmpp.jid}\" with component_secret; ejabberd: in the hosts of the "
                      f"ejabberd_service listener)")
    if condition == "conflict" and "local domain" in text:
        return failed("xmpp", f"{xmpp.jid} is a virtual host of the server, not a component: "
                              f"{_said(condition, text)}",
                      "give the app server its own name, such as push.<your domain>")
    if condition == "conflict" and handshake_sent:
        return passed("xmpp", f"component {xmpp.jid}: secret accepted at {where}; the component "
                              f"is already connected, e.g. by the running serve "
                              f"({_said(condition, text)})")
    return failed("xmpp", f"the server closed the stream: {_said(condition, text)}",
                  f"see the server's log about {xmpp.jid}")


async def _client_stream(stream: RawStream, xmpp: XmppConfig, where: str
                         ) -> CheckResult | ET.Element:
    """The client port answers a jabber:client stream with features: those, or a FAIL."""
    domain = xmpp.jid.partition("@")[2].partition("/")[0] or xmpp.jid
    await stream.open(CLIENT_NS, domain, version=True)
    if stream.header is None:
        return failed("xmpp", f"{where} closed the connection without an XMPP answer",
                      "set [xmpp] port to the server's client port (5222)")
    if stream.namespace != CLIENT_NS:
        detail, fix = _wrong_port(where, stream.namespace, CLIENT_NS)
        return failed("xmpp", detail, fix)
    element = await stream.next_element()
    if element is None:
        return failed("xmpp", f"{where} closed the stream without stream features",
                      "see the server's log")
    error = stream_error(element)
    if error is not None:
        condition, text = error
        if condition == "host-unknown":
            return failed("xmpp", f"the server at {where} does not serve {domain}: "
                                  f"{_said(condition, text)}",
                          "[xmpp] jid must be an account of a domain that server hosts")
        return failed("xmpp", f"the server closed the stream: {_said(condition, text)}",
                      "see the server's log")
    if element.tag != f"{{{STREAM_NS}}}features":
        return failed("xmpp", f"unexpected answer <{element.tag}> from {where}",
                      "set [xmpp] port to the server's client port (5222)")
    return element


async def _client_login(xmpp: XmppConfig, where: str, timeout: float, features: ET.Element,
                        allow_plaintext: bool) -> CheckResult:
    """Log in with slixmpp, as ``serve`` does, under a resource of our own."""
    from slixmpp import JID, ClientXMPP

    bare = JID(xmpp.jid).bare
    client = ClientXMPP(f"{bare}/slixmpp-push-doctor-{secrets.token_hex(3)}", xmpp.secret)
    # The port spoke plain XMPP just now: STARTTLS, no direct TLS attempt first.
    client.enable_direct_tls = False
    starttls = features.find(f"{{{TLS_NS}}}starttls") is not None
    if not starttls and not allow_plaintext:
        offered = ", ".join(sasl_mechanisms(features)) or "none"
        cannot = (f"{where} offers no STARTTLS, and slixmpp sends no password over an "
                  f"unencrypted stream (SASL mechanisms offered: {offered})")
    else:
        cannot = (f"no SASL mechanism slixmpp can use at {where} (offered: "
                  f"{', '.join(sasl_mechanisms(features)) or 'none'})")
    if allow_plaintext:
        client.enable_starttls = client.enable_direct_tls = False
        client.enable_plaintext = True
        mechanisms: Any = client.plugin["feature_mechanisms"]
        mechanisms.unencrypted_plain = mechanisms.unencrypted_scram = True
    outcome: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()

    def settle(result: CheckResult) -> None:
        if not outcome.done():
            outcome.set_result(result)

    refusals: list[str] = []

    def on_failed_auth(stanza: Any) -> None:
        # One mechanism refused; slixmpp goes on with the next (ejabberd 24.12 refuses
        # SCRAM over plain TCP, then accepts PLAIN), so only failed_all_auth is final.
        refusals.append(stanza["condition"] if stanza is not None else "not-authorized")

    def on_failed_all_auth(_event: object) -> None:
        if not refusals:
            settle(failed("xmpp", cannot, _NO_MECHANISM_FIX))
            return
        settle(failed("xmpp", f"the server refused the password of {bare}: {refusals[-1]}",
                      "[xmpp] password_file/password_env must hold the account's password"))

    handlers: list[tuple[str, Any]] = [
        ("session_start", lambda _: settle(passed("xmpp", f"logged in as {bare} at {where}"))),
        ("failed_auth", on_failed_auth),
        ("failed_all_auth", on_failed_all_auth),
        ("no_auth", lambda _: settle(failed("xmpp", cannot, _NO_MECHANISM_FIX))),
        ("connection_failed", lambda error: settle(failed(
            "xmpp", f"cannot connect to {where}: {error}",
            "check [xmpp] host and port, and the server's TLS certificate"))),
        ("stream_error", lambda error: settle(failed(
            "xmpp", f"the server closed the stream: {error['condition']} {error['text']}",
            "see the server's log"))),
        ("disconnected", lambda reason: settle(failed(
            "xmpp", f"disconnected before the session started ({reason})",
            "see the server's log"))),
    ]
    for event, handler in handlers:
        client.add_event_handler(event, handler)
    try:
        client.connect(xmpp.host, xmpp.port)
        try:
            return await asyncio.wait_for(outcome, timeout)
        except TimeoutError:
            return failed("xmpp", f"no session at {where} within {timeout:g} s",
                          "TLS or authentication stalled: see the server's log")
    finally:
        for event, handler in handlers:
            client.del_event_handler(event, handler)
        client.cancel_connection_attempt()
        if client.transport is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2.0)
        client.abort()


_NO_MECHANISM_FIX = "enable TLS (STARTTLS) and SCRAM or PLAIN on the server's client port"


def _wrong_port(where: str, namespace: str | None, expected: str) -> tuple[str, str]:
    """(detail, fix) for a server answering with another kind of stream."""
    kinds = {CLIENT_NS: "the client (c2s) port", SERVER_NS: "the server-to-server port",
             COMPONENT_NS: "a component port"}
    kind = kinds.get(namespace or "", f"a port speaking {namespace or 'no namespace'}")
    if expected == COMPONENT_NS:
        return (f"{where} is {kind}, not the component port: the server answered with a "
                f"{namespace} stream", _PORT_FIX)
    return (f"{where} is {kind}, not the client port: the server answered with a "
            f"{namespace} stream",
            "in client mode set [xmpp] port to the server's client port (5222) "
            "or use mode = \"component\"")


def _said(condition: str, text: str) -> str:
    return f"{condition} ({text})" if text else condition
