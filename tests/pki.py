"""A throwaway certificate authority for the TLS tests, made with the ``openssl`` command.

The ``pki`` fixture (session scope, in conftest.py) makes a CA and a server
certificate for 127.0.0.1 and localhost, valid for two days.
"""

from __future__ import annotations

import dataclasses
import shutil
import ssl
import subprocess
from pathlib import Path

OPENSSL = shutil.which("openssl")

# A config of our own, so neither the system's openssl.cnf nor Python 3.13's
# VERIFY_X509_STRICT default can change what gets made (strict mode wants
# key identifiers and a critical basicConstraints on the CA).
OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = reactor test

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclasses.dataclass(frozen=True)
class Pki:
    """A throwaway CA and a server certificate for 127.0.0.1, signed by it."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_pki(directory: Path) -> Pki:
    """Make the CA and the server certificate in ``directory``."""
    (directory / "openssl.cnf").write_text(OPENSSL_CNF)
    assert OPENSSL is not None
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        result = subprocess.run([OPENSSL, *args], cwd=directory, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, f"openssl {' '.join(args)} failed:\n{result.stderr}"

    openssl("req", "-config", "openssl.cnf", "-x509", *newkey, "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=reactor throwaway test CA", "-extensions", "ca_ext")
    openssl("req", "-config", "openssl.cnf", "-new", *newkey, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2",
            "-days", "2", "-out", "server.pem", "-extfile", "openssl.cnf", "-extensions", "server_ext")
    return Pki(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")


