"""A throwaway certificate authority and a TLS-only redis-server, for the ``sidekiqs://`` tests.

``make_pki(dir)`` runs ``openssl`` (Debian package openssl) to make a CA, a server certificate
for 127.0.0.1/localhost and a client certificate, both signed by that CA, plus a second,
unrelated CA ("the wrong CA"). EC P-256 keys: a whole set takes well under a second.

``TLSRedisServer(pki, auth_clients=...)`` is a :class:`RedisServer` that listens on TLS only
(``--port 0 --tls-port PORT``), so a plaintext client cannot reach it at all.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from support.redis_server import RedisServer


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


@dataclass(frozen=True)
class PKI:
    """Paths of the PEM files ``make_pki`` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca_cert: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{proc.stderr}")


def _new_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-new", "-nodes", "-days", "2",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", key, "-out", cert, "-subj", f"/CN=celery-sidekiq test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _signed(
    directory: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".crt", ".key", ".csr"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl(
        "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "2", "-out", cert, "-extfile", ext_file,
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> PKI:
    """A CA, a server and a client certificate signed by it, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _new_ca(directory, "ca")
    server = _signed(
        directory,
        "server",
        ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client = _signed(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    wrong_ca, _ = _new_ca(directory, "wrong-ca")
    return PKI(
        ca_cert=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        wrong_ca_cert=wrong_ca,
    )


class TLSRedisServer(RedisServer):
    """redis-server on TLS only; ``auth_clients`` makes it demand a client certificate."""

    def __init__(
        self,
        pki: PKI,
        auth_clients: bool = False,
        password: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__(password=password)
        self.pki = pki
        self.auth_clients = auth_clients
        # Later options win in redis-server's command line: `--port 0` closes the plain port
        # RedisServer.start() opens, and the TLS port takes its number.
        self.extra_args = [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(pki.server_cert),
            "--tls-key-file", str(pki.server_key),
            "--tls-ca-cert-file", str(pki.ca_cert),
            "--tls-auth-clients", "yes" if auth_clients else "no",
            *extra_args,
        ]  # fmt: skip

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"rediss://{auth}127.0.0.1:{self.port}/0"

    @property
    def ssl_options(self) -> dict[str, Any]:
        """What a client that trusts our CA (and has a client certificate) passes."""
        return {
            "ssl_cert_reqs": "required",
            "ssl_ca_certs": str(self.pki.ca_cert),
            "ssl_certfile": str(self.pki.client_cert),
            "ssl_keyfile": str(self.pki.client_key),
        }

    def client(self, **kw: Any) -> redis.Redis:
        kw.setdefault("password", self.password)
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, **self.ssl_options, **kw)
