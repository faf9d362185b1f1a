"""Metrics and the status page: /metrics (checked by a real Prometheus parser), /status.json,
/healthz, / (rendered by headless Chromium), and HTTP clients that misbehave."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest

import harness

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - install-deps installs it
    text_string_to_metric_families = None

REPO = harness.REPO


def metrics_overrides(port, **router):
    return {"router": dict({"metrics_listen": f"127.0.0.1:{port}"}, **router)}


def http_get(port, path, timeout=5):
    """(status, content-type, body text) of GET path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def scrape(port):
    """{(name, frozenset(labels)): value} of every sample, parsed by prometheus_client."""
    if text_string_to_metric_families is None:
        pytest.skip("python3-prometheus-client is not installed")
    status, ctype, text = http_get(port, "/metrics")
    assert status == 200, text
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0.0)


def raw_http(port, data, read_timeout=8.0):
    """Sends data, returns (what came back, seconds until the server closed)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        buf = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return buf, time.monotonic() - t0


@pytest.fixture(scope="module")
def mrouter(make_module_router):
    """One router with metrics on, shared by the read-only tests of this module."""
    port = harness.free_port()
    r = make_module_router(overrides=metrics_overrides(port))
    r.mport = port
    harness.wait_until(lambda: "metrics listening" in r.log_text(), 5 * harness.SLOW,
                       what="metrics listener")
    return r


def test_metrics_parse_with_help_and_type(mrouter):
    status, ctype, text = http_get(mrouter.mport, "/metrics")
    assert status == 200
    for fam in ("tenant_router_build_info", "tenant_router_config_info",
                "tenant_router_connections", "tenant_router_sessions",
                "tenant_router_sessions_routed_total", "tenant_router_refusals_total",
                "tenant_router_received_bytes_total", "tenant_router_sent_bytes_total",
                "tenant_router_login_duration_seconds",
                "tenant_router_health_check_duration_seconds", "tenant_router_host_up",
                "tenant_router_host_in_recovery", "tenant_router_host_writer",
                "tenant_router_host_last_check_seconds", "tenant_router_pins",
                "tenant_router_reloads_total", "tenant_router_cluster_ring_share"):
        assert f"# HELP {fam} " in text, fam
        assert f"# TYPE {fam} " in text, fam
    m = scrape(mrouter.mport)
    names = {n for n, _ in m}
    assert "tenant_router_health_check_duration_seconds_bucket" in names
    assert sample(m, "tenant_router_build_info", version="0.1.0") == 1
    fp = [dict(l)["fingerprint"] for n, l in m if n == "tenant_router_config_info"]
    assert len(fp) == 1 and len(fp[0]) == 16, fp
    for c in ("a", "b"):
        assert sample(m, "tenant_router_host_up", cluster=c,
                      host=f"127.0.0.1:{mrouter.cluster_port(c)}") == 1
        assert sample(m, "tenant_router_host_writer", cluster=c,
                      host=f"127.0.0.1:{mrouter.cluster_port(c)}") == 1
        assert sample(m, "tenant_router_host_in_recovery", cluster=c,
                      host=f"127.0.0.1:{mrouter.cluster_port(c)}") == 0
    shares = sample(m, "tenant_router_cluster_ring_share", cluster="a") + \
        sample(m, "tenant_router_cluster_ring_share", cluster="b")
    assert abs(shares - 1.0) < 1e-4, shares


def test_fingerprint_is_the_same_for_the_same_placement(mrouter, make_router):
    """Another router with the sections in the other order shows the same fingerprint."""
    def fp(port):
        return json.loads(http_get(port, "/status.json")[2])["fingerprint"]
    port = harness.free_port()
    r = make_router(overrides=metrics_overrides(port), start=False)
    cfg = {k: v for k, v in r.cfg.items() if not k.startswith("cluster.")}
    cfg["cluster.b"] = r.cfg["cluster.b"]
    cfg["cluster.a"] = r.cfg["cluster.a"]
    r.write_config(raw_ini=harness.render_ini(cfg))
    r.start()
    harness.wait_until(lambda: "metrics listening" in r.log_text(), 5, what="metrics")
    assert fp(port) == fp(mrouter.mport)
    r.write_config({"cluster.b": {"weight": "2"}})
    assert r.reload() == "ok"
    assert fp(port) != fp(mrouter.mport)
    m = scrape(port)
    assert sample(m, "tenant_router_reloads_total", result="ok") == 1


def test_routed_sessions_and_bytes_move(mrouter):
    tenant = "metrics-t1"
    cluster, how = mrouter.route([tenant])[tenant]
    assert how == "ring"
    before = scrape(mrouter.mport)
    n = 5
    for _ in range(n):
        with mrouter.connect(tenant) as conn:
            conn.execute("SELECT repeat('x', 10000)").fetchone()
    # The last session's close may still be on its way through the loop.
    harness.wait_until(lambda: sample(scrape(mrouter.mport), "tenant_router_sessions",
                                      cluster=cluster, state="splicing") == 0, 5,
                       what="sessions to close")
    after = scrape(mrouter.mport)
    key = "tenant_router_sessions_routed_total"
    assert sample(after, key, cluster=cluster, source="ring") - \
        sample(before, key, cluster=cluster, source="ring") == n
    other = "b" if cluster == "a" else "a"
    assert sample(after, key, cluster=other, source="ring") == \
        sample(before, key, cluster=other, source="ring")
    for peer in ("client", "server"):
        for k in ("tenant_router_received_bytes_total", "tenant_router_sent_bytes_total"):
            assert sample(after, k, peer=peer) > sample(before, k, peer=peer), (k, peer)
    # The 10 kB answers went server -> router -> client.
    assert sample(after, "tenant_router_sent_bytes_total", peer="client") - \
        sample(before, "tenant_router_sent_bytes_total", peer="client") >= n * 10000
    cnt = "tenant_router_login_duration_seconds_count"
    assert sample(after, cnt) - sample(before, cnt) == n


def test_pinned_sessions_count_as_pin(make_router, clusters):
    port = harness.free_port()
    r = make_router(overrides=metrics_overrides(port), pins_file="pinned-1 b\n")
    r.write_config({"pins": {"file": "pins.txt"}})
    assert r.reload() == "ok"
    with r.connect("pinned-1") as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == clusters["b"].port
    m = scrape(port)
    assert sample(m, "tenant_router_sessions_routed_total", cluster="b", source="pin") == 1
    assert sample(m, "tenant_router_pins") == 1
    assert sample(m, "tenant_router_cluster_pins", cluster="b") == 1


def test_refusal_without_tenant_is_counted(mrouter):
    before = scrape(mrouter.mport)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**mrouter.conninfo(None))
    after = scrape(mrouter.mport)
    key = "tenant_router_refusals_total"
    assert sample(after, key, sqlstate="08004") - sample(before, key, sqlstate="08004") == 1
    st = json.loads(http_get(mrouter.mport, "/status.json")[2])
    assert st["recent_refusals"][0]["sqlstate"] == "08004"
    assert st["refusals"]["08004"] >= 1


def test_status_json_fields(mrouter):
    with mrouter.connect("status-t") as conn:
        status, ctype, body = http_get(mrouter.mport, "/status.json")
        assert status == 200 and ctype == "application/json"
        d = json.loads(body)
        conn.execute("SELECT 1")
    assert d["accepting"] is True and d["version"] == "0.1.0"
    names = [c["name"] for c in d["clusters"]]
    assert names == ["a", "b"]
    cluster = mrouter.route(["status-t"])["status-t"][0]
    for c in d["clusters"]:
        assert c["state"] == "up"
        assert c["writer"] == f"127.0.0.1:{mrouter.cluster_port(c['name'])}"
        assert 0.2 < c["ring_share"] < 0.8
        assert c["pinned_tenants"] == 0
        assert set(c["routed"]) == {"pin", "ring"}
        assert len(c["hosts"]) == 1
        h = c["hosts"][0]
        assert h["health"] == "up" and h["role"] == "primary" and h["writer"] is True
        assert h["history"] and set(h["history"]) <= {"+", "-"}
        assert h["last_check_seconds"] > 0
    mine = next(c for c in d["clusters"] if c["name"] == cluster)
    assert mine["sessions"] >= 1 and mine["sessions_by_state"]["splicing"] >= 1
    assert "splicing" in d["connections"]


def test_http_errors(mrouter):
    p = mrouter.mport
    assert http_get(p, "/nope")[0] == 404
    assert http_get(p, "/healthz")[:1] == (200,)
    assert http_get(p, "/healthz")[2] == "ok\n"
    status, ctype, page = http_get(p, "/")
    assert status == 200 and ctype.startswith("text/html") and "/status.json" in page
    assert len(page) < 16384
    req = urllib.request.Request(f"http://127.0.0.1:{p}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405 and e.value.headers.get("Allow") == "GET"
    out, _ = raw_http(p, b"\x16\x03\x01garbage\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:80]
    out, _ = raw_http(p, b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 414 "), out[:80]
    out, _ = raw_http(p, b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"b" * 9000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 "), out[:80]
    out, _ = raw_http(p, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    length = int([l for l in head.split(b"\r\n") if l.startswith(b"Content-Length:")][0]
                 .split(b":")[1])
    assert length == len(body)


def test_slow_http_client_is_cut_off_and_routing_goes_on(mrouter):
    """A client sending a byte a second is closed at the 5 s deadline; meanwhile sessions
    route and queries answer at once."""
    result = {}

    def slowloris():
        t0 = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", mrouter.mport), timeout=15) as s:
                got = b""
                for ch in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
                    try:
                        s.sendall(bytes([ch]))
                    except OSError:
                        break
                    s.settimeout(1.0)
                    try:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        got += chunk
                    except socket.timeout:
                        continue
                result["got"] = got
        except OSError as e:
            result["error"] = e
        result["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=slowloris)
    th.start()
    try:
        time.sleep(1.5)
        for i in range(3):
            t0 = time.monotonic()
            with mrouter.connect(f"slow-{i}") as conn:
                assert conn.execute("SELECT 1").fetchone()[0] == 1
            assert time.monotonic() - t0 < 1.0 * harness.SLOW
            # The metrics server answers others while the slow one hangs on.
            assert http_get(mrouter.mport, "/healthz", timeout=2)[0] == 200
    finally:
        th.join(20)
    assert "elapsed" in result
    assert 4.0 < result["elapsed"] < 8.0 * harness.SLOW, result
    assert result.get("got", b"").startswith(b"HTTP/1.1 408") or result.get("got") == b"", \
        result


def test_many_idle_http_connections_do_not_stall_routing(mrouter):
    socks = []
    try:
        for _ in range(80):  # more than HTTP_MAX_CONNS (64)
            socks.append(socket.create_connection(("127.0.0.1", mrouter.mport), timeout=5))
        t0 = time.monotonic()
        with mrouter.connect("idle-http") as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
        assert time.monotonic() - t0 < 1.0 * harness.SLOW
    finally:
        for s in socks:
            s.close()


def test_stopped_cluster_shows_down(make_router, clusters):
    port = harness.free_port()
    r = make_router(overrides=metrics_overrides(port))
    b = clusters["b"]
    host = f"127.0.0.1:{b.port}"
    b.stop()
    try:
        harness.wait_until(lambda: sample(scrape(port), "tenant_router_host_up", cluster="b",
                                          host=host) == 0, 10, what="host b down")
        m = scrape(port)
        assert sample(m, "tenant_router_host_writer", cluster="b", host=host) == 0
        assert sample(m, "tenant_router_cluster_has_writer", cluster="b") == 0
        assert sample(m, "tenant_router_cluster_has_writer", cluster="a") == 1
        d = json.loads(http_get(port, "/status.json")[2])
        cb = next(c for c in d["clusters"] if c["name"] == "b")
        assert cb["state"] == "down" and cb["writer"] is None and cb["why"]
        assert cb["hosts"][0]["health"] == "down" and "-" in cb["hosts"][0]["history"]
        # One cluster still has a writer: the router is still worth sending clients to.
        assert http_get(port, "/healthz")[0] == 200
        # A tenant of b is refused with 57P03, and that is counted.
        tb = next(t for t in (f"sd-{i}" for i in range(100)) if r.route([t])[t][0] == "b")
        with pytest.raises(psycopg.OperationalError):
            r.connect(tb)
        assert sample(scrape(port), "tenant_router_refusals_total", sqlstate="57P03") == 1
    finally:
        b.start()


def test_healthz_503_without_any_writer(make_router):
    port = harness.free_port()
    dead = harness.free_port()
    r = make_router(overrides={"router": {"metrics_listen": f"127.0.0.1:{port}"},
                               "cluster.a": {"hosts": f"127.0.0.1:{dead}"},
                               "cluster.b": None})
    harness.wait_until(lambda: "metrics listening" in r.log_text(), 5, what="metrics")
    status, _, body = http_get(port, "/healthz")
    assert status == 503 and "writer" in body
    d = json.loads(http_get(port, "/status.json")[2])
    assert d["clusters"][0]["state"] == "down"


def test_threads_counters_add_up(make_router, clusters):
    port = harness.free_port()
    r = make_router(overrides=metrics_overrides(port, threads="2"))
    tenant = "thr-1"
    cluster = r.route([tenant])[tenant][0]
    n = 12
    for _ in range(n):
        with r.connect(tenant) as conn:
            conn.execute("SELECT 1")
    harness.wait_until(lambda: sum(v for (k, l), v in scrape(port).items()
                                   if k == "tenant_router_connections") == 0, 5,
                       what="connections to close")
    m = scrape(port)
    assert sample(m, "tenant_router_sessions_routed_total", cluster=cluster, source="ring") == n
    assert sample(m, "tenant_router_login_duration_seconds_count") == n


def test_metrics_listen_is_checked(make_router):
    r = make_router(overrides={"router": {"metrics_listen": "nonsense:port"}}, start=False)
    res = r.check()
    assert res.returncode == 1 and "metrics_listen" in res.stdout + res.stderr


# --- the status page in a real browser ---------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    pytest.skip("chromium is not installed (apt-get install chromium); "
                "the status page test needs a headless browser")


def render_page(port, tmp):
    """(rendered DOM, screenshot path) of the status page."""
    exe = chromium()
    url = f"http://127.0.0.1:{port}/"
    base = CHROMIUM_FLAGS + ["--virtual-time-budget=3000"]
    r = subprocess.run([exe] + base + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp)}",
                                       "--dump-dom", url],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    shot = os.path.join(tmp, "status-page.png")
    r2 = subprocess.run([exe] + base + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp)}",
                                        f"--screenshot={shot}", "--window-size=1200,900",
                                        "--hide-scrollbars", url],
                        capture_output=True, text=True, timeout=90)
    assert r2.returncode == 0 and os.path.exists(shot), r2.stderr[-2000:]
    return r.stdout, shot


@pytest.mark.timeout(240)
def test_status_page_renders_in_chromium(make_router, clusters, tmp_path):
    chromium()
    port = harness.free_port()
    r = make_router(overrides=metrics_overrides(port))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**r.conninfo(None))
    b = clusters["b"]
    b.stop()
    try:
        harness.wait_until(lambda: json.loads(http_get(port, "/status.json")[2])
                           ["clusters"][1]["state"] == "down", 10, what="b down")
        ta = next(t for t in (f"page-{i}" for i in range(100)) if r.route([t])[t][0] == "a")
        with r.connect(ta):
            dom, shot = render_page(port, str(tmp_path))
    finally:
        b.start()
    assert 'id="cluster-a"' in dom and 'id="cluster-b"' in dom, dom[:3000]
    # Cluster a is up with its writer; b is shown down, with no writer.
    a_part = dom.split('id="cluster-a"')[1].split('id="cluster-b"')[0]
    b_part = dom.split('id="cluster-b"')[1]
    assert 'class="st up">up<' in a_part and f"127.0.0.1:{clusters['a'].port}" in a_part
    assert 'class="st down">down<' in b_part and "writer: none" in b_part
    assert "08004" in dom  # the recent refusal
    assert os.path.getsize(shot) > 1000
    # How conf/status-page.png was made: TR_STATUS_SCREENSHOT=conf/status-page.png
    if os.environ.get("TR_STATUS_SCREENSHOT"):
        shutil.copy(shot, os.environ["TR_STATUS_SCREENSHOT"])
