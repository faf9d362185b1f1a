"""The router in front of two real Citus clusters (coordinator + 3 workers each, RF 2).

Routing per tenant, the tenant setting on workers (SET LOCAL propagated, RLS on a distributed
table), the worker check (a worker stopped, a worker frozen), a coordinator down.
"""

import os
import re
import threading
import time

import psycopg
import pytest

import harness
import topology

WORKER_INTERVAL = 1.0
WORKER_TIMEOUT = 4.0  # citus.node_connection_timeout becomes 1 s


@pytest.fixture(scope="module")
def topo():
    clusters = topology.start_citus_clusters(("a", "b"))
    try:
        yield clusters
    finally:
        for c in clusters.values():
            c.cleanup()


@pytest.fixture(scope="module")
def router(request, topo):
    r = harness.Router({n: c.coord for n, c in topo.items()}, overrides={"health": {
        "conninfo": "user=postgres dbname=appdb",
        "worker_interval": f"{int(WORKER_INTERVAL * 1000)}ms",
        "worker_timeout": f"{int(WORKER_TIMEOUT * 1000)}ms"}})
    request.module._tr_module_routers = [r]
    r.start()
    try:
        yield r
    finally:
        rc = r.stop()
        rep = r.sanitizer_report()
        r.close()
        assert rc == 0, f"router exited {rc}"
        assert rep is None, rep


def pick(router, cluster, n, prefix):
    got = [t for t, (c, _) in router.route([f"{prefix}{i}" for i in range(200)]).items()
           if c == cluster]
    assert len(got) >= n
    return got[:n]


def tx(conn, tenant, *statements):
    """BEGIN; SET LOCAL app.tenant_id = tenant; statements...; COMMIT (each its own Query)."""
    out = []
    with conn.transaction():
        conn.execute(f"SET LOCAL app.tenant_id = '{tenant}'")
        for q, *args in statements:
            cur = conn.execute(q, *args)
            out.append(cur.fetchall() if cur.description else cur.statusmessage)
    return out


def test_routing_per_tenant(router, topo):
    for name, cl in topo.items():
        for t in pick(router, name, 3, f"rt-{name}-"):
            with router.connect(t) as conn:
                assert conn.execute("SELECT inet_server_port()").fetchone()[0] == cl.coord.port
                tx(conn, t, ("INSERT INTO msgs VALUES (%s, %s, 'hello')", (f"room-{t}", t)))
        # This cluster holds its own tenants' rows only (read as the superuser: no RLS).
        rows = cl.coord.sql("SELECT tenant_id FROM msgs WHERE body = 'hello'", dbname="appdb")
        assert len(rows) == 3 and all(r[0].startswith(f"rt-{name}-") for r in rows), rows


def test_tenant_setting_on_workers_with_rls(router, topo):
    t1, t2 = pick(router, "a", 2, "rls-")
    with router.connect(t1) as c1, router.connect(t2) as c2:
        for i in range(6):
            tx(c1, t1, ("INSERT INTO msgs VALUES (%s, %s, 'rls')", (f"r{i}", t1)))
        tx(c2, t2, ("INSERT INTO msgs VALUES ('r1', %s, 'rls')", (t2,)))
        # The startup packet's setting exists only on the coordinator: outside a transaction
        # with SET LOCAL the workers see no tenant, so the policy shows nothing.
        assert c1.execute("SELECT count(*) FROM msgs WHERE body = 'rls'").fetchone()[0] == 0
        # With it: a multi-shard query, a router query, and the policy's check on insert.
        got = tx(c1, t1, ("SELECT tenant_id, count(*) FROM msgs WHERE body = 'rls' GROUP BY 1",),
                 ("SELECT tenant_id FROM msgs WHERE room_id = 'r1' AND body = 'rls'",))
        assert got == [[(t1, 6)], [(t1,)]], got
        assert tx(c2, t2, ("SELECT count(*) FROM msgs WHERE body = 'rls'",)) == [[(1,)]]
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="violates row-level security"):
            tx(c1, t1, ("INSERT INTO msgs VALUES ('r2', %s, 'rls')", (t2,)))
        # The same in one Query string fails: Citus forwards the whole string as the SET.
        with pytest.raises(psycopg.Error, match="distributed query"):
            c1.execute(f"BEGIN; SET LOCAL app.tenant_id = '{t1}'; "
                       "SELECT count(*) FROM msgs; COMMIT")
        c1.execute("ROLLBACK")


def writer_probe_gaps(coord, seconds):
    """Gaps between successive writer probes (query_start of the health connection)."""
    seen = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for (ts,) in coord.sql("SELECT query_start FROM pg_stat_activity "
                               "WHERE application_name = 'tenant-router-health'"):
            seen.add(ts)
        time.sleep(harness.HEALTH_INTERVAL / 2)
    s = sorted(seen)
    return [(b - a).total_seconds() for a, b in zip(s, s[1:])]


@pytest.mark.timeout(120)
def test_worker_stopped_degrades_then_heals(router, topo):
    cl = topo["a"]
    w = cl.workers[1]
    t = pick(router, "a", 1, "ws-")[0]
    off = router.log_size()
    w.stop()
    try:
        m = router.wait_log(r"warn.*health: cluster a degraded: (.*)", off,
                            WORKER_INTERVAL + WORKER_TIMEOUT + 2)
        assert m.group(1).strip() == f"worker 127.0.0.1:{w.port} unreachable", m.group(0)
        assert "cluster b degraded" not in router.log_since(off)
        # Degraded is still routed, and reads go on from the other copy.
        with router.connect(t) as conn:
            assert tx(conn, t, ("SELECT count(*) >= 0 FROM msgs",)) == [[(True,)]]
    finally:
        off = router.log_size()
        w.start()
    router.wait_log(r"info.*health: cluster a healthy again", off,
                    WORKER_INTERVAL + WORKER_TIMEOUT + 2)


@pytest.mark.timeout(120)
def test_worker_frozen_degrades_and_writer_probe_keeps_interval(router, topo):
    cl = topo["a"]
    w = cl.workers[2]
    off = router.log_size()
    w.freeze()
    try:
        t0 = time.monotonic()
        m = router.wait_log(r"warn.*health: cluster a degraded: (.*)", off,
                            WORKER_INTERVAL + WORKER_TIMEOUT + 2)
        took = time.monotonic() - t0
        assert m.group(1).strip() == f"worker 127.0.0.1:{w.port} unreachable", m.group(0)
        assert took < WORKER_INTERVAL + WORKER_TIMEOUT / 4 + 1.5, took
        gaps = writer_probe_gaps(cl.coord, 3.0)
        assert gaps and max(gaps) < 3 * harness.HEALTH_INTERVAL * harness.SLOW + 0.3, gaps
        log = router.log_since(off)
        assert not re.search(r"host down|health: check failed", log), log
        t = pick(router, "a", 1, "wf-")[0]
        assert router.server_port(t) == cl.coord.port
    finally:
        off = router.log_size()
        w.thaw()
    router.wait_log(r"info.*health: cluster a healthy again", off,
                    WORKER_INTERVAL + WORKER_TIMEOUT + 2)


@pytest.mark.timeout(120)
def test_coordinator_down_only_its_tenants(router, topo):
    a, b = topo["a"].coord, topo["b"].coord
    ta = pick(router, "a", 1, "cd-a-")[0]
    tbs = pick(router, "b", 3, "cd-b-")
    stop = threading.Event()
    errors, done = [], [0]

    def b_traffic():
        i = 0
        while not stop.is_set():
            t = tbs[i % len(tbs)]
            try:
                with router.connect(t) as conn:
                    tx(conn, t, ("SELECT count(*) FROM msgs",))
                done[0] += 1
            except Exception as e:
                errors.append(repr(e))
            i += 1

    th = threading.Thread(target=b_traffic, daemon=True)
    th.start()
    try:
        time.sleep(0.5)
        a.stop()
        code = None
        deadline = time.monotonic() + 5 * harness.SLOW
        while time.monotonic() < deadline:
            try:
                router.connect(ta).close()
            except psycopg.OperationalError as e:
                if "57P03" in str(e) or "no healthy coordinator" in str(e):
                    code = "57P03"
                    break
            time.sleep(0.1)
        assert code == "57P03"
        time.sleep(1.0)
    finally:
        a.start()
        stop.set()
        th.join(10)
    assert not errors, errors[:5]
    assert done[0] > 5
    harness.wait_until(lambda: router.server_port(ta) == a.port if _up(router, ta) else False,
                       10, what="cluster a back")


def _up(router, t):
    try:
        router.connect(t).close()
        return True
    except psycopg.Error:
        return False
