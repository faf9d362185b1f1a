"""Sanity checks of the fixtures themselves, straight to PostgreSQL (no router).

If these fail, every router test would fail for reasons that are not the router's.
"""

import psycopg
import pytest

import harness


def test_servers_direct_auth_methods(clusters):
    for name, srv in clusters.items():
        with srv.connect(user="app", dbname="appdb", password=harness.APP_PASSWORD) as c:
            assert c.execute("SELECT inet_server_port()").fetchone()[0] == srv.port
        with srv.connect(user="md5user", dbname="postgres", password=harness.MD5_PASSWORD) as c:
            assert c.execute("SELECT current_user").fetchone()[0] == "md5user"
        with srv.connect(user="trustuser", dbname="postgres") as c:
            assert c.execute("SELECT current_user").fetchone()[0] == "trustuser"
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            srv.connect(user="app", dbname="appdb", password="wrong")
        rows = srv.sql("SELECT rolname, left(rolpassword, 5) FROM pg_authid "
                       "WHERE rolname IN ('app', 'md5user') ORDER BY 1")
        assert rows == [("app", "SCRAM"), ("md5user", "md5" + rows[1][1][3:])]
        assert rows[1][1].startswith("md5")
        assert srv.port != clusters["b" if name == "a" else "a"].port


def test_servers_direct_custom_setting_in_options(clusters):
    srv = clusters["a"]
    with srv.connect(user="app", dbname="appdb", password=harness.APP_PASSWORD,
                     options="-c app.tenant_id=x") as c:
        assert c.execute("SELECT current_setting('app.tenant_id')").fetchone()[0] == "x"
