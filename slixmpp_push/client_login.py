"""Wait for a ``ClientXMPP`` login to succeed, or to have failed every way it can.

slixmpp recovers from more than its events suggest. ``connection_failed`` fires for
each address and method it tries (with ``--host``: direct TLS, then STARTTLS), and
only when all have failed does it schedule another round (``reconnect_delay``).
``failed_auth`` fires for each SASL mechanism the server refuses (ejabberd 24.12
answers SCRAM over plain TCP with "Invalid channel binding", then accepts PLAIN),
and only ``failed_all_auth`` means none is left. :class:`ClientLogin` treats only the
final events as the end, and says in one line what was tried.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from slixmpp import ClientXMPP


class LoginFailed(Exception):
    """The account could not log in: every address, method or mechanism failed.

    ``no_tls`` is set when the server offers no TLS and the login stopped because
    slixmpp sends no password unencrypted (a local test server wants ``--plain``).
    """

    def __init__(self, reason: str, *, no_tls: bool = False) -> None:
        super().__init__(reason)
        self.no_tls = no_tls


class ClientLogin:
    """Watches one ``connect()`` of ``xmpp`` until a session starts or all has failed.

    Create it before ``xmpp.connect()``; ``await wait(timeout)`` returns once the
    session has started and raises :class:`LoginFailed` otherwise. ``where`` names
    the address given to ``connect()`` (None: the domain's SRV records).
    """

    def __init__(self, xmpp: ClientXMPP, where: tuple[str, int] | None = None) -> None:
        self.xmpp = xmpp
        self.where = f"{where[0]}:{where[1]}" if where else xmpp.boundjid.domain
        # slixmpp tries a given address this way round (XMLStream._connect_loop);
        # SRV records are tried in an order only the resolver knows.
        self._methods = [method for method, enabled in (
            ("direct TLS", xmpp.enable_direct_tls), ("STARTTLS", xmpp.enable_starttls),
            ("plain TCP", xmpp.enable_plaintext)) if enabled] if where else []
        self._connect_failures: list[str] = []
        self._refusals: list[tuple[str, str]] = []  # (SASL mechanism, the server's answer)
        self._stream_error = ""
        self._outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handlers: list[tuple[str, Any]] = [
            ("session_start", self._on_session),
            ("connection_failed", self._on_connection_failed),
            ("reconnect_delay", self._on_gave_up),
            ("failed_auth", self._on_failed_auth),
            ("failed_all_auth", self._on_failed_all_auth),
            ("ssl_invalid_chain", self._on_invalid_chain),
            ("stream_error", self._on_stream_error),
            ("disconnected", self._on_disconnected),
        ]
        for event, handler in self._handlers:
            xmpp.add_event_handler(event, handler)

    async def wait(self, timeout: float) -> None:
        """Until the session starts; :class:`LoginFailed` when it cannot (the attempt
        is then stopped)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._outcome), timeout)
        except TimeoutError:
            self._fail(f"no session at {self.where} within {timeout:g} s"
                       + self._tried(", after "))
        finally:
            for event, handler in self._handlers:
                self.xmpp.del_event_handler(event, handler)
            if not self._outcome.done() or self._outcome.exception() is not None:
                self.xmpp.cancel_connection_attempt()
                self.xmpp.abort()
        self._outcome.result()

    # -- slixmpp's events ------------------------------------------------------------
    def _on_session(self, _event: object) -> None:
        self._settle(None)

    def _on_connection_failed(self, error: object) -> None:
        method = self._methods[len(self._connect_failures)] if (
            len(self._connect_failures) < len(self._methods)) else ""
        self._connect_failures.append(f"{method}: {_why(error)}" if method else _why(error))

    def _on_gave_up(self, _wait: object) -> None:
        # Every address and method of this round failed; slixmpp would start another.
        self._fail(f"cannot connect to {self.where}" + self._tried(" (", ")"))

    def _on_failed_auth(self, failure: Any) -> None:
        mechanism = getattr(self.xmpp.plugin["feature_mechanisms"].mech, "name", "?")
        self._refusals.append((mechanism, _said(failure["condition"], failure["text"])))

    def _on_failed_all_auth(self, _event: object) -> None:
        if self._refusals:
            tried = ", ".join(mechanism for mechanism, _ in self._refusals)
            self._fail(f"authentication failed: {self._refusals[-1][1]} (tried {tried})")
            return
        mechanisms: Any = self.xmpp.plugin["feature_mechanisms"]
        offered = ", ".join(sorted(mechanisms.mech_list)) or "none"
        if not self._encrypted():
            self._fail(f"{self.where} offers no TLS" + self._tried(" (", "; no STARTTLS)")
                       + ", and the password is only sent encrypted (SASL mechanisms "
                       f"offered: {offered})", no_tls=True)
        else:
            self._fail(f"no SASL mechanism in common with {self.where} (offered: {offered})")

    def _on_invalid_chain(self, error: object) -> None:
        self._fail(f"STARTTLS at {self.where} failed: {_why(error)}"
                   + self._tried(" (before: ", ")"))

    def _on_stream_error(self, error: Any) -> None:
        self._stream_error = _said(error["condition"], error["text"])

    def _on_disconnected(self, reason: object) -> None:
        if isinstance(reason, ssl.SSLError):  # the TLS upgrade failed (direct TLS
            self._on_invalid_chain(reason)   # failures are connection_failed)
        elif self._stream_error:
            self._fail(f"the server closed the stream: {self._stream_error}")
        else:
            detail = f" ({reason})" if reason and not isinstance(reason, dict) else ""
            self._fail(f"disconnected before the session started{detail}")

    # -- helpers ------------------------------------------------------------------------
    def _settle(self, error: LoginFailed | None) -> None:
        if self._outcome.done():
            return
        if error is None:
            self._outcome.set_result(None)
        else:
            self._outcome.set_exception(error)

    def _fail(self, reason: str, *, no_tls: bool = False) -> None:
        self._settle(LoginFailed(reason, no_tls=no_tls))

    def _tried(self, before: str, after: str = "") -> str:
        return f"{before}{'; '.join(self._connect_failures)}{after}" if (
            self._connect_failures) else ""

    def _encrypted(self) -> bool:
        return "starttls" in self.xmpp.features or isinstance(
            self.xmpp.socket, ssl.SSLSocket | ssl.SSLObject)


def _why(error: object) -> str:
    """A connection failure in a few words."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        if error.reason == "WRONG_VERSION_NUMBER":
            return "not a TLS port (WRONG_VERSION_NUMBER)"
        return f"TLS failed ({error.reason or error})"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def _said(condition: str, text: str) -> str:
    return f"{condition} ({text})" if text else condition
