"""The tenant_guard server library (src/pgext): PostgreSQL itself refuses tenant changes.

The router's guard reads SQL on the client side; these tests send what it cannot see (set_config
in a function, a DO block, a FunctionCall message, escapes, a function's SET clause) and check the
server refuses each with 42501 and the session keeps its tenant. They bring their own servers
(not the session's clusters a and b, whose configuration must not change):

  shared   shared_preload_libraries, no secret: a session without a tenant may set one once
  session  session_preload_libraries, tenant_guard.secret set: only signed values change it
  plain    no library (but a tenant_guard.key placeholder in postgresql.conf): what
           guard_server_check = on must refuse

The library must be built first (`make pgext`, which `make test` runs).
"""

import hashlib
import hmac
import os
import shutil
import struct
import time

import psycopg
import pytest

import harness
import rawpg

pytestmark = pytest.mark.timeout(120)

LIB = os.path.join(harness.REPO, "build", "pgext", "tenant_guard.so")
SECRET = "tg-test-secret"
KEY = "app.tenant_id"
FIXED = "tenant_guard: app.tenant_id is fixed for this session"
TENANT = "t1"


class GuardedPg(harness.PgServer):
    """A PgServer whose postgresql.conf loads tenant_guard (copied into the server's own
    directory, which user postgres can read) the way `how` says, plus extra lines."""

    def __init__(self, name, how=None, extra=""):
        super().__init__(name)
        self.how = how
        self.extra = extra

    def init(self):
        super().init()
        lines = [self.extra]
        if self.how:
            lib = os.path.join(self.tmp, "tenant_guard.so")
            shutil.copy(LIB, lib)
            os.chmod(lib, 0o644)
            # An absolute path without the suffix: PostgreSQL adds .so, as for $libdir names.
            lines.append(f"{self.how} = '{lib[:-3]}'")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n".join(lines) + "\n")


SERVERS = {
    "shared": dict(how="shared_preload_libraries"),
    "session": dict(how="session_preload_libraries", extra=f"tenant_guard.secret = '{SECRET}'"),
    "plain": dict(extra=f"tenant_guard.key = '{KEY}'"),
}


@pytest.fixture(scope="module")
def pg():
    if not os.path.exists(LIB):
        pytest.fail(f"{LIB} is missing: run `make pgext` first", pytrace=False)
    servers = harness.start_clusters(tuple(SERVERS), make=lambda n: GuardedPg(n, **SERVERS[n]))
    try:
        for name in ("shared", "session"):
            s = servers[name]
            # Made by the superuser: even their code cannot move a session's tenant. A SET
            # clause is applied while PostgreSQL validates the body, and refused like any
            # other change, unless check_function_bodies is off (as in pg_restore).
            s.sql("""
                SET check_function_bodies = off;
                CREATE FUNCTION tg_switch(t text) RETURNS text LANGUAGE plpgsql AS
                  $$BEGIN RETURN set_config('app.tenant_id', t, false); END$$;
                CREATE FUNCTION tg_definer(t text) RETURNS text LANGUAGE plpgsql
                  SECURITY DEFINER AS
                  $$BEGIN RETURN set_config('app.tenant_id', t, false); END$$;
                CREATE FUNCTION tg_clause() RETURNS text LANGUAGE sql
                  SET app.tenant_id = '42' AS $$SELECT current_setting('app.tenant_id')$$;
                CREATE ROLE tgrole LOGIN PASSWORD 'tgpw';
                ALTER ROLE tgrole IN DATABASE appdb SET app.tenant_id = 'r1';
                """, dbname="appdb")
        yield servers
    finally:
        for s in servers.values():
            s.cleanup()


@pytest.fixture(scope="module")
def routers(request, pg):
    """routers(server, **router_keys) -> a running router whose one cluster is that server;
    made once per (server, keys) for the module, then stopped and checked."""
    made = {}
    request.module._tr_module_routers = []

    def get(server, **keys):
        k = (server, tuple(sorted(keys.items())))
        if k not in made:
            r = harness.Router({server: pg[server]}, overrides={"router": keys})
            request.module._tr_module_routers.append(r)
            made[k] = r
            r.start()
        return made[k]

    yield get
    problems = []
    for r in made.values():
        died = r.proc is not None and r.proc.poll() is not None
        try:
            rc = r.stop()
            if died or rc not in (0, None):
                problems.append(f"router exited {rc}{' before the end' if died else ''}")
        except AssertionError as e:
            problems.append(str(e))
        rep = r.sanitizer_report()
        if rep:
            problems.append(f"router sanitizer report:\n{rep}")
        if problems:
            print(f"\n--- router log tail ---\n{r.log_tail(80)}")
        r.close()
    request.module._tr_module_routers = []
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def direct(srv, tenant=TENANT, user="app", password=harness.APP_PASSWORD):
    opts = f"-c app.tenant_id={tenant}" if tenant is not None else None
    kw = {"options": opts} if opts else {}
    return psycopg.connect(host="127.0.0.1", port=srv.port, user=user, password=password,
                           dbname="appdb", autocommit=True, connect_timeout=5, **kw)


def tenant_of(conn):
    return conn.execute("SELECT current_setting('app.tenant_id')").fetchone()[0]


# --- what must be refused ----------------------------------------------------------------------
# Each runs its statements in order; the first that fails is the refusal.

def _begin_set_local(conn):
    conn.execute("BEGIN")
    try:
        conn.execute("SET LOCAL app.tenant_id = '42'")
    finally:
        conn.execute("ROLLBACK")


BYPASSES = {
    "set": ["SET app.tenant_id = '42'"],
    "set_upper_case": ["SET APP.TENANT_ID = '42'"],
    "set_local": _begin_set_local,
    "reset": ["RESET app.tenant_id"],
    "set_to_default": ["SET app.tenant_id TO DEFAULT"],
    "set_config": ["SELECT set_config('app.tenant_id','42',false)"],
    "set_config_escape": [r"SELECT set_config(E'app.tenant\x5fid','42',false)"],
    "set_unicode_ident": ['SET U&"app.tenant\\005fid" = \'42\''],
    "set_config_subquery": ["SELECT set_config(k,'42',false) FROM (SELECT 'app.tenant_id' k) s"],
    "prepare_execute": ["PREPARE p1(text) AS SELECT set_config('app.tenant_id',$1,false)",
                        "EXECUTE p1('42')"],
    "plpgsql_function": ["SELECT tg_switch('42')"],
    "security_definer": ["SELECT tg_definer('42')"],
    "function_set_clause": ["SELECT tg_clause()"],
    "do_block": ["DO $$BEGIN PERFORM set_config('app.tenant_id', '42', false); END$$"],
}


def run_bypass(conn, case):
    steps = BYPASSES[case]
    with pytest.raises(psycopg.Error) as ei:
        if callable(steps):
            steps(conn)
        else:
            for sql in steps:
                conn.execute(sql)
    return ei.value


def via(pg, routers, path, server):
    """A connection with tenant t1: direct to the server, or through a router."""
    if path == "direct":
        return direct(pg[server])
    return routers(server, guard=path.split("_")[1], guard_server_check="on").connect(TENANT)


@pytest.mark.parametrize("case", sorted(BYPASSES))
@pytest.mark.parametrize("path", ["direct", "router_off", "router_on"])
@pytest.mark.parametrize("server", ["shared", "session"])
def test_server_refuses_tenant_change(pg, routers, server, path, case):
    with via(pg, routers, path, server) as conn:
        err = run_bypass(conn, case)
        assert err.sqlstate == "42501", f"{case}: {err.sqlstate} {err}"
        if path != "router_on":
            # Nothing in between read the SQL: the server refused it.
            assert err.diag.message_primary.startswith("tenant_guard: "), err.diag.message_primary
        assert tenant_of(conn) == TENANT
        # The session goes on, with its tenant.
        assert conn.execute("SELECT 1").fetchone() == (1,)


def function_call(oid, args):
    """FunctionCall ('F'): text-format arguments, text result."""
    body = struct.pack("!IH", oid, 1) + struct.pack("!H", 0) + struct.pack("!H", len(args))
    for a in args:
        b = a.encode()
        body += struct.pack("!i", len(b)) + b
    body += struct.pack("!H", 0)
    return b"F" + struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize("path", ["direct", "router_off", "router_on"])
@pytest.mark.parametrize("server", ["shared", "session"])
def test_server_refuses_function_call_message(pg, routers, server, path):
    port = pg[server].port if path == "direct" else routers(
        server, guard=path.split("_")[1], guard_server_check="on").port
    with rawpg.RawConn(port) as c:
        rawpg.login(c, [("user", "trustuser"), ("database", "appdb"),
                        ("options", f"-c app.tenant_id={TENANT}")])
        # 2078 is set_config(text, text, boolean).
        c.send(function_call(2078, [KEY, "42", "false"]))
        msgs = rawpg.read_until_ready(c)
        errs = [rawpg.parse_fields(b) for t, b in msgs if t == "E"]
        assert errs and errs[0]["C"] == "42501", msgs
        assert errs[0]["M"].startswith(FIXED), errs[0]
        assert rawpg.simple_query(c, "SELECT current_setting('app.tenant_id')") == [[TENANT]]


@pytest.mark.parametrize("server", ["shared", "session"])
def test_same_value_and_startup_parameter_accepted(pg, server):
    with direct(pg[server]) as conn:
        # Setting the tenant the session has is no change (tenant-router replays such a SET).
        conn.execute("SET app.tenant_id = 't1'")
        conn.execute("SELECT set_config('app.tenant_id', 't1', false)")
        assert tenant_of(conn) == TENANT
        # RESET ALL and set_config(key, NULL) return to the login value, which is the tenant.
        conn.execute("RESET ALL")
        conn.execute("SELECT set_config('app.tenant_id', NULL, false)")
        assert tenant_of(conn) == TENANT
    # A startup parameter of its own (not options): with session_preload_libraries it is a
    # placeholder until the library loads, and must survive that.
    with rawpg.RawConn(pg[server].port) as c:
        rawpg.login(c, [("user", "trustuser"), ("database", "appdb"), (KEY, "t7")])
        assert rawpg.simple_query(c, "SHOW app.tenant_id") == [["t7"]]
        c.send(rawpg.query_message("SET app.tenant_id = 't8'"))
        msgs = rawpg.read_until_ready(c)
        assert [rawpg.parse_fields(b)["C"] for t, b in msgs if t == "E"] == ["42501"]
        assert rawpg.simple_query(c, "SHOW app.tenant_id") == [["t7"]]


@pytest.mark.parametrize("server", ["shared", "session"])
def test_stored_defaults(pg, server):
    # A user may not plant a tenant for their next connection without one.
    with direct(pg[server]) as conn:
        for sql in ("ALTER ROLE CURRENT_USER SET app.tenant_id = '42'",
                    "ALTER ROLE CURRENT_USER IN DATABASE appdb SET app.tenant_id = '42'"):
            with pytest.raises(psycopg.Error) as ei:
                conn.execute(sql)
            assert ei.value.sqlstate == "42501"
            assert "only a superuser may store a value" in ei.value.diag.message_primary
    # What a superuser stored applies at login, and is then fixed; the startup packet wins.
    srv = pg[server]
    with direct(srv, tenant=None, user="tgrole", password="tgpw") as conn:
        assert tenant_of(conn) == "r1"
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SET app.tenant_id = '42'")
        assert ei.value.sqlstate == "42501"
        assert tenant_of(conn) == "r1"
    with direct(srv, tenant="t2", user="tgrole", password="tgpw") as conn:
        assert tenant_of(conn) == "t2"


def test_no_tenant_at_login_sets_one_once(pg):
    """Without tenant_guard.secret: a session that logged in without a tenant chooses one
    once, and keeps it (RESET ALL only empties it; it cannot become another)."""
    with direct(pg["shared"], tenant=None) as conn:
        assert tenant_of(conn) == ""
        conn.execute("SET app.tenant_id = 't5'")
        assert tenant_of(conn) == "t5"
        for sql in ("SET app.tenant_id = 't6'", "RESET app.tenant_id",
                    "SELECT set_config('app.tenant_id', 't6', false)"):
            with pytest.raises(psycopg.Error) as ei:
                conn.execute(sql)
            assert ei.value.sqlstate == "42501", sql
            assert tenant_of(conn) == "t5"
        conn.execute("SET app.tenant_id = 't5'")
        conn.execute("RESET ALL")
        assert tenant_of(conn) == ""
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SET app.tenant_id = 't6'")
        assert ei.value.sqlstate == "42501"
        conn.execute("SET app.tenant_id = 't5'")
        assert tenant_of(conn) == "t5"
    # A rolled-back first choice still fixes the session: it cannot try another.
    with direct(pg["shared"], tenant=None) as conn:
        conn.execute("BEGIN")
        conn.execute("SET LOCAL app.tenant_id = 't5'")
        conn.execute("ROLLBACK")
        assert tenant_of(conn) == ""
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SET app.tenant_id = 't6'")
        assert ei.value.sqlstate == "42501"


def sign(value, secret=SECRET):
    return value + ":" + hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()


def test_signed_values(pg):
    """With tenant_guard.secret: VALUE:HMAC changes the tenant to VALUE, nothing else does."""
    srv = pg["session"]
    # Not even a session that logged in without a tenant may choose one unsigned.
    with direct(srv, tenant=None) as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SET app.tenant_id = 't5'")
        assert ei.value.sqlstate == "42501"
        assert "only a signed value" in ei.value.diag.message_detail
        conn.execute(f"SET app.tenant_id = '{sign('t5')}'")
        assert tenant_of(conn) == "t5"
    with direct(srv) as conn:
        conn.execute(f"SET app.tenant_id = '{sign('t2')}'")
        assert tenant_of(conn) == "t2"
        # The signed value is now the session's: repeating it plainly is no change.
        conn.execute("SET app.tenant_id = 't2'")
        # A value with a colon signs as a whole (the signature follows the last colon).
        conn.execute(f"SELECT set_config('app.tenant_id', '{sign('a:b')}', false)")
        assert tenant_of(conn) == "a:b"
        good = sign("t3")
        flipped = good[:-1] + ("1" if good[-1] == "0" else "0")
        bad = [sign("t3", secret="wrong"), flipped, "t3:" + sign("t4").split(":")[1]]
        for v in bad:
            with pytest.raises(psycopg.Error) as ei:
                conn.execute(f"SET app.tenant_id = '{v}'")
            assert ei.value.sqlstate == "42501", v
            assert "signature does not match" in ei.value.diag.message_detail, v
            assert tenant_of(conn) == "a:b"
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SET app.tenant_id = 't3'")
        assert ei.value.sqlstate == "42501"
        # Signed values go through the same check from anywhere, e.g. a function.
        conn.execute(f"SELECT tg_switch('{sign('t9')}')")
        assert tenant_of(conn) == "t9"
    # The secret is not for everyone to read.
    with direct(srv) as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SHOW tenant_guard.secret")
        assert ei.value.sqlstate == "42501"


def test_guard_settings_cannot_be_set_by_sessions(pg):
    for server in ("shared", "session"):
        with direct(pg[server]) as conn:
            for sql in ("SET tenant_guard.key = 'app.other'",
                        "SET tenant_guard.secret = 'mine'"):
                with pytest.raises(psycopg.Error) as ei:
                    conn.execute(sql)
                assert ei.value.sqlstate == "55P02", (sql, ei.value.sqlstate)
        # Nor from the startup packet. With shared_preload_libraries PostgreSQL refuses a
        # sighup setting there; with session_preload_libraries it is a placeholder at login,
        # which the library drops (with a WARNING in the server log) when it defines it.
        kw = dict(host="127.0.0.1", port=pg[server].port, user="app", autocommit=True,
                  password=harness.APP_PASSWORD, dbname="appdb", connect_timeout=5,
                  options="-c tenant_guard.key=app.other")
        if server == "shared":
            with pytest.raises(psycopg.OperationalError) as ei:
                psycopg.connect(**kw)
            assert "cannot be changed" in str(ei.value), ei.value
        else:
            with psycopg.connect(**kw) as conn:
                assert conn.execute("SHOW tenant_guard.key").fetchone()[0] == KEY


def refused_login(router, tenant=TENANT):
    with rawpg.RawConn(router.port) as c:
        c.send(rawpg.startup_packet([("user", "app"), ("database", "appdb"),
                                     ("options", f"-c app.tenant_id={tenant}")]))
        return rawpg.assert_refusal(c, "57P03", timeout=10 * harness.SLOW)


def test_guard_server_check_refuses_host_without_library(pg, routers):
    r = routers("plain", guard_server_check="on")
    f = refused_login(r)
    want = f"host 127.0.0.1:{pg['plain'].port} lacks the tenant_guard extension " \
           "(guard_server_check = on)"
    assert want in f["M"], f
    # Logged once, not at every check.
    harness.wait_until(lambda: r.log_text().count("health: host up") >= 1, 5 * harness.SLOW)
    time.sleep(4 * harness.HEALTH_INTERVAL)
    assert r.log_text().count(f"health: {want}") == 1, r.log_tail()
    # Off (the default), the same host is routed to.
    r2 = routers("plain")
    with r2.connect(TENANT) as conn:
        assert tenant_of(conn) == TENANT


def test_guard_server_check_wants_the_same_key(pg, routers):
    r = routers("shared", guard_server_check="on", tenant_key="app.other")
    with rawpg.RawConn(r.port) as c:
        c.send(rawpg.startup_packet([("user", "app"), ("database", "appdb"),
                                     ("options", "-c app.other=t1")]))
        f = rawpg.assert_refusal(c, "57P03", timeout=10 * harness.SLOW)
    assert "has tenant_guard.key = app.tenant_id, not tenant_key app.other" in f["M"], f


@pytest.mark.parametrize("server", ["shared", "session"])
def test_guard_server_check_routes_to_guarded_host(pg, routers, server):
    r = routers(server, guard_server_check="on")
    with r.connect(TENANT) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == pg[server].port
        assert tenant_of(conn) == TENANT
    assert "lacks the tenant_guard" not in r.log_text()


@pytest.mark.parametrize("server", ["shared", "session"])
def test_parallel_workers_copy_the_tenant(pg, server):
    """Parallel workers restore the leader's settings, which passed the check there."""
    with direct(pg[server]) as conn:
        if server == "session":
            conn.execute(f"SET app.tenant_id = '{sign('t2')}'")
        want = tenant_of(conn)
        conn.execute("SET force_parallel_mode = on")
        conn.execute("SET parallel_setup_cost = 0")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN (ANALYZE, COSTS OFF) SELECT current_setting('app.tenant_id')").fetchall())
        assert "Workers Launched: 1" in plan, plan
        # Under force_parallel_mode the worker evaluates it and returns the row.
        assert tenant_of(conn) == want
