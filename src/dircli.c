/*
 * dircli.c - the tenant directory's operator commands: directory init,
 * move, plan (blocking libpq; never part of a running router).
 *
 * move follows the fence (README, "Moving a tenant"): the tenant's row is
 * set moving, and nothing is copied before every live router has applied
 * that version and holds no session of the tenant, or has been silent for
 * longer than directory_lease (such a router refuses tenant sessions by
 * itself). The copy runs in one transaction on the target that commits
 * only after the counts and checksums of both sides agree, and only then is
 * the row switched to the new cluster. Any failure before the switch puts
 * the row back active on the old cluster; the target's transaction rolls
 * back, so nothing is left there.
 *
 * The schema's triggers serialize writers of tenants with an advisory lock
 * taken before any version is drawn, so versions become visible in the
 * order they were drawn: a router that has seen version N has seen every
 * change below N (the incremental fetch relies on it).
 */
#include "dircli.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "config.h"
#include "pins.h"
#include "ring.h"
#include "route.h"
#include "startup.h"

#define ERR_CAP 16384

static struct config *load(const char *path)
{
	char *err = malloc(ERR_CAP);
	struct config *cfg;

	if (err == NULL)
		return NULL;
	err[0] = '\0';
	cfg = config_load(path, err, ERR_CAP);
	if (cfg == NULL)
		fputs(err, stderr);
	free(err);
	return cfg;
}

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void first_line(char *dst, size_t cap, const char *msg)
{
	size_t n = strcspn(msg, "\n");

	if (n >= cap)
		n = cap - 1;
	memcpy(dst, msg, n);
	dst[n] = '\0';
}

/* Runs sql; the result if its status is want, else NULL with the error on stderr. */
static PGresult *run(PGconn *c, const char *what, const char *sql, int n, const char *const *v,
                     ExecStatusType want)
{
	/* Without parameters, PQexec: several statements may go in one string. */
	PGresult *res = n > 0 ? PQexecParams(c, sql, n, NULL, v, NULL, NULL, 0) : PQexec(c, sql);
	char line[512];

	if (PQresultStatus(res) == want)
		return res;
	first_line(line, sizeof(line),
	           PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res) : PQerrorMessage(c));
	fprintf(stderr, "tenant-router: %s: %s\n", what, line);
	PQclear(res);
	return NULL;
}

static bool run_ok(PGconn *c, const char *what, const char *sql, int n, const char *const *v)
{
	PGresult *res = run(c, what, sql, n, v, PGRES_COMMAND_OK);

	PQclear(res);
	return res != NULL;
}

static PGconn *connect_dir(const struct config *cfg)
{
	const char *kw[] = {"dbname", "connect_timeout", "application_name", NULL};
	const char *val[] = {cfg->dir_conninfo, "10", "tenant-router", NULL};
	PGconn *c;
	char line[512];

	if (cfg->dir_conninfo == NULL) {
		fprintf(stderr, "tenant-router: no [directory] conninfo in %s\n", cfg->path);
		return NULL;
	}
	c = PQconnectdbParams(kw, val, 1);
	if (PQstatus(c) == CONNECTION_OK)
		return c;
	first_line(line, sizeof(line), PQerrorMessage(c));
	fprintf(stderr, "tenant-router: could not connect to the directory: %s\n", line);
	PQfinish(c);
	return NULL;
}

/* A connection to the writer of cluster i: [move] conninfo (or [health]) and its hosts. */
static PGconn *connect_cluster(const struct config *cfg, size_t i)
{
	const struct cluster_cfg *cl = &cfg->clusters[i];
	const char *kw[] = {
	        "dbname",           "host", "port", "target_session_attrs", "connect_timeout",
	        "application_name", NULL};
	char hosts[CONFIG_MAX_HOSTS * 260] = "", ports[CONFIG_MAX_HOSTS * 8] = "", line[512];
	const char *val[7];
	PGconn *c;

	for (size_t h = 0; h < cl->nhosts; h++) {
		size_t hl = strlen(hosts), pl = strlen(ports);

		snprintf(hosts + hl, sizeof(hosts) - hl, "%s%s", h ? "," : "", cl->hosts[h].host);
		snprintf(ports + pl, sizeof(ports) - pl, "%s%u", h ? "," : "", cl->hosts[h].port);
	}
	val[0] = cfg->move_conninfo ? cfg->move_conninfo : cfg->health_conninfo;
	val[1] = hosts;
	val[2] = ports;
	val[3] = "read-write";
	val[4] = "10";
	val[5] = "tenant-router move";
	val[6] = NULL;
	c = PQconnectdbParams(kw, val, 1);
	if (PQstatus(c) == CONNECTION_OK)
		return c;
	first_line(line, sizeof(line), PQerrorMessage(c));
	fprintf(stderr, "tenant-router: could not connect to cluster \"%s\": %s\n", cl->name, line);
	PQfinish(c);
	return NULL;
}

static char *sqlf(const struct config *cfg, const char *fmt);

/* ---- directory init ------------------------------------------------------ */

static const char schema_sql[] =
        "CREATE SCHEMA IF NOT EXISTS %1$s;\n"
        "CREATE SEQUENCE IF NOT EXISTS %1$s.version_seq;\n"
        "CREATE TABLE IF NOT EXISTS %1$s.tenants (\n"
        "  tenant text PRIMARY KEY,\n"
        "  cluster text NOT NULL,\n"
        "  state text NOT NULL DEFAULT 'active',\n"
        "  version bigint NOT NULL DEFAULT 0,\n"
        "  updated_at timestamptz NOT NULL DEFAULT now());\n"
        "CREATE INDEX IF NOT EXISTS tenants_version_idx ON %1$s.tenants (version);\n"
        "CREATE TABLE IF NOT EXISTS %1$s.routers (\n"
        "  id text PRIMARY KEY,\n"
        "  host text NOT NULL,\n"
        "  pid integer NOT NULL,\n"
        "  started timestamptz NOT NULL,\n"
        "  fingerprint text NOT NULL,\n"
        "  version bigint NOT NULL DEFAULT 0,\n"
        "  moving jsonb NOT NULL DEFAULT '{}',\n"
        "  heartbeat timestamptz NOT NULL DEFAULT now());\n"
        /* Writers of tenants take turns, so versions become visible in the order drawn. */
        "CREATE OR REPLACE FUNCTION %1$s.serialize() RETURNS trigger LANGUAGE plpgsql AS $f$\n"
        "BEGIN PERFORM pg_advisory_xact_lock(hashtext('%1$s.tenants')); RETURN NULL; END $f$;\n"
        "CREATE OR REPLACE FUNCTION %1$s.stamp() RETURNS trigger LANGUAGE plpgsql AS $f$\n"
        "BEGIN NEW.version := nextval('%1$s.version_seq'); NEW.updated_at := now(); "
        "RETURN NEW; END $f$;\n"
        "CREATE OR REPLACE FUNCTION %1$s.notify() RETURNS trigger LANGUAGE plpgsql AS $f$\n"
        "BEGIN PERFORM pg_notify('%1$s', CASE WHEN TG_OP IN ('DELETE', 'TRUNCATE') THEN 'full' "
        "ELSE '' END); RETURN NULL; END $f$;\n"
        "DROP TRIGGER IF EXISTS a_serialize ON %1$s.tenants;\n"
        "CREATE TRIGGER a_serialize BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON "
        "%1$s.tenants FOR EACH STATEMENT EXECUTE FUNCTION %1$s.serialize();\n"
        "DROP TRIGGER IF EXISTS b_stamp ON %1$s.tenants;\n"
        "CREATE TRIGGER b_stamp BEFORE INSERT OR UPDATE ON %1$s.tenants FOR EACH ROW "
        "EXECUTE FUNCTION %1$s.stamp();\n"
        "DROP TRIGGER IF EXISTS c_notify ON %1$s.tenants;\n"
        "CREATE TRIGGER c_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %1$s.tenants "
        "FOR EACH STATEMENT EXECUTE FUNCTION %1$s.notify();\n";

int dircli_directory(int argc, char **argv)
{
	const char *path = NULL;
	struct config *cfg;
	PGconn *c;
	char *sql;
	int rc = 1;

	if (argc < 1 || strcmp(argv[0], "init") != 0)
		goto usage;
	for (int i = 1; i < argc; i++) {
		if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) &&
		    i + 1 < argc)
			path = argv[++i];
		else
			goto usage;
	}
	if (path == NULL)
		goto usage;
	cfg = load(path);
	if (cfg == NULL)
		return 1;
	c = connect_dir(cfg);
	sql = sqlf(cfg, schema_sql);
	if (c != NULL && sql != NULL) {
		if (run_ok(c, "directory init", "BEGIN", 0, NULL) &&
		    run_ok(c, "directory init", sql, 0, NULL) &&
		    run_ok(c, "directory init", "COMMIT", 0, NULL)) {
			printf("directory schema %s is ready (tables tenants, routers)\n",
			       cfg->dir_schema);
			rc = 0;
		}
	}
	free(sql);
	PQfinish(c);
	config_unref(cfg);
	return rc;
usage:
	fprintf(stderr, "usage: tenant-router directory init -c FILE\n");
	return 2;
}

/* ---- route, with a directory ---------------------------------------------- */

int dircli_route(const struct config *cfg, char **tenants, int n)
{
	char *sql = sqlf(cfg, "SELECT cluster, state FROM %1$s.tenants WHERE tenant = $1");
	PGconn *c = sql ? connect_dir(cfg) : NULL;
	int rc = 0;

	if (c == NULL) {
		free(sql);
		return 1;
	}
	for (int i = 0; i < n; i++) {
		const char *v[1] = {tenants[i]};
		size_t len = strlen(tenants[i]);
		struct route_place pl;
		PGresult *res;

		if (len == 0 || len > STARTUP_MAX_TENANT_LEN) {
			fprintf(stderr, "tenant-router: \"%s\": a tenant is 1 to %d bytes\n",
			        tenants[i], STARTUP_MAX_TENANT_LEN);
			rc = 1;
			continue;
		}
		res = run(c, "reading the directory", sql, 1, v, PGRES_TUPLES_OK);
		if (res == NULL) {
			rc = 1;
			break;
		}
		if (PQntuples(res) == 1) {
			const char *cl = PQgetvalue(res, 0, 0), *st = PQgetvalue(res, 0, 1);
			bool known = config_cluster_index(cfg, cl) >= 0;
			bool good = strcmp(st, "active") == 0 || strcmp(st, "moving") == 0 ||
			            strcmp(st, "blocked") == 0;

			/* As a router with this configuration would take the row. */
			if (!known || !good)
				printf("%s\t%s\tinvalid\n", tenants[i], cl);
			else if (strcmp(st, "active") == 0)
				printf("%s\t%s\tdirectory\n", tenants[i], cl);
			else
				printf("%s\t%s\t%s\n", tenants[i], cl, st);
			PQclear(res);
			continue;
		}
		PQclear(res);
		route_place(NULL, cfg->pins, cfg->ring, (const char *const *)cfg->cluster_names,
		            cfg->nclusters, tenants[i], len, &pl);
		printf("%s\t%s\t%s\n", tenants[i], cfg->clusters[pl.cluster].name,
		       pl.source == ROUTE_PIN ? "pinned" : "ring");
	}
	PQfinish(c);
	free(sql);
	return rc;
}

/* ---- move ---------------------------------------------------------------- */

struct move {
	const struct config *cfg;
	const char *tenant;
	int from, to; /* cluster indexes */
	bool had_row;
	char version[24]; /* of the moving row */
	PGconn *dir, *src, *dst;
	bool tty;
};

/* Puts the row back active on the old cluster (only while it is still our moving row). */
static void move_rollback_sql(struct move *m, const char *sql, const char *why)
{
	const char *v[2] = {m->tenant, m->version};

	if (m->dst)
		PQclear(PQexec(m->dst, "ROLLBACK"));
	if (m->dir && PQstatus(m->dir) != CONNECTION_OK)
		PQreset(m->dir);
	if (m->dir && run_ok(m->dir, "putting the tenant back", sql, 2, v))
		fprintf(stderr,
		        "tenant-router: move of \"%s\" failed (%s); it is active on \"%s\" "
		        "again, nothing was written on \"%s\"\n",
		        m->tenant, why, m->cfg->clusters[m->from].name,
		        m->cfg->clusters[m->to].name);
	else
		fprintf(stderr,
		        "tenant-router: move of \"%s\" failed (%s) and its row could not be "
		        "put back: it stays moving (refused); set it active on \"%s\" by hand\n",
		        m->tenant, why, m->cfg->clusters[m->from].name);
}

/* SQL text with every "%1$s" replaced by the schema's name (owned), or NULL. */
static char *sqlf(const struct config *cfg, const char *fmt)
{
	const char *mark = "%1$s", *p = fmt;
	size_t slen = strlen(cfg->dir_schema), n = 0;
	char *out, *o;

	for (const char *q = strstr(p, mark); q; q = strstr(q + 4, mark))
		n++;
	out = malloc(strlen(fmt) + n * slen + 1);
	if (out == NULL)
		return NULL;
	o = out;
	for (const char *q; (q = strstr(p, mark)) != NULL; p = q + 4) {
		memcpy(o, p, (size_t)(q - p));
		o += q - p;
		memcpy(o, cfg->dir_schema, slen);
		o += slen;
	}
	strcpy(o, p);
	return out;
}

/* Step 1: the row moving, on the old cluster. */
static bool move_begin(struct move *m)
{
	const char *v[3] = {m->tenant, NULL, NULL};
	char *sel = sqlf(m->cfg, "SELECT cluster, state FROM %1$s.tenants WHERE tenant = $1 FOR "
	                         "UPDATE");
	char *up = sqlf(m->cfg,
	                "INSERT INTO %1$s.tenants (tenant, cluster, state) VALUES ($1, $2, "
	                "'moving') ON CONFLICT (tenant) DO UPDATE SET cluster = excluded.cluster, "
	                "state = 'moving' RETURNING version");
	char *fps = sqlf(m->cfg, "SELECT id, fingerprint FROM %1$s.routers WHERE heartbeat > now() "
	                         "- $1::bigint * interval '1 millisecond' AND fingerprint <> $2");
	char lease[24], fp[24];
	PGresult *res = NULL;
	bool ok = false;

	if (sel == NULL || up == NULL || fps == NULL)
		goto out;
	snprintf(lease, sizeof(lease), "%" PRIu64, m->cfg->dir_lease_ms);
	snprintf(fp, sizeof(fp), "%016" PRIx64, m->cfg->fingerprint);
	v[0] = lease;
	v[1] = fp;
	res = run(m->dir, "checking the routers", fps, 2, v, PGRES_TUPLES_OK);
	if (res == NULL)
		goto out;
	if (PQntuples(res) > 0) {
		fprintf(stderr,
		        "tenant-router: move refused: %d live routers have another configuration "
		        "fingerprint than %s (%016" PRIx64
		        "), e.g. %s with %s; make their clusters, "
		        "weights, vnodes and pins agree first\n",
		        PQntuples(res), m->cfg->path, m->cfg->fingerprint, PQgetvalue(res, 0, 0),
		        PQgetvalue(res, 0, 1));
		goto out;
	}
	PQclear(res);
	res = NULL;
	v[0] = m->tenant;
	if (!run_ok(m->dir, "move", "BEGIN", 0, NULL))
		goto out;
	res = run(m->dir, "reading the tenant's row", sel, 1, v, PGRES_TUPLES_OK);
	if (res == NULL)
		goto fail;
	if (PQntuples(res) == 1) {
		const char *cl = PQgetvalue(res, 0, 0), *st = PQgetvalue(res, 0, 1);

		m->had_row = true;
		if (strcmp(st, "moving") == 0) {
			fprintf(stderr,
			        "tenant-router: move refused: tenant \"%s\" is being moved "
			        "already (its row is moving)\n",
			        m->tenant);
			goto fail;
		}
		if (strcmp(st, "active") != 0) {
			fprintf(stderr,
			        "tenant-router: move refused: tenant \"%s\" is %s; set it "
			        "active first\n",
			        m->tenant, st);
			goto fail;
		}
		m->from = config_cluster_index(m->cfg, cl);
		if (m->from < 0) {
			fprintf(stderr,
			        "tenant-router: move refused: the directory has tenant \"%s\" "
			        "on cluster \"%s\", which %s does not have\n",
			        m->tenant, cl, m->cfg->path);
			goto fail;
		}
	} else {
		struct route_place pl;

		route_place(NULL, m->cfg->pins, m->cfg->ring,
		            (const char *const *)m->cfg->cluster_names, m->cfg->nclusters,
		            m->tenant, strlen(m->tenant), &pl);
		m->from = pl.cluster;
	}
	PQclear(res);
	res = NULL;
	if (m->from == m->to) {
		fprintf(stderr, "tenant-router: tenant \"%s\" is on cluster \"%s\" already\n",
		        m->tenant, m->cfg->clusters[m->to].name);
		goto fail;
	}
	v[1] = m->cfg->clusters[m->from].name;
	res = run(m->dir, "setting the tenant moving", up, 2, v, PGRES_TUPLES_OK);
	if (res == NULL || PQntuples(res) != 1)
		goto fail;
	snprintf(m->version, sizeof(m->version), "%s", PQgetvalue(res, 0, 0));
	if (!run_ok(m->dir, "move", "COMMIT", 0, NULL))
		goto out;
	printf("tenant %s: moving from %s to %s (version %s)\n", m->tenant,
	       m->cfg->clusters[m->from].name, m->cfg->clusters[m->to].name, m->version);
	fflush(stdout);
	ok = true;
	goto out;
fail:
	PQclear(PQexec(m->dir, "ROLLBACK"));
out:
	PQclear(res);
	free(sel);
	free(up);
	free(fps);
	return ok;
}

/*
 * Step 2: the fence. Every router whose heartbeat is younger than the lease
 * (plus a heartbeat, for the one in flight) must have applied our version
 * and report no live session of the tenant.
 */
static bool move_fence(struct move *m)
{
	char *q = sqlf(
	        m->cfg,
	        "SELECT id, version, coalesce((moving ->> $1)::bigint, -1) FROM %1$s.routers "
	        "WHERE heartbeat > now() - $2::bigint * interval '1 millisecond' AND "
	        "(version < $3::bigint OR coalesce((moving ->> $1)::bigint, -1) <> 0) ORDER BY id");
	char window[24];
	const char *v[3] = {m->tenant, window, m->version};
	double t0 = mono(), deadline = t0 + (double)m->cfg->move_fence_timeout_ms / 1000.0;
	char last[600] = "";
	bool ok = false;

	if (q == NULL)
		return false;
	snprintf(window, sizeof(window), "%" PRIu64,
	         m->cfg->dir_lease_ms + m->cfg->dir_heartbeat_ms);
	for (;;) {
		PGresult *res = run(m->dir, "waiting for the routers", q, 3, v, PGRES_TUPLES_OK);
		char what[600] = "";

		if (res == NULL)
			break;
		if (PQntuples(res) == 0) {
			PQclear(res);
			ok = true;
			break;
		}
		for (int i = 0; i < PQntuples(res) && i < 3; i++) {
			size_t l = strlen(what);
			long long ver = atoll(PQgetvalue(res, i, 1));
			long long n = atoll(PQgetvalue(res, i, 2));

			if (ver < atoll(m->version))
				snprintf(what + l, sizeof(what) - l, "%s%s (version %lld)",
				         i ? ", " : "", PQgetvalue(res, i, 0), ver);
			else
				snprintf(what + l, sizeof(what) - l, "%s%s (%lld sessions)",
				         i ? ", " : "", PQgetvalue(res, i, 0), n < 0 ? 0 : n);
		}
		if (m->tty)
			fprintf(stderr, "\r  waiting for %d routers: %s\033[K", PQntuples(res),
			        what);
		else if (strcmp(what, last) != 0)
			fprintf(stderr, "  waiting for %d routers: %s\n", PQntuples(res), what);
		snprintf(last, sizeof(last), "%s", what);
		PQclear(res);
		if (mono() >= deadline) {
			fprintf(stderr,
			        "%stenant-router: the fence did not close within fence_timeout: "
			        "%s\n",
			        m->tty ? "\n" : "", last);
			break;
		}
		usleep(50000);
	}
	if (ok)
		printf("%sfence: every live router has version %s and no session of %s (%.1f s)\n",
		       m->tty && last[0] ? "\r\033[K" : "", m->version, m->tenant, mono() - t0);
	fflush(stdout);
	free(q);
	return ok;
}

static void quote_ident_into(char *dst, size_t cap, const char *name)
{
	/* Names are checked by config.c ([a-z_][a-z0-9_]*, optionally dotted): no quoting needed.
	 */
	snprintf(dst, cap, "%s", name);
}

/* The column list of a table, on the source, as "a, b, c" (owned), or NULL. */
static char *columns_of(PGconn *c, const char *table)
{
	char sql[400];
	PGresult *res;
	size_t cap = 64, len = 0;
	char *out;

	snprintf(sql, sizeof(sql), "SELECT * FROM %s LIMIT 0", table);
	res = run(c, table, sql, 0, NULL, PGRES_TUPLES_OK);
	if (res == NULL)
		return NULL;
	out = malloc(cap);
	for (int i = 0; out && i < PQnfields(res); i++) {
		char *q = PQescapeIdentifier(c, PQfname(res, i), strlen(PQfname(res, i)));
		size_t need = len + (q ? strlen(q) : 0) + 3;

		if (q == NULL) {
			free(out);
			out = NULL;
			break;
		}
		if (need > cap) {
			char *n = realloc(out, need * 2);

			if (n == NULL) {
				PQfreemem(q);
				free(out);
				out = NULL;
				break;
			}
			out = n;
			cap = need * 2;
		}
		len += (size_t)sprintf(out + len, "%s%s", i ? ", " : "", q);
		PQfreemem(q);
	}
	PQclear(res);
	return out;
}

/* count and an order-independent checksum of the tenant's rows of table, as text. */
static bool table_sum(PGconn *c, const char *table, const char *cols, const char *col,
                      const char *lit, char *count, char *sum, size_t cap)
{
	size_t n = strlen(table) + strlen(cols) + strlen(col) + strlen(lit) + 200;
	char *sql = malloc(n);
	PGresult *res;

	if (sql == NULL)
		return false;
	snprintf(sql, n,
	         "SELECT count(*), coalesce(sum(hashtext(ROW(%s)::text)::bigint), 0) FROM %s WHERE "
	         "%s = %s",
	         cols, table, col, lit);
	res = run(c, "verifying", sql, 0, NULL, PGRES_TUPLES_OK);
	free(sql);
	if (res == NULL)
		return false;
	snprintf(count, cap, "%s", PQgetvalue(res, 0, 0));
	snprintf(sum, cap, "%s", PQgetvalue(res, 0, 1));
	PQclear(res);
	return true;
}

static void progress(struct move *m, const char *table, long long rows, double bytes, double t0,
                     bool done)
{
	double dt = mono() - t0;

	if (!m->tty && !done)
		return;
	fprintf(stderr, "%s  %-24s %10lld rows %9.1f MB %7.1f MB/s%s", m->tty ? "\r" : "", table,
	        rows, bytes / 1e6, dt > 0 ? bytes / 1e6 / dt : 0.0,
	        done ? (m->tty ? "\033[K\n" : "\n") : "\033[K");
}

/* Step 3 and 4 for one table: COPY out of the source into the target's transaction, then verify. */
static bool move_table(struct move *m, const char *table, const char *lit)
{
	char *cols = columns_of(m->src, table), *sql = NULL, c1[32], s1[32], c2[32], s2[32];
	const char *col = m->cfg->move_tenant_column;
	long long rows = 0;
	double bytes = 0, t0 = mono();
	PGresult *res;
	bool ok = false;
	size_t n;

	if (cols == NULL)
		return false;
	n = strlen(cols) * 2 + strlen(table) + strlen(col) + strlen(lit) + 100;
	sql = malloc(n);
	if (sql == NULL)
		goto out;
	if (!table_sum(m->dst, table, cols, col, lit, c2, s2, sizeof(c2)))
		goto out;
	if (strcmp(c2, "0") != 0) {
		fprintf(stderr,
		        "tenant-router: %s on \"%s\" has %s rows of the tenant already; "
		        "nothing is copied over them\n",
		        table, m->cfg->clusters[m->to].name, c2);
		goto out;
	}
	snprintf(sql, n, "COPY (SELECT %s FROM %s WHERE %s = %s) TO STDOUT", cols, table, col, lit);
	res = run(m->src, table, sql, 0, NULL, PGRES_COPY_OUT);
	if (res == NULL)
		goto out;
	PQclear(res);
	snprintf(sql, n, "COPY %s (%s) FROM STDIN", table, cols);
	res = run(m->dst, table, sql, 0, NULL, PGRES_COPY_IN);
	if (res == NULL) {
		/* Drain the source's COPY. */
		char *row;

		while (PQgetCopyData(m->src, &row, 0) > 0)
			PQfreemem(row);
		while ((res = PQgetResult(m->src)) != NULL)
			PQclear(res);
		goto out;
	}
	PQclear(res);
	for (;;) {
		char *row = NULL;
		int got = PQgetCopyData(m->src, &row, 0);

		if (got < 0)
			break;
		if (PQputCopyData(m->dst, row, got) != 1) {
			char line[400];

			PQfreemem(row);
			first_line(line, sizeof(line), PQerrorMessage(m->dst));
			fprintf(stderr, "%stenant-router: writing %s: %s\n", m->tty ? "\n" : "",
			        table, line);
			/* The source is mid-COPY: drop that connection rather than read it all. */
			PQfinish(m->src);
			m->src = NULL;
			goto out;
		}
		PQfreemem(row);
		rows++;
		bytes += got;
		if ((rows & 1023) == 0)
			progress(m, table, rows, bytes, t0, false);
	}
	/* The source's COPY result first, then the target's. */
	ok = true;
	while ((res = PQgetResult(m->src)) != NULL) {
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			char line[400];

			first_line(line, sizeof(line), PQresultErrorMessage(res));
			fprintf(stderr, "tenant-router: reading %s: %s\n", table, line);
			ok = false;
		}
		PQclear(res);
	}
	if (PQputCopyEnd(m->dst, ok ? NULL : "source failed") != 1)
		ok = false;
	while ((res = PQgetResult(m->dst)) != NULL) {
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			char line[400];

			first_line(line, sizeof(line),
			           PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res)
			                                        : PQerrorMessage(m->dst));
			fprintf(stderr, "tenant-router: writing %s: %s\n", table, line);
			ok = false;
		}
		PQclear(res);
	}
	if (PQstatus(m->dst) != CONNECTION_OK) {
		fprintf(stderr, "tenant-router: writing %s: connection to \"%s\" lost\n", table,
		        m->cfg->clusters[m->to].name);
		ok = false;
	}
	if (!ok)
		goto out;
	progress(m, table, rows, bytes, t0, true);
	ok = false;
	if (!table_sum(m->src, table, cols, col, lit, c1, s1, sizeof(c1)) ||
	    !table_sum(m->dst, table, cols, col, lit, c2, s2, sizeof(c2)))
		goto out;
	if (strcmp(c1, c2) != 0 || strcmp(s1, s2) != 0) {
		fprintf(stderr,
		        "tenant-router: %s does not verify: source %s rows (checksum %s), "
		        "target %s rows (checksum %s)\n",
		        table, c1, s1, c2, s2);
		goto out;
	}
	printf("  %s: %s rows, checksum %s on both sides\n", table, c1, s1);
	ok = true;
out:
	free(cols);
	free(sql);
	return ok;
}

/* Step 5: the target commits, then the row points at the new cluster. */
static bool move_switch(struct move *m)
{
	char *lock =
	        sqlf(m->cfg, "SELECT 1 FROM %1$s.tenants WHERE tenant = $1 AND state = 'moving' "
	                     "AND version = $2::bigint FOR UPDATE");
	char *sw = sqlf(m->cfg, "UPDATE %1$s.tenants SET cluster = $3, state = 'active' WHERE "
	                        "tenant = $1 AND version = $2::bigint");
	const char *v[3] = {m->tenant, m->version, m->cfg->clusters[m->to].name};
	PGresult *res = NULL;
	bool ok = false;

	if (lock == NULL || sw == NULL)
		goto out;
	if (!run_ok(m->dir, "switching", "BEGIN", 0, NULL))
		goto out;
	res = run(m->dir, "switching", lock, 2, v, PGRES_TUPLES_OK);
	if (res == NULL || PQntuples(res) != 1) {
		if (res)
			fprintf(stderr, "tenant-router: the tenant's row changed during the move; "
			                "nothing switched\n");
		PQclear(PQexec(m->dir, "ROLLBACK"));
		goto out;
	}
	if (m->dst && !run_ok(m->dst, "committing the copy", "COMMIT", 0, NULL)) {
		PQclear(PQexec(m->dir, "ROLLBACK"));
		goto out;
	}
	if (m->dst)
		m->dst = NULL; /* committed: a rollback must not touch it (closed by the caller) */
	if (!run_ok(m->dir, "switching", sw, 3, v) ||
	    !run_ok(m->dir, "switching", "COMMIT", 0, NULL)) {
		fprintf(stderr,
		        "tenant-router: the rows of \"%s\" are committed on \"%s\" but its row "
		        "could not be switched: it stays moving (refused everywhere); set it "
		        "active on \"%s\" with plain SQL\n",
		        m->tenant, m->cfg->clusters[m->to].name, m->cfg->clusters[m->to].name);
		goto out;
	}
	ok = true;
out:
	PQclear(res);
	free(lock);
	free(sw);
	return ok;
}

int dircli_move(int argc, char **argv)
{
	const char *path = NULL, *to = NULL, *tenant = NULL;
	bool no_copy = false, delete_source = false;
	struct move m = {0};
	struct config *cfg = NULL;
	PGconn *dst = NULL;
	char *lit = NULL, *rb = NULL;
	int rc = 1;

	for (int i = 0; i < argc; i++) {
		if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) &&
		    i + 1 < argc)
			path = argv[++i];
		else if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
			to = argv[++i];
		else if (strcmp(argv[i], "--no-copy") == 0)
			no_copy = true;
		else if (strcmp(argv[i], "--delete-source") == 0)
			delete_source = true;
		else if (argv[i][0] != '-' && tenant == NULL)
			tenant = argv[i];
		else
			goto usage;
	}
	if (path == NULL || to == NULL || tenant == NULL)
		goto usage;
	if (strlen(tenant) > STARTUP_MAX_TENANT_LEN) {
		fprintf(stderr, "tenant-router: a tenant is 1 to %d bytes\n",
		        STARTUP_MAX_TENANT_LEN);
		return 2;
	}
	cfg = load(path);
	if (cfg == NULL)
		return 1;
	m.cfg = cfg;
	m.tenant = tenant;
	m.tty = isatty(2);
	m.to = config_cluster_index(cfg, to);
	if (m.to < 0) {
		fprintf(stderr, "tenant-router: no cluster \"%s\" in %s\n", to, path);
		goto out;
	}
	if (!no_copy && cfg->nmove_tables == 0) {
		fprintf(stderr,
		        "tenant-router: [move] tables is empty: list the tables to copy, or "
		        "copy them yourself and give --no-copy\n");
		goto out;
	}
	m.dir = connect_dir(cfg);
	if (m.dir == NULL || !move_begin(&m))
		goto out;
	/* The rollback statement, with the schema in it. */
	rb = sqlf(cfg, "UPDATE %1$s.tenants SET state = 'active' WHERE tenant = $1 AND version = "
	               "$2::bigint");
	if (rb == NULL)
		goto out;
	if (!move_fence(&m)) {
		move_rollback_sql(&m, rb, "the fence did not close");
		goto out;
	}
	if (!no_copy) {
		m.src = connect_cluster(cfg, (size_t)m.from);
		dst = m.dst = connect_cluster(cfg, (size_t)m.to);
		if (m.src == NULL || m.dst == NULL) {
			move_rollback_sql(&m, rb, "could not connect");
			goto out;
		}
		lit = PQescapeLiteral(m.src, tenant, strlen(tenant));
		if (lit == NULL || !run_ok(m.dst, "copy", "BEGIN", 0, NULL)) {
			move_rollback_sql(&m, rb, "could not begin the copy");
			goto out;
		}
		for (size_t i = 0; i < cfg->nmove_tables; i++) {
			char t[200];

			quote_ident_into(t, sizeof(t), cfg->move_tables[i]);
			if (!move_table(&m, t, lit)) {
				move_rollback_sql(&m, rb, "the copy failed");
				goto out;
			}
		}
	}
	if (!move_switch(&m)) {
		if (m.dst || no_copy)
			move_rollback_sql(&m, rb, "the switch failed");
		goto out;
	}
	printf("tenant %s: active on %s (version %s)\n", tenant, cfg->clusters[m.to].name,
	       m.version);
	rc = 0;
	if (delete_source && !no_copy) {
		for (size_t i = 0; i < cfg->nmove_tables; i++) {
			size_t n = strlen(cfg->move_tables[i]) + strlen(cfg->move_tenant_column) +
			           strlen(lit) + 40;
			char *sql = malloc(n);
			PGresult *res;

			if (sql == NULL)
				break;
			/* Children first would be needed with foreign keys: delete in reverse
			 * order. */
			snprintf(sql, n, "DELETE FROM %s WHERE %s = %s",
			         cfg->move_tables[cfg->nmove_tables - 1 - i],
			         cfg->move_tenant_column, lit);
			res = run(m.src, "deleting the source rows", sql, 0, NULL,
			          PGRES_COMMAND_OK);
			if (res) {
				printf("  deleted %s rows from %s on %s\n", PQcmdTuples(res),
				       cfg->move_tables[cfg->nmove_tables - 1 - i],
				       cfg->clusters[m.from].name);
				PQclear(res);
			} else {
				rc = 1;
			}
			free(sql);
		}
	}
out:
	PQfreemem(lit);
	free(rb);
	PQfinish(m.src);
	PQfinish(dst);
	PQfinish(m.dir);
	config_unref(cfg);
	return rc;
usage:
	fprintf(stderr, "usage: tenant-router move TENANT --to CLUSTER -c FILE [--no-copy] "
	                "[--delete-source]\n");
	return 2;
}

/* ---- plan ---------------------------------------------------------------- */

struct plan {
	const struct config *cfg;
	struct ring_member *mem; /* owned array; names borrowed from argv or cfg */
	size_t nmem;
	struct ring *ring; /* owned: the new ring */
	int *old_to_new;   /* owned: cluster index in cfg -> member index, -1: removed */
	size_t *moves;     /* owned: [from * nmem + to] */
	struct pins *dir;  /* owned: the directory's tenants (value: 0), NULL without one */
	size_t known, affected, frozen_skipped;
	bool freeze;
	FILE *freeze_rows; /* owned: COPY text rows "tenant\tcluster\n" to insert */
	char *freeze_buf;
	size_t freeze_len;
};

static long member_index(const struct plan *p, const char *name, size_t len)
{
	for (size_t i = 0; i < p->nmem; i++) {
		if (strlen(p->mem[i].name) == len && memcmp(p->mem[i].name, name, len) == 0)
			return (long)i;
	}
	return -1;
}

/* COPY text escaping of a tenant for the freeze rows. */
static void put_copy_text(FILE *f, const uint8_t *t, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		uint8_t c = t[i];

		if (c == '\\' || c == '\t' || c == '\n' || c == '\r')
			fprintf(f, "\\%03o", c);
		else
			fputc(c, f);
	}
}

/* One known tenant placed by the ring today: does the new ring move it? */
static void plan_ring_tenant(struct plan *p, const uint8_t *t, size_t len)
{
	size_t from = ring_lookup(p->cfg->ring, t, len), to = ring_lookup(p->ring, t, len);
	int from_new = p->old_to_new[from];

	p->known++;
	if (from_new == (int)to)
		return;
	p->affected++;
	p->moves[(from_new < 0 ? p->nmem : (size_t)from_new) * (p->nmem + 1) + to]++;
	printf("%.*s\t%s\t%s%s\n", (int)len, (const char *)t, p->cfg->clusters[from].name,
	       p->mem[to].name, from_new < 0 ? "\t(cluster removed)" : "");
	if (p->freeze_rows && from_new >= 0) {
		put_copy_text(p->freeze_rows, t, len);
		fprintf(p->freeze_rows, "\t%s\n", p->cfg->clusters[from].name);
	} else if (p->freeze_rows) {
		p->frozen_skipped++;
	}
}

static void plan_pin_cb(void *arg, const uint8_t *t, size_t len, uint16_t cluster)
{
	struct plan *p = arg;

	p->known++;
	if (p->old_to_new[cluster] < 0) {
		p->affected++;
		printf("%.*s\t%s\t?\t(pinned to a removed cluster: change the pin)\n", (int)len,
		       (const char *)t, p->cfg->clusters[cluster].name);
	}
}

static bool plan_directory(struct plan *p, PGconn *c)
{
	char *sql = sqlf(p->cfg, "SELECT tenant, cluster FROM %1$s.tenants");
	PGresult *res = sql ? run(c, "reading the directory", sql, 0, NULL, PGRES_TUPLES_OK) : NULL;

	free(sql);
	if (res == NULL)
		return false;
	p->dir = pins_new();
	if (p->dir == NULL || pins_reserve(p->dir, (size_t)PQntuples(res)) < 0) {
		PQclear(res);
		return false;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		const char *t = PQgetvalue(res, i, 0), *cl = PQgetvalue(res, i, 1);
		size_t len = (size_t)PQgetlength(res, i, 0);

		if (len == 0 || len > PINS_MAX_TENANT_LEN || pins_add(p->dir, t, len, 0) < 0)
			continue;
		p->known++;
		if (member_index(p, cl, strlen(cl)) < 0) {
			p->affected++;
			printf("%s\t%s\t?\t(directory row on a cluster the new ring lacks: move it "
			       "first)\n",
			       t, cl);
		}
	}
	PQclear(res);
	pins_seal(p->dir);
	return true;
}

static bool plan_tenants_file(struct plan *p, const char *path)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (f == NULL) {
		fprintf(stderr, "tenant-router: %s: %s\n", path, strerror(errno));
		return false;
	}
	while ((n = getline(&line, &cap, f)) > 0) {
		size_t len = (size_t)n;

		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			len--;
		if (len == 0 || line[0] == '#' || len > PINS_MAX_TENANT_LEN)
			continue;
		if (p->dir && pins_lookup(p->dir, line, len) >= 0)
			continue; /* counted with the directory */
		if (pins_lookup(p->cfg->pins, line, len) >= 0)
			continue; /* counted with the pins */
		plan_ring_tenant(p, (const uint8_t *)line, len);
	}
	free(line);
	fclose(f);
	return true;
}

/* --freeze: the affected tenants get active rows on the cluster they are on today. */
static bool plan_freeze(struct plan *p, PGconn *c)
{
	char *ins =
	        sqlf(p->cfg, "INSERT INTO %1$s.tenants (tenant, cluster, state) SELECT tenant, "
	                     "cluster, 'active' FROM tr_freeze ON CONFLICT (tenant) DO NOTHING");
	PGresult *res;
	bool ok = false;

	fflush(p->freeze_rows);
	if (ins == NULL || !run_ok(c, "freeze", "BEGIN", 0, NULL) ||
	    !run_ok(c, "freeze",
	            "CREATE TEMP TABLE tr_freeze (tenant text, cluster text) ON "
	            "COMMIT DROP",
	            0, NULL))
		goto out;
	res = run(c, "freeze", "COPY tr_freeze FROM STDIN", 0, NULL, PGRES_COPY_IN);
	if (res == NULL)
		goto out;
	PQclear(res);
	if (PQputCopyData(c, p->freeze_buf, (int)p->freeze_len) != 1 || PQputCopyEnd(c, NULL) != 1)
		goto out;
	res = PQgetResult(c);
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		fprintf(stderr, "tenant-router: freeze: %s", PQresultErrorMessage(res));
		PQclear(res);
		goto out;
	}
	PQclear(res);
	while ((res = PQgetResult(c)) != NULL)
		PQclear(res);
	res = run(c, "freeze", ins, 0, NULL, PGRES_COMMAND_OK);
	if (res == NULL)
		goto out;
	printf("froze %s tenants where they are (directory rows, active)\n", PQcmdTuples(res));
	PQclear(res);
	ok = run_ok(c, "freeze", "COMMIT", 0, NULL);
out:
	free(ins);
	return ok;
}

static bool parse_weight(const char *s, const char **name, size_t *nlen, uint32_t *w)
{
	const char *colon = strrchr(s, ':');
	char *end;
	unsigned long v;

	*name = s;
	if (colon == NULL) {
		*nlen = strlen(s);
		*w = 1;
		return *nlen > 0;
	}
	*nlen = (size_t)(colon - s);
	errno = 0;
	v = strtoul(colon + 1, &end, 10);
	if (*nlen == 0 || *end != '\0' || errno != 0 || v < 1 || v > 1000)
		return false;
	*w = (uint32_t)v;
	return true;
}

int dircli_plan(int argc, char **argv)
{
	const char *path = NULL, *tenants = NULL;
	struct plan p = {0};
	struct config *cfg = NULL;
	PGconn *dir = NULL;
	char err[512];
	char **names = NULL; /* owned copies of added names */
	size_t nnames = 0;
	int rc = 1;

	for (int i = 0; i < argc; i++) {
		if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) &&
		    i + 1 < argc)
			path = argv[++i];
		else if (strcmp(argv[i], "--tenants") == 0 && i + 1 < argc)
			tenants = argv[++i];
		else if (strcmp(argv[i], "--freeze") == 0)
			p.freeze = true;
		else if ((strcmp(argv[i], "--add-cluster") == 0 ||
		          strcmp(argv[i], "--remove-cluster") == 0 ||
		          strcmp(argv[i], "--weight") == 0) &&
		         i + 1 < argc)
			i++; /* applied below, once the config is loaded */
		else
			goto usage;
	}
	if (path == NULL)
		goto usage;
	cfg = load(path);
	if (cfg == NULL)
		return 1;
	p.cfg = cfg;
	p.mem = calloc(cfg->nclusters + (size_t)argc, sizeof(*p.mem));
	names = calloc((size_t)argc + 1, sizeof(*names));
	p.old_to_new = calloc(cfg->nclusters, sizeof(int));
	if (p.mem == NULL || names == NULL || p.old_to_new == NULL)
		goto out;
	for (size_t i = 0; i < cfg->nclusters; i++)
		p.mem[p.nmem++] =
		        (struct ring_member){cfg->clusters[i].name, cfg->clusters[i].weight};
	for (int i = 0; i < argc; i++) {
		const char *name;
		size_t nlen;
		uint32_t w;
		long k;

		if (i + 1 >= argc)
			break;
		if (strcmp(argv[i], "--add-cluster") == 0 || strcmp(argv[i], "--weight") == 0) {
			bool add = strcmp(argv[i], "--add-cluster") == 0;

			if (!parse_weight(argv[i + 1], &name, &nlen, &w)) {
				fprintf(stderr,
				        "tenant-router: %s %s: give NAME or NAME:WEIGHT (1 to "
				        "1000)\n",
				        argv[i], argv[i + 1]);
				rc = 2;
				goto out;
			}
			k = member_index(&p, name, nlen);
			if (add && k >= 0) {
				fprintf(stderr,
				        "tenant-router: cluster \"%.*s\" is on the ring already\n",
				        (int)nlen, name);
				goto out;
			}
			if (!add && k < 0) {
				fprintf(stderr, "tenant-router: --weight: no cluster \"%.*s\"\n",
				        (int)nlen, name);
				goto out;
			}
			if (add) {
				names[nnames] = strndup(name, nlen);
				if (names[nnames] == NULL)
					goto out;
				p.mem[p.nmem++] = (struct ring_member){names[nnames++], w};
			} else {
				p.mem[k].weight = w;
			}
			i++;
		} else if (strcmp(argv[i], "--remove-cluster") == 0) {
			k = member_index(&p, argv[i + 1], strlen(argv[i + 1]));
			if (k < 0) {
				fprintf(stderr,
				        "tenant-router: --remove-cluster: no cluster \"%s\"\n",
				        argv[i + 1]);
				goto out;
			}
			memmove(&p.mem[k], &p.mem[k + 1],
			        (p.nmem - (size_t)k - 1) * sizeof(*p.mem));
			p.nmem--;
			i++;
		} else if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0 ||
		           strcmp(argv[i], "--tenants") == 0) {
			i++;
		}
	}
	if (p.nmem == 0) {
		fprintf(stderr, "tenant-router: the new ring would have no cluster\n");
		goto out;
	}
	p.ring = ring_build(p.mem, p.nmem, cfg->vnodes, err, sizeof(err));
	p.moves = calloc((p.nmem + 1) * (p.nmem + 1), sizeof(size_t));
	if (p.ring == NULL || p.moves == NULL) {
		fprintf(stderr, "tenant-router: the new ring: %s\n",
		        p.ring ? "out of memory" : err);
		goto out;
	}
	for (size_t i = 0; i < cfg->nclusters; i++)
		p.old_to_new[i] =
		        (int)member_index(&p, cfg->clusters[i].name, strlen(cfg->clusters[i].name));
	if (p.freeze) {
		if (cfg->dir_conninfo == NULL) {
			fprintf(stderr, "tenant-router: --freeze needs [directory] conninfo\n");
			goto out;
		}
		p.freeze_rows = open_memstream(&p.freeze_buf, &p.freeze_len);
		if (p.freeze_rows == NULL)
			goto out;
	}
	if (cfg->dir_conninfo) {
		dir = connect_dir(cfg);
		if (dir == NULL || !plan_directory(&p, dir))
			goto out;
	}
	pins_each(cfg->pins, plan_pin_cb, &p);
	if (tenants && !plan_tenants_file(&p, tenants))
		goto out;
	printf("# %zu known tenants, %zu would change cluster\n", p.known, p.affected);
	for (size_t f = 0; f <= p.nmem; f++) {
		for (size_t t = 0; t < p.nmem; t++) {
			size_t n = p.moves[f * (p.nmem + 1) + t];

			if (n > 0)
				printf("# %s -> %s: %zu\n",
				       f < p.nmem ? p.mem[f].name : "(removed)", p.mem[t].name, n);
		}
	}
	if (p.freeze) {
		if (p.frozen_skipped > 0)
			fprintf(stderr,
			        "tenant-router: %zu tenants of removed clusters cannot be "
			        "frozen: move them first\n",
			        p.frozen_skipped);
		if (!plan_freeze(&p, dir))
			goto out;
	}
	rc = 0;
out:
	if (p.freeze_rows)
		fclose(p.freeze_rows);
	free(p.freeze_buf);
	PQfinish(dir);
	pins_free(p.dir);
	ring_free(p.ring);
	free(p.moves);
	free(p.old_to_new);
	free(p.mem);
	for (size_t i = 0; i < nnames; i++)
		free(names[i]);
	free(names);
	config_unref(cfg);
	return rc;
usage:
	fprintf(stderr, "usage: tenant-router plan -c FILE [--add-cluster NAME[:WEIGHT]]... "
	                "[--remove-cluster NAME]...\n"
	                "         [--weight NAME:WEIGHT]... [--tenants FILE] [--freeze]\n");
	return 2;
}
