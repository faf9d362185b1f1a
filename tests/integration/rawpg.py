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


# --- extended protocol ---------------------------------------------------------------------

def _cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def _msg(t, body):
    return t + struct.pack("!I", len(body) + 4) + body


def parse_message(sql, name="", oids=()):
    """Parse: statement name, query, parameter type oids (0 = let the server infer)."""
    body = _cstr(name) + _cstr(sql) + struct.pack("!H", len(oids))
    for o in oids:
        body += struct.pack("!I", o)
    return _msg(b"P", body)


def bind_message(params=(), portal="", stmt=""):
    """Bind with text-format parameters (str/bytes, None -> NULL) and text results."""
    body = _cstr(portal) + _cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            b = p.encode() if isinstance(p, str) else p
            body += struct.pack("!i", len(b)) + b
    return _msg(b"B", body + struct.pack("!H", 0))


def describe_message(kind="P", name=""):
    return _msg(b"D", kind.encode() + _cstr(name))


def execute_message(portal="", max_rows=0):
    return _msg(b"E", _cstr(portal) + struct.pack("!I", max_rows))


def sync_message():
    return _msg(b"S", b"")


def flush_message():
    return _msg(b"H", b"")


def extended_query(sql, params=(), describe=False):
    """Parse/Bind/[Describe]/Execute of one unnamed statement (no Sync)."""
    out = parse_message(sql) + bind_message(params)
    if describe:
        out += describe_message("P")
    return out + execute_message()


def data_row(body):
    """DataRow body -> list of str (NULL -> None)."""
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
    return row


def read_until_ready(conn, timeout=5.0):
    """All backend messages up to and including ReadyForQuery, as (type, body)."""
    msgs = []
    while True:
        t, body = conn.recv_msg(timeout)
        msgs.append((t, body))
        if t == "Z":
            return msgs


# --- password logins (cleartext, md5, SCRAM-SHA-256) -----------------------------------------

class LoginError(AssertionError):
    """The peer answered the login with an ErrorResponse; .fields has its fields."""

    def __init__(self, fields):
        super().__init__(f"login failed: {fields}")
        self.fields = fields


def password_message(data):
    return _msg(b"p", data)


def _scram_client(conn, password, mechs, timeout):
    import base64
    import hashlib
    import hmac
    import os as _os
    assert "SCRAM-SHA-256" in mechs, f"SASL mechanisms {mechs}"
    nonce = base64.b64encode(_os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    conn.send(password_message(_cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
    t, body = conn.recv_msg(timeout)
    if t == "E":
        raise LoginError(parse_fields(body))
    assert t == "R" and struct.unpack("!I", body[:4])[0] == 11, (t, body[:80])
    server_first = body[4:].decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert attrs["r"].startswith(nonce), server_first
    salt = base64.b64decode(attrs["s"])
    iters = int(attrs["i"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_msg = f"{first_bare},{server_first},{without_proof}".encode()
    sig = hmac.new(stored_key, auth_msg, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
    conn.send(password_message(final))


def login_password(conn, params, password, version=PROTO_30, timeout=5.0):
    """Send a startup packet and answer whatever password request follows (cleartext, md5,
    SCRAM-SHA-256); read through ReadyForQuery.  Returns the list of (type, body) messages;
    raises LoginError(fields) if the peer sends an ErrorResponse."""
    conn.send(startup_packet(params, version))
    user = dict((k, v) for k, v in params).get("user", "")
    msgs = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t, body = conn.recv_msg(timeout)
        msgs.append((t, body))
        if t == "E":
            raise LoginError(parse_fields(body))
        if t == "R":
            (code,) = struct.unpack("!I", body[:4])
            if code == 3:
                conn.send(password_message(_cstr(password)))
            elif code == 5:
                conn.send(md5_password_message(user, password, body[4:8]))
            elif code == 10:
                mechs = [m.decode() for m in body[4:].split(b"\0") if m]
                _scram_client(conn, password, mechs, timeout)
            elif code in (0, 12):
                pass
            else:
                raise AssertionError(f"unsupported authentication request {code}")
        if t == "Z":
            return msgs
    raise AssertionError("no ReadyForQuery")
