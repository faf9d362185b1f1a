"""Session life cycle: timeouts, disconnects, concurrency, signals, secrets in logs."""

import signal
import socket
import struct
import threading
import time

import psycopg
import pytest

import harness
import rawpg


def port_of(router, clusters, tenant):
    return clusters[router.route([tenant])[tenant][0]].port


def test_login_timeout_does_not_end_a_logged_in_session(make_router, clusters):
    r = make_router(overrides={"router": {"client_login_timeout": "1s"}})
    with r.connect("t1") as conn:
        time.sleep(1.6)
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == \
            port_of(r, clusters, "t1")


def test_login_timeout_while_client_stalls_in_auth(make_router):
    """The client gets the SASL challenge and never answers: closed after the login timeout."""
    r = make_router(overrides={"router": {"client_login_timeout": "1s"}})
    with rawpg.RawConn(r.port, timeout=5) as c:
        c.send(rawpg.startup_packet([("user", "app"), ("database", "appdb"),
                                     ("app.tenant_id", "t1")]))
        t, body = c.recv_msg()
        assert t == "R" and struct.unpack("!I", body[:4])[0] == 10, (t, body)
        t0 = time.monotonic()
        try:
            t, body = c.recv_msg(timeout=5)
            assert t == "E", (t, body)
            f = rawpg.parse_fields(body)
            assert f.get("S") == "FATAL", f
            c.expect_closed()
        except (rawpg.Closed, ConnectionResetError):
            pass
        elapsed = time.monotonic() - t0
    assert elapsed <= 1.0 + 1.0 * harness.SLOW, f"closed {elapsed:.2f}s into auth"


def test_listen_on_two_addresses(make_router, clusters):
    p2 = harness.free_port()
    r = make_router(overrides={"router": {"listen": None}}, start=False)
    r.write_config({"router": {"listen": f"127.0.0.1:{r.port}, 127.0.0.1:{p2}"}})
    r.start()
    want = port_of(r, clusters, "t4")
    assert r.server_port("t4") == want
    with psycopg.connect(host="127.0.0.1", port=p2, user="app", password="app", dbname="appdb",
                         options="-c app.tenant_id=t4", connect_timeout=5) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == want


def test_database_suffix_source(make_router, clusters):
    r = make_router(overrides={"router": {"tenant_sources": "options, database",
                                          "tenant_separator": "+"}})
    with r.connect(None, dbname="appdb+t5") as conn:
        db, tid, port = conn.execute(
            "SELECT current_database(), current_setting('app.tenant_id'), inet_server_port()"
        ).fetchone()
    assert (db, tid, port) == ("appdb", "t5", port_of(r, clusters, "t5"))


def test_user_suffix_ignored_unless_configured(router):
    # Default sources are options and parameter: "app+t7" is just a user name, so no tenant.
    with rawpg.RawConn(router.port) as c:
        c.send(rawpg.startup_packet([("user", "app+t7"), ("database", "appdb")]))
        rawpg.assert_refusal(c, "08004")


@pytest.mark.timeout(90)
def test_concurrent_clients(router, clusters):
    tenants = [f"cc{i}" for i in range(40)]
    want = {t: clusters[c].port for t, (c, _) in router.route(tenants).items()}
    errors = []

    def worker(k):
        for j in range(6):
            t = tenants[(k * 7 + j) % len(tenants)]
            try:
                with router.connect(t) as conn:
                    got = conn.execute("SELECT inet_server_port(), "
                                       "current_setting('app.tenant_id')").fetchone()
                    if got != (want[t], t):
                        errors.append((t, got))
            except Exception as e:
                errors.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads), "clients hung"
    assert not errors, errors[:5]


def test_server_side_termination_frees_the_slot(make_router, clusters):
    r = make_router(overrides={"router": {"max_client_conn": "2"}})
    sessions = [r.connect("t1", application_name="tr-kill-me") for _ in range(2)]
    try:
        srv = clusters[r.route(["t1"])["t1"][0]]
        n = srv.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'tr-kill-me'")[0][0]
        assert n == 2
        for s in sessions:
            with pytest.raises(psycopg.OperationalError):
                s.execute("SELECT 1")
    finally:
        for s in sessions:
            s.close()

    def two_fit():
        try:
            a = r.connect("t2")
            b = r.connect("t3")
            a.close()
            b.close()
            return True
        except psycopg.OperationalError:
            return False
    harness.wait_until(two_fit, 3 * harness.SLOW, interval=0.1,
                       what="slots freed after the server ended both sessions")


@pytest.mark.parametrize("busy", [False, True])
def test_client_disconnect_ends_the_server_session(router, clusters, busy):
    t = "t6"
    srv = clusters[router.route([t])[t][0]]
    app = f"tr-abandon-{int(busy)}"
    c = rawpg.RawConn(router.port)
    # client_connection_check_interval lets a busy backend notice its closed socket.
    rawpg.login(c, [("user", "trustuser"), ("database", "postgres"), ("app.tenant_id", t),
                    ("application_name", app),
                    ("options", "-c client_connection_check_interval=100ms")])
    count = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s")
    assert srv.sql(count, (app,))[0][0] == 1
    if busy:
        c.send(rawpg.query_message("SELECT pg_sleep(30)"))
        harness.wait_until(lambda: srv.sql(count + " AND state = 'active'", (app,))[0][0] == 1,
                           5, what="query running")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    harness.wait_until(lambda: srv.sql(count, (app,))[0][0] == 0, 5 * harness.SLOW,
                       what="server backend gone after the client vanished")


def test_cleartext_password_never_logged(make_router):
    r = make_router(overrides={"router": {"log_level": "trace"}})
    with r.connect("t1", user="pwuser", password=harness.CLEARTEXT_PASSWORD,
                   dbname="postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "pwuser"
    with r.connect("t1", user="md5user", password=harness.MD5_PASSWORD,
                   dbname="postgres") as conn:
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        r.connect("t1", user="pwuser", password="Wrong-Cleartext-777", dbname="postgres")
    time.sleep(0.2)
    text = r.log_text()
    for secret in (harness.CLEARTEXT_PASSWORD, "Wrong-Cleartext-777", harness.MD5_PASSWORD):
        assert secret not in text, f"router log contains the password {secret!r}"


def test_sigint_drains_like_sigterm(make_router):
    r = make_router()
    assert r.server_port("t1") > 0
    t0 = time.monotonic()
    r.proc.send_signal(signal.SIGINT)
    rc = r.proc.wait(5 * harness.SLOW)
    r.returncode = rc
    assert rc == 0
    assert time.monotonic() - t0 < 1.5 * harness.SLOW


def test_second_sigterm_exits_at_once(make_router):
    r = make_router(overrides={"router": {"shutdown_timeout": "20s"}})
    sess = r.connect("t1")
    try:
        r.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert r.alive(), "exited although a session was still open"
        t0 = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        rc = r.proc.wait(5)
        r.returncode = rc
        assert time.monotonic() - t0 < 1.0 * harness.SLOW
    finally:
        sess.close()
