"""max_client_conn, SIGHUP reload, --check, SIGTERM drain, pgbench."""

import os
import re
import signal
import subprocess
import time

import psycopg
import pytest

import harness
import rawpg


def test_limits_max_client_conn(make_router, clusters):
    r = make_router(overrides={"router": {"max_client_conn": "3"}})
    held = [r.connect(f"t{i}") for i in range(3)]
    try:
        # The 4th client, on the wire: refused with 53300 (either at accept or after startup).
        with rawpg.RawConn(r.port) as c:
            try:
                t, body = c.recv_msg(timeout=0.5)
                early = (t, body)
            except OSError:
                early = None
            if early is None:
                c.send(rawpg.startup_packet([("user", "app"), ("database", "appdb"),
                                             ("app.tenant_id", "t9")]))
                f = rawpg.assert_refusal(c, "53300")
            else:
                assert early[0] == "E", early
                f = rawpg.parse_fields(early[1])
                assert f.get("C") == "53300" and f.get("S") == "FATAL" and f.get("H"), f
                c.expect_closed()
        assert f["M"].startswith("tenant-router"), f
        # And through libpq.
        with pytest.raises(psycopg.OperationalError, match="tenant-router"):
            r.connect("t9")
        # The held sessions are unaffected.
        for h in held:
            assert h.execute("SELECT 1").fetchone()[0] == 1
        held.pop().close()

        def fourth_ok():
            try:
                held.append(r.connect("t9"))
                return True
            except psycopg.OperationalError:
                return False
        harness.wait_until(fourth_ok, 3 * harness.SLOW, interval=0.1,
                           what="a slot after closing a session")
    finally:
        for h in held:
            h.close()


def tenant_with_ring(router, cluster, prefix="rl-"):
    for t, (c, how) in router.route([f"{prefix}{i}" for i in range(50)]).items():
        if c == cluster and how == "ring":
            return t
    raise AssertionError("no tenant")


@pytest.mark.timeout(90)
def test_reload_pin_change_moves_new_sessions_only(make_router, clusters):
    r = make_router()
    a_port, b_port = clusters["a"].port, clusters["b"].port
    t = tenant_with_ring(r, "a")
    other = tenant_with_ring(r, "b", "rl-other-")
    old = r.connect(t)
    try:
        assert old.execute("SELECT inet_server_port()").fetchone()[0] == a_port

        r.write_config({"pins": {t: "b"}})
        assert r.reload() == "ok", r.log_tail()
        assert r.route([t])[t] == ("b", "pinned")
        assert r.server_port(t) == b_port, "new session after the pin should go to b"
        assert old.execute("SELECT inet_server_port()").fetchone()[0] == a_port, \
            "an open session must stay on its server across a reload"

        # A broken config (pin to an unknown cluster): reload fails, routing unchanged.
        good_ini = open(r.ini).read()
        r.write_config({"pins": {t: "a", "someone": "zzz"}})
        assert r.reload() == "failed"
        assert r.alive()
        assert r.server_port(t) == b_port, "a failed reload changed routing"
        assert r.server_port(other) == b_port

        # Garbage: not INI at all.
        r.write_config(raw_ini="this is [not an ini\n\x01\x02 = = =\n")
        assert r.reload() == "failed"
        assert r.server_port(t) == b_port
        assert old.execute("SELECT inet_server_port()").fetchone()[0] == a_port

        # Back to the good file: reload works again.
        r.write_config(raw_ini=good_ini)
        assert r.reload() == "ok"
        assert r.server_port(t) == b_port
    finally:
        old.close()


def test_reload_pins_file_change(make_router, clusters):
    r = make_router(overrides={"pins": {"file": "pins.txt"}}, pins_file="# none yet\n")
    t = tenant_with_ring(r, "b", "pf-")
    assert r.server_port(t) == clusters["b"].port
    r.write_pins(f"{t} a\n")
    assert r.reload() == "ok"
    assert r.server_port(t) == clusters["a"].port
    # A bad pins file line: reload fails, the previous pins stay.
    r.write_pins(f"{t} b\nthis line has three words\n")
    assert r.reload() == "failed"
    assert r.server_port(t) == clusters["a"].port


def test_check_good_and_broken_configs(make_router):
    r = make_router(start=False)
    ok = r.check()
    assert ok.returncode == 0, ok.stderr
    assert "configuration ok" in ok.stdout

    broken = os.path.join(r.dir, "broken.ini")
    with open(r.ini) as f:
        text = f.read()
    with open(broken, "w") as f:
        f.write(text + "\n[pins]\nsomeone = zzz\n")
    res = r.check(ini=broken)
    assert res.returncode == 1
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert lines and any("zzz" in l for l in lines), res.stderr

    with open(broken, "w") as f:
        f.write(text.replace("max_client_conn = 200", "max_client_conn = abc"))
    res = r.check(ini=broken)
    assert res.returncode == 1
    assert re.search(r"broken\.ini:\d+: .*max_client_conn", res.stderr), res.stderr

    with open(broken, "w") as f:
        f.write(text.replace("[router]\n", "[router]\nno_such_key = 1\n", 1))
    res = r.check(ini=broken)
    assert res.returncode == 1
    assert "no_such_key" in res.stderr


def test_shutdown_sigterm_with_idle_session(make_router):
    r = make_router(overrides={"router": {"shutdown_timeout": "2s"}})
    sess = r.connect("t1")
    try:
        assert sess.execute("SELECT 1").fetchone()[0] == 1
        t0 = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        # New clients are no longer served once shutdown has begun.
        time.sleep(0.2)
        with pytest.raises(psycopg.OperationalError):
            r.connect("t2").close()
        rc = r.proc.wait(2 + 3 * harness.SLOW)
        elapsed = time.monotonic() - t0
        r.returncode = rc
        assert rc == 0, f"exit code {rc}"
        assert elapsed <= 2 + 1.5 * harness.SLOW, f"exited after {elapsed:.2f}s"
    finally:
        sess.close()


def test_shutdown_sigterm_idle_router_is_quick(make_router):
    r = make_router()
    t0 = time.monotonic()
    assert r.stop() == 0
    assert time.monotonic() - t0 < 1.5 * harness.SLOW


@pytest.mark.timeout(90)
def test_pgbench_select_only(router, clusters):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(router.port), PGUSER="app",
               PGPASSWORD=harness.APP_PASSWORD, PGDATABASE="appdb",
               PGOPTIONS="-c app.tenant_id=42", PGCONNECT_TIMEOUT="5")
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q"], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert init.returncode == 0, init.stderr
    cluster = router.route(["42"])["42"][0]
    assert clusters[cluster].sql("SELECT count(*) FROM pgbench_accounts",
                                 dbname="appdb")[0][0] == 100000
    run = subprocess.run(["pgbench", "-S", "-c", "4", "-T", "3", "-n"], env=env,
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    m = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
    assert m and int(m.group(1)) > 0, run.stdout
    m = re.search(r"number of failed transactions: (\d+)", run.stdout)
    assert m is None or int(m.group(1)) == 0, run.stdout
    assert "error" not in run.stderr.lower(), run.stderr
