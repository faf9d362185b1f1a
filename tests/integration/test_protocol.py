"""Protocol abuse with raw sockets: every refusal is a full FATAL ErrorResponse, then close,
and the router keeps serving normal clients afterwards."""

import socket
import struct
import time

import pytest

import harness
import rawpg

GOOD = [("user", "trustuser"), ("database", "postgres"), ("app.tenant_id", "t1")]


def assert_router_ok(router, clusters):
    assert router.alive(), "router died"
    want = clusters[router.route(["t1"])["t1"][0]].port
    assert router.server_port("t1") == want


def refused(router, data, sqlstate="08P01"):
    with rawpg.RawConn(router.port) as c:
        c.send(data)
        return rawpg.assert_refusal(c, sqlstate)


BAD_PACKETS = {
    "unknown_code": struct.pack("!II", 8, 12345),
    "length_too_small": struct.pack("!II", 4, rawpg.PROTO_30),
    "no_final_terminator": rawpg.startup_packet(GOOD, terminate=False),
    "value_without_nul": rawpg.startup_packet([], terminate=False) + b"user\0trustuser",
    "key_then_end": rawpg.startup_packet([], terminate=False) + b"user\0",
    "duplicate_user": rawpg.startup_packet([("user", "trustuser"), ("user", "trustuser"),
                                            ("app.tenant_id", "t1")]),
    "duplicate_tenant": rawpg.startup_packet([("user", "trustuser"), ("app.tenant_id", "t1"),
                                              ("app.tenant_id", "t2")]),
    "non_utf8_tenant": rawpg.startup_packet([("user", "trustuser"),
                                             ("app.tenant_id", b"t\xff\xfe")]),
    "non_utf8_options": rawpg.startup_packet([("user", "trustuser"),
                                              ("options", b"-c app.tenant_id=\xc3\x28")]),
}


def _fix_len(pkt):
    # The hand-built packets above need their length word recomputed.
    return struct.pack("!I", len(pkt)) + pkt[4:]


@pytest.mark.parametrize("name", sorted(BAD_PACKETS))
def test_protocol_bad_startup_packet_is_08P01(router, clusters, name):
    pkt = BAD_PACKETS[name]
    if name in ("value_without_nul", "key_then_end"):
        pkt = _fix_len(pkt)
    f = refused(router, pkt)
    assert f["M"].startswith("tenant-router"), f
    assert_router_ok(router, clusters)


def test_protocol_oversized_length_is_08P01(router, clusters):
    # Only the header is sent: the router must refuse on the length alone.
    f = refused(router, struct.pack("!II", 100000, rawpg.PROTO_30))
    assert f["M"].startswith("tenant-router"), f
    assert_router_ok(router, clusters)


@pytest.mark.parametrize("version,label", [(0x00020000, "2.0"), (0x00040000, "4.0")])
def test_protocol_unsupported_version_is_08P01(router, clusters, version, label):
    f = refused(router, rawpg.startup_packet(GOOD, version=version))
    assert "protocol" in f["M"].lower(), f"message does not say what is wrong: {f}"
    assert_router_ok(router, clusters)


def test_protocol_truncated_packet_then_close(router, clusters):
    for cut in (3, 20):
        with rawpg.RawConn(router.port) as c:
            pkt = rawpg.startup_packet(GOOD)
            c.send(struct.pack("!I", 100) + pkt[4:cut])
        time.sleep(0.05)
    # And a client that disappears with a half-sent packet while others keep going.
    assert_router_ok(router, clusters)


def test_protocol_reset_mid_packet(router, clusters):
    s = socket.create_connection(("127.0.0.1", router.port), timeout=5)
    s.send(struct.pack("!I", 100) + b"\x00\x03\x00\x00user")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST
    time.sleep(0.05)
    assert_router_ok(router, clusters)


def test_protocol_silent_client_times_out(make_router, clusters):
    r = make_router(overrides={"router": {"client_login_timeout": "1s"}})
    with rawpg.RawConn(r.port, timeout=5) as c:
        t0 = time.monotonic()
        f = rawpg.assert_refusal(c, "08006", timeout=5)
        elapsed = time.monotonic() - t0
    assert "timeout" in f["M"].lower() or "timed out" in f["M"].lower(), f
    assert 0.8 <= elapsed <= 1.0 + 1.0 * harness.SLOW, f"closed after {elapsed:.2f}s"
    assert_router_ok(r, clusters)


def test_protocol_login_timeout_covers_slow_startup(make_router, clusters):
    """A client that sends part of its startup packet and stalls is also timed out."""
    r = make_router(overrides={"router": {"client_login_timeout": "1s"}})
    with rawpg.RawConn(r.port, timeout=5) as c:
        c.send(rawpg.startup_packet(GOOD)[:10])
        t0 = time.monotonic()
        rawpg.assert_refusal(c, "08006", timeout=5)
        assert time.monotonic() - t0 <= 1.0 + 1.0 * harness.SLOW
    assert_router_ok(r, clusters)


@pytest.mark.parametrize("req", ["ssl", "gssenc", "ssl_then_gssenc"])
def test_protocol_encryption_requests_answered_N(router, clusters, req):
    want = clusters[router.route(["t1"])["t1"][0]].port
    with rawpg.RawConn(router.port) as c:
        for kind in req.split("_then_"):
            c.send(rawpg.ssl_request() if kind == "ssl" else rawpg.gssenc_request())
            assert c.recv_byte() == b"N"
        rawpg.login(c, GOOD)
        assert rawpg.simple_query(c, "SELECT inet_server_port()") == [[str(want)]]
        c.send(rawpg.terminate_message())
    assert_router_ok(router, clusters)


def test_protocol_startup_parameter_tenant_trust_user(router, clusters):
    t = "raw-param-tenant"
    want = clusters[router.route([t])[t][0]].port
    with rawpg.RawConn(router.port) as c:
        msgs = rawpg.login(c, [("user", "trustuser"), ("database", "postgres"),
                               ("app.tenant_id", t)])
        types = [m[0] for m in msgs]
        assert types[0] == "R" and types[-1] == "Z" and "K" in types, types
        rows = rawpg.simple_query(c, "SELECT inet_server_port(), current_setting('app.tenant_id')")
        assert rows == [[str(want), t]]
        c.send(rawpg.terminate_message())


@pytest.mark.parametrize("user", ["trustuser", "app"])
def test_protocol_3_2_startup_passes_through(router, clusters, user):
    """PostgreSQL 15 knows only 3.0: it answers a 3.2 startup with NegotiateProtocolVersion
    ('v') and goes on with authentication.  The router must not refuse 3.2 itself."""
    with rawpg.RawConn(router.port) as c:
        c.send(rawpg.startup_packet([("user", user), ("database", "postgres"),
                                     ("app.tenant_id", "t1")], version=rawpg.PROTO_32))
        t, body = c.recv_msg()
        if t == "E":
            pytest.fail(f"refused 3.2 startup: {rawpg.parse_fields(body)}")
        assert t in ("v", "R"), (t, body)
        if t == "v":
            (newest,) = struct.unpack("!I", body[:4])
            assert newest == rawpg.PROTO_30, newest
            t, body = c.recv_msg()
        assert t == "R", (t, body)
        (code,) = struct.unpack("!I", body[:4])
        if user == "trustuser":
            assert code == 0
            while t != "Z":
                t, body = c.recv_msg()
                assert t != "E", rawpg.parse_fields(body)
            rows = rawpg.simple_query(c, "SELECT inet_server_port()")
            assert rows == [[str(clusters[router.route(["t1"])["t1"][0]].port)]]
        else:
            assert code == 10, f"expected AuthenticationSASL, got {code}"
    assert_router_ok(router, clusters)


def test_protocol_startup_in_one_byte_segments(router, clusters):
    params = GOOD[:2] + [("app.tenant_id", "seg-tenant")]
    want = clusters[router.route(["seg-tenant"])["seg-tenant"][0]].port
    with rawpg.RawConn(router.port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pkt = rawpg.startup_packet(params)
        for i in range(len(pkt)):
            c.send(pkt[i:i + 1])
            time.sleep(0.001)
        msgs = []
        while not msgs or msgs[-1] != "Z":
            t, body = c.recv_msg()
            assert t != "E", rawpg.parse_fields(body)
            msgs.append(t)
        assert rawpg.simple_query(c, "SELECT inet_server_port()") == [[str(want)]]


def test_protocol_large_valid_startup_packet(router, clusters):
    # ~6 kB of options: below PostgreSQL's 10000-byte startup limit, so it must pass.
    with rawpg.RawConn(router.port) as c:
        rawpg.login(c, GOOD + [("options", "-c search_path=" + "s" * 6000)])
        assert rawpg.simple_query(c, "SELECT length(current_setting('search_path'))") == \
            [["6000"]]


@pytest.mark.parametrize("where", ["options_twice", "options_and_parameter"])
def test_protocol_two_different_tenants_refused(router, where):
    """A connection naming two tenants must be refused, never routed by one and tagged with
    the other (the server would apply the last one it sees)."""
    if where == "options_twice":
        params = GOOD[:2] + [("options", "-c app.tenant_id=x1 -c app.tenant_id=x2")]
    else:
        params = GOOD[:2] + [("options", "-c app.tenant_id=x1"), ("app.tenant_id", "x2")]
    with rawpg.RawConn(router.port) as c:
        c.send(rawpg.startup_packet(params))
        t, body = c.recv_msg()
        assert t == "E", f"accepted a connection with two tenants: first message {t!r}"
        f = rawpg.parse_fields(body)
        assert f["S"] == "FATAL" and f["C"] in ("08004", "08P01") and f.get("H"), f


def test_protocol_tenant_key_is_case_insensitive_like_postgres(router, clusters):
    """PostgreSQL folds GUC names, so -c APP.TENANT_ID=x sets app.tenant_id on the server:
    the router must route by that same tenant (or refuse), never ignore it."""
    t = "case-tenant"
    want = clusters[router.route([t])[t][0]].port
    with rawpg.RawConn(router.port) as c:
        c.send(rawpg.startup_packet(GOOD[:2] + [("options", f"-c APP.TENANT_ID={t}")]))
        first, body = c.recv_msg()
        if first == "E":
            f = rawpg.parse_fields(body)
            assert f["S"] == "FATAL", f
            return
        while first != "Z":
            first, body = c.recv_msg()
            assert first != "E", rawpg.parse_fields(body)
        rows = rawpg.simple_query(c, "SELECT inet_server_port(), current_setting('app.tenant_id')")
        assert rows == [[str(want), t]]


def test_protocol_query_pipelined_behind_startup(router, clusters):
    """A client may send its first Query in the same write as the startup packet (PostgreSQL
    accepts it): the router forwards those bytes after the startup packet, in order."""
    t = "pipelined"
    want = clusters[router.route([t])[t][0]].port
    with rawpg.RawConn(router.port) as c:
        c.send(rawpg.startup_packet([("user", "trustuser"), ("database", "postgres"),
                                     ("app.tenant_id", t)])
               + rawpg.query_message("SELECT inet_server_port()"))
        seen, rows = [], []
        while True:
            typ, body = c.recv_msg()
            assert typ != "E", rawpg.parse_fields(body)
            seen.append(typ)
            if typ == "D":
                rows.append(body)
            if typ == "Z" and "C" in seen:
                break
        assert seen[0] == "R" and seen.count("Z") == 2, seen
        assert len(rows) == 1 and str(want).encode() in rows[0], rows
        c.send(rawpg.terminate_message())
    assert_router_ok(router, clusters)


def test_protocol_plaintext_after_ssl_request_refused(router, clusters):
    """Bytes sent ahead of the answer to SSLRequest would have gone unencrypted: refuse."""
    refused(router, rawpg.ssl_request() + rawpg.startup_packet(GOOD))
    assert_router_ok(router, clusters)
