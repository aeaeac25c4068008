"""Issue 9, item 6: bad input costs no more than good input.

A flood of malformed stanzas through the component stream (the fake XEP-0114
server plays the user's server, relaying what a hostile account and a broken
server send) with good publishes in between, all at once:

- every malformed stanza gets exactly one error reply, the precise one, whose
  text quotes at most 64 characters of what was sent;
- every good publish is answered ``result`` and delivered;
- the app server logs a bounded number of lines (the first of each kind,
  then a count), never a traceback, and counts every refusal in its metrics.

Timing is measured in benchmarks/malformed_flood.py, not asserted here. What
made bad input expensive, and is checked here without a clock: log lines per
stanza, and the log redaction's regular expressions, which took quadratic
time on a long text of start tags without '>' (a value quoted in a log line).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest
from fakes.scripted import ScriptedProvider
from fakes.xmpp_server import command_iq, error_of, publish_iq
from peer_support import COMPONENT, appserver_on_fake_server
from tokens import apns_token

from slixmpp_push import AppConfig, DeliveryPolicy, Dialect, MemoryStore, Registration
from slixmpp_push.logs import LogSampler, redact

APNS = AppConfig(id="tigase:messenger:apns:1", type="console", topic="org.example.chat",
                 monal_modules=("monalProdiOS",))
PER_KIND = 50
JUNK = "<field " * 512  # 3.5 kB of start tags without '>'
PUBSUB = "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
MALLORY = "mallory@localhost/x"  # an account whose stanzas the server relays to us


def _publish(frm: str, body: str, kind: str = "set", options: str = "") -> str:
    return (f"<iq type='{kind}' from='{frm}' to='{COMPONENT}'>{PUBSUB}{body}{options}"
            "</pubsub></iq>")


def _options(var: str, value: str) -> str:
    return ("<publish-options><x xmlns='jabber:x:data' type='submit'>"
            f"<field var='{var}'><value>{_escape(value)}</value></field></x></publish-options>")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


NOTIFICATION = "<item><notification xmlns='urn:xmpp:push:0'/></item>"
#: (stanza, expected (type, condition), the start of the expected text)
KINDS = [
    (_publish("localhost", f"<publish>{NOTIFICATION}</publish>"),
     ("modify", "bad-request"), "publish has no node"),
    (publish_iq("localhost", COMPONENT, "good0").replace(
        "<field var='FORM_TYPE'", "<field var='message-count'><value>lots</value></field>"
        "<field var='FORM_TYPE'"),
     ("modify", "bad-request"), "summary field 'message-count' is not a number"),
    (publish_iq(MALLORY, COMPONENT, "good0"), ("auth", "forbidden"), "publisher must be"),
    (publish_iq("localhost", COMPONENT, "no-such-node"), ("cancel", "item-not-found"),
     "unknown node"),
    (_publish("localhost", f"<publish node='good0'>{NOTIFICATION}</publish>",
              options=_options("FORM_TYPE", JUNK)),
     ("modify", "bad-request"), "publish-options has unknown FORM_TYPE '<field <field"),
    (_publish("localhost", f"<publish node='not-a-token'>{NOTIFICATION}</publish>",
              options=_options("pushModule", "monalProdiOS")),
     ("modify", "bad-request"), "node: not an APNs token"),
    (_publish("localhost", f"<publish node='good0'>{NOTIFICATION}</publish>", kind="get"),
     ("modify", "bad-request"), "a publish is an iq of type set"),
    (command_iq(MALLORY, COMPONENT, "register-device",
                {"provider": APNS.id, "device-token": "not-a-device-token"}),
     ("modify", "bad-request"), "field 'device-token': not an APNs token"),
    (command_iq(MALLORY, COMPONENT, "register-device", {"provider": APNS.id}),
     ("modify", "bad-request"), "missing required field 'device-token'"),
    (command_iq(MALLORY, COMPONENT, "register-device",
                {"provider": JUNK, "device-token": apns_token()}),
     ("cancel", "item-not-found"), "field 'provider': no app with provider id '<field"),
    (command_iq(MALLORY, COMPONENT, "v1-register-push",
                {"type": "gcm", "node": "dev", "token": "t"}),
     ("modify", "bad-request"), "field 'type' must be 'apns' or 'fcm'"),
    (command_iq(MALLORY, COMPONENT, "no-such-command", {"x": "y"}),
     ("cancel", "item-not-found"), ""),
]


def metric(appserver: object, name: str, **labels: str) -> float:
    value = appserver.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        f"slixmpp_push_{name}_total", labels)
    return value or 0.0


async def test_a_flood_of_malformed_stanzas_is_answered_cheaply_and_good_publishes_flow(
        caplog: pytest.LogCaptureFixture) -> None:
    provider = ScriptedProvider(APNS)
    store = MemoryStore()
    await store.open()
    for i in range(PER_KIND):
        await store.put(Registration(node=f"good{i}", account=f"u{i}@localhost",
                                     domain="localhost", app=APNS.id, token=apns_token(i),
                                     dialect=Dialect.TIGASE))
    caplog.set_level(logging.DEBUG, "slixmpp_push")
    caplog.set_level(logging.INFO)
    async with appserver_on_fake_server([APNS], {APNS.id: provider}, store,
                                        delivery=DeliveryPolicy(rate_interval=0),
                                        ) as (server, appserver):
        caplog.clear()  # from here on: the flood
        requests = []
        for round_ in range(PER_KIND):
            for number, (stanza, _, _) in enumerate(KINDS):
                requests.append((number, server.request(
                    stanza.replace("<iq ", f"<iq id='k{number}r{round_}' ", 1))))
            requests.append((-1, server.request(publish_iq(
                "localhost", COMPONENT, f"good{round_}", message_count=round_ + 1,
                iq_id=f"good{round_}"))))
        replies = await asyncio.gather(*(request for _, request in requests))

        answers: Counter[tuple[int, tuple[str, str] | None]] = Counter()
        for (number, _), reply in zip(requests, replies, strict=True):
            error = error_of(reply)
            if number < 0:
                answers[number, None if error is None else error[:2]] += 1
                continue
            assert error is not None, f"kind {number} answered {reply}"
            _, expected, text = KINDS[number]
            assert error[:2] == expected, (number, error)
            assert error[2].startswith(text), (number, error[2])
            assert len(error[2]) < 200, (number, "the reply quotes too much")  # JUNK is 3.5 kB
            answers[number, expected] += 1
        assert answers == Counter({(n, kind[1]): PER_KIND for n, kind in enumerate(KINDS)}
                                  | {(-1, None): PER_KIND})
        assert sorted(request.token for request in provider.sent) == sorted(
            apns_token(i) for i in range(PER_KIND))

        # Each refusal counted once.
        assert metric(appserver, "publishes", dialect="tigase", outcome="result") == PER_KIND
        assert metric(appserver, "publishes", dialect="unknown",
                      outcome="bad-request") == 5 * PER_KIND
        assert metric(appserver, "publishes", dialect="unknown", outcome="forbidden") == PER_KIND
        assert metric(appserver, "publishes", dialect="unknown",
                      outcome="item-not-found") == PER_KIND
        assert metric(appserver, "commands", command="register-device",
                      outcome="bad-request") == 2 * PER_KIND
        assert metric(appserver, "commands", command="register-device",
                      outcome="item-not-found") == PER_KIND
        assert metric(appserver, "commands", command="v1-register-push",
                      outcome="bad-request") == PER_KIND

    # 600 malformed stanzas, a handful of log lines: the first of each kind.
    lines = [record for record in caplog.records if record.name.startswith("slixmpp_push")]
    assert 0 < len(lines) <= 8, [record.getMessage() for record in lines]
    assert all(len(record.getMessage()) < 400 for record in lines)
    assert [record for record in caplog.records if record.exc_info] == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_sampler_logs_the_first_of_a_kind_then_a_count() -> None:
    now = [100.0]
    logger = logging.getLogger("slixmpp_push.test_sampler")
    sampler = LogSampler(logger, interval=60.0, clock=lambda: now[0])
    with _Capture(logger) as records:
        assert sampler.log(logging.INFO, "malformed", "malformed publish from %s", "a")
        for _ in range(999):
            assert not sampler.log(logging.INFO, "malformed", "malformed publish from %s", "b")
        assert sampler.log(logging.INFO, "forbidden", "other kind")  # each kind its own
        now[0] += 60.0
        assert sampler.log(logging.INFO, "malformed", "malformed publish from %s", "c")
        now[0] += 60.0
        assert sampler.log(logging.INFO, "malformed", "malformed publish from %s", "d")
    assert records == ["malformed publish from a", "other kind",
                       "malformed publish from c (and 999 more like it in the last 60 s)",
                       "malformed publish from d"]


class _Capture(logging.Handler):
    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logger
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self.logger.addHandler(self)
        self.logger.setLevel(logging.DEBUG)
        return self.records

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


@pytest.mark.parametrize("junk", ["<field ", "<field var='secret' ", "<encrypt ",
                                  "<handshake ", "<field var='node' "])
def test_redaction_of_a_megabyte_of_start_tags_is_linear(junk: str) -> None:
    """Before the fix one such line of 14 kB took 150 ms; a megabyte, some 13 minutes.
    Finishing at all is the check (no clock): the patterns never backtrack over a '<'."""
    text = "malformed publish from localhost: " + junk * (1_000_000 // len(junk))
    assert redact(text) == text
    # ... and redaction still works in the same line.
    secret = "<field var='secret'><value>hunter2</value></field>"
    assert redact(text + secret).endswith(
        "<field var='secret'><value>[redacted]</value></field>")
