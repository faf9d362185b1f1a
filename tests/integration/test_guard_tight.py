"""The guard, tightened: the ways around it that the router can see are refused, and a refusal
fails in place with PostgreSQL's own semantics (the server fails a marker where the refused
message stood: the implicit transaction rolls back, a block goes to E, the rest of the batch is
skipped), compared message for message with a direct connection given an erroring statement in
that place.

Session tenant ta lives on cluster a; tb on cluster b. What only the server can stop (functions,
DO blocks with dynamic SQL, ALTER ROLE ... SET) is the tenant_guard extension's job.
"""

import struct

import pytest

import harness
import rawpg
from harness import SLOW

pytestmark = pytest.mark.timeout(60)

PINS = {"ta": "a", "tb": "b"}
USER = [("user", "trustuser"), ("database", "appdb")]


@pytest.fixture(scope="module")
def g_on(make_module_router):
    return make_module_router(overrides={"pins": dict(PINS)})


def raw(port, tenant="ta"):
    c = rawpg.RawConn(port, timeout=10 * SLOW)
    params = list(USER)
    if tenant is not None:
        params.append(("app.tenant_id", tenant))
    rawpg.login(c, params, timeout=10 * SLOW)
    return c


def answers(c):
    return rawpg.read_until_ready(c, timeout=10 * SLOW)


def codes(msgs):
    return [rawpg.parse_fields(b).get("C") for t, b in msgs if t == "E"]


def shape(msgs):
    """Message types, with the SQLSTATE of errors and the status of ReadyForQuery."""
    out = []
    for t, b in msgs:
        if t == "E":
            out.append("E")
        elif t == "Z":
            out.append("Z" + b.decode())
        else:
            out.append(t)
    return out


def tenant_of(c):
    return rawpg.simple_query(c, "SHOW app.tenant_id")[0][0]


def function_call(oid, args, fmt=0):
    """FunctionCall ('F'): oid, one format code for all arguments, the arguments, text result."""
    body = struct.pack("!IHH", oid, 1, fmt) + struct.pack("!H", len(args))
    for a in args:
        if a is None:
            body += struct.pack("!i", -1)
        else:
            b = a.encode()
            body += struct.pack("!i", len(b)) + b
    body += struct.pack("!H", 0)
    return b"F" + struct.pack("!I", len(body) + 4) + body


BYPASSES = {
    "escaped E string": "SELECT set_config(E'app.tenant\\x5fid', 'tb', false)",
    "unicode identifier": "SET U&\"app.tenant\\005fid\" = 'tb'",
    "unicode string": "SELECT set_config(U&'app.tenant\\005fid', 'tb', false)",
    "key from a subquery": "SELECT set_config(k, 'tb', false) FROM (SELECT 'app.tenant_id' k) s",
    "key concatenated": "SELECT set_config('app.tenant_' || 'id', 'tb', false)",
    "PREPARE with a parameter": "PREPARE p1(text) AS SELECT set_config('app.tenant_id', $1, false)",
    "DO block": "DO $$BEGIN PERFORM set_config('app.tenant_' || 'id', 'tb', false); END$$",
}


@pytest.mark.parametrize("name", sorted(BYPASSES))
def test_bypass_refused(g_on, name):
    with raw(g_on.port) as c:
        c.send(rawpg.query_message(BYPASSES[name]))
        msgs = answers(c)
        assert codes(msgs) == ["42501"], (name, msgs)
        assert "tenant-router" in rawpg.parse_fields(
            [b for t, b in msgs if t == "E"][0])["M"]
        assert tenant_of(c) == "ta"
        # The session goes on; for PREPARE, nothing was prepared.
        if name.startswith("PREPARE"):
            c.send(rawpg.query_message("EXECUTE p1('tb')"))
            assert codes(answers(c)) == ["26000"]
            assert tenant_of(c) == "ta"


def test_function_call_set_config(g_on):
    """A FunctionCall of set_config (oid 2078) is judged like SQL: another cluster's tenant is
    refused, this cluster's goes on; other functions pass."""
    with raw(g_on.port) as c:
        for fmt in (0, 1):
            c.send(function_call(2078, ["app.tenant_id", "tb", "false"], fmt))
            msgs = answers(c)
            assert codes(msgs) == ["42501"] and shape(msgs) == ["E", "ZI"], msgs
            assert tenant_of(c) == "ta"
        c.send(function_call(2078, ["APP.Tenant_Id", "tb", "false"]))
        assert codes(answers(c)) == ["42501"]
        c.send(function_call(2078, ["app.tenant_id", "ta", "false"]))
        msgs = answers(c)
        assert shape(msgs) == ["V", "ZI"], msgs
        c.send(function_call(2078, ["work_mem", "8MB", "false"]))
        assert shape(answers(c)) == ["V", "ZI"]
        assert rawpg.simple_query(c, "SHOW work_mem") == [["8MB"]]
        assert tenant_of(c) == "ta"


def test_execute_of_flagged_protocol_statement(g_on):
    """A statement Parsed with set_config(key, $1) may not be run by SQL EXECUTE, whose
    arguments the router does not tie back to it."""
    with raw(g_on.port) as c:
        c.send(rawpg.parse_message("SELECT set_config('app.tenant_id', $1, false)", name="s9")
               + rawpg.sync_message())
        assert shape(answers(c)) == ["1", "ZI"]
        c.send(rawpg.query_message("EXECUTE s9('tb')"))
        assert codes(answers(c)) == ["42501"]
        assert tenant_of(c) == "ta"
        # Through Bind it is read and judged.
        c.send(rawpg.bind_message(["tb"], stmt="s9") + rawpg.execute_message()
               + rawpg.sync_message())
        assert codes(answers(c)) == ["42501"]
        c.send(rawpg.bind_message(["ta"], stmt="s9") + rawpg.execute_message()
               + rawpg.sync_message())
        assert codes(answers(c)) == []
        assert tenant_of(c) == "ta"


def test_setting_named_by_a_parameter(g_on):
    """set_config($1, $2): Bind decides. The key with another cluster's tenant is refused; any
    other setting goes on."""
    sql = "SELECT set_config($1, $2, false)"
    with raw(g_on.port) as c:
        for name, value, want in (("app.tenant_id", "tb", ["42501"]),
                                  ("App.Tenant_ID", "tb", ["42501"]),
                                  ("search_path", "public", []),
                                  ("app.tenant_id", "ta", [])):
            c.send(rawpg.extended_query(sql, (name, value)) + rawpg.sync_message())
            assert codes(answers(c)) == want, (name, value)
            assert tenant_of(c) == "ta"


def test_batch_rolls_back_as_postgresql(g_on, clusters):
    """insert 1, a refused SET, insert 2, Sync: nothing is committed, and the client sees what
    PostgreSQL shows for a statement that fails at Parse in that place."""
    def run(port, middle, tenant):
        with raw(port, tenant) as c:
            rawpg.simple_query(c, "CREATE TEMP TABLE t(x int)")
            c.send(rawpg.extended_query("INSERT INTO t VALUES (1)")
                   + rawpg.extended_query(middle)
                   + rawpg.extended_query("INSERT INTO t VALUES (2)")
                   + rawpg.sync_message())
            msgs = answers(c)
            rows = rawpg.simple_query(c, "SELECT count(*) FROM t")
            return shape(msgs), codes(msgs), rows

    direct = run(clusters["a"].port, "SELECT * FROM no_such_table", None)
    routed = run(g_on.port, "SET app.tenant_id = 'tb'", "ta")
    assert direct[0] == routed[0] == ["1", "2", "C", "E", "ZI"], (direct, routed)
    assert direct[1] == ["42P01"] and routed[1] == ["42501"]
    assert direct[2] == routed[2] == [["0"]]


def test_block_aborts_as_postgresql(g_on, clusters):
    """Inside BEGIN a refusal leaves the block failed ('E'); COMMIT then rolls back."""
    def run(port, middle, tenant):
        with raw(port, tenant) as c:
            rawpg.simple_query(c, "CREATE TEMP TABLE t(x int)")
            out = []
            for sql in ("BEGIN", "INSERT INTO t VALUES (1)", middle,
                        "INSERT INTO t VALUES (2)", "COMMIT"):
                c.send(rawpg.query_message(sql))
                msgs = answers(c)
                out.append((shape(msgs), [x[:2] for x in codes(msgs)]))
            rows = rawpg.simple_query(c, "SELECT count(*) FROM t")
            return out, rows

    direct = run(clusters["a"].port, "SELECT * FROM no_such_table", None)
    routed = run(g_on.port, "SET app.tenant_id = 'tb'", "ta")
    # The same messages and transaction states; only the refusal's SQLSTATE differs.
    assert [s for s, _ in direct[0]] == [s for s, _ in routed[0]], (direct, routed)
    assert routed[0][2] == (["E", "ZE"], ["42"]) and routed[0][3][0] == ["E", "ZE"]
    assert routed[0][4][0] == ["C", "ZI"]
    assert direct[1] == routed[1] == [["0"]]


def test_skipped_query_does_not_shift_refusals(g_on, clusters):
    """A Query the server skips after an extended-protocol error gets no ReadyForQuery; a
    refusal after it still gets exactly one 42501, in its place."""
    def run(port, refused, tenant):
        with raw(port, tenant) as c:
            c.send(rawpg.parse_message("selec bad") + rawpg.query_message("SELECT 1")
                   + rawpg.sync_message())
            first = answers(c)
            c.send(rawpg.query_message(refused))
            second = answers(c)
            c.send(rawpg.query_message("SELECT 2"))
            third = answers(c)
            return shape(first), codes(first), shape(second), codes(second), shape(third)

    direct = run(clusters["a"].port, "SELECT * FROM no_such_table", None)
    routed = run(g_on.port, "SET app.tenant_id = 'tb'", "ta")
    assert direct[0] == routed[0] == ["E", "ZI"] and routed[1] == ["42601"]
    assert routed[2] == direct[2] == ["E", "ZI"] and routed[3] == ["42501"]
    assert routed[4] == direct[4] == ["T", "D", "C", "ZI"]
