"""The tenant reaches the server as app.tenant_id; everything else passes untouched."""

import pytest

import rawpg

# Each test runs with pool_mode = none and again with pool_mode = session (conftest.py).
POOL_MODES = ("none", "session")


def settings(conn, *names):
    return tuple(conn.execute(f"SELECT current_setting('{n}')").fetchone()[0] for n in names)


def test_startup_tenant_visible_on_server(router, clusters):
    with router.connect("t9") as conn:
        assert settings(conn, "app.tenant_id") == ("t9",)
        port = conn.execute("SELECT inet_server_port()").fetchone()[0]
    assert port == clusters[router.route(["t9"])["t9"][0]].port


def test_startup_other_options_and_params_untouched(router):
    opts = "-c app.tenant_id=5 -c statement_timeout=1234 -c DateStyle=German"
    with router.connect(options=opts, application_name="tr-test-app") as conn:
        tid, st, ds, an = settings(conn, "app.tenant_id", "statement_timeout", "DateStyle",
                                   "application_name")
    assert tid == "5"
    assert st == "1234ms"
    assert ds.startswith("German")
    assert an == "tr-test-app"


def test_startup_timezone_from_pgtz(router, monkeypatch):
    # libpq sends PGTZ as the startup parameter "timezone".
    monkeypatch.setenv("PGTZ", "America/New_York")
    with router.connect("5") as conn:
        assert settings(conn, "TimeZone") == ("America/New_York",)


def test_startup_timezone_from_options(router):
    with router.connect(options="-c app.tenant_id=5 -c TimeZone=Asia/Tokyo") as conn:
        assert settings(conn, "TimeZone", "app.tenant_id") == ("Asia/Tokyo", "5")


@pytest.mark.parametrize("opts", ["-capp.tenant_id=5", "--app.tenant_id=5",
                                  "-c statement_timeout=99 --app.tenant_id=5"])
def test_startup_option_forms(router, clusters, opts):
    with router.connect(options=opts) as conn:
        tid, port = conn.execute(
            "SELECT current_setting('app.tenant_id'), inet_server_port()").fetchone()
    assert tid == "5"
    assert port == clusters[router.route(["5"])["5"][0]].port


def test_startup_escaped_tenant_value(router, clusters):
    with router.connect(options=r"-c app.tenant_id=a\ b") as conn:
        tid, port = conn.execute(
            "SELECT current_setting('app.tenant_id'), inet_server_port()").fetchone()
    assert tid == "a b"
    assert port == clusters[router.route(["a b"])["a b"][0]].port


def test_startup_tenant_as_startup_parameter(router, clusters):
    """Raw startup with app.tenant_id as its own parameter (not in options), trust user."""
    if router.pool_mode == "session":
        pytest.skip("a trust login passes through; a pooled router asks trustuser's password")
    t = "param-7"
    want = clusters[router.route([t])[t][0]].port
    with rawpg.RawConn(router.port) as c:
        rawpg.login(c, [("user", "trustuser"), ("database", "postgres"),
                        ("app.tenant_id", t), ("application_name", "raw")])
        rows = rawpg.simple_query(
            c, "SELECT inet_server_port(), current_setting('app.tenant_id'), "
               "current_setting('application_name')")
        assert rows == [[str(want), t, "raw"]]
        c.send(rawpg.terminate_message())
