"""docker/ without a Docker engine: what can be checked here is checked here.

CI has no Docker engine, so nothing in docker/ is built or started. Instead:
- docker/compose.yml passes `docker-compose config` (Debian's docker-compose 1.29, which validates
  without an engine; skipped when it is not installed) and has the topology: two Citus clusters of a
  coordinator and three workers, an init service per cluster, the router built from
  docker/Dockerfile, and a plain PostgreSQL `federation` database;
- docker/Dockerfile installs every build package of .ci/install-deps' build section and, at run
  time, every library the real binary needs (read from the binary, mapped to packages with dpkg);
- docker/citus-init.sh and docker/citus-init.sql run against a real PostgreSQL 15 without Citus,
  and against one with stand-ins for the Citus functions, which record how they were called;
- docker/router.ini passes `tenant-router --check`, routes as its pins say, and a router running
  it answers the image's HEALTHCHECK (pg_isready) with exit 0.
"""

import configparser
import os
import re
import shutil
import subprocess

import psycopg
import pytest

import harness

yaml = pytest.importorskip("yaml")

REPO = harness.REPO
DOCKER = os.path.join(REPO, "docker")
COMPOSE = os.path.join(DOCKER, "compose.yml")
DOCKERFILE = os.path.join(DOCKER, "Dockerfile")
ROUTER_INI = os.path.join(DOCKER, "router.ini")
INIT_SH = os.path.join(DOCKER, "citus-init.sh")
INIT_SQL = os.path.join(DOCKER, "citus-init.sql")
INSTALL_DEPS = os.path.join(REPO, ".ci", "install-deps")

CITUS_IMAGE = re.compile(r"^citusdata/citus:13\.\d+\.\d+-pg15$")
CLUSTERS = ("a", "b")

# The runtime libraries the image must install (the brief's list; the test below also derives
# the list from the binary itself).
RUNTIME_PKGS = {"libuv1", "libpq5", "libxxhash0", "libinih1", "libssl3", "libpg-query1504.0",
                "libprotobuf-c1"}
CONFIG_IN_IMAGE = "/etc/tenant-router/router.ini"


def run(args, timeout=60, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


# --- compose.yml -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose():
    """The compose file as `docker-compose config` resolves it (anchors, merges, paths), or as
    PyYAML reads it when docker-compose is not installed."""
    if shutil.which("docker-compose"):
        r = run(["docker-compose", "-f", COMPOSE, "config"], cwd=REPO)
        assert r.returncode == 0, r.stderr
        return yaml.safe_load(r.stdout)
    with open(COMPOSE) as f:
        return yaml.safe_load(f)


def services_by_role(compose, role, cluster=None):
    out = {}
    for name, svc in compose["services"].items():
        labels = svc.get("labels") or {}
        if labels.get("tenant-router.role") != role:
            continue
        if cluster is not None and labels.get("tenant-router.cluster") != cluster:
            continue
        out[name] = svc
    return out


def test_compose_config_validates():
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is not installed (.ci/install-deps installs it)")
    r = run(["docker-compose", "-f", COMPOSE, "config", "-q"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(os.path.join(DOCKER, "citus-compose.yml")), \
        "the old compose file name is back"


def assert_pg_isready_healthcheck(name, svc, port):
    hc = svc.get("healthcheck")
    assert hc, f"{name} has no healthcheck"
    test = hc["test"]
    assert test[0] == "CMD" and test[1] == "pg_isready", f"{name}: {test}"
    assert "-h" in test and test[test.index("-h") + 1] == "127.0.0.1", f"{name}: {test}"
    assert test[test.index("-p") + 1] == str(port), f"{name}: {test}"


def test_compose_two_citus_clusters_of_a_coordinator_and_three_workers(compose):
    coords = services_by_role(compose, "coordinator")
    workers = services_by_role(compose, "worker")
    assert len(coords) == 2, sorted(coords)
    assert len(workers) == 6, sorted(workers)
    for c in CLUSTERS:
        cc = services_by_role(compose, "coordinator", c)
        cw = services_by_role(compose, "worker", c)
        assert sorted(cc) == [f"{c}-coord"], sorted(cc)
        assert sorted(cw) == [f"{c}-worker{i}" for i in (1, 2, 3)], sorted(cw)
        for name, svc in {**cc, **cw}.items():
            assert CITUS_IMAGE.match(svc["image"]), f"{name}: image {svc['image']} not pinned"
            assert svc.get("hostname") == name
            assert svc["environment"]["POSTGRES_DB"] == "app"
            assert svc["environment"]["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
            assert_pg_isready_healthcheck(name, svc, 5432)
            assert any("citus-pgpass.sh" in v for v in svc.get("volumes", [])), name
        # The coordinator's server defaults: 3 shards, 2 copies.
        cmd = " ".join(cc[f"{c}-coord"]["command"])
        assert "citus.shard_count=3" in cmd and "citus.shard_replication_factor=2" in cmd, cmd


def test_compose_init_services_register_their_own_workers(compose):
    for c in CLUSTERS:
        inits = services_by_role(compose, "init", c)
        assert sorted(inits) == [f"{c}-init"], sorted(inits)
        svc = inits[f"{c}-init"]
        assert CITUS_IMAGE.match(svc["image"]), svc["image"]
        env = svc["environment"]
        assert env["PGHOST"] == f"{c}-coord"
        assert env["PGDATABASE"] == "app"
        workers = sorted(services_by_role(compose, "worker", c))
        assert env["WORKERS"].split() == workers
        deps = svc["depends_on"]
        assert sorted(deps) == sorted([f"{c}-coord"] + workers)
        assert all(d["condition"] == "service_healthy" for d in deps.values()), deps
        assert svc["entrypoint"][-1] == "/init/citus-init.sh"
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert os.path.basename(mounts["/init/citus-init.sh"]) == "citus-init.sh"
        assert os.path.basename(mounts["/init/citus-init.sql"]) == "citus-init.sql"
        assert svc.get("restart", "no") == "no"


def test_compose_router_and_federation(compose):
    routers = services_by_role(compose, "router")
    assert sorted(routers) == ["router"]
    r = routers["router"]
    build = r["build"]
    assert os.path.realpath(build["context"]) == os.path.realpath(REPO), build
    assert build["dockerfile"] == "docker/Dockerfile", build
    assert_pg_isready_healthcheck("router", r, 6432)
    deps = r["depends_on"]
    for c in CLUSTERS:
        assert deps[f"{c}-init"]["condition"] == "service_completed_successfully", deps
    mounts = [v.split(":") for v in r["volumes"]]
    assert any(os.path.basename(src) == "router.ini" and dst == CONFIG_IN_IMAGE
               for src, dst, *_ in mounts), mounts
    assert any("127.0.0.1:6432:6432" in str(p) for p in r["ports"]), r["ports"]

    feds = services_by_role(compose, "federation")
    assert sorted(feds) == ["federation"]
    f = feds["federation"]
    assert re.match(r"^postgres:15[-.\w]*$", f["image"]), f["image"]
    assert f["environment"]["POSTGRES_DB"] == "federation"
    assert_pg_isready_healthcheck("federation", f, 5432)

    # Every long-running service has a healthcheck; every volume source exists.
    for name, svc in compose["services"].items():
        if svc.get("restart", "no") != "no":
            assert svc.get("healthcheck"), f"{name} has no healthcheck"
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith(("/", ".")):
                path = src if os.path.isabs(src) else os.path.join(DOCKER, src)
                assert os.path.exists(path), f"{name}: {src} does not exist"


# --- router.ini --------------------------------------------------------------------------------

def read_router_ini():
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read(ROUTER_INI)
    return cp


def test_router_ini_names_the_compose_coordinators(compose):
    cp = read_router_ini()
    clusters = {s.split(".", 1)[1]: cp[s]["hosts"] for s in cp.sections()
                if s.startswith("cluster.")}
    assert sorted(clusters) == list(CLUSTERS)
    for c, hosts in clusters.items():
        assert hosts.split() == [f"{c}-coord:5432"], hosts
        assert f"{c}-coord" in compose["services"]
    assert cp["router"]["listen"] == "0.0.0.0:6432"


def test_router_ini_check_and_route():
    """--check does not resolve host names (the health checker does, at every new connection),
    so the compose service names pass here where they do not resolve."""
    b = harness.router_binary()
    r = run([b, "--check", "-c", ROUTER_INI])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "configuration ok: 2 clusters, 2 pins" in r.stdout
    r = run([b, "route", "-c", ROUTER_INI, "42", "1001"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["42\tb\tpinned", "1001\ta\tpinned"]


def test_router_with_docker_ini_answers_the_healthcheck(make_router, clusters):
    """docker/router.ini, with only the listen address and the coordinators pointed at the local
    test servers, runs; the image's HEALTHCHECK command (pg_isready, no tenant) gets exit 0; a
    tenant pinned to b lands on b."""
    if not shutil.which("pg_isready"):
        pytest.skip("pg_isready is not installed")
    r = make_router(start=False)
    with open(ROUTER_INI) as f:
        text = f.read()
    text = text.replace("listen = 0.0.0.0:6432", f"listen = 127.0.0.1:{r.port}")
    for c in CLUSTERS:
        text = text.replace(f"hosts = {c}-coord:5432", f"hosts = 127.0.0.1:{clusters[c].port}")
    assert len(re.findall(r"^(listen|hosts) = 127\.0\.0\.1:\d+$", text, re.M)) == 3, text
    r.write_config(raw_ini=text)
    r.start()
    hc = run(["pg_isready", "-h", "127.0.0.1", "-p", str(r.port), "-U", "healthcheck",
              "-d", "healthcheck", "-t", "3"], timeout=10)
    assert hc.returncode == 0, hc.stdout + hc.stderr
    harness.wait_until(lambda: _lands(r, "42") == clusters["b"].port, 10,
                       what="tenant 42 on cluster b")


def _lands(r, tenant):
    try:
        return r.server_port(tenant)
    except psycopg.Error:
        return None


# --- Dockerfile ----------------------------------------------------------------------------------

def dockerfile_stages():
    """[(FROM line, {apt packages installed}, [instructions])] per stage, continuation lines
    joined."""
    with open(DOCKERFILE) as f:
        text = f.read()
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    stages = []
    for ins in lines:
        if ins.upper().startswith("FROM "):
            stages.append((ins, set(), []))
            continue
        assert stages, f"instruction before FROM: {ins}"
        stages[-1][2].append(ins)
        if ins.upper().startswith("RUN ") and "apt-get install" in ins:
            for part in ins.split("&&"):
                if "apt-get install" not in part:
                    continue
                words = part.split("apt-get install", 1)[1].split()
                stages[-1][1].update(w for w in words if not w.startswith("-"))
    return stages


def install_deps_build_packages():
    """The packages of .ci/install-deps' PKGS from the `# build` comment to the next section
    (`# unit tests`), the comment lines between (`# SQL parsing ...`) included."""
    with open(INSTALL_DEPS) as f:
        text = f.read()
    body = text.split("\nPKGS=(\n", 1)[1].split("\n)\n", 1)[0]
    pkgs, inside = [], False
    for line in body.splitlines():
        s = line.strip()
        if s == "# build":
            inside = True
            continue
        if s.startswith("# unit tests"):
            break
        if inside and s and not s.startswith("#"):
            pkgs.append(s)
    return pkgs


def test_dockerfile_stages_and_instructions():
    stages = dockerfile_stages()
    assert len(stages) == 2, [s[0] for s in stages]
    (b_from, _, _), (r_from, _, r_ins) = stages
    assert re.match(r"FROM debian:bookworm\S* AS build$", b_from), b_from
    assert re.match(r"FROM debian:bookworm(-slim)?$", r_from), r_from
    kinds = {i.split()[0].upper(): i for i in r_ins}
    user = [i for i in r_ins if i.upper().startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0"), user
    assert "HEALTHCHECK" in kinds and "pg_isready" in kinds["HEALTHCHECK"], kinds
    assert "6432" in kinds["HEALTHCHECK"]
    assert kinds["EXPOSE"].split()[1:] == ["6432"], kinds["EXPOSE"]
    assert "/usr/local/bin/tenant-router" in kinds["ENTRYPOINT"]
    assert CONFIG_IN_IMAGE in kinds["CMD"] and '"-c"' in kinds["CMD"], kinds["CMD"]
    copies = [i for i in r_ins if i.upper().startswith("COPY ")]
    assert any(i.split()[-2:] == ["docker/router.ini", CONFIG_IN_IMAGE] for i in copies), copies
    assert any("pg_isready" in i for i in copies), copies


def test_dockerfile_build_stage_has_every_build_package():
    wanted = install_deps_build_packages()
    assert {"build-essential", "libpg-query-dev", "libprotobuf-c-dev", "libssl-dev"} <= set(wanted)
    build_pkgs = dockerfile_stages()[0][1]
    missing = [p for p in wanted if p not in build_pkgs]
    assert not missing, f"build stage lacks {missing} (from .ci/install-deps)"
    assert "postgresql-client-15" in build_pkgs  # pg_isready for the runtime stage


def test_dockerfile_runtime_stage_has_every_library_the_binary_needs():
    runtime = dockerfile_stages()[1][1]
    assert RUNTIME_PKGS <= runtime, f"runtime stage lacks {sorted(RUNTIME_PKGS - runtime)}"
    # And derived from the binary: each DT_NEEDED library -> the Debian package that ships it.
    b = harness.router_binary()
    if not (shutil.which("readelf") and shutil.which("dpkg-query")):
        pytest.skip("readelf or dpkg-query missing")
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run(["readelf", "-d", b]).stdout)
    assert needed, "readelf found no NEEDED entries"
    # A `make test SAN=1` binary also links the sanitizer runtimes, which the image never has.
    needed = [lib for lib in needed if not re.match(r"lib(a|ub|l|t)san\.so", lib)]
    ldd = run(["ldd", b]).stdout
    paths = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
    pkgs = set()
    for lib in needed:
        path = os.path.realpath(paths[lib])
        r = run(["dpkg-query", "-S", path])
        if r.returncode != 0:  # /lib vs /usr/lib (merged /usr): try the other spelling
            alt = path[4:] if path.startswith("/usr/") else "/usr" + path
            r = run(["dpkg-query", "-S", alt])
        assert r.returncode == 0, f"no package ships {path}"
        pkgs.add(r.stdout.split(":", 1)[0])
    pkgs.discard("libc6")  # in every Debian image
    assert pkgs <= runtime, f"the binary needs {sorted(pkgs - runtime)}, not in the runtime stage"


def test_dockerfile_packages_exist_in_debian_12():
    """Every package name in the Dockerfile is known to this machine's Debian 12 archive, so
    `apt-get install` in the image would not stop at a misspelt or missing name."""
    try:
        with open("/etc/os-release") as f:
            osr = f.read()
    except OSError:
        osr = ""
    if "VERSION_CODENAME=bookworm" not in osr or not shutil.which("apt-cache"):
        pytest.skip("not Debian 12 (bookworm)")
    pkgs = set().union(*(s[1] for s in dockerfile_stages()))
    r = run(["apt-cache", "show", "--no-all-versions"] + sorted(pkgs))
    if r.returncode != 0 and "No packages found" not in r.stderr:
        pytest.skip(f"apt-cache show failed: {r.stderr.strip()}")
    found = set(re.findall(r"^Package: (\S+)$", r.stdout, re.M))
    assert pkgs <= found, f"unknown to apt-cache here: {sorted(pkgs - found)}"


# --- citus-init.sh / citus-init.sql --------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_pg():
    """A PostgreSQL 15 server of its own (no Citus, no roles but postgres)."""
    srv = harness.PgServer("docker-init")
    try:
        srv.init()
        srv.start()
        yield srv
    finally:
        srv.cleanup()


# Stand-ins with Citus's names, in the schema public of one database: the init file takes its
# Citus branch there, and they record each call with the settings in force at that moment.
CITUS_STUBS = r"""
CREATE TABLE citus_calls (n serial, fn text, args text[], shard_count text, repl_factor text);
CREATE TABLE pg_dist_node (nodeid serial, nodename text, nodeport int, groupid int,
                           isactive bool DEFAULT true);
CREATE TABLE pg_dist_partition (logicalrelid regclass, colocate_with text);
CREATE VIEW citus_shards AS SELECT logicalrelid::text AS table_name, 1 AS shardid,
    'stub'::text AS nodename FROM pg_dist_partition;
CREATE FUNCTION log_call(fn text, args text[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO citus_calls (fn, args, shard_count, repl_factor)
    VALUES (fn, args, current_setting('citus.shard_count', true),
            current_setting('citus.shard_replication_factor', true)) $$;
CREATE FUNCTION citus_set_coordinator_host(host text, port int DEFAULT 5432) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN
    PERFORM log_call('citus_set_coordinator_host', ARRAY[host, port::text]);
    DELETE FROM pg_dist_node WHERE groupid = 0;
    INSERT INTO pg_dist_node (nodename, nodeport, groupid) VALUES (host, port, 0);
END $$;
CREATE FUNCTION citus_add_node(nodename text, nodeport int) RETURNS int
LANGUAGE plpgsql AS $$ DECLARE id int; BEGIN
    PERFORM log_call('citus_add_node', ARRAY[nodename, nodeport::text]);
    INSERT INTO pg_dist_node (nodename, nodeport, groupid)
    VALUES (nodename, nodeport, (SELECT count(*) FROM pg_dist_node)) RETURNING nodeid INTO id;
    RETURN id;
END $$;
CREATE FUNCTION create_distributed_table(table_name regclass, distribution_column text,
    distribution_type text DEFAULT 'hash', colocate_with text DEFAULT 'default') RETURNS void
LANGUAGE plpgsql AS $$ BEGIN
    PERFORM log_call('create_distributed_table',
                     ARRAY[table_name::text, distribution_column, colocate_with]);
    INSERT INTO pg_dist_partition VALUES (table_name, colocate_with);
END $$;
"""


def run_init(srv, dbname, workers, coord="a-coord"):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(srv.port), PGUSER="postgres",
               PGDATABASE=dbname, WORKERS=workers, COORD_NAME=coord, WAIT_SECONDS="20",
               PGCONNECT_TIMEOUT="5")
    env.pop("PGPASSWORD", None)
    r = run(["sh", INIT_SH], env=env, timeout=120)
    assert r.returncode == 0, f"citus-init.sh exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "ERROR" not in r.stderr, r.stderr
    return r


def test_init_script_syntax():
    r = run(["sh", "-n", INIT_SH])
    assert r.returncode == 0, r.stderr
    with open(INIT_SQL) as f:
        sql = f.read()
    assert "ON_ERROR_STOP" in sql


def test_init_sql_runs_on_plain_postgresql(plain_pg):
    plain_pg.sql("CREATE DATABASE app")
    # The workers' names only feed the script's waits here; any name of this server will do.
    for _ in range(2):  # safe to run again
        r = run_init(plain_pg, "app", "127.0.0.1 localhost")
        assert "no Citus here" in r.stdout + r.stderr
    cols = plain_pg.sql(
        "SELECT table_name, string_agg(column_name, ',' ORDER BY ordinal_position) "
        "FROM information_schema.columns WHERE table_schema = 'public' GROUP BY 1 ORDER BY 1",
        dbname="app")
    assert cols == [("messages", "room_id,message_id,tenant_id,body,created_at"),
                    ("rooms", "room_id,tenant_id,name")], cols
    pks = plain_pg.sql(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'p' AND connamespace = 'public'::regnamespace ORDER BY 1", dbname="app")
    assert pks == [("messages", "PRIMARY KEY (room_id, message_id)"),
                   ("rooms", "PRIMARY KEY (room_id)")], pks
    # Role app (password app, scram) can use the tables, as the README's examples do.
    with plain_pg.connect(user="app", password="app", dbname="app",
                          options="-c app.tenant_id=42") as conn:
        conn.execute("INSERT INTO rooms (room_id, tenant_id, name) "
                     "VALUES (1, current_setting('app.tenant_id'), 'general')")
        conn.execute("INSERT INTO messages (room_id, tenant_id, body) "
                     "VALUES (1, current_setting('app.tenant_id'), 'hello')")
        rows = conn.execute("SELECT r.name, m.body FROM rooms r JOIN messages m USING (room_id) "
                            "WHERE r.tenant_id = '42'").fetchall()
        assert rows == [("general", "hello")]


def test_init_sql_citus_branch_with_stand_ins(plain_pg):
    plain_pg.sql("CREATE DATABASE app_citus_stub")
    with plain_pg.connect(dbname="app_citus_stub") as conn:
        conn.execute(CITUS_STUBS)
    # Three names of this server (127.1 is 127.0.0.1 to getaddrinfo), so the waits pass.
    workers = "127.0.0.1 127.1 localhost"
    for _ in range(2):
        run_init(plain_pg, "app_citus_stub", workers)
    calls = plain_pg.sql("SELECT fn, args, shard_count, repl_factor FROM citus_calls ORDER BY n",
                         dbname="app_citus_stub")
    port = str(plain_pg.port)
    first = calls[:6]
    assert first[0][:2] == ("citus_set_coordinator_host", ["a-coord", port])
    assert [c[:2] for c in first[1:4]] == [("citus_add_node", [w, port])
                                           for w in workers.split()]
    # Distributed by room_id, colocated, with 3 shards of 2 copies in force at that moment.
    assert first[4] == ("create_distributed_table", ["rooms", "room_id", "default"], "3", "2")
    assert first[5] == ("create_distributed_table", ["messages", "room_id", "rooms"], "3", "2")
    # The second run: the coordinator is set again (idempotent in Citus), nothing else repeats.
    assert [c[:2] for c in calls[6:]] == [("citus_set_coordinator_host", ["a-coord", port])]
