from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from fedloom.transport.certs import check_token, create_certs, make_token, read_enrolment_key


def test_certs_name_the_hosts_and_the_clients(tmp_path: Path) -> None:
    # Execute
    create_certs(tmp_path, 2, hosts=["127.0.0.1", "localhost", "fl.example.org"])

    # Assert
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "fl.example.org"]
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    for i in range(2):
        cert = x509.load_pem_x509_certificate((tmp_path / f"client-{i}.crt").read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"client-{i}"
        cert.verify_directly_issued_by(ca)
    assert (tmp_path / "client-1.key").stat().st_mode & 0o077 == 0
    assert not (tmp_path / "client-2.crt").exists()


def test_tokens_are_hmacs_of_the_name(tmp_path: Path) -> None:
    create_certs(tmp_path, 1)
    key = read_enrolment_key(tmp_path)
    token = (tmp_path / "client-0.token").read_text().strip()
    assert token == make_token(key, "client-0")
    assert check_token(key, "client-0", token)
    assert not check_token(key, "client-1", token)
    assert not check_token(b"another key", "client-0", token)


def test_adding_clients_later_keeps_the_ca(tmp_path: Path) -> None:
    create_certs(tmp_path, 1)
    ca = (tmp_path / "ca.crt").read_bytes()
    create_certs(tmp_path, 3)
    assert (tmp_path / "ca.crt").read_bytes() == ca
    assert (tmp_path / "client-2.crt").exists()
