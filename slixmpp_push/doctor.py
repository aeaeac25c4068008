"""``slixmpp-push doctor``: "push is enabled, but nothing arrives" — check a deployment.

Each check is one small function returning a :class:`CheckResult` (name,
PASS/WARN/FAIL, a one-line detail and, when it did not pass, the fix).
:func:`run_doctor` runs the independent ones concurrently and collects a
:class:`Report`, printed as text or JSON:

=============================  ==============================================
``config``                     the file loads (:func:`~slixmpp_push.config.load_config`)
``xmpp``                       the component handshake (XEP-0114), or the client
                               account's login, at ``[xmpp] host:port``
``credentials <app>``          the .p8 key, the certificate (expiry) or the
                               service-account file holds what it should
``apns|fcm|console <app>``     Apple or Google accept the credentials
                               (:meth:`Provider.probe`: nothing reaches a device)
``store``                      the store opens read-only; counts; file modes
``clock``                      our clock against the providers' ``Date`` headers
=============================  ==============================================

Nothing is sent to a phone, the app server is not started, and no secret or
device token is ever printed. Exit status: 0 when nothing failed (warnings are
fine), 1 when a check failed, 2 when the config cannot be loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import ssl
import stat
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from xml.sax.saxutils import quoteattr

from .config import AppConfig, Config, XmppConfig, load_config, quote_key
from .errors import ConfigError, MissingDependency, PushError, StoreError
from .providers.base import ProbeStatus

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "CheckResult",
    "Report",
    "Status",
    "check_clock",
    "check_config",
    "check_credentials",
    "check_provider",
    "check_store",
    "check_xmpp",
    "run_doctor",
]

#: PASS / WARN / FAIL (the providers' probe verdicts are the same values).
Status = ProbeStatus
T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
#: Clock skew against a provider: warn above, fail above (seconds). Apple refuses
#: provider tokens older than 1 h or from the future; Google refuses assertions
#: outside a short window.
CLOCK_WARN = 60.0
CLOCK_FAIL = 300.0
#: An APNs certificate expiring within this many days is a warning.
CERT_WARN_DAYS = 30

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


@dataclass(slots=True, frozen=True)
class CheckResult:
    """The verdict of one check: ``fix`` says what to change when it is not PASS."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail,
                "fix": self.fix}


@dataclass(slots=True)
class Report:
    """Every check's result, in a fixed order; renders as text or JSON."""

    config: str
    checks: list[CheckResult] = field(default_factory=list)
    config_loaded: bool = True

    @property
    def exit_status(self) -> int:
        if not self.config_loaded:
            return EXIT_CONFIG
        if any(check.status is Status.FAIL for check in self.checks):
            return EXIT_FAILED
        return EXIT_OK

    def counts(self) -> dict[str, int]:
        return {status.value: sum(c.status is status for c in self.checks) for status in Status}

    def text(self) -> str:
        lines = []
        for check in self.checks:
            lines.append(f"{check.status.value:<4}  {check.name}: {check.detail}")
            if check.fix and check.status is not Status.PASS:
                lines.append(f"      fix: {check.fix}")
        counts = self.counts()
        lines.append(f"slixmpp-push doctor: {counts['PASS']} passed, {counts['WARN']} "
                     f"warning(s), {counts['FAIL']} failed")
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps({"config": self.config, "exit_status": self.exit_status,
                           "summary": self.counts(),
                           "checks": [check.as_dict() for check in self.checks]},
                          ensure_ascii=False, indent=2)


def _pass(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.PASS, detail)


def _warn(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, Status.WARN, detail, fix)


def _fail(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, detail, fix)


# -- 1. the config ----------------------------------------------------------------------


def check_config(path: str | os.PathLike[str]) -> tuple[CheckResult, Config | None]:
    """Load the config as ``serve`` would; a ConfigError names the key."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        if exc.key == str(path):  # the file itself: missing, unreadable, not TOML
            fix = "give --config the app server's TOML config file (docs/configuration.md)"
        else:
            fix = f"correct {exc.key} in {path} (every key: docs/configuration.md)"
        return _fail("config", f"{exc.key}: {exc.problem}", fix), None
    xmpp = config.xmpp
    apps = ", ".join(f"{app.id} ({app.type})" for app in config.apps)
    return _pass("config", f"{path}: {xmpp.mode} {xmpp.jid} at {xmpp.host}:{xmpp.port}; "
                           f"apps {apps}; store {config.store}"), config


# -- 2. the XMPP server -----------------------------------------------------------------

STREAM_NS = "http://etherx.jabber.org/streams"
STREAM_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-streams"
COMPONENT_NS = "jabber:component:accept"
CLIENT_NS = "jabber:client"
SERVER_NS = "jabber:server"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
#: Most bytes read from a server before its answer is judged (a stream header,
#: its features or an error fit in a few kilobytes).
MAX_STREAM_BYTES = 256 * 1024

_PORT_FIX = ("set [xmpp] port to the server's component listener (Prosody: component_ports, "
             "default 5347; ejabberd: the port of the ejabberd_service listener)")
_SECRET_FIX = ("[xmpp] secret_file/secret_env must hold the same secret as the server "
               "(Prosody: component_secret under Component \"{jid}\"; ejabberd: password of "
               "the ejabberd_service listener); ejabberd also answers not-authorized when "
               "{jid} is not in that listener's hosts")


class _NotXmpp(Exception):
    """What the server sent is not an XMPP stream."""


class _RawStream:
    """Just enough of an XMPP stream to diagnose one: the header's default
    namespace and attributes, then one top-level element at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser: ET.XMLPullParser[Any] = ET.XMLPullParser(
            events=("start-ns", "start", "end"))
        self.namespace: str | None = None  # the header's default namespace
        self.header: dict[str, str] | None = None
        self.elements: deque[ET.Element] = deque()
        self.ended = False  # </stream:stream> or EOF
        self._depth = 0
        self._read = 0

    async def open(self, namespace: str, to: str, version: bool = False) -> None:
        """Send our stream header and wait for the server's."""
        attrs = f" to={quoteattr(to)}" + (" version='1.0'" if version else "")
        self.writer.write(f"<?xml version='1.0'?><stream:stream xmlns='{namespace}' "
                          f"xmlns:stream='{STREAM_NS}'{attrs}>".encode())
        await self.writer.drain()
        while self.header is None and not self.ended:
            await self._feed()

    async def next_element(self) -> ET.Element | None:
        """The next top-level element; None when the stream ended first."""
        while not self.elements and not self.ended:
            await self._feed()
        return self.elements.popleft() if self.elements else None

    def send(self, data: str) -> None:
        self.writer.write(data.encode())

    async def _feed(self) -> None:
        data = await self.reader.read(4096)
        if not data:
            self.ended = True
            return
        self._read += len(data)
        if self._read > MAX_STREAM_BYTES:
            raise _NotXmpp(f"more than {MAX_STREAM_BYTES} bytes without an answer")
        try:
            self.parser.feed(data)
            events: list[Any] = list(self.parser.read_events())
        except ET.ParseError as exc:
            raise _NotXmpp(f"not XML ({exc}): {data[:40]!r}") from None
        for event, item in events:
            if event == "start-ns" and self._depth == 0:
                prefix, uri = item
                if prefix == "":
                    self.namespace = uri
            elif event == "start":
                assert isinstance(item, ET.Element)
                self._depth += 1
                if self._depth == 1:
                    if item.tag != f"{{{STREAM_NS}}}stream":
                        raise _NotXmpp(f"the first element is <{item.tag}>, not a stream")
                    self.header = dict(item.attrib)
            elif event == "end":
                assert isinstance(item, ET.Element)
                self._depth -= 1
                if self._depth == 1:
                    self.elements.append(item)
                elif self._depth == 0:
                    self.ended = True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.writer.is_closing():
                self.writer.write(b"</stream:stream>")
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def _stream_error(element: ET.Element) -> tuple[str, str] | None:
    """(condition, text) of a ``<stream:error/>``; None for any other element."""
    if element.tag != f"{{{STREAM_NS}}}error":
        return None
    condition, text = "undefined-condition", ""
    for child in element:
        local = child.tag.rpartition("}")[2]
        if local == "text":
            text = (child.text or "").strip()
        elif child.tag.startswith(f"{{{STREAM_ERROR_NS}}}"):
            condition = local
    return condition, text


def _mechanisms(element: ET.Element) -> list[str]:
    found = element.find(f"{{{SASL_NS}}}mechanisms")
    if found is None:
        return []
    return sorted(m.text.strip() for m in found if m.text)


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


async def check_xmpp(xmpp: XmppConfig, timeout: float = DEFAULT_TIMEOUT, *,
                     allow_plaintext: bool = False) -> CheckResult:
    """Connect to ``[xmpp] host:port`` and authenticate, then leave at once.

    Component mode: a raw XEP-0114 handshake, so that each refusal can be named.
    Client mode: the stream header is checked raw (which port is it?), then
    slixmpp logs in with a resource of its own, so a running ``serve`` keeps its
    session. ``allow_plaintext`` lets slixmpp send the password without TLS
    (tests against a plain-TCP server only).
    """
    where = f"{xmpp.host}:{xmpp.port}"
    stage = "connect"
    stream: _RawStream | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(xmpp.host, xmpp.port)
            stream = _RawStream(reader, writer)
            stage = "answer"
            if xmpp.mode == "component":
                return await _component_handshake(stream, xmpp, where)
            features = await _client_stream(stream, xmpp, where)
            if isinstance(features, CheckResult):
                return features
    except TimeoutError:
        if stage == "connect":
            return _fail("xmpp", f"no TCP connection to {where} within {timeout:g} s",
                         "a firewall drops the traffic, or [xmpp] host is wrong")
        return _fail("xmpp", f"connected to {where}, but no answer within {timeout:g} s",
                     f"is {where} an XMPP port? (direct TLS ports such as 5223 wait for "
                     f"a TLS handshake) {_PORT_FIX}")
    except ConnectionRefusedError:
        return _fail("xmpp", f"connection refused by {where}",
                     f"nothing listens there: check [xmpp] host and port; {_PORT_FIX}")
    except socket.gaierror as exc:
        return _fail("xmpp", f"cannot resolve {xmpp.host}: {exc.strerror}",
                     "check [xmpp] host (no SRV lookup is done: give a name or address)")
    except _NotXmpp as exc:
        return _fail("xmpp", f"{where} does not speak XMPP: {exc}", _PORT_FIX)
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return _fail("xmpp", f"{where} closed the connection without an XMPP answer",
                         f"is {where} an XMPP port? {_PORT_FIX}")
        return _fail("xmpp", f"cannot connect to {where}: {exc.strerror or exc}",
                     "check [xmpp] host and port, and the network in between")
    finally:
        if stream is not None:
            await stream.close()
    return await _client_login(xmpp, where, timeout, features, allow_plaintext)


async def _component_handshake(stream: _RawStream, xmpp: XmppConfig, where: str
                               ) -> CheckResult:
    await stream.open(COMPONENT_NS, xmpp.jid)
    if stream.header is None:
        return _fail("xmpp", f"{where} closed the connection without an XMPP answer",
                     f"is {where} an XMPP port? {_PORT_FIX}")
    if stream.namespace != COMPONENT_NS:
        detail, fix = _wrong_port(where, stream.namespace, COMPONENT_NS)
        return _fail("xmpp", detail, fix)
    stream_id = stream.header.get("id", "")
    handshake_sent = False
    if stream_id and not stream.elements:
        digest = hashlib.sha1((stream_id + xmpp.secret).encode()).hexdigest()
        stream.send(f"<handshake>{digest}</handshake>")
        handshake_sent = True
    element = await stream.next_element()
    if element is None:
        return _fail("xmpp", f"{where} closed the stream without answering the handshake",
                     _SECRET_FIX.format(jid=xmpp.jid))
    if element.tag == f"{{{COMPONENT_NS}}}handshake" and handshake_sent:
        return _pass("xmpp", f"component {xmpp.jid} authenticated at {where} "
                             "(XEP-0114 handshake accepted)")
    if element.tag == f"{{{STREAM_NS}}}features":  # a client port echoing our namespace
        offered = ", ".join(_mechanisms(element)) or "none"
        return _fail("xmpp", f"{where} is the client (c2s) port, not the component port: the "
                             f"server offered stream features (SASL mechanisms: {offered})",
                     _PORT_FIX)
    error = _stream_error(element)
    if error is None:
        return _fail("xmpp", f"unexpected answer <{element.tag}> from {where}", _PORT_FIX)
    condition, text = error
    if condition == "not-authorized":
        return _fail("xmpp", f"the server refused the component handshake: "
                             f"{_said(condition, text)}", _SECRET_FIX.format(jid=xmpp.jid))
    if condition in ("host-unknown", "improper-addressing"):
        return _fail("xmpp", f"the server has no component {xmpp.jid}: {_said(condition, text)}",
                     f"[xmpp] jid must be a component of the server (Prosody: Component "
                     f"\"{xmpp.jid}\" with component_secret; ejabberd: in the hosts of the "
                     f"ejabberd_service listener)")
    if condition == "conflict" and "local domain" in text:
        return _fail("xmpp", f"{xmpp.jid} is a virtual host of the server, not a component: "
                             f"{_said(condition, text)}",
                     "give the app server its own name, such as push.<your domain>")
    if condition == "conflict" and handshake_sent:
        return _pass("xmpp", f"component {xmpp.jid}: secret accepted at {where}; the component "
                             f"is already connected, e.g. by the running serve "
                             f"({_said(condition, text)})")
    return _fail("xmpp", f"the server closed the stream: {_said(condition, text)}",
                 f"see the server's log about {xmpp.jid}")


async def _client_stream(stream: _RawStream, xmpp: XmppConfig, where: str
                         ) -> CheckResult | ET.Element:
    """The client port answers a jabber:client stream with features: those, or a FAIL."""
    domain = xmpp.jid.partition("@")[2].partition("/")[0] or xmpp.jid
    await stream.open(CLIENT_NS, domain, version=True)
    if stream.header is None:
        return _fail("xmpp", f"{where} closed the connection without an XMPP answer",
                     "set [xmpp] port to the server's client port (5222)")
    if stream.namespace != CLIENT_NS:
        detail, fix = _wrong_port(where, stream.namespace, CLIENT_NS)
        return _fail("xmpp", detail, fix)
    element = await stream.next_element()
    if element is None:
        return _fail("xmpp", f"{where} closed the stream without stream features",
                     "see the server's log")
    error = _stream_error(element)
    if error is not None:
        condition, text = error
        if condition == "host-unknown":
            return _fail("xmpp", f"the server at {where} does not serve {domain}: "
                                 f"{_said(condition, text)}",
                         "[xmpp] jid must be an account of a domain that server hosts")
        return _fail("xmpp", f"the server closed the stream: {_said(condition, text)}",
                     "see the server's log")
    if element.tag != f"{{{STREAM_NS}}}features":
        return _fail("xmpp", f"unexpected answer <{element.tag}> from {where}",
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
        offered = ", ".join(_mechanisms(features)) or "none"
        cannot = (f"{where} offers no STARTTLS, and slixmpp sends no password over an "
                  f"unencrypted stream (SASL mechanisms offered: {offered})")
    else:
        cannot = (f"no SASL mechanism slixmpp can use at {where} (offered: "
                  f"{', '.join(_mechanisms(features)) or 'none'})")
    if allow_plaintext:
        client.enable_starttls = client.enable_direct_tls = False
        client.enable_plaintext = True
        mechanisms: Any = client.plugin["feature_mechanisms"]
        mechanisms.unencrypted_plain = mechanisms.unencrypted_scram = True
    outcome: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()

    def settle(result: CheckResult) -> None:
        if not outcome.done():
            outcome.set_result(result)

    def on_failed_auth(stanza: Any) -> None:
        condition = stanza["condition"] if stanza is not None else "not-authorized"
        settle(_fail("xmpp", f"the server refused the password of {bare}: {condition}",
                     "[xmpp] password_file/password_env must hold the account's password"))

    handlers: list[tuple[str, Any]] = [
        ("session_start", lambda _: settle(_pass("xmpp", f"logged in as {bare} at {where}"))),
        ("failed_auth", on_failed_auth),
        ("no_auth", lambda _: settle(_fail(
            "xmpp", cannot, "enable TLS (STARTTLS) and SCRAM or PLAIN on the server's client "
                            "port"))),
        ("connection_failed", lambda error: settle(_fail(
            "xmpp", f"cannot connect to {where}: {error}",
            "check [xmpp] host and port, and the server's TLS certificate"))),
        ("stream_error", lambda error: settle(_fail(
            "xmpp", f"the server closed the stream: {error['condition']} {error['text']}",
            "see the server's log"))),
        ("disconnected", lambda reason: settle(_fail(
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
            return _fail("xmpp", f"no session at {where} within {timeout:g} s",
                         "TLS or authentication stalled: see the server's log")
    finally:
        for event, handler in handlers:
            client.del_event_handler(event, handler)
        client.cancel_connection_attempt()
        if client.transport is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2.0)
        client.abort()


# -- 3. the providers ---------------------------------------------------------------------


def _app_name(kind: str, app: AppConfig) -> str:
    return f"{kind} {quote_key(app.id)}"


@dataclass(slots=True, frozen=True)
class ProviderCheck:
    """A provider's verdict, plus the clock offset its answer revealed."""

    result: CheckResult
    clock_offset: float | None = None


async def check_provider(app: AppConfig, timeout: float = DEFAULT_TIMEOUT) -> ProviderCheck:
    """One harmless request through the app's provider (:meth:`Provider.probe`)."""
    from .providers import create_provider

    name = _app_name(app.type, app)
    provider = None
    try:
        provider = create_provider(app)
        await provider.start()
        probe = await provider.probe(timeout)
    except ConfigError as exc:
        return ProviderCheck(_fail(name, f"{exc.key}: {exc.problem}",
                                   f"correct {exc.key} (see the credentials check)"))
    except MissingDependency as exc:
        return ProviderCheck(_fail(name, str(exc), f"pip install 'slixmpp-push[{exc.extra}]'"))
    except PushError as exc:
        return ProviderCheck(_fail(name, str(exc), "see docs/providers.md"))
    finally:
        if provider is not None:
            with contextlib.suppress(Exception):
                await provider.close()
    return ProviderCheck(CheckResult(name, probe.status, probe.detail, probe.fix),
                         probe.clock_offset)


# -- 4. credential files ------------------------------------------------------------------


def check_credentials(app: AppConfig, now: datetime.datetime | None = None
                      ) -> CheckResult | None:
    """The app's key, certificate or service account, read without connecting
    (None for console apps, which have none)."""
    now = now or datetime.datetime.now(datetime.UTC)
    name = _app_name("credentials", app)
    if app.type == "apns" and app.key_file:
        return _check_p8(name, app)
    if app.type == "apns" and app.cert_file:
        return _check_certificate(name, app, now)
    if app.type == "fcm" and app.service_account_file:
        return _check_service_account(name, app)
    return None


def _read(path: str) -> bytes | str:
    """The file's bytes, or why it cannot be read (a str)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        return exc.strerror or str(exc)


_READ_FIX = "make it readable by the service's user (chown, chmod 600)"


def _check_p8(name: str, app: AppConfig) -> CheckResult:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    assert app.key_file is not None
    path = Path(app.key_file)
    data = _read(app.key_file)
    if isinstance(data, str):
        return _fail(name, f"key_file {path}: cannot read: {data}", _READ_FIX)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return _fail(name, f"key_file {path.name} is not a PEM private key (.p8)",
                     "use the AuthKey_<key id>.p8 file from developer.apple.com > Keys, "
                     "unchanged (Apple lets you download it once: else create a new key)")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else \
            type(key).__name__.removeprefix("_")
        return _fail(name, f"key_file {path.name} holds a {kind} key; APNs keys are EC "
                           "P-256 (ES256)", "use the .p8 key from developer.apple.com > Keys")
    named = re.fullmatch(r"AuthKey_([A-Z0-9]{10})\.p8", path.name)
    if named and named[1] != app.key_id:
        return _warn(name, f"key_file is named {path.name}, but key_id is {app.key_id}",
                     f"key_id must be this key's id: Apple names the file "
                     f"AuthKey_<key id>.p8, so probably key_id = \"{named[1]}\"")
    return _pass(name, f"key_file {path.name}: an EC P-256 (ES256) key, key_id {app.key_id}, "
                       f"team_id {app.team_id}")


def _check_certificate(name: str, app: AppConfig, now: datetime.datetime) -> CheckResult:
    from cryptography import x509

    assert app.cert_file is not None
    path = Path(app.cert_file)
    data = _read(app.cert_file)
    if isinstance(data, str):
        return _fail(name, f"cert_file {path}: cannot read: {data}", _READ_FIX)
    renew = ("renew the APNs certificate (developer.apple.com > Certificates) and export it "
             "with its key as one PEM; or switch to token auth (key_file), which does not "
             "expire")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return _fail(name, f"cert_file {path.name} holds no PEM certificate",
                     "one PEM file with the certificate and its unencrypted private key "
                     "(openssl pkcs12 -in cert.p12 -out cert.pem -nodes)")
    try:
        ssl.create_default_context().load_cert_chain(app.cert_file)
    except (ssl.SSLError, OSError) as exc:
        return _fail(name, f"cert_file {path.name}: no private key that matches the "
                           f"certificate ({getattr(exc, 'reason', None) or exc})",
                     "put the certificate and its unencrypted private key in one PEM "
                     "(openssl pkcs12 -in cert.p12 -out cert.pem -nodes)")
    not_after = cert.not_valid_after_utc
    when = not_after.strftime("%Y-%m-%d %H:%M UTC")
    if not_after <= now:
        return _fail(name, f"cert_file {path.name} expired on {when}", renew)
    if cert.not_valid_before_utc > now:
        return _fail(name, f"cert_file {path.name} is not valid before "
                           f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                     "check this machine's clock, or wait")
    days = (not_after - now).days
    if days < CERT_WARN_DAYS:
        return _warn(name, f"cert_file {path.name} expires in {days} day(s), on {when}",
                     renew)
    bundle = _certificate_topic(cert)
    if bundle and bundle != app.topic:
        return _warn(name, f"cert_file {path.name} is for bundle id {bundle}, but topic is "
                           f"{app.topic}", f"topic must be the certificate's bundle id, "
                                           f"\"{bundle}\"")
    return _pass(name, f"cert_file {path.name}: certificate and key, valid until {when} "
                       f"({days} days)")


def _certificate_topic(cert: x509.Certificate) -> str | None:
    """The bundle id of an Apple push certificate (its subject's UID)."""
    from cryptography.x509.oid import NameOID

    values = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    value = values[0].value if values else None
    return value if isinstance(value, str) else None


def _check_service_account(name: str, app: AppConfig) -> CheckResult:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    assert app.service_account_file is not None
    path = Path(app.service_account_file)
    data = _read(app.service_account_file)
    if isinstance(data, str):
        return _fail(name, f"service_account_file {path}: cannot read: {data}", _READ_FIX)
    new_key = ("Firebase console > Project settings > Service accounts > Generate new "
               "private key, and point service_account_file at that file")
    try:
        account = json.loads(data)
    except ValueError:
        return _fail(name, f"service_account_file {path.name} is not JSON", new_key)
    if not isinstance(account, dict):
        return _fail(name, f"service_account_file {path.name} is not a service-account key",
                     new_key)
    if "project_info" in account:
        return _fail(name, f"service_account_file {path.name} is an Android app's "
                           "google-services.json, not a service-account key", new_key)
    if account.get("type") != "service_account":
        return _fail(name, f"service_account_file {path.name} is of type "
                           f"{account.get('type')!r}, not a service-account key", new_key)
    email = account.get("client_email")
    if not isinstance(email, str) or not email:
        return _fail(name, f"service_account_file {path.name} has no client_email", new_key)
    try:
        key = load_pem_private_key(str(account.get("private_key", "")).encode(), None)
    except (ValueError, TypeError):
        return _fail(name, f"service_account_file {path.name}: its private_key is not a PEM "
                           "private key", new_key)
    if not isinstance(key, rsa.RSAPrivateKey):
        return _fail(name, f"service_account_file {path.name}: its private_key is not RSA",
                     new_key)
    own = account.get("project_id")
    project = app.project_id or own
    if app.project_id and own and app.project_id != own:
        return _warn(name, f"project_id is {app.project_id}, but the service account "
                           f"{email} belongs to {own}",
                     "use a service account of the app's Firebase project (or grant this one "
                     "Firebase Cloud Messaging API Admin there)")
    return _pass(name, f"service account {email}, project {project}")


# -- 5. the store ---------------------------------------------------------------------------


def _store_locked(path: Path) -> bool:
    """Whether a process (a running ``serve``) holds the store's lock.

    Probed with a shared, non-blocking flock that is released at once.
    """
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the lock, if we got it
    return False


async def check_store(config: Config) -> CheckResult:
    """The store opens read-only (as ``devices list`` does, beside a running ``serve``)."""
    from .store import TinyDBStore

    path = Path(config.store)
    journal = path.with_name(path.name + ".journal")
    folder = path.parent
    files = [f for f in (path, journal) if f.exists()]
    if not files:
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            return _fail("store", f"no store at {path}, and its folder is not writable",
                         "let the service's user write the folder (chown)")
        return _warn("store", f"no store at {path} yet: serve has never run with this config",
                     "start serve once; if it runs, [appserver] store must name the same "
                     "file as its config")
    if not os.access(folder, os.W_OK | os.X_OK):
        return _fail("store", f"the folder {folder} is not writable (snapshots replace the "
                              "store there)", "let the service's user write it (chown)")
    for file in files:
        if not os.access(file, os.R_OK | os.W_OK):
            return _fail("store", f"{file} is not readable and writable",
                         "chown it to the service's user and chmod 600")
    store = TinyDBStore(path, read_only=True)
    try:
        await store.open()
        registrations = len(store)
        pending = len(store.table("pending"))
        by_app = store.count_by_app()
    except StoreError as exc:
        fix = ("restore the store from a backup (docs/deploy.md#backups)"
               if "schema" not in str(exc) else "run the release that wrote it")
        return _fail("store", f"cannot open: {exc}", fix)
    finally:
        await store.close()
    locked = _store_locked(path)
    counts = f"{registrations} registration(s), {pending} pending"
    use = "; in use by a running serve (fine: read without its lock)" if locked else ""
    loose = [f for f in files if stat.S_IMODE(f.stat().st_mode) & 0o077]
    if loose:
        mode = stat.S_IMODE(loose[0].stat().st_mode)
        return _warn("store", f"{path}: {counts}{use}; {loose[0].name} has mode {mode:04o}: "
                              "others may read device tokens and secrets",
                     f"chmod 600 {' '.join(str(f) for f in loose)} (serve does so when it "
                     "opens the store)")
    configured = {app.id for app in config.apps}
    orphans = {app: n for app, n in by_app.items() if app not in configured}
    if orphans:
        listed = ", ".join(f"{app} ({n})" for app, n in sorted(orphans.items()))
        return _warn("store", f"{path}: {counts}{use}; registrations of apps not in the "
                              f"config: {listed}",
                     "add those apps back under their provider ids, or remove the devices "
                     "(slixmpp-push devices remove NODE)")
    return _pass("store", f"{path}: {counts}{use}")


# -- 6. the clock -----------------------------------------------------------------------------


def check_clock(offsets: Sequence[tuple[str, float]], remote_apps: int) -> CheckResult:
    """Our clock against the providers' ``Date`` headers (``offsets``: (check, seconds
    the provider is ahead)); ``remote_apps``: how many APNs/FCM apps were probed."""
    if not offsets:
        if not remote_apps:
            return _pass("clock", "no APNs or FCM app: no provider clock to compare with")
        return _warn("clock", "no provider answered with a Date header: the clock was not "
                              "compared", "see the failed provider checks above")
    who, offset = max(offsets, key=lambda item: abs(item[1]))
    skew = abs(offset)
    if skew <= CLOCK_WARN:
        return _pass("clock", f"within {max(skew, 1.0):.0f} s of the providers' clocks "
                              f"(Date headers; the furthest: {who})")
    side = "behind" if offset > 0 else "ahead of"
    detail = f"this machine's clock is {skew:.0f} s {side} {who}'s (its Date header)"
    fix = ("synchronise the clock (timedatectl set-ntp true, or chrony): Apple refuses "
           "provider tokens older than 1 hour or from the future, and Google refuses "
           "service-account assertions outside a short window")
    if skew > CLOCK_FAIL:
        return _fail("clock", detail, fix)
    return _warn("clock", detail, fix)


# -- the runner ---------------------------------------------------------------------------


async def _guarded(name: str, check: Awaitable[T], crashed: Callable[[CheckResult], T]) -> T:
    """Await one check; a crash becomes a FAIL instead of ending the whole report."""
    try:
        return await check
    except Exception as exc:
        return crashed(_fail(name, f"the check itself crashed: {type(exc).__name__}: {exc}",
                             "please report this as a bug"))


def _as_is(result: CheckResult) -> CheckResult:
    return result


async def run_doctor(config_path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT,
                     *, allow_plaintext: bool = False) -> Report:
    """Every check; the network ones run concurrently, each within ``timeout``."""
    report = Report(str(config_path))
    loaded, config = check_config(config_path)
    report.checks.append(loaded)
    if config is None:
        report.config_loaded = False
        return report
    credentials = {app.id: check_credentials(app) for app in config.apps}
    xmpp_task = asyncio.ensure_future(_guarded(
        "xmpp", check_xmpp(config.xmpp, timeout, allow_plaintext=allow_plaintext), _as_is))
    store_task = asyncio.ensure_future(_guarded("store", check_store(config), _as_is))
    provider_tasks = [
        asyncio.ensure_future(_guarded(_app_name(app.type, app), check_provider(app, timeout),
                                       ProviderCheck))
        for app in config.apps
    ]
    report.checks.append(await xmpp_task)
    offsets: list[tuple[str, float]] = []
    for app, task in zip(config.apps, provider_tasks, strict=True):
        credential = credentials[app.id]
        if credential is not None:
            report.checks.append(credential)
        probe = await task
        report.checks.append(probe.result)
        if probe.clock_offset is not None:
            offsets.append((probe.result.name, probe.clock_offset))
    report.checks.append(await store_task)
    remote = sum(app.type in ("apns", "fcm") for app in config.apps)
    report.checks.append(check_clock(offsets, remote))
    return report
