"""Bulk data and cancellation through the router."""

import hashlib
import random
import threading
import time

import psycopg
import pytest

# Each test runs with pool_mode = none and again with pool_mode = session (conftest.py).
POOL_MODES = ("none", "session")

COPY_BYTES = 100 * 1024 * 1024


def copy_rows(total_bytes):
    """Yield ~1 MB chunks of canonical COPY text ("id<TAB>payload\\n"); deterministic."""
    rnd = random.Random(1234)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_"
    payloads = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(40, 160)))
                for _ in range(997)]
    sent = 0
    i = 0
    while sent < total_bytes:
        parts = []
        for _ in range(10000):
            parts.append(f"{i}\t{payloads[i % 997]}\n")
            i += 1
        chunk = "".join(parts).encode()
        sent += len(chunk)
        yield chunk, 10000


def copy_round_trip(conn):
    """COPY COPY_BYTES into a temp table and back out through conn; assert byte-exact."""
    sent_hash = hashlib.sha256()
    rows_in = 0
    nbytes = 0
    conn.execute("SET work_mem = '256MB'")
    conn.execute("CREATE TEMP TABLE bulk (id bigint, payload text)")
    cur = conn.cursor()
    with cur.copy("COPY bulk FROM STDIN") as cp:
        for chunk, n in copy_rows(COPY_BYTES):
            sent_hash.update(chunk)
            cp.write(chunk)
            rows_in += n
            nbytes += len(chunk)
    assert nbytes >= COPY_BYTES
    assert conn.execute("SELECT count(*) FROM bulk").fetchone()[0] == rows_in

    got_hash = hashlib.sha256()
    rows_out = 0
    got_bytes = 0
    # COPY's multi-insert does not keep heap order, so read back in id order.
    with cur.copy("COPY (SELECT id, payload FROM bulk ORDER BY id) TO STDOUT") as cp:
        for data in cp:
            got_hash.update(data)
            got_bytes += len(data)
            rows_out += bytes(data).count(b"\n")
    assert rows_out == rows_in
    assert got_bytes == nbytes
    assert got_hash.hexdigest() == sent_hash.hexdigest()
    # The session is still in a sane state after 200 MB through it.
    assert conn.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.timeout(180)
def test_copy_100mb_in_and_out_byte_exact(router):
    with router.connect("copy-tenant") as conn:
        copy_round_trip(conn)


def tenant_on(router, cluster):
    cands = [f"cancel-{i}" for i in range(50)]
    for t, (c, _) in router.route(cands).items():
        if c == cluster:
            return t
    raise AssertionError(f"no tenant routed to {cluster}")


@pytest.mark.parametrize("cluster", ["a", "b"])
def test_cancel_request_reaches_the_right_server(router, clusters, cluster, pool_mode):
    t = tenant_on(router, cluster)
    srv = clusters[cluster]
    conn = router.connect(t)
    try:
        # A pooled client holds the router's BackendKeyData, not the server's.
        if pool_mode == "none":
            pid = conn.info.backend_pid
        else:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        result = {}

        def run():
            try:
                conn.execute("SELECT pg_sleep(30)")
                result["outcome"] = "completed"
            except Exception as e:  # recorded and asserted on below
                result["outcome"] = e
            result["t"] = time.monotonic()

        th = threading.Thread(target=run, daemon=True)
        th.start()
        # Wait (bounded) until the server really runs the sleep, then cancel.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rows = srv.sql("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
            if rows and rows[0][0] == "active":
                break
            time.sleep(0.05)
        else:
            pytest.fail("pg_sleep never became active on the server")
        t0 = time.monotonic()
        conn.cancel()
        th.join(5)
        assert not th.is_alive(), "query still running 5 s after the cancel"
        out = result["outcome"]
        assert isinstance(out, psycopg.errors.QueryCanceled), f"got {out!r}"
        assert out.sqlstate == "57014"
        assert result["t"] - t0 < 2.0, f"cancel took {result['t'] - t0:.2f}s"
        # The session survives its cancelled query.
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == srv.port
    finally:
        conn.close()


def test_cancel_with_unknown_key_is_harmless(router):
    import rawpg
    import struct
    with rawpg.RawConn(router.port) as c:
        c.send(struct.pack("!IIII", 16, rawpg.CANCEL_REQUEST, 12345, 67890))
        c.expect_closed()
    assert router.alive()
    assert router.server_port("t1") > 0
