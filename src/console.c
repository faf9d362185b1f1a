/*
 * console.c - the admin console (see console.h): runs the statements
 * admin.c parses, reading what the rest of the router publishes for any
 * thread (the loop's config snapshot, the health map, the stats counters,
 * the roster) and answering over the wire protocol.
 *
 * What it does not do: change the daemon itself. RELOAD, SHUTDOWN, PIN and
 * UNPIN are requests to the main loop (rt->admin_submit); KILL only marks
 * sessions in the roster, and each loop ends its own. The console speaks
 * the simple query protocol only (as PgBouncer's does): an extended-protocol
 * message gets one ERROR, the rest of that batch is skipped up to Sync.
 */
#include "console.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "admin.h"
#include "buf.h"
#include "config.h"
#include "directory.h"
#include "dirsync.h"
#include "health.h"
#include "log.h"
#include "pins.h"
#include "proto.h"
#include "ring.h"
#include "route.h"
#include "router.h"
#include "stats.h"

struct console {
	struct router *rt; /* borrowed */
	struct console_io io;
	char user[64];
	struct admin_result out;
	struct admin_req *req; /* in flight on the main loop, or NULL */
	enum admin_cmd req_cmd;
	uint8_t *q; /* owned: messages that came while req was in flight, framed */
	size_t qlen, qoff, qcap;
	bool skip_to_sync; /* an extended-protocol batch was refused */
	bool closed;
};

enum roster_hold tenant_held(const struct router *rt, struct roster_entry *e, const char *tenant,
                             size_t len)
{
	/* One line per reason a tenant waits: pauses and pin changes are in the roster. */
	enum roster_hold h = roster_tenant_held(e, tenant, len, rt->cfg->generation);
	struct route_place pl;

	/* A tenant directory row in state moving: `tenant-router move` is under way. */
	if (h == ROSTER_GO && rt->dir && dirsync_place(rt->dir, rt->cfg, tenant, len, &pl) &&
	    pl.state == DIR_MOVING)
		return ROSTER_MOVING;
	return h;
}

struct console *console_new(struct router *rt, const char *user, const struct console_io *io)
{
	struct console *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->rt = rt;
	c->io = *io;
	snprintf(c->user, sizeof(c->user), "%s", user);
	admin_result_init(&c->out);
	return c;
}

void console_free(struct console *c)
{
	if (c == NULL)
		return;
	if (c->req)
		c->req->cancelled = true; /* main.c frees it when it comes back */
	admin_result_free(&c->out);
	free(c->q);
	free(c);
}

/* Sends what was built; a reply too big for the buffer becomes an error. */
static void flush(struct console *c)
{
	if (c->out.failed) {
		admin_result_reset(&c->out);
		admin_result_error(&c->out, "54000", "the answer is too large to send",
		                   "Ask for less, or use /metrics for large listings.");
		admin_result_ready(&c->out);
	}
	if (c->out.len && !c->closed && !c->io.send(c->io.arg, c->out.p, c->out.len))
		c->closed = true;
	admin_result_reset(&c->out);
}

static void error_ready(struct console *c, const char *sqlstate, const char *message,
                        const char *hint)
{
	admin_result_error(&c->out, sqlstate, message, hint);
	admin_result_ready(&c->out);
}

static void errorf(struct console *c, const char *sqlstate, const char *hint, const char *fmt, ...)
        PRINTF_LIKE(4, 5);

static void errorf(struct console *c, const char *sqlstate, const char *hint, const char *fmt, ...)
{
	char msg[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	error_ready(c, sqlstate, msg, hint);
}

static void noticef(struct console *c, const char *fmt, ...) PRINTF_LIKE(2, 3);

static void noticef(struct console *c, const char *fmt, ...)
{
	char msg[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	admin_result_notice(&c->out, msg);
}

static void done_ok(struct console *c, const char *tag)
{
	admin_result_complete(&c->out, tag);
	admin_result_ready(&c->out);
}

#define COLUMNS(r, ...)                                              \
	do {                                                         \
		static const char *const cols_[] = {__VA_ARGS__};    \
		admin_result_columns((r), cols_, ARRAY_SIZE(cols_)); \
	} while (0)

static const char *u64s(char *buf, size_t cap, uint64_t v)
{
	snprintf(buf, cap, "%llu", (unsigned long long)v);
	return buf;
}

static const char *cluster_state_name(enum health_cluster s)
{
	switch (s) {
	case HEALTH_CLUSTER_UP:
		return "up";
	case HEALTH_CLUSTER_DEGRADED:
		return "degraded";
	case HEALTH_CLUSTER_DOWN:
		return "down";
	}
	return "down";
}

static void writer_text(struct router *rt, const char *cluster, char *out, size_t cap)
{
	struct health_target t;
	char why[256];

	if (health_writer(rt->health, cluster, &t, why, sizeof(why)))
		snprintf(out, cap, strchr(t.host, ':') ? "[%s]:%u" : "%s:%u", t.host, t.port);
	else
		out[0] = '\0';
}

static void show_clusters(struct console *c)
{
	const struct config *cfg = c->rt->cfg;

	COLUMNS(&c->out, "cluster", "state", "writer", "sessions", "routed_pin", "routed_ring",
	        "refusals", "pins", "ring_share", "reason");
	for (size_t i = 0; i < cfg->nclusters; i++) {
		const struct cluster_cfg *cl = &cfg->clusters[i];
		struct stats_cluster_view v = {0};
		char why[256], writer[300], n1[24], n2[24], n3[24], n4[24], n5[24], share[24];
		enum health_cluster st =
		        health_cluster_state(c->rt->health, cl->name, why, sizeof(why));
		int64_t sessions = 0;
		const char *row[10];

		if (stats_cluster_read(cl->name, &v)) {
			for (size_t k = 0; k < STATS_MAX_STATES; k++)
				sessions += v.sessions[k];
		}
		writer_text(c->rt, cl->name, writer, sizeof(writer));
		snprintf(share, sizeof(share), "%.4f", cl->ring_share);
		row[0] = cl->name;
		row[1] = cluster_state_name(st);
		row[2] = writer;
		row[3] = u64s(n1, sizeof(n1), sessions > 0 ? (uint64_t)sessions : 0);
		row[4] = u64s(n2, sizeof(n2), v.routed_pin);
		row[5] = u64s(n3, sizeof(n3), v.routed_ring);
		row[6] = u64s(n4, sizeof(n4), v.refusals);
		row[7] = u64s(n5, sizeof(n5), cl->npins);
		row[8] = share;
		row[9] = why;
		admin_result_row(&c->out, row);
	}
	done_ok(c, "SHOW");
}

static void host_row_cb(void *arg, const struct health_host_info *hi)
{
	struct console *c = arg;
	char port[8], fails[16], ms[32], tl[16];
	const char *role, *health;
	const char *row[11];

	if (hi->state == HEALTH_UP)
		role = hi->writer ? "writer" : hi->in_recovery ? "standby" : "primary";
	else
		role = "";
	health = hi->state == HEALTH_UP ? "up" : hi->state == HEALTH_DOWN ? "down" : "unknown";
	snprintf(port, sizeof(port), "%u", hi->port);
	snprintf(fails, sizeof(fails), "%u", hi->fails);
	if (hi->last_check_ns)
		snprintf(ms, sizeof(ms), "%.3f", (double)hi->last_check_ns / 1e6);
	else
		ms[0] = '\0';
	snprintf(tl, sizeof(tl), "%u", hi->timeline);
	row[0] = hi->cluster;
	row[1] = hi->host;
	row[2] = port;
	row[3] = role;
	row[4] = health;
	row[5] = hi->state == HEALTH_UP ? (hi->in_recovery ? "yes" : "no") : "";
	row[6] = ms;
	row[7] = fails;
	row[8] = hi->timeline ? tl : "";
	row[9] = hi->why ? hi->why : "";
	row[10] = hi->history;
	admin_result_row(&c->out, row);
}

static void show_hosts(struct console *c)
{
	COLUMNS(&c->out, "cluster", "host", "port", "role", "health", "in_recovery", "check_ms",
	        "failures", "timeline", "last_error", "history");
	health_hosts(c->rt->health, host_row_cb, c);
	done_ok(c, "SHOW");
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void show_clients(struct console *c)
{
	struct roster_row *rows;
	long n = roster_snapshot(&rows);
	int64_t now = now_ms();

	if (n < 0) {
		error_ready(c, "53200", "out of memory", "Retry.");
		return;
	}
	COLUMNS(&c->out, "id", "thread", "address", "tenant", "cluster", "host", "state", "age_s",
	        "bytes_in", "bytes_out", "tls");
	for (long i = 0; i < n; i++) {
		const struct roster_row *r = &rows[i];
		char id[24], thr[12], age[32], bin[24], bout[24];
		const char *row[11];

		snprintf(thr, sizeof(thr), "%u", r->loop);
		snprintf(age, sizeof(age), "%.1f",
		         r->started_ms && now > r->started_ms ? (double)(now - r->started_ms) / 1e3
		                                              : 0.0);
		row[0] = u64s(id, sizeof(id), r->id);
		row[1] = thr;
		row[2] = r->peer;
		row[3] = r->admin ? "" : r->tenant;
		row[4] = r->admin ? "(console)" : r->cluster;
		row[5] = r->host;
		row[6] = r->waiting ? "waiting" : r->state ? r->state : "";
		row[7] = age;
		row[8] = u64s(bin, sizeof(bin), r->bytes_in);
		row[9] = u64s(bout, sizeof(bout), r->bytes_out);
		row[10] = r->tls ? "yes" : "no";
		admin_result_row(&c->out, row);
	}
	free(rows);
	done_ok(c, "SHOW");
}

static int row_by_tenant(const void *a, const void *b)
{
	const struct roster_row *x = a, *y = b;
	size_t n = x->tlen < y->tlen ? x->tlen : y->tlen;
	int d = memcmp(x->tenant, y->tenant, n);

	if (d)
		return d;
	if (x->tlen != y->tlen)
		return x->tlen < y->tlen ? -1 : 1;
	return strcmp(x->cluster, y->cluster);
}

static bool is_held(const struct roster_held_row *h, size_t nh, const char *t, size_t len,
                    bool *paused, bool *moving)
{
	for (size_t i = 0; i < nh; i++) {
		if (h[i].tlen == len && memcmp(h[i].tenant, t, len) == 0) {
			*paused = h[i].paused;
			*moving = h[i].moving;
			return true;
		}
	}
	*paused = *moving = false;
	return false;
}

static void tenant_row(struct console *c, const char *tenant, const char *cluster,
                       const char *source, size_t live, size_t waiting, bool paused, bool moving)
{
	char n1[24], n2[24];
	const char *row[6];

	row[0] = tenant;
	row[1] = cluster;
	row[2] = source;
	row[3] = u64s(n1, sizeof(n1), live);
	row[4] = u64s(n2, sizeof(n2), waiting);
	row[5] = paused ? "paused" : moving ? "moving" : "";
	admin_result_row(&c->out, row);
}

static void show_tenants(struct console *c)
{
	struct roster_held_row held[64];
	struct roster_row *rows;
	long n = roster_snapshot(&rows), k = 0;
	size_t nh = roster_held_list(held, ARRAY_SIZE(held));

	if (n < 0) {
		error_ready(c, "53200", "out of memory", "Retry.");
		return;
	}
	if (nh > ARRAY_SIZE(held))
		nh = ARRAY_SIZE(held);
	/* Sessions with a tenant, grouped by tenant and cluster. */
	for (long i = 0; i < n; i++) {
		if (rows[i].tlen && !rows[i].admin)
			rows[k++] = rows[i];
	}
	qsort(rows, (size_t)k, sizeof(*rows), row_by_tenant);
	COLUMNS(&c->out, "tenant", "cluster", "source", "sessions", "waiting", "held");
	for (long i = 0; i < k;) {
		long j = i;
		size_t live = 0, waiting = 0;
		bool paused, moving;

		while (j < k && row_by_tenant(&rows[i], &rows[j]) == 0) {
			if (rows[j].waiting)
				waiting++;
			else
				live++;
			j++;
		}
		is_held(held, nh, rows[i].tenant, rows[i].tlen, &paused, &moving);
		tenant_row(c, rows[i].tenant, rows[i].cluster, roster_source_name(rows[i].source),
		           live, waiting, paused, moving);
		i = j;
	}
	/* Paused tenants without a session yet. */
	for (size_t h = 0; h < nh; h++) {
		bool seen = false;

		for (long i = 0; i < k && !seen; i++)
			seen = rows[i].tlen == held[h].tlen &&
			       memcmp(rows[i].tenant, held[h].tenant, held[h].tlen) == 0;
		if (!seen && held[h].paused)
			tenant_row(c, held[h].tenant, "", "", 0, 0, true, held[h].moving);
	}
	free(rows);
	done_ok(c, "SHOW");
}

static void stat_row(struct console *c, const char *name, uint64_t v, double secs, bool rate)
{
	char n1[24], r[32];
	const char *row[3];

	snprintf(r, sizeof(r), "%.3f", secs > 0 ? (double)v / secs : 0.0);
	row[0] = name;
	row[1] = u64s(n1, sizeof(n1), v);
	row[2] = rate ? r : "";
	admin_result_row(&c->out, row);
}

static void show_stats(struct console *c)
{
	struct stats_cluster_view v[64];
	struct stats_count rc[STATS_MAX_SQLSTATES];
	struct stats_hist_view login;
	size_t nv = stats_clusters(v, ARRAY_SIZE(v)), nr = stats_refusal_counts(rc, ARRAY_SIZE(rc));
	uint64_t pin = 0, ring = 0, refused = 0;
	double up = (double)(uv_hrtime() - c->rt->started_ns) / 1e9;
	char avg[32];
	const char *row[3];

	for (size_t i = 0; i < nv; i++) {
		pin += v[i].routed_pin;
		ring += v[i].routed_ring;
	}
	for (size_t i = 0; i < nr; i++)
		refused += rc[i].n;
	stats_hist_read(STATS_LOGIN, &login);
	COLUMNS(&c->out, "stat", "total", "per_second");
	stat_row(c, "uptime_seconds", (uint64_t)up, 0, false);
	stat_row(c, "sessions_now", atomic_load(c->rt->live), 0, false);
	stat_row(c, "routed", pin + ring, up, true);
	stat_row(c, "routed_pin", pin, up, true);
	stat_row(c, "routed_ring", ring, up, true);
	stat_row(c, "refusals", refused, up, true);
	stat_row(c, "logins", login.count, up, true);
	stat_row(c, "bytes_from_clients", stats_bytes_total(STATS_FROM_CLIENT), up, true);
	stat_row(c, "bytes_to_clients", stats_bytes_total(STATS_TO_CLIENT), up, true);
	stat_row(c, "bytes_from_servers", stats_bytes_total(STATS_FROM_SERVER), up, true);
	stat_row(c, "bytes_to_servers", stats_bytes_total(STATS_TO_SERVER), up, true);
	stat_row(c, "reloads_ok", stats_reloads(true), 0, false);
	stat_row(c, "reloads_failed", stats_reloads(false), 0, false);
	stat_row(c, "pins", pins_count(c->rt->cfg->pins), 0, false);
	snprintf(avg, sizeof(avg), "%.3f",
	         login.count ? login.sum * 1e3 / (double)login.count : 0.0);
	row[0] = "login_avg_ms";
	row[1] = avg;
	row[2] = "";
	admin_result_row(&c->out, row);
	done_ok(c, "SHOW");
}

static void config_row_cb(void *arg, const char *key, const char *value, const char *defval,
                          bool reloadable)
{
	struct console *c = arg;
	const char *row[4] = {key, value, defval, reloadable ? "yes" : "no"};

	admin_result_row(&c->out, row);
}

static void show_config(struct console *c)
{
	COLUMNS(&c->out, "key", "value", "default", "reloadable");
	config_show(c->rt->cfg, config_row_cb, c);
	done_ok(c, "SHOW");
}

static void show_version(struct console *c)
{
	const char *row[1] = {"tenant-router " TR_VERSION};

	COLUMNS(&c->out, "version");
	admin_result_row(&c->out, row);
	done_ok(c, "SHOW");
}

static void show_help(struct console *c)
{
	size_t n;
	const struct admin_help *h = admin_help(&n);

	COLUMNS(&c->out, "command", "description");
	for (size_t i = 0; i < n; i++) {
		const char *row[2] = {h[i].syntax, h[i].what};

		admin_result_row(&c->out, row);
	}
	done_ok(c, "SHOW");
}

static void route(struct console *c, const struct admin_stmt *st)
{
	const struct config *cfg = c->rt->cfg;
	struct roster_held_row held[64];
	size_t nh = roster_held_list(held, ARRAY_SIZE(held));
	bool paused, moving;
	struct route_place pl;
	bool sure = dirsync_place(c->rt->dir, cfg, st->tenant, st->tlen, &pl);
	const char *name = pl.cluster >= 0 ? cfg->clusters[pl.cluster].name : "";
	char why[256], writer[300];
	const char *row[5];

	if (nh > ARRAY_SIZE(held))
		nh = ARRAY_SIZE(held);
	is_held(held, nh, st->tenant, st->tlen, &paused, &moving);
	writer_text(c->rt, name, writer, sizeof(writer));
	row[0] = name;
	row[1] = pl.source == ROUTE_DIRECTORY ? "directory"
	         : pl.source == ROUTE_PIN     ? "pin"
	                                      : "ring";
	row[2] = writer;
	row[3] = cluster_state_name(health_cluster_state(c->rt->health, name, why, sizeof(why)));
	row[4] = paused                                      ? "paused"
	         : moving                                    ? "moving"
	         : !sure                                     ? "directory out of reach"
	         : pl.state == DIR_MOVING                    ? "moving"
	         : pl.state == DIR_BLOCKED                   ? "blocked"
	         : pl.state == DIR_INVALID || pl.cluster < 0 ? "invalid directory row"
	                                                     : "";
	COLUMNS(&c->out, "cluster", "source", "writer", "state", "held");
	admin_result_row(&c->out, row);
	done_ok(c, "ROUTE");
}

static void req_done(struct admin_req *r);

/* Hands a command to the main loop; the answer comes in req_done. */
static void submit(struct console *c, const struct admin_stmt *st, enum admin_req_kind kind)
{
	struct admin_req *r = calloc(1, sizeof(*r));

	if (r == NULL) {
		error_ready(c, "53200", "out of memory", "Retry.");
		return;
	}
	r->kind = kind;
	r->from = c->rt;
	memcpy(r->tenant, st->tenant, st->tlen + 1);
	r->tlen = st->tlen;
	if (st->cmd == ADMIN_PIN)
		snprintf(r->cluster, sizeof(r->cluster), "%s", st->cluster);
	r->force = st->force;
	r->done = req_done;
	r->arg = c;
	c->req = r;
	c->req_cmd = st->cmd;
	c->rt->admin_submit(r);
}

static void run(struct console *c, const char *sql, size_t len)
{
	struct admin_stmt st;
	struct admin_error e;
	int rc;

	if (!admin_parse(sql, len, &st, &e)) {
		error_ready(c, "42601", e.message, e.hint);
		return;
	}
	switch (st.cmd) {
	case ADMIN_EMPTY:
		admin_result_empty_query(&c->out);
		admin_result_ready(&c->out);
		break;
	case ADMIN_SHOW_CLUSTERS:
		show_clusters(c);
		break;
	case ADMIN_SHOW_HOSTS:
		show_hosts(c);
		break;
	case ADMIN_SHOW_CLIENTS:
		show_clients(c);
		break;
	case ADMIN_SHOW_TENANTS:
		show_tenants(c);
		break;
	case ADMIN_SHOW_STATS:
		show_stats(c);
		break;
	case ADMIN_SHOW_CONFIG:
		show_config(c);
		break;
	case ADMIN_SHOW_VERSION:
		show_version(c);
		break;
	case ADMIN_SHOW_HELP:
		show_help(c);
		break;
	case ADMIN_ROUTE:
		route(c, &st);
		break;
	case ADMIN_PAUSE:
		rc = roster_pause(st.tenant, st.tlen);
		if (rc == -ENOSPC) {
			errorf(c, "53000", "RESUME other tenants first.",
			       "too many tenants are paused (at most %d)", ROSTER_MAX_HELD);
			break;
		}
		if (rc == -EALREADY)
			noticef(c, "tenant \"%s\" was paused already", st.tenant);
		else
			log_info("console user=%s: paused tenant=%s", c->user, st.tenant);
		done_ok(c, "PAUSE");
		break;
	case ADMIN_RESUME:
		if (roster_resume(st.tenant, st.tlen) < 0) {
			errorf(c, "42704", "SHOW TENANTS shows which tenants are paused.",
			       "tenant \"%s\" is not paused", st.tenant);
			break;
		}
		log_info("console user=%s: resumed tenant=%s", c->user, st.tenant);
		done_ok(c, "RESUME");
		break;
	case ADMIN_KILL_TENANT: {
		size_t n = roster_kill_tenant(st.tenant, st.tlen);

		log_info("console user=%s: kill tenant=%s sessions=%zu", c->user, st.tenant, n);
		noticef(c, "%zu session%s of tenant \"%s\" %s", n, n == 1 ? "" : "s", st.tenant,
		        n ? "are being closed" : "found");
		done_ok(c, "KILL");
		break;
	}
	case ADMIN_KILL_CLIENT:
		if (!roster_kill_client(st.id)) {
			errorf(c, "42704", "SHOW CLIENTS lists the sessions and their ids.",
			       "no client with id %llu", (unsigned long long)st.id);
			break;
		}
		log_info("console user=%s: kill client=%llu", c->user, (unsigned long long)st.id);
		done_ok(c, "KILL");
		break;
	case ADMIN_RELOAD:
		submit(c, &st, ADMIN_REQ_RELOAD);
		break;
	case ADMIN_SHUTDOWN:
		submit(c, &st, ADMIN_REQ_SHUTDOWN);
		break;
	case ADMIN_PIN:
	case ADMIN_UNPIN:
		log_info("console user=%s: %s tenant=%s%s%s%s", c->user,
		         st.cmd == ADMIN_PIN ? "pin" : "unpin", st.tenant,
		         st.cmd == ADMIN_PIN ? " cluster=" : "",
		         st.cmd == ADMIN_PIN ? st.cluster : "", st.force ? " force" : "");
		submit(c, &st, ADMIN_REQ_PIN);
		break;
	}
}

/* One whole message, when no command is in flight. */
static void handle(struct console *c, uint8_t type, const uint8_t *body, size_t len)
{
	switch (type) {
	case 'Q':
		c->skip_to_sync = false;
		if (len == 0 || body[len - 1] != '\0' || memchr(body, '\0', len - 1)) {
			admin_result_error(&c->out, "08P01", "malformed Query message",
			                   "Use a PostgreSQL client.");
			flush(c);
			c->closed = true;
			c->io.close(c->io.arg);
			return;
		}
		run(c, (const char *)body, len - 1);
		break;
	case 'X':
		c->closed = true;
		c->io.close(c->io.arg);
		return;
	case 'S': /* Sync ends a refused batch */
		c->skip_to_sync = false;
		admin_result_ready(&c->out);
		break;
	case 'H': /* Flush: nothing is pending */
		break;
	case 'P':
	case 'B':
	case 'D':
	case 'E':
	case 'C':
	case 'F':
		if (!c->skip_to_sync)
			admin_result_error(
			        &c->out, "0A000",
			        "the admin console speaks the simple query protocol only",
			        "Use psql, or psql -c; from a driver, send the command as a plain "
			        "query (psycopg: ClientCursor; JDBC: preferQueryMode=simple).");
		c->skip_to_sync = true;
		break;
	default:
		admin_result_error(&c->out, "08P01", "unexpected message on the admin console",
		                   "Use a PostgreSQL client.");
		flush(c);
		c->closed = true;
		c->io.close(c->io.arg);
		return;
	}
	flush(c);
}

/* Runs queued messages until one goes to the main loop or none is left. */
static void drain_queue(struct console *c)
{
	while (!c->closed && c->req == NULL && c->qoff < c->qlen) {
		uint8_t *m = c->q + c->qoff;
		size_t len = proto_get_u32(m + 1) - 4;

		c->qoff += 5 + len;
		handle(c, m[0], m + 5, len);
	}
	if (c->qoff == c->qlen)
		c->qoff = c->qlen = 0;
}

static void req_done(struct admin_req *r)
{
	struct console *c = r->arg;

	bool ends = r->ok && c->req_cmd == ADMIN_SHUTDOWN;

	c->req = NULL;
	if (r->notice[0])
		admin_result_notice(&c->out, r->notice);
	if (ends)
		admin_result_notice(&c->out, "the router is draining; this console session ends");
	if (r->ok)
		done_ok(c, admin_cmd_tag(c->req_cmd));
	else
		error_ready(c, r->sqlstate, r->message, r->hint);
	free(r);
	flush(c);
	/* A console would hold the drain up to shutdown_timeout: the one that asked ends. */
	if (ends && !c->closed) {
		c->closed = true;
		c->io.close(c->io.arg);
		return;
	}
	drain_queue(c);
}

static bool enqueue(struct console *c, uint8_t type, const uint8_t *body, size_t len)
{
	size_t need = 5 + len;

	if (len > CONSOLE_QUEUE_MAX || c->qlen + need > CONSOLE_QUEUE_MAX)
		return false;
	if (c->qlen + need > c->qcap) {
		uint8_t *q = buf_grow(c->q, &c->qcap, c->qlen + need, 1024, CONSOLE_QUEUE_MAX);

		if (q == NULL)
			return false;
		c->q = q;
	}
	proto_msg_header(c->q + c->qlen, type, len);
	if (len)
		memcpy(c->q + c->qlen + 5, body, len);
	c->qlen += need;
	return true;
}

void console_message(struct console *c, uint8_t type, const uint8_t *body, size_t len)
{
	if (c->closed)
		return;
	if (c->req || c->qlen) {
		if (!enqueue(c, type, body, len)) {
			admin_result_error(&c->out, "54000",
			                   "too much sent while a command is running",
			                   "Wait for each answer before sending more.");
			flush(c);
			c->closed = true;
			c->io.close(c->io.arg);
		}
		return;
	}
	handle(c, type, body, len);
}
