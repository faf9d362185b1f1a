"""Test certificates made with the `openssl` CLI: a CA, server and client certificates, and a
second CA that nothing trusts.  EC P-256 keys keep generation fast (well under a second).

Everything lives in one mkdtemp directory; keys are mode 0600.  Copies handed to PostgreSQL
servers are made by PgServer subclasses (they must be owned by the server's user).
"""

import hashlib
import os
import shutil
import ssl
import subprocess
import tempfile


def _run(args, cwd):
    r = subprocess.run(["openssl"] + args, cwd=cwd, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} exited {r.returncode}:\n"
                           f"{r.stdout}\n{r.stderr}")
    return r


class CertAuthority:
    """A self-signed CA in dir; issue() signs leaf certificates with it."""

    def __init__(self, dir, name):
        self.dir = dir
        self.name = name
        self.key = os.path.join(dir, f"{name}.key")
        self.cert = os.path.join(dir, f"{name}.crt")
        _run(["req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-keyout", self.key, "-out", self.cert,
              "-days", "3", "-subj", f"/O=tenant-router tests/CN={name}",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], dir)
        os.chmod(self.key, 0o600)
        self._serial = 1000

    def issue(self, name, cn, san=None, client=False, server=False):
        """A leaf certificate + key signed by this CA; returns (cert_path, key_path)."""
        key = os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        crt = os.path.join(self.dir, f"{name}.crt")
        ext = os.path.join(self.dir, f"{name}.ext")
        _run(["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-keyout", key, "-out", csr, "-subj", f"/CN={cn}"], self.dir)
        os.chmod(key, 0o600)
        lines = ["basicConstraints=critical,CA:FALSE",
                 "keyUsage=critical,digitalSignature,keyEncipherment"]
        eku = []
        if server:
            eku.append("serverAuth")
        if client:
            eku.append("clientAuth")
        if eku:
            lines.append("extendedKeyUsage=" + ",".join(eku))
        if san:
            lines.append("subjectAltName=" + ",".join(san))
        with open(ext, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._serial += 1
        _run(["x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
              "-set_serial", str(self._serial), "-days", "3", "-sha256",
              "-extfile", ext, "-out", crt], self.dir)
        return crt, key


class TestPKI:
    """Every certificate the TLS tests use.

    ca            trusted CA (router, servers and the app client cert are signed by it)
    bad_ca        a second CA nobody trusts
    router        CN=localhost, SAN DNS:localhost, IP:127.0.0.1 (the router's server cert)
    router2       same names, another key/serial (to see a reload pick up a new certificate)
    pg            PostgreSQL servers: CN=localhost, SAN IP:127.0.0.1, DNS:localhost
    pg_other      PostgreSQL server whose cert names only DNS:otherhost
    client        CN=app, clientAuth, signed by ca
    bad_client    CN=app, signed by bad_ca
    router_client CN=certuser: the client certificate the router presents to the servers
    """

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tr-pki-")
        os.chmod(self.dir, 0o700)
        self.ca = CertAuthority(self.dir, "ca")
        self.bad_ca = CertAuthority(self.dir, "bad-ca")
        names = ["DNS:localhost", "IP:127.0.0.1"]
        self.router = self.ca.issue("router", "localhost", names, server=True)
        self.router2 = self.ca.issue("router2", "localhost", names, server=True)
        self.pg = self.ca.issue("pg", "localhost", ["IP:127.0.0.1", "DNS:localhost"], server=True)
        self.pg_other = self.ca.issue("pg-other", "otherhost", ["DNS:otherhost"], server=True)
        self.client = self.ca.issue("client", "app", client=True)
        self.bad_client = self.bad_ca.issue("bad-client", "app", client=True)
        self.router_client = self.ca.issue("router-client", "certuser", client=True)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def cert_der(path):
    """DER bytes of the first certificate in a PEM file."""
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def fingerprint(der):
    return hashlib.sha256(der).hexdigest()
