"""Configuration: one TOML file, parsed once into typed dataclasses.

Every key is documented in ``docs/configuration.md``; defaults live here only.
"""

from __future__ import annotations

import errno
import os
import re
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_reader import Section, parse_listen, quote_key, table
from .errors import ConfigError
from .notifier.config import NotifierSettings, ReceiverConfig, read_ingest, read_notifier
from .store.urls import database_url_problem, is_database_url


@dataclass(slots=True)
class AppConfig:
    """One push app: an iOS bundle id on APNs, an FCM project, or the console.

    ``id`` is the provider id clients name when they register (Siskin sends
    ``tigase:messenger:apns:1``, Stork ``fcm-xmpp-api``); it is also advertised
    as a disco feature.
    """

    id: str
    type: str  # "apns" | "fcm" | "console"
    # Delivery policy
    include_body: bool = False  # send message bodies and senders to Apple/Google
    timeout: float = 10.0  # seconds for one provider request
    ttl: int = 604_800  # seconds a chat notification stays deliverable (7 days)
    call_ttl: int = 30  # seconds a call (VoIP) notification stays useful
    format: str = ""  # console only: render requests as "apns" (default) or "fcm"
    monal_modules: tuple[str, ...] = ()  # Monal pushModule values served by this app
    # "account": a burst of chat alerts for one account replaces rather than stacks
    # (APNs apns-collapse-id, FCM collapse key); "none": every message stacks.
    collapse: str = "account"
    # APNs
    topic: str = ""  # bundle id; VoIP pushes go to "<topic>.voip"
    sandbox: bool = False
    key_file: str | None = None  # .p8 signing key (token auth)
    key_id: str | None = None
    team_id: str | None = None
    cert_file: str | None = None  # PEM with certificate and key (certificate auth)
    max_connections: int = 4
    # FCM
    service_account_file: str | None = None
    project_id: str | None = None
    android_channel: str | None = None  # channel for visible pages
    # Both: where to connect instead of Apple/Google (sandboxes, tests)
    endpoint: str | None = None  # APNs "host:port"; FCM base URL "https://host:port"
    ca_file: str | None = None  # CA bundle trusted for that endpoint
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def request_format(self) -> str:
        """What the requests to this app look like, "apns" or "fcm" (a console app's
        are rendered in one of the two)."""
        return self.format or ("apns" if self.type == "console" else self.type)


@dataclass(slots=True)
class DeliveryPolicy:
    """How hard and how often the app server tries (``[delivery]`` in the config)."""

    reply_within: float = 3.0  # seconds a publish waits for the provider before queueing
    retry_base: float = 1.0  # first retry after ~this many seconds
    retry_max_delay: float = 300.0  # backoff ceiling
    give_up_after: float = 86_400.0  # a notification is dropped (and logged) this old
    max_pending: int = 100_000
    rate_burst: int = 10  # per node: this many pushes at once ...
    rate_interval: float = 2.0  # ... then one per interval (0 disables the limit)


@dataclass(slots=True)
class RegistrationLimits:
    """How much one account may register (``[appserver]`` in the config)."""

    # Distinct devices (a token, or a p2/v1 device id) per account. A reinstalled
    # app registers a new token while the old one waits for Apple's 410.
    max_registrations_per_account: int = 20
    # Conversations (p2) registers a device once more per group chat (``muc``):
    # those count as one device, and are bounded here instead.
    max_group_chats_per_device: int = 100


# -- loading -------------------------------------------------------------------------

APP_TYPES = ("apns", "fcm", "console")
COLLAPSE_MODES = ("account", "none")
#: What ``[logging] level`` and ``serve --log-level`` accept, in any case.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: ``[appserver] instances``: one serves while the others wait, or all serve together.
ONE_ACTIVE = "one-active"
ALL_ACTIVE = "all-active"


@dataclass(slots=True)
class XmppConfig:
    mode: str  # "component" (XEP-0114) or "client"
    jid: str
    host: str
    port: int
    secret: str  # component secret, or the client account's password
    # A stream can stop carrying stanzas without closing (a server restarting its
    # stream, a hung server, a half-open TCP connection): ping it this often, and
    # reconnect when a ping is not answered within ping_timeout.
    ping_interval: float = 15.0
    ping_timeout: float = 10.0


@dataclass(slots=True)
class Config:
    xmpp: XmppConfig
    apps: list[AppConfig]
    store: str  # a TinyDB file (absolute path) or a postgresql:// URL
    allowed_domains: list[str] | None
    remote_disable: bool
    delivery: DeliveryPolicy
    log_level: str
    log_format: str = "text"  # "text" or "json"
    metrics_listen: tuple[str, int] | None = None  # host, port of /metrics and /health
    store_journal_limit: int | None = None  # bytes; None: the store's default (64 MiB)
    # A postgresql:// store's, from a file or the environment (never in a repr or a log).
    store_password: str | None = field(default=None, repr=False)
    limits: RegistrationLimits = field(default_factory=RegistrationLimits)
    admins: list[str] = field(default_factory=list)  # bare JIDs that may send notices
    # bare JIDs (paging bots on client accounts) that may publish to any node with its secret
    trusted_publishers: list[str] = field(default_factory=list)
    # seconds a trusted publisher's page suppresses the server's publish for its chat message
    echo_window: float = 15.0
    # with a database store: "one-active" (the others wait as standbys) or "all-active"
    instances: str = ONE_ACTIVE
    notifier: NotifierSettings | None = None  # [notifier]: paging
    ingest: ReceiverConfig | None = None  # [ingest]: the alert receiver
    source: Path | None = None


def _bare_jids(section: Section, name: str) -> list[str]:
    jids = section.strings(name)
    for jid in jids:
        if "@" not in jid or "/" in jid:
            raise ConfigError(section.key(name), f"{jid!r} is not a bare JID (user@domain)")
    return jids


def _read_xmpp(data: dict[str, Any], base: Path) -> XmppConfig:
    section = Section(table(data, "xmpp", ""), "xmpp", base)
    mode = section.get("mode", str, "component")
    if mode not in ("component", "client"):
        raise ConfigError("xmpp.mode", f"must be 'component' or 'client', not {mode!r}")
    jid = _check_jid(section.get("jid", str, required=True), mode)
    host = section.get("host", str, "127.0.0.1")
    port = section.get("port", int, 5347 if mode == "component" else 5222)
    if not 0 < port < 65536:
        raise ConfigError("xmpp.port", f"must be a TCP port, not {port}")
    secret = section.secret("secret" if mode == "component" else "password")
    assert secret is not None
    defaults = XmppConfig(mode, jid, host, port, secret)
    ping_interval = section.positive("ping_interval", defaults.ping_interval, allow_zero=False)
    ping_timeout = section.positive("ping_timeout", defaults.ping_timeout, allow_zero=False)
    section.finish()
    return XmppConfig(mode=mode, jid=jid, host=host, port=port, secret=secret,
                      ping_interval=ping_interval, ping_timeout=ping_timeout)


def _check_jid(jid: str, mode: str) -> str:
    """``[xmpp] jid`` as slixmpp will parse it: a domain for a component, an account
    for a client (``serve`` would otherwise stop with slixmpp's InvalidJID)."""
    from slixmpp.jid import JID, InvalidJID

    try:
        parsed = JID(jid)
    except InvalidJID as exc:
        raise ConfigError("xmpp.jid", f"is not a valid JID ({exc}): {jid!r}") from None
    if not parsed.domain:
        raise ConfigError("xmpp.jid", "is empty")
    if mode == "component" and (parsed.user or parsed.resource):
        raise ConfigError("xmpp.jid", f"a component's JID is a domain name such as "
                                      f"push.example.org, not {jid!r}")
    if mode == "client" and not parsed.user:
        raise ConfigError("xmpp.jid", f"in client mode it is an account such as "
                                      f"bot@example.org, not {jid!r}")
    return jid


def _read_app(app_id: str, data: Any, base: Path) -> AppConfig:
    where = f"apps.{quote_key(app_id)}"
    if not isinstance(data, dict):
        raise ConfigError(where, "must be a table")
    section = Section(data, where, base)
    kind = section.get("type", str, required=True)
    if kind not in APP_TYPES:
        raise ConfigError(section.key("type"), f"must be one of {', '.join(APP_TYPES)}")
    app = AppConfig(
        id=app_id, type=kind,
        include_body=section.get("include_body", bool, False),
        timeout=section.positive("timeout", 10.0, allow_zero=False),
        ttl=section.count("ttl", 604_800, minimum=0),
        call_ttl=section.count("call_ttl", 30, minimum=0),
        monal_modules=tuple(section.strings("monal_modules")),
        collapse=section.get("collapse", str, "account"),
        endpoint=section.get("endpoint", str),
        ca_file=section.path("ca_file"),
    )
    if app.collapse not in COLLAPSE_MODES:
        raise ConfigError(section.key("collapse"), f"must be one of {', '.join(COLLAPSE_MODES)}, "
                          f"not {app.collapse!r}")
    if kind in ("apns", "console"):
        app.topic = section.get("topic", str, "" if kind == "console" else None,
                                required=kind == "apns")
    if kind == "console":
        app.format = section.get("format", str, "apns")
        if app.format not in ("apns", "fcm"):
            raise ConfigError(section.key("format"), "must be 'apns' or 'fcm'")
    if kind == "apns":
        environment = section.get("environment", str, "production")
        if environment not in ("production", "sandbox"):
            raise ConfigError(section.key("environment"), "must be 'production' or 'sandbox'")
        app.sandbox = environment == "sandbox"
        app.max_connections = section.count("max_connections", 4)
        app.key_file = section.path("key_file")
        app.cert_file = section.path("cert_file")
        app.key_id = section.get("key_id", str, required=bool(app.key_file))
        app.team_id = section.get("team_id", str, required=bool(app.key_file))
        if app.key_file and app.cert_file:
            raise ConfigError(section.key("cert_file"),
                              "use key_file (token auth) or cert_file, not both")
        if not app.key_file and (app.key_id or app.team_id):
            raise ConfigError(section.key("key_id" if app.key_id else "team_id"),
                              "is only used with key_file (token auth)")
        if not app.key_file and not app.cert_file:
            raise ConfigError(section.key("key_file"),
                              "an APNs app needs key_file (.p8 token auth) or cert_file")
    if kind == "fcm":
        app.service_account_file = section.path("service_account_file")
        app.project_id = section.get("project_id", str)
        app.android_channel = section.get("android_channel", str)
        if not app.service_account_file:
            raise ConfigError(section.key("service_account_file"), "is required for FCM")
    section.finish()
    return app


def parse_config(data: dict[str, Any], base: Path | None = None) -> Config:
    """Validate a parsed TOML document; raise :class:`ConfigError` naming the key."""
    base = base or Path.cwd()
    top = Section(data, "", base)
    for name in ("xmpp", "appserver", "delivery", "apps", "logging", "metrics", "notifier",
                 "ingest"):
        top.seen.add(name)
    top.finish()
    xmpp = _read_xmpp(data, base)
    server = Section(table(data, "appserver", ""), "appserver", base)
    store, store_password = _read_store(server)
    allowed = server.get("allowed_domains", list)
    if allowed is not None and not all(isinstance(d, str) and d for d in allowed):
        raise ConfigError("appserver.allowed_domains", "must be a list of domain names")
    remote_disable = server.get("remote_disable", bool, True)
    journal_mb = None  # the store's default bound
    if "store_journal_max_mb" in server.data:
        if is_database_url(store):
            raise ConfigError(server.key("store_journal_max_mb"),
                              "is only used with a TinyDB store (a file), not a database")
        journal_mb = server.positive("store_journal_max_mb", 0.0, allow_zero=False)
    limit_defaults = RegistrationLimits()
    limits = RegistrationLimits(
        max_registrations_per_account=server.count(
            "max_registrations_per_account", limit_defaults.max_registrations_per_account),
        max_group_chats_per_device=server.count(
            "max_group_chats_per_device", limit_defaults.max_group_chats_per_device,
            minimum=0),
    )
    admins = _bare_jids(server, "admins")
    trusted_publishers = _bare_jids(server, "trusted_publishers")
    echo_window = server.positive("echo_window", 15.0)
    instances = _read_instances(server, store, xmpp)
    server.finish()

    section = Section(table(data, "delivery", ""), "delivery", base)
    defaults = DeliveryPolicy()
    policy = DeliveryPolicy(
        reply_within=section.positive("reply_within", defaults.reply_within),
        retry_base=section.positive("retry_base", defaults.retry_base),
        retry_max_delay=section.positive("retry_max_delay", defaults.retry_max_delay),
        give_up_after=section.positive("give_up_after", defaults.give_up_after),
        max_pending=section.count("max_pending", defaults.max_pending),
        rate_burst=section.count("rate_burst", defaults.rate_burst),
        rate_interval=section.positive("rate_interval", defaults.rate_interval),
    )
    section.finish()

    apps_table = table(data, "apps", "")
    if not apps_table:
        raise ConfigError("apps", "configure at least one app (type = \"console\" to try out)")
    apps = [_read_app(app_id, app, base) for app_id, app in apps_table.items()]

    logging_section = Section(table(data, "logging", ""), "logging", base)
    level = logging_section.get("level", str, "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError("logging.level", "must be DEBUG, INFO, WARNING or ERROR")
    log_format = logging_section.get("format", str, "text")
    if log_format not in ("text", "json"):
        raise ConfigError("logging.format", "must be 'text' or 'json'")
    logging_section.finish()

    metrics_section = Section(table(data, "metrics", ""), "metrics", base)
    listen = metrics_section.get("listen", str)
    metrics_listen = None
    if listen is not None:
        metrics_listen = parse_listen(listen, "metrics.listen")
    metrics_section.finish()
    notifier = ingest = None
    if "notifier" in data:
        notifier = read_notifier(table(data, "notifier", ""), base)
        if notifier.omemo is not None and xmpp.mode != "client":
            raise ConfigError("notifier.omemo", "needs xmpp.mode = \"client\" "
                                                "(OMEMO needs an account with PEP)")
    if "ingest" in data:
        if notifier is None:
            raise ConfigError("ingest", "needs a [notifier] section (policies to page with)")
        ingest = read_ingest(table(data, "ingest", ""), base)
        if ingest.policy is not None and ingest.policy not in notifier.policies:
            raise ConfigError("ingest.policy", f"names no policy ({ingest.policy!r})")
    return Config(xmpp=xmpp, apps=apps, store=store, allowed_domains=allowed,
                  remote_disable=remote_disable, delivery=policy, log_level=level,
                  log_format=log_format, metrics_listen=metrics_listen,
                  store_journal_limit=int(journal_mb * 1024 * 1024) if journal_mb else None,
                  store_password=store_password,
                  notifier=notifier, ingest=ingest, admins=admins, limits=limits,
                  trusted_publishers=trusted_publishers, echo_window=echo_window,
                  instances=instances)


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(file), "file does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), f"is not valid TOML: {exc}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(str(file), f"cannot be read as a UTF-8 text file: {exc}") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    file = Path(path)
    config = parse_config(_read_toml(file), file.resolve().parent)
    config.source = file
    return config


#: Apple's key IDs and team IDs: ten capital letters and digits (AuthKey_ABC123DEFG.p8).
_APPLE_ID = re.compile(r"[A-Z0-9]{10}")


def _app_key(app: AppConfig, name: str) -> str:
    return f"apps.{quote_key(app.id)}.{name}"


def check_credentials(app: AppConfig) -> None:
    """Read an app's key, certificates or service account without connecting.

    ``check-config`` calls it so that a wrong file is found before start-up:
    PEM files are parsed as the TLS layer will load them, and Apple's key and
    team IDs must have their shape (a typo would only show as 403
    InvalidProviderToken on every push).
    """
    if app.ca_file:
        try:
            ssl.create_default_context(cafile=app.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(_app_key(app, "ca_file"),
                              f"holds no PEM CA certificate: {exc}") from None
    if app.type == "apns" and app.key_file:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            key = serialization.load_pem_private_key(Path(app.key_file).read_bytes(), None)
        except (ValueError, TypeError, OSError) as exc:
            raise ConfigError(_app_key(app, "key_file"),
                              f"is not a readable .p8 key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(_app_key(app, "key_file"), "is not an EC (ES256) key")
        for name in ("key_id", "team_id"):
            value = getattr(app, name)
            if value is not None and not _APPLE_ID.fullmatch(value):
                raise ConfigError(_app_key(app, name), f"must be Apple's 10-character ID "
                                  f"(capital letters and digits), not {value!r}")
    if app.type == "apns" and app.cert_file:
        from cryptography import x509

        try:
            x509.load_pem_x509_certificate(Path(app.cert_file).read_bytes())
        except (ValueError, OSError) as exc:
            raise ConfigError(_app_key(app, "cert_file"),
                              f"holds no PEM certificate: {exc}") from None
        try:  # the certificate's private key must be in the same file, and match it
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(app.cert_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(_app_key(app, "cert_file"), f"must hold the certificate and "
                              f"its private key (PEM): {exc}") from None
    if app.type == "fcm" and app.service_account_file:
        import json

        try:
            account = json.loads(Path(app.service_account_file).read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise ConfigError(_app_key(app, "service_account_file"),
                              f"is not a JSON file: {exc}") from None
        missing = [k for k in ("type", "private_key", "client_email", "token_uri")
                   if not isinstance(account, dict) or not account.get(k)]
        if missing:
            raise ConfigError(_app_key(app, "service_account_file"),
                              f"is not a service-account key (no {missing[0]!r})")
        if not app.project_id and not account.get("project_id"):
            raise ConfigError(_app_key(app, "project_id"),
                              "is required (the service account names no project)")


def listen_error(key: str, host: str, port: int, exc: OSError) -> ConfigError:
    """The one-line error for a listen address that cannot be bound."""
    if exc.errno == errno.EADDRINUSE:
        problem = f"port {port} on {host} is already in use by another program"
    elif exc.errno == errno.EADDRNOTAVAIL:
        problem = f"{host} is not an address of this machine"
    elif exc.errno == errno.EACCES:
        problem = (f"no permission to listen on port {port} (ports below 1024 need root or "
                   "CAP_NET_BIND_SERVICE)")
    else:
        problem = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return ConfigError(key, problem)


def _read_instances(server: Section, store: str, xmpp: XmppConfig) -> str:
    """``[appserver] instances``: how several ``serve`` processes on one database share the
    work. Only a database can be shared, and only a component connection can be balanced."""
    instances = server.get("instances", str, ONE_ACTIVE)
    if instances not in (ONE_ACTIVE, ALL_ACTIVE):
        raise ConfigError(server.key("instances"),
                          f"must be {ONE_ACTIVE!r} or {ALL_ACTIVE!r}, not {instances!r}")
    if instances == ALL_ACTIVE and not is_database_url(store):
        raise ConfigError(server.key("instances"),
                          f"{ALL_ACTIVE!r} needs a postgresql:// store that the instances share")
    if instances == ALL_ACTIVE and xmpp.mode != "component":
        raise ConfigError(server.key("instances"),
                          f"{ALL_ACTIVE!r} needs xmpp.mode = \"component\" (a server balances "
                          "several component connections, not one account's)")
    return instances


def _read_store(server: Section) -> tuple[str, str | None]:
    """``[appserver] store`` (a path, made absolute, or a postgresql:// URL) and the
    database's password, if one is configured."""
    store = server.get("store", str, "slixmpp-push.json")
    if not is_database_url(store):
        for name in ("store_password", "store_password_file", "store_password_env"):
            if name in server.data:
                raise ConfigError(server.key(name), "is only used with a postgresql:// store")
        return (store if Path(store).is_absolute() else str(server.base / store)), None
    problem = database_url_problem(store)
    if problem is not None:
        if "password" in problem:
            problem = (f"holds a password: inline secrets are not accepted: use "
                       f"{server.key('store_password_file')} or "
                       f"{server.key('store_password_env')}")
        raise ConfigError(server.key("store"), problem)
    return store, server.secret("store_password", required=False)


def load_store_settings(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Only the store of a config file (``[appserver] store`` and the database's
    password): for ``devices``, which must work where the component secret or the
    provider keys are not readable."""
    file = Path(path)
    data = _read_toml(file)
    server = Section(table(data, "appserver", ""), "appserver", file.resolve().parent)
    return _read_store(server)
