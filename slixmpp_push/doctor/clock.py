"""The ``clock`` check: is this machine's clock close to Apple's and Google's?

Apple refuses provider tokens older than an hour or from the future, and
Google refuses service-account assertions outside a short window, so a skewed
clock fails every push with a confusing error. The providers' ``Date`` headers,
collected by the provider checks (:mod:`.providers`), are the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

from .report import CheckResult, failed, passed, warned

#: Clock skew against a provider: warn above, fail above (seconds).
CLOCK_WARN = 60.0
CLOCK_FAIL = 300.0


def check_clock(offsets: Sequence[tuple[str, float]], remote_apps: int) -> CheckResult:
    """Our clock against the providers' ``Date`` headers (``offsets``: (check, seconds
    the provider is ahead)); ``remote_apps``: how many APNs/FCM apps were probed."""
    if not offsets:
        if not remote_apps:
            return passed("clock", "no APNs or FCM app: no provider clock to compare with")
        return warned("clock", "no provider answered with a Date header: the clock was not "
                               "compared", "see the failed provider checks above")
    who, offset = max(offsets, key=lambda item: abs(item[1]))
    skew = abs(offset)
    if skew <= CLOCK_WARN:
        return passed("clock", f"within {max(skew, 1.0):.0f} s of the providers' clocks "
                               f"(Date headers; the furthest: {who})")
    side = "behind" if offset > 0 else "ahead of"
    detail = f"this machine's clock is {skew:.0f} s {side} {who}'s (its Date header)"
    fix = ("synchronise the clock (timedatectl set-ntp true, or chrony): Apple refuses "
           "provider tokens older than 1 hour or from the future, and Google refuses "
           "service-account assertions outside a short window")
    if skew > CLOCK_FAIL:
        return failed("clock", detail, fix)
    return warned("clock", detail, fix)
