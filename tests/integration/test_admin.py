"""The admin console: the virtual database tenant_router on the router's own listeners.

Everything goes through real clients: psql (tables, -A -t, \\x) and psycopg.  An admin logs in
with a password the router checks itself ([auth] auth_file); a user who is not in admin_users
is refused.  PIN/UNPIN write the pins file and change routing at once, and a restart keeps
them; PAUSE holds new sessions of a tenant until RESUME or pause_timeout; KILL ends sessions
with a FATAL; RELOAD and SHUTDOWN do what SIGHUP and SIGTERM do.
"""

import os
import subprocess
import threading
import time

import psycopg
import pytest

import harness
import rawpg
from harness import SLOW

pytestmark = pytest.mark.timeout(60)

ADMIN, ADMIN_PW = "tradmin", "Admin-pw-42"
VIEWER, VIEWER_PW = "viewer", "Viewer-pw-7"
PAUSE_TIMEOUT = 3


def console_overrides(extra=None):
    return harness.merge({
        "router": {"admin_users": ADMIN, "pause_timeout": f"{PAUSE_TIMEOUT}s"},
        "auth": {"auth_file": "userlist.txt"},
        "pins": {"file": "pins.txt"},
    }, extra or {})


def start_console_router(make_router, extra=None, pins="", threads=None):
    ov = console_overrides(extra)
    if threads:
        ov = harness.merge(ov, {"router": {"threads": str(threads)}})
    r = make_router(overrides=ov, pins_file=pins, start=False)
    r.write_file("userlist.txt", harness.userlist_text({ADMIN: ADMIN_PW, VIEWER: VIEWER_PW}))
    r.start()
    return r


def psql(router, *sqls, user=ADMIN, password=ADMIN_PW, flags=("-A", "-t"), dbname="tenant_router"):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(router.port), PGUSER=user,
               PGPASSWORD=password, PGDATABASE=dbname, PGCONNECT_TIMEOUT="5")
    env.pop("PGOPTIONS", None)
    args = ["psql", "-X", "-v", "ON_ERROR_STOP=1", *flags]
    for s in sqls:
        args += ["-c", s]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=30 * SLOW,
                          stdin=subprocess.DEVNULL)


def rows(router, sql, **kw):
    """psql -A -t output of one command as a list of field lists ('|' separated)."""
    r = psql(router, sql, **kw)
    assert r.returncode == 0, f"{sql}: {r.stderr}"
    return [line.split("|") for line in r.stdout.splitlines() if line]


def console(router, user=ADMIN, password=ADMIN_PW):
    """A psycopg connection to the console (simple query protocol: ClientCursor)."""
    return psycopg.connect(host="127.0.0.1", port=router.port, user=user, password=password,
                           dbname="tenant_router", autocommit=True, connect_timeout=5,
                           cursor_factory=psycopg.ClientCursor)


def other(cluster):
    return "b" if cluster == "a" else "a"


@pytest.fixture
def crouter(make_router):
    return start_console_router(make_router)


# --- every command through psql ------------------------------------------------------------

def test_console_show_commands(crouter, clusters):
    r = crouter
    with r.connect("t-show") as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        want = r.route(["t-show"])["t-show"][0]

        cl = {row[0]: row for row in rows(r, "SHOW CLUSTERS")}
        assert set(cl) == {"a", "b"}
        for name, row in cl.items():
            assert row[1] == "up", row
            assert row[2] == f"127.0.0.1:{clusters[name].port}", row
        assert int(cl[want][3]) >= 1

        hosts = rows(r, "show hosts;")
        assert {(h[0], h[1], h[2]) for h in hosts} == {
            (n, "127.0.0.1", str(s.port)) for n, s in clusters.items()}
        assert all(h[3] == "writer" and h[4] == "up" and h[5] == "no" for h in hosts), hosts

        clients = rows(r, "SHOW CLIENTS")
        mine = [c for c in clients if c[3] == "t-show"]
        assert len(mine) == 1, clients
        assert mine[0][4] == want and mine[0][6] == "splicing", mine
        assert any(c[4] == "(console)" for c in clients), clients

        tenants = {t[0]: t for t in rows(r, "SHOW TENANTS")}
        assert tenants["t-show"][1:4] == [want, "ring", "1"], tenants

        stats = {s[0]: s for s in rows(r, "SHOW STATS")}
        assert int(stats["routed"][1]) >= 1 and int(stats["sessions_now"][1]) >= 2, stats

        conf = {c[0]: c for c in rows(r, "SHOW CONFIG")}
        assert conf["admin_users"][1] == ADMIN
        assert conf["pause_timeout"][1:] == [f"{PAUSE_TIMEOUT}s", "30s", "yes"]
        assert conf["listen"][3] == "no"

        assert rows(r, "SHOW VERSION")[0][0].startswith("tenant-router ")
        helps = [h[0] for h in rows(r, "SHOW HELP")]
        assert "PIN 'tenant' TO cluster [FORCE]" in helps and "SHUTDOWN" in helps

        route = rows(r, "ROUTE 't-show'")
        assert route[0][:4] == [want, "ring", f"127.0.0.1:{clusters[want].port}", "up"]


def test_console_psql_table_and_expanded(crouter):
    res = psql(crouter, "SHOW VERSION", flags=())
    assert res.returncode == 0, res.stderr
    assert "version" in res.stdout and "(1 row)" in res.stdout, res.stdout
    res = psql(crouter, "\\x", "SHOW CLUSTERS", flags=())
    assert res.returncode == 0, res.stderr
    assert "-[ RECORD 1 ]" in res.stdout and "writer" in res.stdout, res.stdout


@pytest.mark.parametrize("sql,needle", [
    ("FROB", "unknown command"),
    ("SHOW POOLS", "unknown SHOW item"),
    ("SELECT 1", "unknown command"),
    ("ROUTE 42", "syntax error"),
    ("PIN 'x' beta", "syntax error"),
    ("KILL CLIENT abc", "syntax error"),
    ("SHOW CLUSTERS; SHOW HOSTS", "syntax error"),
])
def test_console_bad_commands(crouter, sql, needle):
    res = psql(crouter, sql, flags=("-A", "-t", "-v", "VERBOSITY=verbose"))
    assert res.returncode != 0
    assert "42601" in res.stderr and needle in res.stderr, res.stderr
    assert "HINT:" in res.stderr, res.stderr


def test_console_errors_keep_the_session(crouter):
    with console(crouter) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as ei:
            conn.execute("NONSENSE")
        assert ei.value.diag.message_hint
        assert conn.execute("SHOW VERSION").fetchone()[0].startswith("tenant-router")
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("RESUME TENANT 'never-paused'")
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("KILL CLIENT 999999")
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("PIN 'x' TO nosuchcluster")
        # The extended protocol is refused with a hint, and the session goes on.
        with psycopg.Cursor(conn) as cur:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as ei:
                cur.execute("SHOW VERSION", prepare=True)
            assert "simple query" in str(ei.value)
        assert conn.execute("SHOW VERSION").fetchone()[0].startswith("tenant-router")


def test_console_non_admin_and_wrong_password(crouter):
    res = psql(crouter, "SHOW VERSION", user=VIEWER, password=VIEWER_PW)
    assert res.returncode == 2
    assert "not allowed to use the admin console" in res.stderr, res.stderr
    assert "admin_users" in res.stderr, res.stderr
    res = psql(crouter, "SHOW VERSION", password="wrong")
    assert res.returncode == 2
    assert "password authentication failed" in res.stderr, res.stderr
    # The normal path is untouched: a tenant session still works.
    assert crouter.server_port("t-na") > 0


def test_console_refusals_on_the_wire(crouter):
    """The SQLSTATEs libpq does not show for login errors: 42501 after the password."""
    with rawpg.RawConn(crouter.port) as c:
        with pytest.raises(rawpg.LoginError) as ei:
            rawpg.login_password(c, [("user", VIEWER), ("database", "tenant_router")],
                                 VIEWER_PW)
    f = ei.value.fields
    assert (f["S"], f["C"]) == ("FATAL", "42501"), f
    assert f["M"].startswith("tenant-router:") and "admin_users" in f["H"], f
    # An admin on the wire: RowDescription of text columns, DataRow, CommandComplete, Ready.
    with rawpg.RawConn(crouter.port) as c:
        rawpg.login_password(c, [("user", ADMIN), ("database", "tenant_router")], ADMIN_PW)
        assert rawpg.simple_query(c, "show version;")[0][0].startswith("tenant-router ")


def test_console_off_without_admin_users(make_router):
    r = make_router()
    res = psql(r, "SHOW VERSION", user="app", password=harness.APP_PASSWORD)
    assert res.returncode == 2
    assert "admin console" in res.stderr and "admin_users" in res.stderr, res.stderr


# --- PIN / UNPIN ---------------------------------------------------------------------------

def test_console_pin_changes_routing_and_survives_restart(crouter, clusters):
    r = crouter
    t = "t-pin"
    ring = r.route([t])[t][0]
    dest = other(ring)
    assert r.server_port(t) == clusters[ring].port
    res = psql(r, f"PIN '{t}' TO {dest}")
    assert res.returncode == 0, res.stderr
    assert "moves from cluster" in res.stderr, res.stderr  # the data-safety notice
    assert r.server_port(t) == clusters[dest].port
    with open(os.path.join(r.dir, "pins.txt")) as f:
        assert f"{t} {dest}\n" in f.read()
    assert rows(r, f"ROUTE '{t}'")[0][:2] == [dest, "pin"]
    assert r.route([t])[t] == (dest, "pinned")

    assert r.stop() == 0
    off = r.log_size()
    r.start()
    r.wait_log(f"listening on 127.0.0.1:{r.port}", off, timeout=15)
    assert r.server_port(t) == clusters[dest].port
    assert rows(r, f"ROUTE '{t}'")[0][:2] == [dest, "pin"]

    res = psql(r, f"UNPIN '{t}'")
    assert res.returncode == 0, res.stderr
    assert r.server_port(t) == clusters[ring].port
    with open(os.path.join(r.dir, "pins.txt")) as f:
        assert t not in f.read()
    with console(r) as conn:
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute(f"UNPIN '{t}'")


def test_console_pin_refused_with_live_sessions_unless_force(crouter, clusters):
    r = crouter
    t = "t-live"
    ring = r.route([t])[t][0]
    dest = other(ring)
    with r.connect(t) as live:
        assert live.execute("SELECT inet_server_port()").fetchone()[0] == clusters[ring].port
        with console(r) as conn:
            with pytest.raises(psycopg.errors.ObjectInUse) as ei:
                conn.execute(f"PIN '{t}' TO {dest}")
            assert "1 live session" in str(ei.value)
            assert "FORCE" in ei.value.diag.message_hint
            assert "data" in ei.value.diag.message_hint
            # Nothing changed.
            assert r.server_port(t) == clusters[ring].port
            notices = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary))
            conn.execute(f"PIN '{t}' TO {dest} FORCE")
            assert any("live session" in n for n in notices), notices
        # The live session stays where it was; new ones go to the new cluster.
        assert live.execute("SELECT inet_server_port()").fetchone()[0] == clusters[ring].port
        assert r.server_port(t) == clusters[dest].port


def test_console_pin_needs_a_pins_file(make_router):
    ov = console_overrides({"pins": None})
    r = make_router(overrides=ov, start=False)
    r.write_file("userlist.txt", harness.userlist_text({ADMIN: ADMIN_PW}))
    r.start()
    with console(r) as conn:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as ei:
            conn.execute("PIN 'x' TO a")
        assert "no pins file" in str(ei.value)
        assert "[pins] file" in ei.value.diag.message_hint


# --- PAUSE / RESUME ------------------------------------------------------------------------

def connect_in_thread(router, tenant):
    out = {}

    def run():
        t0 = time.monotonic()
        try:
            with router.connect(tenant) as conn:
                out["port"] = conn.execute("SELECT inet_server_port()").fetchone()[0]
        except Exception as e:  # noqa: BLE001 - reported by the test
            out["error"] = e
        out["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


def test_console_pause_holds_and_resume_releases(crouter, clusters):
    r = crouter
    t = "t-pause"
    want = clusters[r.route([t])[t][0]].port
    with console(r) as conn:
        conn.execute(f"PAUSE TENANT '{t}'")
        th, out = connect_in_thread(r, t)
        harness.wait_until(lambda: any(c[3] == t and c[6] == "waiting"
                                       for c in rows(r, "SHOW CLIENTS")),
                           5 * SLOW, what="a waiting session")
        assert not out
        tenants = {x[0]: x for x in rows(r, "SHOW TENANTS")}
        assert tenants[t][4:] == ["1", "paused"], tenants
        # Other tenants are not held.
        assert r.server_port("t-other") > 0
        conn.execute(f"RESUME TENANT '{t}'")
        th.join(10 * SLOW)
        assert out.get("port") == want, out


def test_console_pause_timeout_gives_57P03(crouter):
    r = crouter
    t = "t-pause-to"
    with console(r) as conn:
        conn.execute(f"PAUSE TENANT '{t}'")
        th, out = connect_in_thread(r, t)
        th.join((PAUSE_TIMEOUT + 10) * SLOW)
        assert "error" in out, out
        msg = str(out["error"])
        assert "paused" in msg and "HINT" in msg, msg
        assert out["elapsed"] >= PAUSE_TIMEOUT * 0.8, out
        assert "sqlstate=57P03" in r.log_text()
        conn.execute(f"RESUME TENANT '{t}'")
    assert r.server_port(t) > 0


# --- KILL ----------------------------------------------------------------------------------

def test_console_kill_tenant_and_client(crouter):
    r = crouter
    a1, a2, b = r.connect("t-kill"), r.connect("t-kill"), r.connect("t-keep")
    try:
        with console(r) as conn:
            conn.execute("KILL TENANT 't-kill'")
            for victim in (a1, a2):
                with pytest.raises(psycopg.OperationalError) as ei:
                    harness.wait_until(lambda v=victim: v.execute("SELECT 1") and False,
                                       5 * SLOW, interval=0.2)
                assert "terminated by the administrator" in str(ei.value), ei.value
            assert b.execute("SELECT 1").fetchone()[0] == 1
            cid = [c[0] for c in rows(r, "SHOW CLIENTS") if c[3] == "t-keep"]
            assert len(cid) == 1
            conn.execute(f"KILL CLIENT {cid[0]}")
            with pytest.raises(psycopg.OperationalError) as ei:
                harness.wait_until(lambda: b.execute("SELECT 1") and False, 5 * SLOW,
                                   interval=0.2)
            assert "KILL CLIENT" in str(ei.value), ei.value
    finally:
        for c in (a1, a2, b):
            c.close()


def test_console_kill_on_the_wire(crouter):
    """A killed spliced session gets a whole FATAL 57P01 with a hint, then the close."""
    r = crouter
    with rawpg.RawConn(r.port) as c:
        rawpg.login_password(c, [("user", "app"), ("database", "appdb"),
                                 ("options", "-c app.tenant_id=t-raw")], harness.APP_PASSWORD)
        assert rawpg.simple_query(c, "SELECT 7") == [["7"]]
        cid = [x[0] for x in rows(r, "SHOW CLIENTS") if x[3] == "t-raw"]
        assert len(cid) == 1
        assert psql(r, f"KILL CLIENT {cid[0]}").returncode == 0
        f = rawpg.assert_refusal(c, "57P01")
        assert f["M"] == "tenant-router: terminated by the administrator (KILL CLIENT)", f


# --- RELOAD / SHUTDOWN ---------------------------------------------------------------------

def test_console_reload(crouter):
    r = crouter
    r.write_config({"router": {"max_client_conn": "123"}})
    res = psql(r, "RELOAD")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "RELOAD"
    assert ["max_client_conn", "123", "1000", "yes"] in rows(r, "SHOW CONFIG")
    r.write_config({"router": {"no_such_key": "1"}})
    res = psql(r, "RELOAD", flags=("-A", "-t", "-v", "VERBOSITY=verbose"))
    assert res.returncode != 0
    assert "reload failed" in res.stderr and "no_such_key" in res.stderr, res.stderr
    assert r.alive()
    assert ["max_client_conn", "123", "1000", "yes"] in rows(r, "SHOW CONFIG")
    r.write_config({"router": {"no_such_key": None}})


def test_console_shutdown_is_graceful(crouter):
    r = crouter
    live = r.connect("t-drain")
    try:
        res = psql(r, "SHUTDOWN")
        assert res.returncode == 0, res.stderr
        r.wait_log(r"shutting down on", timeout=5)
        # Draining: the live session still works until it ends.
        assert live.execute("SELECT 1").fetchone()[0] == 1
    finally:
        live.close()
    r.proc.wait(15 * SLOW)
    assert r.stop() == 0


# --- threads = 2 ---------------------------------------------------------------------------

def test_console_threads_cover_every_loop(make_router):
    r = start_console_router(make_router, threads=2)
    conns = [r.connect(f"t-thr{i}") for i in range(12)]
    try:
        clients = [c for c in rows(r, "SHOW CLIENTS") if c[3].startswith("t-thr")]
        assert len(clients) == 12, clients
        assert {c[1] for c in clients} == {"0", "1"}, clients
        ids = [c[0] for c in clients]
        assert len(set(ids)) == 12, ids
        # KILL reaches a session whatever loop it is on.
        for thread in ("0", "1"):
            victim = next(c for c in clients if c[1] == thread)
            res = psql(r, f"KILL CLIENT {victim[0]}")
            assert res.returncode == 0, res.stderr
        harness.wait_until(lambda: len([c for c in rows(r, "SHOW CLIENTS")
                                        if c[3].startswith("t-thr")]) == 10,
                           5 * SLOW, what="two sessions killed")
        # PIN from whichever loop the console lands on changes routing on every loop.
        t = "t-thr-pin"
        ring = r.route([t])[t][0]
        assert psql(r, f"PIN '{t}' TO {other(ring)}").returncode == 0
        for _ in range(8):
            assert r.server_port(t) == r.clusters[other(ring)].port
    finally:
        for c in conns:
            c.close()
