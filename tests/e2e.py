"""Helpers for end-to-end tests: our app server on a real XMPP server, and
device-side clients speaking each registration dialect's exact wire protocol
(raw XML, so the test does not depend on our own client code)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fakes.fake_fcm import FakeFcm
from fakes.tls import TestCA
from servers import Account, Connections
from slixmpp import ClientXMPP

import slixmpp_push  # noqa: F401  (registers push_appserver)
from slixmpp_push import AppConfig, DeliveryPolicy, TinyDBStore
from slixmpp_push.appserver import PublishOutcome, PushAppServer
from slixmpp_push.devserver import DevServer
from slixmpp_push.providers.base import Provider

TOPIC = "org.example.chat"
APNS_APP = "tigase:messenger:apns:1"
FCM_APP = "fcm-xmpp-api"
MONAL_MODULE = "monalProdiOS"
KEY_ID = "TESTKEY123"
TEAM_ID = "TEAM123456"
COMMANDS = "http://jabber.org/protocol/commands"
STANDARD_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"


def component_toml(server: DevServer, folder: Path) -> str:
    """The ``[xmpp]`` lines of a ``serve`` config for ``server``'s component (writes its
    secret into ``folder/component.secret``); more ``[xmpp]`` keys may follow."""
    (folder / "component.secret").write_text(server.component.secret + "\n")
    return (f'[xmpp]\nmode = "component"\njid = "{server.component.jid}"\n'
            f'host = "{server.host}"\nport = {server.component_port}\n'
            f'secret_file = "component.secret"\n')


def apns_app_toml(key: object, endpoint: str, ca_file: object) -> str:
    """The ``[apps."…"]`` table of a ``push.toml`` for the APNs app pointed at a fake
    (the config-file twin of :func:`apns_app`), for tests that run ``serve``."""
    return (f'[apps."{APNS_APP}"]\ntype = "apns"\ntopic = "{TOPIC}"\n'
            f'environment = "sandbox"\nkey_file = "{key}"\nkey_id = "{KEY_ID}"\n'
            f'team_id = "{TEAM_ID}"\nendpoint = "{endpoint}"\nca_file = "{ca_file}"\n')


def apns_app(endpoint: str, ca: TestCA, key: Path) -> AppConfig:
    return AppConfig(id=APNS_APP, type="apns", topic=TOPIC, key_file=str(key), key_id=KEY_ID,
                     team_id=TEAM_ID, endpoint=endpoint, ca_file=str(ca.ca_file),
                     monal_modules=(MONAL_MODULE,), timeout=5.0, max_connections=1)


def fcm_app(fake: FakeFcm, folder: Path, project: str = "push-e2e") -> AppConfig:
    """An FCM app configured as an operator would: a service-account key file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = {
        "type": "service_account", "project_id": project, "private_key_id": "k1",
        "private_key": key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
        "client_email": f"push@{project}.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": fake.token_url,
    }
    path = folder / "service-account.json"
    path.write_text(json.dumps(account))
    return AppConfig(id=FCM_APP, type="fcm", service_account_file=str(path),
                     endpoint=fake.base_url, ca_file=str(fake.ca_file), timeout=5.0)


FAST_RETRIES = DeliveryPolicy(reply_within=2.0, retry_base=0.2, retry_max_delay=0.5,
                              rate_burst=1000, rate_interval=0.0)


class AppServer:
    """push_appserver running as the server's push.localhost component."""

    def __init__(self, plugin: PushAppServer) -> None:
        self.plugin = plugin
        self.published: list[PublishOutcome] = []
        self.strays: list[PublishOutcome] = []
        self._known_nodes = {registration.node for registration in plugin.store.registrations()}
        plugin.xmpp.add_event_handler("push_registered",
                                      lambda registration: self._known_nodes.add(registration.node))
        plugin.xmpp.add_event_handler("push_published", self._on_published)

    def _on_published(self, outcome: PublishOutcome) -> None:
        # The server is shared by the whole session, so a late publish for an account
        # of an earlier test (a smacks hibernation ending, say) can reach this test's
        # component: a node it never knew, refused. That one is not this test's.
        if outcome.answer == "item-not-found" and outcome.node not in self._known_nodes:
            self.strays.append(outcome)
        else:
            self.published.append(outcome)

    @property
    def jid(self) -> str:
        return str(self.plugin.xmpp.boundjid.bare)

    async def wait_published(self, count: int, timeout: float = 10.0) -> list[PublishOutcome]:
        deadline = time.monotonic() + timeout
        while len(self.published) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.published)} publish(es) seen, wanted {count}: "
                                     f"{self.published}")
            await asyncio.sleep(0.02)
        return self.published


@contextlib.asynccontextmanager
async def running_appserver(xmpp: Connections, server: DevServer, apps: Sequence[AppConfig],
                            store_path: Path, *, policy: DeliveryPolicy = FAST_RETRIES,
                            providers: dict[str, Provider] | None = None,
                            trusted: Sequence[str] = (),
                            plugin_config: dict[str, Any] | None = None,
                            ) -> AsyncIterator[AppServer]:
    config: dict[str, Any] = {"apps": list(apps), "store": TinyDBStore(store_path),
                              "delivery": policy, "trusted_publishers": tuple(trusted),
                              **(plugin_config or {})}
    if providers:
        config["providers"] = providers
    component = await xmpp.component(
        server, plugins=("xep_0030", "xep_0004", "xep_0050", "push_appserver"),
        plugin_config={"push_appserver": config})
    plugin: PushAppServer = component.plugin["push_appserver"]
    await plugin.start()
    try:
        yield AppServer(plugin)
    finally:
        await plugin.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(component.disconnect(wait=1.0), 3)


# -- the device side, raw XML -----------------------------------------------------------
def _form(fields: dict[str, str], form_type: str | None = None) -> str:
    parts = []
    if form_type:
        parts.append(f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>")
    parts += [f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items()]
    return f"<x xmlns='jabber:x:data' type='submit'>{''.join(parts)}</x>"


async def execute(client: ClientXMPP, to: str, node: str, fields: dict[str, str],
                  ) -> dict[str, list[str]]:
    """Execute an ad-hoc command with a submitted form; the result form's values."""
    iq = client.make_iq_set(ito=to)
    iq.append(ET.fromstring(
        f"<command xmlns='{COMMANDS}' node='{node}' action='execute'>{_form(fields)}</command>"))
    reply = await iq.send(timeout=10)
    values: dict[str, list[str]] = {}
    for field in reply.xml.iter("{jabber:x:data}field"):
        values[field.get("var", "")] = [v.text or "" for v in
                                         field.iter("{jabber:x:data}value")]
    return values


async def enable(client: ClientXMPP, appserver: str, node: str,
                 options: dict[str, str] | None = None, extensions: str = "") -> None:
    """XEP-0357 enable at the account's own server."""
    form = _form(options, STANDARD_OPTIONS) if options else ""
    iq = client.make_iq_set()
    iq.append(ET.fromstring(f"<enable xmlns='urn:xmpp:push:0' jid='{appserver}' node='{node}'>"
                            f"{form}{extensions}</enable>"))
    await iq.send(timeout=10)


async def send_chat(xmpp: Connections, server: DevServer, sender: Account, to: Account,
                    body: str = "hello", count: int = 1) -> ClientXMPP:
    client = await xmpp.client(server, sender, resource="sender")
    for i in range(count):
        client.send_message(mto=to.jid, mbody=f"{body} {i}" if count > 1 else body,
                            mtype="chat")
    return client
