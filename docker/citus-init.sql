-- docker/citus-init.sql - the demo schema of one Citus cluster of docker/compose.yml.
--
-- Run by the a-init / b-init services (docker/citus-init.sh) once the coordinator and its three
-- workers answer, against the coordinator's database "app", as user postgres:
--
--   psql -X -v ON_ERROR_STOP=1 -v coord=a-coord -v workers='a-worker1 a-worker2 a-worker3' \
--        -f citus-init.sql
--
-- psql variables: coord (the coordinator's host name as the workers reach it), workers (the
-- workers' host names, separated by spaces), port (every node's port; default 5432).
--
-- It runs on plain PostgreSQL too, where it only creates role app and the tables, undistributed
-- (tests/integration/test_docker_files.py does that in CI): every Citus call sits in a \if block
-- taken only when Citus's functions exist. Safe to run again: every step checks first.
\set ON_ERROR_STOP on
\if :{?port}
\else
\set port 5432
\endif

SELECT count(DISTINCT proname) = 3 AS have_citus FROM pg_proc
WHERE proname IN ('citus_set_coordinator_host', 'citus_add_node', 'create_distributed_table') \gset

-- 1. The nodes. The citus extension itself was created by the image's own init script, in
-- POSTGRES_DB (app) on every node. One statement per node (\gexec), as Citus's docs add them.
\if :have_citus
SELECT citus_set_coordinator_host(:'coord', :port);
SELECT format('SELECT citus_add_node(%L, %s)', w, :port)
FROM unnest(string_to_array(:'workers', ' ')) AS w
WHERE w <> '' AND NOT EXISTS (SELECT 1 FROM pg_dist_node n WHERE n.nodename = w AND n.nodeport = :port)
\gexec
SELECT nodeid, nodename, nodeport, groupid, isactive FROM pg_dist_node ORDER BY nodeid;
\else
\echo 'citus-init: no Citus here: role app and the tables only, not distributed'
\endif

-- 2. The application's role. Created after the workers were added, so Citus propagates it (and
-- its password) to them: the coordinator reaches the workers as the session's user.
SELECT 'CREATE ROLE app LOGIN PASSWORD ''app'''
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app') \gexec

-- 3. A chat app's tables, distributed by room_id and colocated: a room's row and its messages
-- live in shards of the same number, on the same workers. tenant_id is an ordinary column, so
-- one tenant's rooms spread over every shard. No foreign key from messages to rooms: Citus
-- refuses foreign keys between tables with shard_replication_factor > 1.
CREATE TABLE IF NOT EXISTS rooms (
    room_id    bigint NOT NULL,
    tenant_id  text   NOT NULL,
    name       text,
    PRIMARY KEY (room_id)
);
CREATE TABLE IF NOT EXISTS messages (
    room_id    bigint      NOT NULL,
    message_id bigserial   NOT NULL,
    tenant_id  text        NOT NULL,
    body       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, message_id)
);
CREATE INDEX IF NOT EXISTS rooms_tenant_id ON rooms (tenant_id);
CREATE INDEX IF NOT EXISTS messages_tenant_id ON messages (tenant_id);

-- 4. Distribute them: 3 shards, each with 2 copies (placements) on 2 of the 3 workers. Without
-- these two settings Citus makes 32 shards with one copy each. The coordinators of compose.yml
-- also start with them (-c), for tables made later; SET makes this file right on any cluster.
\if :have_citus
SET citus.shard_count = 3;
SET citus.shard_replication_factor = 2;
SELECT create_distributed_table('rooms', 'room_id')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'rooms'::regclass);
SELECT create_distributed_table('messages', 'room_id', colocate_with => 'rooms')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'messages'::regclass);
\endif

-- 5. What app may do (Citus propagates GRANTs on distributed tables to their shards).
GRANT SELECT, INSERT, UPDATE, DELETE ON rooms, messages TO app;
GRANT USAGE ON SEQUENCE messages_message_id_seq TO app;

\if :have_citus
SELECT table_name, shardid, nodename FROM citus_shards ORDER BY table_name, shardid, nodename;
\endif
