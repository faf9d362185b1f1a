#!/bin/sh
# docker/citus-init.sh - the a-init / b-init services of docker/compose.yml: wait until the
# coordinator and every worker accept connections, then run citus-init.sql on the coordinator
# (register the coordinator and the workers, create role app and the distributed tables).
#
# Environment: PGHOST (the coordinator), PGUSER, PGPASSWORD, PGDATABASE as for psql; WORKERS (the
# workers' host names, separated by spaces); PGPORT (every node's port, default 5432);
# COORD_NAME (the coordinator's name as workers reach it, default PGHOST); WAIT_SECONDS (120).
# Exits 0 when done; compose starts the router only then (service_completed_successfully).
set -eu

: "${PGHOST:?set PGHOST to the coordinator}"
: "${WORKERS:?set WORKERS to the workers, separated by spaces}"
PGPORT=${PGPORT:-5432}
export PGPORT
COORD_NAME=${COORD_NAME:-$PGHOST}
WAIT_SECONDS=${WAIT_SECONDS:-120}
SQL=${SQL:-$(dirname "$0")/citus-init.sql}

# depends_on (service_healthy) already waited for every node's own healthcheck; wait here as well,
# from this container, over the network the coordinator will use (name resolution included).
for host in "$PGHOST" $WORKERS; do
	waited=0
	until pg_isready -q -h "$host" -p "$PGPORT" -t 2; do
		waited=$((waited + 1))
		if [ "$waited" -ge "$WAIT_SECONDS" ]; then
			echo "citus-init: $host:$PGPORT not ready after ${WAIT_SECONDS}s" >&2
			exit 1
		fi
		sleep 1
	done
	echo "citus-init: $host:$PGPORT is ready"
done

exec psql -X -v ON_ERROR_STOP=1 -v coord="$COORD_NAME" -v workers="$WORKERS" -v port="$PGPORT" \
	-f "$SQL"
