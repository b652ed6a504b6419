"""TLS contexts for the Storage SCP (server) and the delivery SCU (client).

References
----------
DICOM PS3.15 B.1 (The Basic TLS Secure Transport Connection Profile);
Python ``ssl`` module; pynetdicom ``ssl_context`` / ``tls_args``.
"""

from __future__ import annotations

import ssl

from sct_node.config import TlsConfig
from sct_node.errors import ConfigError

__all__ = ["client_context", "server_context"]


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context with our certificate; verifies client certificates when required.

    Raises
    ------
    ConfigError
        If the certificate, key or CA bundle is missing or unreadable.
    """
    if tls.certificate is None or tls.private_key is None:
        raise ConfigError("network.tls needs certificate and private_key for the Storage SCP")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, tls)
    if tls.require_client_certificate:
        if tls.ca_certificates is None:
            raise ConfigError("network.tls.require_client_certificate needs ca_certificates to verify clients")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client context that verifies the destination against ``ca_certificates`` only (or the system CAs).

    With ``ca_certificates`` the system's public CAs are *not* trusted: the host name is not checked
    (DICOM peers are addressed by IP more often than by name), so the private CA is what pins who the
    destination is, and a certificate any public CA issued to anyone must not pass.
    """
    if tls.ca_certificates is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    _load(context, tls)
    return context


def _load(context: ssl.SSLContext, tls: TlsConfig) -> None:
    try:
        if tls.certificate is not None and tls.private_key is not None:
            context.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificates is not None:
            context.load_verify_locations(str(tls.ca_certificates))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"TLS files cannot be loaded: {error}") from None
