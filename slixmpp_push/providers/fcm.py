"""Firebase Cloud Messaging (HTTP v1) through firebase-admin.

Why firebase-admin and not a hand-written client: it owns the message encoding
and validation (``Message``/``AndroidConfig`` -> JSON) and the parsing of FCM's
error bodies into typed exceptions (``UnregisteredError``, ...). What this module
adds on top, and why:

* **Its own named firebase ``App`` per provider**, so several FCM projects can
  be served side by side; created in :meth:`FcmProvider.start`, deleted in
  :meth:`FcmProvider.close`.
* **Its own HTTP transport** in place of the SDK's ``HttpxAsyncClient``
  (installed into the messaging service, which only ever calls
  ``request()``/``aclose()`` on it):

  - it trusts ``ca_file`` and talks to ``endpoint`` (sandboxes, tests);
  - no SDK-internal retries: the SDK retries 500/503 four times (about 7 s)
    ignoring ``Retry-After``, which would eat the request deadline; the
    caller's retry queue honours ``Retry-After`` instead;
  - the OAuth token is refreshed **in a worker thread**, a few minutes before
    it expires. The SDK's auth flow refreshes a service-account token
    synchronously inside the event loop (an HTTPS round trip to Google about
    hourly, blocking every XMPP stream meanwhile).
* **Faults named and cheap**: a failure without an answer is reported by its
  cause (``connection refused``, ``TLS verify failed (…)``, ``timeout``; the
  SDK calls most of them ``UNAVAILABLE``); connections a transport error left
  broken are closed at once (httpcore kept them, and their tracebacks, in its
  pool); refused credentials pause the app (:meth:`Provider.pause`) and a
  ``Retry-After`` on a quota error or an outage holds the whole app.
* **Module-level** ``messaging.send_each_async``: the service-level method
  defaults to ``dry_run=True`` (messages validated, never delivered).
* **Outcome policy** (:attr:`FcmProvider.ERROR_OUTCOMES`): FCM exceptions become
  :class:`~slixmpp_push.errors.DeliveryResult` values; nothing raises for a dead
  token, throttling or an outage.

firebase-admin is an optional extra (``slixmpp-push[fcm]``) and a heavy import
(about 0.3 s): it is imported in :meth:`FcmProvider.start`, only when an FCM
app is configured.

The few private firebase-admin names used (``messaging._get_messaging_service``,
the service's ``_async_client`` and ``_fcm_url``, ``_MessagingService.encode_message``)
are checked in :meth:`FcmProvider.start`, which fails loudly if a firebase-admin
release renames them. Tested with firebase-admin 7.7.0.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import itertools
import logging
import ssl
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError, DeliveryResult, MissingDependency, Outcome, PushError
from .base import (
    AUTH_REJECTED,
    TIMEOUT,
    FcmRequest,
    ProbeResult,
    ProbeStatus,
    Provider,
    PushRequest,
    clock_offset,
    parse_retry_after,
    transport_reason,
)

if TYPE_CHECKING:
    import httpx
    from google.auth.credentials import Credentials as GoogleCredentials

    from ..config import AppConfig

__all__ = ["FcmProvider"]

log = logging.getLogger(__name__)

_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_app_names = itertools.count(1)


def _redact(token: str) -> str:
    """Enough of a device token to correlate log lines, never the whole of it."""
    return f"{token[:6]}…({len(token)})" if len(token) > 10 else "…"


def _mro_names(obj: object) -> list[str]:
    return [cls.__name__ for cls in type(obj).__mro__]


def _fcm_error_code(response: Any) -> str | None:
    """``errorCode`` of the FcmError detail in an error body (``UNREGISTERED`` ...)."""
    if response is None:
        return None
    try:
        body = response.json()
        details = body["error"].get("details", [])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type") == _FCM_ERROR_TYPE:
            code = detail.get("errorCode")
            return str(code) if code else None
    return None


def _error_object(response: Any) -> dict[str, Any]:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _rpc_status(response: Any) -> str | None:
    """The google.rpc status of an error body (``NOT_FOUND``, ``PERMISSION_DENIED`` ...)."""
    status = _error_object(response).get("status")
    return str(status) if status else None


def _about_token(response: Any) -> bool:
    """Whether an INVALID_ARGUMENT error is about the registration token (not the message)."""
    error = _error_object(response)
    for detail in error.get("details") or []:
        for violation in (detail.get("fieldViolations") or []) if isinstance(detail, dict) else []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                return True
    return "registration token" in str(error.get("message", ""))


def _rpc_message(response: Any) -> str:
    return str(_error_object(response).get("message", ""))[:200]


class _TokenSource:
    """Keeps the OAuth access token of a google-auth credential fresh, off the loop.

    ``refresh()`` of a service-account credential is a blocking HTTPS call to
    Google's token endpoint: it runs in a worker thread. A token still valid
    but within :attr:`REFRESH_MARGIN` of expiry is refreshed in the background
    while requests keep using it; only a missing or expired token makes a
    request wait (for one shared refresh, never several at once).
    """

    REFRESH_MARGIN: ClassVar[float] = 300.0  # seconds before expiry
    RETRY_INTERVAL: ClassVar[float] = 30.0  # between failed background refreshes

    def __init__(self, credential: GoogleCredentials, auth_request: Any) -> None:
        self.credential = credential
        self._auth_request = auth_request
        self._refreshing: asyncio.Future[None] | None = None
        self._next_background = 0.0

    def _seconds_left(self) -> float | None:
        """Seconds until expiry; None when the token has no expiry."""
        expiry = self.credential.expiry
        if expiry is None:
            return None
        if expiry.tzinfo is None:  # google-auth keeps naive UTC datetimes
            expiry = expiry.replace(tzinfo=datetime.UTC)
        return (expiry - datetime.datetime.now(datetime.UTC)).total_seconds()

    def _refresh(self) -> asyncio.Future[None]:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(
                asyncio.to_thread(self.credential.refresh, self._auth_request)
            )
        return self._refreshing

    async def ensure_fresh(self) -> None:
        """Make sure a usable token is there; raises google-auth errors when it cannot be had."""
        left = self._seconds_left()
        if self.credential.token is None or (left is not None and left <= 10.0):
            await asyncio.shield(self._refresh())
        elif left is not None and left <= self.REFRESH_MARGIN:
            now = time.monotonic()
            if now >= self._next_background and (
                self._refreshing is None or self._refreshing.done()
            ):
                self._next_background = now + self.RETRY_INTERVAL
                self._refresh().add_done_callback(self._log_background_failure)

    async def force_refresh(self) -> bool:
        """After a 401: get a new token. False if that failed (the 401 then stands)."""
        try:
            await asyncio.shield(self._refresh())
        except Exception as exc:
            log.warning("FCM: access token refresh failed: %s", type(exc).__name__)
            return False
        return True

    def headers(self) -> dict[str, str]:
        """The Authorization (and quota project) headers for the current token."""
        headers: dict[str, str] = {}
        if self.credential.token is not None:  # else: no header, FCM answers 401
            self.credential.apply(headers)
        return headers

    @staticmethod
    def _log_background_failure(fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.warning(
                "FCM: background access token refresh failed (%s); still using the current one",
                type(fut.exception()).__name__,
            )

    def cancel(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()  # the worker thread finishes on its own


class _Transport:
    """Stands in for firebase-admin's ``HttpxAsyncClient`` inside the messaging service.

    Same contract (``request()`` returns the response or raises
    ``httpx.HTTPStatusError``/``httpx.TransportError``; ``aclose()``), but with
    the token handling of :class:`_TokenSource`, no status retries, and the
    caller's ``verify`` (``ca_file``).
    """

    def __init__(
        self, client: httpx.AsyncClient, tokens: _TokenSource, extra_headers: Mapping[str, str]
    ) -> None:
        import httpx

        self.client = client
        self.tokens = tokens
        self.extra_headers = dict(extra_headers)
        self._transport_error = httpx.TransportError
        #: The last ``Date`` response header and our ``time.time()`` when it came.
        self.last_date: tuple[str, float] | None = None

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.extra_headers, **(kwargs.pop("headers", None) or {})}
        try:
            await self.tokens.ensure_fresh()
        except Exception as exc:
            log.warning("FCM: access token refresh failed: %s", type(exc).__name__)
        sent_with = self.tokens.headers()
        try:
            response = await self.client.request(
                method, url, headers={**headers, **sent_with}, **kwargs
            )
        except self._transport_error:
            await self._close_broken()
            raise
        # A 401 for our OAuth token gets one new token and one resend (one shared
        # refresh, unless another request already replaced the token). FCM's
        # THIRD_PARTY_AUTH_ERROR is also a 401, but about the project's APNs/web
        # push credentials: a new token would not help.
        if (
            response.status_code == 401
            and _fcm_error_code(response) is None
            and (self.tokens.headers() != sent_with or await self.tokens.force_refresh())
        ):
            response = await self.client.request(
                method, url, headers={**headers, **self.tokens.headers()}, **kwargs
            )
        date = response.headers.get("date")
        if date:
            self.last_date = (date, time.time())
        return response.raise_for_status()

    async def _close_broken(self) -> None:
        """Close the pooled connections a transport error left unusable.

        httpcore keeps an HTTP/2 connection whose socket failed in its pool,
        idle, until its keep-alive expires, and each of its streams re-raises
        one stored exception, whose traceback grows by that stream's frames
        (and its request, and its h2 state). Dropped connections piled up so:
        60 → 212 MB in 30 s of resets, never given back. Closed here, they
        leave the pool with the next request. (Their stored exception's frames
        are left alone: a stream may still be in its error handler, and
        clearing a suspended coroutine's frame closes it.)
        """
        pool = getattr(getattr(self.client, "_transport", None), "_pool", None)
        for connection in list(getattr(pool, "connections", ())):
            if connection.is_closed() or not connection.is_idle() or connection.is_available():
                continue  # healthy, busy (its last stream will close it), or gone
            try:
                await connection.aclose()
            except Exception as exc:  # it is broken already: the request's error is what counts
                log.debug("FCM %s: closing a broken connection: %s", type(exc).__name__, exc)

    async def aclose(self) -> None:
        await self.client.aclose()


class _ClosedTransport:
    """Left in the messaging service after close: ``delete_app`` closes it via ``asyncio.run``."""

    async def aclose(self) -> None:
        return None


class FcmProvider(Provider):
    """One FCM project (``type = "fcm"`` app): sends :class:`FcmRequest` messages.

    ``credential``: inject any google-auth credential (or a firebase-admin
    ``credentials.Base``) instead of reading ``app.service_account_file``;
    tests use one with a fixed token so no OAuth call happens.

    Reads from ``app``: ``service_account_file``, ``project_id`` (required
    when the credential names no project), ``endpoint`` (base URL replacing
    ``https://fcm.googleapis.com``), ``ca_file`` (CA bundle trusted for it),
    ``timeout`` (seconds for one request, or one chunk of :meth:`send_many`),
    ``android_channel`` (default channel of visible notifications).
    """

    kind = "fcm"

    DEFAULT_ENDPOINT: ClassVar[str] = "https://fcm.googleapis.com"
    #: send_each_async refuses more than 500 messages per call.
    MAX_BATCH: ClassVar[int] = 500
    #: firebase-admin exception class (matched along its MRO) -> outcome.
    #: Anything not listed is REJECTED: a permanent problem that is not the token's fault.
    ERROR_OUTCOMES: ClassVar[Mapping[str, Outcome]] = {
        "UnregisteredError": Outcome.DEAD_TOKEN,  # 404 UNREGISTERED: app uninstalled
        "SenderIdMismatchError": Outcome.DEAD_TOKEN,  # token of another project: never ours
        "QuotaExceededError": Outcome.RETRY,  # 429: back off
        "ResourceExhaustedError": Outcome.RETRY,  # 429 without FCM details
        "UnavailableError": Outcome.RETRY,  # 503, or connection refused
        "InternalError": Outcome.RETRY,  # 500
        "DeadlineExceededError": Outcome.RETRY,  # httpx timeout
        "InvalidArgumentError": Outcome.REJECTED,  # bad payload or malformed token
        "ThirdPartyAuthError": Outcome.REJECTED,  # APNs/web-push credentials of the project
    }
    #: The least back-off, whatever Retry-After says: FCM asks for at least a
    #: minute on quota errors. The project's quota is exhausted for every
    #: device, so the whole app pauses (as for a 5xx with a Retry-After).
    MIN_RETRY_AFTER: ClassVar[Mapping[str, float]] = {
        "QuotaExceededError": 60.0,
        "ResourceExhaustedError": 60.0,
    }
    #: Our credentials refused (401 for our OAuth token even after a refresh,
    #: 403 for the project): the app pauses for :attr:`AUTH_PAUSE`, then one
    #: trial request at a time. ThirdPartyAuthError (the project's APNs key at
    #: Firebase) is listed above: it refuses a message, not us.
    AUTH_ERRORS: ClassVar[frozenset[str]] = frozenset(
        {"UnauthenticatedError", "PermissionDeniedError"}
    )
    AUTH_PAUSE: ClassVar[float] = 600.0
    #: httpx errors (cause of an ``UnknownError``) meaning "connection lost":
    #: transient, and the SDK does not retry them.
    TRANSPORT_ERRORS: ClassVar[frozenset[str]] = frozenset({"TransportError"})
    #: Of those, the ones worth one immediate resend (a recycled HTTP/2
    #: connection fails every in-flight stream at once; a fresh one usually works).
    RESEND_ERRORS: ClassVar[frozenset[str]] = frozenset(
        {"RemoteProtocolError", "ReadError", "WriteError"}
    )
    RESENDS: ClassVar[int] = 1
    KEEPALIVE: ClassVar[float] = 60.0  # seconds an idle connection is kept for reuse

    # The probe (``slixmpp-push doctor``): a validate_only send (dry run: never
    # delivered) to a token shaped like a registration token that Google never
    # issued. FCM authenticates the request and looks the project up first, so
    # 400 INVALID_ARGUMENT on the token (or 404 UNREGISTERED) proves both.
    PROBE_TOKEN: ClassVar[str] = "0" * 22 + ":APA91b" + "0" * 134
    _ACCOUNT_FIX: ClassVar[str] = (
        "create a new key for the project's service account (Firebase console > Project "
        "settings > Service accounts > Generate new private key) and point "
        "service_account_file at it"
    )
    _PROJECT_FIX: ClassVar[str] = (
        "project_id (or the service account's project_id) must be the Firebase project id "
        "(Project settings > General), and the service account must belong to it"
    )
    #: FCM's answers to the probe, by errorCode or google.rpc status -> (verdict, meaning, fix).
    PROBE_VERDICTS: ClassVar[Mapping[str, tuple[ProbeStatus, str, str]]] = {
        "INVALID_ARGUMENT": (ProbeStatus.PASS, "credentials and project accepted", ""),
        "UNREGISTERED": (ProbeStatus.PASS, "credentials and project accepted", ""),
        "SENDER_ID_MISMATCH": (ProbeStatus.FAIL, "FCM says the project is not the token's "
                               "sender", _PROJECT_FIX),
        "NOT_FOUND": (ProbeStatus.FAIL, "FCM does not know the project", _PROJECT_FIX),
        "PERMISSION_DENIED": (
            ProbeStatus.FAIL, "the service account may not send for the project",
            "use a key of the project's own firebase-adminsdk service account (or grant "
            "it Firebase Cloud Messaging API Admin), and enable the Firebase Cloud Messaging "
            "API (V1) for the project"),
        "UNAUTHENTICATED": (ProbeStatus.FAIL, "FCM refused the access token", _ACCOUNT_FIX),
        "THIRD_PARTY_AUTH_ERROR": (
            ProbeStatus.FAIL, "FCM refused the project's APNs or web-push credentials",
            "re-upload the APNs key in Firebase console > Project settings > Cloud Messaging"),
    }

    def __init__(self, app: AppConfig, *, credential: Any = None) -> None:
        super().__init__(app)
        # Cheap check (no import) so a missing extra is reported when the
        # configuration is loaded, not only when the app server starts.
        if importlib.util.find_spec("firebase_admin") is None:
            raise MissingDependency("firebase-admin", "fcm", f"FCM app {app.id!r}")
        self._credential_in = credential
        self.base_url = (app.endpoint or self.DEFAULT_ENDPOINT).rstrip("/")
        self.timeout = float(app.timeout)
        self.project_id: str | None = app.project_id
        self._fb_app: Any = None
        self._service: Any = None
        self._messaging: Any = None
        self._exceptions: Any = None
        self._transport: _Transport | None = None
        self._tokens: _TokenSource | None = None
        self._started = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    def _key(self, name: str) -> str:
        """Dotted config key of this app's ``name`` setting, spelled as config.py does."""
        app_id = self.app.id
        where = f"apps.{app_id}" if "." not in app_id else f'apps."{app_id}"'
        return f"{where}.{name}"

    def _import_sdk(self) -> tuple[Any, Any, Any, Any]:
        """Import firebase-admin and friends, or say which extra is missing."""
        try:
            import firebase_admin
            import google.auth.transport.requests
            import httpx
            from firebase_admin import exceptions, messaging
        except ImportError as exc:
            raise MissingDependency("firebase-admin", "fcm", f"FCM app {self.app.id!r}") from exc
        # XEP-0357 clients register FCM *registration tokens*: firebase-admin 7.7
        # deprecates Message.token in favour of ``fid`` (installation ids), which
        # is not what we hold.
        warnings.filterwarnings(
            "ignore", message=r"Message\.token is deprecated", category=DeprecationWarning
        )
        for owner, name in (
            (messaging, "_get_messaging_service"),
            (messaging, "send_each_async"),
            (messaging._MessagingService, "encode_message"),
        ):
            if not hasattr(owner, name):
                raise PushError(
                    f"FCM app {self.app.id!r}: firebase-admin {firebase_admin.__version__} "
                    f"lacks {name}; use firebase-admin 7.x"
                )
        return firebase_admin, messaging, exceptions, (httpx, google.auth.transport.requests)

    async def start(self) -> None:
        """Create this provider's firebase App and install the transport.

        Blocking work (reading the key file, building the SDK's clients) runs
        in worker threads, so starting an FCM app never stalls live streams.
        Raises :class:`MissingDependency` without firebase-admin and
        :class:`ConfigError` for a missing/unreadable key file or project id.
        An unreachable token endpoint is only logged: sends come back RETRY.
        """
        if self._started:
            return
        firebase_admin, messaging, exceptions, (httpx, g_requests) = self._import_sdk()
        app = self.app
        credential = self._credential_in
        if credential is None:
            if not app.service_account_file:
                raise ConfigError(self._key("service_account_file"), "required for an FCM app")
            from firebase_admin import credentials as fb_credentials

            try:
                credential = await asyncio.to_thread(
                    fb_credentials.Certificate, app.service_account_file
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    self._key("service_account_file"),
                    f"cannot load the service account ({type(exc).__name__}: {str(exc)[:200]})",
                ) from exc
        google_cred = (
            credential.get_credential() if hasattr(credential, "get_credential") else credential
        )
        project = (
            app.project_id
            or getattr(credential, "project_id", None)
            or getattr(google_cred, "project_id", None)
        )
        if not project:
            raise ConfigError(self._key("project_id"), "required: the credential names no project")
        self.project_id = project

        def build() -> tuple[Any, Any, Any]:
            """The blocking part (~0.1 s: certificate stores loaded for the SDK's
            own httpx clients and ours), run in a worker thread."""
            ctx = ssl.create_default_context(cafile=app.ca_file) if app.ca_file else None
            client = httpx.AsyncClient(
                http2=True,
                verify=ctx if ctx is not None else True,
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(keepalive_expiry=self.KEEPALIVE),
            )
            fb_app = firebase_admin.initialize_app(
                credential,
                {"projectId": project, "httpTimeout": self.timeout},
                name=f"slixmpp-push:{app.id}:{next(_app_names)}",
            )
            try:
                service = messaging._get_messaging_service(fb_app)
                for attr in ("_async_client", "_fcm_url"):
                    if not hasattr(service, attr):
                        raise PushError(
                            f"FCM app {app.id!r}: firebase-admin {firebase_admin.__version__} "
                            f"has no messaging service attribute {attr}; use firebase-admin 7.x"
                        )
            except BaseException:
                # No loop runs in this thread, so delete_app's asyncio.run works here.
                firebase_admin.delete_app(fb_app)
                raise
            return client, fb_app, service

        client, fb_app, service = await asyncio.to_thread(build)
        self._tokens = _TokenSource(google_cred, g_requests.Request())
        metrics = {"x-goog-api-client": f"fire-admin/{firebase_admin.__version__} slixmpp-push"}
        transport = _Transport(client, self._tokens, metrics)
        original = service._async_client
        service._async_client = transport
        service._fcm_url = f"{self.base_url}/v1/projects/{project}/messages:send"
        try:
            await original.aclose()  # the SDK's client, never used: closed inside the loop
        except Exception:
            log.debug("FCM app %r: closing the SDK's unused client failed", app.id)
        self._fb_app, self._service, self._transport = fb_app, service, transport
        self._messaging, self._exceptions = messaging, exceptions
        self._started = True
        try:  # fail early on bad credentials, but do not refuse to start when offline
            await self._tokens.ensure_fresh()
        except Exception as exc:
            log.warning(
                "FCM app %r: no access token yet (%s); will retry on send",
                app.id,
                type(exc).__name__,
            )
        log.info("FCM app %r: project %s via %s", app.id, project, self.base_url)

    async def close(self) -> None:
        """Close the HTTP client inside the loop, then delete the firebase App.

        Order matters: ``firebase_admin.delete_app`` closes the service's
        client with ``asyncio.run``, which cannot run inside a running loop.
        So the real transport is closed here first, a no-op stand-in is left
        in the service, and ``delete_app`` runs in a worker thread. Safe to
        call twice, or without :meth:`start`; never raises.
        """
        if self._closed:
            return
        self._closed = True
        if self._tokens is not None:
            self._tokens.cancel()
        transport, service, fb_app = self._transport, self._service, self._fb_app
        self._transport = self._service = self._fb_app = None
        if transport is not None:
            try:
                await transport.aclose()
            except Exception:
                log.exception("FCM app %r: closing the HTTP client failed", self.app.id)
        if service is not None:
            service._async_client = _ClosedTransport()
        if fb_app is not None:
            import firebase_admin

            try:
                await asyncio.to_thread(firebase_admin.delete_app, fb_app)
            except Exception:
                log.exception("FCM app %r: deleting the firebase App failed", self.app.id)

    # -- the probe -----------------------------------------------------------

    async def probe(self, timeout: float) -> ProbeResult:
        """A dry run (``validate_only``) to :attr:`PROBE_TOKEN`: nothing is delivered."""
        if not self._started or self._closed or self._tokens is None:
            raise RuntimeError("FcmProvider.probe() before start()")
        try:
            await asyncio.wait_for(self._tokens.ensure_fresh(), timeout)
        except TimeoutError:
            return ProbeResult(ProbeStatus.FAIL, f"no access token within {timeout:g} s",
                               "outbound HTTPS to oauth2.googleapis.com must be allowed")
        except Exception as exc:
            return self._token_failure(exc)
        message = self.build_message(FcmRequest(token=self.PROBE_TOKEN, data={"probe": "1"}))
        try:
            batch = await asyncio.wait_for(
                self._messaging.send_each_async([message], dry_run=True, app=self._fb_app),
                timeout,
            )
            response = batch.responses[0]
        except TimeoutError:
            return ProbeResult(ProbeStatus.FAIL, f"no answer from {self.base_url} within "
                               f"{timeout:g} s", "outbound HTTPS to fcm.googleapis.com must be "
                               "allowed")
        except self._exceptions.FirebaseError as exc:
            return self.judge_probe(exc, self._offset())
        return self.judge_probe(None if response.success else response.exception, self._offset())

    def _offset(self) -> float | None:
        last = self._transport.last_date if self._transport is not None else None
        return clock_offset(*last) if last is not None else None

    def judge_probe(self, exc: BaseException | None, offset: float | None) -> ProbeResult:
        """FCM's answer to the probe as a verdict (``exc`` None: it was accepted)."""
        about = f"project {self.project_id}"
        if exc is None:
            return ProbeResult(ProbeStatus.WARN, f"{self.base_url} accepted a message to a token "
                               f"that cannot exist: is it really FCM? ({about})",
                               "check endpoint: unset it to reach Google", offset)
        response = getattr(exc, "http_response", None)
        status = response.status_code if response is not None else None
        rpc = _rpc_status(response)
        code = _fcm_error_code(response) or rpc
        cause = getattr(exc, "cause", None)
        if status is None:  # no answer at all: transport trouble
            what = transport_reason(cause) if cause is not None else str(exc)
            return ProbeResult(ProbeStatus.FAIL, f"cannot reach {self.base_url}: {what}",
                               "outbound HTTPS to fcm.googleapis.com must be allowed "
                               "(with endpoint set: ca_file must hold its CA)", offset)
        answer = f"{status} {code or ''}".strip()
        verdict = self.PROBE_VERDICTS.get(code or "")
        if code == "INVALID_ARGUMENT" and not _about_token(response):
            verdict = None  # the message itself was refused: not the expected answer
        if verdict is None:
            if status >= 500 or status == 429:
                return ProbeResult(ProbeStatus.FAIL, f"FCM is unavailable ({answer}): "
                                   "credentials not verified", "try again later", offset)
            return ProbeResult(ProbeStatus.FAIL, f"unexpected answer {answer} ({about}): "
                               f"{_rpc_message(response)}", "see docs/providers.md", offset)
        verdict_status, meaning, fix = verdict
        if verdict_status is ProbeStatus.PASS:
            return ProbeResult(verdict_status, f"{meaning} ({about}): the dry run to a test "
                               f"token got {answer}, as expected", "", offset)
        return ProbeResult(verdict_status, f"{meaning}: {answer} ({about}): "
                           f"{_rpc_message(response)}", fix, offset)

    def _token_failure(self, exc: Exception) -> ProbeResult:
        """google-auth could not get an access token for the service account."""
        names = _mro_names(exc)
        text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else names[0]
        text = text[:200]
        if "TransportError" in names:
            return ProbeResult(ProbeStatus.FAIL, f"cannot reach Google's token endpoint: {text}",
                               "outbound HTTPS to oauth2.googleapis.com must be allowed")
        if "reasonable timeframe" in text or "short-lived" in text:
            fix = ("Google judges the assertion's time by its own clock: set this machine's "
                   "clock right (NTP: timedatectl set-ntp true; see the clock check)")
        else:
            fix = f"the key was deleted or revoked, or the account removed: {self._ACCOUNT_FIX}"
        return ProbeResult(ProbeStatus.FAIL,
                           f"Google's token endpoint refused the service account: {text}", fix)

    # -- sending -------------------------------------------------------------

    async def send(self, request: PushRequest) -> DeliveryResult:
        """Send one message; every expected failure comes back as a result."""
        if not isinstance(request, FcmRequest):
            return DeliveryResult(Outcome.REJECTED, reason="NOT_AN_FCM_REQUEST")
        return (await self.send_many([request]))[0]

    async def send_many(self, requests: Sequence[FcmRequest]) -> list[DeliveryResult]:
        """Send many messages (fan-out), in ``send_each_async`` chunks of <= 500.

        Results are in the order of ``requests``. Chunks go one after the
        other, each bounded by ``timeout``; all messages of a chunk that
        misses it come back RETRY (some may have been delivered: FCM pushes
        are at-least-once).
        """
        results: list[DeliveryResult] = []
        for start in range(0, len(requests), self.MAX_BATCH):
            results.extend(await self._send_chunk(requests[start : start + self.MAX_BATCH]))
        return results

    def build_message(self, request: FcmRequest) -> Any:
        """The firebase-admin ``Message`` for one request (a data message, plus a
        visible Android notification only when a title or body is set)."""
        m = self._messaging
        notification = None
        if request.title is not None or request.body is not None:
            notification = m.AndroidNotification(
                title=request.title,
                body=request.body,
                channel_id=request.channel_id or self.app.android_channel,
                tag=request.tag,
            )
        return m.Message(
            token=request.token,
            data=request.data,
            android=m.AndroidConfig(
                priority=request.priority,
                ttl=request.ttl,
                collapse_key=request.collapse_key,
                notification=notification,
            ),
        )

    async def _send_chunk(self, requests: Sequence[FcmRequest]) -> list[DeliveryResult]:
        if not self._started or self._closed or self._tokens is None:
            return [DeliveryResult(Outcome.RETRY, reason="PROVIDER_NOT_RUNNING")] * len(requests)
        held = self.paused()
        if held is not None:
            return [held] * len(requests)
        results: list[DeliveryResult | None] = [None] * len(requests)
        pending: list[tuple[int, Any]] = []
        for i, request in enumerate(requests):
            try:
                message = self.build_message(request)
                # Validate here: one invalid message must not fail the whole batch.
                self._messaging._MessagingService.encode_message(message)
            except (ValueError, TypeError) as exc:
                log.info("FCM %s: invalid message for %s: %s", self.id, _redact(request.token), exc)
                results[i] = DeliveryResult(Outcome.REJECTED, reason=f"INVALID_MESSAGE: {exc}")
                continue
            pending.append((i, message))
        try:
            async with asyncio.timeout(self.timeout):
                await self._deliver(requests, pending, results)
        except TimeoutError as exc:
            traceback.clear_frames(exc.__traceback__)
            log.debug("FCM %s: %d message(s) timed out", self.id, len(pending))
        return [
            self.note(self._judge(r)) if r is not None
            else self.note(DeliveryResult(Outcome.RETRY, reason=TIMEOUT))
            for r in results
        ]

    def _judge(self, result: DeliveryResult) -> DeliveryResult:
        """Pause or resume the app by what one result says about it."""
        if result.reason.startswith(AUTH_REJECTED):
            return self.pause(self.AUTH_PAUSE, result.reason, auth=True, status=result.status)
        if result.status is not None and result.status not in (401, 403):
            self.resume()  # FCM answered: our credentials were accepted
            if result.outcome is Outcome.RETRY and result.retry_after and (
                    result.status >= 500 or result.status == 429):
                # Project quota or FCM's outage: every device would get the same answer.
                return self.pause(result.retry_after, result.reason, auth=False,
                                  status=result.status)
        return result

    async def _deliver(
        self,
        requests: Sequence[FcmRequest],
        pending: list[tuple[int, Any]],
        results: list[DeliveryResult | None],
    ) -> None:
        """Fill ``results`` for ``pending``; one resend of lost-connection failures."""
        assert self._tokens is not None
        try:
            await self._tokens.ensure_fresh()
        except Exception as exc:
            result = self._auth_failure(exc)
            for i, _ in pending:
                results[i] = result
            return
        for attempt in range(self.RESENDS + 1):
            if not pending:
                return
            batch = await self._send_each([msg for _, msg in pending])
            resend: list[tuple[int, Any]] = []
            for (i, msg), (result, lost) in zip(pending, batch, strict=True):
                if lost and attempt < self.RESENDS:
                    resend.append((i, msg))
                results[i] = result
                if result.outcome is not Outcome.DELIVERED:
                    log.debug(
                        "FCM %s: %s for %s (%s)",
                        self.id,
                        result.outcome.value,
                        _redact(requests[i].token),
                        result.reason,
                    )
            pending = resend

    async def _send_each(self, messages: list[Any]) -> list[tuple[DeliveryResult, bool]]:
        """One ``send_each_async`` call: (result, connection-lost?) per message."""
        try:
            batch = await self._messaging.send_each_async(messages, app=self._fb_app)
        except self._exceptions.FirebaseError as exc:  # the whole batch failed
            return [self._classify(exc)] * len(messages)
        out: list[tuple[DeliveryResult, bool]] = []
        for response in batch.responses:
            if response.success:
                out.append(
                    (DeliveryResult(Outcome.DELIVERED, 200, message_id=response.message_id), False)
                )
            else:
                out.append(self._classify(response.exception))
        return out

    def _classify(self, exc: BaseException) -> tuple[DeliveryResult, bool]:
        """Map a firebase-admin exception to a result (+ whether to resend at once)."""
        names = _mro_names(exc)
        response = getattr(exc, "http_response", None)
        status = response.status_code if response is not None else None
        retry_after = (
            parse_retry_after(response.headers.get("retry-after"))
            if response is not None
            else None
        )
        reason = _fcm_error_code(response) or str(getattr(exc, "code", "") or names[0])
        cause = getattr(exc, "cause", None)
        if response is None and cause is not None:
            # No answer: name the transport failure (firebase-admin calls a TLS
            # verify failure and a refused connection alike "UNAVAILABLE").
            reason = transport_reason(cause)
            traceback.clear_frames(cause.__traceback__)
        outcome = next((self.ERROR_OUTCOMES[n] for n in names if n in self.ERROR_OUTCOMES), None)
        lost = False
        if outcome is None:
            cause_names = _mro_names(cause) if cause is not None else []
            if self.TRANSPORT_ERRORS.intersection(cause_names):
                outcome = Outcome.RETRY
                lost = bool(self.RESEND_ERRORS.intersection(cause_names))
            elif self.AUTH_ERRORS.intersection(names):
                outcome = Outcome.RETRY
                reason = f"{AUTH_REJECTED}: {_rpc_status(response) or reason}"
            elif status is not None and status >= 500:
                outcome = Outcome.RETRY  # 502/504 from a front end
            else:
                outcome = Outcome.REJECTED
        if outcome is Outcome.RETRY:
            least = next((self.MIN_RETRY_AFTER[n] for n in names if n in self.MIN_RETRY_AFTER),
                         None)
            if least is not None:
                retry_after = max(retry_after or 0.0, least)
        else:
            retry_after = None
        return DeliveryResult(outcome, status, reason, retry_after), lost

    def _auth_failure(self, exc: Exception) -> DeliveryResult:
        """No access token: retry if google-auth says it is transient, else pause the app."""
        names = _mro_names(exc)
        if "TransportError" in names or bool(getattr(exc, "retryable", False)):
            return DeliveryResult(Outcome.RETRY, reason=f"access token: {transport_reason(exc)}")
        # RefreshError: the key was deleted or revoked, or the account removed.
        return DeliveryResult(Outcome.RETRY,
                              reason=f"{AUTH_REJECTED}: service account refused ({names[0]})")
