"""The client's TLS files (`--ca-cert`, `--client-cert`, `--client-key`, `TLSConfig`) are checked before
anything is dialled: one line naming the option and the path, exit 2, instead of gRPC C-core log lines and
"Failed to create security handshaker"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.server import GRPC_CORE_LINE
from tls_certs import Pki, make_pki

from resnet_serve.cli.main import main
from resnet_serve.client import TLSConfig

# Nothing is dialled: each case is refused before a connection, so no server is needed.
SERVER = "127.0.0.1:1"
COMMANDS = {
    "classify": ["classify", "--server", SERVER, "x.png"],
    "health": ["health", "--server", SERVER],
    "bench": ["bench", "--server", SERVER, "--concurrency", "1"],
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _mismatched(pki: Pki) -> list[str]:
    """Options with the server's key given for the client's certificate."""
    return [
        "--ca-cert",
        str(pki.ca),
        "--client-cert",
        str(pki.client_cert),
        "--client-key",
        str(pki.server_key),
    ]


def _mismatch_message(pki: Pki) -> str:
    return f"--client-key {pki.server_key} does not match the certificate in --client-cert {pki.client_cert}"


def _cases(pki: Pki, tmp: Path) -> list[tuple[list[str], str]]:
    not_pem = tmp / "ca.toml"
    not_pem.write_text("[server]\nport = 1\n")
    return [
        (["--ca-cert", str(not_pem)], f"--ca-cert {not_pem}: holds no PEM certificate"),
        (["--ca-cert", str(pki.client_key)], f"--ca-cert {pki.client_key}: holds no PEM certificate"),
        (["--ca-cert", str(tmp / "missing.pem")], f"--ca-cert {tmp / 'missing.pem'}: no such file"),
        (["--ca-cert", str(tmp)], f"--ca-cert {tmp}: not a regular file"),
        (_mismatched(pki), _mismatch_message(pki)),
        (
            ["--client-cert", str(pki.client_key), "--client-key", str(pki.client_key)],
            f"--client-cert {pki.client_key}: holds no PEM certificate",
        ),
        (
            ["--client-cert", str(pki.client_cert), "--client-key", str(pki.client_cert)],
            f"--client-key {pki.client_cert}: holds no PEM private key",
        ),
    ]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unusable_tls_files_are_refused_in_one_line_with_exit_2_before_dialling(
    command: str, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for options, message in _cases(pki, tmp_path):
        assert main([*COMMANDS[command], *options]) == 2, options
        err = capsys.readouterr().err
        assert err == f"resnet-serve {command}: error: {message}\n", options


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_client_key_that_does_not_match_its_certificate_prints_no_grpc_core_lines(
    command: str, pki: Pki
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "resnet_serve.cli.main", *COMMANDS[command], *_mismatched(pki)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert not GRPC_CORE_LINE.search(done.stderr), done.stderr
    assert done.stderr.splitlines() == [f"resnet-serve {command}: error: {_mismatch_message(pki)}"]


def test_tlsconfig_credentials_raise_valueerror_naming_the_field_and_path(pki: Pki, tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate")
    with pytest.raises(ValueError, match=rf"^root_certs {not_pem}: holds no PEM certificate$"):
        TLSConfig(root_certs=not_pem).credentials()
    with pytest.raises(ValueError, match="does not match the certificate in client_cert"):
        TLSConfig(client_cert=pki.client_cert, client_key=pki.server_key).credentials()
    with pytest.raises(ValueError, match=r"^root_certs \(bytes\): holds no PEM certificate$"):
        TLSConfig(root_certs=b"junk").credentials()
    # good files, as paths or bytes, still make credentials
    TLSConfig(root_certs=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key).credentials()
    TLSConfig(root_certs=pki.ca.read_bytes()).credentials()


def test_a_root_certificate_from_a_pipe_is_read_once_and_still_used(pki: Pki) -> None:
    """`--ca-cert <(cat ca.pem)` can be read once: the up-front check leaves it to the credentials."""
    read, write = os.pipe()
    os.write(write, pki.ca.read_bytes())
    os.close(write)
    try:
        tls = TLSConfig(root_certs=f"/dev/fd/{read}")
        tls.check()
        tls.credentials()
    finally:
        os.close(read)
