"""Device tokens shaped as Apple and Google issue them.

The app server refuses a token of the wrong shape (slixmpp_push/limits.py), so
test data must look like the real thing: distinct seeds give distinct tokens.
"""

from __future__ import annotations

import base64
import hashlib


def apns_token(seed: object = 0) -> str:
    """64 hex digits (32 bytes), as Apple issues device and PushKit tokens."""
    return hashlib.sha256(f"apns {seed}".encode()).hexdigest()


def fcm_token(seed: object = 0) -> str:
    """``<22 characters>:APA91b<134 characters>`` (163 in all), as FCM issues them."""
    digest = hashlib.sha512(f"fcm {seed}".encode()).digest()
    text = base64.urlsafe_b64encode(digest * 2).decode().rstrip("=")
    return f"{text[:22]}:APA91b{text[22:156]}"
