"""Helpers for the integration suite: real PostgreSQL servers and the real router.

Nothing here talks to anything but 127.0.0.1.  Every wait is bounded.  PostgreSQL
refuses to run as root, so when we are root the server commands run as user
`postgres` and everything the server touches lives in a fresh mkdtemp directory
under /tmp owned by that user (the repository may sit under a 0700 home).
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import psycopg

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
SAN = os.environ.get("SAN", "0") == "1"
# Timing assertions get more room when the router runs under ASan/UBSan.
SLOW = 2.0 if SAN else 1.0

APP_PASSWORD = "app"
MD5_PASSWORD = "md5pw"
CLEARTEXT_PASSWORD = "Cleartext-Secret-991"

# The roles a pool_mode = session router authenticates itself (plain secrets: it logs in to
# the servers with them).
POOL_USERS = {"app": APP_PASSWORD, "md5user": MD5_PASSWORD, "pwuser": CLEARTEXT_PASSWORD}

# Health settings every test router uses unless a test overrides them.
HEALTH_INTERVAL = 0.2
HEALTH_TIMEOUT = 1.0
HEALTH_FAIL_AFTER = 2

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "SUMMARY: UndefinedBehaviorSanitizer")


def free_port():
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a truthy value or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _as_root():
    return os.geteuid() == 0


def _pg_ids():
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def _tail(path, n=60):
    try:
        with open(path, "r", errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "".join(lines[-n:])


class PgServer:
    """One PostgreSQL 15 cluster on 127.0.0.1 at a random free port."""

    HBA = (
        "local all all trust\n"
        "local replication all trust\n"
        "host replication postgres 127.0.0.1/32 trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all trustuser 127.0.0.1/32 trust\n"
        "host all pwuser 127.0.0.1/32 password\n"
        "host all md5user 127.0.0.1/32 md5\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )

    def __init__(self, name):
        self.name = name
        self.tmp = tempfile.mkdtemp(prefix=f"tr-pg-{name}-")
        self.data = os.path.join(self.tmp, "data")
        self.sockdir = os.path.join(self.tmp, "sock")
        self.logfile = os.path.join(self.tmp, "server.log")
        os.mkdir(self.sockdir)
        os.chmod(self.tmp, 0o700)
        if _as_root():
            uid, gid = _pg_ids()
            for p in (self.tmp, self.sockdir):
                os.chown(p, uid, gid)
        self.port = free_port()
        self.running = False

    def _cmd(self, args, timeout=60):
        if _as_root():
            args = ["runuser", "-u", "postgres", "--"] + args
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, cwd="/")
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}\n"
                               f"server log:\n{_tail(self.logfile)}")
        return r

    def init_standby_of(self, primary):
        """A streaming standby of primary (pg_basebackup -R); start() it afterwards."""
        self._cmd([os.path.join(PGBIN, "pg_basebackup"), "-h", "127.0.0.1",
                   "-p", str(primary.port), "-U", "postgres", "-D", self.data, "-R",
                   "-X", "stream", "--no-sync", "-c", "fast"], timeout=120)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.sockdir}'\n")

    def init(self):
        self._cmd([os.path.join(PGBIN, "initdb"), "-D", self.data, "-U", "postgres",
                   "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                   "--no-locale", "--no-sync"], timeout=120)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {self.port}\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.sockdir}'\n"
                    "password_encryption = 'scram-sha-256'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 120\n"
                    "shared_buffers = 32MB\n"
                    "log_min_messages = warning\n")
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write(self.HBA)

    def start(self):
        self._cmd([os.path.join(PGBIN, "pg_ctl"), "-D", self.data, "-l", self.logfile,
                   "-w", "-t", "60", "start"], timeout=90)
        self.running = True

    def stop(self, mode="fast"):
        self._cmd([os.path.join(PGBIN, "pg_ctl"), "-D", self.data, "-m", mode,
                   "-w", "-t", "60", "stop"], timeout=90)
        self.running = False

    def restart(self):
        if self.running:
            self.stop()
        self.start()

    def is_up(self):
        try:
            self.sql("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def connect(self, user="postgres", dbname="postgres", password=None, **kw):
        """A direct connection to this server (not through the router)."""
        kw.setdefault("connect_timeout", 5)
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname=dbname,
                               password=password, autocommit=True, **kw)

    def sql(self, query, params=None, dbname="postgres"):
        """Run one statement as the superuser; return all rows (or None)."""
        with self.connect(dbname=dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    def setup_roles(self):
        self.sql(f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'")
        with self.connect() as conn:
            conn.execute("SET password_encryption = 'md5'")
            conn.execute(f"CREATE ROLE md5user LOGIN PASSWORD '{MD5_PASSWORD}'")
        self.sql("CREATE ROLE trustuser LOGIN")
        self.sql(f"CREATE ROLE pwuser LOGIN PASSWORD '{CLEARTEXT_PASSWORD}'")
        self.sql("CREATE DATABASE appdb OWNER app")

    def cleanup(self):
        if self.running:
            try:
                self.stop(mode="immediate")
            except Exception:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def start_clusters(names=("a", "b"), make=PgServer):
    """initdb + start several servers in parallel; returns {name: PgServer}.
    make(name) builds each server (a PgServer subclass may add TLS etc. in init())."""
    servers = {n: make(n) for n in names}
    errors = []

    def boot(s):
        try:
            s.init()
            s.start()
            s.setup_roles()
        except Exception as e:  # reported below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=boot, args=(s,)) for s in servers.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    if errors or any(t.is_alive() for t in threads):
        for s in servers.values():
            s.cleanup()
        raise RuntimeError(f"could not start PostgreSQL: {errors}")
    return servers


def role_secret(srv, role):
    """pg_authid.rolpassword of role on srv (SCRAM verifier, md5 hash, or None)."""
    rows = srv.sql("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    return rows[0][0] if rows else None


def ensure_shared_verifier_role(clusters, role, password):
    """A LOGIN role with the very same SCRAM verifier (salt, iterations, keys) on every
    cluster: created with a password on the first cluster, its verifier copied to the
    others.  Idempotent (ALTER if the role exists).  Returns the verifier."""
    names = sorted(clusters)
    first = clusters[names[0]]

    def create_or_alter(srv, secret):
        with srv.connect() as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                  (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(f'{verb} ROLE "{role}" LOGIN PASSWORD ' + "'" +
                         secret.replace("'", "''") + "'")

    create_or_alter(first, password)
    verifier = role_secret(first, role)
    assert verifier and verifier.startswith("SCRAM-SHA-256$"), verifier
    for n in names[1:]:
        create_or_alter(clusters[n], verifier)
        assert role_secret(clusters[n], role) == verifier
    return verifier


def userlist_text(entries):
    """PgBouncer userlist.txt text from {user: secret} ('"' doubled inside quotes)."""
    def q(v):
        return '"' + v.replace('"', '""') + '"'
    return "".join(f"{q(u)} {q(sec)}\n" for u, sec in entries.items())


def router_binary():
    p = os.environ.get("TR_BIN", "build/tenant-router")
    return p if os.path.isabs(p) else os.path.join(REPO, p)


def default_config(clusters, port):
    """The INI (as nested dicts) the suite uses unless a test says otherwise."""
    cfg = {
        "router": {
            "listen": f"127.0.0.1:{port}",
            "tenant_key": "app.tenant_id",
            "tenant_sources": "options, parameter",
            "max_client_conn": "200",
            "client_login_timeout": "10s",
            "server_connect_timeout": f"{int(5 * SLOW)}s",
            "shutdown_timeout": "2s",
            "log_level": "debug",
        },
        "health": {
            "interval": f"{int(HEALTH_INTERVAL * 1000)}ms",
            "timeout": f"{int(HEALTH_TIMEOUT * 1000)}ms",
            "fail_after": str(HEALTH_FAIL_AFTER),
            "conninfo": "user=postgres dbname=postgres",
        },
        "ring": {"vnodes": "256"},
    }
    for name, srv in clusters.items():
        cfg[f"cluster.{name}"] = {"hosts": f"127.0.0.1:{srv.port}", "weight": "1"}
    return cfg


def render_ini(cfg):
    out = []
    for section, kv in cfg.items():
        if kv is None:
            continue
        out.append(f"[{section}]")
        for k, v in kv.items():
            out.append(f"{k} = {v}")
        out.append("")
    return "\n".join(out)


def merge(base, overrides):
    """Section-wise merge; a value of None deletes the key (or the whole section)."""
    cfg = {s: dict(kv) for s, kv in base.items()}
    for section, kv in (overrides or {}).items():
        if kv is None:
            cfg.pop(section, None)
            continue
        dst = cfg.setdefault(section, {})
        for k, v in kv.items():
            if v is None:
                dst.pop(k, None)
            else:
                dst[k] = v
    return cfg


class RouterDied(AssertionError):
    pass


class Router:
    """The tenant-router binary with a generated INI in its own temp dir."""

    def __init__(self, clusters, overrides=None, pins_file=None, raw_ini=None, env=None,
                 nofile=None, port=None, pool_mode=None):
        """nofile=N starts the router with RLIMIT_NOFILE N (soft and hard: it cannot raise it).
        port=P listens on P instead of a free port: a second router beside a running one
        (SO_REUSEPORT), as in a rolling restart. pool_mode="session" runs it with session
        pooling: the router authenticates clients from an auth_file holding the test roles'
        passwords (POOL_USERS) and logs in to the servers with them."""
        self.clusters = clusters
        self.nofile = nofile
        self.bin = router_binary()
        self.dir = tempfile.mkdtemp(prefix="tr-router-")
        self.port = port if port is not None else free_port()
        self.ini = os.path.join(self.dir, "router.ini")
        self.logfile = os.path.join(self.dir, "router.log")
        self.proc = None
        self.returncode = None
        self.env = dict(os.environ, **(env or {}))
        self.pool_mode = pool_mode or "none"
        base = default_config(clusters, self.port)
        if self.pool_mode == "session":
            self.write_file("pool_users.txt", userlist_text(POOL_USERS))
            base = merge(base, {"router": {"pool_mode": "session"},
                                "auth": {"auth_file": "pool_users.txt"}})
        self.cfg = merge(base, overrides)
        if pins_file is not None:
            self.write_pins(pins_file)
        self.write_config(raw_ini=raw_ini)

    # --- configuration -------------------------------------------------------------

    def write_pins(self, text, name="pins.txt"):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def write_file(self, name, text, mode=0o600):
        """A file in the router's directory (relative paths in the INI resolve there)."""
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def write_config(self, overrides=None, raw_ini=None):
        if overrides:
            self.cfg = merge(self.cfg, overrides)
        text = raw_ini if raw_ini is not None else render_ini(self.cfg)
        tmp = self.ini + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.ini)

    def cluster_port(self, name):
        return self.clusters[name].port

    # --- CLI -----------------------------------------------------------------------

    def run_cli(self, argv, timeout=20):
        return subprocess.run([self.bin] + argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=self.env)

    def check(self, ini=None):
        """`tenant-router --check -c INI` -> CompletedProcess."""
        return self.run_cli(["--check", "-c", ini or self.ini])

    def route(self, tenants, ini=None):
        """`tenant-router route -c INI T...` -> {tenant: (cluster, 'pinned'|'ring')}."""
        tenants = list(tenants)
        r = self.run_cli(["route", "-c", ini or self.ini] + tenants)
        assert r.returncode == 0, f"route exited {r.returncode}: {r.stderr}"
        out = {}
        for line in r.stdout.splitlines():
            if not line.strip():
                continue
            parts = line.rsplit("\t", 2)
            assert len(parts) == 3, f"bad route line {line!r}"
            out[parts[0]] = (parts[1], parts[2])
        missing = [t for t in tenants if t not in out]
        assert not missing, f"route printed no line for {missing[:5]}: {r.stdout[:500]}"
        return out

    # --- process -------------------------------------------------------------------

    def start(self, timeout=15):
        assert os.path.exists(self.bin), f"router binary {self.bin} not built"
        self._log = open(self.logfile, "ab")
        preexec = None
        if self.nofile is not None:
            import resource
            n = self.nofile

            def preexec():
                resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        self.proc = subprocess.Popen([self.bin, "-c", self.ini], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=self.dir, env=self.env, preexec_fn=preexec)
        deadline = time.monotonic() + timeout * SLOW
        while True:
            if self.proc.poll() is not None:
                raise RouterDied(f"router exited {self.proc.returncode} during start-up\n"
                                 f"{self.log_tail()}")
            if f"listening on 127.0.0.1:{self.port}" in self.log_text():
                return self
            if time.monotonic() >= deadline:
                raise TimeoutError(f"router not listening after {timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.logfile, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def log_since(self, offset):
        # Before start() has opened it there is no log yet (log_size says 0 then too).
        try:
            with open(self.logfile, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=60):
        if getattr(self, "_closed_log", None) is not None:
            return "".join(self._closed_log.splitlines(True)[-n:])
        return _tail(self.logfile, n)

    def wait_log(self, pattern, offset=0, timeout=5.0):
        """Wait for a regex in the log after byte offset; return the match."""
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log_since(offset)), timeout * SLOW,
                          what=f"router log line /{pattern}/")

    def reload(self, timeout=5.0):
        """SIGHUP; return 'ok' or 'failed' from the log line that follows."""
        assert self.alive(), "router is not running"
        off = self.log_size()
        self.proc.send_signal(signal.SIGHUP)
        m = self.wait_log(r"reloaded configuration|reload failed", off, timeout)
        return "ok" if m.group(0) == "reloaded configuration" else "failed"

    def stop(self, timeout=None):
        """SIGTERM and wait; returns the exit code (asserts nothing, see assert_clean)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if timeout is None:
                timeout = 10.0 * SLOW
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.returncode = "hung"
                raise AssertionError(f"router did not exit within {timeout}s of SIGTERM\n"
                                     f"{self.log_tail()}")
        self.returncode = self.proc.returncode
        return self.returncode

    def sanitizer_report(self):
        text = self.log_text()
        for m in SANITIZER_MARKERS:
            i = text.find(m)
            if i >= 0:
                return text[max(0, i - 200): i + 3000]
        return None

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
        self._closed_log = self.log_text()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- clients -------------------------------------------------------------------

    def conninfo(self, tenant=None, user="app", password=APP_PASSWORD, dbname="appdb",
                 options=None):
        kw = dict(host="127.0.0.1", port=self.port, user=user, dbname=dbname,
                  connect_timeout=5)
        if password is not None:
            kw["password"] = password
        if options is None and tenant is not None:
            options = f"-c app.tenant_id={tenant}"
        if options is not None:
            kw["options"] = options
        return kw

    def connect(self, tenant=None, autocommit=True, **kw):
        """psycopg connection through the router (scram user app by default)."""
        extra = {k: kw.pop(k) for k in list(kw)
                 if k not in ("user", "password", "dbname", "options")}
        return psycopg.connect(autocommit=autocommit, **self.conninfo(tenant, **kw), **extra)

    def server_port(self, tenant, **kw):
        with self.connect(tenant, **kw) as conn:
            return conn.execute("SELECT inet_server_port()").fetchone()[0]


PGJDBC_JAR = "/usr/share/java/postgresql.jar"


def java_classes(name, prefix="tr-java-"):
    """Compiles tests/integration/java/NAME.java into a new temporary directory and returns it
    (the caller removes it). Skips when Java or the JDBC driver is missing."""
    import pytest
    if not (shutil.which("java") and shutil.which("javac") and os.path.exists(PGJDBC_JAR)):
        pytest.skip("java, javac or the PostgreSQL JDBC driver is not installed "
                    "(apt-get install default-jdk-headless libpostgresql-jdbc-java)")
    d = tempfile.mkdtemp(prefix=prefix)
    src = os.path.join(os.path.dirname(__file__), "java", f"{name}.java")
    r = subprocess.run(["javac", "-d", d, src], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"javac failed: {r.stdout}\n{r.stderr}"
    return d
