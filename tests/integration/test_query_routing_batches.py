"""Routing from the first query, compared with a direct connection to PostgreSQL: several
unnamed SETs in one extended batch, Flush before the tenant is known, NegotiateProtocolVersion
for protocol 3.2 and _pq_ options, and the guard on everything after the routing statement.

Raw-socket clients (rawpg), because libpq neither pipelines nor flushes the way these tests
need.  Each case runs the same bytes against the router (tenant source query, trust at the
router) and against cluster a directly, and compares what comes back.
"""

import struct

import pytest

import rawpg
from harness import SLOW

pytestmark = pytest.mark.timeout(30)

PINS = {"0": "a", "42": "b"}
PARAMS = [("user", "trustuser"), ("database", "appdb")]
T = 5 * SLOW


@pytest.fixture(scope="module")
def qt(make_module_router):
    """Tenant source query, auth_type trust (trustuser is trusted by the servers too)."""
    return make_module_router(overrides={
        "router": {"tenant_sources": "options, parameter, query"},
        "auth": {"auth_type": "trust"},
        "pins": dict(PINS),
    })


def open_router(qt, params=PARAMS, version=rawpg.PROTO_30):
    c = rawpg.RawConn(qt.port, timeout=T)
    msgs = rawpg.login(c, params, version, timeout=T)
    return c, msgs


def open_direct(clusters, params=PARAMS, version=rawpg.PROTO_30):
    c = rawpg.RawConn(clusters["a"].port, timeout=T)
    msgs = rawpg.login(c, params, version, timeout=T)
    return c, msgs


def both(qt, clusters, **kw):
    """(router connection, direct connection), both logged in; the router's has no tenant."""
    return open_router(qt, **kw)[0], open_direct(clusters, **kw)[0]


def recv(conn):
    """The next message but ParameterStatus: the router passes on the server's at routing
    time (values a direct connection had at its login)."""
    while True:
        t, body = conn.recv_msg(T)
        if t != "S":
            return t, body


def recv_n(conn, n):
    return [recv(conn) for _ in range(n)]


def until_ready(conn):
    msgs = []
    while not msgs or msgs[-1][0] != "Z":
        msgs.append(recv(conn))
    return msgs


def nothing_pending(conn, wait=0.3):
    """No byte arrives within wait seconds."""
    conn.sock.settimeout(wait)
    try:
        data = conn.sock.recv(1)
    except (TimeoutError, OSError):
        return True
    raise AssertionError(f"unexpected byte {data!r}")


def types(msgs):
    return [t for t, _ in msgs]


def fields(msgs, t="E"):
    return [rawpg.parse_fields(b) for ty, b in msgs if ty == t]


def route(conn, tenant="0"):
    assert rawpg.simple_query(conn, f"SET app.tenant_id = '{tenant}'") == []


def show(conn, name):
    return rawpg.simple_query(conn, f"SHOW {name}")[0][0]


def server_port(conn):
    return int(rawpg.simple_query(conn, "SELECT inet_server_port()")[0][0])


def set_batch(*sqls, sync=True):
    out = b"".join(rawpg.parse_message(q) + rawpg.bind_message() + rawpg.execute_message()
                   for q in sqls)
    return out + (rawpg.sync_message() if sync else b"")


# --- 1. several unnamed SETs in one batch ------------------------------------------------------

def test_two_unnamed_sets_in_one_batch_are_replayed_in_order(qt, clusters):
    r, d = both(qt, clusters)
    with r, d:
        batch = set_batch("SET search_path = x", "SET statement_timeout = '5s'",
                          "SET search_path = x, public")
        answers = {}
        for name, c in (("router", r), ("direct", d)):
            c.send(batch)
            answers[name] = until_ready(c)
        assert answers["router"] == answers["direct"]
        assert types(answers["router"]) == ["1", "2", "C"] * 3 + ["Z"]
        route(r)
        assert server_port(r) == clusters["a"].port
        for c in (r, d):
            assert show(c, "search_path") == "x, public"
            assert show(c, "statement_timeout") == "5s"


def test_unnamed_statement_rebound_after_a_new_parse(qt, clusters):
    """Bind after a second Parse binds the second statement, as PostgreSQL does."""
    r, d = both(qt, clusters)
    with r, d:
        batch = (rawpg.parse_message("SET work_mem = '3MB'") + rawpg.bind_message()
                 + rawpg.execute_message()
                 + rawpg.parse_message("SET lock_timeout = '7s'")
                 + rawpg.bind_message() + rawpg.execute_message()
                 + rawpg.bind_message() + rawpg.execute_message() + rawpg.sync_message())
        answers = {}
        for name, c in (("router", r), ("direct", d)):
            c.send(batch)
            answers[name] = until_ready(c)
        assert answers["router"] == answers["direct"]
        route(r)
        for c in (r, d):
            assert show(c, "work_mem") == "3MB"
            assert show(c, "lock_timeout") == "7s"


# --- 2. Flush before the tenant --------------------------------------------------------------

def test_flush_is_answered_at_once(qt, clusters):
    r, d = both(qt, clusters)
    with r, d:
        got = {}
        for name, c in (("router", r), ("direct", d)):
            c.send(set_batch("SET search_path = y", sync=False) + rawpg.flush_message())
            first = recv_n(c, 3)
            nothing_pending(c)
            c.send(rawpg.parse_message("SET work_mem = '2MB'") + rawpg.describe_message("S")
                   + rawpg.flush_message())
            second = recv_n(c, 3)
            nothing_pending(c)
            c.send(rawpg.bind_message() + rawpg.execute_message() + rawpg.sync_message())
            got[name] = (first, second, until_ready(c))
        assert got["router"] == got["direct"]
        first, second, third = got["router"]
        assert types(first) == ["1", "2", "C"]
        assert types(second) == ["1", "t", "n"]
        assert types(third) == ["2", "C", "Z"]
        route(r)
        assert server_port(r) == clusters["a"].port
        for c in (r, d):
            assert show(c, "search_path") == "y"
            assert show(c, "work_mem") == "2MB"


def test_flush_that_names_the_tenant_routes(qt, clusters):
    r, d = both(qt, clusters)
    with r, d:
        got = {}
        for name, c in (("router", r), ("direct", d)):
            c.send(set_batch("SET search_path = z", sync=False) + rawpg.flush_message())
            first = recv_n(c, 3)
            c.send(set_batch("SET app.tenant_id = '0'", sync=False) + rawpg.flush_message())
            second = recv_n(c, 3)
            nothing_pending(c)
            c.send(rawpg.sync_message())
            got[name] = (first, second, until_ready(c))
        assert got["router"] == got["direct"]
        assert types(got["router"][1]) == ["1", "2", "C"]
        assert types(got["router"][2]) == ["Z"]
        assert server_port(r) == clusters["a"].port
        for c in (r, d):
            assert show(c, "search_path") == "z"
            assert show(c, "app.tenant_id") == "0"


def test_statement_parsed_before_a_flush_is_bound_after_routing(qt, clusters):
    """P s1 / D / H answered by the router, then B s1 / E and the tenant in the same batch:
    s1 must exist on the server."""
    r, d = both(qt, clusters)
    with r, d:
        got = {}
        for name, c in (("router", r), ("direct", d)):
            c.send(rawpg.parse_message("SET search_path = w", name="s1")
                   + rawpg.describe_message("S", "s1") + rawpg.flush_message())
            first = recv_n(c, 3)
            c.send(rawpg.bind_message(stmt="s1") + rawpg.execute_message()
                   + set_batch("SET app.tenant_id = '0'"))
            got[name] = (first, until_ready(c))
        assert got["router"] == got["direct"]
        assert types(got["router"][0]) == ["1", "t", "n"]
        assert types(got["router"][1]) == ["2", "C", "1", "2", "C", "Z"]
        assert server_port(r) == clusters["a"].port
        for c in (r, d):
            assert show(c, "search_path") == "w"


def test_failed_batch_after_a_flush_drops_its_sets(qt, clusters):
    """An error before Sync ends the batch's implicit transaction: its SETs do not last."""
    with open_router(qt)[0] as r:
        r.send(set_batch("SET search_path = v", sync=False) + rawpg.flush_message())
        assert types(recv_n(r, 3)) == ["1", "2", "C"]
        r.send(set_batch("SELECT 1"))
        msgs = until_ready(r)
        assert types(msgs) == ["E", "Z"]
        assert fields(msgs)[0]["C"] == "08004"
        route(r)
        assert show(r, "search_path") == '"$user", public'


# --- 3. NegotiateProtocolVersion -------------------------------------------------------------

@pytest.mark.parametrize("version,extra", [
    (rawpg.PROTO_32, [("_pq_.foo", "bar"), ("_pq_.other", "1")]),
    (rawpg.PROTO_32, []),
    (rawpg.PROTO_30, [("_pq_.foo", "bar")]),
])
def test_negotiate_protocol_version_as_direct(qt, clusters, version, extra):
    params = PARAMS[:1] + extra + PARAMS[1:]
    r, rmsgs = open_router(qt, params=params, version=version)
    d, dmsgs = open_direct(clusters, params=params, version=version)
    with r, d:
        assert dmsgs[0][0] == "v", dmsgs[:2]
        assert rmsgs[0] == dmsgs[0], (rmsgs[0], dmsgs[0])
        (minor, n) = struct.unpack("!II", rmsgs[0][1][:8])
        assert n == len(extra)
        assert types(rmsgs)[1] == "R"
        route(r)
        assert server_port(r) == clusters["a"].port
        assert rawpg.simple_query(r, "SELECT 1") == [["1"]]


def test_no_negotiate_for_plain_30(qt):
    r, msgs = open_router(qt)
    with r:
        assert "v" not in types(msgs)


def test_negotiate_comes_before_the_password_request(make_router, clusters):
    """With a password at the router, 'v' comes first, as PostgreSQL sends it."""
    r = make_router(overrides={
        "router": {"tenant_sources": "options, parameter, query"},
        "auth": {"auth_type": "md5", "auth_file": "userlist.txt"},
        "pins": dict(PINS)}, start=False)
    r.write_file("userlist.txt", '"trustuser" "pw"\n')
    r.start()
    with rawpg.RawConn(r.port, timeout=T) as c:
        c.send(rawpg.startup_packet(PARAMS + [("_pq_.foo", "x")], rawpg.PROTO_32))
        t, body = c.recv_msg(T)
        assert t == "v", (t, body)
        t, body = c.recv_msg(T)
        assert t == "R" and struct.unpack("!I", body[:4])[0] == 5


# --- 4. everything after the routing statement goes through the guard -------------------------

def assert_guard_error(msgs):
    errs = fields(msgs)
    assert len(errs) == 1, msgs
    assert errs[0]["C"] == "42501" and errs[0]["S"] == "ERROR", errs[0]
    assert '"42"' in errs[0]["M"], errs[0]


def after_check(r, clusters):
    assert show(r, "app.tenant_id") == "0"
    assert server_port(r) == clusters["a"].port


def test_pipelined_switch_after_routing_simple(qt, clusters):
    with open_router(qt)[0] as r:
        r.send(rawpg.query_message("SET app.tenant_id = '0'")
               + rawpg.query_message("SET app.tenant_id = '42'")
               + rawpg.query_message("SELECT current_setting('app.tenant_id')"))
        first = until_ready(r)
        second = until_ready(r)
        third = until_ready(r)
        assert types(first) == ["C", "Z"]
        assert types(second) == ["E", "Z"]
        assert_guard_error(second)
        assert [rawpg.data_row(b) for t, b in third if t == "D"] == [["0"]]
        after_check(r, clusters)


def test_pipelined_switch_after_routing_extended(qt, clusters):
    with open_router(qt)[0] as r:
        r.send(set_batch("SET app.tenant_id = '0'") + set_batch("SET app.tenant_id = '42'")
               + rawpg.query_message("SELECT current_setting('app.tenant_id')"))
        first = until_ready(r)
        second = until_ready(r)
        third = until_ready(r)
        assert types(first) == ["1", "2", "C", "Z"]
        assert types(second) == ["E", "Z"]
        assert_guard_error(second)
        assert [rawpg.data_row(b) for t, b in third if t == "D"] == [["0"]]
        after_check(r, clusters)


def test_pipelined_switch_after_routing_with_replays(qt, clusters):
    """SETs to replay first, then the routing Query and a switch in the same write."""
    with open_router(qt)[0] as r:
        assert rawpg.simple_query(r, "SET work_mem = '5MB'") == []
        r.send(rawpg.query_message("SET app.tenant_id = '0'")
               + set_batch("SET app.tenant_id = '42'"))
        assert types(until_ready(r)) == ["C", "Z"]
        second = until_ready(r)
        assert types(second) == ["E", "Z"]
        assert_guard_error(second)
        after_check(r, clusters)
        assert show(r, "work_mem") == "5MB"


def test_switch_in_the_routing_batch_is_refused(qt, clusters):
    """A statement of the routing batch that sets the key to what the router cannot read
    would have run unchecked: the routing batch goes through the guard too."""
    with open_router(qt)[0] as r:
        r.send(set_batch("SET app.tenant_id = '0'",
                         "SELECT set_config('app.tenant_id', lower('42'), false)"))
        msgs = until_ready(r)
        assert types(msgs) == ["1", "2", "C", "E", "Z"]
        errs = fields(msgs)
        assert errs[0]["C"] == "42501", errs
        after_check(r, clusters)


def test_statement_prepared_in_the_routing_batch_stays_guarded(qt, clusters):
    """set_config(key, $1) prepared in the routing batch: a later Bind of another cluster's
    tenant is refused, as on a session routed by its connection."""
    sql = "SELECT set_config('app.tenant_id', $1, false)"
    with open_router(qt)[0] as r:
        r.send(rawpg.parse_message(sql, name="sw") + rawpg.bind_message(["0"], stmt="sw")
               + rawpg.execute_message() + rawpg.sync_message())
        assert types(until_ready(r)) == ["1", "2", "D", "C", "Z"]
        r.send(rawpg.bind_message(["42"], stmt="sw") + rawpg.execute_message()
               + rawpg.sync_message())
        msgs = until_ready(r)
        assert types(msgs) == ["E", "Z"]
        assert_guard_error(msgs)
        after_check(r, clusters)


def test_long_routing_query_runs(qt, clusters):
    """A routing Query longer than guard_max_statement (1 MB) that mentions the key: it was
    read whole to route, so it runs (the guard alone would refuse it with 54000)."""
    pad = "x" * (1536 * 1024)
    with open_router(qt)[0] as r:
        r.send(rawpg.query_message(f"SET app.tenant_id = '0'; SELECT length('{pad}')")
               + rawpg.query_message("SET app.tenant_id = '42'"))
        first = until_ready(r)
        assert types(first) == ["C", "T", "D", "C", "Z"], types(first)
        assert rawpg.data_row(first[2][1]) == [str(len(pad))]
        second = until_ready(r)
        assert types(second) == ["E", "Z"]
        assert_guard_error(second)
        after_check(r, clusters)


def test_many_sets_in_one_batch(qt, clusters):
    """More Parses in one batch than the router used to track (16)."""
    with open_router(qt)[0] as r:
        sqls = [f"SET application_name = 'n{i}'" for i in range(40)]
        r.send(set_batch(*sqls))
        assert types(until_ready(r)) == ["1", "2", "C"] * 40 + ["Z"]
        route(r)
        assert show(r, "application_name") == "n39"


def test_flush_with_a_statement_the_router_cannot_answer_waits_for_sync(qt, clusters):
    """Parse + Describe of set_config($1) before the tenant: only the server can describe it,
    and only the Bind names the tenant, so the router holds the batch until its Sync."""
    sql = "SELECT set_config('app.tenant_id', $1, false)"
    with open_router(qt)[0] as r:
        r.send(rawpg.parse_message(sql) + rawpg.describe_message("S") + rawpg.flush_message())
        nothing_pending(r)
        r.send(rawpg.bind_message(["0"]) + rawpg.execute_message() + rawpg.sync_message())
        assert types(until_ready(r)) == ["1", "t", "T", "2", "D", "C", "Z"]
        after_check(r, clusters)


def test_guard_off_pipelined_switch_runs(make_router, clusters):
    """guard = off: everything after the routing statement is forwarded, as before."""
    r = make_router(overrides={
        "router": {"tenant_sources": "options, parameter, query", "guard": "off"},
        "auth": {"auth_type": "trust"},
        "pins": dict(PINS)})
    with open_router(r)[0] as c:
        c.send(rawpg.query_message("SET app.tenant_id = '0'")
               + set_batch("SET app.tenant_id = '42'"))
        assert types(until_ready(c)) == ["C", "Z"]
        assert types(until_ready(c)) == ["1", "2", "C", "Z"]
        assert show(c, "app.tenant_id") == "42"
        assert server_port(c) == clusters["a"].port
