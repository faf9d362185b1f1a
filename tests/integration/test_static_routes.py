"""[route.NAME]: a database that goes to one cluster's writer (or one host) whatever the tenant."""

import re

import psycopg
import pytest

import harness


def connect_db(r, dbname, user="postgres", options=None):
    kw = dict(host="127.0.0.1", port=r.port, user=user, dbname=dbname, autocommit=True,
              connect_timeout=5)
    if options:
        kw["options"] = options
    return psycopg.connect(**kw)


def port_of(conn):
    return conn.execute("SELECT inet_server_port()").fetchone()[0]


def ring_tenant(r, cluster):
    return next(t for t, (c, _) in r.route([f"sr{i}" for i in range(50)]).items()
                if c == cluster)


def test_static_route_needs_no_tenant_and_wins_over_one(make_router, clusters):
    r = make_router(overrides={"route.adm": {"database": "postgres", "cluster": "b"}})
    off = r.log_size()
    with connect_db(r, "postgres") as conn:
        assert port_of(conn) == clusters["b"].port
    m = r.wait_log(r"tenant=- cluster=b routed host=127\.0\.0\.1:(\d+) by=route:adm", off)
    assert int(m.group(1)) == clusters["b"].port
    # A tenant of cluster a asking for the routed database still goes where the route says ...
    ta = ring_tenant(r, "a")
    with connect_db(r, "postgres", options=f"-c app.tenant_id={ta}") as conn:
        assert port_of(conn) == clusters["b"].port
    # ... and with any other database it is routed by its tenant as before.
    assert r.server_port(ta) == clusters["a"].port
    # Without a database parameter PostgreSQL opens the user's name: so does the route.
    with psycopg.connect(host="127.0.0.1", port=r.port, user="postgres", autocommit=True,
                         connect_timeout=5, dbname="") as conn:
        assert port_of(conn) == clusters["b"].port
    # Other databases without a tenant are still refused.
    with pytest.raises(psycopg.OperationalError) as ei:
        connect_db(r, "appdb")
    assert "no tenant in the connection" in str(ei.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_static_route_to_a_host(make_router, clusters, host):
    # "localhost" goes through name resolution on the thread pool, 127.0.0.1 does not.
    r = make_router(overrides={
        "route.raw": {"database": "postgres", "host": f"{host}:{clusters['a'].port}"}})
    off = r.log_size()
    with connect_db(r, "postgres") as conn:
        assert port_of(conn) == clusters["a"].port
    r.wait_log(rf"cluster=route:raw routed host={host}:{clusters['a'].port} by=route:raw", off)


def test_static_route_host_down_is_08006(make_router, clusters):
    r = make_router(overrides={
        "route.gone": {"database": "postgres", "host": f"127.0.0.1:{harness.free_port()}"}})
    with pytest.raises(psycopg.OperationalError) as ei:
        connect_db(r, "postgres")
    assert "could not connect" in str(ei.value)


def test_static_route_guard_refuses_any_tenant(make_router, clusters):
    r = make_router(overrides={"route.adm": {"database": "postgres", "cluster": "a"}})
    ta = ring_tenant(r, "a")
    with connect_db(r, "postgres") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
            conn.execute(f"SET app.tenant_id = '{ta}'")
        assert "routed by [route.adm] and has no tenant" in str(ei.value)
        # The session goes on; other settings pass.
        conn.execute("SET statement_timeout = '5s'")
        assert port_of(conn) == clusters["a"].port


def test_static_route_guard_off_forwards(make_router, clusters):
    r = make_router(overrides={"router": {"guard": "off"},
                               "route.adm": {"database": "postgres", "cluster": "a"}})
    with connect_db(r, "postgres") as conn:
        conn.execute("SET app.tenant_id = 'anything'")
        assert conn.execute("SHOW app.tenant_id").fetchone()[0] == "anything"


def test_static_route_config_errors(make_router, clusters):
    r = make_router(start=False)
    a = f"127.0.0.1:{clusters['a'].port}"
    text = harness.render_ini(r.cfg) + (
        "[route.one]\ndatabase = fed\ncluster = zz\n"          # unknown cluster
        "[route.two]\ndatabase = fed2\ncluster = a\nhost = " + a + "\n"  # both
        "[route.three]\ndatabase = fed3\n"                      # neither
        "[route.four]\ndatabase = fed2\ncluster = b\n"         # duplicate database
        "[route.five]\ndatabase = fed5\nhost = nope:port\n"    # bad host
        "[route.six]\ncluster = a\n"                            # no database
        "[route.bad name]\ndatabase = x\ncluster = a\n"         # bad name
        "[route.seven]\ndatabase = fed7\ncluster = a\nweight = 2\n")  # unknown key
    lines = text.splitlines()

    def ln(needle, start=0):
        return next(i + 1 for i, l in enumerate(lines) if i >= start and l == needle)

    r.write_config(raw_ini=text)
    p = r.check()
    assert p.returncode == 1
    got = p.stderr.splitlines()
    want = [
        rf":{ln('cluster = zz')}: \[route\.one\] cluster: unknown cluster \"zz\"$",
        rf":{ln('host = ' + a)}: \[route\.two\]: give cluster or host, not both "
        rf"\(cluster at line {ln('host = ' + a) - 1}\)$",
        rf":{ln('[route.three]')}: \[route\.three\]: give cluster = NAME or host = HOST:PORT$",
        rf":{ln('database = fed2', ln('[route.four]'))}: \[route\.four\] database: \"fed2\" is "
        rf"also the database of \[route\.two\] \(line {ln('database = fed2')}\)$",
        rf":{ln('host = nope:port')}: \[route\.five\] host: \"nope:port\" is not HOST:PORT$",
        rf":{ln('[route.six]')}: \[route\.six\] database: missing",
        rf":{ln('[route.bad name]')}: \[route\.bad name\]: route names are 1 to 43 letters",
        rf":{ln('weight = 2')}: \[route\.seven\] weight: unknown setting$",
    ]
    for w in want:
        assert any(re.search(w, g) for g in got), f"no line /{w}/ in:\n{p.stderr}"
    assert len(got) == len(want), p.stderr


def test_static_route_check_ok_and_reload(make_router, clusters):
    r = make_router(overrides={"route.adm": {"database": "postgres", "cluster": "a"}})
    assert r.check().returncode == 0
    with connect_db(r, "postgres") as conn:
        assert port_of(conn) == clusters["a"].port
    r.write_config({"route.adm": {"cluster": "b"}})
    assert r.reload() == "ok"
    with connect_db(r, "postgres") as conn:
        assert port_of(conn) == clusters["b"].port
