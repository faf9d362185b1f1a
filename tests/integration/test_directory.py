"""The shared tenant directory (issue 12): every router agrees where a tenant lives.

Real PostgreSQL servers: the session's clusters a and b, plus a cluster c and a directory
database started for this module.  Each test works in a schema of its own in the directory
database (`tenant-router directory init` makes it), so the tests do not see each other.
Asserts on what users see: which server answered, the SQLSTATE of refusals, rows on servers.
"""

import os
import re
import select
import socket
import subprocess
import threading
import time

import psycopg
import pytest

import harness
import rawpg

SLOW = harness.SLOW


@pytest.fixture(scope="module")
def extra():
    """{'c': PgServer, 'dir': PgServer}, running for the module."""
    servers = harness.start_clusters(("c", "dir"))
    try:
        yield servers
    finally:
        for s in servers.values():
            s.cleanup()


def dsn(srv, dbname="postgres"):
    return f"host=127.0.0.1 port={srv.port} user=postgres dbname={dbname}"


def dir_overrides(dirsrv, schema, **kw):
    d = {"conninfo": dsn(dirsrv), "schema": schema, "heartbeat": "200ms",
         "directory_lease": "3s", "refresh": "30s", "move_drain_timeout": "1s"}
    d.update(kw)
    return {"directory": d}


def dir_sql(dirsrv, sql, params=None):
    with psycopg.connect(dsn(dirsrv), autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else None


def cli(r, argv, timeout=60):
    return subprocess.run([r.bin] + argv, capture_output=True, text=True, timeout=timeout * SLOW,
                          stdin=subprocess.DEVNULL)


def init_schema(r, schema):
    res = cli(r, ["directory", "init", "-c", r.ini])
    assert res.returncode == 0, res.stderr
    assert f"directory schema {schema} is ready" in res.stdout


def port_of(r, tenant):
    return r.server_port(tenant)


def refusal(r, tenant, timeout=5.0):
    """(sqlstate, message) of the router's refusal of a new session, or None if it lets the
    session through to a server (which then asks for a password)."""
    with rawpg.RawConn(r.port, timeout=timeout) as c:
        c.send(rawpg.startup_packet([("user", "app"), ("database", "appdb"),
                                     ("app.tenant_id", tenant)]))
        try:
            t, body = c.recv_msg(timeout)
        except (rawpg.Closed, ConnectionResetError) as e:
            return ("closed", str(e))
        if t == "E":
            f = rawpg.parse_fields(body)
            assert f.get("H"), f  # every refusal carries a hint
            return (f["C"], f["M"])
        return None


def make_dir_router(make_router, cset, dirsrv, schema, **kw):
    overrides = dir_overrides(dirsrv, schema, **kw.pop("directory", {}))
    for k, v in kw.items():
        overrides[k] = v
    return make_router(overrides=overrides, cluster_set=cset, start=False)


def test_directory_init_idempotent_precedence_and_states(make_router, clusters, extra):
    cset = {"a": clusters["a"], "b": clusters["b"]}
    r = make_dir_router(make_router, cset, extra["dir"], "t_prec", pins={"pin1": "a"},
                        router={"pause_timeout": "1s"})
    init_schema(r, "t_prec")
    init_schema(r, "t_prec")  # idempotent
    # Directory beats a pin; a pin beats the ring; the ring decides the rest.
    dir_sql(extra["dir"], "INSERT INTO t_prec.tenants (tenant, cluster) VALUES ('pin1', 'b')")
    ringt = next(t for t in (f"rt{i}" for i in range(100)) if r.route([t])[t][0] == "a")
    dir_sql(extra["dir"], "INSERT INTO t_prec.tenants (tenant, cluster) VALUES (%s, 'b')",
            (ringt,))
    r.start()
    assert "directory: loaded version" in r.log_text()
    assert port_of(r, "pin1") == clusters["b"].port
    assert port_of(r, ringt) == clusters["b"].port
    assert "by=directory" in r.log_text()
    # States: blocked and moving are refused with 57P03 and a hint.
    dir_sql(extra["dir"], "INSERT INTO t_prec.tenants (tenant, cluster, state) VALUES "
            "('blk', 'a', 'blocked'), ('mov', 'a', 'moving')")
    harness.wait_until(lambda: refusal(r, "blk") is not None, 5 * SLOW, what="blk refused")
    st, msg = refusal(r, "blk")
    assert st == "57P03" and 'tenant "blk" is blocked' in msg
    # A moving tenant's new sessions wait (pause_timeout), then get 57P03.
    t0 = time.monotonic()
    st, msg = refusal(r, "mov")
    assert st == "57P03" and 'tenant "mov" is being moved to another cluster' in msg, msg
    assert time.monotonic() - t0 >= 0.9
    assert "tenant=mov being moved: waiting" in r.log_text()
    # `route` tells the same as the routers.
    got = r.route(["pin1", ringt, "blk", "mov", "nobody"])
    assert got.pop("nobody")[1] == "ring"
    assert got == {"pin1": ("b", "directory"), ringt: ("b", "directory"),
                   "blk": ("a", "blocked"), "mov": ("a", "moving")}
    # Versions come from the sequence, the trigger stamps them.
    rows = dir_sql(extra["dir"], "SELECT tenant, version FROM t_prec.tenants ORDER BY version")
    assert [v for _, v in rows] == sorted(v for _, v in rows) and rows[0][1] > 0


def test_directory_bad_rows_are_ignored_and_counted(make_router, clusters, extra):
    cset = {"a": clusters["a"], "b": clusters["b"]}
    r = make_dir_router(make_router, cset, extra["dir"], "t_bad",
                        router={"metrics_listen": f"127.0.0.1:{harness.free_port()}"})
    init_schema(r, "t_bad")
    dir_sql(extra["dir"], "INSERT INTO t_bad.tenants (tenant, cluster, state) VALUES "
            "('good', 'b', 'active'), ('nocl', 'zz', 'active'), ('weird', 'a', 'sideways')")
    r.start()
    assert port_of(r, "good") == clusters["b"].port
    for t in ("nocl", "weird"):
        st, msg = refusal(r, t)
        assert st == "57P03" and "directory row this router cannot use" in msg, msg
    log = r.log_text()
    assert re.search(r'row of tenant "nocl" ignored \(unknown cluster', log)
    assert re.search(r'row of tenant "weird" ignored \(unknown state', log)
    assert r.route(["nocl", "weird"]) == {"nocl": ("zz", "invalid"), "weird": ("a", "invalid")}
    # A bad row arriving later (incremental) is ignored the same way; others keep routing.
    dir_sql(extra["dir"], "INSERT INTO t_bad.tenants (tenant, cluster) VALUES ('late', 'qq')")
    harness.wait_until(lambda: refusal(r, "late") is not None, 5 * SLOW, what="late refused")
    assert port_of(r, "good") == clusters["b"].port
    import urllib.request
    port = r.cfg["router"]["metrics_listen"].split(":")[1]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(r"^tenant_router_directory_ignored_rows (\d+)$", body, re.M)
    assert m and int(m.group(1)) == 3, body
    assert re.search(r"^tenant_router_directory_version \d+$", body, re.M)
    assert re.search(r"^tenant_router_directory_age_seconds [0-9.]+$", body, re.M)
    import json
    st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json",
                                           timeout=5).read())["directory"]
    assert st["loaded"] and st["connected"] and not st["stale"] and st["ignored"] == 3, st
    assert st["rows"] == 4 and st["routers"] >= 1 and st["fingerprint_mismatch"] == 0, st
    assert r.alive()


def test_directory_update_converges_on_three_routers(make_router, clusters, extra):
    cset = {"a": clusters["a"], "b": clusters["b"]}
    # The default heartbeat: convergence must not wait for one.
    rs = [make_dir_router(make_router, cset, extra["dir"], "t_conv",
                          directory={"heartbeat": "1s"}) for _ in range(3)]
    init_schema(rs[0], "t_conv")
    dir_sql(extra["dir"], "INSERT INTO t_conv.tenants (tenant, cluster) VALUES ('conv', 'a')")
    for r in rs:
        r.start()
    for r in rs:
        assert port_of(r, "conv") == clusters["a"].port
    worst = 0.0
    for target in ("b", "a", "b"):
        t0 = time.monotonic()
        dir_sql(extra["dir"], "UPDATE t_conv.tenants SET cluster = %s WHERE tenant = 'conv'",
                (target,))
        pending = set(range(3))
        while pending and time.monotonic() - t0 < 10 * SLOW:
            for i in list(pending):
                if port_of(rs[i], "conv") == clusters[target].port:
                    pending.discard(i)
        took = time.monotonic() - t0
        assert not pending, f"routers {pending} did not apply the change"
        worst = max(worst, took)
    print(f"\nconvergence: all three routers applied an UPDATE within {worst * 1000:.0f} ms")
    assert worst < 1.0 * SLOW + 0.5  # the target is 1 s; some room for a loaded machine


class Cuttable:
    """A loopback TCP forwarder that can be cut (connections reset, new ones refused)."""

    def __init__(self, port):
        self.target = port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.cut = False
        self.conns = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                r, _, _ = select.select([self.sock], [], [], 0.1)
                if not r:
                    continue
                c, _ = self.sock.accept()
            except (OSError, ValueError):
                return
            if self.cut:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            self.conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()

    def _pump(self, a, b):
        try:
            while not self.cut and not self.stop:
                r, _, _ = select.select([a, b], [], [], 0.1)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        raise OSError
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def set_cut(self, cut):
        self.cut = cut

    def close(self):
        self.stop = True
        self.sock.close()


def make_items(clusters, names):
    for n in names:
        with psycopg.connect(dsn(clusters[n], "appdb"), autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS items")
            c.execute("CREATE TABLE items (tenant_id text NOT NULL, n int NOT NULL, "
                      "payload text)")
            c.execute("GRANT ALL ON items TO app")


def count_items(srv, tenant):
    with psycopg.connect(dsn(srv, "appdb"), autocommit=True) as c:
        return c.execute("SELECT count(*) FROM items WHERE tenant_id = %s",
                         (tenant,)).fetchone()[0]


def items_of(srv, tenant):
    with psycopg.connect(dsn(srv, "appdb"), autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT n FROM items WHERE tenant_id = %s",
                                        (tenant,)).fetchall()]


MOVE = {"tables": "items", "tenant_column": "tenant_id", "conninfo": "user=postgres dbname=appdb",
        "fence_timeout": "30s"}


@pytest.mark.timeout(180)
def test_directory_move_under_load(make_router, clusters, extra):
    cset = {"a": clusters["a"], "b": clusters["b"]}
    make_items(clusters, ("a", "b"))
    # One of them with two event loops: each reports its own sessions for the fence.
    rs = [make_dir_router(make_router, cset, extra["dir"], "t_move", move=MOVE,
                          router={"threads": "2" if i == 0 else "1"}) for i in range(3)]
    init_schema(rs[0], "t_move")
    tenant = "mover"
    dir_sql(extra["dir"], "INSERT INTO t_move.tenants (tenant, cluster) VALUES (%s, 'a')",
            (tenant,))
    with psycopg.connect(dsn(clusters["a"], "appdb"), autocommit=True) as c:
        c.execute("INSERT INTO items SELECT %s, -g, 'old' FROM generate_series(1, 5000) g",
                  (tenant,))
    for r in rs:
        r.start()
    stop = threading.Event()
    acked, errors, pauses = [], [], []
    lock = threading.Lock()
    counter = iter(range(1, 10 ** 9))

    def client(r):
        conn = None
        last_ok = time.monotonic()
        while not stop.is_set():
            try:
                if conn is None:
                    conn = r.connect(tenant)
                with lock:
                    n = next(counter)
                conn.execute("INSERT INTO items VALUES (%s, %s, 'new')", (tenant, n))
                now = time.monotonic()
                with lock:
                    acked.append(n)
                    pauses.append(now - last_ok)
                last_ok = now
            except psycopg.Error as e:
                with lock:
                    errors.append((e.sqlstate, str(e).splitlines()[0]))
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(r,)) for r in rs]
    for t in threads:
        t.start()
    time.sleep(1.0)
    res = cli(rs[0], ["move", tenant, "--to", "b", "-c", rs[0].ini, "--delete-source"],
              timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fence: every live router" in res.stdout
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(30)
    on_a = items_of(clusters["a"], tenant)
    on_b = items_of(clusters["b"], tenant)
    new_b = [n for n in on_b if n > 0]
    # The old rows moved; nothing was written on a after the switch (the source was deleted
    # right after it, and no later insert reached a).
    assert on_a == [], f"{len(on_a)} rows of the tenant on the old cluster"
    assert sorted(n for n in on_b if n < 0) == sorted(-g for g in range(1, 5001))
    lost = set(acked) - set(new_b)
    assert not lost, f"{len(lost)} acknowledged inserts lost"
    assert len(new_b) == len(acked), (len(new_b), len(acked), errors[-5:])
    longest = max(pauses) if pauses else 0
    print(f"\nmove under load: {len(acked)} inserts acked through 3 routers, "
          f"{len(new_b)} found on the new cluster, 0 lost; longest pause a client saw "
          f"{longest * 1000:.0f} ms; refusals {len(errors)}")
    codes = {e[0] for e in errors}
    assert codes <= {"57P03", "57P01", None, "08006"}, errors[:5]
    st = dir_sql(extra["dir"], "SELECT cluster, state FROM t_move.tenants WHERE tenant = %s",
                 (tenant,))
    assert st == [("b", "active")]
    # A second move of a tenant that is moving is refused.
    dir_sql(extra["dir"], "UPDATE t_move.tenants SET state = 'moving' WHERE tenant = %s",
            (tenant,))
    res = cli(rs[0], ["move", tenant, "--to", "a", "-c", rs[0].ini])
    assert res.returncode == 1 and "is being moved already" in res.stderr
    dir_sql(extra["dir"], "UPDATE t_move.tenants SET state = 'active' WHERE tenant = %s",
            (tenant,))


@pytest.mark.timeout(180)
def test_directory_move_copy_fails_half_way(make_router, clusters, extra):
    cset = {"a": clusters["a"], "b": clusters["b"]}
    make_items(clusters, ("a", "b"))
    r = make_dir_router(make_router, cset, extra["dir"], "t_fail", move=MOVE)
    init_schema(r, "t_fail")
    tenant = "failer"
    dir_sql(extra["dir"], "INSERT INTO t_fail.tenants (tenant, cluster) VALUES (%s, 'a')",
            (tenant,))
    with psycopg.connect(dsn(clusters["a"], "appdb"), autocommit=True) as c:
        c.execute("INSERT INTO items SELECT %s, g, repeat('x', 200) FROM "
                  "generate_series(1, 400000) g", (tenant,))
    r.start()
    killed = []

    def killer():
        deadline = time.monotonic() + 60 * SLOW
        while time.monotonic() < deadline and not killed:
            with psycopg.connect(dsn(clusters["b"]), autocommit=True) as c:
                rows = c.execute("SELECT pid FROM pg_stat_activity WHERE application_name = "
                                 "'tenant-router move' AND query LIKE 'COPY items%%FROM STDIN'"
                                 ).fetchall()
                if rows:
                    time.sleep(0.1)  # half-way: some rows are in
                    c.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
                    killed.append(rows[0][0])
            time.sleep(0.01)

    k = threading.Thread(target=killer)
    k.start()
    res = cli(r, ["move", tenant, "--to", "b", "-c", r.ini], timeout=120)
    k.join(70)
    assert killed, "the copy ended before the target's backend could be killed"
    assert res.returncode == 1, res.stdout + res.stderr
    assert f'it is active on "a" again, nothing was written on "b"' in res.stderr
    assert dir_sql(extra["dir"], "SELECT cluster, state FROM t_fail.tenants WHERE tenant = %s",
                   (tenant,)) == [("a", "active")]
    assert count_items(clusters["b"], tenant) == 0
    assert count_items(clusters["a"], tenant) == 400000
    harness.wait_until(lambda: refusal(r, tenant) is None, 5 * SLOW, what="tenant served again")
    assert port_of(r, tenant) == clusters["a"].port


@pytest.mark.timeout(180)
def test_directory_unreachable_router(make_router, clusters, extra):
    cset = {"a": clusters["a"], "b": clusters["b"]}
    make_items(clusters, ("a", "b"))
    proxy = Cuttable(extra["dir"].port)
    try:
        cut_conn = f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres"
        r1 = make_dir_router(make_router, cset, extra["dir"], "t_unr",
                             directory={"conninfo": cut_conn}, move=MOVE)
        r2 = make_dir_router(make_router, cset, extra["dir"], "t_unr", move=MOVE)
        init_schema(r2, "t_unr")
        dir_sql(extra["dir"], "INSERT INTO t_unr.tenants (tenant, cluster) VALUES "
                "('lone', 'a'), ('other', 'a')")
        r1.start()
        r2.start()
        assert port_of(r1, "lone") == clusters["a"].port
        proxy.set_cut(True)
        t_cut = time.monotonic()
        # Within the lease the copy keeps serving.
        assert port_of(r1, "other") == clusters["a"].port
        # A move meanwhile waits for r1's lease to run out, then goes on.
        t0 = time.monotonic()
        res = cli(r2, ["move", "lone", "--to", "b", "-c", r2.ini, "--no-copy"], timeout=60)
        took = time.monotonic() - t0
        assert res.returncode == 0, res.stdout + res.stderr
        assert took >= 2.0, f"the move did not wait for the silent router's lease ({took:.1f}s)"
        # Past its lease r1 refuses what it cannot be sure of.
        harness.wait_until(lambda: time.monotonic() - t_cut > 3.5, 10)
        st, msg = refusal(r1, "other")
        assert st == "57P03" and "cannot be confirmed" in msg, msg
        assert "no contact for more than directory_lease" in r1.log_text()
        # r2 routes the moved tenant to b.
        assert port_of(r2, "lone") == clusters["b"].port
        # The directory comes back: r1 catches up.
        proxy.set_cut(False)
        harness.wait_until(lambda: refusal(r1, "lone") is None, 15 * SLOW,
                           what="r1 back in contact")
        assert port_of(r1, "lone") == clusters["b"].port
        assert port_of(r1, "other") == clusters["a"].port
    finally:
        proxy.close()


def test_directory_plan_add_cluster_freeze(make_router, clusters, extra):
    ab = {"a": clusters["a"], "b": clusters["b"]}
    abc = dict(ab, c=extra["c"])
    r = make_dir_router(make_router, ab, extra["dir"], "t_plan")
    init_schema(r, "t_plan")
    known = [f"k{i}" for i in range(300)]
    tfile = r.write_file("tenants.txt", "\n".join(known) + "\n")
    r.start()
    before = {t: c for t, (c, _) in r.route(known).items()}
    # The plan with c: which known tenants would go to c.
    cfg_abc = harness.merge(r.cfg, {"cluster.c": {"hosts": f"127.0.0.1:{extra['c'].port}",
                                                  "weight": "1"}})
    res = cli(r, ["plan", "-c", r.ini, "--add-cluster", "c:1", "--tenants", tfile])
    assert res.returncode == 0, res.stderr
    m = re.search(r"# 300 known tenants, (\d+) would change cluster", res.stdout)
    assert m and 30 < int(m.group(1)) < 200, res.stdout
    assert re.search(r"^# a -> c: \d+$", res.stdout, re.M)
    res = cli(r, ["plan", "-c", r.ini, "--add-cluster", "c", "--tenants", tfile, "--freeze"])
    assert res.returncode == 0, res.stderr
    assert re.search(r"froze \d+ tenants", res.stdout)
    # The routers get c; known tenants stay where they were, new ones spread over a, b, c.
    r.clusters = abc
    r.write_config(cfg_abc)
    assert r.reload() == "ok"
    harness.wait_until(lambda: "directory: loaded version" in r.log_text(), 5)
    time.sleep(0.5)
    for t in known:
        assert port_of(r, t) == ab[before[t]].port, t
    newcomers = {}
    for t in (f"new{i}" for i in range(60)):
        p = port_of(r, t)
        newcomers[p] = newcomers.get(p, 0) + 1
    assert set(newcomers) == {s.port for s in abc.values()}, newcomers


def test_reload_refused_when_ring_change_moves_live_tenant(make_router, clusters, extra):
    ab = {"a": clusters["a"], "b": clusters["b"]}
    r = make_router(cluster_set=ab, overrides={"router": {"threads": "2"}})
    cfg_abc = harness.merge(r.cfg, {"cluster.c": {"hosts": f"127.0.0.1:{extra['c'].port}",
                                                  "weight": "1"}})
    r2 = harness.Router(dict(ab, c=extra["c"]), overrides=cfg_abc)
    try:
        movers = [t for t, (c, _) in r2.route([f"rl{i}" for i in range(200)]).items()
                  if c == "c"]
    finally:
        r2.close()
    assert movers
    t = movers[0]
    held = [r.connect(t) for _ in range(4)]  # on both loops, most likely
    try:
        r.write_config(cfg_abc)
        off = r.log_size()
        assert r.reload() == "failed"
        line = r.wait_log(r"reload failed, keeping the running configuration: its ring "
                          r"change.*", off).group(0)
        assert f'tenant "{t}"' in line and 'to "c"' in line, line
        for c in held:
            assert c.execute("SELECT 1").fetchone()[0] == 1
    finally:
        for c in held:
            c.close()
    time.sleep(0.3)
    assert r.reload() == "ok"
    assert r.server_port(t) == extra["c"].port


def test_directory_cache_file_when_unreachable_at_start(make_router, clusters, extra):
    cset = {"a": clusters["a"], "b": clusters["b"]}
    r1 = make_dir_router(make_router, cset, extra["dir"], "t_cache",
                         directory={"cache_file": "dir.cache"})
    init_schema(r1, "t_cache")
    dir_sql(extra["dir"], "INSERT INTO t_cache.tenants (tenant, cluster, state) VALUES "
            "('c1', 'b', 'active'), ('c2', 'a', 'blocked')")
    r1.start()
    # A change after the full load is appended to the cache too.
    dir_sql(extra["dir"], "INSERT INTO t_cache.tenants (tenant, cluster) VALUES ('c3', 'b')")
    harness.wait_until(lambda: "applied version" in r1.log_text(), 5 * SLOW)
    time.sleep(0.2)
    cache = os.path.join(r1.dir, "dir.cache")
    text = open(cache).read()
    assert "c1\tb\tactive" in text and "\\.\n" in text and "c3\tb\tactive" in text
    proxy = Cuttable(extra["dir"].port)
    proxy.set_cut(True)
    try:
        cut_conn = f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres"
        r2 = make_dir_router(make_router, cset, extra["dir"], "t_cache",
                             directory={"conninfo": cut_conn, "cache_file": cache,
                                        "directory_lease": "30s"})
        r2.start()
        assert "serving from cache_file" in r2.log_text()
        assert port_of(r2, "c1") == clusters["b"].port
        assert port_of(r2, "c3") == clusters["b"].port
        st, msg = refusal(r2, "c2")
        assert st == "57P03" and "is blocked" in msg
    finally:
        proxy.close()


def test_directory_move_waits_for_a_session_that_switched_to_the_tenant(make_router, clusters,
                                                                        extra):
    cset = {"a": clusters["a"], "b": clusters["b"]}
    r = make_dir_router(make_router, cset, extra["dir"], "t_sw",
                        directory={"move_drain_timeout": "2s"})
    init_schema(r, "t_sw")
    dir_sql(extra["dir"], "INSERT INTO t_sw.tenants (tenant, cluster) VALUES "
            "('home', 'a'), ('guest', 'a')")
    r.start()
    conn = r.connect("home")
    conn.execute("SET app.tenant_id = 'guest'")  # the guard allows it: same cluster
    assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone()[0] == "guest"
    t0 = time.monotonic()
    res = cli(r, ["move", "guest", "--to", "b", "-c", r.ini, "--no-copy"])
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    assert took >= 1.8, f"the move did not wait for the session working for guest ({took:.1f}s)"
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("SELECT 1")
    assert "is being moved to another cluster" in str(ei.value)
    conn.close()
    assert port_of(r, "guest") == clusters["b"].port
    assert port_of(r, "home") == clusters["a"].port
