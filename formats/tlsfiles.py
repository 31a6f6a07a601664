"""The checks of certificate, key and token files that the server (its TLS options) and the client
(`--ca-cert`, `--client-cert`, `--client-key`) both run before gRPC sees the files: gRPC's own failure is a
handful of C-core log lines and a handshake that never starts.

Standard library only (`ssl`): the client's base install has no `cryptography`. The messages name the option
and the path, never a file's contents.
"""

from __future__ import annotations

import os
import ssl
import stat

from resnet_serve.formats.errors import UserError

MAX_FILE_BYTES = 1024 * 1024  # a certificate bundle or token list; anything bigger is the wrong file


class SecurityError(UserError):
    """A certificate, key or token file that cannot be used; the message names the option and path."""


def read_small_file(path: str, option: str, *, regular: bool = True) -> tuple[bytes, int]:
    """The bytes of `path` (given as `option`) and its mode bits. `regular`: refuse anything but a regular
    file (the server reads its files again on reload); without it a pipe (`<(cat ca.pem)`) is read once."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode) or (regular and not stat.S_ISREG(info.st_mode)):
            raise SecurityError(f"{option} {path}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise SecurityError(f"{option} {path}: {info.st_size} bytes; expected at most {MAX_FILE_BYTES}")
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SecurityError(f"{option} {path}: no such file") from None
    except PermissionError:
        raise SecurityError(f"{option} {path}: permission denied") from None
    except OSError as exc:
        raise SecurityError(f"{option} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SecurityError(f"{option} {path}: more than {MAX_FILE_BYTES} bytes")
    return data, info.st_mode


def check_pem(data: bytes, marker: bytes, option: str, path: str, what: str) -> None:
    """SecurityError unless `data` holds a PEM block whose label ends in `marker` (b"CERTIFICATE-----")."""
    if b"-----BEGIN " not in data or marker not in data:
        raise SecurityError(f"{option} {path}: holds no PEM {what}")


def check_key_pair(context: ssl.SSLContext, cert: tuple[str, str], key: tuple[str, str]) -> None:
    """Load the certificate chain file and its unencrypted private key file into `context`; SecurityError
    when the key does not match the certificate or either is unusable. `cert` and `key`: (option, path)."""
    (cert_option, cert_path), (key_option, key_path) = cert, key
    try:
        # password=b"": an encrypted key fails here instead of OpenSSL prompting on the terminal.
        context.load_cert_chain(cert_path, key_path, password=b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise SecurityError(
                f"{key_option} {key_path} does not match the certificate in {cert_option} {cert_path}"
            ) from None
        raise SecurityError(
            f"{cert_option} {cert_path} / {key_option} {key_path}: not a usable certificate and unencrypted "
            f"private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:  # the file changed between the two reads
        raise SecurityError(f"{cert_option} {cert_path}: {exc.strerror or exc}") from None


def check_ca_bundle(context: ssl.SSLContext, data: bytes, option: str, path: str) -> None:
    """Load the PEM CA certificates in `data` into `context`; SecurityError when it holds none."""
    try:
        context.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError):
        raise SecurityError(f"{option} {path}: holds no PEM certificate") from None
