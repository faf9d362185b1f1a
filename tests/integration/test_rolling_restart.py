"""Rolling restart: a second router on the same port takes over, the first drains; nobody notices.

Router A serves a client loop that opens a new connection per transaction. Router B starts on
the same port with the same configuration ([router] peer_socket_dir: B takes A's listening
sockets), then A gets SIGTERM and drains. No connection and no query may fail. A cancel for a
session of the draining A that lands on B reaches A's server through the peer sockets.
"""

import os
import shutil
import signal
import tempfile
import threading
import time

import psycopg
import pytest

import harness

CLIENT_SECONDS = 20
CLIENT_MAX_CONNECTIONS = 20000
CLIENT_THREADS = 2


@pytest.fixture
def peer_dir():
    # Short: a socket path is at most 107 bytes.
    d = tempfile.mkdtemp(prefix="tr-peer-", dir="/tmp")
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def overrides(peer_dir, shutdown_timeout="10s"):
    return {"router": {"peer_socket_dir": peer_dir, "shutdown_timeout": shutdown_timeout,
                       "log_level": "debug"}}


def listening_sockets(port):
    """How many TCP sockets listen on 127.0.0.1:port (kernel sockets, not descriptors)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local == f"0100007F:{port:04X}":
                n += 1
    return n


def routed(router):
    return router.log_text().count(" routed host=")


class ClientLoop:
    """Threads that each connect, run one query, disconnect, over and over (bounded)."""

    def __init__(self, router, seconds=CLIENT_SECONDS, threads=CLIENT_THREADS):
        self.info = router.conninfo()
        self.deadline = time.monotonic() + seconds
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.count = 0
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def run(self, k):
        n = 0
        while time.monotonic() < self.deadline:
            with self.lock:
                if self.count >= CLIENT_MAX_CONNECTIONS:
                    return
                self.count += 1
            tenant = f"rr-{k}-{n % 40}"
            n += 1
            try:
                with psycopg.connect(**dict(self.info, options=f"-c app.tenant_id={tenant}"),
                                     autocommit=True) as c:
                    assert c.execute("SELECT 41 + 1").fetchone()[0] == 42
                with self.lock:
                    self.ok += 1
            except Exception as e:  # every failure is reported below
                with self.lock:
                    self.failures.append(f"{time.monotonic():.3f} {tenant}: {e!r}")

    def join(self, timeout):
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, end - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "client threads did not finish"


@pytest.mark.timeout(120)
def test_rolling_restart_loses_no_connection_and_no_query(make_router, peer_dir):
    a = make_router(overrides(peer_dir))
    loop = ClientLoop(a).start()
    time.sleep(5)
    served_by_a_before = routed(a)
    assert served_by_a_before > 0, "router A served nothing in 5 s"

    b = make_router(overrides(peer_dir), port=a.port)
    assert "sockets taken over from the process this one replaces" in b.log_text()
    assert "handed" in a.wait_log(r"peer: handed [1-9]\d* listening sockets").group(0)
    # One queue, held by both processes: A's close() at SIGTERM cannot reset what is queued.
    assert listening_sockets(a.port) == 1

    time.sleep(1)
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    code = a.proc.wait(15 * harness.SLOW)
    a.returncode = code
    took = time.monotonic() - t0
    assert code == 0, f"router A exited {code}"
    assert took < 10 + 2, f"router A took {took:.1f}s to drain (shutdown_timeout = 10s)"
    assert "shutdown timeout reached" not in a.log_text()

    loop.join(CLIENT_SECONDS + 10)
    assert loop.failures == [], (f"{len(loop.failures)} of {loop.count} connections failed; "
                                 f"first: {loop.failures[:5]}")
    assert loop.ok == loop.count
    served_b = routed(b)
    assert routed(a) > 0 and served_b > 0, f"A served {routed(a)}, B {served_b}"
    assert routed(a) + served_b >= loop.ok
    assert b.alive()
    # A removed its peer socket; B's is still there.
    socks = sorted(os.listdir(peer_dir))
    assert socks == [f"tenant-router-{b.proc.pid}.sock"], socks


@pytest.mark.timeout(60)
def test_second_router_listens_on_the_same_port_without_peer_dir(make_router):
    """SO_REUSEPORT is set with threads = 1 too: the second bind succeeds."""
    a = make_router({"router": {"threads": "1"}})
    b = make_router({"router": {"threads": "1"}}, port=a.port)
    assert "sockets taken over" not in b.log_text()
    assert listening_sockets(a.port) == 2
    for _ in range(20):
        with psycopg.connect(**a.conninfo("same-port"), autocommit=True) as c:
            assert c.execute("SELECT 1").fetchone()[0] == 1
    assert b.alive() and a.alive()


def tenant_and_server(router, clusters):
    t = "cancel-peer-1"
    cluster, _ = router.route([t])[t]
    return t, clusters[cluster]


@pytest.mark.timeout(90)
def test_cancel_for_the_draining_router_reaches_it_through_the_new_one(make_router, clusters,
                                                                      peer_dir):
    a = make_router(overrides(peer_dir, shutdown_timeout="30s"))
    t, srv = tenant_and_server(a, clusters)
    conn = psycopg.connect(**a.conninfo(t), autocommit=True)
    result = {}
    try:
        pid = conn.info.backend_pid

        def run():
            try:
                conn.execute("SELECT pg_sleep(30)")
                result["outcome"] = "completed"
            except Exception as e:  # asserted on below
                result["outcome"] = e
            result["t"] = time.monotonic()

        th = threading.Thread(target=run, daemon=True)
        th.start()
        harness.wait_until(
            lambda: (srv.sql("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
                     or [[None]])[0][0] == "active", 5, what="pg_sleep active on the server")

        b = make_router(overrides(peer_dir), port=a.port)
        off = a.log_size()
        a.proc.send_signal(signal.SIGTERM)
        a.wait_log(r"shutting down on", off)
        # A no longer listens: the cancel connection can only reach B.
        boff = b.log_size()
        t0 = time.monotonic()
        conn.cancel()
        th.join(5)
        assert not th.is_alive(), "query still running 5 s after the cancel"
        out = result["outcome"]
        assert isinstance(out, psycopg.errors.QueryCanceled), f"got {out!r}"
        assert result["t"] - t0 < 3.0, f"cancel took {result['t'] - t0:.2f}s"
        assert "cancel request for an unknown key" in b.log_since(boff)
        assert "forwarding a cancel request another process received" in a.log_since(off)
        # A still serves its draining session.
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == srv.port
    finally:
        conn.close()
    assert a.proc.wait(10 * harness.SLOW) == 0
    a.returncode = 0
