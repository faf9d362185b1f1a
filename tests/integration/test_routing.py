"""Tenants land on the cluster `route` names; pins override the ring."""

import time

import pytest

# Each test runs with pool_mode = none and again with pool_mode = session (conftest.py).
POOL_MODES = ("none", "session")

TENANTS = [f"t{i}" for i in range(200)] + ["42", "042"]


def ring_tenants(router, cluster, n, prefix):
    """n tenants whose ring (unpinned) cluster is `cluster`, by asking `route`."""
    cands = [f"{prefix}{i}" for i in range(200)]
    got = [t for t, (c, how) in router.route(cands).items() if c == cluster and how == "ring"]
    assert len(got) >= n, f"fewer than {n} of 200 tenants hash to {cluster}"
    return got[:n]


@pytest.mark.timeout(120)
def test_routing_every_tenant_lands_where_route_says(router, clusters):
    routes = router.route(TENANTS)
    ports = {name: srv.port for name, srv in clusters.items()}
    per_cluster = {name: 0 for name in clusters}
    wrong = []
    for t in TENANTS:
        cluster, how = routes[t]
        assert how == "ring", f"{t}: no pins configured, yet route says {how}"
        assert cluster in ports, f"{t}: route names unknown cluster {cluster!r}"
        with router.connect(t) as conn:
            port, tid = conn.execute(
                "SELECT inet_server_port(), current_setting('app.tenant_id')").fetchone()
        if port != ports[cluster]:
            wrong.append((t, cluster, port))
        assert tid == t
        per_cluster[cluster] += 1
    assert not wrong, f"{len(wrong)} tenants on the wrong server, e.g. {wrong[:5]}"
    assert all(n > 0 for n in per_cluster.values()), f"unbalanced: {per_cluster}"
    # 42 and 042 are different tenants; they only need to be routed independently,
    # but route must give each one a line of its own.
    assert "42" in routes and "042" in routes


def test_routing_is_stable_across_connections(router, clusters):
    # The same tenant on several connections always reaches the same server.
    for t in ("t1", "t2", "t3"):
        ports = {router.server_port(t) for _ in range(5)}
        assert len(ports) == 1, f"{t} reached {ports}"


def test_routing_pins_override_ring(make_router, clusters):
    probe = make_router(start=False)
    inline_t = ring_tenants(probe, "a", 1, "pin-inline-")[0]   # ring says a, pin says b
    file_t = ring_tenants(probe, "b", 1, "pin-file-")[0]       # ring says b, pin says a
    pins = f"# test pins\n\n{file_t} a\n"
    r = make_router(overrides={"pins": {"file": "pins.txt", inline_t: "b"}}, pins_file=pins)
    routes = r.route([inline_t, file_t, "t5"])
    assert routes[inline_t] == ("b", "pinned")
    assert routes[file_t] == ("a", "pinned")
    assert routes["t5"][1] == "ring"
    assert r.server_port(inline_t) == clusters["b"].port
    assert r.server_port(file_t) == clusters["a"].port


@pytest.mark.timeout(90)
def test_routing_million_line_pins_file(make_router, clusters):
    lines = "".join(f"tenant-{i} {'a' if i % 2 else 'b'}\n" for i in range(1000000))
    r = make_router(overrides={"pins": {"file": "pins.txt"}}, pins_file=lines)
    assert r.route(["tenant-7", "tenant-8"]) == {"tenant-7": ("a", "pinned"),
                                                  "tenant-8": ("b", "pinned")}
    assert r.server_port("tenant-7") == clusters["a"].port
    assert r.server_port("tenant-999998") == clusters["b"].port
    r.write_pins(lines.replace("tenant-7 a\n", "tenant-7 b\n"))
    t0 = time.monotonic()
    assert r.reload(timeout=10) == "ok"
    assert time.monotonic() - t0 < 5
    assert r.server_port("tenant-7") == clusters["b"].port
