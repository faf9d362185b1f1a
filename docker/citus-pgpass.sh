#!/bin/sh
# docker/citus-pgpass.sh - init script for every Citus node of docker/compose.yml, mounted into
# /docker-entrypoint-initdb.d/ and run once, as user postgres, when the node's data dir is created.
#
# The nodes talk to each other with libpq, as the session's user, and every node requires
# scram-sha-256. Give those connections the demo passwords (postgres and app) through ~/.pgpass.
# Demo only: a real cluster would use certificates or pg_dist_authinfo with its own secrets.
umask 077
cat >"$HOME/.pgpass" <<EOF
*:*:*:postgres:${POSTGRES_PASSWORD}
*:*:*:app:app
EOF
