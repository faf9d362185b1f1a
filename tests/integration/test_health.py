"""A cluster going down: its tenants get 57P03 quickly, other tenants see nothing."""

import re
import threading
import time

import pytest

import harness
import rawpg


def raw_attempt(port, tenant, timeout=3.0):
    """Send a startup packet for a scram user; return ('E', fields) or (type, None)."""
    with rawpg.RawConn(port, timeout=timeout) as c:
        c.send(rawpg.startup_packet([("user", "app"), ("database", "appdb"),
                                     ("app.tenant_id", tenant)]))
        try:
            t, body = c.recv_msg(timeout)
        except (rawpg.Closed, ConnectionResetError) as e:
            return ("closed", str(e))
        if t == "E":
            return ("E", rawpg.parse_fields(body))
        return (t, None)


def pick(router, cluster, n, prefix):
    cands = [f"{prefix}{i}" for i in range(100)]
    got = [t for t, (c, _) in router.route(cands).items() if c == cluster]
    assert len(got) >= n
    return got[:n]


@pytest.mark.timeout(90)
def test_health_cluster_down_then_back(router, clusters):
    a_tenants = pick(router, "a", 5, "ha-")
    b_tenant = pick(router, "b", 1, "hb-")[0]
    a_port, b_srv = clusters["a"].port, clusters["b"]
    assert router.server_port(b_tenant) == b_srv.port

    stop = threading.Event()
    errors = []
    done = {"queries": 0, "connects": 0}

    def a_traffic():
        try:
            sess = router.connect(a_tenants[0])
        except Exception as e:
            errors.append(f"open session: {e!r}")
            return
        i = 0
        with sess:
            while not stop.is_set():
                try:
                    assert sess.execute("SELECT inet_server_port()").fetchone()[0] == a_port
                    done["queries"] += 1
                    t = a_tenants[i % len(a_tenants)]
                    with router.connect(t) as c:
                        assert c.execute("SELECT inet_server_port()").fetchone()[0] == a_port
                    done["connects"] += 1
                except Exception as e:
                    errors.append(f"{time.monotonic():.3f} {e!r}")
                i += 1
                time.sleep(0.01)

    th = threading.Thread(target=a_traffic, daemon=True)
    th.start()
    interval = harness.HEALTH_INTERVAL
    bound = (harness.HEALTH_FAIL_AFTER * interval + 0.5) * harness.SLOW
    first = None
    other = []
    try:
        time.sleep(0.3)
        b_srv.stop()
        t_stopped = time.monotonic()
        deadline = t_stopped + 5 * harness.SLOW
        while time.monotonic() < deadline:
            kind, f = raw_attempt(router.port, b_tenant)
            if kind == "E" and f.get("C") == "57P03":
                first = (time.monotonic() - t_stopped, f)
                break
            other.append((round(time.monotonic() - t_stopped, 3), kind,
                          f.get("C") if isinstance(f, dict) else f))
            time.sleep(0.02)
        # Refused while down, every time, with the full shape of a refusal.
        if first is not None:
            with rawpg.RawConn(router.port) as c:
                c.send(rawpg.startup_packet([("user", "app"), ("database", "appdb"),
                                             ("app.tenant_id", b_tenant)]))
                rawpg.assert_refusal(c, "57P03")
    finally:
        b_srv.start()
    assert first is not None, f"no 57P03 within 5 s of stopping b; saw {other[-10:]}"
    elapsed, fields = first
    print(f"first 57P03 {elapsed:.3f}s after b stopped: {fields}; before: {other[-5:]}")
    assert elapsed <= bound, (f"first 57P03 {elapsed:.3f}s after b stopped, bound {bound:.2f}s "
                              f"(interval {interval}s x fail_after {harness.HEALTH_FAIL_AFTER})")
    assert fields["M"].startswith("tenant-router"), fields
    assert re.search(r"(?<![\w.-])b(?![\w-])", fields["M"]), f"message does not name b: {fields}"

    # b tenants work again soon after b is back.
    def b_ok():
        try:
            return router.server_port(b_tenant) == b_srv.port
        except Exception:
            return False
    t_back = time.monotonic()
    harness.wait_until(b_ok, 5 * harness.SLOW, interval=0.05, what="b tenant served again")
    back_after = time.monotonic() - t_back

    time.sleep(0.2)
    stop.set()
    th.join(10)
    assert not th.is_alive()
    assert not errors, f"a-tenant traffic saw {len(errors)} errors: {errors[:5]}"
    assert done["queries"] > 5 and done["connects"] > 5, done
    assert back_after < 5 * harness.SLOW


def test_health_down_at_startup(make_router, clusters):
    """A router that starts while a cluster is down refuses that cluster's tenants at once
    (first failed check marks it down) and serves the others."""
    b_srv = clusters["b"]
    probe = make_router(start=False)
    a_t = pick(probe, "a", 1, "hs-")[0]
    b_t = pick(probe, "b", 1, "hs-")[0]
    b_srv.stop()
    try:
        r = make_router()
        kind, f = raw_attempt(r.port, b_t)
        assert kind == "E" and f["C"] == "57P03", (kind, f)
        assert r.server_port(a_t) == clusters["a"].port
    finally:
        b_srv.start()
    harness.wait_until(lambda: _works(r, b_t, b_srv.port), 5 * harness.SLOW,
                       what="b tenant served after b started")


def _works(r, t, port):
    try:
        return r.server_port(t) == port
    except Exception:
        return False
