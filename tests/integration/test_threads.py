"""threads = N: several event loops, each with its own SO_REUSEPORT listener.

The kernel spreads connections over the loops, so each test makes enough
connections that both loops serve some, and asserts only on what clients see:
the right server, a cancel that lands on the other loop still reaching its
session, a reload reaching every loop, and a drain that waits for all of them.
"""

import signal
import socket
import threading
import time

import psycopg
import pytest

import harness

# Each test runs with pool_mode = none and again with pool_mode = session (conftest.py).
POOL_MODES = ("none", "session")

THREADS = {"router": {"threads": "2"}}


def test_threads_route_like_route_says(make_router, clusters):
    r = make_router(overrides=THREADS)
    tenants = [f"th{i}" for i in range(40)]
    want = r.route(tenants)
    assert {c for c, _ in want.values()} == {"a", "b"}
    for t in tenants:
        assert r.server_port(t) == clusters[want[t][0]].port, t
    assert "running 2 event-loop threads" in r.log_text()


def test_threads_cancel_reaches_session_on_any_loop(make_router):
    r = make_router(overrides=THREADS)
    # Several rounds: the session and its CancelRequest land on loops at random.
    for i in range(6):
        conn = r.connect(f"thc{i}")
        try:
            timer = threading.Timer(0.3, conn.cancel)
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(20)")
            assert time.monotonic() - t0 < 2.0
            timer.join()
        finally:
            conn.close()


def test_threads_reload_reaches_every_loop(make_router, clusters):
    r = make_router(overrides=THREADS)
    t = next(x for x in (f"thr{i}" for i in range(200)) if r.route([x])[x][0] == "a")
    for _ in range(8):
        assert r.server_port(t) == clusters["a"].port
    r.write_config({"pins": {t: "b"}})
    assert r.reload() == "ok", r.log_tail()
    # Every new session, whichever loop accepts it, must see the new pin.
    for _ in range(16):
        assert r.server_port(t) == clusters["b"].port


def test_threads_sigterm_waits_for_sessions_on_all_loops(make_router):
    r = make_router(overrides={"router": {"threads": "2", "shutdown_timeout": "3s"}})
    sessions = [r.connect(f"ths{i}") for i in range(8)]
    try:
        for s in sessions:
            assert s.execute("SELECT 1").fetchone()[0] == 1
        t0 = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Open sessions keep working while the router drains.
        for s in sessions:
            assert s.execute("SELECT 2").fetchone()[0] == 2
        for s in sessions:
            s.close()
        rc = r.proc.wait(3 + 3 * harness.SLOW)
        r.returncode = rc
        assert rc == 0
        assert time.monotonic() - t0 < 3, "the router should exit once the sessions end"
    finally:
        for s in sessions:
            s.close()


def test_threads_max_client_conn_counts_all_loops(make_router):
    r = make_router(overrides={"router": {"threads": "2", "max_client_conn": "4"}})
    held = [r.connect(f"thm{i}") for i in range(4)]
    try:
        with pytest.raises(psycopg.OperationalError) as e:
            r.connect("thm-extra").close()
        assert "max_client_conn" in str(e.value)
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    r.connect("thm-after").close()


def test_threads_reload_before_first_health_round(make_router, clusters):
    """A SIGHUP while the first health round still runs must reach every loop: the loops
    that start after it once routed with the configuration of the start."""
    # A host that takes the TCP connection and never answers holds the first round.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    try:
        t = "thpre"
        r = make_router(overrides={"router": {"threads": "2"},
                                   "health": {"timeout": f"{int(4 * harness.SLOW)}s"},
                                   "cluster.c": {"hosts": f"127.0.0.1:{hole.getsockname()[1]}"},
                                   "pins": {t: "a"}}, start=False)
        off = r.log_size()
        starter = threading.Thread(target=r.start)
        starter.start()
        harness.wait_until(lambda: "starting:" in r.log_since(off), 10 * harness.SLOW,
                           what="router start-up")
        r.write_config({"pins": {t: "b"}})
        assert r.reload() == "ok", r.log_tail()
        assert "listening on" not in r.log_since(off), "the first round ended too soon"
        starter.join(30 * harness.SLOW)
        assert "running 2 event-loop threads" in r.log_tail(200)
        # Whichever loop accepts it, every session routes by the reloaded pin.
        for _ in range(16):
            assert r.server_port(t) == clusters["b"].port
    finally:
        hole.close()
