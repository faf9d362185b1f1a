"""The stickiness guard: a spliced session bound to one cluster cannot switch app.tenant_id
to a tenant another cluster owns (guard = on, the default); strict also refuses a switch
within the cluster; off forwards everything.  A refusal is an ordinary ERROR 42501 and the
session stays usable.

Routers are shared per module; every test opens its own sessions.
"""

import re

import psycopg
import pytest

import harness
import rawpg
from harness import SLOW

# Each test runs with pool_mode = none and again with pool_mode = session (conftest.py).
POOL_MODES = ("none", "session")

pytestmark = pytest.mark.timeout(20)

PINS = {"ta": "a", "tb": "b", "ta2": "a", "tb2": "b"}
QR_USER = "qruser"
QR_PASSWORD = "qr-Secret-7"


def pins_overrides(router=None, extra=None):
    o = {"pins": dict(PINS)}
    if router:
        o["router"] = router
    return harness.merge(o, extra)


@pytest.fixture(scope="module")
def g_on(make_module_router):
    """Default guard (on): sessions routed by options / the app.tenant_id parameter."""
    return make_module_router(overrides=pins_overrides())


@pytest.fixture(scope="module")
def g_strict(make_module_router):
    return make_module_router(overrides=pins_overrides({"guard": "strict"}))


@pytest.fixture(scope="module")
def g_off(make_module_router):
    return make_module_router(overrides=pins_overrides({"guard": "off"}))


@pytest.fixture(scope="module")
def g_query(make_module_router, clusters):
    """Default guard, tenant source query: sessions routed by their first SET."""
    harness.ensure_shared_verifier_role(clusters, QR_USER, QR_PASSWORD)
    r = make_module_router(overrides=pins_overrides(
        {"tenant_sources": "options, parameter, query"},
        {"auth": {"auth_file": "userlist.txt"}}), start=False)
    r.write_file("userlist.txt", harness.userlist_text(
        {QR_USER: harness.role_secret(clusters["a"], QR_USER)}))
    r.start()
    return r


def session(request, how, tenant="ta", router_fixture="g_on"):
    """A session bound to tenant's cluster: routed by options, or by its first query."""
    if how == "options":
        return request.getfixturevalue(router_fixture).connect(tenant)
    r = request.getfixturevalue("g_query")
    conn = r.connect(None, user=QR_USER, password=QR_PASSWORD)
    conn.execute(f"SET app.tenant_id = '{tenant}'")
    return conn


def state(conn):
    """(tenant on the server, server port) — SHOW, as the user sees it."""
    return (conn.execute("SHOW app.tenant_id").fetchone()[0],
            conn.execute("SELECT inet_server_port()").fetchone()[0])


def names_cluster(msg, name):
    """msg mentions cluster `name`, e.g. 'cluster "b"' (quotes optional)."""
    return re.search(rf'cluster\W{{0,3}}{re.escape(name)}\b', msg) is not None


def assert_refused(excinfo, tenant, owner, bound):
    e = excinfo.value
    assert isinstance(e, psycopg.errors.InsufficientPrivilege), (type(e), str(e))
    assert e.sqlstate == "42501"
    assert e.diag.severity == "ERROR", e.diag.severity
    msg = e.diag.message_primary or ""
    assert tenant in msg and names_cluster(msg, owner), msg
    if bound is not None:
        assert names_cluster(msg, bound), msg
    assert e.diag.message_hint, f"no HINT with {msg!r}"


SWITCHES = {
    "set": ("SET app.tenant_id = 'tb'", None),
    "set_session_to": ("SET SESSION app.tenant_id TO tb", None),
    "mixed_case": ("SET APP.TENANT_ID = 'tb'", None),
    "set_config": ("SELECT set_config('app.tenant_id', 'tb', false)", None),
    "sqlcommenter": ("/*app.tenant_id='tb'*/ SELECT 1", None),
    "extended_literal": ("SELECT set_config('app.tenant_id', 'tb', %s)", [False]),
    "extended_param": ("SELECT set_config('app.tenant_id', %s, false)", ["tb"]),
}


@pytest.mark.parametrize("form", list(SWITCHES))
@pytest.mark.parametrize("how", ["options", "query"])
def test_guard_refuses_switch_to_other_clusters_tenant(request, clusters, how, form):
    sql, params = SWITCHES[form]
    with session(request, how) as conn:
        before = state(conn)
        assert before == ("ta", clusters["a"].port)
        with pytest.raises(psycopg.Error) as ei:
            conn.execute(sql, params)
        assert_refused(ei, "tb", "b", "a")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert state(conn) == before
        assert conn.execute("SELECT %s::text", ["still-ok"]).fetchone() == ("still-ok",)


@pytest.mark.parametrize("how", ["options", "query"])
def test_guard_allows_switch_within_the_cluster(request, clusters, how):
    with session(request, how) as conn:
        conn.execute("SET app.tenant_id = 'ta2'")
        assert state(conn) == ("ta2", clusters["a"].port)
        assert conn.execute("SELECT set_config('app.tenant_id', %s, false)",
                            ["ta"]).fetchone() == ("ta",)
        assert state(conn) == ("ta", clusters["a"].port)
        conn.execute("/*app.tenant_id='ta2'*/ SELECT 1")
        conn.execute("SET app.tenant_id = 'ta'")  # the same tenant again
        assert state(conn) == ("ta", clusters["a"].port)


def test_guard_on_sessions_of_cluster_b(g_on, clusters):
    with g_on.connect("tb") as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SET app.tenant_id = 'ta2'")
        assert_refused(ei, "ta2", "a", "b")
        conn.execute("SET app.tenant_id = 'tb2'")
        assert state(conn) == ("tb2", clusters["b"].port)


def test_guard_strict_refuses_any_other_tenant(g_strict, clusters):
    with g_strict.connect("ta") as conn:
        for sql, params in (("SET app.tenant_id = 'ta2'", None),
                            ("SELECT set_config('app.tenant_id', 'ta2', false)", None),
                            ("SELECT set_config('app.tenant_id', %s, false)", ["ta2"])):
            with pytest.raises(psycopg.Error) as ei:
                conn.execute(sql, params)
            e = ei.value
            assert e.sqlstate == "42501", (e.sqlstate, str(e))
            assert e.diag.message_hint, "no HINT"
            assert state(conn) == ("ta", clusters["a"].port)
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SET app.tenant_id = 'tb'")
        assert_refused(ei, "tb", "b", None)
        # the same tenant is fine
        conn.execute("SET app.tenant_id = 'ta'")
        assert conn.execute("SELECT set_config('app.tenant_id', 'ta', false)").fetchone() == (
            "ta",)
        assert state(conn) == ("ta", clusters["a"].port)


def test_guard_off_forwards_everything(g_off, clusters):
    with g_off.connect("ta") as conn:
        conn.execute("SET app.tenant_id = 'tb'")
        assert state(conn) == ("tb", clusters["a"].port)  # forwarded; still on a
        assert conn.execute("SELECT set_config('app.tenant_id', %s, false)",
                            ["tb2"]).fetchone() == ("tb2",)
        assert state(conn) == ("tb2", clusters["a"].port)


def test_guard_inside_a_transaction(g_on, clusters):
    with g_on.connect("ta") as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("SET app.tenant_id = 'tb'")
        assert_refused(ei, "tb", "b", "a")
        conn.execute("ROLLBACK")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert state(conn) == ("ta", clusters["a"].port)


def test_guard_mentions_are_not_switches(g_on, clusters):
    with g_on.connect("ta") as conn:
        assert conn.execute("SELECT 'SET app.tenant_id = tb'").fetchone() == (
            "SET app.tenant_id = tb",)
        assert conn.execute("SELECT 2 -- SET app.tenant_id = 'tb'").fetchone() == (2,)
        assert conn.execute("/* note: app.tenant_id is tb here */ SELECT 3").fetchone() == (3,)
        assert conn.execute("SELECT current_setting('app.tenant_id')").fetchone() == ("ta",)
        assert conn.execute("SELECT set_config('app.other', 'tb', false)").fetchone() == ("tb",)
        assert conn.execute("SELECT %s::text", ["SET app.tenant_id = 'tb'"]).fetchone() == (
            "SET app.tenant_id = 'tb'",)
        assert state(conn) == ("ta", clusters["a"].port)


# --- pipelined extended protocol -------------------------------------------------------------

def raw_session(router, tenant="ta"):
    """trustuser session routed by the app.tenant_id startup parameter."""
    if router.pool_mode == "session":
        pytest.skip("a trust login passes through; a pooled router asks trustuser's password")
    c = rawpg.RawConn(router.port, timeout=5 * SLOW)
    rawpg.login(c, [("user", "trustuser"), ("database", "appdb"), ("app.tenant_id", tenant)],
                timeout=5 * SLOW)
    return c


REFUSED = {
    "literal": ("SELECT set_config('app.tenant_id', 'tb', false)", ()),
    "param": ("SELECT set_config('app.tenant_id', $1, false)", ("tb",)),
}


def check_batch_reply(msgs, kind):
    types = [t for t, _ in msgs]
    want = ["1", "2", "D", "C"]
    assert types[:4] == want, types
    assert rawpg.data_row(msgs[2][1]) == ["1"]
    assert msgs[3][1] == b"SELECT 1\0"
    rest = types[4:]
    if kind == "param" and rest and rest[0] == "1":
        rest = rest[1:]  # the refused Parse may have been forwarded before its Bind was seen
    assert rest == ["E", "Z"], types
    f = rawpg.parse_fields(msgs[len(types) - 2][1])
    assert (f.get("S"), f.get("C")) == ("ERROR", "42501"), f
    assert "tb" in f.get("M", "") and names_cluster(f.get("M", ""), "b"), f
    assert f.get("H"), f


def check_session_after(c, clusters):
    assert rawpg.simple_query(c, "SHOW app.tenant_id") == [["ta"]]
    assert rawpg.simple_query(c, "SELECT inet_server_port()") == [[str(clusters["a"].port)]]
    c.send(rawpg.extended_query("SELECT $1::int + 1", ("41",)) + rawpg.sync_message())
    msgs = rawpg.read_until_ready(c)
    assert [t for t, _ in msgs] == ["1", "2", "D", "C", "Z"], msgs
    assert rawpg.data_row(msgs[2][1]) == ["42"]


@pytest.mark.parametrize("kind", list(REFUSED))
def test_guard_pipelined_batch_order(g_on, clusters, kind):
    sql, params = REFUSED[kind]
    with raw_session(g_on) as c:
        c.send(rawpg.extended_query("SELECT 1") + rawpg.extended_query(sql, params)
               + rawpg.sync_message())
        msgs = rawpg.read_until_ready(c)
        check_batch_reply(msgs, kind)
        check_session_after(c, clusters)


@pytest.mark.parametrize("kind", list(REFUSED))
def test_guard_pipelined_statements_after_refusal_are_skipped(g_on, clusters, kind):
    """As PostgreSQL does after an error: nothing until Sync runs."""
    sql, params = REFUSED[kind]
    with raw_session(g_on) as c:
        c.send(rawpg.extended_query("SELECT 1") + rawpg.extended_query(sql, params)
               + rawpg.extended_query("SELECT 2") + rawpg.sync_message())
        msgs = rawpg.read_until_ready(c)
        check_batch_reply(msgs, kind)
        check_session_after(c, clusters)


def test_guard_psycopg_pipeline_mode(g_on, clusters):
    if not psycopg.Pipeline.is_supported():
        pytest.skip("libpq without pipeline mode")
    with g_on.connect("ta") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
            with conn.pipeline():
                c1 = conn.execute("SELECT 1")
                conn.execute("SELECT set_config('app.tenant_id', %s, false)", ["tb"])
        assert c1.fetchone() == (1,)
        assert_refused(ei, "tb", "b", "a")
        assert state(conn) == ("ta", clusters["a"].port)
        with conn.pipeline():
            c2 = conn.execute("SELECT %s::int", [5])
            c3 = conn.execute("SET app.tenant_id = 'ta2'")
        assert c2.fetchone() == (5,)
        assert c3.statusmessage == "SET"
        assert state(conn) == ("ta2", clusters["a"].port)
