#!/usr/bin/python3
"""The tenant directory's load from a real PostgreSQL, at ten million rows (issue 12).

Starts one PostgreSQL 15 server on loopback (the directory, and cluster "a" of the router),
makes the schema with `tenant-router directory init`, fills tenants with N rows (default
10 000 000; the triggers are off for the bulk load, the versions set by hand), starts
build/tenant-router and reads from its log how long the first full load took ("directory: loaded
version ... in N ms"), its RSS once loaded, then applies an UPDATE of one row and reads how long
the change took to apply ("applied version ... in N us") and how long after the commit a new
session was routed by it.  Prints "key<TAB>value" lines.

    tests/bench/dir_load.py [ROWS]      (TR_BIN=build/tenant-router)
"""

import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import harness  # noqa: E402
import psycopg  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return -1


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    srv = harness.PgServer("dirbench")
    srv.init()
    srv.start()
    srv.setup_roles()
    work = tempfile.mkdtemp(prefix="tr-dirbench-")
    proc = None
    try:
        port = harness.free_port()
        dsn = f"host=127.0.0.1 port={srv.port} user=postgres dbname=postgres"
        ini = os.path.join(work, "router.ini")
        with open(ini, "w") as f:
            f.write(f"[router]\nlisten = 127.0.0.1:{port}\nlog_level = info\n"
                    f"[health]\nconninfo = user=postgres dbname=postgres\n"
                    f"[cluster.a]\nhosts = 127.0.0.1:{srv.port}\n"
                    f"[directory]\nconninfo = {dsn}\nheartbeat = 1s\n")
        tr = harness.router_binary()
        r = subprocess.run([tr, "directory", "init", "-c", ini], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        t0 = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("ALTER TABLE tenant_router.tenants DISABLE TRIGGER USER")
            c.execute("INSERT INTO tenant_router.tenants (tenant, cluster, state, version) "
                      "SELECT 'tenant-' || g, 'a', 'active', g FROM generate_series(1, %s) g",
                      (rows,))
            c.execute("ALTER TABLE tenant_router.tenants ENABLE TRIGGER USER")
            c.execute("SELECT setval('tenant_router.version_seq', %s)", (rows,))
            c.execute("VACUUM ANALYZE tenant_router.tenants")
        print(f"rows\t{rows}")
        print(f"fill_s\t{time.monotonic() - t0:.1f}")
        log = os.path.join(work, "router.log")
        with open(log, "wb") as lf:
            proc = subprocess.Popen([tr, "-c", ini], stdout=lf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        m = None
        while time.monotonic() < deadline:
            with open(log, errors="replace") as f:
                text = f.read()
            m = re.search(r"directory: loaded version (\d+) rows=(\d+) .* in (\d+) ms \((\d+) MB\)",
                          text)
            if m and "listening on" in text:
                break
            time.sleep(0.05)
        assert m, text
        print(f"full_load_ms\t{m.group(3)}")
        print(f"copy_memory_mb\t{m.group(4)}")
        print(f"router_rss_mb\t{rss_mb(proc.pid):.0f}")
        # One change: how long it takes to apply, and until a new session is routed by it.
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("UPDATE tenant_router.tenants SET state = 'blocked' WHERE tenant = "
                      "'tenant-4242'")
            t_commit = time.monotonic()
        seen = None
        while time.monotonic() - t_commit < 10:
            try:
                psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                options="-c app.tenant_id=tenant-4242", connect_timeout=5).close()
            except psycopg.OperationalError as e:
                if "is blocked" in str(e):
                    seen = time.monotonic() - t_commit
                    break
            time.sleep(0.005)
        with open(log, errors="replace") as f:
            text = f.read()
        a = re.search(r"applied version \d+ \(1 rows\) in (\d+) us", text)
        print(f"incremental_apply_us\t{a.group(1) if a else '?'}")
        print(f"commit_to_refusal_ms\t{seen * 1000 if seen is not None else -1:.0f}")
        print(f"router_rss_after_change_mb\t{rss_mb(proc.pid):.0f}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        srv.cleanup()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
