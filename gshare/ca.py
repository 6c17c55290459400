"""`gshare ca`: the cluster's own certificate authority and the certificates it signs.

- `init`: the CA (ca.pem, which every client and agent is given; ca.key, kept by the admin)
- `scheduler HOST...`: the scheduler's server certificate, valid for those names/addresses
- `node NAME`: a node agent's client certificate, OU=gshare-node, CN=NAME: the scheduler
  lets its holder register as NAME and as no other node
- `reader NAME`: a read-only client certificate (OU=gshare-reader), for a scheduler
  without MUNGE

Made with the `cryptography` package (PyCA) rather than `openssl` in a subprocess: no
temporary config files for the extensions, and errors come back as exceptions. Keys are
EC P-256, written once (an existing file is never replaced) with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_UNIT = "gshare-node"
READER_UNIT = "gshare-reader"
MAX_NAME = 253


class CaError(Exception):
    """A certificate cannot be made as asked (str(): one line, naming what)."""


def check_name(name: str, what: str) -> str:
    if not name or len(name) > MAX_NAME:
        raise CaError(f"{what} must be 1 to {MAX_NAME} characters")
    if not all(c.isalnum() or c in "-._" for c in name):
        raise CaError(f"{what} {name!r}: only letters, digits, '-', '.' and '_'")
    return name


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise CaError(f"{path} exists already; remove it first to make a new one") from None
    except OSError as exc:
        raise CaError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(where: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((where / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((where / "ca.key").read_bytes(), None)
    except OSError as exc:
        raise CaError(
            f"cannot read the CA in {where}: {exc.strerror} (make one with gshare ca init)"
        ) from None
    except ValueError as exc:
        raise CaError(f"{where}: not a CA made by gshare ca init ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{where}/ca.key: not an EC key made by gshare ca init")
    return cert, key


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init(where: Path, days: int) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gshare cluster CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write(where / "ca.key", _key_pem(key), 0o600)
    _write(where / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return where / "ca.pem"


def issue(where: Path, kind: str, names: list[str], days: int) -> Path:
    """A certificate signed by the CA in `where`: kind 'scheduler' (server, for `names`),
    'node' or 'reader' (client, for names[0])."""
    ca_cert, ca_key = _load_ca(where)
    if kind == "scheduler":
        if not names:
            raise CaError("name the hosts (or addresses) clients reach the scheduler by")
        sans: list[x509.GeneralName] = []
        for host in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(check_name(host, "host")))
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "gshare-scheduler"),
                x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
            ]
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH
        stem = "scheduler"
    else:
        unit = {"node": NODE_UNIT, "reader": READER_UNIT}[kind]
        name = check_name(names[0] if len(names) == 1 else "", f"the {kind} name")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        sans = [x509.DNSName(name)]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
        stem = f"{kind}-{name}"
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(where / f"{stem}.key", _key_pem(key), 0o600)
    _write(where / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return where / f"{stem}.pem"
