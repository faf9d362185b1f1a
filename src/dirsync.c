/*
 * dirsync.c - the tenant directory's copy in this router, kept current by a
 * thread of its own running libpq (never an event loop).
 *
 * The thread's cycle: connect, LISTEN on the schema's channel, load the
 * whole table with COPY tenants (tenant, cluster, state, version) TO STDOUT
 * into a new base snapshot, then wait on the socket. A NOTIFY (the
 * trigger sends one per statement that changes tenants) makes it fetch the
 * rows with a version above the one held and apply them as a delta over the
 * base (directory.c: the base is shared, never copied). A payload "full"
 * (a DELETE) or a delta of more than DELTA_MAX rows makes it load the whole
 * table again, as does every refresh interval. Every heartbeat it writes
 * this router's row in routers: the lowest version every event loop has
 * reported using, and the live sessions of each moving tenant.
 *
 * Every libpq call is non-blocking with a deadline and a wake-up pipe, so a
 * directory that hangs (a frozen host) costs a timeout, not a stuck thread,
 * and dirsync_stop() returns promptly.
 *
 * Snapshots are published under a write lock; readers take the read lock
 * only for a lookup or a copy of the moving list and never hold a
 * reference, so the last reference of an old snapshot is always dropped on
 * this thread: freeing ten million rows never lands on an event loop.
 *
 * The cache file holds the rows of the last full load, then "\." and the
 * rows fetched since, in COPY text format; it is read only when the
 * directory cannot be reached at start.
 */
#include "dirsync.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <uv.h>
#include <xxhash.h>

#include "config.h"
#include "directory.h"
#include "log.h"
#include "route.h"

#define DELTA_MAX          65536 /* rows in a delta before a full load replaces it */
#define QUERY_TIMEOUT_MS   10000 /* one statement, or a COPY without progress */
#define RETRY_MS           1000
#define HB_AFTER_CHANGE_MS 250 /* main.c's loops report every 100 ms */
#define BAD_ROW_LOGS       20  /* per load, then a count */
#define CONNECT_TIMEOUT_S  "5"

struct worker_report {
	int64_t version; /* -1: none yet */
	size_t n;
	struct dirsync_moving *moving; /* owned */
	size_t *counts;                /* owned */
};

struct settings {
	char *conninfo, *schema, *cache_file, *router_id; /* owned */
	char **clusters;                                  /* owned */
	size_t nclusters;
	uint64_t refresh_ms, heartbeat_ms, lease_ms;
	bool stale_serve;
	uint64_t fingerprint;
};

struct dirsync {
	uv_rwlock_t lock;    /* cur */
	struct dir *cur;     /* owned reference; NULL until loaded */
	uv_mutex_t mu;       /* everything below that other threads read or write */
	struct settings set; /* the thread copies it at each cycle */
	bool reconfigured;
	struct worker_report *reports; /* owned: one per worker */
	size_t nworkers;
	struct dirsync_status st;
	/*
	 * The lease, read by every session's placement: monotonic ms when the
	 * last accepted heartbeat was sent, and how long after it tenants are
	 * refused (UINT64_MAX: directory_stale = serve). Readers compute
	 * staleness themselves, so a libpq call stuck on this thread cannot
	 * make the router serve past its lease.
	 */
	atomic_uint_fast64_t hb_ms;
	atomic_uint_fast64_t refuse_ms;
	bool stale; /* the thread's own: to log the changes */

	/* The thread's own. */
	uv_thread_t thread;
	bool started;
	atomic_bool stopping;
	int wake[2]; /* pipe: stop and reconfigure wake poll() */
	PGconn *conn;
	struct settings my;    /* a copy of set for this cycle */
	uint64_t started_at_s; /* wall clock, for the routers row */
	char host[256];
	bool have_loaded; /* a load (not the cache) succeeded once */
	size_t bad_logged;
	FILE *cache;      /* open for appending the rows fetched since the last load */
	uv_async_t ready; /* on the loop given to dirsync_start */
	dirsync_ready_fn ready_fn;
	void *ready_arg;
	bool ready_sent;
};

static uint64_t now_ms(void)
{
	return uv_hrtime() / 1000000u;
}

static void settings_free(struct settings *s)
{
	free(s->conninfo);
	free(s->schema);
	free(s->cache_file);
	free(s->router_id);
	for (size_t i = 0; i < s->nclusters; i++)
		free(s->clusters[i]);
	free(s->clusters);
	memset(s, 0, sizeof(*s));
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static int settings_from(struct settings *s, const struct config *cfg)
{
	memset(s, 0, sizeof(*s));
	s->conninfo = dup_or_null(cfg->dir_conninfo);
	s->schema = dup_or_null(cfg->dir_schema);
	s->cache_file = dup_or_null(cfg->dir_cache_file);
	s->router_id = dup_or_null(cfg->dir_router_id);
	s->clusters = calloc(cfg->nclusters + 1, sizeof(char *));
	if (s->conninfo == NULL || s->schema == NULL || s->clusters == NULL)
		goto fail;
	for (size_t i = 0; i < cfg->nclusters; i++) {
		s->clusters[i] = strdup(cfg->clusters[i].name);
		if (s->clusters[i] == NULL)
			goto fail;
		s->nclusters++;
	}
	s->refresh_ms = cfg->dir_refresh_ms;
	s->heartbeat_ms = cfg->dir_heartbeat_ms;
	s->lease_ms = cfg->dir_lease_ms;
	s->stale_serve = cfg->dir_stale_serve;
	s->fingerprint = cfg->fingerprint;
	return 0;
fail:
	settings_free(s);
	return -ENOMEM;
}

static int settings_copy(struct settings *dst, const struct settings *src)
{
	memset(dst, 0, sizeof(*dst));
	*dst = *src;
	dst->conninfo = dup_or_null(src->conninfo);
	dst->schema = dup_or_null(src->schema);
	dst->cache_file = dup_or_null(src->cache_file);
	dst->router_id = dup_or_null(src->router_id);
	dst->clusters = calloc(src->nclusters + 1, sizeof(char *));
	dst->nclusters = 0;
	if (dst->conninfo == NULL || dst->schema == NULL || dst->clusters == NULL)
		goto fail;
	for (size_t i = 0; i < src->nclusters; i++) {
		dst->clusters[i] = strdup(src->clusters[i]);
		if (dst->clusters[i] == NULL)
			goto fail;
		dst->nclusters++;
	}
	return 0;
fail:
	settings_free(dst);
	return -ENOMEM;
}

struct dirsync *dirsync_new(const struct config *cfg, size_t nworkers)
{
	struct dirsync *ds = calloc(1, sizeof(*ds));

	if (ds == NULL)
		return NULL;
	ds->wake[0] = ds->wake[1] = -1;
	if (settings_from(&ds->set, cfg) < 0)
		goto fail;
	ds->reports = calloc(nworkers ? nworkers : 1, sizeof(*ds->reports));
	if (ds->reports == NULL)
		goto fail;
	ds->nworkers = nworkers;
	for (size_t i = 0; i < nworkers; i++)
		ds->reports[i].version = -1;
	if (uv_rwlock_init(&ds->lock) != 0)
		goto fail;
	if (uv_mutex_init(&ds->mu) != 0) {
		uv_rwlock_destroy(&ds->lock);
		goto fail;
	}
	if (pipe2(ds->wake, O_CLOEXEC | O_NONBLOCK) == -1) {
		uv_mutex_destroy(&ds->mu);
		uv_rwlock_destroy(&ds->lock);
		goto fail;
	}
	if (gethostname(ds->host, sizeof(ds->host)) == -1)
		snprintf(ds->host, sizeof(ds->host), "localhost");
	ds->host[sizeof(ds->host) - 1] = '\0';
	ds->started_at_s = (uint64_t)time(NULL);
	/* Until a heartbeat is accepted the lease runs from the start. */
	atomic_init(&ds->hb_ms, now_ms());
	atomic_init(&ds->refuse_ms, cfg->dir_stale_serve ? UINT64_MAX : cfg->dir_lease_ms);
	return ds;
fail:
	settings_free(&ds->set);
	free(ds->reports);
	free(ds);
	return NULL;
}

void dirsync_free(struct dirsync *ds)
{
	if (ds == NULL)
		return;
	dir_unref(ds->cur);
	settings_free(&ds->set);
	for (size_t i = 0; i < ds->nworkers; i++) {
		free(ds->reports[i].moving);
		free(ds->reports[i].counts);
	}
	free(ds->reports);
	close(ds->wake[0]);
	close(ds->wake[1]);
	uv_mutex_destroy(&ds->mu);
	uv_rwlock_destroy(&ds->lock);
	free(ds);
}

static void wake_thread(struct dirsync *ds)
{
	ssize_t rc = write(ds->wake[1], "x", 1);

	(void)rc; /* a full pipe already wakes it */
}

void dirsync_reconfigure(struct dirsync *ds, const struct config *cfg)
{
	struct settings s;

	if (ds == NULL || settings_from(&s, cfg) < 0)
		return;
	uv_mutex_lock(&ds->mu);
	settings_free(&ds->set);
	ds->set = s;
	ds->reconfigured = true;
	uv_mutex_unlock(&ds->mu);
	atomic_store(&ds->refuse_ms, cfg->dir_stale_serve ? UINT64_MAX : cfg->dir_lease_ms);
	wake_thread(ds);
}

/* ---- the readers' side ---------------------------------------------------- */

/* Milliseconds since the last accepted heartbeat was sent (0 if it is "later" than now). */
static uint64_t lease_age(struct dirsync *ds)
{
	uint64_t hb = atomic_load(&ds->hb_ms), now = now_ms();

	return now > hb ? now - hb : 0;
}

bool dirsync_sure(struct dirsync *ds)
{
	return ds == NULL || lease_age(ds) <= atomic_load(&ds->refuse_ms);
}

bool dirsync_place(struct dirsync *ds, const struct config *cfg, const void *tenant, size_t len,
                   struct route_place *out)
{
	const char *const *names = (const char *const *)cfg->cluster_names;

	if (ds == NULL) {
		route_place(NULL, cfg->pins, cfg->ring, names, cfg->nclusters, tenant, len, out);
		return true;
	}
	uv_rwlock_rdlock(&ds->lock);
	route_place(ds->cur, cfg->pins, cfg->ring, names, cfg->nclusters, tenant, len, out);
	uv_rwlock_rdunlock(&ds->lock);
	out->dir_cluster = NULL;
	return dirsync_sure(ds);
}

size_t dirsync_moving(struct dirsync *ds, struct dirsync_moving **out, int64_t *version)
{
	size_t n;

	*out = NULL;
	*version = 0;
	if (ds == NULL)
		return 0;
	uv_rwlock_rdlock(&ds->lock);
	n = dir_nmoving(ds->cur);
	*version = dir_version(ds->cur);
	if (n > 0 && (*out = malloc(n * sizeof(**out))) != NULL) {
		for (size_t i = 0; i < n; i++) {
			const uint8_t *t =
			        dir_moving(ds->cur, i, &(*out)[i].len, &(*out)[i].since_ms);

			const char *cl = NULL;

			memcpy((*out)[i].tenant, t, (*out)[i].len);
			(*out)[i].tenant[(*out)[i].len] = '\0';
			(void)dir_lookup(ds->cur, t, (*out)[i].len, XXH3_64bits(t, (*out)[i].len),
			                 &cl);
			snprintf((*out)[i].cluster, sizeof((*out)[i].cluster), "%s", cl ? cl : "");
		}
	} else {
		n = 0;
	}
	uv_rwlock_rdunlock(&ds->lock);
	return n;
}

void dirsync_report(struct dirsync *ds, size_t worker, int64_t version,
                    const struct dirsync_moving *moving, const size_t *counts, size_t n)
{
	struct worker_report *r;
	struct dirsync_moving *m = NULL;
	size_t *c = NULL;

	if (ds == NULL || worker >= ds->nworkers)
		return;
	if (n > 0) {
		m = malloc(n * sizeof(*m));
		c = malloc(n * sizeof(*c));
		if (m == NULL || c == NULL) {
			free(m);
			free(c);
			return; /* the old report stands: the fence waits */
		}
		memcpy(m, moving, n * sizeof(*m));
		memcpy(c, counts, n * sizeof(*c));
	}
	uv_mutex_lock(&ds->mu);
	r = &ds->reports[worker];
	free(r->moving);
	free(r->counts);
	r->moving = m;
	r->counts = c;
	r->n = n;
	r->version = version;
	uv_mutex_unlock(&ds->mu);
}

void dirsync_status(struct dirsync *ds, struct dirsync_status *st)
{
	memset(st, 0, sizeof(*st));
	if (ds == NULL)
		return;
	uv_mutex_lock(&ds->mu);
	*st = ds->st;
	st->age_ms = lease_age(ds);
	st->stale = st->age_ms > ds->set.lease_ms;
	uv_mutex_unlock(&ds->mu);
}

/* ---- the thread: libpq with deadlines ------------------------------------- */

/*
 * Waits until the connection's socket is readable (or writable, for
 * PQflush and PQconnectPoll), the wake-up pipe is, or timeout_ms pass.
 * Returns 1 ready, 0 timeout, -1 stopping.
 */
static int nap(struct dirsync *ds, uint64_t ms);

static int wait_sock(struct dirsync *ds, int fd, bool for_write, uint64_t timeout_ms)
{
	struct pollfd p[2] = {{.fd = fd, .events = for_write ? POLLOUT : POLLIN},
	                      {.fd = ds->wake[0], .events = POLLIN}};
	int rc;

	if (fd < 0)
		return nap(ds, timeout_ms) < 0 ? -1 : 0;
	if (atomic_load(&ds->stopping))
		return -1;
	rc = poll(p, 2, (int)(timeout_ms > 60000 ? 60000 : timeout_ms));
	if (rc > 0 && (p[1].revents & POLLIN)) {
		char buf[64];

		while (read(ds->wake[0], buf, sizeof(buf)) > 0)
			;
		if (atomic_load(&ds->stopping))
			return -1;
	}
	if (rc > 0 && p[0].revents)
		return 1;
	return 0;
}

/* Sleeps on the wake-up pipe only. */
static int nap(struct dirsync *ds, uint64_t ms)
{
	struct pollfd p = {.fd = ds->wake[0], .events = POLLIN};
	char buf[64];

	if (atomic_load(&ds->stopping))
		return -1;
	if (poll(&p, 1, (int)ms) > 0)
		while (read(ds->wake[0], buf, sizeof(buf)) > 0)
			;
	return atomic_load(&ds->stopping) ? -1 : 0;
}

static void drop_conn(struct dirsync *ds, const char *what)
{
	char line[256];

	if (ds->conn == NULL)
		return;
	log_first_line(line, sizeof(line), PQerrorMessage(ds->conn), false);
	log_warn("directory: %s failed: %s; serving from the copy of version %" PRId64
	         " and reconnecting",
	         what, line[0] ? line : "timeout", dir_version(ds->cur));
	PQfinish(ds->conn);
	ds->conn = NULL;
	uv_mutex_lock(&ds->mu);
	ds->st.connected = false;
	ds->st.failures++;
	uv_mutex_unlock(&ds->mu);
}

/* Sends what libpq has buffered; false on error or timeout. */
static bool flush_all(struct dirsync *ds)
{
	uint64_t deadline = now_ms() + QUERY_TIMEOUT_MS;
	int rc;

	while ((rc = PQflush(ds->conn)) == 1) {
		uint64_t t = now_ms();

		if (t >= deadline || wait_sock(ds, PQsocket(ds->conn), true, deadline - t) < 0)
			return false;
	}
	return rc == 0;
}

/* The next result, waiting up to QUERY_TIMEOUT_MS; NULL at the end, on error or timeout. */
static PGresult *next_result(struct dirsync *ds, bool *failed)
{
	uint64_t deadline = now_ms() + QUERY_TIMEOUT_MS;

	*failed = false;
	while (PQisBusy(ds->conn)) {
		uint64_t t = now_ms();
		int w;

		if (t >= deadline) {
			*failed = true;
			return NULL;
		}
		w = wait_sock(ds, PQsocket(ds->conn), false, deadline - t);
		if (w < 0 || (w > 0 && !PQconsumeInput(ds->conn))) {
			*failed = true;
			return NULL;
		}
	}
	return PQgetResult(ds->conn);
}

/* Runs a statement; its one result (NULL on failure: the connection is dropped). */
static PGresult *exec_params(struct dirsync *ds, const char *sql, int n, const char *const *v,
                             ExecStatusType want, const char *what)
{
	PGresult *res, *keep = NULL;
	bool failed;

	if (!PQsendQueryParams(ds->conn, sql, n, NULL, v, NULL, NULL, 0) || !flush_all(ds)) {
		drop_conn(ds, what);
		return NULL;
	}
	while ((res = next_result(ds, &failed)) != NULL) {
		if (keep == NULL)
			keep = res;
		else
			PQclear(res);
	}
	if (failed || keep == NULL || PQresultStatus(keep) != want) {
		if (keep && PQresultStatus(keep) != want) {
			char line[256];

			log_first_line(line, sizeof(line), PQresultErrorMessage(keep), false);
			log_warn("directory: %s: %s", what, line);
		}
		PQclear(keep);
		drop_conn(ds, what);
		return NULL;
	}
	return keep;
}

static bool do_connect(struct dirsync *ds)
{
	const char *kw[] = {"dbname", "connect_timeout", "application_name", NULL};
	const char *val[] = {ds->my.conninfo, CONNECT_TIMEOUT_S, "tenant-router directory", NULL};
	uint64_t deadline = now_ms() + 10000;
	PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
	char sql[256];
	PGresult *res;

	ds->conn = PQconnectStartParams(kw, val, 1);
	if (ds->conn == NULL)
		return false;
	while (ps != PGRES_POLLING_OK) {
		uint64_t t = now_ms();

		if (ps == PGRES_POLLING_FAILED || PQstatus(ds->conn) == CONNECTION_BAD ||
		    t >= deadline ||
		    wait_sock(ds, PQsocket(ds->conn), ps == PGRES_POLLING_WRITING, deadline - t) <
		            0)
			goto fail;
		ps = PQconnectPoll(ds->conn);
	}
	if (PQsetnonblocking(ds->conn, 1) != 0)
		goto fail;
	snprintf(sql, sizeof(sql), "LISTEN %s", ds->my.schema);
	res = exec_params(ds, sql, 0, NULL, PGRES_COMMAND_OK, "LISTEN");
	if (res == NULL)
		return false;
	PQclear(res);
	uv_mutex_lock(&ds->mu);
	ds->st.connected = true;
	uv_mutex_unlock(&ds->mu);
	log_info("directory: connected, listening on channel %s", ds->my.schema);
	return true;
fail : {
	char line[256];

	log_first_line(line, sizeof(line), ds->conn ? PQerrorMessage(ds->conn) : "", false);
	PQfinish(ds->conn);
	ds->conn = NULL;
	uv_mutex_lock(&ds->mu);
	ds->st.failures++;
	uv_mutex_unlock(&ds->mu);
	if (!ds->have_loaded || ds->st.failures % 30 == 1)
		log_warn("directory: could not connect: %s", line[0] ? line : "timeout");
	return false;
}
}

/* ---- loading ----------------------------------------------------------- */

static void bad_row_cb(void *arg, const struct dir_row *r, const char *why)
{
	struct dirsync *ds = arg;
	char t[64];
	size_t n = r->tlen < sizeof(t) - 1 ? r->tlen : sizeof(t) - 1;

	if (ds->bad_logged++ >= BAD_ROW_LOGS)
		return;
	for (size_t i = 0; i < n; i++)
		t[i] = r->tenant[i] >= 0x20 && r->tenant[i] < 0x7f ? (char)r->tenant[i] : '?';
	t[n] = '\0';
	log_warn("directory: row of tenant \"%s\" ignored (%s: cluster \"%.*s\", state \"%.*s\"); "
	         "the tenant is refused until the row is fixed",
	         t, why, (int)(r->clen > 64 ? 64 : r->clen), r->cluster,
	         (int)(r->slen > 32 ? 32 : r->slen), r->state);
}

static void publish(struct dirsync *ds, struct dir *d, bool from_cache, uint64_t load_ms,
                    uint64_t apply_us, bool full)
{
	struct dir *old;

	uv_rwlock_wrlock(&ds->lock);
	old = ds->cur;
	ds->cur = d;
	uv_rwlock_wrunlock(&ds->lock);
	dir_unref(old); /* this thread: readers never hold a reference */
	uv_mutex_lock(&ds->mu);
	ds->st.loaded = true;
	ds->st.from_cache = from_cache;
	ds->st.version = dir_version(d);
	ds->st.rows = dir_rows(d);
	ds->st.ignored = dir_ignored(d);
	ds->st.moving = dir_nmoving(d);
	ds->st.memory = dir_memory(d);
	if (full) {
		ds->st.loads++;
		ds->st.last_load_ms = load_ms;
	} else {
		ds->st.incrementals++;
		ds->st.last_apply_us = apply_us;
	}
	uv_mutex_unlock(&ds->mu);
	if (!ds->ready_sent) {
		ds->ready_sent = true;
		uv_async_send(&ds->ready);
	}
}

/* Row text for the cache file: as COPY sent it, with its '\n'. */
static void cache_put(struct dirsync *ds, FILE *f, const char *p, size_t n)
{
	if (f != NULL && p != NULL)
		(void)fwrite(p, 1, n, f);
}

static FILE *cache_open_tmp(struct dirsync *ds, char *tmp, size_t cap)
{
	if (ds->my.cache_file == NULL)
		return NULL;
	snprintf(tmp, cap, "%s.tmp", ds->my.cache_file);
	return fopen(tmp, "w");
}

/*
 * Runs COPY (...) TO STDOUT and hands each row to fn; false on failure (the
 * connection is dropped).
 */
typedef int (*row_fn)(void *arg, const struct dir_row *r, const char *raw, size_t rawlen);
static bool copy_rows(struct dirsync *ds, const char *sql, row_fn fn, void *arg, size_t *bad)
{
	uint8_t buf[DIR_ROW_BUF];
	PGresult *res;
	bool failed;

	if (!PQsendQuery(ds->conn, sql) || !flush_all(ds)) {
		drop_conn(ds, "COPY");
		return false;
	}
	res = next_result(ds, &failed);
	if (res == NULL || PQresultStatus(res) != PGRES_COPY_OUT) {
		if (res) {
			char line[256];

			log_first_line(line, sizeof(line), PQresultErrorMessage(res), false);
			log_warn("directory: %s", line);
		}
		PQclear(res);
		drop_conn(ds, "loading the directory");
		return false;
	}
	PQclear(res);
	for (;;) {
		char *row = NULL;
		int n = PQgetCopyData(ds->conn, &row, 1);

		if (n > 0) {
			struct dir_row r;
			size_t len = (size_t)n;

			if (len > 0 && row[len - 1] == '\n')
				len--;
			if (dir_parse_row((const uint8_t *)row, len, buf, sizeof(buf), &r) !=
			    PROTO_OK) {
				(*bad)++;
			} else if (fn(arg, &r, row, (size_t)n) < 0) {
				PQfreemem(row);
				drop_conn(ds, "loading the directory (out of memory)");
				return false;
			}
			PQfreemem(row);
			continue;
		}
		if (n == 0) {
			int w = wait_sock(ds, PQsocket(ds->conn), false, QUERY_TIMEOUT_MS);

			if (w <= 0 || !PQconsumeInput(ds->conn)) {
				drop_conn(ds, "loading the directory");
				return false;
			}
			continue;
		}
		break; /* -1: done; -2: error (the result says) */
	}
	while ((res = next_result(ds, &failed)) != NULL) {
		bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;

		PQclear(res);
		if (!ok)
			failed = true;
	}
	if (failed) {
		drop_conn(ds, "loading the directory");
		return false;
	}
	return true;
}

struct full_ctx {
	struct dir_builder *b;
	FILE *cache;
	struct dirsync *ds;
};

static int full_row_cb(void *arg, const struct dir_row *r, const char *raw, size_t rawlen)
{
	struct full_ctx *fc = arg;

	cache_put(fc->ds, fc->cache, raw, rawlen);
	return dir_builder_add(fc->b, r) < 0 ? -1 : 0;
}

static bool full_load(struct dirsync *ds)
{
	char sql[512], tmp[4200];
	struct full_ctx fc = {.ds = ds};
	uint64_t t0 = now_ms();
	size_t expect = 0, bad = 0;
	PGresult *res;
	struct dir *d;

	/* The planner's estimate sizes the table once (a hint: wrong costs time only). */
	snprintf(sql, sizeof(sql),
	         "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = "
	         "'%s.tenants'::regclass",
	         ds->my.schema);
	res = exec_params(ds, sql, 0, NULL, PGRES_TUPLES_OK, "sizing the directory");
	if (res == NULL)
		return false;
	if (PQntuples(res) == 1)
		expect = (size_t)strtoull(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	ds->bad_logged = 0;
	fc.b = dir_builder_new((const char *const *)ds->my.clusters, ds->my.nclusters,
	                       expect + expect / 16, bad_row_cb, ds);
	if (fc.b == NULL) {
		log_error("directory: out of memory for a table of %zu rows", expect);
		return false;
	}
	fc.cache = cache_open_tmp(ds, tmp, sizeof(tmp));
	snprintf(sql, sizeof(sql), "COPY %s.tenants (tenant, cluster, state, version) TO STDOUT",
	         ds->my.schema);
	if (!copy_rows(ds, sql, full_row_cb, &fc, &bad)) {
		dir_builder_free(fc.b);
		if (fc.cache) {
			fclose(fc.cache);
			unlink(tmp);
		}
		return false;
	}
	uv_rwlock_rdlock(&ds->lock);
	d = dir_builder_finish(fc.b, ds->cur, now_ms());
	uv_rwlock_rdunlock(&ds->lock);
	if (d == NULL) {
		log_error("directory: out of memory sealing the table");
		if (fc.cache) {
			fclose(fc.cache);
			unlink(tmp);
		}
		return false;
	}
	if (ds->cache) {
		fclose(ds->cache);
		ds->cache = NULL;
	}
	if (fc.cache) {
		if (fputs("\\.\n", fc.cache) < 0 || fflush(fc.cache) != 0 ||
		    rename(tmp, ds->my.cache_file) == -1) {
			log_warn("directory: could not write cache_file %s: %s", ds->my.cache_file,
			         strerror(errno));
			fclose(fc.cache);
			unlink(tmp);
		} else {
			ds->cache = fc.cache; /* appended to by incremental fetches */
		}
	}
	if (bad > 0)
		log_warn("directory: %zu rows could not be parsed and were skipped", bad);
	ds->have_loaded = true;
	log_info("directory: loaded version %" PRId64 " rows=%zu ignored=%zu moving=%zu in %" PRIu64
	         " ms (%zu MB)",
	         dir_version(d), dir_rows(d), dir_ignored(d), dir_nmoving(d), now_ms() - t0,
	         dir_memory(d) >> 20);
	publish(ds, d, false, now_ms() - t0, 0, true);
	return true;
}

/* Rows of an incremental fetch: copied into one buffer (the parse buffer is reused). */
struct incr_ctx {
	struct dir_row *rows;
	size_t n, cap;
	uint8_t *bytes;
	size_t blen, bcap;
	FILE *cache;
	struct dirsync *ds;
};

static int incr_row_cb(void *arg, const struct dir_row *r, const char *raw, size_t rawlen)
{
	struct incr_ctx *ic = arg;
	size_t need = r->tlen + r->clen + r->slen;

	cache_put(ic->ds, ic->cache, raw, rawlen);
	if (ic->n == ic->cap) {
		size_t nc = ic->cap ? ic->cap * 2 : 64;
		struct dir_row *v = realloc(ic->rows, nc * sizeof(*v));

		if (v == NULL)
			return -1;
		ic->rows = v;
		ic->cap = nc;
	}
	if (need > ic->bcap - ic->blen) {
		size_t nc = (ic->bcap + need) * 2;
		uint8_t *b = realloc(ic->bytes, nc);

		if (b == NULL)
			return -1;
		ic->bytes = b;
		ic->bcap = nc;
	}
	/* Offsets for now: the buffer may move; fixed up once all rows are in. */
	ic->rows[ic->n] = *r;
	ic->rows[ic->n].tenant = (const uint8_t *)(uintptr_t)ic->blen;
	memcpy(ic->bytes + ic->blen, r->tenant, r->tlen);
	memcpy(ic->bytes + ic->blen + r->tlen, r->cluster, r->clen);
	memcpy(ic->bytes + ic->blen + r->tlen + r->clen, r->state, r->slen);
	ic->blen += need;
	ic->n++;
	return 0;
}

static void incr_fixup(struct incr_ctx *ic)
{
	for (size_t i = 0; i < ic->n; i++) {
		struct dir_row *r = &ic->rows[i];
		size_t off = (size_t)(uintptr_t)r->tenant;

		r->tenant = ic->bytes + off;
		r->cluster = (const char *)ic->bytes + off + r->tlen;
		r->state = (const char *)ic->bytes + off + r->tlen + r->clen;
	}
}

static bool incremental(struct dirsync *ds)
{
	struct incr_ctx ic = {.ds = ds, .cache = ds->cache};
	int64_t have = dir_version(ds->cur);
	uint64_t t0 = uv_hrtime();
	size_t bad = 0;
	struct dir *d;
	char sql[512];
	bool ok;

	snprintf(sql, sizeof(sql),
	         "COPY (SELECT tenant, cluster, state, version FROM %s.tenants WHERE version > "
	         "%" PRId64 " ORDER BY version) TO STDOUT",
	         ds->my.schema, have);
	ok = copy_rows(ds, sql, incr_row_cb, &ic, &bad);
	if (!ok || ic.n == 0) {
		free(ic.rows);
		free(ic.bytes);
		return ok;
	}
	if (ds->cache)
		fflush(ds->cache);
	if (dir_delta_rows(ds->cur) + ic.n > DELTA_MAX) {
		free(ic.rows);
		free(ic.bytes);
		return full_load(ds);
	}
	incr_fixup(&ic);
	ds->bad_logged = 0;
	d = dir_apply(ds->cur, ic.rows, ic.n, now_ms(), bad_row_cb, ds);
	free(ic.rows);
	free(ic.bytes);
	if (d == NULL) {
		log_error("directory: out of memory applying %zu rows; loading the whole table",
		          ic.n);
		return full_load(ds);
	}
	log_info("directory: applied version %" PRId64 " (%zu rows) in %" PRIu64 " us",
	         dir_version(d), ic.n, (uv_hrtime() - t0) / 1000);
	publish(ds, d, false, 0, (uv_hrtime() - t0) / 1000, false);
	return true;
}

/* ---- the cache file ----------------------------------------------------- */

struct cache_ctx {
	struct dir_builder *b;
	struct incr_ctx ic;
	bool after_mark;
	size_t bad;
	bool oom;
};

static void cache_line_cb(void *arg, const uint8_t *p, size_t n)
{
	struct cache_ctx *cc = arg;
	uint8_t buf[DIR_ROW_BUF];
	struct dir_row r;

	if (p == NULL) {
		cc->bad++;
		return;
	}
	if (n == 2 && p[0] == '\\' && p[1] == '.') {
		cc->after_mark = true;
		return;
	}
	if (dir_parse_row(p, n, buf, sizeof(buf), &r) != PROTO_OK) {
		cc->bad++;
		return;
	}
	if (cc->after_mark ? incr_row_cb(&cc->ic, &r, NULL, 0) < 0 : dir_builder_add(cc->b, &r) < 0)
		cc->oom = true;
}

static bool load_cache(struct dirsync *ds)
{
	struct cache_ctx cc = {0};
	struct dir_lines lines;
	struct dir *d = NULL, *d2;
	uint8_t *buf;
	struct stat sb;
	FILE *f;
	size_t n;

	if (ds->my.cache_file == NULL || (f = fopen(ds->my.cache_file, "r")) == NULL)
		return false;
	buf = malloc(1u << 20);
	cc.b = dir_builder_new((const char *const *)ds->my.clusters, ds->my.nclusters, 0,
	                       bad_row_cb, ds);
	if (buf == NULL || cc.b == NULL || fstat(fileno(f), &sb) == -1)
		goto out;
	dir_lines_init(&lines);
	while (!cc.oom && (n = fread(buf, 1, 1u << 20, f)) > 0)
		dir_lines_feed(&lines, buf, n, cache_line_cb, &cc);
	dir_lines_finish(&lines, cache_line_cb, &cc);
	if (cc.oom || ferror(f))
		goto out;
	d = dir_builder_finish(cc.b, NULL, now_ms());
	cc.b = NULL;
	if (d == NULL)
		goto out;
	if (cc.ic.n > 0) {
		incr_fixup(&cc.ic);
		d2 = dir_apply(d, cc.ic.rows, cc.ic.n, now_ms(), bad_row_cb, ds);
		dir_unref(d);
		d = d2;
		if (d == NULL)
			goto out;
	}
	{
		/* The lease runs from when the cache was written, the last contact it shows. */
		uint64_t age_s = (uint64_t)time(NULL) > (uint64_t)sb.st_mtime
		                         ? (uint64_t)time(NULL) - (uint64_t)sb.st_mtime
		                         : 0;
		uint64_t t = now_ms();

		atomic_store(&ds->hb_ms, age_s * 1000 < t ? t - age_s * 1000 : 0);
		log_warn("directory: unreachable at start; serving from cache_file %s (version "
		         "%" PRId64 ", %zu rows, written %" PRIu64 " s ago)",
		         ds->my.cache_file, dir_version(d), dir_rows(d), age_s);
	}
	publish(ds, d, true, 0, 0, true);
	d = NULL;
out:
	if (cc.bad > 0)
		log_warn("directory: %zu lines of cache_file %s could not be parsed", cc.bad,
		         ds->my.cache_file);
	dir_builder_free(cc.b);
	free(cc.ic.rows);
	free(cc.ic.bytes);
	free(buf);
	fclose(f);
	return ds->ready_sent;
}

/* ---- heartbeat ---------------------------------------------------------- */

/* Appends s (len bytes) as a JSON string. */
static void json_str(char **p, size_t *len, size_t *cap, const uint8_t *s, size_t n)
{
	size_t need = *len + n * 6 + 3;

	if (need > *cap) {
		char *q = realloc(*p, need * 2);

		if (q == NULL)
			return;
		*p = q;
		*cap = need * 2;
	}
	(*p)[(*len)++] = '"';
	for (size_t i = 0; i < n; i++) {
		uint8_t c = s[i];

		if (c == '"' || c == '\\') {
			(*p)[(*len)++] = '\\';
			(*p)[(*len)++] = (char)c;
		} else if (c < 0x20) {
			*len += (size_t)sprintf(*p + *len, "\\u%04x", c);
		} else {
			(*p)[(*len)++] = (char)c;
		}
	}
	(*p)[(*len)++] = '"';
	(*p)[*len] = '\0';
}

/*
 * The routers row: the lowest version every loop reported, and per moving
 * tenant of the current copy the sum of the loops' live sessions.
 */
static bool heartbeat(struct dirsync *ds)
{
	struct dirsync_moving *mv = NULL;
	int64_t version, applied = INT64_MAX;
	size_t nmv = dirsync_moving(ds, &mv, &version), cap = 64, len = 1;
	char *json = malloc(cap), fp[24], ver[24], pid[16], started[24], lease[24], id[300];
	const char *v[8];
	char sql[1024];
	uint64_t sent = now_ms();
	PGresult *res;

	if (json == NULL) {
		free(mv);
		return true;
	}
	json[0] = '{';
	json[1] = '\0';
	uv_mutex_lock(&ds->mu);
	for (size_t w = 0; w < ds->nworkers; w++) {
		if (ds->reports[w].version < applied)
			applied = ds->reports[w].version;
	}
	if (applied == INT64_MAX || applied < 0)
		applied = 0;
	for (size_t i = 0; i < nmv; i++) {
		size_t total = 0;

		for (size_t w = 0; w < ds->nworkers; w++) {
			const struct worker_report *r = &ds->reports[w];

			for (size_t k = 0; k < r->n; k++) {
				if (r->moving[k].len == mv[i].len &&
				    memcmp(r->moving[k].tenant, mv[i].tenant, mv[i].len) == 0)
					total += r->counts[k];
			}
		}
		if (len > 1)
			json[len++] = ',';
		json_str(&json, &len, &cap, mv[i].tenant, mv[i].len);
		if (len + 24 > cap) {
			char *q = realloc(json, cap * 2 + 24);

			if (q == NULL)
				break;
			json = q;
			cap = cap * 2 + 24;
		}
		len += (size_t)sprintf(json + len, ":%zu", total);
	}
	uv_mutex_unlock(&ds->mu);
	free(mv);
	if (len + 2 > cap) {
		char *q = realloc(json, len + 2);

		if (q == NULL) {
			free(json);
			return true;
		}
		json = q;
	}
	json[len++] = '}';
	json[len] = '\0';
	if (ds->my.router_id)
		snprintf(id, sizeof(id), "%s", ds->my.router_id);
	else
		snprintf(id, sizeof(id), "%s:%d", ds->host, (int)getpid());
	snprintf(fp, sizeof(fp), "%016" PRIx64, ds->my.fingerprint);
	snprintf(ver, sizeof(ver), "%" PRId64, applied);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	snprintf(started, sizeof(started), "%" PRIu64, ds->started_at_s);
	snprintf(lease, sizeof(lease), "%" PRIu64, ds->my.lease_ms);
	v[0] = id;
	v[1] = ds->host;
	v[2] = pid;
	v[3] = started;
	v[4] = fp;
	v[5] = ver;
	v[6] = json;
	v[7] = lease;
	snprintf(sql, sizeof(sql),
	         "WITH up AS (INSERT INTO %1$s.routers (id, host, pid, started, fingerprint, "
	         "version, moving, heartbeat) VALUES ($1, $2, $3::int, to_timestamp($4::bigint), "
	         "$5, $6::bigint, $7::jsonb, now()) ON CONFLICT (id) DO UPDATE SET host = "
	         "excluded.host, pid = excluded.pid, started = excluded.started, fingerprint = "
	         "excluded.fingerprint, version = excluded.version, moving = excluded.moving, "
	         "heartbeat = excluded.heartbeat RETURNING 1) SELECT count(*), count(*) FILTER "
	         "(WHERE fingerprint <> $5) FROM %1$s.routers WHERE id <> $1 AND heartbeat > "
	         "now() - $8::bigint * interval '1 millisecond'",
	         ds->my.schema);
	res = exec_params(ds, sql, 8, v, PGRES_TUPLES_OK, "heartbeat");
	free(json);
	if (res == NULL)
		return false;
	uv_mutex_lock(&ds->mu);
	atomic_store(&ds->hb_ms, sent);
	if (PQntuples(res) == 1) {
		size_t others = (size_t)strtoull(PQgetvalue(res, 0, 0), NULL, 10);
		size_t bad = (size_t)strtoull(PQgetvalue(res, 0, 1), NULL, 10);

		if (bad > 0 && bad != ds->st.mismatched)
			log_warn("directory: %zu other routers have another configuration "
			         "fingerprint "
			         "(clusters, weights, vnodes or pins differ); tenant-router move "
			         "refuses "
			         "to run until they agree",
			         bad);
		ds->st.routers = others + 1;
		ds->st.mismatched = bad;
	}
	uv_mutex_unlock(&ds->mu);
	PQclear(res);
	return true;
}

/* ---- the thread ----------------------------------------------------------- */

static void update_stale(struct dirsync *ds)
{
	bool stale = !dirsync_sure(ds), was = ds->stale;

	if (stale && !was) {
		log_error("directory: no contact for more than directory_lease (%" PRIu64
		          " ms): refusing tenant sessions until it is back (directory_stale = "
		          "refuse)",
		          ds->my.lease_ms);
		ds->stale = true;
	} else if (!stale && was) {
		log_info("directory: contact is back (or directory_stale = serve): routing again");
		ds->stale = false;
	}
}

static void take_notifies(struct dirsync *ds, bool *incr, bool *full)
{
	PGnotify *nf;

	while ((nf = PQnotifies(ds->conn)) != NULL) {
		if (strcmp(nf->extra, "full") == 0)
			*full = true;
		else
			*incr = true;
		PQfreemem(nf);
	}
}

static void sync_thread(void *arg)
{
	struct dirsync *ds = arg;
	uint64_t next_hb = 0, next_refresh = 0;
	bool tried_cache = false;

	while (!atomic_load(&ds->stopping)) {
		bool reconf, need_incr = false, need_full = false;
		uint64_t t, until;
		int w;

		uv_mutex_lock(&ds->mu);
		reconf = ds->reconfigured;
		ds->reconfigured = false;
		if (reconf || ds->my.conninfo == NULL) {
			struct settings next;

			if (settings_copy(&next, &ds->set) < 0) {
				reconf = false;
			} else {
				/* Another database or channel: connect (and LISTEN) again. */
				if (ds->conn && ds->my.conninfo &&
				    (strcmp(next.conninfo, ds->my.conninfo) != 0 ||
				     strcmp(next.schema, ds->my.schema) != 0)) {
					PQfinish(ds->conn);
					ds->conn = NULL;
				}
				settings_free(&ds->my);
				ds->my = next;
			}
		}
		uv_mutex_unlock(&ds->mu);
		if (ds->my.conninfo == NULL) {
			nap(ds, RETRY_MS);
			continue;
		}
		update_stale(ds);
		if (ds->conn == NULL) {
			if (!do_connect(ds) || !full_load(ds) || !heartbeat(ds)) {
				if (ds->conn) {
					PQfinish(ds->conn);
					ds->conn = NULL;
				}
				if (!ds->ready_sent && !tried_cache) {
					tried_cache = true;
					load_cache(ds);
				}
				update_stale(ds);
				nap(ds, RETRY_MS);
				continue;
			}
			update_stale(ds);
			next_hb = now_ms() + ds->my.heartbeat_ms;
			next_refresh = now_ms() + ds->my.refresh_ms;
			continue;
		}
		if (reconf)
			need_full = true;
		/* Notifications read along with the last statement wait in libpq, not on the
		 * socket. */
		take_notifies(ds, &need_incr, &need_full);
		t = now_ms();
		until = next_hb < next_refresh ? next_hb : next_refresh;
		if (!need_full && !need_incr && until > t) {
			w = wait_sock(ds, PQsocket(ds->conn), false, until - t);
			if (w < 0)
				break;
			if (w > 0 && !PQconsumeInput(ds->conn)) {
				drop_conn(ds, "reading notifications");
				continue;
			}
			take_notifies(ds, &need_incr, &need_full);
		}
		t = now_ms();
		if (t >= next_refresh)
			need_full = true;
		if (need_full) {
			if (!full_load(ds))
				continue;
			next_refresh = now_ms() + ds->my.refresh_ms;
		} else if (need_incr && !incremental(ds)) {
			continue;
		}
		if (need_incr || need_full) {
			/*
			 * The fence reads the version every loop has used: they report it
			 * within HB_AFTER_CHANGE_MS (two of their ticks), so the heartbeat
			 * goes then rather than a whole interval later.
			 */
			if (next_hb > now_ms() + HB_AFTER_CHANGE_MS)
				next_hb = now_ms() + HB_AFTER_CHANGE_MS;
		}
		if (now_ms() >= next_hb) {
			if (!heartbeat(ds))
				continue;
			next_hb = now_ms() + ds->my.heartbeat_ms;
		}
		update_stale(ds);
	}
	if (ds->conn) {
		PQfinish(ds->conn);
		ds->conn = NULL;
	}
	if (ds->cache) {
		fclose(ds->cache);
		ds->cache = NULL;
	}
	settings_free(&ds->my);
}

static void ready_close_cb(uv_handle_t *h)
{
}

static void ready_cb(uv_async_t *a)
{
	struct dirsync *ds = a->data;

	if (ds->ready_fn) {
		dirsync_ready_fn fn = ds->ready_fn;

		ds->ready_fn = NULL;
		fn(ds->ready_arg);
	}
}

int dirsync_start(struct dirsync *ds, uv_loop_t *loop, dirsync_ready_fn ready, void *arg)
{
	int rc = uv_async_init(loop, &ds->ready, ready_cb);

	if (rc < 0)
		return rc;
	ds->ready.data = ds;
	ds->ready_fn = ready;
	ds->ready_arg = arg;
	rc = uv_thread_create(&ds->thread, sync_thread, ds);
	if (rc < 0) {
		uv_close((uv_handle_t *)&ds->ready, ready_close_cb);
		return rc;
	}
	ds->started = true;
	return 0;
}

void dirsync_stop(struct dirsync *ds)
{
	if (ds == NULL || !ds->started)
		return;
	atomic_store(&ds->stopping, true);
	wake_thread(ds);
	uv_thread_join(&ds->thread);
	ds->started = false;
	uv_close((uv_handle_t *)&ds->ready, ready_close_cb);
}
