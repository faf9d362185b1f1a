"""`tenant-router federation`: postgres_fdw views over every cluster, reached through a static route.

Each cluster gets schema fedtest in appdb with rows of its own tenants; cluster a also hosts the
federation database federation_test.  `federation --apply` (and, separately, the printed SQL run
by psql) builds federation.<table> views with a `cluster` column; a client without a tenant
reaches them through the router by `[route.fed] database = federation_test`.
"""

import os
import subprocess

import psycopg
import pytest

import harness

FEDDB = "federation_test"
PSQL = os.path.join(harness.PGBIN, "psql")

# (cluster, tenant_id, id, note): rows each cluster holds for its own tenants.
ROWS = {
    "a": [("t-a1", 1, "alpha"), ("t-a2", 2, "it's")],
    "b": [("t-b1", 10, "beta"), ("t-b2", 11, "back\\slash"), ("t-b3", 12, None)],
}


def setup_cluster(srv, name):
    with srv.connect(dbname="appdb") as conn:
        conn.execute("DROP SCHEMA IF EXISTS fedtest CASCADE")
        conn.execute("CREATE SCHEMA fedtest")
        conn.execute("CREATE TABLE fedtest.items (tenant_id text, id int, note text)")
        for row in ROWS[name]:
            conn.execute("INSERT INTO fedtest.items VALUES (%s, %s, %s)", row)
        # Odd names must survive quoting end to end.
        conn.execute('CREATE TABLE fedtest."Odd ""Name""" ("Mixed Col" int, "select" text)')
        conn.execute('INSERT INTO fedtest."Odd ""Name""" VALUES (%s, %s)',
                     (1 if name == "a" else 2, name))
        # A column whose type differs between clusters is left out of the view.
        typ = "int" if name == "a" else "text"
        conn.execute(f"CREATE TABLE fedtest.drift (k int, v {typ})")
        conn.execute("INSERT INTO fedtest.drift VALUES (%s, %s)", (ord(name), "7"))
        if name == "a":
            conn.execute("CREATE TABLE fedtest.only_a (x int)")
            conn.execute("INSERT INTO fedtest.only_a VALUES (42)")


@pytest.fixture(scope="module")
def fed(clusters):
    for name, srv in clusters.items():
        setup_cluster(srv, name)
    a = clusters["a"]
    a.sql(f"DROP DATABASE IF EXISTS {FEDDB} WITH (FORCE)")
    a.sql(f"CREATE DATABASE {FEDDB}")
    yield
    a.sql(f"DROP DATABASE IF EXISTS {FEDDB} WITH (FORCE)")
    for srv in clusters.values():
        with srv.connect(dbname="appdb") as conn:
            conn.execute("DROP SCHEMA IF EXISTS fedtest CASCADE")


def fed_dsn(clusters):
    return f"host=127.0.0.1 port={clusters['a'].port} user=postgres dbname={FEDDB}"


def federation(r, *args, timeout=60):
    return r.run_cli(["federation", "-c", r.ini, "--dbname", "appdb", "--schema", "fedtest",
                      "--user", "postgres", "--grant", "app", *args], timeout=timeout)


def expected_items():
    return sorted((c, t, i, n) for c, rows in ROWS.items() for (t, i, n) in rows)


def fed_rows(conn):
    items = conn.execute(
        "SELECT cluster, tenant_id, id, note FROM federation.items").fetchall()
    odd = conn.execute('SELECT cluster, "Mixed Col", "select" FROM federation."Odd ""Name"""'
                       ).fetchall()
    drift_cols = [r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'federation'"
        " AND table_name = 'drift' ORDER BY ordinal_position").fetchall()]
    only_a = conn.execute("SELECT cluster, x FROM federation.only_a").fetchall()
    return sorted(items), sorted(odd), drift_cols, only_a


WANT = (expected_items(), [("a", 1, "a"), ("b", 2, "b")], ["cluster", "k"], [("a", 42)])


@pytest.fixture
def fed_router(make_router, fed):
    return make_router(overrides={"route.fed": {"database": FEDDB, "cluster": "a"}})


def test_federation_apply_through_static_route(fed_router, clusters):
    r = fed_router
    p = federation(r, "--apply", fed_dsn(clusters))
    assert p.returncode == 0, p.stderr
    assert "federation applied: 4 views in schema federation" in p.stdout
    # What the view builder left out, it says.
    assert "leaves out columns that differ between clusters: v" in p.stderr
    assert "covers 1 of 2 clusters" in p.stderr
    off = r.log_size()
    # No tenant: the static route takes the session to cluster a's writer.
    with psycopg.connect(host="127.0.0.1", port=r.port, user="postgres", dbname=FEDDB,
                         autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == clusters["a"].port
        assert fed_rows(conn) == WANT
    r.wait_log(r"routed host=127\.0\.0\.1:\d+ by=route:fed", off)
    # A non-superuser given SELECT (--grant) reads through the views with the owner's mapping.
    with r.connect(None, dbname=FEDDB) as conn:
        assert sorted(conn.execute("SELECT cluster, id FROM federation.items").fetchall()) == \
            sorted((c, i) for c, _, i, _ in expected_items())


def test_federation_apply_is_idempotent(fed_router, clusters):
    r = fed_router
    for _ in range(2):
        p = federation(r, "--apply", fed_dsn(clusters))
        assert p.returncode == 0, p.stderr
    # New rows show through the views at once: they are not copies.
    clusters["b"].sql("INSERT INTO fedtest.items VALUES ('t-b9', 99, 'new')", dbname="appdb")
    try:
        with clusters["a"].connect(dbname=FEDDB) as conn:
            items = fed_rows(conn)[0]
            assert ("b", "t-b9", 99, "new") in items
            assert len(items) == len(expected_items()) + 1
            n = conn.execute("SELECT count(*) FROM pg_foreign_server").fetchone()[0]
            assert n == 2, "a re-run must replace its servers, not add to them"
    finally:
        clusters["b"].sql("DELETE FROM fedtest.items WHERE id = 99", dbname="appdb")


def test_federation_print_runs_in_psql(fed_router, clusters):
    r = fed_router
    p = federation(r)
    assert p.returncode == 0, p.stderr
    sql = p.stdout
    assert sql.startswith("-- tenant-router federation")
    assert "password" not in sql.split("BEGIN;", 1)[1], "no password was given, none printed"
    clusters["a"].sql(f"DROP DATABASE IF EXISTS {FEDDB} WITH (FORCE)")
    clusters["a"].sql(f"CREATE DATABASE {FEDDB}")
    for _ in range(2):      # the printed script is idempotent too
        q = subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", fed_dsn(clusters)],
                           input=sql, capture_output=True, text=True, timeout=60)
        assert q.returncode == 0, q.stderr
    with clusters["a"].connect(dbname=FEDDB) as conn:
        assert fed_rows(conn) == WANT


def test_federation_password_printed_only_when_given(fed_router):
    p = federation(fed_router, "--password", "s3cr'et")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("password 's3cr''et'") == 2   # one user mapping per cluster


def test_federation_refuses_foreign_objects(fed_router, clusters):
    r = fed_router
    assert federation(r, "--apply", fed_dsn(clusters)).returncode == 0
    with clusters["a"].connect(dbname=FEDDB) as conn:
        conn.execute("DROP SCHEMA IF EXISTS mine CASCADE")
        conn.execute("CREATE SCHEMA mine")
        conn.execute("CREATE TABLE mine.keep (x int)")
    p = federation(r, "--into", "mine", "--apply", fed_dsn(clusters))
    assert p.returncode == 1
    assert "nothing changed" in p.stderr
    assert "schema mine exists and was not made by tenant-router federation" in p.stderr
    with clusters["a"].connect(dbname=FEDDB) as conn:
        # Both the user's schema and the previous federation are untouched.
        assert conn.execute("SELECT count(*) FROM mine.keep").fetchone()[0] == 0
        assert fed_rows(conn) == WANT
        conn.execute("DROP SCHEMA mine CASCADE")


def test_federation_option_errors(fed_router):
    r = fed_router
    p = r.run_cli(["federation", "-c", r.ini, "--user", "x"])
    assert p.returncode == 1 and "--dbname" in p.stderr
    p = federation(r, "--option", "host=evil")
    assert p.returncode == 1 and 'option "host": set by this command' in p.stderr
    p = federation(r, "--option", "password=x")
    assert p.returncode == 1 and "use --user / --password" in p.stderr
    p = federation(r, "--into", "x" * 64)
    assert p.returncode == 1 and "longer than 63 bytes" in p.stderr
    p = r.run_cli(["federation", "-c", r.ini, "--bogus", "1"])
    assert p.returncode == 2 and "usage:" in p.stderr
