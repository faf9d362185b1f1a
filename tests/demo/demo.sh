#!/usr/bin/env bash
# tests/demo/demo.sh - tenant-router in front of two local PostgreSQL 15 clusters.
#
#   tests/demo/demo.sh            start everything, print how to connect, run until Ctrl-C
#   tests/demo/demo.sh --smoke    start everything, connect through the router as a few tenants, check
#                                 that the cluster `route` names answers each, stop, exit 0 or 1
#
# `make demo` builds build/tenant-router and runs this script from the repository root.
#
# What it does: makes a temp dir /tmp/tenant-router-demo.XXXXXX; initdb's two clusters, a and b, and
# starts them on 127.0.0.1:5433 and :5434 (free ports instead when those are taken), as user postgres
# when run as root; creates role app (password app), database app and a small schema in each; then
# starts build/tenant-router -c conf/demo.ini on 127.0.0.1:6432. Everything is stopped and the temp
# dir removed on exit, Ctrl-C or SIGTERM, so the script can be run again straight away.
#
# Environment:
#   TR_BIN=PATH           router binary (default build/tenant-router)
#   PGBIN=DIR             PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   DEMO_ROUTER_PORT=N    router port (default 6432)
#   DEMO_NO_ROUTER=1      only the two clusters, no router (to try the PostgreSQL part alone)
#   DEMO_KEEP_ON_FAILURE=1   keep the temp dir (logs, data) when the script fails
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

SMOKE=0
case "${1:-}" in
"") ;;
--smoke) SMOKE=1 ;;
-h | --help)
	usage
	exit 0
	;;
*)
	usage >&2
	exit 2
	;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD

TR_BIN=${TR_BIN:-build/tenant-router}
[[ $TR_BIN == /* ]] || TR_BIN=$ROOT/$TR_BIN
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROUTER_PORT=${DEMO_ROUTER_PORT:-6432}
NO_ROUTER=${DEMO_NO_ROUTER:-0}
[[ $NO_ROUTER == 1 ]] || NO_ROUTER=0
PSQL=$PGBIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql || echo psql)
# Debian's python3 (the one on PATH may be a pyenv without what we need; we need only the stdlib).
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3 || true)

CLUSTERS=(a b)
declare -A PREFERRED_PORT=([a]=5433 [b]=5434)
TENANTS=(42 7 1001) # 42: inline pin in demo.ini, 1001: pins file, 7: the ring decides

# This script's own connections must not pick up a caller's libpq settings (PGSSLMODE=require would
# fail against the router, which answers SSLRequest with N; PGOPTIONS could carry another tenant).
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
	PGOPTIONS PGSSLMODE PGREQUIRESSL PGGSSENCMODE PGTARGETSESSIONATTRS PGCONNECT_TIMEOUT PGAPPNAME

say() { printf 'demo: %s\n' "$*"; }
die() {
	printf 'demo: error: %s\n' "$*" >&2
	exit 1
}

# ---------------------------------------------------------------------------------------------------
# Ports

# port_free PORT: true when 127.0.0.1:PORT can be bound (nothing listens there).
port_free() {
	if [[ -n $PY ]]; then
		"$PY" - "$1" <<-'EOF'
			import socket, sys
			s = socket.socket()
			s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
			try:
			    s.bind(("127.0.0.1", int(sys.argv[1])))
			except OSError:
			    sys.exit(1)
		EOF
	else
		if ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; then return 1; fi
	fi
}

# random_port: prints a port that is free right now.
random_port() {
	if [[ -n $PY ]]; then
		"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
	else
		local p
		for _ in $(seq 100); do
			p=$((20000 + RANDOM % 30000))
			port_free "$p" && {
				echo "$p"
				return
			}
		done
		die "found no free port"
	fi
}

# pick_port PREFERRED TAKEN...: PREFERRED if free and not taken, else a random free port not taken.
pick_port() {
	local want=$1 p
	shift
	p=$want
	for _ in $(seq 20); do
		if [[ " $* " != *" $p "* ]] && port_free "$p"; then
			echo "$p"
			return
		fi
		p=$(random_port)
	done
	die "found no free port"
}

# ---------------------------------------------------------------------------------------------------
# Cleanup: stop whatever was started, remove the temp dir. Runs on every exit.

TMP=
ROUTER_PID=
TAIL_PID=
SLEEP_PID=
STARTED=()

as_pg() {
	# PostgreSQL refuses to run as root: run its tools as user postgres then, from a directory that
	# user can read.
	if ((EUID == 0)); then
		(cd "$TMP" && runuser -u postgres -- "$@")
	else
		(cd "$TMP" && "$@")
	fi
}

# shellcheck disable=SC2317 # reached through the trap
cleanup() {
	local rc=$? c i
	trap - EXIT INT TERM
	set +e
	[[ -n $TAIL_PID ]] && kill "$TAIL_PID" 2>/dev/null
	[[ -n $SLEEP_PID ]] && kill "$SLEEP_PID" 2>/dev/null
	if [[ -n $ROUTER_PID ]] && kill -0 "$ROUTER_PID" 2>/dev/null; then
		say "stopping the router (pid $ROUTER_PID)"
		kill -TERM "$ROUTER_PID" 2>/dev/null
		for ((i = 0; i < 100; i++)); do
			kill -0 "$ROUTER_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$ROUTER_PID" 2>/dev/null; then
			say "the router did not stop within 10s; killing it"
			kill -KILL "$ROUTER_PID" 2>/dev/null
		fi
		wait "$ROUTER_PID" 2>/dev/null
	fi
	for c in "${STARTED[@]}"; do
		if [[ -f $TMP/$c/postmaster.pid ]]; then
			say "stopping cluster $c"
			as_pg "$PGBIN/pg_ctl" -D "$TMP/$c" -m fast -w -t 30 -s stop >/dev/null 2>&1 ||
				say "could not stop cluster $c; see $TMP/$c.log"
		fi
	done
	if [[ -n $TMP && -d $TMP ]]; then
		if ((rc != 0 && rc != 130 && rc != 143)) && [[ -n ${DEMO_KEEP_ON_FAILURE:-} ]]; then
			say "kept $TMP for inspection"
		else
			rm -rf "$TMP"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------
# Checks before starting anything

[[ -x $PGBIN/initdb && -x $PGBIN/pg_ctl ]] ||
	die "PostgreSQL 15 server binaries not found in $PGBIN (run: make deps, or set PGBIN)"
if ((EUID == 0)); then
	command -v runuser >/dev/null || die "runuser not found (package util-linux)"
	id postgres >/dev/null 2>&1 || die "running as root, but there is no user postgres to run PostgreSQL as"
fi
if ((!NO_ROUTER)); then
	[[ -x $TR_BIN ]] || die "router binary $TR_BIN not found: run \`make\` first (or set TR_BIN)"
	port_free "$ROUTER_PORT" ||
		die "port $ROUTER_PORT on 127.0.0.1 is already in use (another demo? a PgBouncer?): stop that," \
			"or choose another port with DEMO_ROUTER_PORT=N"
fi

# ---------------------------------------------------------------------------------------------------
# Temp dir, ports, configuration

TMP=$(mktemp -d /tmp/tenant-router-demo.XXXXXX)
chmod 755 "$TMP"
((EUID != 0)) || chown postgres: "$TMP"

declare -A PORT=()
taken=("$ROUTER_PORT")
for c in "${CLUSTERS[@]}"; do
	PORT[$c]=$(pick_port "${PREFERRED_PORT[$c]}" "${taken[@]}")
	taken+=("${PORT[$c]}")
done

# conf/demo.ini names ports 5433, 5434 and 6432. Use it as it is when those are ours; otherwise run a
# patched copy (with the pins file beside it) from the temp dir.
INI=$ROOT/conf/demo.ini
if [[ ${PORT[a]} != 5433 || ${PORT[b]} != 5434 || $ROUTER_PORT != 6432 ]]; then
	INI=$TMP/demo.ini
	sed -e "s/127\.0\.0\.1:5433/127.0.0.1:${PORT[a]}/g" \
		-e "s/127\.0\.0\.1:5434/127.0.0.1:${PORT[b]}/g" \
		-e "s/127\.0\.0\.1:6432/127.0.0.1:$ROUTER_PORT/g" \
		"$ROOT/conf/demo.ini" >"$INI"
	cp "$ROOT/conf/demo-pins.txt" "$TMP/"
	for p in "${PORT[a]}" "${PORT[b]}" "$ROUTER_PORT"; do
		grep -q "127.0.0.1:$p" "$INI" || die "could not patch port $p into $INI"
	done
fi

# Where each demo tenant lands, from the router itself: lines "TENANT<TAB>CLUSTER<TAB>pinned|ring".
declare -A ROUTE=() HOW=()
if ((!NO_ROUTER)); then
	out=$("$TR_BIN" --check -c "$INI" 2>&1) || die "$INI is not valid:"$'\n'"$out"
	out=$("$TR_BIN" route -c "$INI" "${TENANTS[@]}" 2>&1) || die "tenant-router route failed:"$'\n'"$out"
	while IFS=$'\t' read -r t c how; do
		[[ -n $t ]] || continue
		ROUTE[$t]=$c
		HOW[$t]=$how
	done <<<"$out"
	for t in "${TENANTS[@]}"; do
		[[ -n ${ROUTE[$t]:-} && -n ${PORT[${ROUTE[$t]}]:-} ]] ||
			die "unexpected output from tenant-router route for tenant $t:"$'\n'"$out"
	done
fi

# ---------------------------------------------------------------------------------------------------
# The two PostgreSQL clusters

SCHEMA_SQL=$(
	cat <<'EOF'
-- Password "app", as one SCRAM verifier (fixed salt) on both clusters: the router can then log
-- in for clients that give the tenant in their first query, reusing their SCRAM keys.
CREATE ROLE app LOGIN PASSWORD 'SCRAM-SHA-256$4096:dGVuYW50LXJvdXRlci1kbQ==$EacBk3AOwfoBtcdGkgFp/cjsWduSTgDHLR7H+Nc1lNw=:USDDCER9JDMpyrUiQS9IxZORrUNXDiBavYeUyvyCysI=';
CREATE DATABASE app OWNER app;
\connect app
-- A chat app's tables, keyed by tenant. tenant_id defaults to the setting the router passes on.
CREATE TABLE rooms (
    tenant_id  text   NOT NULL DEFAULT current_setting('app.tenant_id'),
    room_id    bigint NOT NULL,
    name       text,
    PRIMARY KEY (tenant_id, room_id)
);
CREATE TABLE messages (
    tenant_id  text        NOT NULL DEFAULT current_setting('app.tenant_id'),
    room_id    bigint      NOT NULL,
    id         bigserial,
    body       text,
    created_at timestamptz DEFAULT now(),
    PRIMARY KEY (tenant_id, room_id, id)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON rooms, messages TO app;
GRANT USAGE ON SEQUENCE messages_id_seq TO app;
-- Row-level security: a session sees and writes only the rows of the tenant it connected as.
ALTER TABLE rooms ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rooms
    USING (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY tenant_isolation ON messages
    USING (tenant_id = current_setting('app.tenant_id', true));
EOF
)

start_cluster() {
	local c=$1 port=$2 dir=$TMP/$1
	if ! as_pg "$PGBIN/initdb" -D "$dir" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
		-E UTF8 --locale=C --no-sync >"$TMP/$c.initdb.log" 2>&1; then
		cat "$TMP/$c.initdb.log" >&2
		die "initdb failed for cluster $c"
	fi
	cat >>"$dir/postgresql.conf" <<-EOF

		# tenant-router demo
		cluster_name = 'demo-$c'
		port = $port
		listen_addresses = '127.0.0.1'
		unix_socket_directories = '$TMP'
		password_encryption = 'scram-sha-256'
		max_connections = 50
		shared_buffers = 32MB
		fsync = off                # throwaway data
		log_connections = on       # see each session the router brings in $TMP/$c.log
	EOF
	# Client authentication. Applications log in with a password (scram-sha-256), relayed end to end
	# by the router. The router's health checks (conninfo `user=postgres dbname=postgres` in
	# conf/demo.ini) log in as postgres over 127.0.0.1 WITHOUT a password: that trust line is for the
	# demo only. In production give the checker its own role and a password (PGPASSFILE).
	cat >"$dir/pg_hba.conf" <<-'EOF'
		# TYPE  DATABASE  USER      ADDRESS        METHOD
		local   all       all                      trust
		host    all       postgres  127.0.0.1/32   trust
		host    all       all       127.0.0.1/32   scram-sha-256
	EOF
	STARTED+=("$c")
	if ! as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$TMP/$c.log" -w -t 60 -s start >/dev/null 2>&1; then
		tail -n 20 "$TMP/$c.log" >&2 || true
		die "cluster $c did not start on 127.0.0.1:$port (log above)"
	fi
	if ! "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$port" -U postgres -d postgres \
		>"$TMP/$c.setup.log" 2>&1 <<<"$SCHEMA_SQL"; then
		cat "$TMP/$c.setup.log" >&2
		die "creating role, database and schema failed on cluster $c"
	fi
}

for c in "${CLUSTERS[@]}"; do
	say "starting cluster $c: PostgreSQL 15 on 127.0.0.1:${PORT[$c]}"
	start_cluster "$c" "${PORT[$c]}"
done

# ---------------------------------------------------------------------------------------------------
# The router

if ((!NO_ROUTER)); then
	say "starting the router on 127.0.0.1:$ROUTER_PORT"
	"$TR_BIN" -c "$INI" </dev/null >"$TMP/router.log" 2>&1 &
	ROUTER_PID=$!
	# It listens after its first round of health checks (at most health.timeout, 2s here).
	for ((i = 0; ; i++)); do
		if ! kill -0 "$ROUTER_PID" 2>/dev/null; then
			cat "$TMP/router.log" >&2
			ROUTER_PID=
			die "the router exited during start-up (its log is above)"
		fi
		grep -q "listening on" "$TMP/router.log" && break
		if ((i >= 150)); then
			cat "$TMP/router.log" >&2
			die "the router is not listening on 127.0.0.1:$ROUTER_PORT after 15s (its log is above)"
		fi
		sleep 0.1
	done
fi

# ---------------------------------------------------------------------------------------------------
# What is where, and how to connect

ini_shown=$INI
[[ $INI == "$ROOT"/* ]] && ini_shown=${INI#"$ROOT"/}
cat <<EOF

==========================================================================================
 tenant-router demo                                  (temp dir: $TMP)
==========================================================================================
  cluster a   PostgreSQL 15 on 127.0.0.1:${PORT[a]}   log: $TMP/a.log
  cluster b   PostgreSQL 15 on 127.0.0.1:${PORT[b]}   log: $TMP/b.log
EOF
if ((NO_ROUTER)); then
	cat <<EOF
  (no router: DEMO_NO_ROUTER=1)

Connect to a cluster directly (role app, password app):
  PGPASSWORD=app psql "host=127.0.0.1 port=${PORT[a]} dbname=app user=app options='-c app.tenant_id=42'"
EOF
else
	cat <<EOF
  router      127.0.0.1:$ROUTER_PORT   config: $ini_shown   log: $TMP/router.log

Where the demo tenants land ($TR_BIN route -c $INI ${TENANTS[*]}):
EOF
	for t in "${TENANTS[@]}"; do
		c=${ROUTE[$t]}
		printf '  tenant %-6s -> cluster %s (127.0.0.1:%s)  %s\n' "$t" "$c" "${PORT[$c]}" \
			"$([[ ${HOW[$t]} == pinned ]] && echo 'pinned' || echo 'by the hash ring')"
	done
	echo
	echo "Connect through the router as a tenant (role app, password app); from another terminal:"
	for t in "${TENANTS[@]}"; do
		echo "  PGPASSWORD=app psql \"host=127.0.0.1 port=$ROUTER_PORT dbname=app user=app options='-c app.tenant_id=$t'\""
	done
	cat <<EOF

Which cluster answered? Compare the port with the list above:
  SELECT inet_server_port(), current_setting('cluster_name'), current_setting('app.tenant_id');
Row-level security keeps tenants apart on a cluster (tenant_id defaults to app.tenant_id):
  INSERT INTO rooms (room_id, name) VALUES (1, 'general');
  SELECT * FROM rooms;
Or connect without a tenant and name it in SQL (the router checks the password itself, answers
until the tenant is known, then logs in to its cluster for you):
  PGPASSWORD=app psql "host=127.0.0.1 port=$ROUTER_PORT dbname=app user=app"
  SET app.tenant_id = '42';
A session stays on its cluster: switching to another cluster's tenant is refused (SQLSTATE 42501).
Where would other tenants go?
  $TR_BIN route -c $INI acme globex 12345
EOF
fi

# ---------------------------------------------------------------------------------------------------
# --smoke: check and stop

if ((SMOKE)); then
	echo
	say "smoke check"
	passed=0
	failed=0
	check() { # check NAME EXPECTED ACTUAL
		if [[ $2 == "$3" ]]; then
			printf '  ok    %s\n' "$1"
			passed=$((passed + 1))
		else
			printf '  FAIL  %s\n        expected: %s\n        got:      %s\n' "$1" "$2" "$3"
			failed=$((failed + 1))
		fi
	}
	q() { # q CONNINFO SQL: one row, fields separated by spaces; stderr too, so failures show
		PGCONNECT_TIMEOUT=10 "$PSQL" -X -q -A -t -F ' ' -v ON_ERROR_STOP=1 -d "$1" -c "$2" 2>&1 || true
	}
	who="SELECT inet_server_port(), current_setting('cluster_name'), current_setting('app.tenant_id')"
	rls="INSERT INTO rooms (room_id, name) VALUES (1, 'general') RETURNING tenant_id"
	if ((NO_ROUTER)); then
		# Without the router, check what it relies on: scram logins for app, trust for the checks.
		for c in "${CLUSTERS[@]}"; do
			p=${PORT[$c]}
			app="host=127.0.0.1 port=$p dbname=app user=app options='-c app.tenant_id=42'"
			check "cluster $c: app logs in with scram" "$p demo-$c 42" "$(PGPASSWORD=app q "$app" "$who")"
			check "cluster $c: app with a wrong password is refused" "refused" \
				"$(PGPASSWORD=wrong q "$app" "SELECT 1" | grep -q 'password authentication failed' &&
					echo refused)"
			check "cluster $c: rows default to the session's tenant" "42" "$(PGPASSWORD=app q "$app" "$rls")"
			check "cluster $c: health check login as postgres" "f" \
				"$(q "host=127.0.0.1 port=$p user=postgres dbname=postgres" "SELECT pg_is_in_recovery()")"
		done
	else
		for t in "${TENANTS[@]}"; do
			c=${ROUTE[$t]}
			app="host=127.0.0.1 port=$ROUTER_PORT dbname=app user=app options='-c app.tenant_id=$t'"
			check "tenant $t is answered by cluster $c (port ${PORT[$c]})" "${PORT[$c]} demo-$c $t" \
				"$(PGPASSWORD=app q "$app" "$who")"
		done
		t=${TENANTS[0]}
		app="host=127.0.0.1 port=$ROUTER_PORT dbname=app user=app options='-c app.tenant_id=$t'"
		check "tenant $t writes a row (row-level security, tenant_id default)" "$t" \
			"$(PGPASSWORD=app q "$app" "$rls")"
		check "a wrong password is refused through the router" "refused" \
			"$(PGPASSWORD=wrong q "$app" "SELECT 1" | grep -q 'password authentication failed' &&
				echo refused)"
		out=$(PGPASSWORD=app q "host=127.0.0.1 port=$ROUTER_PORT dbname=app user=app" "SELECT 1")
		check "a statement before the tenant is known is refused by the router" "refused" \
			"$(grep -q 'no tenant yet' <<<"$out" && echo refused || echo "$out")"
		check "tenant $t named in SQL is answered by cluster ${ROUTE[$t]}" "${PORT[${ROUTE[$t]}]} demo-${ROUTE[$t]} $t" \
			"$(PGPASSWORD=app q "host=127.0.0.1 port=$ROUTER_PORT dbname=app user=app" \
				"SET app.tenant_id = '$t'; $who")"
		kill -0 "$ROUTER_PID" 2>/dev/null || {
			echo "  FAIL  the router is no longer running; its log:"
			cat "$TMP/router.log"
			failed=$((failed + 1))
		}
	fi
	echo "smoke: $passed passed, $failed failed"
	((failed == 0)) || {
		if ((!NO_ROUTER)); then
			echo "router log:"
			sed 's/^/  /' "$TMP/router.log"
		fi
		exit 1
	}
	exit 0
fi

# ---------------------------------------------------------------------------------------------------
# Interactive: run until Ctrl-C

echo
echo "Ctrl-C stops the router and both clusters and removes $TMP."
if ((NO_ROUTER)); then
	sleep infinity &
	SLEEP_PID=$!
	wait "$SLEEP_PID" || true
	exit 0
fi
echo "Router log:"
tail -n +1 -F "$TMP/router.log" 2>/dev/null &
TAIL_PID=$!
rc=0
wait "$ROUTER_PID" || rc=$?
ROUTER_PID=
die "the router exited (status $rc) on its own; see its log above"
