"""A server that fails during login: the client hears why, as a FATAL ErrorResponse naming the
cluster and the coordinator, never a bare close.

A broken protocol (garbage, a length of 2^31-1 or of 3, a 1 GB ErrorResponse, an unknown
message type) is 08P01; a connection lost (closed after the startup packet, mid-message, after a
relayed message, a real PostgreSQL stopped mid-login) is 08006; the server's own ErrorResponse
reaches the client as it is, alone.

The misbehaving coordinator is FakeCoordinator: a loopback socket that passes the health
checker's logins (user postgres) through to a real PostgreSQL, so the router thinks the host is
up, and answers every other login as its current mode says.
"""

import socket
import struct
import threading
import time

import psycopg
import pytest

import harness
import rawpg

pytestmark = pytest.mark.timeout(60)

CLUSTER = "lf"

# mode -> (bytes the fake sends after the startup packet, close at once?, SQLSTATE, words)
MODES = {
    "garbage": (b"this is not PostgreSQL\r\n", False, "08P01", "broke the protocol"),
    "unknown_type": (b"\x01" + struct.pack("!I", 8) + b"abcd", False, "08P01", "unknown type"),
    "length_max": (b"R" + struct.pack("!I", 0x7FFFFFFF), False, "08P01", "2147483647"),
    "length_3": (b"R" + struct.pack("!I", 3), False, "08P01", "invalid length 3"),
    "huge_error": (b"E" + struct.pack("!I", 1 << 30) + b"SFATAL\0C08006\0M" + b"x" * 2000,
                   False, "08P01", "limit"),
    "close": (b"", True, "08006", "closed the connection"),
    "partial_then_close": (b"R" + struct.pack("!I", 12) + b"\0\0", True, "08006",
                           "closed the connection"),
}


def _recv_exact(c, n):
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _read_packet(c):
    (n,) = struct.unpack("!I", _recv_exact(c, 4))
    return struct.pack("!I", n) + _recv_exact(c, n - 4)


def _params(pkt):
    parts = pkt[8:].split(b"\0")
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2)
            if parts[i]}


def _error_body(sqlstate, message):
    return (b"SFATAL\0VFATAL\0C" + sqlstate.encode() + b"\0M" + message.encode() + b"\0\0")


class FakeCoordinator:
    """127.0.0.1:port; logins of user postgres (the health checker) and, in mode "pass", every
    login go through to backend_port; other logins meet self.mode."""

    def __init__(self, backend_port):
        self.backend_port = backend_port
        self.mode = "pass"
        self.misbehaved = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.name = "fake"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def close(self):
        self.done.set()
        self.thread.join(5)
        self.sock.close()

    def _accept_loop(self):
        while not self.done.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(15)
        try:
            pkt = _read_packet(c)
            if struct.unpack("!I", pkt[4:8])[0] == rawpg.SSL_REQUEST:
                c.sendall(b"N")
                pkt = _read_packet(c)
            mode = self.mode
            if _params(pkt).get("user") == "postgres" or mode == "pass":
                self._pipe(c, pkt)
                return
            self.misbehaved += 1
            if mode == "auth_then_close":
                # A whole AuthenticationMD5Password, relayed to the client, then nothing.
                c.sendall(b"R" + struct.pack("!II", 12, 5) + b"salt")
                return
            if mode == "own_error":
                body = _error_body("28000", "fake coordinator says no")
                c.sendall(b"E" + struct.pack("!I", len(body) + 4) + body)
                return
            data, close_now, _, _ = MODES[mode]
            if data:
                c.sendall(data)
            if close_now:
                return
            # Stay until the router gives up on us: its refusal must come from the bytes.
            while c.recv(65536):
                pass
        except (OSError, EOFError):
            pass
        finally:
            c.close()

    def _pipe(self, c, pkt):
        b = socket.create_connection(("127.0.0.1", self.backend_port), timeout=5)
        b.settimeout(None)
        c.settimeout(None)
        b.sendall(pkt)

        def pump(src, dst):
            try:
                while True:
                    d = src.recv(65536)
                    if not d:
                        break
                    dst.sendall(d)
            except OSError:
                pass
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=pump, args=(b, c), daemon=True)
        t.start()
        pump(c, b)
        t.join(60)
        b.close()


@pytest.fixture(scope="module")
def pg():
    servers = harness.start_clusters((CLUSTER,))
    try:
        yield servers[CLUSTER]
    finally:
        servers[CLUSTER].cleanup()


@pytest.fixture(scope="module")
def fake(pg):
    f = FakeCoordinator(pg.port)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="module")
def relay(make_module_router, fake):
    """Tenant in the startup packet: the router relays the server's login to the client."""
    return make_module_router(cluster_set={CLUSTER: fake})


@pytest.fixture(scope="module")
def local(make_module_router, fake):
    """Tenant source query: the router logs the client in itself, then logs in to the server."""
    return make_module_router(cluster_set={CLUSTER: fake}, overrides={
        "router": {"tenant_sources": "options, parameter, query"},
        "auth": {"auth_type": "trust"},
    })


@pytest.fixture
def mode(fake):
    def set_mode(m):
        fake.mode = m
    yield set_mode
    fake.mode = "pass"


def startup(tenant="t1", user="app"):
    return rawpg.startup_packet([("user", user), ("database", "appdb"),
                                 ("app.tenant_id", tenant)])


def names_coordinator(text, port):
    return f'cluster "{CLUSTER}" coordinator 127.0.0.1:{port}' in text


def check_still_serving(r, fake):
    """The router is up and a good login through the same coordinator works."""
    assert r.alive(), "router died"
    fake.mode = "pass"
    with r.connect("t1") as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.parametrize("m", sorted(MODES))
def test_relay_refuses_with_the_reason(relay, fake, mode, m):
    _, _, sqlstate, words = MODES[m]
    mode(m)
    before = fake.misbehaved
    t0 = time.monotonic()
    with rawpg.RawConn(relay.port, timeout=5 * harness.SLOW) as c:
        c.send(startup())
        f = rawpg.assert_refusal(c, sqlstate, timeout=5 * harness.SLOW)
    assert time.monotonic() - t0 < 3 * harness.SLOW, "refused only at the login timeout"
    assert fake.misbehaved == before + 1, "the fake did not see the login"
    assert f["M"].startswith("tenant-router: "), f
    assert names_coordinator(f["M"], fake.port), f
    assert words in f["M"], f
    # libpq says the same.
    with pytest.raises(psycopg.OperationalError) as e:
        relay.connect("t1").close()
    assert "FATAL" in str(e.value) and names_coordinator(str(e.value), fake.port), str(e.value)
    check_still_serving(relay, fake)


def test_relay_error_after_a_relayed_message(relay, fake, mode):
    """The server sent a whole message, then closed: the client has that message, then ours."""
    mode("auth_then_close")
    with rawpg.RawConn(relay.port, timeout=5 * harness.SLOW) as c:
        c.send(startup())
        t, body = c.recv_msg()
        assert t == "R" and struct.unpack("!I", body[:4])[0] == 5, (t, body)
        f = rawpg.assert_refusal(c, "08006", timeout=5 * harness.SLOW)
    assert names_coordinator(f["M"], fake.port) and "closed the connection" in f["M"], f
    check_still_serving(relay, fake)


def test_relay_passes_the_servers_own_error_alone(relay, fake, mode):
    mode("own_error")
    with rawpg.RawConn(relay.port, timeout=5 * harness.SLOW) as c:
        c.send(startup())
        t, body = c.recv_msg()
        assert t == "E", (t, body)
        f = rawpg.parse_fields(body)
        assert f["C"] == "28000" and f["M"] == "fake coordinator says no", f
        # Nothing of ours after it: the server's error is the reason.
        c.expect_closed(5 * harness.SLOW)
    with pytest.raises(psycopg.OperationalError, match="fake coordinator says no"):
        relay.connect("t1").close()
    check_still_serving(relay, fake)


def local_login(r):
    c = rawpg.RawConn(r.port, timeout=5 * harness.SLOW)
    rawpg.login(c, [("user", "trustuser"), ("database", "appdb")], timeout=5 * harness.SLOW)
    return c


def expect_local_refusal(c, sqlstate):
    """After the statement that names the tenant: a FATAL ErrorResponse, then the close."""
    c.send(rawpg.query_message("SET app.tenant_id = 't1'"))
    return rawpg.assert_refusal(c, sqlstate, timeout=5 * harness.SLOW)


@pytest.mark.parametrize("m", ["garbage", "length_max", "huge_error", "close",
                               "partial_then_close"])
def test_local_refuses_with_the_reason(local, fake, mode, m):
    _, _, sqlstate, words = MODES[m]
    mode(m)
    with local_login(local) as c:
        f = expect_local_refusal(c, sqlstate)
    assert names_coordinator(f["M"], fake.port) and words in f["M"], f
    assert local.alive()
    fake.mode = "pass"
    with local_login(local) as c:
        assert rawpg.simple_query(c, "SET app.tenant_id = 't1'") == []
        assert rawpg.simple_query(c, "SELECT 1") == [["1"]]


def test_local_passes_the_servers_error(local, fake, mode):
    mode("own_error")
    with local_login(local) as c:
        f = expect_local_refusal(c, "28000")
    assert "fake coordinator says no" in f["M"] and f'"{CLUSTER}"' in f["M"], f
    assert local.alive()


def test_real_server_stopped_mid_login(make_router, pg):
    """PostgreSQL sent its SASL challenge and is stopped (immediate) before the client answers:
    a backend in authentication exits without a word, and the client hears 08006 from us."""
    r = make_router(cluster_set={CLUSTER: pg})
    try:
        with rawpg.RawConn(r.port, timeout=10 * harness.SLOW) as c:
            c.send(startup())
            t, body = c.recv_msg()
            assert t == "R" and struct.unpack("!I", body[:4])[0] == 10, (t, body)
            pg.stop(mode="immediate")
            # Notices may come first; then our error.
            while True:
                t, body = c.recv_msg(timeout=10 * harness.SLOW)
                if t != "N":
                    break
            assert t == "E", (t, body)
            f = rawpg.parse_fields(body)
            assert f.get("S") == "FATAL" and f.get("C") == "08006" and f.get("H"), f
            assert f'cluster "{CLUSTER}" coordinator 127.0.0.1:{pg.port}' in f["M"], f
            c.expect_closed(5 * harness.SLOW)
        assert r.alive()
    finally:
        if not pg.running:
            pg.start()
    # Serving again once the server is back (the health checker notices it).
    def works():
        try:
            with r.connect("t1") as conn:
                return conn.execute("SELECT 1").fetchone()[0] == 1
        except psycopg.OperationalError:
            return False
    harness.wait_until(works, 15 * harness.SLOW, interval=0.2, what="a login after the restart")
