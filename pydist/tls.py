"""TLS for links that cross networks: `addprocs(..., tls=TLSConfig(cert, key, ca))`.

Every link of the cluster, worker-to-worker included, is then wrapped in TLS before the
cookie handshake, and both ends must show a certificate signed by `ca` (mutual TLS).  Host
names are not checked — workers come and go at addresses nobody knows in advance — the CA
is the trust anchor.  Workers get the three file paths as command-line flags (paths only;
the key itself never leaves its file).
"""

from __future__ import annotations

import dataclasses
import socket
import ssl

from . import settings


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    """Paths of this process's certificate and key (PEM) and of the CA that signs every
    certificate of the cluster."""
    cert: str
    key: str
    ca: str

    def argv(self) -> list[str]:
        """The worker flags that pass this configuration on."""
        return ["--tls-cert", self.cert, "--tls-key", self.key, "--tls-ca", self.ca]

    def _context(self, server: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        context.load_verify_locations(self.ca)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def wrap(self, sock: socket.socket, server: bool) -> ssl.SSLSocket:
        """TLS over an open socket; raises ssl.SSLError if the peer's certificate is refused."""
        old = sock.gettimeout()
        sock.settimeout(settings.HANDSHAKE_TIMEOUT)
        wrapped = self._context(server).wrap_socket(sock, server_side=server)
        wrapped.settimeout(old)
        return wrapped
