"""Clusters with several hosts: the writer is the healthy host not in recovery."""

import pytest

import harness
import rawpg


@pytest.fixture(scope="module")
def standby(clusters):
    """A streaming standby of cluster a (pg_is_in_recovery() = true)."""
    s = harness.PgServer("a-standby")
    try:
        s.init_standby_of(clusters["a"])
        s.start()
        assert s.sql("SELECT pg_is_in_recovery()")[0][0] is True
        yield s
    finally:
        s.cleanup()


def test_topology_first_host_down_uses_next(make_router, clusters):
    dead = harness.free_port()
    r = make_router(overrides={
        "cluster.b": {"hosts": f"127.0.0.1:{dead}, 127.0.0.1:{clusters['b'].port}"},
        "pins": {"pin-b": "b"}})
    assert r.server_port("pin-b") == clusters["b"].port


@pytest.mark.timeout(120)
def test_topology_standby_is_not_the_writer(make_router, clusters, standby):
    a = clusters["a"]
    # Two clusters may not share a host, so c and d each get a router of their own.
    r = make_router(overrides={
        "cluster.c": {"hosts": f"127.0.0.1:{standby.port}", "weight": "1"},
        "pins": {"pin-c": "c"}})
    # Only a standby: no writer, so refused with 57P03 naming c.
    with rawpg.RawConn(r.port) as c:
        c.send(rawpg.startup_packet([("user", "app"), ("database", "appdb"),
                                     ("app.tenant_id", "pin-c")]))
        f = rawpg.assert_refusal(c, "57P03")
    assert " c" in f["M"] or '"c"' in f["M"], f
    # Standby listed first, primary second: the primary is the writer (d replaces a, which
    # would share the primary).
    r = make_router(overrides={
        "cluster.a": None,
        "cluster.d": {"hosts": f"127.0.0.1:{standby.port}, 127.0.0.1:{a.port}", "weight": "1"},
        "pins": {"pin-d": "d"}})
    with r.connect("pin-d") as conn:
        port, rec = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert (port, rec) == (a.port, False)
