"""``push_appserver``: the XEP-0357 app server as a slixmpp plugin.

Works on a :class:`~slixmpp.ComponentXMPP` (the usual deployment, an XEP-0114
component such as ``push.example.org``) or a :class:`~slixmpp.ClientXMPP`.

Config keys (``register_plugin('push_appserver', {...})``):

``apps``
    Sequence of :class:`~slixmpp_push.config.AppConfig`: the APNs/FCM/console
    apps served, each under its provider id.
``providers``
    Optional ``{app id: Provider}`` used instead of building providers.
``store``
    A :class:`~slixmpp_push.store.Store`, or a file path for the default
    TinyDB store (default ``slixmpp-push.json`` in the working folder).
``allowed_domains``
    Domains whose accounts may register and whose servers may publish for
    the stateless (Monal) dialect. Default: the component's parent domain
    (``example.org`` for ``push.example.org``), or a client's own domain.
    ``"*"`` allows every domain.
``delivery``
    A :class:`~slixmpp_push.appserver.delivery.DeliveryPolicy`.
``remote_disable``
    Tell an account's server when we drop its registration (default True).
``shared``
    A :class:`~slixmpp_push.store.shared.SharedState` when several instances serve
    from one PostgreSQL store at once (``[appserver] instances = "all-active"``):
    pending notifications are leased and the rate limit is one budget per node.
    The plugin opens it after the store and closes it before.
``metrics``
    A :class:`~slixmpp_push.metrics.Metrics` to report to (default: a new one,
    available as ``plugin.metrics``).
``trusted_publishers``
    Bare JIDs besides the registration's own server that may publish to any
    node (a paging bot publishing as an XEP-0357 publisher); the node's secret
    is still required. Only their publishes may carry a page form
    (:class:`~slixmpp_push.xep_0357.publish.PageFields`: a title, a critical or
    time-sensitive priority, a collapse key), and such a page publish arms the
    echo guard for the page's chat message (``echo_window``); anyone else's page
    form is ignored.
``echo_window``
    Seconds during which, after a trusted publisher's page, the user's server's
    publish for that node is taken for the echo of the page's chat message and not
    pushed (default 15; 0 turns it off). See :mod:`~slixmpp_push.appserver.echoes`.
``limits``
    A :class:`~slixmpp_push.config.RegistrationLimits`: devices per account (default
    20) and group-chat registrations per device (default 100). A new registration
    beyond them is refused with ``cancel/policy-violation``.
``admins``
    Bare JIDs allowed to run ``send-notification`` (administrator notices,
    :mod:`~slixmpp_push.appserver.notices`); the command is offered only when set,
    and listed (disco#items of the commands node) only to them.

Ad-hoc commands: the registration dialects (:mod:`~slixmpp_push.appserver.dialects`),
``send-notification`` for admins, and ``test-push`` ("Send me a test notification",
:mod:`~slixmpp_push.appserver.selftest`): any account of a served domain sends a
test notification to each of its registered devices and is told, per device,
what the provider answered and when its server last published to the node
(``plugin.last_publish``, node → time, kept since ``plugin.started_at``).

A registration whose app is no longer configured is removed at its next publish
(answered ``cancel/item-not-found``, as for an unknown node: the user's server drops it,
and the client registers anew when it enables push again) or notification; start-up
warns about such registrations.

Events: ``push_registered`` and ``push_unregistered`` (a Registration; also when
its app is no longer configured),
``push_dead_token`` (a Registration), ``push_published`` (a PublishOutcome),
``push_test_sent`` (a :class:`~slixmpp_push.appserver.selftest.SelfTestReport`).

Log lines never carry a token-shaped node (Monal's node is its APNs token) in
full: see :func:`~slixmpp_push.logs.loggable_node`. Refused publishes and
commands are bad input anyone can send at any rate: they are counted in
metrics (``publishes_total``, ``commands_total``) and their log lines sampled
per kind (:class:`~slixmpp_push.logs.LogSampler`), so a flood costs no more
than good traffic.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

from slixmpp import JID, ComponentXMPP, Iq
from slixmpp.exceptions import XMPPError
from slixmpp.plugins.base import BasePlugin
from slixmpp.stanza import Error, Message
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import MatchXPath

from ..config import AppConfig
from ..errors import DeliveryResult, StoreError
from ..limits import quoted, token_problem
from ..logs import LogSampler, loggable_node
from ..metrics import Metrics
from ..models import Dialect, Notification, Registration
from ..providers import Provider, create_provider
from ..store import DEAD_TOKENS, REGISTRATIONS, Store, create_store
from ..store.shared import SharedState
from ..xep_0357.publish import PUBLISH_PATH, MalformedPublish, parse_publish
from ..xep_0357.stanza import NS, register_stanzas
from .adhoc import COMMANDS_NS, withdraw_command
from .delivery import Delivery, DeliveryPolicy, QueueFull, Submitted
from .dialects import COMMANDS, Command, empty_form, result_form, run_command, submitted_values
from .echoes import EchoGuard
from .fastpath import PublishFastPath
from .notices import register_notice_command, withdraw_notice_command
from .registrations import Registrations
from .selftest import register_selftest_command, withdraw_selftest_command

log = logging.getLogger(__name__)

_STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
MONAL_MODULE_OPTION = "pushModule"
#: The text of the 'wait' error answered while the store cannot write.
STORE_TROUBLE = "the app server cannot store %s right now (try again later)"


@dataclass(slots=True, frozen=True)
class PublishOutcome:
    """How one publish was answered (for events, logs and metrics)."""

    node: str
    publisher: str
    answer: str  # "result" or the error condition
    submitted: Submitted | None
    seconds: float


class PushAppServer(BasePlugin):
    """XEP-0357 app server: registers devices, answers publishes, delivers pushes."""

    name = "push_appserver"
    description = "XEP-0357: Push Notifications app server"
    dependencies = {"xep_0004", "xep_0030", "xep_0050"}
    default_config = {
        "apps": (),
        "providers": None,
        "store": None,
        "allowed_domains": None,
        "delivery": None,
        "remote_disable": True,
        "metrics": None,
        "admins": (),
        "trusted_publishers": (),
        "echo_window": 15.0,
        "limits": None,
    }

    # -- life cycle -------------------------------------------------------------
    def plugin_init(self) -> None:
        register_stanzas()
        # slixmpp's Error knows RFC 3920's conditions: without RFC 6120's
        # policy-violation (a registration past the account's limit) it would
        # send feature-not-implemented instead.
        Error.conditions.add("policy-violation")
        apps: Sequence[AppConfig] = self.config.get("apps") or ()
        self.app_index: dict[str, AppConfig] = {app.id: app for app in apps}
        store = self.config.get("store")
        if store is None or isinstance(store, str):
            store = create_store(store or "slixmpp-push.json")
        self.store: Store = store
        self.registrations = Registrations(self.store, self.config.get("limits"))
        self.providers: dict[str, Provider] = dict(self.config.get("providers") or {})
        for app in apps:
            if app.id not in self.providers:
                self.providers[app.id] = create_provider(app)
        for provider in self.providers.values():
            self.app_index.setdefault(provider.id, provider.app)
        self.metrics: Metrics = self.config.get("metrics") or Metrics()
        self.metrics.watch_registrations(self.store.count_by_app)
        self.metrics.watch_store(self.store.status)
        self.echoes = EchoGuard()
        # Refused publishes and commands: sampled per kind, counted in metrics, so
        # that a flood of bad input costs no log line per stanza.
        self.refusals = LogSampler(log)
        # Several active instances on one database: what they decide together.
        self.shared: SharedState | None = self.config.get("shared")
        self.delivery = Delivery(self.store, self.providers,
                                 self.config.get("delivery") or DeliveryPolicy(),
                                 self._on_dead_token, self.metrics, shared=self.shared)
        self._started: asyncio.Future[None] | None = None
        # When each node was last published to by its account's server (test-push).
        self.last_publish: dict[str, float] = {}
        self._publishers: dict[str, JID] = {}  # see _publisher_jid
        self.started_at = time.time()
        self._component = isinstance(self.xmpp, ComponentXMPP)
        self.xmpp.register_handler(CoroutineCallback(
            "push_appserver publish", MatchXPath(f"{{{self.xmpp.default_ns}}}iq/{PUBLISH_PATH}"),
            self._on_publish_stanza))
        # Component streams: publishes skip slixmpp's stanza objects (fastpath.py).
        self.fast_path: PublishFastPath | None = None
        if self._component:
            assert isinstance(self.xmpp, ComponentXMPP)
            self.fast_path = PublishFastPath(self.xmpp, self._on_publish)
            self.fast_path.install()
            self.xmpp.add_filter("out", self._fix_error_namespace)
        self.xmpp.add_event_handler("session_start", self._on_session_start)
        self.xmpp.add_event_handler("disconnected", self._on_disconnected)
        self._advertised = False
        if self.xmpp.session_bind_event.is_set():
            self._advertise()

    def plugin_end(self) -> None:
        self.xmpp.remove_handler("push_appserver publish")
        if self.fast_path is not None:
            self.fast_path.uninstall()
        if self._component:
            self.xmpp.del_filter("out", self._fix_error_namespace)
        self.xmpp.del_event_handler("session_start", self._on_session_start)
        self.xmpp.del_event_handler("disconnected", self._on_disconnected)
        if self._advertised:
            self._withdraw()

    def session_bind(self, jid: JID) -> None:
        # slixmpp calls this before plugin_init when the stream is already bound.
        if "app_index" in self.__dict__:
            self._advertise()

    def _advertise(self) -> None:
        if self._advertised:
            return
        self._advertised = True
        disco = self.xmpp["xep_0030"]
        disco.add_identity(category="pubsub", itype="push", name="Push app server")
        for feature in self._features():
            disco.add_feature(feature)
        for command in COMMANDS:
            self.xmpp["xep_0050"].add_command(
                node=command.node, name=command.name, handler=self._command_handler(command))
        register_notice_command(self)
        register_selftest_command(self)

    def _withdraw(self) -> None:
        """Undo _advertise (xep_0050 has no del_command: undo what add_command did)."""
        self._advertised = False
        disco = self.xmpp["xep_0030"]
        adhoc = self.xmpp["xep_0050"]
        disco.del_identity(category="pubsub", itype="push", name="Push app server")
        for feature in self._features():
            disco.del_feature(feature=feature)
        jid = self.xmpp.boundjid
        for command in COMMANDS:
            withdraw_command(self, command.node, command.name)
        withdraw_notice_command(self)
        withdraw_selftest_command(self)
        if not any(key[0] == jid.full for key in adhoc.commands):
            disco.del_identity(jid=jid, node=COMMANDS_NS, category="automation",
                               itype="command-list", name="Ad-Hoc commands")
            disco.del_feature(jid=jid, feature=COMMANDS_NS)

    def _features(self) -> list[str]:
        return [NS, *self.app_index]

    async def start(self) -> None:
        """Open the store, start the providers, resume pending notifications.

        Called on the first session start; call it yourself to fail fast
        (bad credentials, unreadable store) before connecting.
        """
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        await self.store.open()
        for provider in self.providers.values():
            await provider.start()
            if provider.app.cert_file:
                self.metrics.watch_certificate(provider.id, provider.app.cert_file)
        self._warn_unserved()
        if self.shared is not None:
            await self.shared.open()
        await self.delivery.start()
        # The loaded registrations live as long as the process: move them out of
        # the collector's reach, or each full collection walks them all (21 ms at
        # 10k, 61 ms at 100k: the latency spikes seen in benchmarks).
        gc.collect()
        gc.freeze()
        log.info("push app server ready: %d registration(s), apps %s", len(self.store),
                 ", ".join(self.app_index) or "none")

    def _warn_unserved(self) -> None:
        unserved = {app: count for app, count in self.store.count_by_app().items()
                    if app not in self.providers}
        if unserved:
            log.warning("registrations of apps not in the configuration: %s; each is removed "
                        "at its next publish (answered item-not-found). Keep them: put the "
                        "app back under that provider id",
                        ", ".join(f"{app} ({count})" for app, count in sorted(unserved.items())))

    async def stop(self) -> None:
        """Stop delivering, close the providers and the store (pending stays stored)."""
        if self._started is None:
            return
        await self.start()
        await self.delivery.stop()
        for provider in self.providers.values():
            try:
                await provider.close()
            except Exception:
                log.exception("closing provider %s failed", provider.id)
        if self.shared is not None:
            await self.shared.close()  # its leases go first: the others take over at once
        await self.store.close()
        self._started = None

    async def _on_session_start(self, _event: Any) -> None:
        self.metrics.set_connected(True)
        await self.start()

    def _on_disconnected(self, _event: Any) -> None:
        self.metrics.set_connected(False)

    # -- queries used by the dialects and the API ----------------------------------------
    @property
    def allowed(self) -> frozenset[str]:
        configured = self.config.get("allowed_domains")
        if configured:
            return frozenset(configured)
        domain = self.xmpp.boundjid.domain
        if self._component and "." in domain:
            domain = domain.split(".", 1)[1]
        return frozenset({domain})

    def domain_allowed(self, domain: str) -> bool:
        allowed = self.allowed
        return "*" in allowed or domain in allowed

    def app_for_format(self, fmt: str) -> str | None:
        """The first configured app whose requests have ``fmt`` ("apns" or "fcm")."""
        for app in self.app_index.values():
            if app.request_format == fmt:
                return app.id
        return None

    def registered(self, registration: Registration) -> None:
        log.info("registered node %s for %s (%s, %s)", loggable_node(registration.node),
                 registration.account, registration.dialect.value, registration.app)
        self.xmpp.event("push_registered", registration)

    async def unregister(self, sender: JID, app: str, device: str,
                         channel: str | None = None) -> Registration:
        removed = await self.registrations.unregister(sender.bare, app, device, channel)
        if removed is None:
            raise XMPPError("item-not-found", etype="cancel",
                            text="no such registration for this account")
        await self.delivery.drop(removed.node)
        self.last_publish.pop(removed.node, None)
        log.info("unregistered node %s of %s", loggable_node(removed.node), removed.account)
        self.xmpp.event("push_unregistered", removed)
        return removed

    def expect_echo(self, node: str, sender: str, window: float) -> None:
        """Do not push the next publish for ``node`` within ``window`` seconds: it will be
        the user's server repeating a push just sent (a page's chat message to an offline
        account; see :mod:`~slixmpp_push.appserver.echoes`)."""
        self.echoes.expect(node, sender, window)

    async def notify(self, registration: Registration, notification: Notification,
                     ) -> Submitted:
        """Deliver a notification to one registration from Python (pager, admin)."""
        if self._started is None or not self._started.done():
            await self.start()
        submitted = await self.delivery.submit(registration, notification, inline=True)
        if submitted is Submitted.APP_REMOVED:
            await self._drop_unserved(registration)
        return submitted

    # -- ad-hoc commands --------------------------------------------------------------
    def _command_handler(self, command: Command) -> Any:
        async def start(iq: Iq, session: dict[str, Any]) -> dict[str, Any]:
            values = submitted_values(iq)
            if values is None:
                session["payload"] = empty_form(self, command)
                session["next"] = complete
                session["has_next"] = False
                return session
            return await complete(iq["command"]["form"], session, values)

        async def complete(form: Any, session: dict[str, Any],
                           values: dict[str, str] | None = None) -> dict[str, Any]:
            try:
                answer = await run(form, session, values)
            except XMPPError as error:
                self.metrics.command_answered(command.node, error.condition)
                raise
            except BaseException:
                self.metrics.command_answered(command.node, "undefined-condition")
                raise
            finally:
                # After the work, however long it took (xep_0050 keeps a
                # completed session forever otherwise).
                self._expire_session(session)
            self.metrics.command_answered(command.node, "completed")
            return answer

        async def run(form: Any, session: dict[str, Any],
                      values: dict[str, str] | None) -> dict[str, Any]:
            if values is None:
                # A later step: xep_0050 passes the payloads, a list (maybe empty).
                if isinstance(form, list):
                    form = next((f for f in form if hasattr(f, "get_values")), None)
                raw = form.get_values() if form is not None else {}
                values = {k: str(v[0] if isinstance(v, list) and v else v or "")
                          for k, v in raw.items()}
            sender: JID = session["from"]
            try:
                if not sender.user or not self.domain_allowed(sender.domain):
                    raise XMPPError("forbidden", etype="auth",
                                    text=f"accounts of {sender.domain} may not register here")
                await self.start()
                fields = await run_command(command, self, sender, values)
            except StoreError:
                # Transient (a full disk): 'wait', never 'cancel', so that the client
                # may retry; logged once by the store (StoreStatus), not per request.
                raise XMPPError("internal-server-error", etype="wait",
                                text=STORE_TROUBLE % "registrations") from None
            except XMPPError as error:
                level = logging.WARNING if error.condition == "policy-violation" \
                    else logging.INFO  # an account at its limit may need a higher one
                self.refusals.log(level, f"{command.node} {error.condition}",
                                  "%s from %s refused: %s (%s)", command.node, sender.bare,
                                  error.condition, error.text)
                raise
            session["payload"] = result_form(self, fields)
            session["next"] = None
            session["has_next"] = False
            return session

        return start

    def _expire_session(self, session: dict[str, Any]) -> None:
        # xep_0050 keeps a completed session forever; drop it once answered.
        sessions = self.xmpp["xep_0050"].sessions
        asyncio.get_running_loop().call_later(1.0, sessions.pop, session["id"], None)

    # -- the publish hot path ------------------------------------------------------------
    async def _on_publish_stanza(self, iq: StanzaBase) -> None:
        await self._on_publish(iq.xml)

    async def _on_publish(self, xml: Element) -> None:
        began = time.perf_counter()
        kind = xml.get("type")
        if kind in ("result", "error"):
            return  # never answer an answer (RFC 6120 8.2.3): two peers could loop
        publisher = xml.get("from", "")
        if kind != "set":
            self._reply_error(xml, "modify", "bad-request", "a publish is an iq of type set")
            self.metrics.published("unknown", "bad-request")
            return
        submitted: Submitted | None = None
        node = ""
        dialect = "unknown"
        try:
            publish = parse_publish(xml)
            node = publish.node
            if self._started is None or not self._started.done():
                await self.start()
            sender = self._publisher_jid(publisher)
            trusted = sender.bare in self.config.get("trusted_publishers", ())
            if self.shared is not None and self.store.get(node) is None \
                    and MONAL_MODULE_OPTION not in publish.notification.publish_options:
                # Registered through another instance a moment ago? Ask the database.
                await self.store.reread(REGISTRATIONS, node)
            registration = self._authorize(sender, trusted, publish.node,
                                           publish.notification)
            dialect = registration.dialect.value
            # A page form counts from a trusted publisher only (a pager): a user's
            # server may not make a push critical or title it. Ignored, not refused.
            page = publish.page if trusted else None
            if page is not None:
                page.apply(publish.notification)  # the page itself: never an echo
            if page is None and self.echoes and self.echoes.is_echo(registration.node,
                                                                   publish.notification):
                # The page's own push is on the device already (see echoes.py).
                self.metrics.echoes_suppressed.labels(registration.app).inc()
            else:
                submitted = await self.delivery.submit(registration, publish.notification)
                if submitted is Submitted.DEAD_TOKEN:
                    raise XMPPError("item-not-found", etype="cancel",
                                    text="device token expired")
                if submitted is Submitted.APP_REMOVED:
                    await self._drop_unserved(registration)
                    raise XMPPError("item-not-found", etype="cancel",
                                    text=f"app {quoted(registration.app)} is not served here "
                                         "any more")
                if submitted is Submitted.REJECTED:
                    raise XMPPError("internal-server-error", etype="wait",
                                    text="the push provider refused the notification")
                if page is not None and submitted.pushed:
                    # Armed before the result goes back: the pager sends the page's chat
                    # message once answered, and the account's server publishes for it.
                    self.echoes.expect(registration.node, sender.bare,
                                       self.config.get("echo_window", 15.0))
            self._reply_result(xml)
            answer = "result"
        except XMPPError as error:
            answer = error.condition
            self.refusals.log(logging.INFO, f"publish {answer}",
                              "publish to node %s from %s refused: %s (%s)",
                              loggable_node(node) or "?", publisher, answer, error.text)
            self._reply_error(xml, error.etype, error.condition, error.text)
        except MalformedPublish as error:
            answer = "bad-request"
            self.refusals.log(logging.INFO, "publish malformed", "malformed publish from %s: %s",
                              publisher, error)
            self._reply_error(xml, "modify", "bad-request", str(error))
        except QueueFull:
            answer = "internal-server-error"
            self._reply_error(xml, "wait", "internal-server-error", "push queue is full")
        except StoreError:  # a full disk: logged once by the store, not per publish
            answer = "internal-server-error"
            self._reply_error(xml, "wait", "internal-server-error",
                              STORE_TROUBLE % "notifications")
        except Exception:  # a bug: never acknowledge what we did not keep
            log.exception("publish to node %s failed", loggable_node(node))
            answer = "internal-server-error"
            self._reply_error(xml, "wait", "internal-server-error", None)
        outcome = PublishOutcome(node, publisher, answer, submitted,
                                 time.perf_counter() - began)
        self.delivery.stats[f"publish_{answer}"] += 1
        self.metrics.published(dialect, answer)
        self.xmpp.event("push_published", outcome)

    def _publisher_jid(self, publisher: str) -> JID:
        """``JID(publisher)``, kept: publishers are a few servers, and parsing a JID
        (stringprep) costs more than the rest of our checks. Bounded, as anyone may
        send a publish from any address."""
        jid = self._publishers.get(publisher)
        if jid is None:
            if len(self._publishers) >= 1024:
                self._publishers.clear()
            jid = self._publishers[publisher] = JID(publisher)
        return jid

    def _authorize(self, publisher: JID, trusted: bool, node: str,
                   notification: Notification) -> Registration:
        if not trusted and (publisher.user or publisher.resource or not publisher.domain):
            raise XMPPError("forbidden", etype="auth", text="publisher must be a server")
        registration = self.store.get(node)
        if registration is None:
            if trusted:
                raise XMPPError("item-not-found", etype="cancel", text="unknown node")
            return self._stateless(publisher, node, notification)
        if not trusted and publisher.domain != registration.domain:
            raise XMPPError("forbidden", etype="auth", text="not the server of this node")
        if registration.secret is not None:
            given = notification.publish_options.get("secret", "")
            if not hmac.compare_digest(given.encode(), registration.secret.encode()):
                raise XMPPError("not-authorized", etype="auth", text="wrong secret")
        if not trusted:  # the account's own server (test-push reports it)
            self.last_publish[node] = time.time()
        return registration

    def _stateless(self, publisher: JID, node: str, notification: Notification,
                   ) -> Registration:
        """Monal's mode: the node is the APNs token, ``pushModule`` names the app."""
        module = notification.publish_options.get(MONAL_MODULE_OPTION)
        if not module:
            raise XMPPError("item-not-found", etype="cancel", text="unknown node")
        if not self.domain_allowed(publisher.domain):
            raise XMPPError("forbidden", etype="auth", text="server not served here")
        problem = token_problem("apns", node)  # Monal's node is its APNs token
        if problem is not None:
            raise XMPPError("bad-request", etype="modify", text=f"node: {problem}")
        if node in self.store.table(DEAD_TOKENS):
            raise XMPPError("item-not-found", etype="cancel", text="device token expired")
        for app in self.app_index.values():
            if module in app.monal_modules:
                return Registration(node=node, account=publisher.domain,
                                    domain=publisher.domain, app=app.id, token=node,
                                    dialect=Dialect.MONAL)
        raise XMPPError("bad-request", etype="cancel",
                        text=f"unknown pushModule {quoted(module)}")

    def _reply_result(self, request: Element) -> None:
        if self.fast_path is not None:
            self.fast_path.reply_result(request)
            return
        # Built by hand: iq.reply() deep-copies the request, a third of our CPU.
        reply = self.xmpp.Iq()
        reply.xml.attrib.update({"type": "result", "id": request.get("id", ""),
                                 "to": request.get("from", ""), "from": request.get("to", "")})
        reply.send()

    def _reply_error(self, request: Any, etype: str, condition: str, text: str | None) -> None:
        reply = self.xmpp.make_iq_error(request.get("id", ""), type=etype, condition=condition,
                                        text=text, ito=request.get("from", ""),
                                        ifrom=request.get("to", ""))
        reply.send()

    def _fix_error_namespace(self, stanza: StanzaBase) -> StanzaBase:
        """Put <error> in the component stream's namespace.

        slixmpp builds it as jabber:client whatever the stream; Prosody cannot
        parse that inside jabber:component:accept, misses type='wait' and
        disables the user's push after 16 such replies. Per stream, unlike
        ComponentXMPP(fix_error_ns=True), which changes every stream in the process.
        """
        if stanza.xml.get("type") == "error":
            wrong = stanza.xml.find("{jabber:client}error")
            if wrong is not None:
                wrong.tag = f"{{{self.xmpp.default_ns}}}error"
        return stanza

    # -- dead registrations --------------------------------------------------------------------
    async def _on_dead_token(self, registration: Registration, result: DeliveryResult) -> None:
        log.info("dropping node %s of %s: the provider says %s %s",
                 loggable_node(registration.node), registration.account, result.status,
                 result.reason)
        self.delivery.stats["dead_tokens"] += 1
        self.metrics.dead_tokens.labels(registration.app).inc()
        if registration.dialect is Dialect.MONAL:
            self.last_publish.pop(registration.node, None)
            await self.store.set_doc(DEAD_TOKENS, registration.node, {"at": time.time()})
        else:
            await self._forget(registration)
        self.xmpp.event("push_dead_token", registration)

    async def _drop_unserved(self, registration: Registration) -> None:
        """Remove a registration whose app the operator took out of the config.

        Nothing could ever be delivered to it, and answering ``wait`` would keep every
        server publishing to it for good; the client registers anew (with an app that
        is served) when it enables push again.
        """
        log.info("dropping node %s of %s: its app %s is not configured any more",
                 loggable_node(registration.node), registration.account,
                 quoted(registration.app))
        await self.delivery.drop(registration.node)
        if registration.dialect is not Dialect.MONAL:  # stateless: nothing stored
            await self._forget(registration)
        self.xmpp.event("push_unregistered", registration)

    async def _forget(self, registration: Registration) -> None:
        """Remove a dead registration and tell the account's server to stop publishing."""
        self.last_publish.pop(registration.node, None)
        await self.store.remove(registration.node)
        if self.config.get("remote_disable", True):
            # After the publish's error reply, which is queued once we return:
            # sent first, the server would store the message for the offline
            # user and publish once more to the node it has not dropped yet.
            asyncio.get_running_loop().call_soon(self._send_remote_disable, registration)

    def _send_remote_disable(self, registration: Registration) -> None:
        # An explicit from: ejabberd closes a component stream sending without one.
        # A headline: servers do not store it for an offline user (RFC 6121), so it
        # neither piles up offline nor makes the server push once more.
        message: Message = self.xmpp.make_message(mto=registration.account,
                                                  mfrom=self.xmpp.boundjid, mtype="headline")
        pubsub = message["pubsub"]
        pubsub.xml.set("node", registration.node)  # slixmpp's Pubsub has no node interface
        pubsub["push_affiliation"]["jid"] = registration.account
        pubsub["push_affiliation"]["affiliation"] = "none"
        message.send()
