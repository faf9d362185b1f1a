-- docker/citus-setup.sql - run once per Citus cluster by the setup-a / setup-b services of
-- docker/citus-compose.yml, against the coordinator's database "app", as user postgres.
-- psql variables: coord, w1, w2 (host names of the coordinator and the two workers).
-- Safe to run again: every step checks first.
\set ON_ERROR_STOP on

-- Register the coordinator and the workers (the citus extension itself was created by the image's
-- init script in POSTGRES_DB, on every node).
SELECT citus_set_coordinator_host(:'coord', 5432);
SELECT citus_add_node(:'w1', 5432);
SELECT citus_add_node(:'w2', 5432);
SELECT nodename, nodeport, noderole FROM pg_dist_node ORDER BY nodeid;

-- The application's role; Citus propagates it (and its password) to the workers.
SELECT 'CREATE ROLE app LOGIN PASSWORD ''app'''
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app') \gexec

-- A chat app's tables, distributed by tenant: a tenant's rows of both tables live on one worker.
CREATE TABLE IF NOT EXISTS rooms (
    tenant_id  text   NOT NULL,
    room_id    bigint NOT NULL,
    name       text,
    PRIMARY KEY (tenant_id, room_id)
);
CREATE TABLE IF NOT EXISTS messages (
    tenant_id  text        NOT NULL,
    room_id    bigint      NOT NULL,
    id         bigserial,
    body       text,
    created_at timestamptz DEFAULT now(),
    PRIMARY KEY (tenant_id, room_id, id)
);
SELECT create_distributed_table('rooms', 'tenant_id')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'rooms'::regclass);
SELECT create_distributed_table('messages', 'tenant_id', colocate_with => 'rooms')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'messages'::regclass);

GRANT SELECT, INSERT, UPDATE, DELETE ON rooms, messages TO app;
GRANT USAGE ON SEQUENCE messages_id_seq TO app;
