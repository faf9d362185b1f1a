"""pool_mode = session: server connections outlive their clients, and each client still sees a
clean session of its own (its tenant, its startup settings, its application_name), as if it
had connected directly.

The session-mode runs of the routing, startup-parameter, COPY/cancel, guard and threads suites
come from their POOL_MODES (conftest.py); this file checks what only pooling has: reuse, the
reset, dirty disconnects, the wait line, cancels after logout, TLS on both legs, failover.
"""

import collections
import os
import re
import socket
import threading
import time

import psycopg
import pytest

import harness
from harness import SLOW

TENANT = "pool-tenant"


@pytest.fixture
def make_pooled(request, clusters):
    """make(**router_settings) -> a running pool_mode = session router (stopped and checked
    at the end, as make_router's)."""
    import conftest
    routers = []
    request.node._tr_routers = routers
    factory = conftest._router_factory(clusters, routers, pool_mode="session")

    def make(overrides=None, start=True, **router):
        ov = harness.merge({"router": dict(router)}, overrides or {})
        return factory(overrides=ov, start=start)

    yield make
    conftest._stop_and_check(routers, "router", " during the test")


def backend(conn):
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def kill_socket(conn):
    """The client vanishes without a Terminate (a crash, a dropped network)."""
    s = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        s.shutdown(socket.SHUT_RDWR)
    finally:
        s.close()


def cluster_of(r, clusters, tenant):
    return clusters[r.route([tenant])[tenant][0]]


@pytest.mark.timeout(180)
def test_pool_200_sessions_reuse_at_most_pool_size_backends_each_clean(make_pooled, clusters):
    r = make_pooled(pool_size="2")
    pids = collections.Counter()
    for i in range(200):
        with r.connect(TENANT) as conn:
            pid = backend(conn)
            pids[pid] += 1
            # What the previous client left is gone.
            tmp, prepared, timeout, locks, tenant = conn.execute(
                "SELECT to_regclass('pg_temp.leftover') IS NULL, "
                "(SELECT count(*) FROM pg_prepared_statements), "
                "current_setting('statement_timeout'), "
                "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                " AND pid = pg_backend_pid()), current_setting('app.tenant_id')").fetchone()
            assert (tmp, prepared, timeout, locks, tenant) == (True, 0, "0", 0, TENANT), i
            # And this one leaves as much behind.
            conn.execute("CREATE TEMP TABLE leftover (x int)")
            conn.execute("PREPARE leftover_stmt AS SELECT 1")
            conn.execute("SET statement_timeout = '7s'")
            conn.execute("SELECT pg_advisory_lock(4242)")
    assert len(pids) <= 2, pids
    assert sum(pids.values()) == 200
    # The server saw at most pool_size sessions of app for this tenant at any time.
    srv = cluster_of(r, clusters, TENANT)
    n = srv.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")[0][0]
    assert n <= 2, n


def test_pool_parameter_status_and_application_name_as_direct(make_pooled, clusters):
    # One connection: with more, a client that comes while the last one's connection is still
    # being reset gets another (as with PgBouncer).
    r = make_pooled(pool_size="1")
    srv = cluster_of(r, clusters, TENANT)
    names = ("server_version", "server_encoding", "client_encoding", "DateStyle",
             "IntervalStyle", "TimeZone", "integer_datetimes", "standard_conforming_strings",
             "is_superuser", "session_authorization")
    with psycopg.connect(host="127.0.0.1", port=srv.port, user="app",
                         password=harness.APP_PASSWORD, dbname="appdb",
                         options=f"-c app.tenant_id={TENANT}") as direct:
        want = {n: direct.info.parameter_status(n) for n in names}
    pids = set()
    for app in ("first", "second", "", "first"):
        kw = {"application_name": app} if app else {}
        with r.connect(TENANT, **kw) as conn:
            pids.add(backend(conn))
            got = {n: conn.info.parameter_status(n) for n in names}
            assert got == want
            assert conn.info.parameter_status("application_name") == app
            assert conn.execute("SHOW application_name").fetchone()[0] == app
            # The router's own BackendKeyData, not the server's.
            assert conn.info.backend_pid != backend(conn)
    assert len(pids) == 1, pids


def test_pool_startup_settings_and_tenant_are_part_of_the_key(make_pooled, clusters):
    r = make_pooled()
    # Two tenants of one cluster, with and without a startup setting, in turns.
    cands = [f"key-{i}" for i in range(40)]
    by = collections.defaultdict(list)
    for t, (c, _) in r.route(cands).items():
        by[c].append(t)
    t1, t2 = next(v for v in by.values() if len(v) >= 2)[:2]
    for _ in range(3):
        for t, opt in ((t1, ""), (t2, ""), (t1, " -c statement_timeout=3s"),
                       (t2, " -c DateStyle=SQL,DMY")):
            with r.connect(options=f"-c app.tenant_id={t}{opt}") as conn:
                tenant, timeout, style = conn.execute(
                    "SELECT current_setting('app.tenant_id'), "
                    "current_setting('statement_timeout'), current_setting('DateStyle')"
                ).fetchone()
                assert tenant == t
                assert timeout == ("3s" if "statement_timeout" in opt else "0")
                assert style == ("SQL, DMY" if "DateStyle" in opt else "ISO, MDY")
                assert conn.info.parameter_status("DateStyle") == style


@pytest.fixture
def dirty_table(clusters):
    for srv in clusters.values():
        srv.sql("DROP TABLE IF EXISTS pool_dirty", dbname="appdb")
        srv.sql("CREATE TABLE pool_dirty (x int)", dbname="appdb")
        srv.sql("GRANT SELECT, INSERT ON pool_dirty TO app", dbname="appdb")
    yield
    for srv in clusters.values():
        srv.sql("DROP TABLE IF EXISTS pool_dirty", dbname="appdb")


def rows(conn):
    return conn.execute("SELECT count(*) FROM pool_dirty").fetchone()[0]


@pytest.mark.timeout(120)
def test_pool_dirty_disconnects_never_return_a_dirty_connection(make_pooled, clusters,
                                                                 dirty_table):
    r = make_pooled(pool_size="1")
    srv = cluster_of(r, clusters, TENANT)

    # Inside a transaction, leaving with Terminate: rolled back, reset, reused.
    conn = r.connect(TENANT)
    pid = backend(conn)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO pool_dirty VALUES (1)")
    conn.execute("CREATE TEMP TABLE t_in_txn (x int)")
    conn.close()
    with r.connect(TENANT) as c2:
        assert backend(c2) == pid
        assert rows(c2) == 0
        assert c2.execute("SELECT to_regclass('pg_temp.t_in_txn')").fetchone()[0] is None
        assert c2.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    # Inside a transaction, vanishing without Terminate: the same.
    conn = r.connect(TENANT)
    pid = backend(conn)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO pool_dirty VALUES (2)")
    kill_socket(conn)
    conn.close()
    with r.connect(TENANT) as c2:
        assert rows(c2) == 0

    # Mid-query: the connection is closed, never handed out again.
    conn = r.connect(TENANT)
    pid = backend(conn)
    th = threading.Thread(target=lambda: _ignore(conn.execute, "SELECT pg_sleep(20)"),
                          daemon=True)
    th.start()
    harness.wait_until(lambda: srv.sql("SELECT state FROM pg_stat_activity WHERE pid = %s",
                                       (pid,)) == [("active",)], 10 * SLOW,
                       what="pg_sleep active")
    kill_socket(conn)
    th.join(10)
    conn.close()
    with r.connect(TENANT) as c2:
        assert backend(c2) != pid
    srv.sql("SELECT pg_terminate_backend(%s)", (pid,))

    # Mid-COPY: the same, and the rows sent never land.
    conn = r.connect(TENANT)
    pid = backend(conn)
    cur = conn.cursor()
    with pytest.raises(Exception):
        with cur.copy("COPY pool_dirty FROM STDIN") as cp:
            for i in range(1000):
                cp.write_row((i,))
            kill_socket(conn)
            for i in range(100000):
                cp.write_row((i,))
    conn.close()
    with r.connect(TENANT) as c2:
        assert backend(c2) != pid
        harness.wait_until(lambda: rows(c2) == 0, 5 * SLOW, what="no copied rows")
    assert srv.sql("SELECT count(*) FROM pool_dirty", dbname="appdb")[0][0] == 0


def _ignore(fn, *a):
    try:
        fn(*a)
    except Exception:
        pass


def test_pool_a_full_pool_makes_clients_wait_then_53300(make_pooled):
    # Below the client's connect_timeout (5 s), whatever SLOW is.
    r = make_pooled(pool_size="1", query_wait_timeout="2s")
    first = r.connect(TENANT)
    pid = backend(first)
    got = {}

    def second():
        try:
            with r.connect(TENANT) as c:
                got["pid"] = backend(c)
        except Exception as e:
            got["err"] = e

    th = threading.Thread(target=second, daemon=True)
    th.start()
    time.sleep(0.5 * SLOW)
    assert "pid" not in got and "err" not in got
    first.close()
    th.join(10 * SLOW)
    assert got.get("pid") == pid, got
    # Nobody gives the connection back in time: 53300 with a hint.
    held = r.connect(TENANT)
    try:
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as e:
            r.connect(TENANT)
        assert time.monotonic() - t0 >= 1.5
        assert "query_wait_timeout" in str(e.value), e.value
    finally:
        held.close()


def test_pool_cancel_of_a_client_gone_never_reaches_the_next_one(make_pooled):
    r = make_pooled(pool_size="1")
    a = r.connect(TENANT)
    pid = backend(a)
    old_cancel = a.pgconn.get_cancel()
    a.close()
    with r.connect(TENANT) as b:
        assert backend(b) == pid
        out = {}

        def run():
            try:
                b.execute("SELECT pg_sleep(1.5)")
                out["r"] = "completed"
            except Exception as e:
                out["r"] = e

        th = threading.Thread(target=run, daemon=True)
        th.start()
        time.sleep(0.3)
        old_cancel.cancel()
        th.join(10)
        assert out.get("r") == "completed", out
        # Its own cancel key works.
        th = threading.Thread(target=run, daemon=True)
        out.clear()
        th.start()
        time.sleep(0.3)
        b.cancel()
        th.join(10)
        assert isinstance(out.get("r"), psycopg.errors.QueryCanceled), out


def test_pool_config_is_validated(make_router):
    r = make_router(start=False, overrides={"router": {"pool_mode": "sessions"}})
    p = r.check()
    assert p.returncode == 1
    assert re.search(r"\[router\] pool_mode: \"sessions\" is not none or session", p.stderr)
    r = make_router(start=False, overrides={"cluster.b": {"pool_mode": "session"}})
    p = r.check()
    assert p.returncode == 1
    assert "[cluster.b] pool_mode = session needs [auth] auth_file or auth_query" in p.stderr
    r = make_router(start=False, overrides={
        "router": {"pool_size": "0", "server_idle_timeout": "soon", "max_server_conn": "x"}})
    p = r.check()
    assert p.returncode == 1
    for key in ("pool_size", "server_idle_timeout", "max_server_conn"):
        assert f"[router] {key}:" in p.stderr, p.stderr


@pytest.fixture
def servers():
    made = []

    def make(name):
        s = harness.PgServer(name)
        made.append(s)
        return s

    yield make
    for s in made:
        s.cleanup()


@pytest.mark.timeout(300)
def test_pool_failover_drill(servers, request):
    """Primary and streaming standby; the standby is promoted and the primary stopped while
    clients churn. After the health checker has seen the new writer, no client gets a read-only
    error (25006) or the old host: pooled connections to the old writer are never handed out."""
    import conftest
    old, new = servers("pool-old"), servers("pool-new")
    old.init()
    old.start()
    old.setup_roles()
    old.sql("CREATE TABLE writes (port int)", dbname="appdb")
    old.sql("GRANT SELECT, INSERT ON writes TO app", dbname="appdb")
    new.init_standby_of(old)
    new.start()
    routers = []
    request.node._tr_routers = routers
    r = harness.Router({}, overrides={"cluster.c": {
        "hosts": f"127.0.0.1:{old.port}, 127.0.0.1:{new.port}", "weight": "1"},
        "router": {"pool_size": "4"}}, pool_mode="session")
    routers.append(r)
    r.start()
    try:
        harness.wait_until(lambda: _write(r)[0] == "ok", 20 * SLOW, what="first write")
        stop = threading.Event()
        results = []  # (start time, outcome, port or sqlstate)
        lock = threading.Lock()

        def churn():
            while not stop.is_set():
                t0 = time.monotonic()
                res = _write(r)
                with lock:
                    results.append((t0,) + res)
                time.sleep(0.01)

        threads = [threading.Thread(target=churn, daemon=True) for _ in range(4)]
        for th in threads:
            th.start()
        time.sleep(1 * SLOW)
        off = r.log_size()
        old.stop()
        new.sql("SELECT pg_promote(true, 60)")
        r.wait_log(rf"health: writer cluster=c host=127\.0\.0\.1:{new.port}", off, 30)
        seen = time.monotonic()
        time.sleep(3 * SLOW)
        stop.set()
        for th in threads:
            th.join(20)
        after = [x for x in results if x[0] > seen]
        assert len(after) >= 10, results[-20:]
        bad = [x for x in after if x[1] != "ok" or x[2] != new.port]
        assert not bad, bad[:10]
        assert not [x for x in results if x[2] == "25006"], "a read-only error"
        # Writes before the failover went to the old primary, after it to the new one.
        assert {x[2] for x in results if x[1] == "ok"} <= {old.port, new.port}
    finally:
        conftest._stop_and_check(routers, "router", " during the test")


def _write(r):
    try:
        with r.connect(TENANT) as conn:
            port = conn.execute("INSERT INTO writes VALUES (inet_server_port()) "
                                "RETURNING port").fetchone()[0]
            return ("ok", port)
    except psycopg.Error as e:
        return ("error", e.sqlstate or str(e)[:80])


def test_pool_tenant_setting_is_reset_even_without_reset_query(make_pooled):
    """server_reset_query = "" keeps session state, but never the tenant: the setting goes back
    to the startup value, which is the next client's tenant."""
    r = make_pooled(pool_size="1", server_reset_query="")
    cands = [f"reset-{i}" for i in range(40)]
    by = collections.defaultdict(list)
    for t, (c, _) in r.route(cands).items():
        by[c].append(t)
    t1, t2 = next(v for v in by.values() if len(v) >= 2)[:2]
    with r.connect(t1) as conn:
        pid = backend(conn)
        # Another tenant of the same cluster: the guard allows it.
        conn.execute(f"SET app.tenant_id = '{t2}'")
        conn.execute("SET statement_timeout = '9s'")
    with r.connect(t1) as conn:
        assert backend(conn) == pid
        tenant, timeout = conn.execute("SELECT current_setting('app.tenant_id'), "
                                       "current_setting('statement_timeout')").fetchone()
    assert tenant == t1
    # Only the tenant: the rest stays, as documented.
    assert timeout == "9s"


def test_pool_failed_server_login_is_not_retried_within_server_login_retry(make_pooled):
    """The router accepts the client (auth_file says so) but the server refuses the router's
    login: the client gets the server's refusal, and the next one the same at once."""
    r = make_pooled(overrides={"auth": {"auth_file": "wrong_users.txt"}},
                    server_login_retry="30s", start=False)
    r.write_file("wrong_users.txt", harness.userlist_text({"app": "not-the-server-password"}))
    r.start()
    msgs = []
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError) as e:
            r.connect(TENANT, password="not-the-server-password")
        msgs.append(str(e.value))
    assert "refused the login" in msgs[0], msgs
    # The same refusal, with a hint that says why it came at once.
    assert msgs[1].splitlines()[0] == msgs[0].splitlines()[0], msgs
    assert "server_login_retry" in msgs[1], msgs


def test_pool_tenant_in_the_user_name(make_pooled, clusters):
    """tenant_sources = user: the router authenticates and pools the role without the suffix."""
    r = make_pooled(tenant_sources="options, parameter, user", pool_size="1")
    srv = cluster_of(r, clusters, "usr-7")
    pids = set()
    for _ in range(3):
        with r.connect(user="app+usr-7") as conn:
            who, tenant, port = conn.execute(
                "SELECT current_user, current_setting('app.tenant_id'), "
                "inet_server_port()").fetchone()
            assert (who, tenant, port) == ("app", "usr-7", srv.port)
            pids.add(backend(conn))
    assert len(pids) == 1, pids


def test_pool_a_dead_idle_connection_is_never_lent(make_pooled, clusters):
    """A pooled connection whose backend goes away while idle (terminated, or its server down)
    is closed at once: the next client gets a live one and sees no error."""
    r = make_pooled(pool_size="2")
    srv = cluster_of(r, clusters, TENANT)
    with r.connect(TENANT) as conn:
        pid = backend(conn)
    srv.sql("SELECT pg_terminate_backend(%s)", (pid,))
    harness.wait_until(lambda: not srv.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                           (pid,)), 10 * SLOW, what="backend gone")
    for _ in range(3):
        with r.connect(TENANT) as conn:
            assert backend(conn) != pid
            assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_pool_metrics(make_pooled):
    import urllib.request
    port = harness.free_port()
    r = make_pooled(pool_size="1", metrics_listen=f"127.0.0.1:{port}")

    def metric(name):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert m, f"{name} not in /metrics"
        return float(m.group(1))

    for _ in range(5):
        with r.connect(TENANT) as conn:
            conn.execute("SELECT 1")
            assert metric('tenant_router_pool_server_connections{state="busy"}') == 1
    harness.wait_until(
        lambda: metric('tenant_router_pool_server_connections{state="idle"}') == 1, 5 * SLOW,
        what="one idle pooled connection")
    assert metric('tenant_router_pool_server_connections{state="busy"}') == 0
    assert metric("tenant_router_pool_server_logins_total") == 1
    assert metric("tenant_router_pool_reused_total") == 4
