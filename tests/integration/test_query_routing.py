"""Routing from the first query (tenant source `query`): the router authenticates the client
itself, answers SET/BEGIN locally until a statement names the tenant, then logs in to the
owning cluster on the client's behalf and replays what it held.

Routers are shared per module to keep this fast; every test opens its own sessions.
"""

import os
import shutil
import subprocess
import threading

import psycopg
import pytest

import harness
import rawpg
from harness import APP_PASSWORD, CLEARTEXT_PASSWORD, MD5_PASSWORD, SLOW

pytestmark = pytest.mark.timeout(20)

PGJDBC_JAR = "/usr/share/java/postgresql.jar"
PINS = {"ta": "a", "tb": "b", "ta2": "a", "tb2": "b"}
QR_USER = "qruser"          # same SCRAM verifier on both clusters: key reuse works everywhere
QR_PASSWORD = "qr-Secret-7"
TRUST_SECRET = "trust-pw"   # trustuser's password towards the router (its servers trust it)
ITEMS = {"a": [("ta", 1), ("ta", 2), ("ta2", 3)],
         "b": [("tb", 1), ("tb", 2), ("tb", 3), ("tb2", 4)]}
COUNTS = {"ta": 2, "tb": 3}


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secrets(clusters):
    """Roles and tables on both clusters; returns the auth_file entries {user: secret}."""
    harness.ensure_shared_verifier_role(clusters, QR_USER, QR_PASSWORD)
    for name, srv in clusters.items():
        srv.sql("DROP TABLE IF EXISTS items", dbname="appdb")
        srv.sql("CREATE TABLE items (tenant_id text, v int)", dbname="appdb")
        srv.sql("GRANT ALL ON items TO PUBLIC", dbname="appdb")
        for t, v in ITEMS[name]:
            srv.sql("INSERT INTO items VALUES (%s, %s)", (t, v), dbname="appdb")
    a = clusters["a"]
    app_a, app_b = harness.role_secret(a, "app"), harness.role_secret(clusters["b"], "app")
    assert app_a != app_b, "app must have different verifiers (salts) on a and b"
    return {
        QR_USER: harness.role_secret(a, QR_USER),
        "app": app_a,                                   # a's verifier: key reuse fails on b
        "md5user": harness.role_secret(a, "md5user"),   # "md5..." (same on both: no salt)
        "pwuser": CLEARTEXT_PASSWORD,                   # plaintext secret
        "trustuser": TRUST_SECRET,
    }


def qr_overrides(auth=None, router=None):
    return harness.merge({
        "router": {"tenant_sources": "options, parameter, query", "tenant_column": "tenant_id"},
        "auth": {"auth_file": "userlist.txt"},
        "pins": dict(PINS),
    }, {"router": router or {}, "auth": auth or {}})


def start_qr(factory, secrets, auth=None, router=None, passfile=None):
    r = factory(overrides=qr_overrides(auth, router), start=False)
    r.write_file("userlist.txt", harness.userlist_text(secrets))
    if passfile is not None:
        r.write_file("passfile", passfile)
    r.start()
    return r


@pytest.fixture(scope="module")
def qr(make_module_router, secrets):
    """scram-sha-256 against auth_file, tenant_column = tenant_id, no server_passfile."""
    return start_qr(make_module_router, secrets)


@pytest.fixture(scope="module")
def qr_pass(make_module_router, secrets):
    """Like qr, with a server_passfile that knows app's password."""
    return start_qr(make_module_router, secrets, auth={"server_passfile": "passfile"},
                    passfile=f"127.0.0.1:*:*:app:{APP_PASSWORD}\n")


def qconnect(router, user=QR_USER, password=QR_PASSWORD, dbname="appdb", **kw):
    """A psycopg session with no tenant in the startup packet."""
    return router.connect(None, user=user, password=password, dbname=dbname, **kw)


def port_of(clusters, tenant):
    return clusters[PINS[tenant]].port


def server_row(conn):
    return conn.execute("SELECT inet_server_port(), current_user").fetchone()


def test_qr_route_agrees_with_pins(qr):
    assert qr.route(list(PINS)) == {t: (c, "pinned") for t, c in PINS.items()}


# --- where the tenant is found ---------------------------------------------------------------

@pytest.mark.parametrize("tenant", ["ta", "tb"])
def test_qr_set_routes_to_owning_cluster(qr, clusters, tenant):
    want = clusters[qr.route([tenant])[tenant][0]].port
    assert want == port_of(clusters, tenant)
    with qconnect(qr) as conn:
        cur = conn.execute(f"SET app.tenant_id = '{tenant}'")
        assert cur.statusmessage == "SET"
        port, tid, user = conn.execute(
            "SELECT inet_server_port(), current_setting('app.tenant_id'), current_user"
        ).fetchone()
        assert (port, tid, user) == (want, tenant, QR_USER)
        assert conn.execute("SHOW app.tenant_id").fetchone()[0] == tenant
        assert conn.execute("SELECT current_setting('port')").fetchone()[0] == str(want)


def test_qr_set_session_to_form(qr, clusters):
    with qconnect(qr) as conn:
        conn.execute("SET SESSION app.tenant_id TO tb")
        assert conn.execute("SHOW app.tenant_id").fetchone()[0] == "tb"
        assert server_row(conn) == (port_of(clusters, "tb"), QR_USER)


@pytest.mark.parametrize("tenant", ["ta", "tb"])
def test_qr_set_config(qr, clusters, tenant):
    with qconnect(qr) as conn:
        row = conn.execute(f"SELECT set_config('app.tenant_id', '{tenant}', false)").fetchone()
        assert row == (tenant,)  # the statement itself ran on the chosen server
        assert conn.execute("SHOW app.tenant_id").fetchone()[0] == tenant
        assert server_row(conn) == (port_of(clusters, tenant), QR_USER)


@pytest.mark.parametrize("tenant", ["ta", "tb"])
def test_qr_sqlcommenter_comment(qr, clusters, tenant):
    with qconnect(qr) as conn:
        port = conn.execute(f"/*app.tenant_id='{tenant}'*/ SELECT inet_server_port()").fetchone()
        assert port == (port_of(clusters, tenant),)
        assert server_row(conn) == (port_of(clusters, tenant), QR_USER)


@pytest.mark.parametrize("tenant", ["ta", "tb"])
def test_qr_tenant_column_where_literal(qr, clusters, tenant):
    with qconnect(qr) as conn:
        row = conn.execute("SELECT inet_server_port(), count(*) FROM items "
                           f"WHERE tenant_id = '{tenant}'").fetchone()
        assert row == (port_of(clusters, tenant), COUNTS[tenant])
        # qualified column, reversed operands, more AND terms
        row = conn.execute("SELECT count(*) FROM items i "
                           f"WHERE i.v > 0 AND '{tenant}' = i.tenant_id").fetchone()
        assert row == (COUNTS[tenant],)


def test_qr_tenant_column_insert_values(qr, clusters):
    try:
        with qconnect(qr) as conn:
            cur = conn.execute("INSERT INTO items (v, tenant_id) VALUES (4242, 'tb2'), "
                               "(4243, 'tb2')")
            assert cur.rowcount == 2
            assert server_row(conn) == (port_of(clusters, "tb2"), QR_USER)
        n = {c: clusters[c].sql("SELECT count(*) FROM items WHERE v IN (4242, 4243)",
                                dbname="appdb")[0][0] for c in ("a", "b")}
        assert n == {"a": 0, "b": 2}
    finally:
        for c in ("a", "b"):
            clusters[c].sql("DELETE FROM items WHERE v IN (4242, 4243)", dbname="appdb")


@pytest.mark.parametrize("tenant", ["ta", "tb"])
def test_qr_extended_protocol_param_in_where(qr, clusters, tenant):
    with qconnect(qr) as conn:
        # psycopg sends Parse("... = $1")/Bind(tenant)/Describe/Execute/Sync
        row = conn.execute("SELECT inet_server_port(), count(*) FROM items WHERE tenant_id = %s",
                           [tenant]).fetchone()
        assert row == (port_of(clusters, tenant), COUNTS[tenant])
        # later statements, extended and simple, stay there
        assert conn.execute("SELECT %s::int + 1", [41]).fetchone() == (42,)
        assert server_row(conn) == (port_of(clusters, tenant), QR_USER)


def test_qr_options_tenant_still_works(qr, clusters):
    with qr.connect("tb", user=QR_USER, password=QR_PASSWORD) as conn:
        assert conn.execute("SHOW app.tenant_id").fetchone()[0] == "tb"
        assert server_row(conn) == (port_of(clusters, "tb"), QR_USER)


def test_qr_parameter_status_before_tenant(qr, clusters):
    with qconnect(qr) as conn:
        info = conn.info
        assert info.backend_pid != 0
        assert (info.parameter_status("server_version") or "").startswith("15")
        assert info.server_version // 10000 == 15
        assert info.parameter_status("client_encoding") == "UTF8"
        assert info.parameter_status("integer_datetimes") == "on"
        assert info.parameter_status("standard_conforming_strings") == "on"
        assert info.parameter_status("DateStyle") is not None
        assert info.parameter_status("TimeZone") is not None


# --- psql and JDBC ---------------------------------------------------------------------------

def psql(router, sqls, user=QR_USER, password=QR_PASSWORD, dbname="appdb"):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(router.port), PGUSER=user,
               PGPASSWORD=password, PGDATABASE=dbname, PGCONNECT_TIMEOUT="5")
    env.pop("PGOPTIONS", None)
    args = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    for s in sqls:
        args += ["-c", s]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=15 * SLOW,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("tenant", ["ta", "tb"])
def test_qr_psql_set_then_show_port(qr, clusters, tenant):
    r = psql(qr, [f"SET app.tenant_id='{tenant}'", "SHOW port", "SHOW app.tenant_id"])
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert lines[-2:] == [str(port_of(clusters, tenant)), tenant], r.stdout


def test_qr_psql_no_tenant_is_an_error_not_fatal(qr):
    r = psql(qr, ["SELECT 1"])
    assert r.returncode != 0
    assert "no tenant" in r.stderr, r.stderr
    assert "HINT" in r.stderr, r.stderr
    assert "FATAL" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def java_classes():
    d = harness.java_classes("QueryRouting", prefix="tr-java-qr-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(90)
def test_qr_jdbc_prepared_statement_and_set(qr, clusters, java_classes):
    url = f"jdbc:postgresql://127.0.0.1:{qr.port}/appdb?sslmode=disable"
    r = subprocess.run(["java", "-cp", f"{PGJDBC_JAR}:{java_classes}", "QueryRouting", url,
                        QR_USER, QR_PASSWORD, "ta", "tb"],
                       capture_output=True, text=True, timeout=60 * SLOW,
                       env=dict(os.environ, HOME=java_classes), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"JDBC failed: {r.stdout}\n{r.stderr}"
    out = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    for t in ("ta", "tb"):
        want = str(port_of(clusters, t))
        assert out.get(f"prepared.{t}.port") == want, r.stdout
        assert out.get(f"prepared.{t}.count") == str(COUNTS[t]), r.stdout
        assert out.get(f"prepared.{t}.port2") == want, r.stdout
        assert out.get(f"set.{t}.port") == want, r.stdout
        assert out.get(f"set.{t}.tenant") == t, r.stdout


# --- the router's own authentication ---------------------------------------------------------

def raw_login(router, user, password, dbname="appdb"):
    """SCRAM/md5 login through the raw client; returns the error fields or None on success."""
    with rawpg.RawConn(router.port, timeout=5 * SLOW) as c:
        try:
            rawpg.login_password(c, [("user", user), ("database", dbname)], password,
                                 timeout=5 * SLOW)
        except rawpg.LoginError as e:
            c.expect_closed(5 * SLOW)
            return e.fields
        return None


@pytest.mark.parametrize("user,password", [(QR_USER, "wrong"), ("nosuchuser", "whatever")])
def test_qr_scram_wrong_password_or_unknown_user(qr, user, password):
    with pytest.raises(psycopg.OperationalError) as ei:
        qconnect(qr, user=user, password=password)
    assert f'password authentication failed for user "{user}"' in str(ei.value)
    f = raw_login(qr, user, password)
    assert f is not None, "login succeeded"
    assert (f.get("S"), f.get("C")) == ("FATAL", "28P01"), f
    assert "password authentication failed" in f["M"], f
    assert raw_login(qr, QR_USER, QR_PASSWORD) is None  # the raw SCRAM client itself works


def test_qr_scram_md5_secret_cannot_answer_scram(qr):
    # md5user's auth_file secret is an md5 hash: a SCRAM exchange cannot succeed.
    f = raw_login(qr, "md5user", MD5_PASSWORD, dbname="postgres")
    assert f is not None and f.get("C") == "28P01", f


def test_qr_md5_auth_type(make_router, secrets, clusters):
    r = start_qr(make_router, secrets, auth={"auth_type": "md5"})
    with qconnect(r, user="md5user", password=MD5_PASSWORD, dbname="postgres") as conn:
        conn.execute("SET app.tenant_id = 'tb'")
        assert server_row(conn) == (port_of(clusters, "tb"), "md5user")  # md5 server login
    # plaintext secret: md5 towards the client, hba "password" towards the server
    with qconnect(r, user="pwuser", password=CLEARTEXT_PASSWORD, dbname="postgres") as conn:
        conn.execute("SET app.tenant_id = 'ta'")
        assert server_row(conn) == (port_of(clusters, "ta"), "pwuser")
    for user, pw in (("md5user", "wrong"), ("nosuchuser", "x")):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            qconnect(r, user=user, password=pw, dbname="postgres")
        with rawpg.RawConn(r.port, timeout=5 * SLOW) as c:
            c.send(rawpg.startup_packet([("user", user), ("database", "postgres")]))
            t, body = c.recv_msg()
            assert t == "R" and body[:4] == b"\0\0\0\x05", (t, body)
            c.send(rawpg.md5_password_message(user, pw, body[4:8]))
            t, body = c.recv_msg()
            assert t == "E", (t, body)
            f = rawpg.parse_fields(body)
            assert (f.get("S"), f.get("C")) == ("FATAL", "28P01"), f
            assert "password authentication failed" in f["M"], f
            c.expect_closed()


def test_qr_auth_query(make_router, clusters, secrets):
    r = make_router(overrides=qr_overrides(auth={
        "auth_file": None,
        "auth_query": "SELECT usename, passwd FROM pg_shadow WHERE usename = $1",
        "auth_cluster": "a"}))
    with qconnect(r) as conn:
        conn.execute("SET app.tenant_id = 'tb'")
        assert server_row(conn) == (port_of(clusters, "tb"), QR_USER)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        qconnect(r, password="wrong")
    f = raw_login(r, "nosuchuser", "x")
    assert f is not None and f.get("C") == "28P01", f


def test_qr_auth_query_that_fails_is_a_clear_error(make_router, clusters, secrets):
    r = make_router(overrides=qr_overrides(auth={
        "auth_file": None,
        "auth_query": "SELECT usename, no_such_column FROM pg_shadow WHERE usename = $1"}))
    f = raw_login(r, QR_USER, QR_PASSWORD)
    assert f is not None and f.get("C") == "08006", f
    assert "auth_query" in f["M"] and "no_such_column" in f["M"], f
    assert r.alive()


def test_qr_literal_and_bound_tenant_must_agree(qr, clusters):
    with qconnect(qr) as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SELECT count(*) FROM items WHERE tenant_id = 'ta' AND tenant_id = %s",
                         ["tb"])
        assert ei.value.sqlstate == "08004", ei.value
        assert "more than one tenant" in str(ei.value)
        # Agreeing places route as usual.
        conn.execute("SELECT count(*) FROM items WHERE tenant_id = 'ta' AND tenant_id = %s",
                     ["ta"])
        assert server_row(conn)[0] == port_of(clusters, "ta")


def test_qr_trust_auth_type(make_router, clusters, secrets):
    r = make_router(overrides=qr_overrides(
        auth={"auth_type": "trust", "auth_file": None, "server_passfile": "passfile"}),
        start=False)
    r.write_file("passfile", f"127.0.0.1:*:*:app:{APP_PASSWORD}\n")
    r.start()
    with rawpg.RawConn(r.port, timeout=5 * SLOW) as c:
        rawpg.login(c, [("user", "trustuser"), ("database", "appdb")], timeout=5 * SLOW)
        assert rawpg.simple_query(c, "SET app.tenant_id = 'tb'") == []
        assert rawpg.simple_query(c, "SELECT inet_server_port(), current_user") == [
            [str(port_of(clusters, "tb")), "trustuser"]]
    # no password from the client; the server login uses the passfile
    with qconnect(r, user="app", password=None) as conn:
        conn.execute("SET app.tenant_id = 'tb'")
        assert server_row(conn) == (port_of(clusters, "tb"), "app")


# --- before the tenant is known --------------------------------------------------------------

def test_qr_sets_before_tenant_are_replayed(qr, clusters):
    with qconnect(qr) as conn:
        assert conn.execute("SET statement_timeout = '1234ms'").statusmessage == "SET"
        assert conn.execute("SET application_name = 'qr-replay'").statusmessage == "SET"
        conn.execute("SET work_mem = '3MB'; SET lock_timeout = '2s'")  # one simple query
        assert conn.execute("RESET lock_timeout").statusmessage == "RESET"
        conn.execute("SET app.tenant_id = 'tb'")
        row = conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('application_name'),"
            " current_setting('work_mem'), current_setting('lock_timeout'), inet_server_port()"
        ).fetchone()
        assert row == ("1234ms", "qr-replay", "3MB", "0", port_of(clusters, "tb"))
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"


def test_qr_other_statement_before_tenant_is_08004_error(qr, clusters):
    with qconnect(qr) as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SELECT 1")
        e = ei.value
        assert e.sqlstate == "08004", (e.sqlstate, str(e))
        assert e.diag.severity == "ERROR", e.diag.severity
        assert "no tenant" in e.diag.message_primary, e.diag.message_primary
        assert e.diag.message_hint, "no HINT"
        assert not conn.closed
        # still usable; a second refusal is the same
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SHOW port")
        assert ei.value.sqlstate == "08004"
        conn.execute("SET app.tenant_id = 'ta'")
        assert server_row(conn) == (port_of(clusters, "ta"), QR_USER)


def test_qr_extended_statement_without_tenant_is_08004_error(qr, clusters):
    with qconnect(qr) as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SELECT %s::int", [1])
        assert ei.value.sqlstate == "08004", (ei.value.sqlstate, str(ei.value))
        assert "no tenant" in ei.value.diag.message_primary
        conn.execute("SET app.tenant_id = 'tb'")
        assert conn.execute("SELECT %s::int", [7]).fetchone() == (7,)
        assert server_row(conn) == (port_of(clusters, "tb"), QR_USER)


def test_qr_begin_before_tenant(qr, clusters):
    with qconnect(qr) as conn:
        assert conn.execute("BEGIN").statusmessage == "BEGIN"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute("SET app.tenant_id = 'ta'")
        conn.execute("CREATE TEMP TABLE qr_tx (x int)")
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == port_of(clusters, "ta")
        assert conn.execute("ROLLBACK").statusmessage == "ROLLBACK"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # the BEGIN was replayed on the server: the temp table went with the rollback
        assert conn.execute("SELECT to_regclass('pg_temp.qr_tx')").fetchone() == (None,)
    # a non-autocommit driver: psycopg sends BEGIN itself before the first statement
    with qconnect(qr, autocommit=False) as conn:
        conn.execute("SET app.tenant_id = 'tb'")
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == port_of(clusters, "tb")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.commit()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM items WHERE tenant_id = 'tb'").fetchone() == (
            COUNTS["tb"],)
        conn.commit()


# --- logging in to the server on the client's behalf -----------------------------------------

def test_qr_key_reuse_same_verifier_on_both_clusters(qr, clusters):
    for t in ("ta", "tb"):
        with qconnect(qr) as conn:
            conn.execute(f"SET app.tenant_id = '{t}'")
            assert server_row(conn) == (port_of(clusters, t), QR_USER)


def test_qr_key_reuse_for_app_on_its_verifier_cluster(qr, clusters):
    # auth_file holds app's verifier from cluster a: the client's keys work there
    with qconnect(qr, user="app", password=APP_PASSWORD) as conn:
        conn.execute("SET app.tenant_id = 'ta'")
        assert server_row(conn) == (port_of(clusters, "ta"), "app")


def test_qr_different_verifier_without_passfile_is_a_clear_error(qr, clusters):
    # psycopg 3.1 exposes no SQLSTATE for an error that ends the connection mid-query, so
    # the text is checked through psycopg and the SQLSTATE on the wire.
    with qconnect(qr, user="app", password=APP_PASSWORD) as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SET app.tenant_id = 'tb'")
        e = ei.value
        assert e.sqlstate in (None, "08006", "28P01"), (e.sqlstate, str(e))
        assert "app" in str(e) and clear_login_error(str(e)), str(e)
    with rawpg.RawConn(qr.port, timeout=5 * SLOW) as c:
        rawpg.login_password(c, [("user", "app"), ("database", "appdb")], APP_PASSWORD,
                             timeout=5 * SLOW)
        c.send(rawpg.query_message("SET app.tenant_id = 'tb'"))
        t, body = c.recv_msg()
        assert t == "E", (t, body[:200])
        f = rawpg.parse_fields(body)
        assert f.get("C") in ("08006", "28P01"), f
        assert clear_login_error(f.get("M", "")), f
        if f.get("S") == "FATAL":
            c.expect_closed(5 * SLOW)
        else:
            assert c.recv_msg()[0] == "Z"
    assert qr.alive()
    with qconnect(qr) as conn:  # others are unaffected
        conn.execute("SET app.tenant_id = 'tb'")
        assert server_row(conn) == (port_of(clusters, "tb"), QR_USER)


def clear_login_error(msg):
    msg = msg.lower()
    return any(w in msg for w in ("password", "authentication", "scram", "verifier", "passfile"))


def test_qr_different_verifier_with_server_passfile(qr_pass, clusters):
    for t in ("tb", "ta"):
        with qconnect(qr_pass, user="app", password=APP_PASSWORD) as conn:
            conn.execute(f"SET app.tenant_id = '{t}'")
            assert server_row(conn) == (port_of(clusters, t), "app")
    with qconnect(qr_pass) as conn:
        conn.execute("SET app.tenant_id = 'tb'")
        assert server_row(conn) == (port_of(clusters, "tb"), QR_USER)


def test_qr_plaintext_secret_and_trust_server(qr, clusters):
    # pwuser: plaintext in auth_file, hba "password" on the server
    with qconnect(qr, user="pwuser", password=CLEARTEXT_PASSWORD, dbname="postgres") as conn:
        conn.execute("SET app.tenant_id = 'tb'")
        assert server_row(conn) == (port_of(clusters, "tb"), "pwuser")
    # trustuser: the router checks its password, the server trusts it
    with qconnect(qr, user="trustuser", password=TRUST_SECRET) as conn:
        conn.execute("SET app.tenant_id = 'ta'")
        assert server_row(conn) == (port_of(clusters, "ta"), "trustuser")


# --- cancel ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tenant", ["ta", "tb"])
def test_qr_cancel_after_routing(qr, clusters, tenant):
    srv = clusters[PINS[tenant]]
    q = f"SELECT pg_sleep(10) AS qr_cancel_{tenant}"
    with qconnect(qr) as conn:
        conn.execute(f"SET app.tenant_id = '{tenant}'")
        result = {}

        def run():
            try:
                conn.execute(q)
                result["outcome"] = "completed"
            except Exception as e:  # asserted on below
                result["outcome"] = e

        th = threading.Thread(target=run, daemon=True)
        th.start()
        harness.wait_until(
            lambda: srv.sql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                            "AND query = %s", (q,))[0][0] == 1, 5 * SLOW, what="pg_sleep active")
        conn.cancel()
        th.join(5 * SLOW)
        assert not th.is_alive(), "query still running 5 s after the cancel"
        assert isinstance(result["outcome"], psycopg.errors.QueryCanceled), result
        assert result["outcome"].sqlstate == "57014"
        assert server_row(conn) == (srv.port, QR_USER)
