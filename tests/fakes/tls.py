"""A throwaway certificate authority for local fake servers (APNs, FCM).

The fakes listen on 127.0.0.1 with a certificate issued here; the code under
test is pointed at them through its ``endpoint`` + ``ca_file`` settings, so the
real TLS and HTTP/2 stacks run, with nothing trusted beyond this test::

    ca = TestCA(tmp_path)
    server_ctx = ca.server_ssl_context(alpn=["h2"])
    app = AppConfig(..., endpoint=f"127.0.0.1:{port}", ca_file=str(ca.ca_file))
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import trustme

__all__ = ["TestCA"]


class TestCA:
    """A CA (via ``trustme``) with one server certificate for 127.0.0.1/localhost.

    ``folder`` receives ``ca.pem`` (the file clients trust, :attr:`ca_file`) and
    any client certificates issued with :meth:`issue_client_cert`.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA()
        self._server_cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.ca_file = self.folder / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    def server_ssl_context(
        self, alpn: list[str] | None = None, *, verify_client: bool = False
    ) -> ssl.SSLContext:
        """A server context presenting the 127.0.0.1/localhost certificate.

        ``alpn``: protocols to offer (``None`` offers none, like a server that
        does not need ALPN). ``verify_client``: ask for a client certificate
        (optional, so token-auth clients still connect) and check it against
        this CA; the server can then read it with ``getpeercert()``.
        """
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if verify_client:
            self._ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def switchable_server_context(
        self, untrusted: Callable[[], bool], alpn: list[str] | None = None, *,
        verify_client: bool = False,
    ) -> ssl.SSLContext:
        """:meth:`server_ssl_context`, but while ``untrusted()`` is true each new
        handshake presents a certificate from another CA, one the client does
        not trust (a fault that can start and end while the server runs)."""
        ctx = self.server_ssl_context(alpn, verify_client=verify_client)
        impostor = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trustme.CA().issue_cert("127.0.0.1", "localhost", "::1").configure_cert(impostor)
        if alpn:
            impostor.set_alpn_protocols(alpn)

        def choose(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            # Called for every ClientHello, with or without SNI.
            if untrusted():
                sslobj.context = impostor

        ctx.sni_callback = choose
        return ctx

    def client_ssl_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        """A client context trusting only this CA."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def issue_client_cert(self, name: str = "client@example.com") -> Path:
        """Write a client certificate + key PEM (one file) and return its path."""
        cert = self._ca.issue_cert(name, common_name=name)
        path = self.folder / f"client-{name.replace('@', '_at_')}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path
