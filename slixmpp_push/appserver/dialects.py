"""Registration over ad-hoc commands, in the dialects real clients speak.

=======================  =====================  ===============================
command node             clients                answer (result form fields)
=======================  =====================  ===============================
``register-device``      Siskin, Stork          ``node``, ``features``, ``max-payload-size``
``unregister-device``    Siskin, Stork          (none)
``register-push-fcm``    Conversations (p2)     ``jid``, ``node``, ``secret``
``register-push-apns``   p2 on iOS              ``jid``, ``node``, ``secret``
``unregister-push-*``    Conversations (p2)     (none)
``v1-register-push``     mod_push_appserver     ``jid``, ``node``, ``secret``
``v1-unregister-push``   mod_push_appserver     (none)
=======================  =====================  ===============================

A command executed with a submitted form completes at once; executed without
one, it answers with the form to fill in. Errors name the field at fault:
every field is at most 4096 bytes, and a device token must have the shape of
its app's tokens (APNs hex, FCM's alphabet and length: :mod:`slixmpp_push.limits`),
so that a token that can never work is refused here, not retried against
Apple or Google for a day. A new device beyond the account's limits is
refused with ``cancel/policy-violation``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slixmpp import JID, Iq
from slixmpp.exceptions import XMPPError
from slixmpp.plugins.xep_0004 import Form

from ..limits import MAX_FIELD_BYTES, quoted, token_problem, too_long
from ..models import Dialect, Registration
from ..xep_0357.stanza import NS_ENCRYPT, NS_ENCRYPT_AES_GCM, NS_JINGLE, NS_PRIORITY
from .registrations import RegistrationLimit

if TYPE_CHECKING:
    from .plugin import PushAppServer

#: What a Tigase-dialect client may ask for in <enable> (Siskin offers
#: encryption only when tigase:push:encrypt:0 is listed).
TIGASE_FEATURES = (NS_ENCRYPT, NS_ENCRYPT_AES_GCM, NS_PRIORITY, NS_JINGLE)
MAX_PAYLOAD_SIZE = 3000  # bytes of encrypted payload a Tigase server may send us

Values = dict[str, str]
Handler = Callable[["PushAppServer", JID, Values], Awaitable[list[tuple[str, Any]]]]


@dataclass(frozen=True, slots=True)
class Command:
    node: str
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    run: Handler


def _bad_request(text: str) -> XMPPError:
    return XMPPError("bad-request", text=text, etype="modify")


def _require(values: Values, *names: str) -> list[str]:
    missing = [name for name in names if not values.get(name)]
    if missing:
        raise _bad_request(f"missing required field '{missing[0]}'")
    return [values[name] for name in names]


def _check_token(fmt: str, field: str, token: str) -> None:
    problem = token_problem(fmt, token)
    if problem is not None:
        raise _bad_request(f"field '{field}': {problem}")


def _app_for_format(server: PushAppServer, fmt: str, asked: str) -> str:
    app = server.app_for_format(fmt)
    if app is None:
        raise XMPPError("item-not-found", etype="cancel",
                        text=f"this app server has no {fmt.upper()} app for {asked}")
    return app


def _credentials(server: PushAppServer, registration: Registration) -> list[tuple[str, Any]]:
    return [("jid", server.xmpp.boundjid.bare), ("node", registration.node),
            ("secret", registration.secret)]


# -- Tigase: register-device / unregister-device ----------------------------------
async def _tigase_register(server: PushAppServer, sender: JID, values: Values,
                           ) -> list[tuple[str, Any]]:
    provider, token = _require(values, "provider", "device-token")
    if provider not in server.app_index:
        raise XMPPError("item-not-found", etype="cancel",
                        text=f"field 'provider': no app with provider id {quoted(provider)}")
    fmt = server.app_index[provider].request_format
    second = values.get("device-second-token") or None
    _check_token(fmt, "device-token", token)
    if second is not None:  # Siskin's PushKit (VoIP) token: the same shape
        _check_token(fmt, "device-second-token", second)
    registration = await server.registrations.register(
        account=sender.bare, domain=sender.domain, app=provider, token=token,
        dialect=Dialect.TIGASE, with_secret=False,
        voip_token=second)
    server.registered(registration)
    return [("node", registration.node), ("features", list(TIGASE_FEATURES)),
            ("max-payload-size", str(MAX_PAYLOAD_SIZE))]


async def _tigase_unregister(server: PushAppServer, sender: JID, values: Values,
                             ) -> list[tuple[str, Any]]:
    provider, token = _require(values, "provider", "device-token")
    await server.unregister(sender, provider, token)
    return []


# -- p2 (Conversations): register-push-fcm / -apns ---------------------------------
def _p2_device(values: Values) -> tuple[str, str | None]:
    device = values.get("android-id") or values.get("device-id")
    if not device:
        raise _bad_request("missing required field 'android-id'")
    channel = values.get("muc") or values.get("channel") or None
    if channel is not None:
        try:
            channel = JID(channel).bare
        except Exception:
            raise _bad_request(f"field 'muc' is not a JID: {quoted(channel)}") from None
    return device, channel


def _p2_register(fmt: str) -> Handler:
    async def register(server: PushAppServer, sender: JID, values: Values,
                       ) -> list[tuple[str, Any]]:
        (token,) = _require(values, "token")
        device, channel = _p2_device(values)
        app = _app_for_format(server, fmt, f"register-push-{fmt}")
        _check_token(fmt, "token", token)
        registration = await server.registrations.register(
            account=sender.bare, domain=sender.domain, app=app, token=token,
            dialect=Dialect.P2, with_secret=True, device_id=device, channel=channel)
        server.registered(registration)
        return _credentials(server, registration)
    return register


def _p2_unregister(fmt: str) -> Handler:
    async def unregister(server: PushAppServer, sender: JID, values: Values,
                         ) -> list[tuple[str, Any]]:
        device, channel = _p2_device(values)
        app = _app_for_format(server, fmt, f"unregister-push-{fmt}")
        await server.unregister(sender, app, device, channel)
        return []
    return unregister


# -- mod_push_appserver: v1-register-push / v1-unregister-push ----------------------
def _v1_app(server: PushAppServer, values: Values) -> str:
    kind = values.get("type")
    if kind not in ("apns", "fcm"):
        raise _bad_request("field 'type' must be 'apns' or 'fcm'")
    return _app_for_format(server, kind, "v1-register-push")


async def _v1_register(server: PushAppServer, sender: JID, values: Values,
                       ) -> list[tuple[str, Any]]:
    device, token = _require(values, "node", "token")
    app = _v1_app(server, values)
    _check_token(values["type"], "token", token)
    registration = await server.registrations.register(
        account=sender.bare, domain=sender.domain, app=app, token=token,
        dialect=Dialect.V1, with_secret=True, device_id=device)
    server.registered(registration)
    return _credentials(server, registration)


async def _v1_unregister(server: PushAppServer, sender: JID, values: Values,
                         ) -> list[tuple[str, Any]]:
    (device,) = _require(values, "node")
    await server.unregister(sender, _v1_app(server, values), device)
    return []


COMMANDS = (
    Command("register-device", "Register a device", ("provider", "device-token"),
            ("device-second-token",), _tigase_register),
    Command("unregister-device", "Unregister a device", ("provider", "device-token"), (),
            _tigase_unregister),
    Command("register-push-fcm", "Register an FCM device", ("token", "android-id"),
            ("muc", "channel"), _p2_register("fcm")),
    Command("register-push-apns", "Register an APNs device", ("token", "android-id"),
            ("muc", "channel"), _p2_register("apns")),
    Command("unregister-push-fcm", "Unregister an FCM device", ("android-id",),
            ("muc", "channel"), _p2_unregister("fcm")),
    Command("unregister-push-apns", "Unregister an APNs device", ("android-id",),
            ("muc", "channel"), _p2_unregister("apns")),
    Command("v1-register-push", "Register a device (v1)", ("type", "node", "token"), (),
            _v1_register),
    Command("v1-unregister-push", "Unregister a device (v1)", ("type", "node"), (),
            _v1_unregister),
)


async def run_command(command: Command, server: PushAppServer, sender: JID, values: Values,
                      ) -> list[tuple[str, Any]]:
    """Run ``command`` on a submitted form: fields bounded on the way in, the
    account's registration limits answered as an XMPP error on the way out."""
    for var, value in values.items():
        if too_long(value):
            raise _bad_request(f"field {quoted(var)}: longer than {MAX_FIELD_BYTES} bytes")
    try:
        return await command.run(server, sender, values)
    except RegistrationLimit as exc:
        raise XMPPError("policy-violation", etype="cancel", text=str(exc)) from None


def submitted_values(iq: Iq) -> Values | None:
    """The submitted form of a command request, as ``var → first value``."""
    command = iq["command"]
    if command.xml.find("{jabber:x:data}x") is None:
        return None
    form: Form = command["form"]
    if form["type"] not in ("submit", ""):
        return None
    values: Values = {}
    for var, value in form.get_values().items():
        if isinstance(value, list):
            value = value[0] if value else ""
        values[var] = "" if value is None else str(value)
    return values


def empty_form(server: PushAppServer, command: Command) -> Form:
    form: Form = server.xmpp["xep_0004"].make_form(ftype="form", title=command.name)
    for var in command.required:
        form.add_field(var=var, ftype="text-single", required=True)
    for var in command.optional:
        form.add_field(var=var, ftype="text-single")
    return form


def result_form(server: PushAppServer, fields: list[tuple[str, Any]]) -> Form | None:
    if not fields:
        return None
    form: Form = server.xmpp["xep_0004"].make_form(ftype="result")
    for var, value in fields:
        if isinstance(value, list):
            form.add_field(var=var, ftype="list-multi", value=value)
        else:
            form.add_field(var=var, value=value)
    return form
