"""Certificates and enrolment tokens for a deployment (``fedloom certs``).

One folder holds everything a run needs::

    ca.crt  ca.key              the run's certificate authority (keep ca.key offline)
    server.crt  server.key      the server, valid for the given host names and IPs
    client-0.crt  client-0.key  one per client; the certificate's common name is the client name
    client-0.token              the client's enrolment token, for token authentication
    enrolment.key               the server's HMAC key that checks tokens (server only)

A client site needs only ``ca.crt`` plus its own ``.crt``/``.key`` (mTLS) or ``.token`` (tokens).
Keys are EC P-256 and written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom.errors import ConfigError

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
ENROLMENT_KEY = "enrolment.key"
# Names of revoked clients, one a line: a running server refuses them from their next call on.
REVOKED = "revoked.txt"
VALID_DAYS = 365


@dataclass(frozen=True)
class Bundle:
    """PEM bytes one side of a TLS connection needs."""

    ca: bytes
    cert: bytes | None
    key: bytes | None


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedloom"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _issue(
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    hosts: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    names = [_san(h) for h in hosts] or [x509.DNSName(common_name)]
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_ca(common_name: str = "fedloom CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_token(enrolment_key: bytes, client_name: str) -> str:
    """The enrolment token of ``client_name``: hex HMAC-SHA256 under the run's enrolment key."""
    return hmac.new(enrolment_key, client_name.encode(), hashlib.sha256).hexdigest()


def check_token(enrolment_key: bytes, client_name: str, token: str) -> bool:
    """Constant-time check of an enrolment token."""
    return hmac.compare_digest(make_token(enrolment_key, client_name), token.strip())


def create_certs(
    out: str | Path,
    num_clients: int,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    client_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write a CA, a server certificate for ``hosts``, and one certificate plus one enrolment token
    per client (``client-0`` .. ``client-{N-1}`` unless ``client_names`` is given). Returns the
    files written. An existing CA in ``out`` is reused, so clients can be added later."""
    if num_clients < 0:
        raise ConfigError(f"--clients must be >= 0, got {num_clients}")
    if not hosts:
        raise ConfigError("the server certificate needs at least one --host")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if (folder / CA_CERT).exists() and (folder / CA_KEY).exists():
        ca_cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        loaded = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{folder / CA_KEY} is not an EC private key")
        ca_key = loaded
    else:
        ca_cert, ca_key = make_ca()
        _write(folder / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
        _write(folder / CA_KEY, _key_pem(ca_key), private=True)
        written += [folder / CA_CERT, folder / CA_KEY]
    cert, key = _issue("fedloom server", ca_cert, ca_key, ExtendedKeyUsageOID.SERVER_AUTH, hosts)
    _write(folder / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _write(folder / SERVER_KEY, _key_pem(key), private=True)
    written += [folder / SERVER_CERT, folder / SERVER_KEY]
    if not (folder / ENROLMENT_KEY).exists():
        _write(folder / ENROLMENT_KEY, secrets.token_hex(32).encode(), private=True)
        written.append(folder / ENROLMENT_KEY)
    enrolment_key = (folder / ENROLMENT_KEY).read_bytes().strip()
    names = list(client_names) if client_names else [f"client-{i}" for i in range(num_clients)]
    for name in names:
        cert, key = _issue(name, ca_cert, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
        _write(folder / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
        _write(folder / f"{name}.key", _key_pem(key), private=True)
        _write(folder / f"{name}.token", make_token(enrolment_key, name).encode() + b"\n", True)
        written += [folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.token"]
    return written


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ConfigError(
            f"{what} {str(path)!r} not found; create the run's certificates with "
            "`fedloom certs --out DIR --clients N`"
        )
    return path.read_bytes()


def server_bundle(certs: str | Path) -> Bundle:
    folder = Path(certs)
    return Bundle(
        ca=_read(folder / CA_CERT, "CA certificate"),
        cert=_read(folder / SERVER_CERT, "server certificate"),
        key=_read(folder / SERVER_KEY, "server key"),
    )


def client_bundle(certs: str | Path, name: str, with_cert: bool = True) -> Bundle:
    """The CA plus, for mTLS, the client's own certificate and key."""
    folder = Path(certs)
    ca = _read(folder / CA_CERT, "CA certificate")
    if not with_cert:
        return Bundle(ca=ca, cert=None, key=None)
    return Bundle(
        ca=ca,
        cert=_read(folder / f"{name}.crt", f"certificate of client {name!r}"),
        key=_read(folder / f"{name}.key", f"key of client {name!r}"),
    )


def read_enrolment_key(certs: str | Path) -> bytes:
    return _read(Path(certs) / ENROLMENT_KEY, "enrolment key").strip()


def read_token(certs: str | Path, name: str) -> str:
    return (
        _read(Path(certs) / f"{name}.token", f"enrolment token of client {name!r}").decode().strip()
    )


def revoke(certs: str | Path, name: str) -> Path:
    """Add ``name`` to the folder's revocation list (``revoked.txt``); returns its path. A server
    started with this folder refuses the client's next call, its certificate and token alike."""
    if not Path(certs).is_dir():
        raise ConfigError(f"--out {str(certs)!r} is not a folder of `fedloom certs`")
    path = Path(certs) / REVOKED
    with path.open("a", encoding="utf-8") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


class RevocationList:
    """The names in a ``revoked.txt``, re-read whenever the file changes (no restart needed)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._names: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def __contains__(self, name: object) -> bool:
        if self.path is None:
            return False
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                text = self.path.read_text(encoding="utf-8")
                self._names = frozenset(line.strip() for line in text.splitlines() if line.strip())
                self._stamp = stamp
            return name in self._names
