#!/usr/bin/python3
"""tests/bench/bench.py - the benchmark driver that tests/bench/run.sh runs (see README.md).

Starts two PostgreSQL 15 servers, PgBouncer (session mode) and tenant-router on 127.0.0.1 only,
runs every workload against `direct`, `pgbouncer` and `router` in interleaved rounds, then the
TLS section (router-plain, router-tls-client, router-tls-both, direct-tls) and the stickiness guard
section (router-guard-on, router-guard-off), measures throughput, latency and the proxy's CPU, and
writes results.md, results.tsv, tls.tsv, guard.tsv, raw.tsv and results.png to the results
directory. Every wait and loop is bounded; everything it started is stopped on exit (also on
Ctrl-C / SIGTERM).

Stdlib only, except psycopg for setup and the reload-latency loop (Debian's /usr/bin/python3).
"""

import glob
import math
import os
import pwd
import re
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import psycopg

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HZ = os.sysconf("SC_CLK_TCK")
# router-pool-session: a second router with pool_mode = session (issue #10), server connections
# reused across client sessions as PgBouncer does.
TARGETS = ("direct", "pgbouncer", "router", "router-pool-session")
# The TLS section (issue #4): the main router (plaintext), two more routers with TLS on one or both
# legs, and PostgreSQL itself over TLS.
TLS_TARGETS = ("router-plain", "router-tls-client", "router-tls-both", "direct-tls")
# The stickiness guard section (issue #3): two more routers, `guard = on` and `guard = off`.
GUARD_TARGETS = ("router-guard-on", "router-guard-off")


# ------------------------------------------------------------------------------------------------
# Settings (environment)

def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def env_float(name, default):
    v = os.environ.get(name, "")
    return float(v) if v.strip() else default


class Settings:
    def __init__(self):
        self.quick = os.environ.get("BENCH_QUICK", "0") == "1"
        self.rounds = env_int("BENCH_ROUNDS", 1 if self.quick else 2)
        # The guard section looks for a difference of a few per cent: more rounds, and an even
        # number so that each router goes first as often as the other.
        self.guard_rounds = env_int("BENCH_GUARD_ROUNDS", 2 if self.quick else 4)
        self.seconds = env_float("BENCH_SECONDS", 2 if self.quick else 5)
        self.copy_mb = env_int("BENCH_COPY_MB", 50 if self.quick else 200)
        self.idle = env_int("BENCH_IDLE_SESSIONS", 500 if self.quick else 2000)
        self.big = env_int("BENCH_BIG_SESSIONS", 0 if self.quick else 10000)
        self.pins = env_int("BENCH_PINS", 1000000 if self.quick else 10000000)
        self.scale = env_int("BENCH_SCALE", 10)
        self.sampling = env_float("BENCH_SAMPLING", 0.1)
        self.only = {w.strip() for w in os.environ.get("BENCH_ONLY", "").split(",") if w.strip()}
        self.results = os.environ.get("BENCH_RESULTS_DIR") or os.path.join(REPO, "build", "bench")
        if not os.path.isabs(self.results):
            self.results = os.path.join(REPO, self.results)
        tr = os.environ.get("TR_BIN", "build/tenant-router")
        self.tr_bin = tr if os.path.isabs(tr) else os.path.join(REPO, tr)
        rb = os.environ.get("ROUTE_BENCH_BIN", os.path.join(self.results, "route_bench"))
        self.route_bench = rb if os.path.isabs(rb) else os.path.join(REPO, rb)
        self.pgbin = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
        self.keep = os.environ.get("BENCH_KEEP", "0") == "1"
        self.log_level = os.environ.get("BENCH_ROUTER_LOG_LEVEL", "info")

    def want(self, group):
        return not self.only or group in self.only


S = None  # Settings, set in main()


def say(msg):
    print(f"bench: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


# ------------------------------------------------------------------------------------------------
# /proc helpers

def proc_cpu(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def proc_status(pid, key):
    """A kB field of /proc/PID/status (VmRSS, VmHWM, RssAnon...) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def meminfo(key="MemAvailable"):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def host_cpu():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


OUR_ROOTS = set()  # our own pid and our postmasters: their process trees are "ours"


def proc_snapshot():
    """{pid: (ppid, cpu ticks)} of every process but kernel threads."""
    snap = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        if ppid == 2 or int(d) == 2:
            continue
        snap[int(d)] = (ppid, int(fields[11]) + int(fields[12]))
    return snap


def foreign_cpu(s0, s1, seconds):
    """CPUs' worth of work (0.5 = half a CPU) done by processes that are not ours between two
    snapshots (processes that came and went in between are not seen)."""
    ours = {}

    def is_ours(pid, depth=0):
        if pid in ours:
            return ours[pid]
        if pid in OUR_ROOTS:
            ours[pid] = True
        elif pid <= 1 or pid not in s1 or depth > 64:
            ours[pid] = False
        else:
            ours[pid] = is_ours(s1[pid][0], depth + 1)
        return ours[pid]
    ticks = 0
    for pid, (_ppid, cpu) in s1.items():
        if is_ours(pid):
            continue
        ticks += cpu - s0[pid][1] if pid in s0 else 0
    return ticks / HZ / seconds if seconds > 0 else 0.0


def wait_quiet(limit=30.0, threshold=0.25):
    """Waits (at most limit seconds) until other processes use less than threshold of a CPU
    over half a second; returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        a = proc_snapshot()
        time.sleep(0.5)
        b = proc_snapshot()
        if foreign_cpu(a, b, 0.5) < threshold or time.monotonic() - t0 > limit:
            return time.monotonic() - t0 - 0.5


# ------------------------------------------------------------------------------------------------
# Processes: PostgreSQL, PgBouncer, the router

def pg_ids():
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def as_postgres(args):
    return (["runuser", "-u", "postgres", "--"] + args) if os.geteuid() == 0 else args


class PgServer:
    HBA = ("local all all trust\n"
           "host all postgres 127.0.0.1/32 trust\n"
           "host all bench 127.0.0.1/32 trust\n")

    def __init__(self, name, root):
        self.name = name
        self.dir = os.path.join(root, f"pg-{name}")
        os.mkdir(self.dir, 0o700)
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        os.mkdir(self.sock)
        self.logfile = os.path.join(self.dir, "server.log")
        if os.geteuid() == 0:
            uid, gid = pg_ids()
            os.chown(self.dir, uid, gid)
            os.chown(self.sock, uid, gid)
        self.port = free_port()
        self.running = False
        self.max_connections = 0
        self.ssl_files = None  # (cert, key): ssl = on (the TLS section)

    def _run(self, args, timeout=120):
        r = subprocess.run(as_postgres(args), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, cwd=self.dir)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}{r.stderr}\n"
                               f"server log:\n{tail(self.logfile)}")
        return r

    def init(self, max_connections):
        self._run([os.path.join(S.pgbin, "initdb"), "-D", self.data, "-U", "postgres",
                   "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write(self.HBA)
        self.set_max_connections(max_connections)

    def set_max_connections(self, n):
        self.max_connections = n
        with open(os.path.join(self.data, "postgresql.auto.conf"), "w") as f:
            f.write(f"port = {self.port}\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.sock}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "wal_level = minimal\nmax_wal_senders = 0\n"
                    "max_wal_size = '8GB'\ncheckpoint_timeout = '1h'\n"
                    "autovacuum = off\n"
                    "shared_buffers = '256MB'\n"
                    f"max_connections = {n}\n"
                    "log_min_messages = warning\n")
            if self.ssl_files:
                f.write(f"ssl = on\nssl_cert_file = '{self.ssl_files[0]}'\n"
                        f"ssl_key_file = '{self.ssl_files[1]}'\n")

    def start(self):
        self._run([os.path.join(S.pgbin, "pg_ctl"), "-D", self.data, "-l", self.logfile, "-w",
                   "-t", "120", "start"], timeout=150)
        self.running = True
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                OUR_ROOTS.add(int(f.readline()))
        except (OSError, ValueError):
            pass

    def stop(self, mode="fast"):
        self._run([os.path.join(S.pgbin, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "-t",
                   "120", "stop"], timeout=150)
        self.running = False

    def connect(self, user="postgres", dbname="postgres"):
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname=dbname,
                               autocommit=True, connect_timeout=10)

    def sql(self, q, dbname="postgres", user="postgres"):
        with self.connect(user=user, dbname=dbname) as c:
            cur = c.execute(q)
            return cur.fetchall() if cur.description else None

    def cleanup(self):
        if self.running:
            try:
                self.stop("immediate")
            except Exception as e:  # best effort at exit
                say(f"warning: could not stop cluster {self.name}: {e}")


class Router:
    """One tenant-router process with its own config and log."""

    def __init__(self, root, name, servers, pins_file=None, max_client_conn=12000,
                 server_tls_mode="disable", client_tls=None, guard=None, pool=False):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.cfg = os.path.join(self.dir, "router.ini")
        self.logfile = os.path.join(self.dir, "router.log")
        pins = f"[pins]\nfile = {pins_file}\n" if pins_file else ""
        # server_tls_mode is explicit: with the TLS section on, the clusters have ssl = on, and
        # the default (prefer) would put TLS on the server leg of every other measurement.
        tls = f"server_tls_mode = {server_tls_mode}\n"
        if client_tls:  # (mode, cert, key)
            tls += (f"client_tls_mode = {client_tls[0]}\nclient_tls_cert_file = {client_tls[1]}\n"
                    f"client_tls_key_file = {client_tls[2]}\n")
        # guard = on | strict | off (the stickiness guard); None leaves the daemon's default.
        guard_line = f"guard = {guard}\n" if guard is not None else ""
        # pool: session pooling with the router's own login, trust as PgBouncer has here
        auth = ""
        if pool:
            with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
                f.write('"bench" ""\n')
            guard_line += "pool_mode = session\npool_size = 6000\nmax_server_conn = 6000\n"
            auth = f"[auth]\nauth_type = trust\nauth_file = {self.dir}/userlist.txt\n\n"
        clusters = "".join(f"[cluster.{n}]\nhosts = 127.0.0.1:{s.port}\nweight = 1\n\n"
                           for n, s in servers.items())
        with open(self.cfg, "w") as f:
            f.write(f"""[router]
listen = 127.0.0.1:{self.port}
tenant_key = app.tenant_id
tenant_sources = options, parameter
max_client_conn = {max_client_conn}
client_login_timeout = 60s
server_connect_timeout = 5s
shutdown_timeout = 2s
log_level = {S.log_level}
{guard_line}{tls}
[health]
interval = 1s
timeout = 2s
fail_after = 2
conninfo = user=postgres dbname=postgres

[ring]
vnodes = 256

{clusters}{auth}{pins}""")
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=120):
        self.log = open(self.logfile, "ab")
        self.proc = subprocess.Popen([S.tr_bin, "-c", self.cfg], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, cwd=self.dir)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited {self.proc.returncode}:\n{tail(self.logfile)}")
            with open(self.logfile, errors="replace") as f:
                return "listening on" in f.read()
        wait_until(ready, timeout, "the router to listen")

    def route(self, tenants):
        out = {}
        for i in range(0, len(tenants), 2000):
            r = subprocess.run([S.tr_bin, "route", "-c", self.cfg] + tenants[i:i + 2000],
                               capture_output=True, text=True, timeout=60, check=True)
            for line in r.stdout.splitlines():
                t, c, _ = line.split("\t")
                out[t] = c
        return out

    def log_text(self):
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGINT)  # the second signal closes sessions at once
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        if self.proc:
            self.log.close()


class PgBouncer:
    def __init__(self, root, servers, target_cluster):
        self.dir = os.path.join(root, "pgbouncer")
        os.mkdir(self.dir, 0o700)
        self.port = free_port()
        self.ini = os.path.join(self.dir, "pgbouncer.ini")
        self.logfile = os.path.join(self.dir, "pgbouncer.log")
        a = servers[target_cluster]
        dbs = f"bench = host=127.0.0.1 port={a.port} dbname=bench\n" + "".join(
            f"bench_{n} = host=127.0.0.1 port={s.port} dbname=bench\n" for n, s in servers.items())
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            f.write('"bench" ""\n')
        with open(self.ini, "w") as f:
            f.write(f"""[databases]
{dbs}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/userlist.txt
pool_mode = session
max_client_conn = 12000
default_pool_size = 6000
max_db_connections = 0
ignore_startup_parameters = extra_float_digits, options
server_tls_sslmode = disable
""")
        if os.geteuid() == 0:
            uid, gid = pg_ids()
            for p in (self.dir, self.ini, os.path.join(self.dir, "userlist.txt")):
                os.chown(p, uid, gid)
        self.proc = None
        r = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True, timeout=10)
        self.version = r.stdout.splitlines()[0].strip() if r.stdout else "pgbouncer ?"

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        # setpriv execs pgbouncer in place (runuser would fork), so proc.pid is pgbouncer's pid.
        cmd = ["pgbouncer", self.ini]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] + cmd
        self.log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, cwd=self.dir)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited {self.proc.returncode}:\n"
                                   f"{tail(self.logfile)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return False
        wait_until(ready, 30, "pgbouncer to listen")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc:
            self.log.close()


# ------------------------------------------------------------------------------------------------
# The environment of benchmark clients

class Env:
    """Everything a workload needs: servers, proxies, tenant, where to connect."""

    def __init__(self):
        self.tmp = None
        self.servers = {}
        self.router = None
        self.pool_router = None
        self.pgb = None
        self.tenant = None
        self.target_cluster = "a"
        self.raw = []          # one dict per run
        self.extra = {}        # idle sessions, route bench, reload...
        self.notes = []
        self.warnings = {}     # router log warnings, per router log
        self.waited = 0.0      # seconds spent waiting for other load to pass
        self.certs = None      # the TLS section's CA and server certificate
        self.tls_routers = {}  # "router-tls-client", "router-tls-both" -> Router
        self.guard_routers = {}  # "router-guard-on", "router-guard-off" -> Router

    def _router(self, target):
        if target in ("router", "router-plain"):
            return self.router
        if target == "router-pool-session":
            return self.pool_router
        if target in self.guard_routers:
            return self.guard_routers[target]
        return self.tls_routers.get(target)

    def port(self, target):
        if target in ("direct", "direct-tls"):
            return self.servers[self.target_cluster].port
        return self.pgb.port if target == "pgbouncer" else self._router(target).port

    def proxy_pid(self, target):
        if target in ("direct", "direct-tls"):
            return None
        return self.pgb.pid if target == "pgbouncer" else self._router(target).pid

    def client_env(self, target):
        e = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        e.update(PGHOST="127.0.0.1", PGPORT=str(self.port(target)), PGUSER="bench",
                 PGDATABASE="bench", PGSSLMODE="disable", PGCONNECT_TIMEOUT="10",
                 PGOPTIONS=f"-c app.tenant_id={self.tenant}")
        if target in ("router-tls-client", "router-tls-both", "direct-tls"):
            # require; with a root certificate given libpq also checks the chain (verify-ca),
            # and a ~/.postgresql/root.crt of the user cannot get in the way.
            e.update(PGSSLMODE="require", PGSSLROOTCERT=self.certs["ca"])
        return e


# ------------------------------------------------------------------------------------------------
# Measuring one run

class Meter:
    """Proxy CPU, machine CPU and wall time around one run."""

    def __init__(self, pid):
        self.pid = pid

    def __enter__(self):
        self.load = loadavg()
        self.s0 = proc_snapshot()
        self.h0 = host_cpu()
        self.c0 = proc_cpu(self.pid)
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        c1 = proc_cpu(self.pid) if self.pid else None
        self.cpu = (c1 - self.c0) if c1 is not None else None
        h1 = host_cpu()
        tot = h1[1] - self.h0[1]
        self.busy = (h1[0] - self.h0[0]) / tot if tot else 0.0
        self.foreign = foreign_cpu(self.s0, proc_snapshot(), self.wall)
        return False


ERROR_RE = re.compile(r"\b(error|fatal|aborted|could not|unexpected)\b", re.I)


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(math.ceil(p / 100.0 * len(values))) - 1))
    return values[k]


def run_pgbench(env, target, rnd, wl):
    kind, mode, clients = wl["kind"], wl["mode"], wl["clients"]
    tag = f"{wl['name']}-{target}-r{rnd}"
    prefix = os.path.join(env.tmp, "pgbench-logs", tag)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    for f in glob.glob(prefix + ".*"):
        os.unlink(f)
    sampling = 1.0 if kind == "churn" else S.sampling
    # wl["script"]: a custom script (-f) instead of the built-in select-only one (-S); -s sets
    # :scale, which pgbench only detects by itself for its built-in scripts.
    what = ["-f", wl["script"], "-s", str(S.scale)] if wl.get("script") else ["-S"]
    args = ["pgbench", "-n", *what, "-M", mode, "-c", str(clients), "-j",
            str(min(2, clients)), "-T", str(int(S.seconds)), "-l",
            f"--sampling-rate={sampling}", f"--log-prefix={prefix}"]
    if kind == "churn":
        args.append("-C")
    row = dict(workload=wl["name"], target=target, round=rnd, status="ok", reason="",
               unit="tps", ops=0, conns=0)
    pid = env.proxy_pid(target)
    try:
        with Meter(pid) as m:
            r = subprocess.run(args, capture_output=True, text=True, env=env.client_env(target),
                               timeout=S.seconds + 120, stdin=subprocess.DEVNULL, cwd=env.tmp)
    except subprocess.TimeoutExpired:
        row.update(status="FAIL", reason="pgbench timed out")
        return row
    out, err = r.stdout, r.stderr
    tps = re.search(r"^tps = ([0-9.]+)", out, re.M)
    txns = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    lat = re.search(r"latency average = ([0-9.]+) ms", out)
    errs = [ln for ln in err.splitlines() if ERROR_RE.search(ln)]
    reason = []
    if r.returncode != 0:
        reason.append(f"exit {r.returncode}")
    if not tps or not txns or float(tps.group(1)) <= 0:
        reason.append("no tps")
    if failed and int(failed.group(1)) > 0:
        reason.append(f"{failed.group(1)} failed transactions")
    if errs:
        reason.append(errs[0][:160])
    lats = []
    for fn in glob.glob(prefix + ".*"):
        with open(fn) as f:
            for line in f:
                p = line.split()
                if len(p) >= 3 and p[2].isdigit():
                    lats.append(int(p[2]))
    if not lats and not reason:
        reason.append("no latency log")
    if reason:
        row.update(status="FAIL", reason="; ".join(reason))
    n = int(txns.group(1)) if txns else 0
    row.update(tput=float(tps.group(1)) if tps else 0.0, lat_mean_ms=float(lat.group(1)) if lat
               else None, lat_p99_ms=pct(lats, 99) / 1000.0 if lats else None, ops=n,
               conns=n if kind == "churn" else clients, wall_s=m.wall, proxy_cpu_s=m.cpu,
               host_busy=m.busy, load=m.load, samples=len(lats), foreign=m.foreign)
    row["cpu_us_per_op"] = m.cpu * 1e6 / n if (m.cpu is not None and n) else None
    for fn in glob.glob(prefix + ".*"):
        os.unlink(fn)
    return row


def psql(env, target, sql, **kw):
    return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          env=env.client_env(target), **kw)


def run_copy(env, target, rnd, wl):
    """COPY out to a file on tmpfs, or COPY in from it; byte and row counts checked."""
    row = dict(workload=wl["name"], target=target, round=rnd, status="ok", reason="", unit="MB/s",
               conns=1)
    exp_bytes, exp_rows = env.extra["copy_bytes"], env.extra["copy_rows"]
    a = env.servers[env.target_cluster]
    pid = env.proxy_pid(target)
    reason = []
    try:
        if wl["kind"] == "copy_out":
            out_path = env.extra["copy_out_file"]
            with open(out_path, "wb") as out:
                with Meter(pid) as m:
                    r = psql(env, target, "COPY copy_src TO STDOUT", stdout=out,
                             stderr=subprocess.PIPE, timeout=600, stdin=subprocess.DEVNULL)
            size = os.path.getsize(out_path)
            rows = 0
            with open(out_path, "rb") as f:
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    rows += chunk.count(b"\n")
            os.unlink(out_path)
            if size != exp_bytes:
                reason.append(f"got {size} bytes, expected {exp_bytes}")
            if rows != exp_rows:
                reason.append(f"got {rows} rows, expected {exp_rows}")
        else:
            with a.connect(user="bench", dbname="bench") as c:
                c.execute("TRUNCATE copy_dst")
            with open(env.extra["copy_in_file"], "rb") as inp:
                with Meter(pid) as m:
                    r = psql(env, target, "COPY copy_dst FROM STDIN", stdin=inp,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
            with a.connect(user="bench", dbname="bench") as c:
                rows, nbytes = c.execute(
                    "SELECT count(*), coalesce(sum(octet_length(id::text) + "
                    "octet_length(payload) + 2), 0) FROM copy_dst").fetchone()
            if rows != exp_rows:
                reason.append(f"table has {rows} rows, expected {exp_rows}")
            if nbytes != exp_bytes:
                reason.append(f"table holds {nbytes} bytes of text, expected {exp_bytes}")
            if r.stdout and f"COPY {exp_rows}" not in r.stdout.decode(errors="replace"):
                reason.append(f"psql said {r.stdout.decode(errors='replace').strip()!r}")
    except subprocess.TimeoutExpired:
        row.update(status="FAIL", reason="psql timed out")
        return row
    if r.returncode != 0:
        reason.append(f"psql exit {r.returncode}: "
                      f"{r.stderr.decode(errors='replace').strip()[:160]}")
    mb = exp_bytes / 1e6
    row.update(tput=mb / m.wall, lat_mean_ms=m.wall * 1000.0, lat_p99_ms=None, ops=exp_rows,
               mb=mb, wall_s=m.wall, proxy_cpu_s=m.cpu, host_busy=m.busy, load=m.load,
               foreign=m.foreign)
    row["cpu_us_per_op"] = m.cpu * 1e6 / mb if m.cpu is not None else None
    if reason:
        row.update(status="FAIL", reason="; ".join(reason))
    return row


# ------------------------------------------------------------------------------------------------
# Idle sessions: raw startup packets, held open

def startup_packet(user, dbname, tenant):
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", dbname), ("options", f"-c app.tenant_id={tenant}"),
                 ("application_name", "tr-bench-idle")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


class Conn:
    __slots__ = ("sock", "buf", "phase", "spec")

    def __init__(self, sock, spec):
        self.sock, self.buf, self.phase, self.spec = sock, bytearray(), "connect", spec


def _messages(c):
    """Yields (type, body) of the whole messages in c.buf, consuming them."""
    while len(c.buf) >= 5:
        ln = struct.unpack("!i", c.buf[1:5])[0]
        if len(c.buf) < 1 + ln:
            return
        t, body = chr(c.buf[0]), bytes(c.buf[5:1 + ln])
        del c.buf[:1 + ln]
        yield t, body


def _err_text(body):
    parts = {}
    for f in body.split(b"\0"):
        if f:
            parts[chr(f[0])] = f[1:].decode(errors="replace")
    return f"{parts.get('C', '?')} {parts.get('M', '')}"


def hold_sessions(port, specs, inflight=64, mem_floor=3 << 30, timeout=None):
    """Opens len(specs) sessions (each (dbname, tenant)) up to ReadyForQuery, at most inflight
    logins at a time. Stops early when MemAvailable falls below mem_floor. Returns
    (open Conns, failures {reason: count}, seconds, stopped_reason)."""
    sel = selectors.DefaultSelector()
    done, fails, pending = [], {}, 0
    nxt = 0
    stopped = None
    t0 = time.monotonic()
    deadline = t0 + (timeout or max(120, len(specs) / 20))
    checked = 0

    def fail(c, why):
        nonlocal pending
        fails[why] = fails.get(why, 0) + 1
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()
        pending -= 1

    while (nxt < len(specs) or pending) and time.monotonic() < deadline:
        while pending < inflight and nxt < len(specs) and stopped is None:
            if nxt - checked >= 200:
                checked = nxt
                if meminfo() < mem_floor:
                    stopped = f"MemAvailable below {mem_floor >> 20} MiB after {nxt} sessions"
                    break
            s = socket.socket()
            s.setblocking(False)
            c = Conn(s, specs[nxt])
            nxt += 1
            rc = s.connect_ex(("127.0.0.1", port))
            if rc not in (0, 115):  # EINPROGRESS
                fails[os.strerror(rc)] = fails.get(os.strerror(rc), 0) + 1
                s.close()
                continue
            sel.register(s, selectors.EVENT_WRITE, c)
            pending += 1
        if stopped and not pending:
            break
        for key, ev in sel.select(0.5):
            c = key.data
            if c.phase == "connect":
                e = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if e:
                    fail(c, f"connect: {os.strerror(e)}")
                    continue
                db, tenant = c.spec
                c.sock.send(startup_packet("bench", db, tenant))
                c.phase = "login"
                sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                fail(c, f"recv: {e.strerror}")
                continue
            if not data:
                fail(c, "closed during login")
                continue
            c.buf += data
            for t, body in _messages(c):
                if t == "R" and struct.unpack("!i", body[:4])[0] != 0:
                    fail(c, "server asked for a password")
                    break
                if t == "E":
                    fail(c, _err_text(body))
                    break
                if t == "Z":
                    sel.unregister(c.sock)
                    c.phase = "ready"
                    done.append(c)
                    pending -= 1
                    break
    if pending:
        for key in list(sel.get_map().values()):
            fail(key.data, "login timed out")
    sel.close()
    if nxt < len(specs) and not stopped:
        stopped = f"timed out after opening {len(done)}"
    return done, fails, time.monotonic() - t0, stopped


def query_all(conns, timeout=120):
    """Sends SELECT 1 on every session and waits for each ReadyForQuery; returns how many
    answered with a row and ReadyForQuery."""
    q = b"SELECT 1\0"
    msg = b"Q" + struct.pack("!i", len(q) + 4) + q
    sel = selectors.DefaultSelector()
    ok = 0
    for c in conns:
        c.buf = bytearray()
        try:
            c.sock.setblocking(True)
            c.sock.sendall(msg)
            c.sock.setblocking(False)
            sel.register(c.sock, selectors.EVENT_READ, [c, False])
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            c, got_row = key.data
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(c.sock)
                continue
            c.buf += data
            for t, _b in _messages(c):
                if t == "D":
                    key.data[1] = True
                elif t == "Z":
                    ok += key.data[1]
                    sel.unregister(c.sock)
                    break
    sel.close()
    return ok


def close_all(conns):
    term = b"X" + struct.pack("!i", 4)
    for c in conns:
        try:
            c.sock.setblocking(True)
            c.sock.sendall(term)
        except OSError:
            pass
        c.sock.close()


def balanced_tenants(router, n, prefix):
    """n tenants, half on each cluster (by the router's own `route`)."""
    want = {name: n // len(router_clusters) + (i < n % len(router_clusters))
            for i, name in enumerate(router_clusters)}
    got = {name: [] for name in router_clusters}
    i = 0
    while any(len(got[k]) < want[k] for k in got) and i < 20 * n + 1000:
        batch = [f"{prefix}{j}" for j in range(i, i + 4000)]
        i += 4000
        for t, c in router.route(batch).items():
            if len(got[c]) < want[c]:
                got[c].append(t)
    return got


router_clusters = ("a", "b")


def idle_step(env, n, label, router=None, with_pgbouncer=True):
    """Holds n idle sessions through the router (tenants spread over both clusters) and,
    optionally, through PgBouncer (databases bench_a / bench_b); reports RSS per session."""
    router = router or env.router
    res = {}
    spread = balanced_tenants(router, n, f"idle-{label}-")
    specs_router = []
    for k in range(max(len(v) for v in spread.values())):
        for c in router_clusters:
            if k < len(spread[c]):
                specs_router.append(("bench", spread[c][k]))
    targets = [("router", router.port, router.pid, specs_router)]
    if with_pgbouncer and env.pgb:
        specs_pgb = [(f"bench_{router_clusters[i % 2]}", f"idle-{label}-{i}") for i in range(n)]
        targets.append(("pgbouncer", env.pgb.port, env.pgb.pid, specs_pgb))
    for name, port, pid, specs in targets:
        say(f"idle sessions: opening {len(specs)} through {name}")
        time.sleep(1.0)
        rss0, mem0 = proc_status(pid, "VmRSS"), meminfo()
        cpu0 = proc_cpu(pid)
        half = len(specs) // 2
        conns, fails, secs, stopped = hold_sessions(port, specs[:half])
        time.sleep(1.0)
        rss_half, held_half = proc_status(pid, "VmRSS"), len(conns)
        if not stopped:
            c2, f2, s2, stopped = hold_sessions(port, specs[half:])
            conns += c2
            secs += s2
            for k, v in f2.items():
                fails[k] = fails.get(k, 0) + v
        cpu1 = proc_cpu(pid)
        time.sleep(1.0)
        rss1, mem1 = proc_status(pid, "VmRSS"), meminfo()
        anon = proc_status(pid, "RssAnon")
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        ok = query_all(conns)
        time.sleep(0.5)
        rss_q, mem_q = proc_status(pid, "VmRSS"), meminfo()
        close_all(conns)
        time.sleep(2.0)
        rss2 = proc_status(pid, "VmRSS")
        held = len(conns)
        r = dict(asked=len(specs), held=held, answered=ok, fails=fails, open_s=secs,
                 stopped=stopped, rss_before=rss0, rss_held=rss1, rss_after_close=rss2,
                 rss_anon_held=anon, fds=fds, rss_queried=rss_q,
                 rss_per_session=(rss1 - rss0) / held if held else None,
                 rss_marginal=((rss1 - rss_half) / (held - held_half)
                               if held > held_half else None),
                 rss_per_session_q=(rss_q - rss0) / held if held else None,
                 sys_mem_per_session=(mem0 - mem1) / held if held else None,
                 sys_mem_per_session_q=(mem0 - mem_q) / held if held else None,
                 cpu_us_per_login=(cpu1 - cpu0) * 1e6 / held if held else None,
                 spread={c: len(v) for c, v in spread.items()} if name == "router" else
                 {"a": (n + 1) // 2, "b": n // 2})
        r["status"] = "ok" if held == len(specs) and ok == held and not fails else "FAIL"
        res[name] = r
        say(f"  {name}: held {held}/{len(specs)} in {secs:.1f}s, answered {ok}, "
            f"RSS +{(rss1 - rss0) / 1024:.0f} KiB ({r['rss_per_session'] or 0:.0f} B/session, "
            f"second half {r['rss_marginal'] or 0:.0f} B/session), "
            f"fails {fails or '-'}{' stopped: ' + stopped if stopped else ''}")
        time.sleep(1.0)
    return res


# ------------------------------------------------------------------------------------------------
# Reload stall: SELECT 1 in a tight loop through the router while it reloads a big pins file

def latency_loop(conn, until, on_tick=None):
    """Runs SELECT 1 until until() is true; returns [(t_start, seconds)]."""
    out = []
    cur = conn.cursor()
    n = 0
    pc = time.perf_counter
    while True:
        t = pc()
        cur.execute("SELECT 1")
        cur.fetchone()
        out.append((t, pc() - t))
        n += 1
        if n % 64 == 0:
            if on_tick:
                on_tick()
            if until():
                return out


def lat_summary(samples):
    v = [d for _, d in samples]
    if not v:
        return {}
    return dict(n=len(v), median_ms=statistics.median(v) * 1e3, p99_ms=pct(v, 99) * 1e3,
                p999_ms=pct(v, 99.9) * 1e3, max_ms=max(v) * 1e3,
                over_5ms=sum(1 for x in v if x > 0.005))


def reload_step(env, pins_file):
    import gc
    r = Router(env.tmp, "router-reload", env.servers, pins_file=pins_file, max_client_conn=5000)
    say(f"reload: starting a router with {pins_file}")
    t0 = time.monotonic()
    wait_quiet()
    r.start(timeout=300)
    res = dict(startup_s=time.monotonic() - t0, rss_loaded=proc_status(r.pid, "VmRSS"))
    try:
        conn = psycopg.connect(host="127.0.0.1", port=r.port, user="bench", dbname="bench",
                               options=f"-c app.tenant_id={env.tenant}", autocommit=True,
                               connect_timeout=10, sslmode="disable")
        secs = max(2.0, min(5.0, S.seconds))
        gc.collect()
        gc.disable()
        try:
            # 1. the loop alone
            end = time.perf_counter() + secs
            base = latency_loop(conn, lambda: time.perf_counter() > end)
            # 2. the loop next to a CPU hog (control: what CPU contention alone does)
            hog = subprocess.Popen([sys.executable, "-c",
                                    f"import time\ne=time.time()+{secs}\nwhile time.time()<e: pass"])
            end = time.perf_counter() + secs
            ctrl = latency_loop(conn, lambda: time.perf_counter() > end)
            hog.wait(30)
            # 3. the loop during SIGHUP reloads (each until the log says it is done, + 0.5 s)
            reloads = []
            for _ in range(2 if S.quick else 3):
                size0 = os.path.getsize(r.logfile)
                state = {"done": None, "end": None}

                def tick(state=state, size0=size0):
                    if state["done"] is None and os.path.getsize(r.logfile) > size0:
                        with open(r.logfile, errors="replace") as f:
                            f.seek(size0)
                            txt = f.read()
                        if "reloaded configuration" in txt:
                            state["done"] = "ok"
                        elif "reload failed" in txt:
                            state["done"] = "failed"
                        if state["done"]:
                            state["t_done"] = time.perf_counter()
                            state["end"] = time.perf_counter() + 0.5
                hup = time.perf_counter()
                os.kill(r.pid, signal.SIGHUP)
                hard_end = hup + 300
                during = latency_loop(conn, lambda state=state, hard_end=hard_end: (
                    state["end"] is not None and time.perf_counter() > state["end"]) or
                    time.perf_counter() > hard_end, on_tick=tick)
                worst = sorted(during, key=lambda x: -x[1])[:3]
                reloads.append(dict(
                    samples=during, result=state["done"] or "no log line within 300 s",
                    secs=state.get("t_done", hup) - hup, max_ms=max(d for _, d in during) * 1e3,
                    worst=[(round((t - hup) * 1e3, 1), round(d * 1e3, 2)) for t, d in worst]))
        finally:
            gc.enable()
        conn.close()
        allr = [x for rl in reloads for x in rl["samples"]]
        results = {rl["result"] for rl in reloads}
        res.update(base=lat_summary(base), control=lat_summary(ctrl), reload=lat_summary(allr),
                   reload_result="ok" if results == {"ok"} else ", ".join(sorted(results)),
                   reload_s=mean(rl["secs"] for rl in reloads), nreloads=len(reloads),
                   per_reload=[dict(secs=rl["secs"], max_ms=rl["max_ms"], worst=rl["worst"],
                                    result=rl["result"]) for rl in reloads],
                   rss_after=proc_status(r.pid, "VmRSS"), hwm=proc_status(r.pid, "VmHWM"))
    finally:
        r.stop()
        env.warnings["router-reload"] = router_warnings(r)
    return res


def router_warnings(r):
    """warn/error lines of a router log, with counts (timestamps and session ids dropped)."""
    counts = {}
    for line in r.log_text().splitlines():
        m = re.match(r"^\S+ \S+ (warn|error) (.*)$", line)
        if not m:
            continue
        msg = re.sub(r"c=\d+ peer=\S+ ", "", m.group(2))
        msg = re.sub(r"\b\d{2,}\b", "N", msg)
        key = f"{m.group(1)}: {msg}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------
# Route micro-benchmark

def route_bench_step(env):
    pins_file = os.path.join(env.tmp, f"pins-{S.pins}.txt")
    say(f"route_bench: {S.pins} pins (writes {pins_file})")
    r = subprocess.run([S.route_bench, "-n", str(S.pins), "-q", "2000000", "-f", pins_file],
                       capture_output=True, text=True, timeout=600)
    vals = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition("\t")
        vals[k] = v
    vals["status"] = "ok" if r.returncode == 0 else "FAIL"
    if r.returncode != 0:
        vals["reason"] = r.stderr.strip()[:300]
    say("route_bench: " + ", ".join(f"{k}={v}" for k, v in vals.items()
                                    if k.startswith("ns_") or k.startswith("pins_load")
                                    or k == "pins_bytes_per_pin"))
    return vals, pins_file


# ------------------------------------------------------------------------------------------------
# Setup

def setup(env):
    env.tmp = tempfile.mkdtemp(prefix="tr-bench-")
    os.chmod(env.tmp, 0o711)
    maxc = max(200, int(S.idle * 0.6) + 200)
    env.servers = {n: PgServer(n, env.tmp) for n in router_clusters}
    if S.want("tls"):
        # ssl = on from the start (plaintext clients are unaffected): one CA and one server
        # certificate for 127.0.0.1 / localhost, shared by PostgreSQL and the TLS routers.
        env.certs = make_certs(os.path.join(env.tmp, "certs"))
        for s in env.servers.values():
            crt, key = os.path.join(s.dir, "server.crt"), os.path.join(s.dir, "server.key")
            shutil.copyfile(env.certs["cert"], crt)
            shutil.copyfile(env.certs["key"], key)
            os.chmod(key, 0o600)
            if os.geteuid() == 0:
                uid, gid = pg_ids()
                os.chown(crt, uid, gid)
                os.chown(key, uid, gid)
            s.ssl_files = (crt, key)
        say(f"TLS: CA and server certificate (ECDSA P-256, 127.0.0.1 / localhost) in "
            f"{os.path.dirname(env.certs['ca'])}; clusters start with ssl = on")
    errors = []

    def boot(s):
        try:
            s.init(maxc)
            s.start()
            s.sql("CREATE ROLE bench LOGIN")
            s.sql("CREATE DATABASE bench OWNER bench")
        except Exception as e:  # reported below
            errors.append(e)
    say(f"starting PostgreSQL clusters a and b (fsync=off, max_connections={maxc}) in {env.tmp}")
    th = [threading.Thread(target=boot, args=(s,)) for s in env.servers.values()]
    for t in th:
        t.start()
    for t in th:
        t.join(300)
    if errors:
        raise RuntimeError(f"could not start PostgreSQL: {errors[0]}")
    env.pg_version = env.servers["a"].sql("SHOW server_version")[0][0]
    a = env.servers[env.target_cluster]
    say(f"pgbench -i -s {S.scale} on cluster {env.target_cluster}")
    subprocess.run(["pgbench", "-i", "-q", "-s", str(S.scale)], check=True,
                   capture_output=True, timeout=600, env=env.client_env("direct"))
    if S.want("copy") or S.want("tls") or S.want("guard"):
        rows = int(S.copy_mb * 1e6 / 201)
        say(f"COPY source: {rows} rows (~{S.copy_mb} MB of COPY text)")
        with a.connect(user="bench", dbname="bench") as c:
            c.execute("CREATE TABLE copy_src AS SELECT g AS id, md5(g::text) || "
                      "repeat(md5((g * 7)::text), 5) AS payload "
                      f"FROM generate_series(1, {rows}) g")
            c.execute("VACUUM ANALYZE copy_src")
            c.execute("CREATE UNLOGGED TABLE copy_dst (LIKE copy_src)")
            env.extra["copy_rows"], env.extra["copy_bytes"] = c.execute(
                "SELECT count(*), sum(octet_length(id::text) + octet_length(payload) + 2) "
                "FROM copy_src").fetchone()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else env.tmp
        env.extra["copy_in_file"] = os.path.join(shm, f"tr-bench-{os.getpid()}-in.copy")
        env.extra["copy_out_file"] = os.path.join(shm, f"tr-bench-{os.getpid()}-out.copy")
    if S.want("copy"):
        with open(env.extra["copy_in_file"], "wb") as f:
            subprocess.run(["psql", "-X", "-q", "-c", "COPY copy_src TO STDOUT"], stdout=f,
                           check=True, timeout=600, env=env.client_env("direct"))
        if os.path.getsize(env.extra["copy_in_file"]) != env.extra["copy_bytes"]:
            raise RuntimeError("the COPY input file does not have the expected size")

    env.router = Router(env.tmp, "router", env.servers, max_client_conn=5000)
    say("starting tenant-router")
    env.router.start()
    if "router-pool-session" in TARGETS:
        env.pool_router = Router(env.tmp, "router-pool-session", env.servers,
                                 max_client_conn=5000, pool=True)
        say("starting tenant-router with pool_mode = session")
        env.pool_router.start()
    cands = [f"bench-{i}" for i in range(1, 200)]
    env.tenant = next(t for t, c in env.router.route(cands).items() if c == env.target_cluster)
    say(f"tenant {env.tenant!r} lives on cluster {env.target_cluster} "
        f"(tenant-router route); pgbench and COPY use it")
    env.pgb = PgBouncer(env.tmp, env.servers, env.target_cluster)
    say(f"starting {env.pgb.version} (session mode, auth_type=trust)")
    env.pgb.start()


def teardown(env):
    for p in (env.router, env.pool_router, env.pgb, *env.tls_routers.values(),
              *env.guard_routers.values()):
        if p:
            try:
                p.stop()
            except Exception as e:
                say(f"warning: {e}")
    for s in env.servers.values():
        s.cleanup()
    for k in ("copy_in_file", "copy_out_file"):
        f = env.extra.get(k)
        if f and os.path.exists(f):
            os.unlink(f)
    if env.tmp and not S.keep:
        shutil.rmtree(env.tmp, ignore_errors=True)
    elif env.tmp:
        say(f"kept {env.tmp}")


# ------------------------------------------------------------------------------------------------
# Workloads

def workloads():
    wl = []
    if S.want("select"):
        if S.quick:
            combos = [("simple", 1), ("simple", 16), ("extended", 16), ("prepared", 64)]
        else:
            combos = [(m, c) for m in ("simple", "extended", "prepared") for c in (1, 16, 64)]
        for m, c in combos:
            wl.append(dict(name=f"select {m} c{c}", kind="select", mode=m, clients=c))
    if S.want("churn"):
        wl.append(dict(name="churn -C c8", kind="churn", mode="simple", clients=8))
    if S.want("copy"):
        wl.append(dict(name="copy out", kind="copy_out", mode=None, clients=1))
        wl.append(dict(name="copy in", kind="copy_in", mode=None, clients=1))
    return wl


def run_workloads(env):
    wls = workloads()
    if not wls:
        return
    say("warm-up: pgbench -S -c 64 for 1 s against each target")
    for t in TARGETS:
        subprocess.run(["pgbench", "-n", "-S", "-c", "64", "-j", "2", "-T", "1"],
                       env=env.client_env(t), capture_output=True, timeout=120)
    for wl in wls:
        for rnd in range(1, S.rounds + 1):
            order = TARGETS if rnd % 2 == 1 else tuple(reversed(TARGETS))
            for t in order:
                waited = wait_quiet()
                if waited > 1:
                    env.waited += waited
                if wl["kind"] in ("select", "churn"):
                    row = run_pgbench(env, t, rnd, wl)
                else:
                    row = run_copy(env, t, rnd, wl)
                env.raw.append(row)
                say_row(row)
                time.sleep(0.3)


# ------------------------------------------------------------------------------------------------
# TLS (issue #4): the main router against routers with TLS on the client leg, on both legs, and
# PostgreSQL over TLS, in interleaved rounds

def make_certs(d):
    """A CA and a server certificate for 127.0.0.1 / localhost (ECDSA P-256), with the openssl
    command line tool; returns {"ca", "cert", "key"} paths."""
    os.makedirs(d, exist_ok=True)

    def ossl(*args):
        r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60,
                           cwd=d, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} exited {r.returncode}: {r.stderr.strip()}")
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl("req", "-x509", *newkey, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7",
         "-sha256", "-subj", "/CN=tenant-router bench CA")
    ossl("req", "-new", *newkey, "-keyout", "server.key", "-out", "server.csr", "-subj",
         "/CN=localhost")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("basicConstraints = CA:FALSE\n"
                "keyUsage = critical, digitalSignature, keyEncipherment\n"
                "extendedKeyUsage = serverAuth\n"
                "subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "7", "-sha256", "-extfile", "server.ext", "-out",
         "server.crt")
    ossl("verify", "-CAfile", "ca.crt", "server.crt")
    for k in ("ca.key", "server.key"):
        os.chmod(os.path.join(d, k), 0o600)
    return {k: os.path.join(d, f) for k, f in (("ca", "ca.crt"), ("cert", "server.crt"),
                                                ("key", "server.key"))}


def tls_workloads():
    return [dict(name="tls select simple c16", kind="select", mode="simple", clients=16),
            dict(name="tls copy out", kind="copy_out", mode=None, clients=1)]


TLS_EXPECT = {  # target: (client leg TLS, server leg TLS)
    "router-plain": (False, False), "router-tls-client": (True, False),
    "router-tls-both": (True, True), "direct-tls": (True, True)}


def tls_check(env, target):
    """What each leg of a session to target really uses: psql's \\conninfo for the client leg
    (libpq's view), pg_stat_ssl of the backend for the server leg (PostgreSQL's view). Returns
    (legs text, error or None)."""
    r = subprocess.run(
        ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", "\\conninfo", "-c",
         "SELECT CASE WHEN ssl THEN 'TLS ' || version || ' ' || cipher ELSE 'plaintext' END "
         "FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
        env=env.client_env(target), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        return "?", f"psql exit {r.returncode}: {r.stderr.strip()[:200]}"
    m = re.search(r"SSL connection \(protocol: (\S+), cipher: ([^,)]+)", r.stdout)
    client = f"TLS {m.group(1)} {m.group(2)}" if m else "plaintext"
    lines = [ln.strip() for ln in r.stdout.splitlines()
             if ln.strip() == "plaintext" or ln.startswith("TLS ")]
    server = lines[-1] if lines else "?"
    legs = f"{client} / {server}"
    want_c, want_s = TLS_EXPECT[target]
    if (client != "plaintext") != want_c or (server.startswith("TLS ")) != want_s:
        return legs, (f"expected client leg {'TLS' if want_c else 'plaintext'}, server leg "
                      f"{'TLS' if want_s else 'plaintext'}; got {legs}")
    return legs, None


def tls_step(env):
    """router-plain (the main router), router-tls-client (client_tls_mode = require), router-tls-
    both (and server_tls_mode = require) and direct-tls: pgbench -S simple c16 and COPY out,
    in interleaved rounds. Rows go to env.raw; returns {target: legs}."""
    c = env.certs
    say("TLS: starting router-tls-client (client_tls_mode = require, server_tls_mode = disable) "
        "and router-tls-both (client_tls_mode = require, server_tls_mode = require)")
    for name, smode in (("router-tls-client", "disable"), ("router-tls-both", "require")):
        r = Router(env.tmp, name, env.servers, max_client_conn=5000, server_tls_mode=smode,
                   client_tls=("require", c["cert"], c["key"]))
        env.tls_routers[name] = r
    info = {"legs": {}, "errors": {}}
    try:
        for name, r in env.tls_routers.items():
            try:
                r.start()
            except Exception as e:  # its runs are marked FAIL
                info["errors"][name] = f"router did not start: {str(e)[:300]}"
        for t in TLS_TARGETS:
            if t in info["errors"]:
                info["legs"][t] = "?"
                say(f"TLS: {t:<17} FAIL: {info['errors'][t]}")
                continue
            legs, err = tls_check(env, t)
            info["legs"][t] = legs
            say(f"TLS: {t:<17} client / server leg: {legs}{'  FAIL: ' + err if err else ''}")
            if err:
                info["errors"][t] = err
        say("TLS warm-up: pgbench -S -c 16 for 1 s against each target")
        for t in TLS_TARGETS:
            if t not in info["errors"]:
                subprocess.run(["pgbench", "-n", "-S", "-c", "16", "-j", "2", "-T", "1"],
                               env=env.client_env(t), capture_output=True, timeout=120)
        for wl in tls_workloads():
            for rnd in range(1, S.rounds + 1):
                order = TLS_TARGETS if rnd % 2 == 1 else tuple(reversed(TLS_TARGETS))
                for t in order:
                    if t in info["errors"]:
                        row = dict(workload=wl["name"], target=t, round=rnd, status="FAIL",
                                   reason=info["errors"][t], unit="tps" if wl["kind"] ==
                                   "select" else "MB/s", ops=0, conns=0)
                    else:
                        waited = wait_quiet()
                        if waited > 1:
                            env.waited += waited
                        row = (run_pgbench(env, t, rnd, wl) if wl["kind"] == "select"
                               else run_copy(env, t, rnd, wl))
                    env.raw.append(row)
                    say_row(row)
                    time.sleep(0.3)
    finally:
        for name, r in env.tls_routers.items():
            r.stop()
            env.warnings[name] = router_warnings(r)
        env.tls_routers = {}
    return info


def aggregate_tls(env):
    """Per TLS workload and target: means over OK runs; ratios to router-plain, paired by
    round."""
    by = {}
    for r in env.raw:
        by.setdefault((r["workload"], r["target"]), []).append(r)
    agg = []
    for wl in tls_workloads():
        w = wl["name"]
        plain = {r["round"]: r for r in by.get((w, "router-plain"), []) if r["status"] == "ok"}
        for t in TLS_TARGETS:
            runs = by.get((w, t), [])
            ok = [r for r in runs if r["status"] == "ok"]
            ratios = [r["tput"] / plain[r["round"]]["tput"] for r in ok
                      if r["round"] in plain and plain[r["round"]]["tput"] > 0]
            cpu_vs = [r["cpu_us_per_op"] / plain[r["round"]]["cpu_us_per_op"] for r in ok
                      if r["round"] in plain and r.get("cpu_us_per_op") is not None
                      and plain[r["round"]].get("cpu_us_per_op")]
            agg.append(dict(
                workload=w, kind=wl["kind"], target=t, runs=len(runs), ok=len(ok),
                fails=[r["reason"] for r in runs if r["status"] != "ok"],
                unit=runs[0]["unit"] if runs else "", tput=mean(r["tput"] for r in ok),
                lat_mean_ms=mean(r.get("lat_mean_ms") for r in ok),
                lat_p99_ms=mean(r.get("lat_p99_ms") for r in ok),
                ratio=mean(ratios), ratio_min=min(ratios) if ratios else None,
                ratio_max=max(ratios) if ratios else None,
                cpu_us_per_op=mean(r.get("cpu_us_per_op") for r in ok),
                cpu_vs_plain=mean(cpu_vs),
                host_busy=mean(r.get("host_busy") for r in ok),
                foreign=max((r.get("foreign") or 0 for r in runs), default=0)))
    return agg


def tls_report(env, tagg):
    """The TLS section of results.md (list of lines), and tls.tsv."""
    info = env.extra["tls"]
    cols = ["workload", "target", "legs", "runs", "ok", "tput", "unit", "lat_mean_ms",
            "lat_p99_ms", "ratio_to_plain", "ratio_min", "ratio_max", "cpu_us_per_op",
            "cpu_unit", "cpu_vs_plain", "host_busy", "foreign"]
    with open(os.path.join(S.results, "tls.tsv"), "w") as f:
        f.write("\t".join(cols) + "\n")
        for a in tagg:
            a = dict(a, cpu_unit=cpu_unit(a["kind"]), ratio_to_plain=a["ratio"],
                     legs=info["legs"].get(a["target"], ""))
            f.write("\t".join("" if a.get(c) is None else
                              (f"{a[c]:.6g}" if isinstance(a.get(c), float) else str(a[c]))
                              for c in cols) + "\n")
    L = ["\n## TLS (issue #4)\n"]
    L.append(f"{S.rounds} interleaved round(s) (router-plain, router-tls-client, "
             "router-tls-both, direct-tls, then reversed) of `pgbench -n -S -M simple -c 16 -j 2 "
             f"-T {int(S.seconds)}` and a {env.extra.get('copy_bytes', 0) / 1e6:.0f} MB `COPY "
             "copy_src TO STDOUT` (psql, to tmpfs). router-plain is the main router (plaintext "
             "on both legs); router-tls-client and router-tls-both are two more router "
             "processes with `client_tls_mode = require` and `server_tls_mode = disable` / "
             "`require`; direct-tls is PostgreSQL itself (`ssl = on`). TLS clients use "
             "`PGSSLMODE=require` (with `PGSSLROOTCERT` = the bench CA); certificates: a CA and "
             "one ECDSA P-256 server certificate for 127.0.0.1 / localhost, made with the "
             "openssl CLI. Ratio: throughput / router-plain in the same round, mean (min–max); "
             "router CPU: utime+stime of that router process per transaction or per MB, and "
             "its ratio to router-plain's in the same round.\n")
    L.append("| workload | target | client leg / server leg | runs ok | throughput | "
             "mean latency | p99 latency | ratio to router-plain | router CPU | "
             "CPU vs router-plain | busy | other |")
    L.append("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    def short(legs):  # "TLS TLSv1.3 CIPHER / plaintext" -> "TLSv1.3 / plain"
        return " / ".join(p.split()[1] if p.startswith("TLS ") else
                          ("plain" if p == "plaintext" else p)
                          for p in legs.split(" / "))
    for a in tagg:
        legs = short(info["legs"].get(a["target"], "?"))
        if a["ok"] == 0:
            L.append(f"| {a['workload']} | {a['target']} | {legs} | **FAIL** 0/{a['runs']} "
                     "| | | | | | | | |")
            continue
        lat = (f"{a['lat_mean_ms']:.3f} ms" if a["kind"] == "select"
               else f"{a['lat_mean_ms'] / 1000:.2f} s")
        p99 = f"{a['lat_p99_ms']:.3f} ms" if a["lat_p99_ms"] is not None else "–"
        ratio = ("1" if a["target"] == "router-plain" else
                 f"{a['ratio']:.3f} ({a['ratio_min']:.3f}–{a['ratio_max']:.3f})"
                 if a["ratio"] is not None else "n/a")
        cpu = (f"{a['cpu_us_per_op']:.1f} {cpu_unit(a['kind'])}"
               if a["cpu_us_per_op"] is not None else "–")
        vs = (f"{a['cpu_vs_plain']:.2f}×" if a["cpu_vs_plain"] is not None and
              a["target"] != "router-plain" else "")
        okc = f"{a['ok']}/{a['runs']}" + (" **FAIL**" if a["ok"] < a["runs"] else "")
        tput = f"{a['tput']:.0f} tps" if a["unit"] == "tps" else f"{a['tput']:.1f} MB/s"
        L.append(f"| {a['workload']} | {a['target']} | {legs} | {okc} | {tput} | {lat} | "
                 f"{p99} | {ratio} | {cpu} | {vs} | {a['host_busy'] * 100:.0f}% | "
                 f"{a['foreign']:.2f} |")
    L.append("\nLegs as seen by psql's `\\conninfo` (client leg) and `pg_stat_ssl` (server leg), "
             "checked before the runs:\n")
    L.extend(f"- {t}: {info['legs'].get(t, '?')}" for t in TLS_TARGETS)
    fails = [(a["workload"], a["target"], f) for a in tagg for f in a["fails"]]
    if fails:
        L.append("\nFailed TLS runs (left out of the means):\n")
        L.extend(f"- {w} / {t}: {f}" for w, t, f in fails)
    return L


# ------------------------------------------------------------------------------------------------
# The stickiness guard (issue #3): a router with `guard = on` against one with `guard = off`, in
# interleaved rounds; the cost is the router's CPU per transaction (or per MB)

GUARD_LIMIT = 1.05  # target: guard = on uses < 5 % more CPU per transaction than guard = off


def guard_script(env):
    """The pgbench script whose every transaction names the key, so the guard parses it: a SET of
    the session's own tenant (allowed: same tenant, same cluster), then the select-only query."""
    return os.path.join(env.tmp, "guard-set-select.sql")


def guard_workloads(env):
    """judged: its statements do not name the key (the byte search fails, nothing is parsed), so
    the < 5 % target applies."""
    return [dict(name="guard simple c16", kind="select", mode="simple", clients=16, judged=True),
            dict(name="guard extended c16", kind="select", mode="extended", clients=16,
                 judged=True),
            dict(name="guard SET+select c16", kind="select", mode="simple", clients=16,
                 script=guard_script(env), judged=False),
            dict(name="guard copy out", kind="copy_out", mode=None, clients=1, judged=False)]


def guard_check(env, target, other):
    """Is the guard of target really on or off? One psql session sets its own tenant (always
    allowed), then a tenant of the other cluster (guard = on: ERROR 42501, and the session stays
    usable; guard = off: forwarded), then SELECTs. Returns (what happened, error or None)."""
    r = subprocess.run(
        ["psql", "-X", "-A", "-t", "-v", "VERBOSITY=verbose",
         "-c", f"SET app.tenant_id = '{env.tenant}'", "-c", "SELECT 'own-ok'",
         "-c", f"SET app.tenant_id = '{other}'", "-c", "SELECT 'still-alive'"],
        env=env.client_env(target), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL)
    out, err = r.stdout, r.stderr
    if "own-ok" not in out:
        return "?", (f"SET of the session's own tenant failed (psql exit {r.returncode}): "
                     f"{err.strip()[:200]}")
    if "still-alive" not in out:
        return "?", f"the session did not survive the SET of another cluster's tenant: " \
            f"{err.strip()[:200]}"
    refused = "42501" in err
    seen = ("SET of another cluster's tenant refused (42501)" if refused else
            "SET of another cluster's tenant forwarded")
    want = target == "router-guard-on"
    if refused != want:
        return seen, (f"expected the SET of {other!r} (another cluster) to be "
                      f"{'refused' if want else 'forwarded'}; psql said: "
                      f"{(err.strip() or 'nothing')[:200]}")
    return seen, None


def guard_step(env):
    """router-guard-on (guard = on, explicit) and router-guard-off (guard = off): pgbench -S simple
    and extended c16, a SET-own-tenant + select script c16, and COPY out, in interleaved rounds
    (S.guard_rounds, order reversed every other round). Rows go to env.raw; returns info."""
    say("guard: starting router-guard-on (guard = on) and router-guard-off (guard = off)")
    for name, mode in (("router-guard-on", "on"), ("router-guard-off", "off")):
        env.guard_routers[name] = Router(env.tmp, name, env.servers, max_client_conn=5000,
                                         guard=mode)
    with open(guard_script(env), "w") as f:
        f.write("\\set aid random(1, 100000 * :scale)\n"
                f"SET app.tenant_id = '{env.tenant}';\n"
                "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n")
    info = {"checks": {}, "errors": {}, "other": None}
    try:
        for name, r in env.guard_routers.items():
            try:
                r.start()
            except Exception as e:  # its runs are marked FAIL
                info["errors"][name] = f"router did not start: {str(e)[:300]}"
        up = next((r for n, r in env.guard_routers.items() if n not in info["errors"]), None)
        if up:
            cands = [f"bench-{i}" for i in range(1, 200)]
            info["other"] = next((t for t, c in up.route(cands).items()
                                  if c != env.target_cluster), None)
        for t in GUARD_TARGETS:
            if t in info["errors"]:
                info["checks"][t] = "?"
                say(f"guard: {t:<17} FAIL: {info['errors'][t]}")
                continue
            if info["other"] is None:
                seen, err = "?", "no tenant of another cluster among bench-1..199"
            else:
                seen, err = guard_check(env, t, info["other"])
            info["checks"][t] = seen
            say(f"guard: {t:<17} {seen}{'  FAIL: ' + err if err else ''}")
            if err:
                info["errors"][t] = err
        say("guard warm-up: pgbench -S -c 16 for 1 s against each target")
        for t in GUARD_TARGETS:
            if t not in info["errors"]:
                subprocess.run(["pgbench", "-n", "-S", "-c", "16", "-j", "2", "-T", "1"],
                               env=env.client_env(t), capture_output=True, timeout=120)
        for wl in guard_workloads(env):
            for rnd in range(1, S.guard_rounds + 1):
                order = GUARD_TARGETS if rnd % 2 == 1 else tuple(reversed(GUARD_TARGETS))
                for t in order:
                    if t in info["errors"]:
                        row = dict(workload=wl["name"], target=t, round=rnd, status="FAIL",
                                   reason=info["errors"][t], unit="tps" if wl["kind"] ==
                                   "select" else "MB/s", ops=0, conns=0)
                    else:
                        waited = wait_quiet()
                        if waited > 1:
                            env.waited += waited
                        row = (run_pgbench(env, t, rnd, wl) if wl["kind"] == "select"
                               else run_copy(env, t, rnd, wl))
                    env.raw.append(row)
                    say_row(row)
                    time.sleep(0.3)
    finally:
        for name, r in env.guard_routers.items():
            r.stop()
            if r.proc:
                env.warnings[name] = router_warnings(r)
        env.guard_routers = {}
    for a in aggregate_guard(env):
        say(f"guard: {a['workload']:<21} CPU on {fmt(a['cpu_on'], '.1f')} / off "
            f"{fmt(a['cpu_off'], '.1f')} {cpu_unit(a['kind'])} = {fmt(a['cpu_ratio'], '.3f')}× "
            f"({fmt(a['cpu_ratio_min'], '.3f')}–{fmt(a['cpu_ratio_max'], '.3f')}); throughput "
            f"on/off {fmt(a['tput_ratio'], '.3f')}×; {a['verdict']}")
    return info


def aggregate_guard(env):
    """One row per guard workload: means over OK runs for on and off, and on/off ratios of CPU
    per transaction (or MB) and of throughput, paired by round."""
    by = {}
    for r in env.raw:
        by.setdefault((r["workload"], r["target"]), []).append(r)
    agg = []
    for wl in guard_workloads(env):
        w = wl["name"]
        runs = {t: by.get((w, t), []) for t in GUARD_TARGETS}
        ok = {t: [r for r in runs[t] if r["status"] == "ok"] for t in GUARD_TARGETS}
        on = {r["round"]: r for r in ok["router-guard-on"]}
        off = {r["round"]: r for r in ok["router-guard-off"]}
        paired = sorted(set(on) & set(off))
        cpu_r = [on[k]["cpu_us_per_op"] / off[k]["cpu_us_per_op"] for k in paired
                 if on[k].get("cpu_us_per_op") is not None and off[k].get("cpu_us_per_op")]
        tput_r = [on[k]["tput"] / off[k]["tput"] for k in paired if off[k]["tput"] > 0]
        cpu_ratio = mean(cpu_r)
        if not wl["judged"]:
            verdict = "not judged"
        elif cpu_ratio is None:
            verdict = "FAIL (no paired runs)"
        else:
            verdict = "PASS" if cpu_ratio < GUARD_LIMIT else "FAIL"
        allruns = runs["router-guard-on"] + runs["router-guard-off"]
        agg.append(dict(
            workload=w, kind=wl["kind"], mode=wl["mode"], judged=wl["judged"],
            runs_on=len(runs["router-guard-on"]), ok_on=len(on),
            runs_off=len(runs["router-guard-off"]), ok_off=len(off), paired=len(paired),
            unit=allruns[0]["unit"] if allruns else "",
            tput_on=mean(r["tput"] for r in on.values()),
            tput_off=mean(r["tput"] for r in off.values()),
            lat_on_ms=mean(r.get("lat_mean_ms") for r in on.values()),
            lat_off_ms=mean(r.get("lat_mean_ms") for r in off.values()),
            cpu_on=mean(r.get("cpu_us_per_op") for r in on.values()),
            cpu_off=mean(r.get("cpu_us_per_op") for r in off.values()),
            cpu_ratio=cpu_ratio, cpu_ratio_min=min(cpu_r) if cpu_r else None,
            cpu_ratio_max=max(cpu_r) if cpu_r else None,
            tput_ratio=mean(tput_r), tput_ratio_min=min(tput_r) if tput_r else None,
            tput_ratio_max=max(tput_r) if tput_r else None,
            host_busy=mean(r.get("host_busy") for r in allruns if r["status"] == "ok"),
            foreign=max((r.get("foreign") or 0 for r in allruns), default=0),
            fails=[(r["target"], r["reason"]) for r in allruns if r["status"] != "ok"],
            verdict=verdict))
    return agg


def guard_report(env, gagg):
    """The stickiness guard section of results.md (list of lines), and guard.tsv."""
    info = env.extra["guard"]
    cols = ["workload", "judged", "runs_on", "ok_on", "runs_off", "ok_off", "unit", "tput_on",
            "tput_off", "tput_ratio", "tput_ratio_min", "tput_ratio_max", "lat_on_ms",
            "lat_off_ms", "cpu_on", "cpu_off", "cpu_unit", "cpu_ratio", "cpu_ratio_min",
            "cpu_ratio_max", "host_busy", "foreign", "verdict"]
    with open(os.path.join(S.results, "guard.tsv"), "w") as f:
        f.write("\t".join(cols) + "\n")
        for a in gagg:
            a = dict(a, cpu_unit=cpu_unit(a["kind"]))
            f.write("\t".join("" if a.get(c) is None else
                              (f"{a[c]:.6g}" if isinstance(a.get(c), float) else str(a[c]))
                              for c in cols) + "\n")
    T = int(S.seconds)
    L = ["\n## Stickiness guard (issue #3)\n"]
    L.append(f"{S.guard_rounds} interleaved round(s) (router-guard-on, router-guard-off, then "
             "reversed) against two more router processes that differ only in `guard = on` / "
             "`guard = off` (no TLS). With the guard on, the router frames client → server "
             "messages and byte-searches every Query and Parse for the key's last word "
             "(`tenant_id`), parsing the SQL only on a match, and frames server → client message "
             "headers. Workloads: `pgbench -n -S -M simple -c 16 -j 2 -T "
             f"{T}` (guard simple c16), the same with `-M extended` (guard extended c16), "
             f"`pgbench -n -f SCRIPT -s {S.scale} -M simple -c 16 -j 2 -T {T}` where every "
             f"transaction is `SET app.tenant_id = '{env.tenant}'` (the session's own tenant, "
             "so the guard allows it) and the select-only query (guard SET+select c16: the "
             "parser runs on every transaction), and a "
             f"{env.extra.get('copy_bytes', 0) / 1e6:.0f} MB `COPY copy_src TO STDOUT` "
             "(psql, to tmpfs). Router CPU: utime+stime of that router process per "
             "transaction or per MB; on/off: guard = on over guard = off in the same round, "
             "mean (min–max over rounds).\n")
    L.append("**Target**: with the guard on, < 5 % more router CPU per transaction than with "
             "it off, for statements that do not name the key (guard simple c16 and guard "
             "extended c16); the other two rows are figures only.\n")
    L.append("| workload | runs ok (on / off) | throughput on | throughput off | "
             "throughput on/off | router CPU on | router CPU off | CPU on/off | target | "
             "busy | other |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")

    def tp(v, unit):
        return "–" if v is None else (f"{v:.0f} tps" if unit == "tps" else f"{v:.1f} MB/s")

    def rr(m, lo, hi):
        return "n/a" if m is None else f"{m:.3f} ({lo:.3f}–{hi:.3f})"

    for a in gagg:
        u = cpu_unit(a["kind"])
        okc = f"{a['ok_on']}/{a['runs_on']} / {a['ok_off']}/{a['runs_off']}"
        if a["ok_on"] < a["runs_on"] or a["ok_off"] < a["runs_off"]:
            okc += " **FAIL**"
        v = a["verdict"]
        v = f"**{v}**" if v.startswith("FAIL") else v
        busy = None if a["host_busy"] is None else a["host_busy"] * 100
        L.append(f"| {a['workload']} | {okc} | {tp(a['tput_on'], a['unit'])} | "
                 f"{tp(a['tput_off'], a['unit'])} | "
                 f"{rr(a['tput_ratio'], a['tput_ratio_min'], a['tput_ratio_max'])} | "
                 f"{fmt(a['cpu_on'], '.1f', '–')} {u} | {fmt(a['cpu_off'], '.1f', '–')} {u} | "
                 f"{rr(a['cpu_ratio'], a['cpu_ratio_min'], a['cpu_ratio_max'])} | {v} | "
                 f"{fmt(busy, '.0f', '–')}% | {a['foreign']:.2f} |")
    judged = [a for a in gagg if a["judged"]]
    if judged:
        ok = all(a["verdict"] == "PASS" for a in judged)
        L.append(f"\nTarget (< 5 % more CPU per transaction, statements without the key): "
                 f"**{'PASS' if ok else 'FAIL'}** ("
                 + "; ".join(f"{a['workload']}: {fmt(a['cpu_ratio'], '.3f')}×" for a in judged)
                 + "). The exit status does not depend on it, only on failed runs.")
    L.append("\nGuard checked before the runs (one psql session per router: SET of its own "
             f"tenant `{env.tenant}`, then of `{info.get('other')}`, a tenant of another "
             "cluster, then SELECT):\n")
    L.extend(f"- {t}: {info['checks'].get(t, '?')}" for t in GUARD_TARGETS)
    fails = [(a["workload"], t, f) for a in gagg for t, f in a["fails"]]
    if fails:
        L.append("\nFailed guard runs (left out of the means):\n")
        L.extend(f"- {w} / {t}: {f}" for w, t, f in fails)
    return L


def say_row(row):
    cpu = row.get("cpu_us_per_op")
    say(f"{row['workload']:<21} r{row['round']} {row['target']:<17} {row['status']:<4} "
        f"{row.get('tput', 0):>10.1f} {row['unit']:<4} "
        f"lat {row.get('lat_mean_ms') or 0:.3f} ms "
        f"p99 {row.get('lat_p99_ms') or 0:.3f} ms "
        f"cpu {'' if cpu is None else f'{cpu:.1f} us/op'} "
        f"busy {row.get('host_busy', 0) * 100:.0f}% "
        f"other {row.get('foreign', 0) * 100:.0f}%"
        f"{'  ' + row['reason'] if row['reason'] else ''}")


# ------------------------------------------------------------------------------------------------
# Report

def mean(v):
    v = [x for x in v if x is not None]
    return sum(v) / len(v) if v else None


def aggregate(env):
    """Per workload and target: means over OK runs; ratios paired round by round."""
    by = {}
    for r in env.raw:
        by.setdefault((r["workload"], r["target"]), []).append(r)
    agg = []
    for wl in workloads():
        w = wl["name"]
        direct = {r["round"]: r for r in by.get((w, "direct"), []) if r["status"] == "ok"}
        pgb = {r["round"]: r for r in by.get((w, "pgbouncer"), []) if r["status"] == "ok"}
        for t in TARGETS:
            runs = by.get((w, t), [])
            ok = [r for r in runs if r["status"] == "ok"]
            ratios = [r["tput"] / direct[r["round"]]["tput"] for r in ok
                      if r["round"] in direct and direct[r["round"]]["tput"] > 0]
            cpu_vs_pgb = [r["cpu_us_per_op"] / pgb[r["round"]]["cpu_us_per_op"] for r in ok
                          if r["round"] in pgb and r.get("cpu_us_per_op") is not None
                          and pgb[r["round"]].get("cpu_us_per_op")]
            agg.append(dict(
                workload=w, kind=wl["kind"], mode=wl["mode"], clients=wl["clients"], target=t,
                runs=len(runs), ok=len(ok), fails=[r["reason"] for r in runs
                                                   if r["status"] != "ok"],
                unit=runs[0]["unit"] if runs else "", tput=mean(r["tput"] for r in ok),
                lat_mean_ms=mean(r.get("lat_mean_ms") for r in ok),
                lat_p99_ms=mean(r.get("lat_p99_ms") for r in ok),
                ratio=mean(ratios), ratio_min=min(ratios) if ratios else None,
                ratio_max=max(ratios) if ratios else None,
                cpu_us_per_op=mean(r.get("cpu_us_per_op") for r in ok),
                cpu_vs_pgb=mean(cpu_vs_pgb),
                host_busy=mean(r.get("host_busy") for r in ok),
                foreign=max((r.get("foreign") or 0 for r in runs), default=0)))
    return agg


def fmt(v, spec=".2f", none="n/a"):
    return none if v is None else format(v, spec)


def cpu_unit(kind):
    return {"select": "µs/txn", "churn": "µs/conn", "copy_out": "µs/MB", "copy_in": "µs/MB"}[kind]


def evaluate(env, agg):
    """The targets of issue #5: list of (target, requirement, measured, verdict)."""
    A = {(a["workload"], a["target"]): a for a in agg}
    out = []

    def verdict(ok):
        return "met" if ok else "NOT met"

    for m in ("simple", "extended"):
        for c in (16, 64):
            w = f"select {m} c{c}"
            r, p = A.get((w, "router")), A.get((w, "pgbouncer"))
            if not r or not p:
                continue
            if r["ok"] == 0 or p["ok"] == 0 or r["cpu_vs_pgb"] is None:
                out.append((f"router CPU/txn, {w}", "≤ 0.5 × PgBouncer", "FAIL runs", "FAIL"))
                continue
            out.append((f"router CPU/txn, {w}", "≤ 0.5 × PgBouncer",
                        f"{r['cpu_us_per_op']:.1f} vs {p['cpu_us_per_op']:.1f} µs/txn = "
                        f"{r['cpu_vs_pgb']:.2f}×", verdict(r["cpu_vs_pgb"] <= 0.5)))
    for a in agg:
        if a["target"] != "router":
            continue
        need = {"select": 0.85, "churn": 0.95, "copy_out": 0.95, "copy_in": 0.95}[a["kind"]]
        what = "throughput" if a["kind"] in ("select", "churn") else "MB/s"
        if a["ok"] == 0 or a["ratio"] is None:
            out.append((f"{what}, {a['workload']}", f"≥ {need} × direct", "FAIL runs", "FAIL"))
            continue
        out.append((f"{what}, {a['workload']}", f"≥ {need} × direct",
                    f"{a['ratio']:.3f}× (rounds {a['ratio_min']:.3f}–{a['ratio_max']:.3f})",
                    verdict(a["ratio"] >= need)))
        if a["kind"] in ("copy_out", "copy_in"):
            p = A.get((a["workload"], "pgbouncer"))
            if a["cpu_vs_pgb"] is not None and p:
                out.append((f"router CPU/MB, {a['workload']}", "≤ 0.5 × PgBouncer",
                            f"{a['cpu_us_per_op']:.0f} vs {p['cpu_us_per_op']:.0f} µs/MB = "
                            f"{a['cpu_vs_pgb']:.2f}×", verdict(a["cpu_vs_pgb"] <= 0.5)))
    # Issue #10: session pooling against PgBouncer's session mode.
    pool_c = A.get(("churn -C c8", "router-pool-session"))
    pgb_c = A.get(("churn -C c8", "pgbouncer"))
    if pool_c and pgb_c:
        if pool_c["ok"] == 0 or pgb_c["ok"] == 0 or pool_c["cpu_vs_pgb"] is None:
            out.append(("pooled churn -C c8", "≥ PgBouncer's TPS, CPU/conn ≤ PgBouncer's",
                        "FAIL runs", "FAIL"))
        else:
            out.append(("pooled churn -C c8: throughput", "≥ PgBouncer session",
                        f"{pool_c['tput']:.0f} vs {pgb_c['tput']:.0f} tps = "
                        f"{pool_c['tput'] / pgb_c['tput']:.2f}×",
                        verdict(pool_c["tput"] >= pgb_c["tput"])))
            out.append(("pooled churn -C c8: router CPU per connection", "≤ PgBouncer's",
                        f"{pool_c['cpu_us_per_op']:.0f} vs {pgb_c['cpu_us_per_op']:.0f} µs/conn "
                        f"= {pool_c['cpu_vs_pgb']:.2f}×", verdict(pool_c["cpu_vs_pgb"] <= 1.0)))
    for a in agg:
        if a["target"] != "router-pool-session" or a["kind"] != "select":
            continue
        p = A.get((a["workload"], "pgbouncer"))
        if a["ok"] == 0 or not p or a["cpu_vs_pgb"] is None:
            out.append((f"pooled router CPU/txn, {a['workload']}", "≤ 1.0 × PgBouncer",
                        "FAIL runs", "FAIL"))
            continue
        out.append((f"pooled router CPU/txn, {a['workload']}", "≤ 1.0 × PgBouncer",
                    f"{a['cpu_us_per_op']:.1f} vs {p['cpu_us_per_op']:.1f} µs/txn = "
                    f"{a['cpu_vs_pgb']:.2f}×", verdict(a["cpu_vs_pgb"] <= 1.0)))
    idle = env.extra.get("idle")
    if idle and "router" in idle:
        r = idle["router"]
        if r["status"] != "ok" or r["rss_per_session"] is None:
            out.append(("router RSS per idle session", "≤ 2 KiB", "FAIL run", "FAIL"))
        else:
            out.append(("router RSS per idle session", "≤ 2 KiB",
                        f"{r['rss_per_session']:.0f} B over {r['held']} sessions "
                        f"(second half alone: {fmt(r.get('rss_marginal'), '.0f')} B)",
                        verdict(r["rss_per_session"] <= 2048)))
    big = env.extra.get("big")
    if big:
        r = big.get("router")
        if r is None:
            out.append(("concurrent sessions in one router process", "10 000",
                        big.get("skipped", "not run"), "not run"))
        else:
            note = f"held {r['held']} of {r['asked']}, {r['answered']} answered SELECT 1"
            if big.get("limited"):
                note += f"; {big['limited']}"
            v = verdict(r["held"] >= 10000 and r["answered"] == r["held"])
            if r["held"] < 10000 and r["status"] == "ok" and big.get("limited"):
                v = "NOT verified (limit of this machine)"
            out.append(("concurrent sessions in one router process", "10 000", note, v))
    rb = env.extra.get("route")
    if rb:
        if rb.get("status") != "ok":
            out.append(("route decision with pins", "≤ 200 ns", rb.get("reason", "FAIL"),
                        "FAIL"))
        else:
            worst = max(float(rb["ns_per_lookup_hit_lat"]), float(rb["ns_per_lookup_miss_lat"]))
            out.append((f"route decision, {int(rb['pins']):,} pins", "≤ 200 ns",
                        f"pinned {rb['ns_per_lookup_hit_lat']} ns, unpinned "
                        f"{rb['ns_per_lookup_miss_lat']} ns, mix {rb['ns_per_lookup_mix_lat']} ns"
                        f" (one at a time)", verdict(worst <= 200)))
    rl = env.extra.get("reload")
    if rl:
        if "reload" not in rl or not rl["reload"]:
            out.append(("reload stall", "≤ 5 ms", rl.get("error", "FAIL"), "FAIL"))
        else:
            stall = rl["reload"]["max_ms"] - rl["base"]["median_ms"]
            ok = rl["reload_result"] == "ok" and stall <= 5.0
            out.append(("SIGHUP reload of the pins file, worst SELECT 1 during it",
                        "off the loop, no stall > 5 ms",
                        f"max {rl['reload']['max_ms']:.2f} ms during {rl['nreloads']} reloads "
                        f"of {rl['reload_s']:.1f} s vs max {rl['base']['max_ms']:.2f} ms without "
                        f"(median {rl['base']['median_ms']:.3f} ms); reload "
                        f"{rl['reload_result']}", verdict(ok)))
    return out


def write_reports(env, agg, targets):
    os.makedirs(S.results, exist_ok=True)
    if agg:
        chart(env, agg)
    # raw.tsv
    cols = ["workload", "target", "round", "status", "tput", "unit", "lat_mean_ms", "lat_p99_ms",
            "ops", "conns", "wall_s", "proxy_cpu_s", "cpu_us_per_op", "host_busy", "foreign",
            "load", "reason"]
    with open(os.path.join(S.results, "raw.tsv"), "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in env.raw:
            f.write("\t".join("" if r.get(c) is None else
                              (f"{r[c]:.6g}" if isinstance(r.get(c), float) else str(r[c]))
                              for c in cols) + "\n")
    # results.tsv
    cols = ["workload", "target", "runs", "ok", "tput", "unit", "lat_mean_ms", "lat_p99_ms",
            "ratio", "ratio_min", "ratio_max", "cpu_us_per_op", "cpu_unit", "cpu_vs_pgb",
            "host_busy", "foreign"]
    with open(os.path.join(S.results, "results.tsv"), "w") as f:
        f.write("\t".join(cols) + "\n")
        for a in agg:
            a = dict(a, cpu_unit=cpu_unit(a["kind"]))
            f.write("\t".join("" if a.get(c) is None else
                              (f"{a[c]:.6g}" if isinstance(a.get(c), float) else str(a[c]))
                              for c in cols) + "\n")
        for name, r in (env.extra.get("idle") or {}).items():
            f.write(f"idle {r['asked']}\t{name}\t1\t{int(r['status'] == 'ok')}\t\t\t\t\t\t\t\t"
                    f"{fmt(r['rss_per_session'], '.1f', '')}\tB RSS/session\t\t\n")
        for k, v in (env.extra.get("route") or {}).items():
            f.write(f"route_bench\t{k}\t\t\t{v}\n")
    # results.md
    L = []
    L.append("# tenant-router benchmark results\n")
    L.append(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; commit: {env.git}; "
             f"host: {os.cpu_count()} CPUs ({env.cpu_model}), "
             f"{meminfo('MemTotal') / 2**30:.0f} GiB RAM; loopback only")
    L.append(f"- PostgreSQL {env.pg_version}, two clusters, **fsync = off**, "
             "synchronous_commit = off, full_page_writes = off, autovacuum = off, "
             "shared_buffers = 256MB; pgbench scale "
             f"{S.scale}; pgbench, the proxies and PostgreSQL share the same "
             f"{os.cpu_count()} CPUs")
    if env.pgb:
        L.append(f"- {env.pgb.version}: pool_mode = session, auth_type = trust (auth_file with "
                 "user bench), ignore_startup_parameters = extra_float_digits, options")
    L.append(f"- tenant-router: one process, log_level = {S.log_level}; tenant "
             f"`{env.tenant}` (cluster {env.target_cluster}) in "
             "`PGOPTIONS='-c app.tenant_id=…'` for every target")
    L.append(f"- {S.rounds} interleaved round(s) (direct, pgbouncer, router, then reversed), "
             f"{S.seconds:g} s per pgbench run{', QUICK mode' if S.quick else ''}; latency "
             f"p99 from pgbench -l --sampling-rate {S.sampling} (churn: every transaction)")
    L.append("- throughput: tps, or MB/s for COPY (MB = 10^6 bytes, a "
             f"{env.extra.get('copy_bytes', 0) / 1e6:.0f} MB COPY text of "
             f"{env.extra.get('copy_rows', 0)} rows, out to tmpfs / in to an unlogged table); "
             "ratio: to direct in the same round, mean (min–max over rounds); proxy CPU: "
             "utime+stime of the proxy process from /proc/PID/stat; busy: the whole machine's "
             "CPU use during the run; other: the most CPU (in CPUs) that processes not started "
             "by the benchmark used during any run of that row (the machine is shared; each "
             "run first waits up to 30 s for other load below 0.25 CPU)\n")
    L.append("## Workloads\n")
    if agg:
        L.append("| workload | target | runs ok | throughput | mean latency | p99 latency | "
                 "ratio to direct | proxy CPU | CPU vs PgBouncer | busy | other |")
        L.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    else:
        L.append("- none in this run (BENCH_ONLY)")
    for a in agg:
        if a["ok"] == 0:
            L.append(f"| {a['workload']} | {a['target']} | **FAIL** 0/{a['runs']} | | | | | | | | |")
            continue
        lat = (f"{a['lat_mean_ms']:.3f} ms" if a["kind"] in ("select", "churn")
               else f"{a['lat_mean_ms'] / 1000:.2f} s")
        p99 = f"{a['lat_p99_ms']:.3f} ms" if a["lat_p99_ms"] is not None else "–"
        ratio = ("1" if a["target"] == "direct" else
                 f"{a['ratio']:.3f} ({a['ratio_min']:.3f}–{a['ratio_max']:.3f})"
                 if a["ratio"] is not None else "n/a")
        cpu = (f"{a['cpu_us_per_op']:.1f} {cpu_unit(a['kind'])}"
               if a["cpu_us_per_op"] is not None else "–")
        vs = (f"{a['cpu_vs_pgb']:.2f}×" if a["target"] in ("router", "router-pool-session")
              and a["cpu_vs_pgb"] else "")
        okc = f"{a['ok']}/{a['runs']}" + (" **FAIL**" if a["ok"] < a["runs"] else "")
        tput = f"{a['tput']:.0f} tps" if a["unit"] == "tps" else f"{a['tput']:.1f} MB/s"
        L.append(f"| {a['workload']} | {a['target']} | {okc} | {tput} | {lat} | {p99} | "
                 f"{ratio} | {cpu} | {vs} | {a['host_busy'] * 100:.0f}% | "
                 f"{a['foreign']:.2f} |")
    fails = [(a["workload"], a["target"], f) for a in agg for f in a["fails"]]
    if fails:
        L.append("\nFailed runs (left out of the means):\n")
        for w, t, f in fails:
            L.append(f"- {w} / {t}: {f}")
    if env.extra.get("tls"):
        L.extend(tls_report(env, aggregate_tls(env)))
    if env.extra.get("guard"):
        L.extend(guard_report(env, aggregate_guard(env)))
    idle = env.extra.get("idle")
    big = env.extra.get("big")
    if idle or big:
        L.append("\n## Idle sessions (raw startup packets, held open)\n")
        L.append("| sessions | proxy | held | answered SELECT 1 | spread a/b | open time | "
                 "proxy RSS before → logged in → after SELECT 1 → after close | "
                 "RSS per session, logged in (second half only) | "
                 "RSS per session, after SELECT 1 | "
                 "machine memory per session, after SELECT 1 | proxy CPU per login |")
        L.append("| ---: | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |")
        for step, d in (("idle", idle or {}), ("big", {k: v for k, v in (big or {}).items()
                                                        if isinstance(v, dict)})):
            for name, r in d.items():
                mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
                st = "" if r["status"] == "ok" else " **FAIL**"
                L.append(f"| {r['asked']} | {name} | {r['held']}{st} | {r['answered']} | "
                         f"{r['spread'].get('a')}/{r['spread'].get('b')} | {r['open_s']:.1f} s | "
                         f"{mib(r['rss_before'])} → {mib(r['rss_held'])} → "
                         f"{mib(r['rss_queried'])} → {mib(r['rss_after_close'])} MiB | "
                         f"{fmt(r['rss_per_session'], '.0f')} B "
                         f"({fmt(r.get('rss_marginal'), '.0f')} B) | "
                         f"{fmt(r['rss_per_session_q'], '.0f')} B | "
                         f"{fmt(r['sys_mem_per_session_q'] / 1024 if r['sys_mem_per_session_q'] else None, '.0f')} KiB | "
                         f"{fmt(r['cpu_us_per_login'], '.0f')} µs |")
                if r["fails"] or r["stopped"]:
                    L.append(f"|  | {name} failures: {r['fails'] or ''} "
                             f"{r['stopped'] or ''} | | | | | | | | | |")
        if big and big.get("limited"):
            L.append(f"\nBig step: {big['limited']}.")
        if big and big.get("skipped"):
            L.append(f"\nBig step skipped: {big['skipped']}.")
        L.append("\nSessions are opened in two halves, at most 64 logins in flight; 'second "
                 "half only' is the RSS growth over the second half divided by its sessions "
                 "(the marginal cost, without what the first logins left behind).")
        L.append("\n'machine memory per session' is the drop of MemAvailable: mostly the "
                 "PostgreSQL backend behind each session. PgBouncer (session mode) completes a "
                 "client's login from its cache and takes a server connection only at the first "
                 "query, so its 'logged in' figure has no server side; 'after SELECT 1' has "
                 "both sides for every proxy. The router takes its server connection at login.")
    rb = env.extra.get("route")
    if rb:
        L.append("\n## Routing decision (tests/bench/route_bench.c)\n")
        if rb.get("status") != "ok":
            L.append(f"**FAIL**: {rb.get('reason')}")
        else:
            L.append(f"{int(rb['pins']):,} pins loaded from a {int(rb['pins_file_bytes']) / 1e6:.0f} "
                     f"MB file in {rb['pins_load_s']} s "
                     f"({float(rb['pins_load_lines_per_s']) / 1e6:.1f} M lines/s); table "
                     f"{int(rb['pins_memory_bytes']) / 2**20:.0f} MiB = {rb['pins_bytes_per_pin']} "
                     f"bytes per pin (RSS growth {rb['pins_rss_growth_bytes_per_pin']} B/pin); "
                     f"ring of {rb['ring_points']} points (2 clusters × 256 vnodes).\n")
            L.append("| ns per route_lookup | pinned tenant | unpinned (pins miss + ring) | "
                     "50/50 mix | ring only, no pins |")
            L.append("| --- | ---: | ---: | ---: | ---: |")
            L.append(f"| one at a time (each depends on the last) | {rb['ns_per_lookup_hit_lat']} | "
                     f"{rb['ns_per_lookup_miss_lat']} | {rb['ns_per_lookup_mix_lat']} | "
                     f"{rb['ns_per_lookup_ring_only_lat']} |")
            L.append(f"| back to back (independent) | {rb['ns_per_lookup_hit_thr']} | "
                     f"{rb['ns_per_lookup_miss_thr']} | {rb['ns_per_lookup_mix_thr']} | "
                     f"{rb['ns_per_lookup_ring_only_thr']} |")
    rl = env.extra.get("reload")
    if rl:
        L.append("\n## Reload of the pins file under load (SIGHUP)\n")
        if "base" not in rl:
            L.append(f"**FAIL**: {rl.get('error')}")
        else:
            npins = f"{int(rb['pins']):,}" if rb and rb.get("pins") else "?"
            L.append(f"A router with {npins} pins (start-up "
                     f"{rl['startup_s']:.1f} s, RSS {rl['rss_loaded'] / 2**20:.0f} MiB, peak "
                     f"{rl['hwm'] / 2**20:.0f} MiB, {rl['rss_after'] / 2**20:.0f} MiB after the "
                     f"reload); one session through it runs `SELECT 1` in a tight loop "
                     f"(psycopg). Reload: {rl['reload_result']}, "
                     f"{rl['reload_s']:.2f} s on average from SIGHUP to the log line, "
                     f"{rl['nreloads']} reloads.\n")
            L.append("| loop | queries | median | p99 | p99.9 | max | > 5 ms |")
            L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for k, label in (("base", "alone"), ("control", "next to a CPU-bound process "
                                                 "(control)"), ("reload", "during the reload")):
                s = rl[k]
                L.append(f"| {label} | {s['n']} | {s['median_ms']:.3f} ms | {s['p99_ms']:.3f} ms"
                         f" | {s['p999_ms']:.3f} ms | {s['max_ms']:.2f} ms | {s['over_5ms']} |")
            L.append("")
            for i, pr in enumerate(rl["per_reload"], 1):
                L.append(f"- reload {i}: {pr['result']}, {pr['secs']:.2f} s, worst SELECT 1 "
                         f"{pr['max_ms']:.2f} ms; worst samples (ms after SIGHUP, latency ms): "
                         f"{pr['worst']}")
    L.append("\n## Targets (issue #5)\n")
    if targets:
        L.append("| target | requirement | measured | verdict |")
        L.append("| --- | --- | --- | --- |")
    else:
        L.append("- none measured in this run (BENCH_ONLY)")
    for t in targets:
        L.append(f"| {t[0]} | {t[1]} | {t[2]} | {'**' + t[3] + '**' if t[3] != 'met' else t[3]} |")
    L.append("\n## Router log warnings\n")
    any_w = False
    for name, counts in env.warnings.items():
        for msg, n in sorted(counts.items(), key=lambda x: -x[1]):
            any_w = True
            L.append(f"- {name}: {n} × `{msg[:300]}`")
    if not any_w:
        L.append("- none")
    if env.notes:
        L.append("\n## Notes\n")
        L.extend(f"- {n}" for n in env.notes)
    L.append("")
    with open(os.path.join(S.results, "results.md"), "w") as f:
        f.write("\n".join(L))


def chart(env, agg):
    if not shutil.which("gnuplot"):
        env.notes.append("gnuplot not found: no chart")
        return
    A = {(a["workload"], a["target"]): a for a in agg}
    wls = workloads()
    cap = 1.5
    dat = os.path.join(S.results, "chart.dat")
    with open(dat, "w") as f:
        f.write("# workload\tdirect\tpgbouncer\trouter\trouter-pool-session "
                "(throughput / direct, same round)\n")
        for w in wls:
            vals = []
            for t in TARGETS:
                a = A.get((w["name"], t))
                vals.append(1.0 if t == "direct" and a and a["ok"] else
                            (a["ratio"] if a and a["ratio"] is not None else 0))
            f.write(f"\"{w['name']}\"\t" + "\t".join(f"{v:.4f}" for v in vals) + "\n")
    cdat = os.path.join(S.results, "chart_cpu.dat")
    with open(cdat, "w") as f:
        f.write("# workload\tpgbouncer\trouter\trouter-pool-session "
                "(proxy CPU µs per transaction or connection)\n")
        for w in wls:
            if w["kind"] not in ("select", "churn"):
                continue
            cpu = [A.get((w["name"], t)) for t in ("pgbouncer", "router", "router-pool-session")]
            cpu = [a["cpu_us_per_op"] if a and a["cpu_us_per_op"] is not None else 0
                   for a in cpu]
            f.write(f"\"{w['name']}\"\t" + "\t".join(f"{v:.2f}" for v in cpu) + "\n")
    png = os.path.join(S.results, "results.png")
    gp = os.path.join(S.results, "chart.gp")
    lab = "font \",8\" offset 0,0.6 notitle"
    with open(gp, "w") as f:
        f.write(f"""set terminal pngcairo size 1400,1000 font "sans,10"
set output '{png}'
set datafile separator "\\t"
set multiplot layout 2,1 title "tenant-router vs PgBouncer 1.18 (session) vs direct PostgreSQL 15 — {S.rounds} round(s) of {S.seconds:g} s, {os.cpu_count()} shared CPUs, loopback"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top left
set grid ytics
set xtics rotate by -25 noenhanced
set ylabel "throughput / direct (same round)"
set yrange [0:{cap}]
clip(x) = x > {cap - 0.1} ? {cap - 0.1} : x
set arrow from graph 0, first 0.85 to graph 1, first 0.85 nohead dt 2 lc rgb "red"
set arrow from graph 0, first 0.95 to graph 1, first 0.95 nohead dt 3 lc rgb "red"
plot '{dat}' using 2:xtic(1) title "direct" lc rgb "#999999", \\
     '' using 3 title "pgbouncer" lc rgb "#1f77b4", \\
     '' using 4 title "router" lc rgb "#d62728", \\
     '' using 5 title "router, pool_mode = session" lc rgb "#2ca02c", \\
     '' using ($0-0.3):(clip($2)):(sprintf("%.2f",$2)) with labels {lab}, \\
     '' using ($0-0.1):(clip($3)):(sprintf("%.2f",$3)) with labels {lab}, \\
     '' using ($0+0.1):(clip($4)):(sprintf("%.2f",$4)) with labels {lab}, \\
     '' using ($0+0.3):(clip($5)):(sprintf("%.2f",$5)) with labels {lab}
unset arrow
set style histogram clustered gap 1
set ylabel "proxy CPU µs per transaction (churn: per connection)"
set logscale y
set yrange [5:*]
plot '{cdat}' using ($2 > 0 ? $2 : 1/0):xtic(1) title "pgbouncer" lc rgb "#1f77b4", \\
     '' using ($3 > 0 ? $3 : 1/0) title "router" lc rgb "#d62728", \\
     '' using ($4 > 0 ? $4 : 1/0) title "router, pool_mode = session" lc rgb "#2ca02c", \\
     '' using ($0-0.25):2:(sprintf("%.0f",$2)) with labels {lab}, \\
     '' using ($0):3:(sprintf("%.0f",$3)) with labels {lab}, \\
     '' using ($0+0.25):4:(sprintf("%.0f",$4)) with labels {lab}
unset multiplot
""")
    r = subprocess.run(["gnuplot", gp], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        env.notes.append(f"gnuplot failed: {r.stderr.strip()[:300]}")


# ------------------------------------------------------------------------------------------------

def big_step(env):
    """As many concurrent sessions through one router as asked (default 10 000), servers
    restarted with enough max_connections, PgBouncer stopped to free memory."""
    res = {}
    soft, hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    n = S.big
    fd_cap = (hard - 64) // 2
    if n > fd_cap:
        res["limited"] = (f"the open-file hard limit here is {hard} (root without "
                          f"CAP_SYS_RESOURCE cannot raise it), and a routed session needs two "
                          f"descriptors, so at most {fd_cap} sessions fit in the router")
        n = fd_cap
    per = env.extra.get("idle", {}).get("router", {}).get("sys_mem_per_session") or 4 << 20
    avail = meminfo() - (4 << 30)
    if per * n > avail:
        cap = max(0, int(avail / per))
        res["limited"] = ((res.get("limited", "") + "; ") if "limited" in res else "") + \
            (f"memory: ~{per / 2**20:.1f} MiB per session (PostgreSQL backend) and "
             f"{meminfo() / 2**30:.1f} GiB available allow ~{cap}")
        n = min(n, cap)
    if n < 100:
        res["skipped"] = res.get("limited", "too few sessions possible")
        return res
    say(f"big: {n} sessions through one router; restarting the clusters with more "
        "max_connections; stopping PgBouncer and the main router")
    env.warnings["router"] = router_warnings(env.router)
    env.router.stop()
    env.router = None
    if env.pool_router:
        env.warnings["router-pool-session"] = router_warnings(env.pool_router)
        env.pool_router.stop()
        env.pool_router = None
    if env.pgb:
        env.pgb.stop()
    for s in env.servers.values():
        s.stop()
        s.set_max_connections(n // 2 + 300)
        s.start()
    r = Router(env.tmp, "router-big", env.servers, max_client_conn=max(12000, n + 100))
    r.start()
    try:
        res.update(idle_step(env, n, "big", router=r, with_pgbouncer=False))
    finally:
        r.stop()
        env.warnings["router-big"] = router_warnings(r)
    return res


def main():
    global S
    S = Settings()
    OUR_ROOTS.add(os.getpid())
    env = Env()
    env.git = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip() or "?"
    with open("/proc/cpuinfo") as f:
        env.cpu_model = next((ln.split(":", 1)[1].strip() for ln in f
                              if ln.startswith("model name")), "?")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    t_start = time.monotonic()
    os.makedirs(S.results, exist_ok=True)
    say(f"results in {S.results}; rounds={S.rounds} seconds={S.seconds:g}"
        f"{' QUICK' if S.quick else ''}")
    rc = 0
    try:
        # The micro-benchmark first, on a quiet machine; it also writes the pins file.
        pins_file = None
        env.tmp = None
        if S.want("route") or S.want("reload"):
            pre = tempfile.mkdtemp(prefix="tr-bench-pins-")
            os.chmod(pre, 0o711)
            env.extra["pins_dir"] = pre
            env.tmp = pre
            rb, pins_file = route_bench_step(env)
            env.extra["route"] = rb
            env.tmp = None
        setup(env)
        run_workloads(env)
        if S.want("tls"):
            t0 = time.monotonic()
            env.extra["tls"] = tls_step(env)
            env.notes.append(f"TLS section: {time.monotonic() - t0:.0f} s")
        if S.want("guard"):
            t0 = time.monotonic()
            env.extra["guard"] = guard_step(env)
            env.notes.append(f"stickiness guard section: {time.monotonic() - t0:.0f} s")
        if S.want("idle") and S.idle > 0:
            env.extra["idle"] = idle_step(env, S.idle, "main")
        if S.want("reload") and pins_file and os.path.exists(pins_file):
            try:
                env.extra["reload"] = reload_step(env, pins_file)
            except Exception as e:
                env.extra["reload"] = {"error": str(e)[:300]}
                say(f"reload step failed: {e}")
        if env.router:
            env.warnings["router"] = router_warnings(env.router)
        if env.pool_router:
            env.warnings["router-pool-session"] = router_warnings(env.pool_router)
        if S.want("big") and S.big > 0:
            env.extra["big"] = big_step(env)
        agg = aggregate(env)
        targets = evaluate(env, agg)
        env.notes.append(f"total benchmark time {time.monotonic() - t_start:.0f} s")
        write_reports(env, agg, targets)
        say(f"wrote {S.results}/results.md, results.tsv, raw.tsv, results.png"
            f"{', tls.tsv' if env.extra.get('tls') else ''}"
            f"{', guard.tsv' if env.extra.get('guard') else ''}")
        with open(os.path.join(S.results, "results.md")) as f:
            print(f.read())
        if any(t[3] == "FAIL" for t in targets) or any(r["status"] != "ok" for r in env.raw):
            rc = 1
    except KeyboardInterrupt as e:
        say(f"interrupted ({e}); cleaning up")
        rc = 130
    finally:
        teardown(env)
        d = env.extra.get("pins_dir")
        if d:
            shutil.rmtree(d, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
