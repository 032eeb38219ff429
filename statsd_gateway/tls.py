"""TLS for the HTTP listener: server contexts built from PEM files, and a certificate that a
reload replaces while the listener stays open.

`server_context()` is also what config validation runs, so `check-config`, start and SIGHUP
refuse the same files with the same messages, each naming `http.tls.cert_file` or
`http.tls.key_file`.

`ServerCertificate.reload()` builds a whole new context from the files and makes it the one that
new handshakes use; connections already open keep theirs. The listener's own context never
changes: its SNI callback, which OpenSSL calls on every handshake (with or without a server
name in the ClientHello), hands the handshake to the current context. Loading a new chain into
the listener's context instead would leave it half replaced (the new certificate, no key) when
the new key does not match.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from statsd_gateway.errors import ConfigError

CERT_KEY = "http.tls.cert_file"
KEY_KEY = "http.tls.key_file"


def _no_password() -> bytes:
    # Without a callback OpenSSL asks for a passphrase on the terminal, which would hang a
    # daemon's start or reload on an encrypted key; an empty one makes it fail instead.
    return b""


def _readable(path: str, key: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server SSLContext (TLS 1.2 or later, no client certificates) serving the PEM chain in
    `cert_file` (the server's certificate first, then intermediates) with the PEM key in
    `key_file`; ConfigError naming the file's key if either cannot be used."""
    chain = _readable(cert_file, CERT_KEY)
    _readable(key_file, KEY_KEY)
    try:
        ssl.create_default_context(cadata=chain)
    except (ssl.SSLError, ValueError):
        raise ConfigError(CERT_KEY, f"{cert_file} holds no PEM certificate") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            message = f"the key in {key_file} does not match the certificate in {cert_file}"
        else:
            message = (
                f"{key_file} holds no usable PEM private key (an encrypted key is not supported)"
            )
        raise ConfigError(KEY_KEY, message) from None
    except OSError as e:  # the file went away between the two reads
        raise ConfigError(KEY_KEY, f"cannot read {key_file}: {e.strerror}") from None
    return ctx


class ServerCertificate:
    """The TLS side of the HTTP listener: `context` goes to the listening socket once;
    `reload()` changes what the following handshakes are served."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = server_context(cert_file, key_file)
        self._current = self.context
        self.context.sni_callback = self._select

    def reload(self, cert_file: str, key_file: str) -> None:
        """Serves the files' certificate to new connections; ConfigError (and the one served
        so far stays) if they cannot be used."""
        new = server_context(cert_file, key_file)
        self.cert_file, self.key_file = cert_file, key_file
        self._current = new

    def _select(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        if ctx is not self._current:
            conn.context = self._current
