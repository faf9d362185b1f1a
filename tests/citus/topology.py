"""The seed topology on loopback from the installed Citus: clusters of one coordinator and
three workers, each an initdb'd harness.PgServer with shared_preload_libraries = citus.

citus.shard_count = 3 and citus.shard_replication_factor = 2, so every shard has a copy on two
of the three workers and each worker holds two of the three shards. The table msgs is
distributed by room_id and has a row-level security policy on tenant_id (see TABLE_SQL).
"""

import os
import signal
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import harness  # noqa: E402

PGBIN = harness.PGBIN


def citus_missing():
    """None when Citus is installed for this PostgreSQL, else why not (a skip message)."""
    pg_config = os.path.join(PGBIN, "pg_config")
    try:
        libdir = subprocess.run([pg_config, "--pkglibdir"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        sharedir = subprocess.run([pg_config, "--sharedir"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
    except OSError as e:
        return f"no pg_config at {pg_config}: {e}"
    if not os.path.exists(os.path.join(libdir, "citus.so")):
        return (f"Citus is not installed ({libdir}/citus.so is missing); see README, "
                "\"Citus\", for how to install it for make test-citus")
    if not os.path.exists(os.path.join(sharedir, "extension", "citus.control")):
        return f"Citus is not installed ({sharedir}/extension/citus.control is missing)"
    return None


# Workers trust loopback: the coordinator connects to them as the session's user, without a
# password (citus.node_conninfo cannot carry one). The coordinator keeps the harness's HBA, so
# the router's logins are the usual scram ones.
WORKER_HBA = (
    "local all all trust\n"
    "host all all 127.0.0.1/32 trust\n"
)

CITUS_CONF = (
    "shared_preload_libraries = 'citus'\n"
    # The test servers have no TLS; Citus's default is sslmode=require.
    "citus.node_conninfo = 'sslmode=disable'\n"
    "citus.shard_count = 3\n"
    "citus.shard_replication_factor = 2\n"
    # No telemetry call home from a test machine.
    "citus.enable_statistics_collection = off\n"
    "max_connections = 200\n"
)

TABLE_SQL = (
    "CREATE TABLE msgs (room_id text NOT NULL, tenant_id text NOT NULL, body text)",
    "SELECT create_distributed_table('msgs', 'room_id')",
    "ALTER TABLE msgs ENABLE ROW LEVEL SECURITY",
    # app owns the table; owners bypass RLS unless it is forced.
    "ALTER TABLE msgs FORCE ROW LEVEL SECURITY",
    # The tenant as the transaction sets it (SET LOCAL, propagated to the workers); missing_ok
    # so a statement without it sees no rows rather than an error.
    "CREATE POLICY msgs_tenant ON msgs USING "
    "(tenant_id = current_setting('app.tenant_id', true))",
)


class CitusNode(harness.PgServer):
    def __init__(self, name, worker):
        super().__init__(name)
        self.worker = worker
        self.frozen = []

    def init(self):
        super().init()
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(CITUS_CONF)
        if self.worker:
            with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
                f.write(WORKER_HBA)

    def pids(self):
        """The postmaster and every child of it."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            pm = int(f.readline())
        out = [pm]
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pm:
                out.append(int(d))
        return out

    def freeze(self):
        """SIGSTOP the postmaster and its children (a hung host: TCP still accepts)."""
        self.frozen = self.pids()
        for p in self.frozen:
            os.kill(p, signal.SIGSTOP)

    def thaw(self):
        for p in self.frozen:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen = []

    def cleanup(self):
        self.thaw()
        super().cleanup()


class CitusCluster:
    """One coordinator and nworkers workers, database appdb, the table msgs."""

    def __init__(self, name, nworkers=3):
        self.name = name
        self.coord = CitusNode(f"{name}-coord", worker=False)
        self.workers = [CitusNode(f"{name}-w{i}", worker=True) for i in range(nworkers)]

    def nodes(self):
        return [self.coord] + self.workers

    def boot(self):
        errors = []

        def one(s):
            try:
                s.init()
                s.start()
                s.setup_roles()
                s.sql("CREATE EXTENSION citus", dbname="appdb")
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(s,)) for s in self.nodes()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        if errors or any(t.is_alive() for t in threads):
            raise RuntimeError(f"could not start Citus cluster {self.name}: {errors}")
        c = self.coord
        c.sql(f"SELECT citus_set_coordinator_host('127.0.0.1', {c.port})", dbname="appdb")
        for w in self.workers:
            c.sql(f"SELECT citus_add_node('127.0.0.1', {w.port})", dbname="appdb")
        with c.connect(user="postgres", dbname="appdb") as conn:
            conn.execute("GRANT ALL ON SCHEMA public TO app")
            # The recipe for the tenant on workers (README, Citus): SET LOCAL reaches them.
            conn.execute("ALTER DATABASE appdb SET citus.propagate_set_commands = 'local'")
        with c.connect(user="app", dbname="appdb", password=harness.APP_PASSWORD) as conn:
            for q in TABLE_SQL:
                conn.execute(q)

    def placements(self):
        """{worker port: [shardid, ...]} of msgs."""
        rows = self.coord.sql(
            "SELECT nodeport, shardid FROM pg_dist_shard_placement "
            "JOIN pg_dist_shard USING (shardid) WHERE logicalrelid = 'msgs'::regclass "
            "ORDER BY 1, 2", dbname="appdb")
        out = {}
        for port, shard in rows:
            out.setdefault(port, []).append(shard)
        return out

    def cleanup(self):
        for s in self.nodes():
            s.cleanup()


def start_citus_clusters(names=("a", "b"), nworkers=3):
    clusters = {n: CitusCluster(n, nworkers) for n in names}
    errors = []

    def one(c):
        try:
            c.boot()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(c,)) for c in clusters.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors or any(t.is_alive() for t in threads):
        for c in clusters.values():
            c.cleanup()
        raise RuntimeError(f"could not start the Citus topology: {errors}")
    return clusters
