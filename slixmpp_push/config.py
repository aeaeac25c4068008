"""Configuration: one TOML file, parsed once into typed dataclasses.

Every key is documented in ``docs/configuration.md``; defaults live here only.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
