"""The Citus worker check, without Citus: a plain PostgreSQL that defines the two functions the
check calls (citus_get_active_worker_nodes, citus_check_connection_to_node) over a table the test
fills, so `make test` drives the degraded state machine. tests/citus/ does the same with real
Citus workers.
"""

import re
import time

import pytest

import harness

MIMIC = (
    "CREATE TABLE fake_workers (node_name text, node_port bigint, ok bool, delay float8 "
    "DEFAULT 0)",
    "CREATE FUNCTION citus_get_active_worker_nodes(OUT node_name text, OUT node_port bigint) "
    "RETURNS SETOF record LANGUAGE sql AS "
    "$$ SELECT node_name, node_port FROM fake_workers ORDER BY 1, 2 $$",
    # pg_sleep stands in for a frozen worker (Citus waits citus.node_connection_timeout).
    "CREATE FUNCTION citus_check_connection_to_node(nodename text, nodeport int) "
    "RETURNS bool LANGUAGE sql AS "
    "$$ SELECT ok FROM fake_workers, LATERAL pg_sleep(delay) "
    "WHERE node_name = nodename AND node_port = nodeport $$",
    "INSERT INTO fake_workers VALUES ('10.0.0.1', 5432, true), ('10.0.0.2', 5432, true)",
)

WORKER_INTERVAL = 0.3
WORKER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def coord():
    s = harness.PgServer("fakecitus")
    try:
        s.init()
        s.start()
        s.setup_roles()
        for q in MIMIC:
            s.sql(q)
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def citus_router(request, coord):
    routers = []
    request.node._tr_routers = routers

    def make(extra=None):
        ov = {"health": {"worker_interval": f"{int(WORKER_INTERVAL * 1000)}ms",
                         "worker_timeout": f"{int(WORKER_TIMEOUT * 1000)}ms"}}
        for k, v in (extra or {}).items():
            ov.setdefault(k, {}).update(v)
        r = harness.Router({"c": coord}, overrides=ov)
        routers.append(r)
        r.start()
        return r

    yield make
    problems = []
    for r in routers:
        rc = r.stop()
        if rc not in (0, None):
            problems.append(f"router exited {rc}")
        rep = r.sanitizer_report()
        if rep:
            problems.append(rep)
        r.close()
    assert not problems, problems


def set_worker(coord, port_host, **kw):
    sets = ", ".join(f"{k} = %s" for k in kw)
    coord.sql(f"UPDATE fake_workers SET {sets} WHERE node_name = %s",
              tuple(kw.values()) + (port_host,))


def health_query_starts(coord):
    rows = coord.sql("SELECT query_start FROM pg_stat_activity "
                     "WHERE application_name = 'tenant-router-health'")
    return [r[0] for r in rows]


@pytest.mark.timeout(90)
def test_worker_unreachable_degrades_then_heals(citus_router, coord):
    r = citus_router()
    # The watch runs on its own connection once the probe has found the functions.
    harness.wait_until(lambda: coord.sql("SELECT 1 FROM pg_stat_activity WHERE "
                                         "application_name = 'tenant-router-citus'"),
                       5 * harness.SLOW, what="the worker check connection")
    time.sleep(3 * WORKER_INTERVAL)
    assert "degraded" not in r.log_text()
    assert r.server_port("t1") == coord.port

    off = r.log_size()
    set_worker(coord, "10.0.0.2", ok=False)
    m = r.wait_log(r"warn.*health: cluster c degraded: (.*)", off, 3.0)
    assert m.group(1).strip() == "worker 10.0.0.2:5432 unreachable", m.group(0)
    # Still routed: a degraded cluster serves reads and the other shards' writes.
    assert r.server_port("t1") == coord.port
    time.sleep(4 * WORKER_INTERVAL)
    assert r.log_since(off).count("degraded:") == 1, "logged once per change, not per check"

    set_worker(coord, "10.0.0.1", ok=False)
    r.wait_log(r"cluster c degraded: workers 10.0.0.1:5432, 10.0.0.2:5432 unreachable",
               off, 3.0)

    off = r.log_size()
    coord.sql("UPDATE fake_workers SET ok = true")
    r.wait_log(r"info.*health: cluster c healthy again", off, 3.0)
    time.sleep(3 * WORKER_INTERVAL)
    assert r.log_since(off).count("healthy again") == 1


@pytest.mark.timeout(90)
def test_slow_worker_check_never_delays_the_writer_probe(citus_router, coord):
    r = citus_router()
    r.wait_log(r"health: writer cluster=c", 0, 5.0)
    off = r.log_size()
    # A check that takes longer than worker_timeout: the server's statement_timeout ends it.
    set_worker(coord, "10.0.0.1", delay=WORKER_TIMEOUT * 3)
    m = r.wait_log(r"cluster c degraded: worker check timed out after (\d+) ms", off,
                   WORKER_TIMEOUT + 3.0)
    assert int(m.group(1)) == int(WORKER_TIMEOUT * 1000)
    # Meanwhile the writer probe kept its interval on its own connection.
    seen = []
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        seen.extend(health_query_starts(coord))
        time.sleep(harness.HEALTH_INTERVAL / 2)
    distinct = sorted(set(seen))
    assert len(distinct) >= int(2.0 / harness.HEALTH_INTERVAL / 2), distinct
    gaps = [(b - a).total_seconds() for a, b in zip(distinct, distinct[1:])]
    assert max(gaps) < 3 * harness.HEALTH_INTERVAL * harness.SLOW + 0.3, gaps
    assert r.server_port("t2") == coord.port
    log = r.log_since(off)
    # health.c's own lines for a failed writer probe.
    assert not re.search(r"host down|health: check failed", log), log

    off = r.log_size()
    set_worker(coord, "10.0.0.1", delay=0)
    r.wait_log(r"health: cluster c healthy again", off, WORKER_TIMEOUT * 2 + 3.0)


@pytest.mark.timeout(60)
def test_plain_postgresql_has_no_worker_check(make_router, clusters):
    """Without the functions nothing changes: no second connection, no Citus lines."""
    r = make_router({"health": {"worker_interval": "200ms"}})
    r.wait_log(r"health: writer cluster=a", 0, 5.0)
    time.sleep(1.0)
    for s in clusters.values():
        assert not s.sql("SELECT 1 FROM pg_stat_activity "
                         "WHERE application_name = 'tenant-router-citus'")
    assert "degraded" not in r.log_text() and "worker check" not in r.log_text()


@pytest.mark.timeout(60)
def test_worker_keys_validated(make_router):
    r = make_router(start=False)
    r.write_config({"health": {"worker_timeout": "0"}})
    res = r.check()
    assert res.returncode == 1 and "[health] worker_timeout: must be more than 0" in res.stdout + \
        res.stderr, res
    r.write_config({"health": {"worker_timeout": "3s", "worker_interval": "0"}})
    res = r.check()
    assert res.returncode == 0, res.stdout + res.stderr
