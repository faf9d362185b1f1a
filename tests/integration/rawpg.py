"""A tiny raw PostgreSQL wire-protocol client for tests that must send what libpq never would."""

import socket
import struct
import time

PROTO_30 = 196608          # 3.0
PROTO_32 = 196610          # 3.2
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


def startup_packet(params, version=PROTO_30, terminate=True, length=None):
    """Build a StartupMessage.  params: list of (key, value), str or bytes."""
    body = struct.pack("!I", version)
    for k, v in params:
        k = k.encode() if isinstance(k, str) else k
        v = v.encode() if isinstance(v, str) else v
        body += k + b"\0" + v + b"\0"
    if terminate:
        body += b"\0"
    n = len(body) + 4 if length is None else length
    return struct.pack("!I", n) + body


def ssl_request():
    return struct.pack("!II", 8, SSL_REQUEST)


def gssenc_request():
    return struct.pack("!II", 8, GSSENC_REQUEST)


def query_message(sql):
    b = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(b) + 4) + b


def terminate_message():
    return b"X" + struct.pack("!I", 4)


def parse_fields(body):
    """ErrorResponse / NoticeResponse body -> {code_char: text}."""
    out = {}
    i = 0
    while i < len(body) and body[i] != 0:
        code = chr(body[i])
        j = body.index(b"\0", i + 1)
        out[code] = body[i + 1:j].decode(errors="replace")
        i = j + 1
    return out


class Closed(Exception):
    pass


class RawConn:
    """A blocking socket with a per-read deadline."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n, timeout=None):
        self.sock.settimeout(timeout or self.timeout)
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise Closed(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def recv_byte(self, timeout=None):
        return self.recv_exact(1, timeout)

    def recv_msg(self, timeout=None):
        """Next backend message as (type_char, body); raises Closed on EOF."""
        hdr = self.recv_exact(5, timeout)
        t = chr(hdr[0])
        (n,) = struct.unpack("!I", hdr[1:])
        if n < 4 or n > 1 << 26:
            raise AssertionError(f"insane message length {n} for type {t!r}")
        return t, self.recv_exact(n - 4, timeout)

    def expect_closed(self, timeout=5.0):
        """Assert the peer closes (EOF or reset) within timeout, with no further bytes."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            raise AssertionError(f"connection still open {timeout}s after the refusal")
        assert data == b"", f"unexpected bytes after the refusal: {data[:80]!r}"
        return True

    def starttls(self, ctx, server_hostname=None):
        """SSLRequest; expects 'S', then does the TLS handshake on this connection.
        Returns the answer byte; on 'N' the connection stays plaintext."""
        self.send(ssl_request())
        b = self.recv_byte()
        if b == b"S":
            self.wrap(ctx, server_hostname)
        return b

    def wrap(self, ctx, server_hostname=None):
        """TLS handshake right now (direct TLS, or after 'S')."""
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return self.sock

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def assert_refusal(conn, sqlstate, timeout=5.0, closes=True):
    """Read the next message, check it is a complete FATAL ErrorResponse with sqlstate,
    then check the router closes the connection.  Returns the fields."""
    t, body = conn.recv_msg(timeout)
    assert t == "E", f"expected ErrorResponse, got {t!r} {body[:100]!r}"
    f = parse_fields(body)
    assert f.get("S") == "FATAL", f"severity {f.get('S')!r} in {f}"
    if "V" in f:
        assert f["V"] == "FATAL", f"V field {f['V']!r} in {f}"
    assert f.get("C") == sqlstate, f"SQLSTATE {f.get('C')!r}, expected {sqlstate}: {f}"
    assert f.get("M"), f"no message in {f}"
    assert f.get("H"), f"no hint in {f}"
    if closes:
        conn.expect_closed(timeout)
    return f


def login(conn, params, version=PROTO_30, timeout=5.0):
    """Send a startup packet for a trust user and read through ReadyForQuery.
    Returns the list of (type, body) messages received."""
    conn.send(startup_packet(params, version))
    msgs = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t, body = conn.recv_msg(timeout)
        msgs.append((t, body))
        if t == "E":
            raise AssertionError(f"login failed: {parse_fields(body)}")
        if t == "R":
            (code,) = struct.unpack("!I", body[:4])
            assert code == 0, f"server asked for authentication (code {code}); expected trust"
        if t == "Z":
            return msgs
    raise AssertionError("no ReadyForQuery")


def simple_query(conn, sql, timeout=5.0):
    """Run a simple Query; return rows as lists of str (NULL -> None)."""
    conn.send(query_message(sql))
    rows = []
    while True:
        t, body = conn.recv_msg(timeout)
        if t == "E":
            raise AssertionError(f"query failed: {parse_fields(body)}")
        if t == "D":
            (ncol,) = struct.unpack("!H", body[:2])
            i = 2
            row = []
            for _ in range(ncol):
                (n,) = struct.unpack("!i", body[i:i + 4])
                i += 4
                if n < 0:
                    row.append(None)
                else:
                    row.append(body[i:i + n].decode())
                    i += n
            rows.append(row)
        if t == "Z":
            return rows


def md5_password_message(user, password, salt):
    """PasswordMessage for AuthenticationMD5Password (R code 5) with the given 4-byte salt."""
    import hashlib
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    outer = b"md5" + hashlib.md5(inner + salt).hexdigest().encode() + b"\0"
    return b"p" + struct.pack("!I", len(outer) + 4) + outer
