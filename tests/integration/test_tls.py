"""TLS on both legs (issue #4): clients to the router, the router to the coordinators.

This module starts its own PostgreSQL servers with ssl=on whose pg_hba.conf has only `hostssl`
lines for TCP, so a server leg that is not encrypted cannot log in at all.  Certificates are
made here with the openssl CLI (tlscerts.TestPKI).  Everything asserted is what a user sees:
psql / psycopg / JDBC outcomes and messages, ErrorResponse fields, pg_stat_ssl on the server.
"""

import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings

import psycopg
import pytest

import harness
import rawpg
import tlscerts
from harness import APP_PASSWORD, SLOW

SERVER_SSL = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
CB_REQUIRED_MSG = ("channel binding is required, but server did not offer an authentication "
                   "method that supports channel binding")
PGJDBC_JAR = "/usr/share/java/postgresql.jar"


# --- servers and certificates ------------------------------------------------------------------

class TlsPgServer(harness.PgServer):
    """A PgServer with ssl = on and only hostssl lines for TCP: plaintext logins are impossible."""

    HBA = (
        "local all all trust\n"
        "local replication all trust\n"
        "hostssl all postgres 127.0.0.1/32 trust\n"
        "hostssl all trustuser 127.0.0.1/32 trust\n"
        "hostssl all pwuser 127.0.0.1/32 password\n"
        "hostssl all md5user 127.0.0.1/32 md5\n"
        "hostssl all app 127.0.0.1/32 scram-sha-256\n"
        "hostssl all certuser 127.0.0.1/32 cert\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
    )

    def __init__(self, name, cert, key, ca):
        super().__init__(name)
        self.tls_files = (cert, key, ca)

    def init(self):
        super().init()
        cert, key, ca = self.tls_files
        for src, dst, mode in ((cert, "server.crt", 0o644), (key, "server.key", 0o600),
                               (ca, "root.crt", 0o644)):
            path = os.path.join(self.data, dst)
            shutil.copyfile(src, path)
            os.chmod(path, mode)
            if os.geteuid() == 0:
                uid, gid = harness._pg_ids()
                os.chown(path, uid, gid)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("ssl = on\n"
                    "ssl_cert_file = 'server.crt'\n"
                    "ssl_key_file = 'server.key'\n"
                    "ssl_ca_file = 'root.crt'\n")


@pytest.fixture(scope="module")
def pki():
    p = tlscerts.TestPKI()
    yield p
    p.cleanup()


@pytest.fixture(scope="module")
def tls_servers(pki):
    """ta, tb: certs for IP:127.0.0.1 + DNS:localhost; other: a cert for DNS:otherhost only."""
    def make(name):
        cert, key = pki.pg_other if name == "other" else pki.pg
        return TlsPgServer(name, cert, key, pki.ca.cert)

    servers = harness.start_clusters(("ta", "tb", "other"), make=make)
    for s in servers.values():
        s.sql("CREATE ROLE certuser LOGIN")
    # "other" speaks only TLS 1.3 (for the protocol-mismatch test; TLS 1.3 is the default anyway).
    servers["other"].sql("ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1.3'")
    servers["other"].sql("SELECT pg_reload_conf()")
    yield servers
    for s in servers.values():
        s.cleanup()


@pytest.fixture
def tls_clusters(tls_servers):
    return {"ta": tls_servers["ta"], "tb": tls_servers["tb"]}


@pytest.fixture(scope="module")
def client_home():
    """An empty HOME for psql so no ~/.postgresql certificate or key sneaks in."""
    d = tempfile.mkdtemp(prefix="tr-home-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def tls_overrides(pki, client_mode="require", server_mode="verify-full", **router_kw):
    r = {
        "client_tls_mode": client_mode,
        "client_tls_cert_file": pki.router[0],
        "client_tls_key_file": pki.router[1],
        "server_tls_mode": server_mode,
        "server_tls_ca_file": pki.ca.cert,
    }
    r.update(router_kw)
    return {"router": r}


@pytest.fixture
def tls_router(make_router, pki, tls_clusters):
    """client_tls_mode=require, server_tls_mode=verify-full, clusters ta and tb."""
    return make_router(tls_overrides(pki), cluster_set=tls_clusters)


# --- client helpers ----------------------------------------------------------------------------

def tenant_on(router, cluster, prefix="tls"):
    cands = [f"{prefix}-{i}" for i in range(64)]
    for t, (c, _) in router.route(cands).items():
        if c == cluster:
            return t
    raise AssertionError(f"no tenant routed to {cluster}")


def app_kw(router, tenant, **kw):
    """libpq keywords for user app through the router.  channel_binding defaults to disable:
    with TLS on both legs libpq's default (prefer) is refused by design (README, TLS and
    SCRAM); test_tls_scram_channel_binding checks that case."""
    base = router.conninfo(tenant)
    base["channel_binding"] = "disable"
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def connect(router, tenant, **kw):
    return psycopg.connect(autocommit=True, **app_kw(router, tenant, **kw))


def _quote(v):
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def psql(router, tenant, sqls, home, **kw):
    """psql through the router with libpq keywords kw; returns CompletedProcess."""
    ci = app_kw(router, tenant, **kw)
    password = ci.pop("password", None)
    conninfo = " ".join(f"{k}={_quote(v)}" for k, v in ci.items())
    args = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo]
    for s in ([sqls] if isinstance(sqls, str) else sqls):
        args += ["-c", s]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(HOME=home, PGCONNECT_TIMEOUT="5")
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(args, capture_output=True, text=True, timeout=30 * SLOW, env=env,
                          stdin=subprocess.DEVNULL)


def client_ctx(cafile=None, alpn=None, certfile=None, keyfile=None, verify=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile)
        ctx.check_hostname = True
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def trust_params(tenant):
    return [("user", "trustuser"), ("database", "postgres"), ("app.tenant_id", tenant)]


def read_refusal(conn, codes, timeout=5.0):
    """Next message must be a FATAL ErrorResponse with a SQLSTATE in codes, message and hint."""
    t, body = conn.recv_msg(timeout * SLOW)
    assert t == "E", f"expected ErrorResponse, got {t!r} {body[:120]!r}"
    f = rawpg.parse_fields(body)
    assert f.get("S") == "FATAL", f
    assert f.get("C") in codes, f"SQLSTATE {f.get('C')!r}, expected one of {codes}: {f}"
    assert f.get("M", "").startswith("tenant-router"), f
    assert f.get("H"), f"no hint: {f}"
    return f


def peer_cert_fingerprint(router, pki):
    """SSLRequest to the router; the sha256 of the certificate it serves."""
    with rawpg.RawConn(router.port, timeout=5 * SLOW) as c:
        assert c.starttls(client_ctx(pki.ca.cert), "localhost") == b"S"
        return tlscerts.fingerprint(c.sock.getpeercert(binary_form=True))


def assert_serving(router, tenant, pki):
    """A fresh verify-full TLS login through the router works and the server leg is TLS too."""
    with connect(router, tenant, host="localhost", hostaddr="127.0.0.1", sslmode="verify-full",
                 sslrootcert=pki.ca.cert) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute(SERVER_SSL).fetchone()[0] is True


# --- 1. psql, sslmode require / verify-full ----------------------------------------------------

def test_tls_psql_require_both_legs_encrypted(tls_router, tls_clusters, client_home):
    for name, srv in tls_clusters.items():
        t = tenant_on(tls_router, name)
        r = psql(tls_router, t, [SERVER_SSL, "SELECT inet_server_port()", "\\conninfo"],
                 client_home, sslmode="require")
        assert r.returncode == 0, f"psql failed for cluster {name}: {r.stderr}"
        lines = r.stdout.splitlines()
        assert lines[0] == "t", f"server leg to {name} is not TLS: {r.stdout}"
        assert lines[1] == str(srv.port), r.stdout
        assert "SSL connection" in r.stdout, f"client leg is not TLS: {r.stdout}"


def test_tls_pooled_both_legs_encrypted_and_reused(request, pki, tls_clusters):
    """pool_mode = session with TLS on both legs: the router's own login over TLS, pooled
    server connections over verify-full TLS, reused by the next client."""
    import conftest
    routers = []
    request.node._tr_routers = routers
    make = conftest._router_factory(tls_clusters, routers, pool_mode="session")
    try:
        # One connection per pool, so the next client takes the one given back.
        r = make(tls_overrides(pki, pool_size="1"), cluster_set=tls_clusters)
        for name, srv in tls_clusters.items():
            t = tenant_on(r, name)
            pids = set()
            for _ in range(3):
                with connect(r, t, sslmode="require") as conn:
                    assert conn.pgconn.ssl_in_use
                    on, port, pid = conn.execute(
                        f"SELECT ({SERVER_SSL}), inet_server_port(), pg_backend_pid()"
                    ).fetchone()
                    assert (on, port) == (True, srv.port)
                    pids.add(pid)
            assert len(pids) == 1, pids
    finally:
        conftest._stop_and_check(routers, "router", " during the test")


def test_tls_psql_verify_full_router_certificate(tls_router, pki, client_home):
    t = tenant_on(tls_router, "ta")
    # By name (SAN DNS:localhost) and by address (SAN IP:127.0.0.1).
    for extra in (dict(host="localhost", hostaddr="127.0.0.1"), dict(host="127.0.0.1")):
        r = psql(tls_router, t, [SERVER_SSL], client_home, sslmode="verify-full",
                 sslrootcert=pki.ca.cert, **extra)
        assert r.returncode == 0, f"verify-full with {extra} failed: {r.stderr}"
        assert r.stdout.strip() == "t"
    r = psql(tls_router, t, ["SELECT 1"], client_home, host="localhost", hostaddr="127.0.0.1",
             sslmode="verify-full", sslrootcert=pki.bad_ca.cert)
    assert r.returncode != 0, f"untrusted CA accepted: {r.stdout}"
    assert "certificate verify failed" in r.stderr, r.stderr
    assert tls_router.alive()


# --- 2. SCRAM over TLS: channel binding --------------------------------------------------------

def test_tls_scram_channel_binding(tls_router, tls_servers, pki):
    """TLS on both legs: disable works, prefer is refused by the router with a hint, require
    fails in libpq because the router never offers SCRAM-SHA-256-PLUS."""
    # Control: the server itself offers SCRAM-SHA-256-PLUS over TLS.
    with tls_servers["ta"].connect(user="app", dbname="appdb", password=APP_PASSWORD,
                                   sslmode="require", channel_binding="require") as conn:
        assert conn.pgconn.ssl_in_use
    t = tenant_on(tls_router, "ta")
    with connect(tls_router, t, sslmode="require", channel_binding="disable") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute(SERVER_SSL).fetchone()[0] is True
        assert conn.execute("SELECT current_user").fetchone()[0] == "app"
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(tls_router, t, sslmode="require", channel_binding="prefer").close()
    msg = str(ei.value)
    assert "tenant-router" in msg and "channel_binding=disable" in msg, msg
    assert '"ta"' in msg or "ta" in msg.split(), msg
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(tls_router, t, sslmode="require", channel_binding="require").close()
    assert CB_REQUIRED_MSG in str(ei.value), str(ei.value)
    # A wrong password over TLS is still the server's scram verdict.
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(tls_router, t, sslmode="require", password="wrong").close()
    assert "password authentication failed" in str(ei.value), str(ei.value)
    assert_serving(tls_router, t, pki)


def test_tls_scram_prefer_works_when_one_leg_is_plaintext(make_router, pki, clusters,
                                                           tls_clusters):
    """channel_binding=prefer (libpq's default) logs in with plain SCRAM-SHA-256 when either
    leg is plaintext: TLS client + plaintext server, and plaintext client + TLS server."""
    r = make_router(tls_overrides(pki, server_mode="prefer"))  # session clusters: no TLS
    t = tenant_on(r, "a")
    with connect(r, t, sslmode="require", channel_binding="prefer") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute(SERVER_SSL).fetchone()[0] is False
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(r, t, sslmode="require", channel_binding="require").close()
    assert CB_REQUIRED_MSG in str(ei.value), str(ei.value)
    r2 = make_router(tls_overrides(pki, client_mode="allow"), cluster_set=tls_clusters)
    t = tenant_on(r2, "tb")
    with connect(r2, t, sslmode="disable", channel_binding="prefer") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute(SERVER_SSL).fetchone()[0] is True


# --- 3. client_tls_mode=require refuses plaintext ----------------------------------------------

def test_tls_require_refuses_plaintext(tls_router, pki, client_home):
    t = tenant_on(tls_router, "ta")
    with rawpg.RawConn(tls_router.port) as c:
        c.send(rawpg.startup_packet(trust_params(t)))
        f = read_refusal(c, ("28000",))
        c.expect_closed()
    assert "tenant-router" in f["M"]
    r = psql(tls_router, t, ["SELECT 1"], client_home, sslmode="disable")
    assert r.returncode != 0, r.stdout
    assert "tenant-router" in r.stderr, r.stderr
    # libpq's default sslmode=prefer upgrades and works.
    with connect(tls_router, t, sslmode="prefer") as conn:
        assert conn.pgconn.ssl_in_use
    assert_serving(tls_router, t, pki)


# --- 4. bulk data over TLS on both legs --------------------------------------------------------

@pytest.mark.timeout(240)
def test_tls_copy_100mb_in_and_out_byte_exact(tls_router):
    from test_copy_cancel import copy_round_trip
    with connect(tls_router, "copy-tenant", sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute(SERVER_SSL).fetchone()[0] is True
        copy_round_trip(conn)


# --- 5. client certificates --------------------------------------------------------------------

def test_tls_verify_ca_requires_a_trusted_client_cert(make_router, pki, tls_clusters, client_home):
    r = make_router(tls_overrides(pki, client_mode="verify-ca", client_tls_ca_file=pki.ca.cert),
                    cluster_set=tls_clusters)
    t = tenant_on(r, "tb")
    good = psql(r, t, [SERVER_SSL, "\\conninfo"], client_home, sslmode="require",
                sslcert=pki.client[0], sslkey=pki.client[1])
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[0] == "t"
    assert "SSL connection" in good.stdout
    none = psql(r, t, ["SELECT 1"], client_home, sslmode="require")
    assert none.returncode != 0, f"no client cert accepted: {none.stdout}"
    bad = psql(r, t, ["SELECT 1"], client_home, sslmode="require",
               sslcert=pki.bad_client[0], sslkey=pki.bad_client[1])
    assert bad.returncode != 0, f"untrusted client cert accepted: {bad.stdout}"
    for res in (none, bad):
        low = res.stderr.lower()
        assert "ssl" in low or "certificate" in low or "tenant-router" in low, res.stderr
    # Plaintext is refused as in require.
    with rawpg.RawConn(r.port) as c:
        c.send(rawpg.startup_packet(trust_params(t)))
        read_refusal(c, ("28000",))
    # Still serving good clients.
    again = psql(r, t, ["SELECT 1"], client_home, sslmode="verify-full", host="localhost",
                 hostaddr="127.0.0.1", sslrootcert=pki.ca.cert, sslcert=pki.client[0],
                 sslkey=pki.client[1])
    assert again.returncode == 0, again.stderr


def test_tls_optional_client_cert_with_ca_file(make_router, pki, tls_clusters, client_home):
    """require + client_tls_ca_file: no certificate is fine, an untrusted one is not."""
    r = make_router(tls_overrides(pki, client_tls_ca_file=pki.ca.cert), cluster_set=tls_clusters)
    t = tenant_on(r, "ta")
    assert psql(r, t, ["SELECT 1"], client_home, sslmode="require").returncode == 0
    ok = psql(r, t, ["SELECT 1"], client_home, sslmode="require", sslcert=pki.client[0],
              sslkey=pki.client[1])
    assert ok.returncode == 0, ok.stderr
    bad = psql(r, t, ["SELECT 1"], client_home, sslmode="require", sslcert=pki.bad_client[0],
               sslkey=pki.bad_client[1])
    assert bad.returncode != 0, f"untrusted client cert accepted: {bad.stdout}"


# --- 6. reloads --------------------------------------------------------------------------------

def _router_with_cert_copies(make_router, pki, tls_clusters):
    r = make_router(tls_overrides(pki, client_tls_cert_file="router.crt",
                                  client_tls_key_file="router.key"),
                    cluster_set=tls_clusters, start=False)
    for src, dst in ((pki.router[0], "router.crt"), (pki.router[1], "router.key"),
                     (pki.router2[0], "router2.crt"), (pki.router2[1], "router2.key")):
        shutil.copyfile(src, os.path.join(r.dir, dst))
        os.chmod(os.path.join(r.dir, dst), 0o600)
    return r.start()


@pytest.mark.parametrize("how", ["garbage_cert", "missing_cert", "mismatched_key"])
def test_tls_reload_with_broken_certificate_keeps_old_one(make_router, pki, tls_clusters, how):
    r = _router_with_cert_copies(make_router, pki, tls_clusters)
    old_fp = tlscerts.fingerprint(tlscerts.cert_der(pki.router[0]))
    assert peer_cert_fingerprint(r, pki) == old_fp
    t = tenant_on(r, "ta")
    live = connect(r, t, host="localhost", hostaddr="127.0.0.1", sslmode="verify-full",
                   sslrootcert=pki.ca.cert)
    try:
        assert live.execute(SERVER_SSL).fetchone()[0] is True
        if how == "garbage_cert":
            with open(os.path.join(r.dir, "router.crt"), "w") as f:
                f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n"
                        "-----END CERTIFICATE-----\n")
        elif how == "missing_cert":
            r.write_config({"router": {"client_tls_cert_file": "no-such-file.crt"}})
        else:
            r.write_config({"router": {"client_tls_key_file": "router2.key"}})
        off = r.log_size()
        assert r.reload() == "failed"
        assert "reload failed" in r.log_since(off)
        assert r.alive()
        # The live session goes on, new sessions get the old certificate.
        assert live.execute("SELECT 41 + 1").fetchone()[0] == 42
        assert live.execute(SERVER_SSL).fetchone()[0] is True
        assert peer_cert_fingerprint(r, pki) == old_fp
        assert_serving(r, t, pki)
    finally:
        live.close()


def test_tls_reload_serves_new_certificate(make_router, pki, tls_clusters):
    r = _router_with_cert_copies(make_router, pki, tls_clusters)
    t = tenant_on(r, "tb")
    assert peer_cert_fingerprint(r, pki) == tlscerts.fingerprint(tlscerts.cert_der(pki.router[0]))
    live = connect(r, t, sslmode="require")
    try:
        r.write_config({"router": {"client_tls_cert_file": "router2.crt",
                                   "client_tls_key_file": "router2.key"}})
        assert r.reload() == "ok"
        assert peer_cert_fingerprint(r, pki) == tlscerts.fingerprint(
            tlscerts.cert_der(pki.router2[0]))
        assert live.execute("SELECT 1").fetchone()[0] == 1
        assert_serving(r, t, pki)
    finally:
        live.close()


# --- 7. server_tls_mode against a server without TLS -------------------------------------------

def test_tls_server_require_towards_plaintext_server_is_refused(make_router, clusters):
    r = make_router({"router": {"server_tls_mode": "require"}})
    t = tenant_on(r, "a")
    with rawpg.RawConn(r.port) as c:
        c.send(rawpg.startup_packet(trust_params(t)))
        f = read_refusal(c, ("08006", "57P03"))
    assert re.search(r"\ba\b", f["M"]), f"refusal does not name cluster a: {f}"
    text = (f["M"] + " " + f.get("D", "") + " " + f["H"]).lower()
    assert "tls" in text or "ssl" in text, f"refusal does not say the server lacks TLS: {f}"
    assert r.alive()


def test_tls_server_prefer_towards_plaintext_server_works(make_router, clusters):
    r = make_router({"router": {"server_tls_mode": "prefer"}})
    for name, srv in clusters.items():
        t = tenant_on(r, name)
        with r.connect(t) as conn:
            assert conn.execute("SELECT inet_server_port()").fetchone()[0] == srv.port
            assert conn.execute(SERVER_SSL).fetchone()[0] is False


# --- 8. verify-full with a certificate that does not name the host -----------------------------

def test_tls_server_verify_full_hostname_mismatch_refused(make_router, pki, tls_servers):
    other = tls_servers["other"]
    verify_full = {"server_tls_mode": "verify-full", "server_tls_ca_file": pki.ca.cert}
    r = make_router({"router": verify_full, "pins": {"t-full": "mismatch"}},
                    cluster_set={"mismatch": other})
    with rawpg.RawConn(r.port) as c:
        c.send(rawpg.startup_packet(trust_params("t-full")))
        f = read_refusal(c, ("57P03", "08006"))
    assert "mismatch" in f["M"], f"refusal does not name the cluster: {f}"
    # The same server with verify-ca (chain only) must work: only the name is wrong. (Another
    # router: two clusters may not share a server.)
    r = make_router({"router": verify_full, "cluster.chainonly": {"server_tls_mode": "verify-ca"},
                     "pins": {"t-ca": "chainonly"}}, cluster_set={"chainonly": other})
    with r.connect("t-ca", sslmode="prefer") as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == other.port
        assert conn.execute(SERVER_SSL).fetchone()[0] is True


def test_tls_server_verify_ca_untrusted_server_refused(make_router, pki, tls_clusters):
    """The servers' certs are signed by ca; trusting only bad_ca must fail verification."""
    r = make_router({"router": {"server_tls_mode": "verify-ca",
                                "server_tls_ca_file": pki.bad_ca.cert}},
                    cluster_set=tls_clusters)
    t = tenant_on(r, "tb")
    with rawpg.RawConn(r.port) as c:
        c.send(rawpg.startup_packet(trust_params(t)))
        f = read_refusal(c, ("57P03", "08006"))
    assert "tb" in f["M"], f"refusal does not name the cluster: {f}"


def test_tls_server_protocol_mismatch_refused(make_router, pki, tls_servers):
    """server_tls_protocols = tlsv1.2 towards a TLS-1.3-only server: the TLS handshake of the
    server leg fails.  Whether the health checker notices (57P03) or the session does (08006),
    the client gets a refusal naming the cluster, and TLS/SSL in the text."""
    other = tls_servers["other"]
    r = make_router({"router": {"server_tls_mode": "verify-ca", "server_tls_ca_file": pki.ca.cert,
                                "server_tls_protocols": "tlsv1.2"}},
                    cluster_set={"old12": other})
    with rawpg.RawConn(r.port) as c:
        c.send(rawpg.startup_packet(trust_params("t1")))
        f = read_refusal(c, ("57P03", "08006"))
    assert "old12" in f["M"], f"refusal does not name the cluster: {f}"
    text = " ".join(f.get(k, "") for k in "MDH").lower()
    assert "tls" in text or "ssl" in text or "protocol" in text, f"no reason given: {f}"
    assert r.alive()


# --- 9. direct TLS (PostgreSQL 17 style) -------------------------------------------------------

def test_tls_direct_tls_with_alpn(tls_router, pki):
    t = tenant_on(tls_router, "ta")
    with rawpg.RawConn(tls_router.port, timeout=5 * SLOW) as c:
        c.wrap(client_ctx(pki.ca.cert, alpn=["postgresql"]), "localhost")
        assert c.sock.selected_alpn_protocol() == "postgresql"
        rawpg.login(c, trust_params(t), timeout=5 * SLOW)
        assert rawpg.simple_query(c, SERVER_SSL) == [["t"]]
        assert rawpg.simple_query(c, "SELECT current_setting('app.tenant_id')") == [[t]]


def _direct_tls_outcome(port, ctx, tenant):
    """'ready' if a direct TLS login reaches ReadyForQuery, else a description of the refusal."""
    with rawpg.RawConn(port, timeout=5 * SLOW) as c:
        try:
            c.wrap(ctx, "localhost")
            c.send(rawpg.startup_packet(trust_params(tenant)))
            while True:
                t, body = c.recv_msg()
                if t == "E":
                    return f"error {rawpg.parse_fields(body)}"
                if t == "Z":
                    return "ready"
        except (ssl.SSLError, rawpg.Closed, ConnectionError) as e:
            return f"{type(e).__name__}: {e}"
        except socket.timeout:
            return "timeout"


def test_tls_direct_tls_without_alpn_refused(tls_router, pki):
    t = tenant_on(tls_router, "ta")
    out = _direct_tls_outcome(tls_router.port, client_ctx(pki.ca.cert), t)
    assert out != "ready", "direct TLS without ALPN reached ReadyForQuery"
    assert out != "timeout", "router neither refused nor answered"
    out = _direct_tls_outcome(tls_router.port, client_ctx(pki.ca.cert, alpn=["http/1.1"]), t)
    assert out not in ("ready", "timeout"), out
    assert tls_router.alive()
    assert _direct_tls_outcome(tls_router.port, client_ctx(pki.ca.cert, alpn=["postgresql"]),
                               t) == "ready"


def test_tls_direct_tls_refused_when_client_tls_disabled(router, pki):
    out = _direct_tls_outcome(router.port, client_ctx(verify=False, alpn=["postgresql"]), "t1")
    assert out not in ("ready", "timeout"), out
    assert router.alive()
    assert router.server_port("t1") > 0


# --- 10. JDBC ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def java_classes():
    d = harness.java_classes("TlsCheck", prefix="tr-java-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_jdbc(classes, url, user="app", password=APP_PASSWORD):
    r = subprocess.run(["java", "-cp", f"{PGJDBC_JAR}:{classes}", "TlsCheck", url, user, password],
                       capture_output=True, text=True, timeout=60 * SLOW,
                       env=dict(os.environ, HOME=classes), stdin=subprocess.DEVNULL)
    return r


@pytest.mark.timeout(120)
def test_tls_jdbc_ssl(tls_router, tls_clusters, java_classes):
    tenant = "42"
    want = tls_clusters[tls_router.route([tenant])[tenant][0]].port
    url = (f"jdbc:postgresql://127.0.0.1:{tls_router.port}/appdb?ssl=true&sslmode=require"
           f"&options=-c%20app.tenant_id%3D{tenant}")
    r = run_jdbc(java_classes, url)
    assert r.returncode == 0, f"JDBC failed: {r.stdout}\n{r.stderr}"
    out = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert out.get("port") == str(want), r.stdout
    assert out.get("server_ssl") == "true", r.stdout
    assert out.get("tenant") == tenant, r.stdout
    # Without TLS the router refuses with 28000, which JDBC reports as such.
    url = (f"jdbc:postgresql://127.0.0.1:{tls_router.port}/appdb?sslmode=disable"
           f"&options=-c%20app.tenant_id%3D{tenant}")
    r = run_jdbc(java_classes, url)
    assert r.returncode == 2, f"{r.stdout}\n{r.stderr}"
    assert "sqlstate=28000" in r.stdout and "tenant-router" in r.stdout, r.stdout


# --- 11. GSSENCRequest -------------------------------------------------------------------------

def test_tls_gssenc_then_ssl_request(tls_router, pki):
    t = tenant_on(tls_router, "tb")
    with rawpg.RawConn(tls_router.port, timeout=5 * SLOW) as c:
        c.send(rawpg.gssenc_request())
        assert c.recv_byte() == b"N"
        assert c.starttls(client_ctx(pki.ca.cert), "localhost") == b"S"
        rawpg.login(c, trust_params(t), timeout=5 * SLOW)
        assert rawpg.simple_query(c, SERVER_SSL) == [["t"]]


def test_tls_ssl_request_answered_s_only_once(tls_router, pki):
    """After the handshake, a second SSLRequest inside TLS is a protocol violation, not 'S'."""
    t = tenant_on(tls_router, "ta")
    with rawpg.RawConn(tls_router.port, timeout=5 * SLOW) as c:
        assert c.starttls(client_ctx(pki.ca.cert), "localhost") == b"S"
        c.send(rawpg.ssl_request())
        try:
            f = read_refusal(c, ("08P01",))
        except (rawpg.Closed, ssl.SSLError, ConnectionError):
            f = None  # closing without a message is acceptable too
        assert f is None or "tenant-router" in f["M"]
    assert tls_router.alive()
    assert_serving(tls_router, t, pki)


# --- more: allow mode, cancel, protocols, configuration checks ---------------------------------

@pytest.mark.parametrize("mode", ["allow", "prefer"])
def test_tls_allow_accepts_tls_and_plaintext(make_router, pki, tls_clusters, mode):
    r = make_router(tls_overrides(pki, client_mode=mode), cluster_set=tls_clusters)
    t = tenant_on(r, "ta")
    for sslmode, want in (("disable", False), ("require", True), ("prefer", True)):
        with connect(r, t, sslmode=sslmode) as conn:
            assert conn.pgconn.ssl_in_use == want, sslmode
            assert conn.execute(SERVER_SSL).fetchone()[0] is True


def test_tls_cancel_works_under_require(tls_router, tls_clusters):
    """libpq (before 17) sends CancelRequest in plaintext on a new connection; PostgreSQL
    accepts that whatever its TLS settings, so the router must too."""
    t = tenant_on(tls_router, "tb")
    srv = tls_clusters["tb"]
    conn = connect(tls_router, t, sslmode="require")
    try:
        pid = conn.info.backend_pid
        result = {}

        def run():
            try:
                conn.execute("SELECT pg_sleep(20)")
                result["outcome"] = "completed"
            except Exception as e:  # asserted on below
                result["outcome"] = e

        th = threading.Thread(target=run, daemon=True)
        th.start()
        harness.wait_until(
            lambda: (srv.sql("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
                     or [[None]])[0][0] == "active", 5 * SLOW, what="pg_sleep active")
        conn.cancel()
        th.join(5 * SLOW)
        assert not th.is_alive(), "query still running 5 s after the cancel"
        assert isinstance(result["outcome"], psycopg.errors.QueryCanceled), result
        assert conn.execute(SERVER_SSL).fetchone()[0] is True
    finally:
        conn.close()


def test_tls_protocols_tls13_only(make_router, pki, tls_clusters):
    r = make_router(tls_overrides(pki, client_tls_protocols="tlsv1.3"), cluster_set=tls_clusters)
    t = tenant_on(r, "ta")
    old = client_ctx(pki.ca.cert)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with rawpg.RawConn(r.port, timeout=5 * SLOW) as c:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            c.starttls(old, "localhost")
    with rawpg.RawConn(r.port, timeout=5 * SLOW) as c:
        assert c.starttls(client_ctx(pki.ca.cert), "localhost") == b"S"
        assert c.sock.version() == "TLSv1.3"
        rawpg.login(c, trust_params(t), timeout=5 * SLOW)
    assert r.alive()


def test_tls_default_protocols_refuse_tls11(make_router, pki, tls_clusters):
    r = make_router(tls_overrides(pki), cluster_set=tls_clusters)
    ctx = client_ctx(pki.ca.cert)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this Python/OpenSSL cannot offer TLS 1.1")
    with rawpg.RawConn(r.port, timeout=5 * SLOW) as c:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            c.starttls(ctx, "localhost")
    assert r.alive()


def test_tls_check_reports_bad_tls_configuration(make_router, pki, tls_clusters):
    r = make_router(tls_overrides(pki), cluster_set=tls_clusters, start=False)
    res = r.check()
    assert res.returncode == 0, res.stderr
    cases = [
        ({"client_tls_cert_file": None, "client_tls_key_file": None}, "client_tls"),
        ({"client_tls_mode": "sometimes"}, "client_tls_mode"),
        ({"client_tls_mode": "verify-ca", "client_tls_ca_file": None}, "client_tls"),
    ]
    base = dict(r.cfg["router"])
    for change, needle in cases:
        r.cfg["router"] = dict(base)
        r.write_config({"router": change})
        res = r.check()
        assert res.returncode == 1, f"{change}: exit {res.returncode}, {res.stdout} {res.stderr}"
        assert needle in res.stderr, f"{change}: {res.stderr}"


# --- router's own client certificate, hostile TLS clients, concurrency -------------------------

def test_tls_router_presents_client_certificate(make_router, pki, tls_clusters):
    """server_tls_cert_file/key_file: pg_hba `cert` for certuser accepts the router's cert."""
    r = make_router(tls_overrides(pki, server_tls_cert_file=pki.router_client[0],
                                  server_tls_key_file=pki.router_client[1]),
                    cluster_set=tls_clusters)
    for name in tls_clusters:
        t = tenant_on(r, name)
        with connect(r, t, user="certuser", password=None, dbname="postgres",
                     sslmode="require") as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "certuser"
            assert conn.execute(SERVER_SSL).fetchone()[0] is True
    plain = make_router(tls_overrides(pki), cluster_set=tls_clusters)
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(plain, tenant_on(plain, "ta"), user="certuser", password=None, dbname="postgres",
                sslmode="require").close()
    assert "certificate" in str(ei.value), str(ei.value)


def _read_until_closed(sock, timeout):
    """Read and drop whatever comes until EOF/reset; False if still open after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionError, ssl.SSLError):
            return True
        except socket.timeout:
            return False
    return False


def _client_hello(pki):
    obj = client_ctx(pki.ca.cert).wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(),
                                           server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_tls_hostile_clients_do_not_hurt(tls_router, tls_servers, pki):
    t = tenant_on(tls_router, "ta")
    hello = _client_hello(pki)
    assert hello[:1] == b"\x16"
    closes = 5 * SLOW
    # Not TLS after 'S'.
    with rawpg.RawConn(tls_router.port) as c:
        c.send(rawpg.ssl_request())
        assert c.recv_byte() == b"S"
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_until_closed(c.sock, closes), "router kept a non-TLS peer after 'S'"
    # Half a ClientHello, then hang up; and direct TLS with a broken record.
    with rawpg.RawConn(tls_router.port) as c:
        c.send(rawpg.ssl_request())
        assert c.recv_byte() == b"S"
        c.send(hello[: len(hello) // 2])
    with rawpg.RawConn(tls_router.port) as c:
        c.send(b"\x16\x03\x01\x00\x30" + os.urandom(48))
        assert _read_until_closed(c.sock, closes)
    # A whole ClientHello twice over (the second is junk to the TLS state machine).
    with rawpg.RawConn(tls_router.port) as c:
        c.send(rawpg.ssl_request())
        assert c.recv_byte() == b"S"
        c.send(hello + hello)
        assert _read_until_closed(c.sock, closes)
    # Logged in over TLS, then a forged application-data record: the session ends.
    with rawpg.RawConn(tls_router.port, timeout=5 * SLOW) as c:
        assert c.starttls(client_ctx(pki.ca.cert), "localhost") == b"S"
        rawpg.login(c, trust_params(t), timeout=5 * SLOW)
        pid = int(rawpg.simple_query(c, "SELECT pg_backend_pid()")[0][0])
        raw = socket.socket(fileno=os.dup(c.sock.fileno()))
        try:
            raw.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))
            assert _read_until_closed(raw, closes), "session survived a forged TLS record"
        finally:
            raw.close()
    srv = tls_servers["ta"]
    harness.wait_until(lambda: not srv.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                            (pid,)),
                       5 * SLOW, what="the server session of the forged-record client to end")
    # Logged in over TLS, then a half-sent query and a hang-up without close_notify.
    with rawpg.RawConn(tls_router.port, timeout=5 * SLOW) as c:
        assert c.starttls(client_ctx(pki.ca.cert), "localhost") == b"S"
        rawpg.login(c, trust_params(t), timeout=5 * SLOW)
        c.send(rawpg.query_message("SELECT 1")[:7])
        c.sock.shutdown(socket.SHUT_RDWR)
    assert tls_router.alive()
    assert_serving(tls_router, t, pki)


def test_tls_stalled_handshake_hits_login_timeout(make_router, pki, tls_clusters):
    r = make_router(tls_overrides(pki, client_login_timeout="1s"), cluster_set=tls_clusters)
    # 'S' and then nothing.
    with rawpg.RawConn(r.port) as c:
        c.send(rawpg.ssl_request())
        assert c.recv_byte() == b"S"
        t0 = time.monotonic()
        assert _read_until_closed(c.sock, 6 * SLOW), "stalled TLS handshake never timed out"
        assert time.monotonic() - t0 < 4 * SLOW
    # Handshake done, then no startup packet: closed (an ErrorResponse first is fine).
    with rawpg.RawConn(r.port, timeout=6 * SLOW) as c:
        assert c.starttls(client_ctx(pki.ca.cert), "localhost") == b"S"
        t0 = time.monotonic()
        try:
            t, body = c.recv_msg()
            assert t == "E", (t, body)
            assert rawpg.parse_fields(body).get("C") == "08006", rawpg.parse_fields(body)
        except (rawpg.Closed, ssl.SSLError, ConnectionError):
            pass
        assert time.monotonic() - t0 < 4 * SLOW
    assert r.alive()
    assert_serving(r, tenant_on(r, "tb"), pki)


@pytest.mark.timeout(120)
def test_tls_parallel_sessions_with_large_results(tls_router):
    errors = []
    sizes = (1, 70000, 2_500_000)

    def worker(i):
        try:
            with connect(tls_router, f"par-{i}", sslmode="require") as conn:
                ch = chr(65 + i % 26)
                for n in sizes:
                    got = conn.execute("SELECT repeat(%s, %s)", (ch, n)).fetchone()[0]
                    if got != ch * n:
                        errors.append(f"worker {i}: wrong {n}-byte result")
                # And the other direction: a large parameter.
                big = ch * 1_500_000
                if conn.execute("SELECT length(%s::text)", (big,)).fetchone()[0] != len(big):
                    errors.append(f"worker {i}: wrong length for a big parameter")
        except Exception as e:  # collected and reported below
            errors.append(f"worker {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(24)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90 * SLOW)
    assert not any(th.is_alive() for th in threads), "workers hung"
    assert not errors, errors[:5]
    assert tls_router.alive()


def test_tls_check_names_the_missing_certificate_file(make_router, pki, tls_clusters):
    """With three or four PEM files configured, the error must say which one is missing."""
    r = make_router(tls_overrides(pki), cluster_set=tls_clusters, start=False)
    for key in ("client_tls_cert_file", "client_tls_key_file"):
        r.cfg["router"] = dict(tls_overrides(pki)["router"], **{key: "missing.pem"})
        r.write_config()
        res = r.check()
        assert res.returncode == 1, f"{key}: exit {res.returncode}, {res.stderr}"
        assert "missing.pem" in res.stderr, \
            f"{key}: the message does not name the file: {res.stderr}"
