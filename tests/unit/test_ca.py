"""`gshare ca`: the certificates it makes, and one-line refusals of bad input."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gshare.cli.main import main


def ca(tmp_path: Path, *args: str) -> int:
    return main(["ca", *args, "--dir", str(tmp_path / "ca")])


def test_a_node_certificate_names_its_node_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    assert ca(tmp_path, "init") == 0
    assert ca(tmp_path, "scheduler", "sched.example", "10.0.0.5") == 0
    assert ca(tmp_path, "node", "gpu07") == 0
    where = tmp_path / "ca"
    for key in ("ca.key", "scheduler.key", "node-gpu07.key"):
        assert stat.S_IMODE((where / key).stat().st_mode) == 0o600
    root = x509.load_pem_x509_certificate((where / "ca.pem").read_bytes())
    node = x509.load_pem_x509_certificate((where / "node-gpu07.pem").read_bytes())
    node.verify_directly_issued_by(root)
    subject = node.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gpu07"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "gshare-node"
    )
    usage = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server = x509.load_pem_x509_certificate((where / "scheduler.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["sched.example"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("node", "gpu/07"), 2, "only letters, digits"),
        (("node", "a\x00b"), 2, "only letters, digits"),
        (("node", "x" * 300), 2, "1 to 253 characters"),
        (("node",), 2, "1 to 253 characters"),
        (("node", "a", "b"), 2, "1 to 253 characters"),
        (("scheduler",), 2, "name the hosts"),
        (("node", "gpu07", "--days", "0"), 2, "--days must be between"),
        (("node", "gpu07", "--days", "99999999"), 2, "--days must be between"),
        (("init", "extra"), 2, "init takes no names"),
        (("init",), 1, "exists already"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    code: int,
    message: str,
) -> None:
    assert ca(tmp_path, "init") == 0
    capsys.readouterr()
    assert ca(tmp_path, *args) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_no_ca_yet_or_a_symlink_in_the_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ca(tmp_path, "node", "gpu07") == 1
    assert "make one with gshare ca init" in capsys.readouterr().err
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.key").symlink_to(tmp_path / "elsewhere")
    assert ca(tmp_path, "init") == 1
    assert "exists already" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()  # never written through the link
