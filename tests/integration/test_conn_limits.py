"""max_client_conn and the open file limit: every accepted connection counts, and a connection
over a limit gets 53300 (an ErrorResponse, never a bare close) at once or after its startup packet,
without holding a slot for the login timeout.

Everything is on 127.0.0.1 and every loop is bounded.
"""

import re
import socket
import time

import psycopg
import pytest

import harness
import rawpg
from harness import SLOW

pytestmark = pytest.mark.timeout(90)


def silent_sockets(port, n):
    """n connections that never send a byte."""
    out = []
    try:
        for _ in range(n):
            out.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except BaseException:
        close_all(out)
        raise
    return out


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
    socks.clear()


def startup(tenant="t1"):
    return rawpg.startup_packet([("user", "app"), ("database", "appdb"),
                                 ("app.tenant_id", tenant)])


def read_refusal(sock, timeout):
    """The next message on a raw socket: a full FATAL 53300 ErrorResponse, then the close.
    Returns its fields; fails on a bare close."""
    c = rawpg.RawConn.__new__(rawpg.RawConn)
    c.sock, c.timeout = sock, timeout
    try:
        return rawpg.assert_refusal(c, "53300", timeout=timeout)
    except (rawpg.Closed, ConnectionResetError) as e:
        raise AssertionError(f"a bare close instead of 53300: {e!r}")


def refused_on_the_wire(port, timeout=5.0):
    """A client that sends its startup packet: 53300 back, whether the router answered at accept
    or after the packet."""
    with rawpg.RawConn(port, timeout=timeout) as c:
        try:
            c.send(startup())
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at accept already; the error is waiting for us
        return read_refusal(c.sock, timeout)


def wait_serving(r, tenant="t1"):
    def ok():
        try:
            with r.connect(tenant) as conn:
                return conn.execute("SELECT 1").fetchone()[0] == 1
        except psycopg.OperationalError:
            return False
    harness.wait_until(ok, 5 * SLOW, interval=0.1, what="a login once slots are free")


def test_silent_sockets_hold_slots_and_the_next_client_hears_53300_at_once(make_router):
    r = make_router(overrides={"router": {"max_client_conn": "20",
                                          "client_login_timeout": "10s"}})
    silent = silent_sockets(r.port, 20)
    try:
        # The 21st, silent too: told after a short grace, not at the login timeout.
        (extra,) = silent_sockets(r.port, 1)
        t0 = time.monotonic()
        try:
            f = read_refusal(extra, 5 * SLOW)
        finally:
            extra.close()
        assert time.monotonic() - t0 < 3 * SLOW, "an over-limit silent socket was kept"
        assert "max_client_conn = 20" in f["M"], f
        # A real client: 53300 right away, with our message (libpq shows it).
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError,
                           match=r"too many client connections \(max_client_conn = 20\)"):
            r.connect("t1").close()
        assert time.monotonic() - t0 < 2 * SLOW, "the client waited for the login timeout"
        f = refused_on_the_wire(r.port)
        assert f["M"].startswith("tenant-router: ") and "max_client_conn" in f["H"], f
    finally:
        close_all(silent)
    wait_serving(r)
    assert r.alive()


def test_a_flood_over_the_limit_is_refused_without_holding_slots(make_router):
    """More over-limit connections than may wait: the rest are refused at accept, each with an
    ErrorResponse, and none stays open."""
    r = make_router(overrides={"router": {"max_client_conn": "5",
                                          "client_login_timeout": "10s"}})
    held = silent_sockets(r.port, 5)
    flood = []
    try:
        flood = silent_sockets(r.port, 80)
        t0 = time.monotonic()
        for s in flood:
            read_refusal(s, 5 * SLOW)
        assert time.monotonic() - t0 < 4 * SLOW
        r.wait_log(r"max_client_conn = 5 reached: refused \d+ connections at once")
    finally:
        close_all(flood)
        close_all(held)
    wait_serving(r)
    assert r.alive()


def test_silent_sockets_within_the_limit_end_at_the_login_timeout(make_router):
    r = make_router(overrides={"router": {"max_client_conn": "20",
                                          "client_login_timeout": "1s"}})
    silent = silent_sockets(r.port, 5)
    try:
        t0 = time.monotonic()
        for s in silent:
            c = rawpg.RawConn.__new__(rawpg.RawConn)
            c.sock, c.timeout = s, 5 * SLOW
            f = rawpg.assert_refusal(c, "08006", timeout=5 * SLOW)
            assert "login timeout" in f["M"], f
        assert time.monotonic() - t0 < 3 * SLOW
    finally:
        close_all(silent)


NOFILE = 100


def test_open_file_limit_refuses_with_53300_never_a_bare_close(make_router):
    r = make_router(overrides={"router": {"max_client_conn": "200",
                                          "client_login_timeout": "10s"}},
                    nofile=NOFILE)
    m = re.search(rf"open file limit {NOFILE} fits (\d+) sessions .*fewer than "
                  r"max_client_conn = 200.*raise LimitNOFILE", r.log_text())
    assert m, f"no start-up warning about the open file limit:\n{r.log_tail()}"
    fit = int(m.group(1))
    assert 0 < fit < NOFILE // 2, fit
    # Fill the budget: half real sessions (two descriptors each), half silent sockets.
    real = [r.connect(f"fd{i}") for i in range(fit // 2)]
    silent = []
    burst = []
    try:
        silent = silent_sockets(r.port, fit - len(real))
        time.sleep(0.3)
        # libpq hears why.
        with pytest.raises(psycopg.OperationalError,
                           match=rf"the open file limit \({NOFILE}\) fits {fit} sessions"):
            r.connect("fd-over").close()
        for _ in range(3):
            f = refused_on_the_wire(r.port)
            assert "LimitNOFILE" in f["H"] and "ulimit -n" in f["H"], f
        # A burst of silent sockets: a few wait, the rest are refused at accept; all get 53300.
        burst = silent_sockets(r.port, 40)
        for s in burst:
            read_refusal(s, 5 * SLOW)
        close_all(burst)
        r.wait_log(r"open file limit reached: refused \d+ connections since the last line; "
                   rf"the limit \({NOFILE}\) fits {fit} sessions")
        assert "accept failed" not in r.log_text(), "the router ran out of descriptors"
        # Those it has are served all along.
        for conn in real:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        close_all(burst)
        close_all(silent)
        for conn in real:
            conn.close()
    wait_serving(r)
    # All slots free again: the whole budget of real sessions fits.
    more = []
    try:
        for i in range(fit):
            more.append(r.connect(f"fd-again{i}"))
    finally:
        for conn in more:
            conn.close()
    assert r.alive()
