"""The splice applies back-pressure: a slow reader on either side makes the router stop
reading from the other side instead of buffering without bound."""

import socket
import struct
import time

import pytest

import harness
import rawpg


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def backend_state(srv, app):
    rows = srv.sql("SELECT state, wait_event FROM pg_stat_activity WHERE application_name = %s",
                   (app,))
    return rows[0] if rows else None


@pytest.mark.timeout(90)
def test_backpressure_slow_client_blocks_server(router, clusters):
    t = "bp-out"
    srv = clusters[router.route([t])[t][0]]
    app = "tr-bp-out"
    c = rawpg.RawConn(router.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    rawpg.login(c, [("user", "trustuser"), ("database", "postgres"), ("app.tenant_id", t),
                    ("application_name", app)])
    before = rss_kb(router.proc.pid)
    # ~2 GB of result; we read none of it for a while.
    c.send(rawpg.query_message("SELECT repeat('x', 2000) FROM generate_series(1, 1000000)"))
    time.sleep(2.0)
    samples = [backend_state(srv, app) for _ in range(3) if time.sleep(0.1) is None]
    grown = (rss_kb(router.proc.pid) - before) // 1024
    print(f"server states {samples}, router RSS +{grown} MB")
    assert all(s is not None and s[0] == "active" for s in samples), samples
    assert any(s[1] == "ClientWrite" for s in samples), \
        f"server not blocked writing to the router: {samples}"
    if not harness.SAN:  # ASan's quarantine makes RSS meaningless
        assert grown < 64, f"router RSS grew by {grown} MB while the client did not read"
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    harness.wait_until(lambda: backend_state(srv, app) is None, 5 * harness.SLOW,
                       what="server backend gone after the client left")
    assert router.alive()
    assert router.server_port("t1") > 0


@pytest.mark.timeout(90)
def test_backpressure_blocked_server_stops_client(router, clusters):
    t = "bp-in"
    srv = clusters[router.route([t])[t][0]]
    app = "tr-bp-in"
    srv.sql("CREATE TABLE IF NOT EXISTS bp_in (x int)")
    srv.sql("GRANT ALL ON bp_in TO trustuser")
    locker = srv.connect()
    locker.autocommit = False
    locker.execute("LOCK TABLE bp_in IN ACCESS EXCLUSIVE MODE")
    c = rawpg.RawConn(router.port)
    try:
        rawpg.login(c, [("user", "trustuser"), ("database", "postgres"), ("app.tenant_id", t),
                        ("application_name", app)])
        before = rss_kb(router.proc.pid)
        c.send(rawpg.query_message("COPY bp_in FROM STDIN"))
        harness.wait_until(lambda: (backend_state(srv, app) or (None, None))[1] == "relation",
                           5, what="COPY waiting for the lock")
        payload = b"1\n" * (512 * 1024)
        msg = b"d" + struct.pack("!I", len(payload) + 4) + payload
        c.sock.setblocking(False)
        pushed = 0
        stalled_since = None
        deadline = time.monotonic() + 6
        while pushed < 400 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                n = c.sock.send(msg)
                pushed += n
                stalled_since = None
            except BlockingIOError:
                if stalled_since is None:
                    stalled_since = time.monotonic()
                elif time.monotonic() - stalled_since > 1.0:
                    break
                time.sleep(0.01)
        grown = (rss_kb(router.proc.pid) - before) // 1024
        mb = pushed // (1024 * 1024)
        print(f"pushed {mb} MB, router RSS +{grown} MB")
        assert mb < 64, f"router accepted {mb} MB from a client whose server is blocked"
        if not harness.SAN:
            assert grown < 64, f"router RSS grew by {grown} MB"
    finally:
        c.sock.setblocking(True)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        locker.rollback()
        locker.close()
    harness.wait_until(lambda: backend_state(srv, app) is None, 5 * harness.SLOW,
                       what="server backend gone after the client left")
    assert router.alive()
