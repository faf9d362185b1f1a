"""Authentication is relayed end to end; the router's own refusals are clear."""

import os
import struct
import subprocess

import psycopg
import pytest

import harness
import rawpg


def test_auth_scram_right_password(router):
    with router.connect("t1") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "app"


def test_auth_scram_wrong_password(router):
    with pytest.raises(psycopg.OperationalError) as ei:
        router.connect("t1", password="not-the-password")
    assert "password authentication failed" in str(ei.value)
    assert ei.value.sqlstate in (None, "28P01")  # libpq may not expose it for FATALs at login


def test_auth_md5_right_and_wrong(router):
    with router.connect("t2", user="md5user", password=harness.MD5_PASSWORD,
                        dbname="postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "md5user"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        router.connect("t2", user="md5user", password="nope", dbname="postgres")


def psql(router, user, password, sql, tenant="t3", dbname="appdb"):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(router.port), PGUSER=user,
               PGPASSWORD=password, PGDATABASE=dbname, PGOPTIONS=f"-c app.tenant_id={tenant}",
               PGCONNECT_TIMEOUT="5")
    return subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          env=env, capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)


def test_auth_psql_scram_and_md5(router, clusters):
    want = clusters[router.route(["t3"])["t3"][0]].port
    r = psql(router, "app", harness.APP_PASSWORD, "SELECT inet_server_port()")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(want)
    r = psql(router, "md5user", harness.MD5_PASSWORD, "SELECT current_user", dbname="postgres")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "md5user"


def test_auth_psql_wrong_password(router):
    r = psql(router, "app", "wrong", "SELECT 1")
    assert r.returncode == 2
    assert "password authentication failed" in r.stderr
    r = psql(router, "md5user", "wrong", "SELECT 1", dbname="postgres")
    assert r.returncode == 2
    assert "password authentication failed" in r.stderr


def test_auth_missing_tenant_is_refused_with_08004(router):
    # psycopg 3.1 exposes no diag fields for errors during connect, so the SQLSTATE is
    # checked on the wire (raw socket) and the text through libpq.
    with pytest.raises(psycopg.OperationalError) as ei:
        router.connect(None)
    msg = str(ei.value)
    assert "FATAL" in msg and "tenant-router" in msg, msg
    assert "HINT" in msg, f"no hint in {msg!r}"
    with rawpg.RawConn(router.port) as c:
        c.send(rawpg.startup_packet([("user", "app"), ("database", "appdb")]))
        f = rawpg.assert_refusal(c, "08004")
    assert f["M"].startswith("tenant-router"), f


def test_auth_wrong_md5_password_relays_28P01(router):
    with rawpg.RawConn(router.port) as c:
        c.send(rawpg.startup_packet([("user", "md5user"), ("database", "postgres"),
                                     ("app.tenant_id", "t2")]))
        t, body = c.recv_msg()
        assert t == "R" and struct.unpack("!I", body[:4])[0] == 5, (t, body)
        c.send(rawpg.md5_password_message("md5user", "wrong", body[4:8]))
        t, body = c.recv_msg()
        assert t == "E", (t, body)
        f = rawpg.parse_fields(body)
        assert f["C"] == "28P01" and f["S"] == "FATAL", f
        assert "password authentication failed" in f["M"]
        c.expect_closed()


def test_auth_missing_tenant_psql(router):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(router.port), PGUSER="app",
               PGPASSWORD="app", PGDATABASE="appdb", PGCONNECT_TIMEOUT="5")
    env.pop("PGOPTIONS", None)
    r = subprocess.run(["psql", "-X", "-c", "SELECT 1"], env=env, capture_output=True,
                       text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert "tenant-router" in r.stderr
    assert "HINT" in r.stderr


def test_auth_user_suffix_source(make_router, clusters):
    r = make_router(overrides={"router": {"tenant_sources": "options, parameter, user",
                                          "tenant_separator": "+"}})
    want = clusters[r.route(["t7"])["t7"][0]].port
    with r.connect(None, user="app+t7") as conn:
        cu, tid, port = conn.execute(
            "SELECT current_user, current_setting('app.tenant_id'), inet_server_port()"
        ).fetchone()
    assert (cu, tid, port) == ("app", "t7", want)
    # Wrong password with the suffix form: SCRAM is computed over the stripped user name
    # by the server, so it still fails cleanly.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        r.connect(None, user="app+t7", password="wrong")
    # An options tenant still works in the same router.
    with r.connect("t8") as conn:
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone()[0] == "t8"
