"""The guard and long or pipelined statements: what spans reads must reach the server exactly
as sent, a tenant switch inside it must still be refused, and the guard's memory stays bounded.

guard = on (the default), strict and off are compared with a direct connection; a switch in a
statement longer than guard_max_statement gets ERROR 54000 and the session stays usable.
"""

import hashlib
import re
import socket
import struct
import threading
import time

import pytest

import harness
import rawpg
from harness import SAN, SLOW

pytestmark = pytest.mark.timeout(240)

PINS = {"ta": "a", "tb": "b"}
# RSS the router may grow by while 4 sessions each stream 200 MB (see README, guard memory).
RSS_BOUND_MB = 160 if SAN else 48


def overrides(router=None):
    o = {"pins": dict(PINS)}
    if router:
        o["router"] = router
    return o


@pytest.fixture(scope="module")
def routers(make_module_router):
    return {mode: make_module_router(overrides=overrides({"guard": mode}))
            for mode in ("on", "strict", "off")}


@pytest.fixture(scope="module")
def small(make_module_router):
    """guard_max_statement = 64kB: a switch in a longer statement gets 54000."""
    return make_module_router(overrides=overrides({"guard_max_statement": "64kB"}))


def raw(port, tenant="ta"):
    c = rawpg.RawConn(port, timeout=60 * SLOW)
    params = [("user", "trustuser"), ("database", "appdb")]
    if tenant is not None:
        params.append(("app.tenant_id", tenant))
    rawpg.login(c, params, timeout=10 * SLOW)
    return c


def answers(conn, timeout=60.0):
    """Messages up to ReadyForQuery, as (type, body)."""
    return rawpg.read_until_ready(conn, timeout=timeout * SLOW)


def rows_and_errors(msgs):
    rows = [rawpg.data_row(b) for t, b in msgs if t == "D"]
    errs = [rawpg.parse_fields(b) for t, b in msgs if t == "E"]
    return rows, errs


def values_sql(n):
    return "SELECT count(*), sum(x) FROM (VALUES " + ",".join(f"({i})" for i in range(n)) \
        + ") v(x)"


def md5_sql(nbytes):
    body = ("abcdefghij" * (nbytes // 10 + 1))[:nbytes]
    return f"SELECT md5('{body}'), length('{body}')", hashlib.md5(body.encode()).hexdigest()


def run_simple(port, sql, tenant="ta"):
    with raw(port, tenant) as c:
        c.send(rawpg.query_message(sql))
        return rows_and_errors(answers(c))


def run_extended(port, sql, tenant="ta"):
    with raw(port, tenant) as c:
        c.send(rawpg.extended_query(sql) + rawpg.sync_message())
        return rows_and_errors(answers(c))


@pytest.mark.parametrize("mode", ["on", "strict", "off"])
def test_long_statements_as_direct(routers, clusters, mode):
    """40 kB, 1 MB and 100 MB statements, simple and extended: the same answers as direct."""
    r = routers[mode]
    direct = clusters["a"].port
    sql40 = values_sql(6000)
    assert len(sql40) > 40000
    want = run_simple(direct, sql40, tenant=None)
    assert want[1] == [] and want[0] == [["6000", str(sum(range(6000)))]]
    assert run_simple(r.port, sql40) == want
    assert run_extended(r.port, sql40) == want
    for size in (1 << 20, 100 << 20):
        sql, digest = md5_sql(size)
        got = run_simple(r.port, sql)
        assert got == ([[digest, str(size)]], []), (mode, size)
        assert run_extended(r.port, sql) == got


@pytest.mark.parametrize("mode", ["on", "strict", "off"])
def test_pipelined_queries_in_one_write(routers, mode):
    """3,000 Queries in one write (about 84 kB): all 3,000 answered, in order."""
    with raw(routers[mode].port) as c:
        batch = b"".join(rawpg.query_message(f"SELECT {i}, 'pipelined-{i:06d}'")
                         for i in range(3000))
        assert len(batch) > 80000
        c.send(batch)
        for i in range(3000):
            rows, errs = rows_and_errors(answers(c, timeout=30))
            assert errs == [] and rows == [[str(i), f"pipelined-{i:06d}"]], i
        assert rawpg.simple_query(c, "SHOW app.tenant_id") == [["ta"]]


def switch_statement(total, where="end"):
    """A statement of about total bytes that switches to tb (cluster b) at its start or end."""
    sw = "SELECT set_config('app.tenant_id', 'tb', false);"
    filler = "SELECT 1 /*" + "x" * max(0, total - 80) + "*/;"
    return sw + filler if where == "start" else filler + sw + " SELECT 2"


def assert_refused(port, sql, sqlstate, extended=False):
    with raw(port) as c:
        c.send((rawpg.extended_query(sql) + rawpg.sync_message()) if extended
               else rawpg.query_message(sql))
        rows, errs = rows_and_errors(answers(c))
        assert [e.get("C") for e in errs] == [sqlstate], errs
        # The session is usable, still on its tenant and cluster.
        assert rawpg.simple_query(c, "SHOW app.tenant_id") == [["ta"]]
        assert rawpg.simple_query(c, "SELECT 1") == [["1"]]
        return errs[0]


@pytest.mark.parametrize("mode", ["on", "strict"])
@pytest.mark.parametrize("size", [40000, 1000000])
def test_switch_in_long_statement_refused(routers, mode, size):
    """The bypass: a switch inside a statement longer than one read, at its start or end."""
    for where in ("start", "end"):
        sql = switch_statement(size, where)
        err = assert_refused(routers[mode].port, sql, "42501")
        assert 'cluster "b"' in err["M"] or "tb" in err["M"]
        assert_refused(routers[mode].port, sql, "42501", extended=True)


def test_switch_cut_across_two_reads(routers):
    """The same statement sent in two writes, cut at every offset around the switch."""
    port = routers["on"].port
    sql = switch_statement(40000, "end")
    msg = rawpg.query_message(sql)
    at = msg.index(b"set_config")
    with raw(port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for cut in range(at - 4, at + 40):
            c.send(msg[:cut])
            time.sleep(0.01)
            c.send(msg[cut:])
            rows, errs = rows_and_errors(answers(c))
            assert [e.get("C") for e in errs] == ["42501"], cut
        assert rawpg.simple_query(c, "SHOW app.tenant_id") == [["ta"]]


def test_over_guard_max_statement(small):
    """Past guard_max_statement a statement that may switch gets 54000 with a hint; one that
    cannot switch streams through; the session stays usable either way."""
    for where in ("start", "end"):
        sql = switch_statement(200000, where)
        for extended in (False, True):
            err = assert_refused(small.port, sql, "54000", extended=extended)
            assert "guard_max_statement" in err["M"] and "H" in err
    # A same-cluster SET in a long statement is refused too: the guard cannot read it.
    assert_refused(small.port, "SET app.tenant_id = 'ta'; SELECT 1 /*" + "y" * 100000 + "*/",
                   "54000")
    sql, digest = md5_sql(300000)
    assert run_simple(small.port, sql) == ([[digest, "300000"]], [])
    assert small.wait_log(r"guard refused a statement: .*guard_max_statement")


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def stream_query(port, nbytes, tail, results, idx):
    """Sends one Query of nbytes (a comment, then tail) in 1 MB writes; records the answer."""
    try:
        with raw(port) as c:
            head = b"SELECT 1 /*"
            end = b"*/; " + tail.encode() + b"\0"
            pad = nbytes - len(head) - len(end)
            c.sock.sendall(b"Q" + struct.pack("!I", 4 + nbytes) + head)
            chunk = b" " * (1 << 20)
            while pad > 0:
                n = min(pad, len(chunk))
                c.sock.sendall(chunk[:n])
                pad -= n
            c.sock.sendall(end)
            results[idx] = rows_and_errors(answers(c, timeout=120))
    except Exception as e:  # noqa: BLE001 - reported by the test
        results[idx] = e


@pytest.mark.timeout(600)
def test_memory_bounded_with_four_200mb_queries(routers):
    """4 sessions each sending a 200 MB Query with the guard on: the router's peak RSS grows by
    tens of MB at most, whether the statement streams through or gets 54000."""
    r = routers["on"]
    pid = r.proc.pid
    base = rss_kb(pid)
    for tail, want in (("SELECT 2", "ok"),
                       ("SELECT set_config('app.tenant_id', 'tb', false)", "54000")):
        results = [None] * 4
        threads = [threading.Thread(target=stream_query,
                                    args=(r.port, 200 << 20, tail, results, i))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        for res in results:
            assert not isinstance(res, Exception) and res is not None, res
            rows, errs = res
            if want == "ok":
                assert errs == [] and rows[-1] == ["2"], res
            else:
                assert [e.get("C") for e in errs] == ["54000"], errs
    peak = rss_kb(pid, "VmHWM")
    growth_mb = (peak - base) / 1024
    print(f"router RSS {base / 1024:.1f} MB before, peak {peak / 1024:.1f} MB "
          f"(+{growth_mb:.1f} MB) for 4 x 2 x 200 MB")
    assert growth_mb < RSS_BOUND_MB, f"router RSS grew {growth_mb:.0f} MB"
    assert re.search(r"guard refused a statement", r.log_text())


def test_switch_pipelined_behind_startup_packet(routers):
    """A switch sent in the same write as the startup packet meets the guard too."""
    c = rawpg.RawConn(routers["on"].port, timeout=10 * SLOW)
    with c:
        c.send(rawpg.startup_packet([("user", "trustuser"), ("database", "appdb"),
                                     ("app.tenant_id", "ta")])
               + rawpg.query_message("SET app.tenant_id = 'tb'")
               + rawpg.query_message("SHOW app.tenant_id"))
        login = answers(c)
        assert [t for t, _ in login if t == "E"] == []
        rows, errs = rows_and_errors(answers(c))
        assert [e.get("C") for e in errs] == ["42501"], errs
        rows, errs = rows_and_errors(answers(c))
        assert errs == [] and rows == [["ta"]]
