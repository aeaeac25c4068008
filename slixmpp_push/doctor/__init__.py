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

This module loads the config and runs the rest; each other check has a module
of its own (:mod:`.xmpp` on a raw stream from :mod:`.stream`, :mod:`.providers`,
:mod:`.credentials`, :mod:`.store`, :mod:`.clock`), and :mod:`.report` holds the
results and their rendering.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..config import ALL_ACTIVE, Config, load_config
from ..errors import ConfigError
from .clock import CLOCK_FAIL as CLOCK_FAIL
from .clock import CLOCK_WARN as CLOCK_WARN
from .clock import check_clock
from .credentials import CERT_WARN_DAYS as CERT_WARN_DAYS
from .credentials import check_credentials
from .providers import ProviderCheck, check_provider
from .report import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from .report import EXIT_CONFIG as EXIT_CONFIG
from .report import EXIT_FAILED as EXIT_FAILED
from .report import EXIT_OK as EXIT_OK
from .report import CheckResult, Report, Status, app_check_name, failed, passed
from .store import check_store
from .stream import CLIENT_NS as CLIENT_NS
from .stream import COMPONENT_NS as COMPONENT_NS
from .stream import MAX_STREAM_BYTES as MAX_STREAM_BYTES
from .stream import SASL_NS as SASL_NS
from .stream import SERVER_NS as SERVER_NS
from .stream import STREAM_ERROR_NS as STREAM_ERROR_NS
from .stream import STREAM_NS as STREAM_NS
from .stream import TLS_NS as TLS_NS
from .xmpp import check_xmpp

# The checks and the runner. The constants imported ``as`` themselves above stay
# importable from here too, as they were when the doctor was one module.
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

T = TypeVar("T")


def check_config(path: str | os.PathLike[str]) -> tuple[CheckResult, Config | None]:
    """Load the config as ``serve`` would; a ConfigError names the key."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        if exc.key == str(path):  # the file itself: missing, unreadable, not TOML
            fix = "give --config the app server's TOML config file (docs/configuration.md)"
        else:
            fix = f"correct {exc.key} in {path} (every key: docs/configuration.md)"
        return failed("config", f"{exc.key}: {exc.problem}", fix), None
    xmpp = config.xmpp
    apps = ", ".join(f"{app.id} ({app.type})" for app in config.apps)
    return passed("config", f"{path}: {xmpp.mode} {xmpp.jid} at {xmpp.host}:{xmpp.port}; "
                            f"apps {apps}; store {config.store}"), config


async def _guarded(name: str, check: Awaitable[T], crashed: Callable[[CheckResult], T]) -> T:
    """Await one check; a crash becomes a FAIL instead of ending the whole report."""
    try:
        return await check
    except Exception as exc:
        return crashed(failed(name, f"the check itself crashed: {type(exc).__name__}: {exc}",
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
        "xmpp", check_xmpp(config.xmpp, timeout, allow_plaintext=allow_plaintext,
                           all_active=config.instances == ALL_ACTIVE), _as_is))
    store_task = asyncio.ensure_future(_guarded("store", check_store(config), _as_is))
    provider_tasks = [
        asyncio.ensure_future(_guarded(app_check_name(app.type, app), check_provider(app, timeout),
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
