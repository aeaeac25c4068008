"""The ``credentials <app>`` checks: does each credential file hold what it should?

Read without connecting, so that a wrong file is named as such before Apple or
Google refuse it for a vaguer reason: an APNs ``.p8`` must be an EC P-256 key
(and its file name says which key id it is), an APNs certificate must come
with its private key and not be expired or expiring soon, and an FCM
service-account file must be a service-account key (not an app's
``google-services.json``) of the configured project. Console apps have none.
"""

from __future__ import annotations

import datetime
import json
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import AppConfig
from .report import CheckResult, app_check_name, failed, passed, warned

if TYPE_CHECKING:
    from cryptography import x509

#: An APNs certificate expiring within this many days is a warning.
CERT_WARN_DAYS = 30


def check_credentials(app: AppConfig, now: datetime.datetime | None = None
                      ) -> CheckResult | None:
    """The app's key, certificate or service account, read without connecting
    (None for console apps, which have none)."""
    credential = _credential_file(app)
    if credential is None:
        return None
    setting, file = credential
    name = app_check_name("credentials", app)
    path = Path(file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return failed(name, f"{setting} {path}: cannot read: {exc.strerror or exc}",
                      "make it readable by the service's user (chown, chmod 600)")
    if setting == "key_file":
        return _check_p8(name, app, path, data)
    if setting == "cert_file":
        return _check_certificate(name, app, path, data,
                                  now or datetime.datetime.now(datetime.UTC))
    return _check_service_account(name, app, path, data)


def _credential_file(app: AppConfig) -> tuple[str, str] | None:
    """(setting, file) of the app's credential file; None when it has none."""
    if app.type == "apns" and app.key_file:
        return "key_file", app.key_file
    if app.type == "apns" and app.cert_file:
        return "cert_file", app.cert_file
    if app.type == "fcm" and app.service_account_file:
        return "service_account_file", app.service_account_file
    return None


def _check_p8(name: str, app: AppConfig, path: Path, data: bytes) -> CheckResult:
    """An APNs token-auth key: an EC P-256 key, in a file named for its key id."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return failed(name, f"key_file {path.name} is not a PEM private key (.p8)",
                      "use the AuthKey_<key id>.p8 file from developer.apple.com > Keys, "
                      "unchanged (Apple lets you download it once: else create a new key)")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else \
            type(key).__name__.removeprefix("_")
        return failed(name, f"key_file {path.name} holds a {kind} key; APNs keys are EC "
                            "P-256 (ES256)", "use the .p8 key from developer.apple.com > Keys")
    named = re.fullmatch(r"AuthKey_([A-Z0-9]{10})\.p8", path.name)
    if named and named[1] != app.key_id:
        return warned(name, f"key_file is named {path.name}, but key_id is {app.key_id}",
                      f"key_id must be this key's id: Apple names the file "
                      f"AuthKey_<key id>.p8, so probably key_id = \"{named[1]}\"")
    return passed(name, f"key_file {path.name}: an EC P-256 (ES256) key, key_id {app.key_id}, "
                        f"team_id {app.team_id}")


def _check_certificate(name: str, app: AppConfig, path: Path, data: bytes,
                       now: datetime.datetime) -> CheckResult:
    """An APNs certificate: with its private key, valid now and for a while, for the topic."""
    from cryptography import x509

    renew = ("renew the APNs certificate (developer.apple.com > Certificates) and export it "
             "with its key as one PEM; or switch to token auth (key_file), which does not "
             "expire")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return failed(name, f"cert_file {path.name} holds no PEM certificate",
                      "one PEM file with the certificate and its unencrypted private key "
                      "(openssl pkcs12 -in cert.p12 -out cert.pem -nodes)")
    try:
        ssl.create_default_context().load_cert_chain(path)
    except (ssl.SSLError, OSError) as exc:
        return failed(name, f"cert_file {path.name}: no private key that matches the "
                            f"certificate ({getattr(exc, 'reason', None) or exc})",
                      "put the certificate and its unencrypted private key in one PEM "
                      "(openssl pkcs12 -in cert.p12 -out cert.pem -nodes)")
    not_after = cert.not_valid_after_utc
    when = not_after.strftime("%Y-%m-%d %H:%M UTC")
    if not_after <= now:
        return failed(name, f"cert_file {path.name} expired on {when}", renew)
    if cert.not_valid_before_utc > now:
        return failed(name, f"cert_file {path.name} is not valid before "
                            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                      "check this machine's clock, or wait")
    days = (not_after - now).days
    if days < CERT_WARN_DAYS:
        return warned(name, f"cert_file {path.name} expires in {days} day(s), on {when}",
                      renew)
    bundle = _certificate_topic(cert)
    if bundle and bundle != app.topic:
        return warned(name, f"cert_file {path.name} is for bundle id {bundle}, but topic is "
                            f"{app.topic}", f"topic must be the certificate's bundle id, "
                                            f"\"{bundle}\"")
    return passed(name, f"cert_file {path.name}: certificate and key, valid until {when} "
                        f"({days} days)")


def _certificate_topic(cert: x509.Certificate) -> str | None:
    """The bundle id of an Apple push certificate (its subject's UID)."""
    from cryptography.x509.oid import NameOID

    values = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    value = values[0].value if values else None
    return value if isinstance(value, str) else None


def _check_service_account(name: str, app: AppConfig, path: Path, data: bytes
                           ) -> CheckResult:
    """An FCM service-account key (not google-services.json), of the app's project."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    new_key = ("Firebase console > Project settings > Service accounts > Generate new "
               "private key, and point service_account_file at that file")
    try:
        account = json.loads(data)
    except ValueError:
        return failed(name, f"service_account_file {path.name} is not JSON", new_key)
    if not isinstance(account, dict):
        return failed(name, f"service_account_file {path.name} is not a service-account key",
                      new_key)
    if "project_info" in account:
        return failed(name, f"service_account_file {path.name} is an Android app's "
                            "google-services.json, not a service-account key", new_key)
    if account.get("type") != "service_account":
        return failed(name, f"service_account_file {path.name} is of type "
                            f"{account.get('type')!r}, not a service-account key", new_key)
    email = account.get("client_email")
    if not isinstance(email, str) or not email:
        return failed(name, f"service_account_file {path.name} has no client_email", new_key)
    try:
        key = load_pem_private_key(str(account.get("private_key", "")).encode(), None)
    except (ValueError, TypeError):
        return failed(name, f"service_account_file {path.name}: its private_key is not a PEM "
                            "private key", new_key)
    if not isinstance(key, rsa.RSAPrivateKey):
        return failed(name, f"service_account_file {path.name}: its private_key is not RSA",
                      new_key)
    own = account.get("project_id")
    project = app.project_id or own
    if app.project_id and own and app.project_id != own:
        return warned(name, f"project_id is {app.project_id}, but the service account "
                            f"{email} belongs to {own}",
                      "use a service account of the app's Firebase project (or grant this one "
                      "Firebase Cloud Messaging API Admin there)")
    return passed(name, f"service account {email}, project {project}")
