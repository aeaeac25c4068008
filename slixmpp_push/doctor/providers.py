"""The ``apns|fcm|console <app>`` checks: do Apple and Google accept the credentials?

Each app's provider is created as ``serve`` would create it and makes one
harmless request (:meth:`Provider.probe`: a push to a token that cannot exist,
or an FCM dry run), so nothing reaches a device. The answer's ``Date`` header
tells how far the provider's clock is from ours, for the clock check
(:mod:`.clock`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..config import AppConfig
from ..errors import ConfigError, MissingDependency, PushError
from .report import DEFAULT_TIMEOUT, CheckResult, app_check_name, failed


@dataclass(slots=True, frozen=True)
class ProviderCheck:
    """A provider's verdict, plus the clock offset its answer revealed."""

    result: CheckResult
    clock_offset: float | None = None


async def check_provider(app: AppConfig, timeout: float = DEFAULT_TIMEOUT) -> ProviderCheck:
    """One harmless request through the app's provider (:meth:`Provider.probe`)."""
    from ..providers import create_provider

    name = app_check_name(app.type, app)
    provider = None
    try:
        provider = create_provider(app)
        await provider.start()
        probe = await provider.probe(timeout)
    except ConfigError as exc:
        return ProviderCheck(failed(name, f"{exc.key}: {exc.problem}",
                                    f"correct {exc.key} (see the credentials check)"))
    except MissingDependency as exc:
        return ProviderCheck(failed(name, str(exc), f"pip install 'slixmpp-push[{exc.extra}]'"))
    except PushError as exc:
        return ProviderCheck(failed(name, str(exc), "see docs/providers.md"))
    finally:
        if provider is not None:
            with contextlib.suppress(Exception):
                await provider.close()
    return ProviderCheck(CheckResult(name, probe.status, probe.detail, probe.fix),
                         probe.clock_offset)
