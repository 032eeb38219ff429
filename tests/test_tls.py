"""HTTPS on the HTTP listener (`http.tls`), with the real daemon and a real TLS client.

The test makes its own self-signed certificates with the `openssl` command line. A SIGHUP reads
the files again: a renewed certificate is served to new connections (open ones keep theirs), a
bad renewal is refused and the running certificate stays."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from statsd_gateway.cli import main
from statsd_gateway.errors import ConfigError
from statsd_gateway.tls import ServerCertificate
from tests.conftest import missing_prerequisite
from tests.daemon import Daemon, poll_value, wait_for_log, write_config

KEY = "tls-key"


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        missing_prerequisite("the openssl command is missing (apt-get install openssl)")
    return path


def make_cert(directory: Path, name: str, serial: int) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (subject CN=`name`) and its key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    extensions = (
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "basicConstraints=critical,CA:TRUE",
        "keyUsage=critical,digitalSignature,keyCertSign",
    )
    args = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    args += ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"]
    args += ["-set_serial", str(serial)]
    for ext in extensions:
        args += ["-addext", ext]
    subprocess.run(
        [_openssl(), *args], check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL
    )
    return cert, key


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text(encoding="ascii"))


def client_context(*trusted: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for cert in trusted:
        ctx.load_verify_locations(cafile=str(cert))
    return ctx


def served_cert(d: Daemon, server_hostname: str = "127.0.0.1") -> bytes:
    """The certificate a new connection is served (no SNI for an IP address, SNI for a name)."""
    assert d.ssl_context is not None
    with (
        socket.create_connection(("127.0.0.1", d.http_port), timeout=10) as raw,
        d.ssl_context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def tls_config(tmp_path: Path, cert: Path, key: Path) -> Path:
    path = tmp_path / "tls.yaml"
    write_config(path, tmp_path / "state", flush_interval="1s")
    text = path.read_text(encoding="utf-8").replace(
        "http:\n", f"http:\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n"
    )
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    path.write_text(text + f"auth:\n  keys:\n    - name: k\n      sha256: {sha}\n", "utf-8")
    return path


def sighup(d: Daemon, wait_for: str) -> list[str]:
    mark = len(d.lines)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, wait_for, mark)
    return d.lines[mark:]


def test_https_serves_the_api_and_a_sighup_serves_a_renewed_certificate(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    old_cert, old_key = make_cert(tmp_path / "made", "gateway-old", 1001)
    new_cert, new_key = make_cert(tmp_path / "made", "gateway-new", 1002)
    served = tmp_path / "tls"
    served.mkdir()
    cert, key = served / "fullchain.pem", served / "privkey.pem"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    config = tls_config(tmp_path, cert, key)
    d = Daemon(config, ssl_context=client_context(old_cert, new_cert))
    daemons.append(d)
    assert d.http_scheme == "https"
    assert any(f"listening https 127.0.0.1:{d.http_port}" in line for line in d.lines)

    # The API over TLS: health, a report, a query.
    assert d.request("GET", "/healthz", None)[0] == 200
    point = {"name": "tls.hits", "value": 3, "type": "counter"}
    assert d.request("POST", "/v1/metrics/report", KEY, point)[:2] == (200, {"ok": True})
    poll_value(d, KEY, 3, name="tls.hits", agg="sum", since="-5m")
    assert served_cert(d) == der(old_cert)

    # Plain HTTP to the TLS port gets no answer, and costs the daemon nothing.
    plain = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/healthz")
        plain.getresponse()
    plain.close()
    assert d.request("GET", "/healthz", None)[0] == 200

    # A connection opened before the renewal.
    before = http.client.HTTPSConnection(
        "127.0.0.1", d.http_port, timeout=10, context=d.ssl_context
    )
    before.request("GET", "/healthz")
    assert before.getresponse().read()
    assert before.sock is not None

    # A bad renewal (the new certificate, the old key) is refused; the old one is still served.
    shutil.copy(new_cert, cert)
    lines = sighup(d, "keeping the running config")
    refusal = next(line for line in lines if "keeping the running config" in line)
    assert "http.tls.key_file: the key in" in refusal and "does not match" in refusal, refusal
    assert served_cert(d) == der(old_cert)
    assert d.request("GET", "/healthz", None)[0] == 200

    # The good renewal: new connections get the new certificate, with or without SNI.
    shutil.copy(new_key, key)
    sighup(d, "reloaded the certificate")
    assert served_cert(d) == der(new_cert)
    assert served_cert(d, "localhost") == der(new_cert)
    status, body = d.query(KEY, name="tls.hits", agg="sum", since="-5m")
    assert status == 200 and body["points"][0]["value"] == 3
    # ... and the connection opened before keeps its certificate and is still served.
    assert before.sock.getpeercert(binary_form=True) == der(old_cert)
    before.request("GET", "/healthz")
    assert before.getresponse().status == 200
    before.close()

    # Turning TLS off needs a restart: the reload says so and HTTPS goes on.
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace(f"  tls:\n    cert_file: {cert}\n    key_file: {key}\n", ""))
    sighup(d, "http.tls changed; it takes effect after a restart")
    assert served_cert(d) == der(new_cert)
    assert "Traceback" not in d.stderr
    assert d.terminate() == 0


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str | None) -> bytes:
    """The certificate `server` serves `client` in a handshake over memory buffers."""
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(server_in, server_out, server_side=True)
    cli = client.wrap_bio(client_in, client_out, server_hostname=name)
    for _ in range(5):
        try:
            cli.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:
            cert = cli.getpeercert(binary_form=True)
            assert cert is not None
            return cert
        server_in.write(client_out.read())
        with contextlib.suppress(ssl.SSLWantReadError):
            srv.do_handshake()
        client_in.write(server_out.read())
    raise AssertionError("the handshake did not finish")


# ServerCertificate and `check-config` alone, which never reach the ingest path: the same in both
# passes, skipped in the pure-Python one (tests/conftest.py).
@pytest.mark.same_in_both_passes
def test_a_reload_with_files_that_cannot_be_used_keeps_the_served_certificate(
    tmp_path: Path,
) -> None:
    old_cert, old_key = make_cert(tmp_path / "made", "old", 1)
    new_cert, new_key = make_cert(tmp_path / "made", "new", 2)
    served = ServerCertificate(str(old_cert), str(old_key))
    client = client_context(old_cert, new_cert)
    assert handshake(served.context, client, None) == der(old_cert)

    for cert, key in ((new_cert, old_key), (tmp_path / "absent.pem", new_key)):
        with pytest.raises(ConfigError):
            served.reload(str(cert), str(key))
        assert handshake(served.context, client, None) == der(old_cert)
        assert handshake(served.context, client, "localhost") == der(old_cert)

    served.reload(str(new_cert), str(new_key))
    assert handshake(served.context, client, None) == der(new_cert)
    assert handshake(served.context, client, "localhost") == der(new_cert)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return make_cert(tmp_path / "made", "gateway", 7)


def _check(tmp_path: Path, tls: str) -> str:
    path = tmp_path / "check.yaml"
    path.write_text(f"http:\n  tls:\n{tls}", encoding="utf-8")
    assert main(["check-config", str(path)]) == 1
    return path.name


@pytest.mark.same_in_both_passes
def test_check_config_names_the_tls_key_that_is_wrong(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = pair
    other_cert, other_key = make_cert(tmp_path / "other", "other", 8)
    cases = [
        (f"    cert_file: {cert}\n", "http.tls.key_file: required with http.tls.cert_file"),
        (f"    key_file: {key}\n", "http.tls.cert_file: required with http.tls.key_file"),
        (
            f"    cert_file: {tmp_path / 'absent.pem'}\n    key_file: {key}\n",
            "http.tls.cert_file: cannot read",
        ),
        (
            f"    cert_file: {cert}\n    key_file: {tmp_path / 'absent.key'}\n",
            "http.tls.key_file: cannot read",
        ),
        (f"    cert_file: {key}\n    key_file: {key}\n", "http.tls.cert_file: " + str(key)),
        (f"    cert_file: {cert}\n    key_file: {cert}\n", "http.tls.key_file: " + str(cert)),
        (f"    cert_file: {cert}\n    key_file: {other_key}\n", "does not match the certificate"),
        (f"    cert_file: {cert}\n    key_fil: {key}\n", "http.tls.key_fil: unknown key"),
    ]
    for tls, message in cases:
        name = _check(tmp_path, tls)
        err = capsys.readouterr().err
        assert err.startswith(f"{tmp_path / name}: ") and message in err, (tls, err)
    assert other_cert.exists()

    good = tmp_path / "good.yaml"
    good.write_text(f"http:\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n", "utf-8")
    assert main(["check-config", str(good)]) == 0


@pytest.mark.same_in_both_passes
def test_an_encrypted_key_is_refused_rather_than_asked_for(
    tmp_path: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = pair
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        [
            _openssl(),
            "pkey",
            "-in",
            str(key),
            "-out",
            str(encrypted),
            "-aes256",
            "-passout",
            "pass:x",
        ],
        check=True,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    _check(tmp_path, f"    cert_file: {cert}\n    key_file: {encrypted}\n")
    assert "an encrypted key is not supported" in capsys.readouterr().err


def test_serve_refuses_to_start_with_a_key_that_does_not_match(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    cert, _ = pair
    _, other_key = make_cert(tmp_path / "other", "other", 8)
    config = tls_config(tmp_path, cert, other_key)
    proc = subprocess.run(
        [sys.executable, "-m", "statsd_gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "bad config: http.tls.key_file: the key in" in proc.stderr
    assert "does not match the certificate" in proc.stderr
