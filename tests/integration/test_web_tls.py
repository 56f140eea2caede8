"""``pmg web`` with a certificate: HTTPS only, and its session cookie is ``Secure``, ``HttpOnly`` and
``SameSite=Strict`` (docs/web.md, "Who may use it").  A self-signed certificate for 127.0.0.1 is
made here with ``cryptography``; the client trusts exactly that certificate."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.gateway_harness import base_config, write_config
from support.web_rig import add_user, free_port, web_process

from gateway.store.db import open_store


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "web.crt", folder / "web.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_with_a_certificate_it_speaks_https_and_its_cookie_is_secure(tmp_path: Path) -> None:
    db, port = tmp_path / "pmg.db", free_port()
    open_store(db).close()  # the schema, as the daemon's first start writes it
    cert, key = _self_signed(tmp_path)
    cfg = write_config(tmp_path / "gw.toml", base_config(db) + (
        f'\n[web]\nlisten = "127.0.0.1:{port}"\nusers_file = "{tmp_path / "users"}"\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    ))
    add_user(cfg, "olga", "operator")
    with web_process(cfg, port, tmp_path / "web.log"):
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        conn.request("GET", "/login")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        cookie = response.getheader("set-cookie") or ""
        assert cookie.startswith("pmg_session=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict"} <= flags
        conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # no plain HTTP beside it
        try:
            plain.request("GET", "/login")
            status = plain.getresponse().status
        except (http.client.HTTPException, ConnectionError):
            status = None
        assert status != 200
        plain.close()
