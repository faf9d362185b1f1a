/*
 * health.c - per-host libpq health checkers on the event loop.
 *
 * A checker cycles IDLE -> RESOLVE -> CONNECT -> QUERY -> IDLE. Name
 * resolution runs on libuv's thread pool and libpq gets a numeric hostaddr,
 * so libpq never blocks the loop on DNS. One timer per checker does double
 * duty: while a check runs it is the check's timeout, otherwise it fires
 * the next check. While idle we watch the kept connection for readability,
 * so a server that goes away is noticed at once rather than at the next
 * tick; such a loss counts as one failure and the next check starts at once.
 *
 * libpq may replace its socket during PQconnectPoll, so after every step we
 * stop and restart polling on whatever PQsocket() is now, and we always stop
 * polling before libpq closes a socket (PQfinish).
 *
 * The probe reads, in one round trip, whether the host is in recovery, the
 * timeline a primary writes on, and the system identifier. A cluster's
 * writer is chosen from those alone, never from host order (choose_writer):
 * a primary behind the highest timeline seen in its database is an old
 * primary restarted after a promotion and is never chosen, and two primaries
 * that nothing ranks leave the cluster without a writer until one goes.
 * With guard_server_check on, the same probe reads which setting the
 * tenant_guard server library guards; a host without it (or guarding another
 * name than tenant_key) stays up but is never chosen, so sessions get 57P03
 * rather than a server that lets SQL change the tenant.
 *
 * This module logs transitions (down with reason, up again, writer choice),
 * not each probe.
 */
#include "health.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpq-fe.h>
#include <uv.h>

#include "auth.h"
#include "citus.h"
#include "config.h"
#include "log.h"
#include "proto.h"
#include "stats.h"
#include "tls.h"

enum phase { PH_IDLE, PH_RESOLVE, PH_CONNECT, PH_QUERY, PH_AUTH };

/*
 * One auth_query request. Made and freed on the requester's loop; the
 * health loop fills the answer and wakes the requester with done, and
 * never touches it after that.
 */
struct health_auth {
	uv_async_t done; /* on the requester's loop */
	struct health_auth *next;
	health_auth_fn fn;
	void *arg;
	bool cancelled; /* requester's loop only */
	char cluster[64];
	char user[AUTH_MAX_USER];
	char *query; /* owned */
	/* The answer. */
	bool ok;
	char secret[AUTH_MAX_SECRET];
	char why[256];
};

/* What a session tells a client it answers itself, as the server would. */
static const char *const reported_params[] = {
	"server_version",  "server_encoding",		  "client_encoding", "DateStyle",
	"IntervalStyle",   "TimeZone",			  "integer_datetimes",
	"standard_conforming_strings", "default_transaction_read_only", "in_hot_standby",
};
#define PARAMS_CAP 1024

struct cpoll {
	uv_poll_t handle;
	int fd;
};

struct checker {
	struct health *h;  /* borrowed: owner */
	char *cluster;	   /* owned */
	char *host;	   /* owned */
	uint16_t port;
	enum health_state state;
	bool in_recovery;
	uint32_t tli;	 /* the timeline a primary writes on (0: a standby) */
	uint64_t sysid;	 /* pg_control_system().system_identifier */
	uint32_t behind; /* a stale primary: the higher timeline seen in its database; else 0 */
	bool got_result;
	bool result_recovery;
	uint32_t result_tli;
	uint64_t result_sysid;
	bool result_citus; /* the probe found Citus's worker check function */
	bool citus;
	/*
	 * Citus: the watch of this host's workers, while it is its cluster's
	 * writer, and what its last check found (under the lock).
	 */
	struct citus_watch *watch; /* owned until its close callback */
	bool worker_bad;
	char worker_why[256];
	char worker_failed[256]; /* the last CITUS_CHECK_FAILED reason logged ("": none) */
	/* guard_server_check: why the last good check found the host unguarded ("": it is not). */
	char result_unguarded[160];
	char unguarded[160]; /* under the lock */
	/*
	 * The highest timeline this host has shown as a primary of database
	 * seen_sysid, kept while it is down and across reloads: it is what
	 * makes an old primary stale after the promoted host goes away too.
	 */
	uint64_t seen_sysid;
	uint32_t seen_tli;
	uint32_t fails;
	char why[256];
	bool have_addr;
	struct sockaddr_storage addr;
	char addrstr[INET6_ADDRSTRLEN];
	PGconn *conn;	    /* owned */
	struct cpoll *poll; /* owned until its close callback */
	enum phase phase;
	uint64_t started;
	/* For metrics: when the running check began (0: none), and how the last ones went. */
	uint64_t check_t0_ns;
	uint64_t last_check_ns;		/* under the lock */
	char history[HEALTH_HISTORY];	/* '+' / '-', a ring; under the lock */
	unsigned nhistory;		/* results ever recorded */
	uv_timer_t timer;
	uv_getaddrinfo_t gai;
	bool resolving;	  /* gai is in flight (it cannot be abandoned) */
	bool timer_closed;
	bool first_done;
	bool stopping;
	bool keep; /* mark for health_apply */
	/* libpq TLS settings, from the cluster's server_tls_* (owned; may be NULL). */
	char *sslmode, *sslrootcert, *sslcert, *sslkey;
	char *sslmin, *sslmax;
	/* ParameterStatus messages from the last good check (under the lock). */
	uint8_t params[PARAMS_CAP];
	size_t paramslen;
	/* auth_query requests waiting for this connection, and the running one. */
	struct health_auth *auth_q, *auth_cur;
	struct checker *next;
};

struct cluster_map {
	char *name; /* owned */
	size_t n;
	struct checker *hosts[CONFIG_MAX_HOSTS]; /* borrowed: h->checkers */
	/* Set by choose_writer() on the health loop, under the write lock. */
	struct checker *writer; /* borrowed: one of hosts, or NULL */
	struct checker *tie[2]; /* borrowed: two of the primaries none of which wins */
	size_t ntie;		/* how many primaries tie (0: no tie) */
	/* Citus: the writer's workers are not all reachable (worker_why of the writer). */
	bool degraded;
	char degraded_why[256];
};

/*
 * What one choose_writer() call changed, logged once the write lock is
 * released: sessions on other loops wait for that lock, not for our log.
 */
struct writer_change {
	const char *cluster;		/* borrowed: the map's name */
	struct checker *was, *now;	/* borrowed; was is only compared, never read */
	struct checker *tie_was[2];	/* borrowed; only compared */
	struct checker *tie_now[2];	/* borrowed */
	size_t ntie;
	struct checker *stale[CONFIG_MAX_HOSTS]; /* borrowed: primaries stale since this call */
	size_t nstale;
	/* Citus: degraded changed (1: now degraded, with why; -1: healthy again; 0: no). */
	int degraded;
	char degraded_why[256];
};

struct health {
	/*
	 * Sessions on every event-loop thread read host states and the map;
	 * only the health loop writes them, under the write lock.
	 */
	uv_rwlock_t lock;
	uv_loop_t *loop;
	struct checker *checkers; /* owned list */
	struct cluster_map *map;  /* owned; index = cluster index of the last cfg */
	size_t nmap;
	uint64_t interval_ms, timeout_ms;
	uint64_t worker_interval_ms, worker_timeout_ms; /* Citus worker watch; interval 0: off */
	uint32_t fail_after;
	char *conninfo; /* owned */
	bool guard_check;     /* guard_server_check */
	char tenant_key[128]; /* what tenant_guard.key must say */
	size_t first_pending;
	health_ready_fn ready;
	void *ready_arg;
	size_t closing; /* checkers whose handles are still closing */
	void (*stopped)(void *arg);
	void *stopped_arg;
	/* auth_query requests from any loop, handed over under auth_mu. */
	uv_mutex_t auth_mu;
	struct health_auth *auth_in;
	uv_async_t auth_wake;
	bool auth_stopping;
};

static void start_check(struct checker *ck);
static void timer_cb(uv_timer_t *t);
static void sync_watches(struct cluster_map *m);

/* Hands an answered request back to its loop; the last touch of a on this thread. */
static void auth_finish(struct health_auth *a, bool ok, const char *secret, const char *why)
{
	a->ok = ok;
	snprintf(a->secret, sizeof(a->secret), "%s", secret ? secret : "");
	snprintf(a->why, sizeof(a->why), "%s", why ? why : "");
	uv_async_send(&a->done);
}

static void auth_fail_all(struct checker *ck, const char *why)
{
	struct health_auth *a;

	if (ck->auth_cur) {
		auth_finish(ck->auth_cur, false, NULL, why);
		ck->auth_cur = NULL;
	}
	while ((a = ck->auth_q) != NULL) {
		ck->auth_q = a->next;
		auth_finish(a, false, NULL, why);
	}
}

static void poll_close_cb(uv_handle_t *h)
{
	free(container_of((uv_poll_t *)h, struct cpoll, handle));
}

static void drop_conn(struct checker *ck)
{
	if (ck->poll) {
		uv_poll_stop(&ck->poll->handle);
		uv_close((uv_handle_t *)&ck->poll->handle, poll_close_cb);
		ck->poll = NULL;
	}
	if (ck->conn) {
		PQfinish(ck->conn);
		ck->conn = NULL;
	}
}

static void first_round_done(struct checker *ck)
{
	struct health *h = ck->h;

	if (ck->first_done)
		return;
	ck->first_done = true;
	if (h->first_pending > 0 && --h->first_pending == 0 && h->ready) {
		health_ready_fn fn = h->ready;

		h->ready = NULL;
		fn(h->ready_arg);
	}
}

static void schedule_next(struct checker *ck, uint64_t delay)
{
	if (!ck->stopping)
		uv_timer_start(&ck->timer, timer_cb, delay, 0);
}

static uint64_t until_next(struct checker *ck)
{
	uint64_t elapsed = uv_now(ck->h->loop) - ck->started;

	return elapsed >= ck->h->interval_ms ? 0 : ck->h->interval_ms - elapsed;
}

/* The named cluster's hosts, or NULL (the caller holds the lock, or is the health loop). */
static struct cluster_map *map_find(struct health *h, const char *cluster)
{
	for (size_t i = 0; i < h->nmap; i++) {
		if (strcmp(h->map[i].name, cluster) == 0)
			return &h->map[i];
	}
	return NULL;
}

/* Up, not in recovery, with an address to connect to: it could take writes. */
static bool is_primary(const struct checker *ck)
{
	return ck->state == HEALTH_UP && !ck->in_recovery && ck->have_addr && !ck->unguarded[0];
}

/* The highest timeline any host of m has shown as a primary of database sysid. */
static uint32_t seen_floor(const struct cluster_map *m, uint64_t sysid)
{
	uint32_t top = 0;

	for (size_t i = 0; i < m->n; i++) {
		const struct checker *ck = m->hosts[i];

		if (ck->seen_sysid == sysid && ck->seen_tli > top)
			top = ck->seen_tli;
	}
	return top;
}

/*
 * A cluster is degraded while its writer's watch finds workers it cannot
 * reach: sessions are still routed there (reads go on, and writes to other
 * shards), but operators need to know. Losing the writer is not "healthy
 * again": the host-down line says what happened.
 */
static void update_degraded(struct cluster_map *m, struct writer_change *ch)
{
	const struct checker *w = m->writer;
	bool now = w && w->watch && w->worker_bad;

	ch->degraded = 0;
	if (now && (!m->degraded || strcmp(m->degraded_why, w->worker_why) != 0)) {
		snprintf(m->degraded_why, sizeof(m->degraded_why), "%s", w->worker_why);
		memcpy(ch->degraded_why, m->degraded_why, sizeof(ch->degraded_why));
		ch->degraded = 1;
	} else if (!now && m->degraded && w) {
		ch->degraded = -1;
	}
	m->degraded = now;
	if (!now)
		m->degraded_why[0] = '\0';
}

/*
 * Picks m's writer from its hosts' states (health loop, under the write
 * lock) and notes in ch what changed. Timelines rank primaries only within
 * one database (one system identifier, one WAL history): a promotion moves
 * the promoted host to a new, higher timeline, so a primary behind the
 * highest timeline seen there is the old primary restarted without being
 * demoted. It is stale, even when it is the only primary left, because
 * everything it accepts is lost to the promoted host's history. Of the
 * primaries that are not stale exactly one may be the writer; two or more
 * (the same timeline, or different databases) are a split brain that host
 * order must not settle, so the cluster gets no writer until one goes.
 */
static void choose_writer(struct cluster_map *m, struct writer_change *ch)
{
	struct checker *cand[CONFIG_MAX_HOSTS];
	size_t ncand = 0;

	ch->cluster = m->name;
	ch->was = m->writer;
	ch->tie_was[0] = m->tie[0];
	ch->tie_was[1] = m->tie[1];
	ch->nstale = 0;
	for (size_t i = 0; i < m->n; i++) {
		struct checker *ck = m->hosts[i];
		uint32_t top;

		if (!is_primary(ck)) {
			ck->behind = 0;
			continue;
		}
		top = seen_floor(m, ck->sysid);
		if (ck->tli < top) {
			if (ck->behind == 0)
				ch->stale[ch->nstale++] = ck;
			ck->behind = top;
			continue;
		}
		ck->behind = 0;
		cand[ncand++] = ck;
	}
	m->writer = ncand == 1 ? cand[0] : NULL;
	m->ntie = ncand > 1 ? ncand : 0;
	m->tie[0] = ncand > 1 ? cand[0] : NULL;
	m->tie[1] = ncand > 1 ? cand[1] : NULL;
	ch->now = m->writer;
	ch->tie_now[0] = m->tie[0];
	ch->tie_now[1] = m->tie[1];
	ch->ntie = m->ntie;
	update_degraded(m, ch);
}

static bool same_pair(struct checker *const a[2], struct checker *const b[2])
{
	return (a[0] == b[0] && a[1] == b[1]) || (a[0] == b[1] && a[1] == b[0]);
}

/* Logs what choose_writer() changed (health loop, without the lock). */
static void log_change(const struct writer_change *ch)
{
	for (size_t i = 0; i < ch->nstale; i++) {
		const struct checker *ck = ch->stale[i];

		log_error("health: stale primary not chosen cluster=%s host=%s:%u timeline=%u "
			  "behind=%u; demote it (pg_rewind, or rebuild it as a standby)",
			  ch->cluster, ck->host, ck->port, ck->tli, ck->behind);
	}
	if (ch->tie_now[0] && !same_pair(ch->tie_now, ch->tie_was)) {
		const struct checker *a = ch->tie_now[0], *b = ch->tie_now[1];

		log_error("health: two primaries cluster=%s hosts=%s:%u,%s:%u timelines=%u,%u%s "
			  "primaries=%zu; refusing new sessions (57P03) until one is stopped or "
			  "demoted",
			  ch->cluster, a->host, a->port, b->host, b->port, a->tli, b->tli,
			  a->sysid != b->sysid ? " (different databases)" : "", ch->ntie);
	} else if (ch->tie_now[0] == NULL && ch->tie_was[0]) {
		log_info("health: two primaries resolved cluster=%s", ch->cluster);
	}
	if (ch->now && ch->now != ch->was)
		log_info("health: writer cluster=%s host=%s:%u timeline=%u", ch->cluster,
			 ch->now->host, ch->now->port, ch->now->tli);
	if (ch->degraded > 0)
		log_warn("health: cluster %s degraded: %s", ch->cluster, ch->degraded_why);
	else if (ch->degraded < 0)
		log_info("health: cluster %s healthy again", ch->cluster);
}

/*
 * Notes how a check ended, for metrics (under the write lock). A connection
 * lost between checks is no check: it has no start and leaves no mark.
 */
static uint64_t record_check(struct checker *ck, bool ok)
{
	uint64_t ns;

	if (ck->check_t0_ns == 0)
		return 0;
	ns = uv_hrtime() - ck->check_t0_ns;
	ck->check_t0_ns = 0;
	ck->last_check_ns = ns ? ns : 1;
	ck->history[ck->nhistory++ % HEALTH_HISTORY] = ok ? '+' : '-';
	return ck->last_check_ns;
}

static void fail(struct checker *ck, bool lost, const char *fmt, ...) PRINTF_LIKE(3, 4);

static void fail(struct checker *ck, bool lost, const char *fmt, ...)
{
	struct health *h = ck->h;
	struct writer_change ch;
	struct cluster_map *m;
	va_list ap;
	char msg[256];
	uint64_t took;
	bool down;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	auth_fail_all(ck, msg);
	drop_conn(ck);
	ck->phase = PH_IDLE;
	ck->fails++;
	uv_rwlock_wrlock(&h->lock);
	took = record_check(ck, false);
	log_first_line(ck->why, sizeof(ck->why), msg, false);
	down = ck->state != HEALTH_DOWN &&
	       (ck->state == HEALTH_UNKNOWN || ck->fails >= h->fail_after);
	if (down)
		ck->state = HEALTH_DOWN;
	m = map_find(h, ck->cluster);
	if (m)
		choose_writer(m, &ch);
	uv_rwlock_wrunlock(&h->lock);
	if (took)
		stats_observe(STATS_CHECK, took);
	if (down)
		log_warn("health: host down cluster=%s host=%s:%u failures=%u reason=\"%s\"",
			 ck->cluster, ck->host, ck->port, ck->fails, ck->why);
	else
		log_debug("health: check failed cluster=%s host=%s:%u failures=%u reason=\"%s\"",
			  ck->cluster, ck->host, ck->port, ck->fails, ck->why);
	if (m) {
		log_change(&ch);
		sync_watches(m);
	}
	first_round_done(ck);
	/* A connection lost between checks is one failure; look again now. */
	schedule_next(ck, lost ? 0 : until_next(ck));
}

/* The server's reported settings as ParameterStatus messages (under the write lock). */
static void record_params(struct checker *ck)
{
	struct wbuf w;

	wb_init(&w, ck->params, sizeof(ck->params));
	for (size_t i = 0; i < ARRAY_SIZE(reported_params); i++) {
		const char *v = PQparameterStatus(ck->conn, reported_params[i]);

		if (v == NULL)
			continue;
		wb_begin(&w, 'S');
		wb_cstr(&w, reported_params[i]);
		wb_cstr(&w, v);
		wb_end(&w);
	}
	ck->paramslen = w.failed ? 0 : w.len;
}

static void succeed(struct checker *ck)
{
	struct health *h = ck->h;
	const char *role = ck->result_recovery ? "standby" : "primary";
	uint32_t tli = ck->result_recovery ? 0 : ck->result_tli;
	struct writer_change ch;
	struct cluster_map *m;
	char tl[24] = "";
	uint64_t took;

	if (tli)
		snprintf(tl, sizeof(tl), " timeline=%u", tli);
	/* Once per change, not per probe: the reason stays in health_writer()'s answer. */
	if (ck->result_unguarded[0] && strcmp(ck->result_unguarded, ck->unguarded) != 0)
		log_error("health: %s; no sessions are sent to it cluster=%s", ck->result_unguarded,
			  ck->cluster);
	else if (!ck->result_unguarded[0] && ck->unguarded[0])
		log_info("health: host %s:%u is usable again (%s) cluster=%s", ck->host, ck->port,
			 h->guard_check ? "tenant_guard is loaded" : "guard_server_check = off",
			 ck->cluster);
	if (ck->state != HEALTH_UP)
		log_info("health: host up cluster=%s host=%s:%u role=%s%s", ck->cluster, ck->host,
			 ck->port, role, tl);
	else if (ck->in_recovery != ck->result_recovery)
		log_info("health: host role changed cluster=%s host=%s:%u role=%s%s", ck->cluster,
			 ck->host, ck->port, role, tl);
	else if (ck->tli != tli || ck->sysid != ck->result_sysid)
		log_info("health: host timeline changed cluster=%s host=%s:%u role=%s%s",
			 ck->cluster, ck->host, ck->port, role, tl);
	uv_rwlock_wrlock(&h->lock);
	took = record_check(ck, true);
	ck->state = HEALTH_UP;
	ck->in_recovery = ck->result_recovery;
	ck->tli = tli;
	ck->sysid = ck->result_sysid;
	ck->citus = ck->result_citus;
	memcpy(ck->unguarded, ck->result_unguarded, sizeof(ck->unguarded));
	/* Another system identifier is another database: its timelines start afresh. */
	if (tli && ck->seen_sysid != ck->sysid) {
		ck->seen_sysid = ck->sysid;
		ck->seen_tli = 0;
	}
	if (tli > ck->seen_tli)
		ck->seen_tli = tli;
	record_params(ck);
	m = map_find(h, ck->cluster);
	if (m)
		choose_writer(m, &ch);
	uv_rwlock_wrunlock(&h->lock);
	if (took)
		stats_observe(STATS_CHECK, took);
	if (m) {
		log_change(&ch);
		sync_watches(m);
	}
	ck->fails = 0;
	ck->phase = PH_IDLE;
	first_round_done(ck);
	schedule_next(ck, until_next(ck));
}

static void poll_cb(uv_poll_t *p, int status, int events);

/* (Re)arms polling on libpq's current socket for the given events. */
static int watch(struct checker *ck, int events)
{
	int fd = PQsocket(ck->conn);
	int rc;

	if (fd < 0)
		return UV_EBADF;
	if (ck->poll && ck->poll->fd != fd) {
		uv_poll_stop(&ck->poll->handle);
		uv_close((uv_handle_t *)&ck->poll->handle, poll_close_cb);
		ck->poll = NULL;
	}
	if (ck->poll == NULL) {
		ck->poll = malloc(sizeof(*ck->poll));
		if (ck->poll == NULL)
			return UV_ENOMEM;
		rc = uv_poll_init(ck->h->loop, &ck->poll->handle, fd);
		if (rc < 0) {
			free(ck->poll);
			ck->poll = NULL;
			return rc;
		}
		ck->poll->fd = fd;
		ck->poll->handle.data = ck;
	}
	/* Stop first: the same fd number may now be a new socket. */
	uv_poll_stop(&ck->poll->handle);
	return uv_poll_start(&ck->poll->handle, events, poll_cb);
}

/* After sending a query: push it out, then wait for the answer (and for room, if needed). */
static void flush_and_watch(struct checker *ck)
{
	int rc = PQflush(ck->conn);

	if (rc < 0) {
		fail(ck, false, "%s", PQerrorMessage(ck->conn));
		return;
	}
	rc = watch(ck, UV_READABLE | (rc == 1 ? UV_WRITABLE : 0));
	if (rc < 0)
		fail(ck, false, "poll: %s", uv_strerror(rc));
}

/*
 * The probe. pg_control_checkpoint()'s timeline_id would lag: PostgreSQL
 * promotes with an end-of-recovery WAL record and only requests a spread
 * checkpoint, so the control file keeps the old timeline until that
 * checkpoint ends (on PostgreSQL 15: 0.1 s when idle, still the old one 40 s
 * after promoting a server with 25 MB of dirty buffers). The name of the WAL
 * file being written carries the timeline in its first 8 hex digits from the
 * moment the server leaves recovery. pg_current_wal_lsn() raises an error
 * during recovery, hence the CASE; a promotion between the two calls only
 * gives a standby a WAL file name, which read_probe() ignores. The system
 * identifier tells whether two hosts' timelines can be compared at all.
 * The last column is what tenant_guard guards (guard_server_check); a
 * placeholder that postgresql.conf or ALTER ROLE ... SET made without the
 * library loaded has context "user", the library's own setting "sighup".
 * The last column says whether the host is a Citus coordinator whose
 * workers we can watch (citus.h).
 */
#define PROBE_SQL                                                              \
	"SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL " \
	"ELSE pg_walfile_name(pg_current_wal_lsn()) END, "                     \
	"(SELECT system_identifier FROM pg_control_system()), "                \
	"(SELECT setting FROM pg_settings WHERE name = 'tenant_guard.key' "    \
	"AND context = 'sighup'), " CITUS_PROBE_COLUMN

static void send_query(struct checker *ck)
{
	ck->phase = PH_QUERY;
	ck->got_result = false;
	if (!PQsendQuery(ck->conn, PROBE_SQL)) {
		fail(ck, false, "%s", PQerrorMessage(ck->conn));
		return;
	}
	flush_and_watch(ck);
}

/* Runs the next waiting auth_query on the idle connection, if any. */
static void auth_kick(struct checker *ck)
{
	struct health_auth *a = ck->auth_q;
	const char *user;

	if (a == NULL || ck->auth_cur || ck->phase != PH_IDLE || ck->stopping)
		return;
	if (ck->conn == NULL || PQstatus(ck->conn) != CONNECTION_OK) {
		auth_fail_all(ck, "the health connection is not up");
		return;
	}
	ck->auth_q = a->next;
	ck->auth_cur = a;
	ck->phase = PH_AUTH;
	ck->got_result = false;
	user = a->user;
	/* Bounded like a check: a stuck auth_query must not stop health checks. */
	uv_timer_start(&ck->timer, timer_cb, ck->h->timeout_ms, 0);
	if (!PQsendQueryParams(ck->conn, a->query, 1, NULL, &user, NULL, NULL, 0)) {
		fail(ck, false, "auth_query: %s", PQerrorMessage(ck->conn));
		return;
	}
	flush_and_watch(ck);
}

/* Reads the auth_query's answer: no row is an unknown user, else column 2 is the secret. */
static void read_auth(struct checker *ck)
{
	struct health_auth *a = ck->auth_cur;
	PGresult *res;

	if (!PQconsumeInput(ck->conn)) {
		fail(ck, false, "%s", PQerrorMessage(ck->conn));
		return;
	}
	while (!PQisBusy(ck->conn)) {
		res = PQgetResult(ck->conn);
		if (res == NULL) {
			ck->auth_cur = NULL;
			ck->phase = PH_IDLE;
			if (!ck->got_result)
				auth_finish(a, true, "", NULL);
			else
				uv_async_send(&a->done);
			schedule_next(ck, until_next(ck));
			if (watch(ck, UV_READABLE) < 0)
				fail(ck, true, "poll failed");
			else
				auth_kick(ck);
			return;
		}
		if (!ck->got_result) {
			ck->got_result = true;
			a->ok = true;
			a->secret[0] = '\0';
			a->why[0] = '\0';
			if (PQresultStatus(res) != PGRES_TUPLES_OK) {
				a->ok = false;
				log_first_line(a->why, sizeof(a->why), PQresultErrorMessage(res),
					       false);
			} else if (PQnfields(res) < 2) {
				a->ok = false;
				snprintf(a->why, sizeof(a->why),
					 "auth_query must return two columns (name, password)");
			} else if (PQntuples(res) > 1) {
				a->ok = false;
				snprintf(a->why, sizeof(a->why), "auth_query returned %d rows",
					 PQntuples(res));
			} else if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 1)) {
				snprintf(a->secret, sizeof(a->secret), "%s", PQgetvalue(res, 0, 1));
			}
		}
		PQclear(res);
	}
}

/* The timeline in a WAL file name (TTTTTTTTXXXXXXXXYYYYYYYY, upper-case hex). */
static bool parse_timeline(const char *walfile, uint32_t *tli)
{
	uint32_t v = 0;

	if (strlen(walfile) != 24 || strspn(walfile, "0123456789ABCDEF") != 24)
		return false;
	for (size_t i = 0; i < 8; i++) {
		char c = walfile[i];

		v = v << 4 | (uint32_t)(c <= '9' ? c - '0' : c - 'A' + 10);
	}
	*tli = v;
	return v != 0;
}

/* Reads the probe's one row into result_*; NULL, or what is wrong with it. */
static const char *read_probe(struct checker *ck, const PGresult *res)
{
	const char *sys = PQgetvalue(res, 0, 2);
	unsigned long long v;
	char *end;

	ck->result_recovery = PQgetvalue(res, 0, 0)[0] == 't';
	ck->result_tli = 0;
	if (!ck->result_recovery &&
	    (PQgetisnull(res, 0, 1) || !parse_timeline(PQgetvalue(res, 0, 1), &ck->result_tli)))
		return "the probe returned no timeline for a primary";
	errno = 0;
	v = strtoull(sys, &end, 10);
	if (PQgetisnull(res, 0, 2) || !(sys[0] >= '0' && sys[0] <= '9') || *end != '\0' ||
	    errno != 0)
		return "the probe returned no system identifier";
	ck->result_sysid = v;
	ck->result_citus = !PQgetisnull(res, 0, 4) && PQgetvalue(res, 0, 4)[0] == 't';
	ck->result_unguarded[0] = '\0';
	if (!ck->h->guard_check)
		return NULL;
	if (PQgetisnull(res, 0, 3))
		snprintf(ck->result_unguarded, sizeof(ck->result_unguarded),
			 "host %s:%u lacks the tenant_guard extension (guard_server_check = on)",
			 ck->host, ck->port);
	else if (strcasecmp(PQgetvalue(res, 0, 3), ck->h->tenant_key) != 0)
		snprintf(ck->result_unguarded, sizeof(ck->result_unguarded),
			 "host %s:%u has tenant_guard.key = %.40s, not tenant_key %.40s "
			 "(guard_server_check = on)",
			 ck->host, ck->port, PQgetvalue(res, 0, 3), ck->h->tenant_key);
	return NULL;
}

static void read_results(struct checker *ck)
{
	PGresult *res;

	if (!PQconsumeInput(ck->conn)) {
		fail(ck, false, "%s", PQerrorMessage(ck->conn));
		return;
	}
	while (!PQisBusy(ck->conn)) {
		res = PQgetResult(ck->conn);
		if (res == NULL) {
			int rc;

			if (!ck->got_result) {
				fail(ck, false, "the probe returned no row");
				return;
			}
			succeed(ck);
			/* Between checks, only watch for the server going away. */
			rc = watch(ck, UV_READABLE);
			if (rc < 0)
				fail(ck, true, "poll: %s", uv_strerror(rc));
			else
				auth_kick(ck);
			return;
		}
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
		    PQnfields(res) == 5) {
			const char *bad = read_probe(ck, res);

			if (bad) {
				PQclear(res);
				fail(ck, false, "%s", bad);
				return;
			}
			ck->got_result = true;
		} else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
			char msg[256];

			log_first_line(msg, sizeof(msg), PQresultErrorMessage(res), false);
			PQclear(res);
			fail(ck, false, "%s", msg);
			return;
		}
		PQclear(res);
	}
}

static void connect_step(struct checker *ck)
{
	int rc;

	switch (PQconnectPoll(ck->conn)) {
	case PGRES_POLLING_READING:
		rc = watch(ck, UV_READABLE);
		break;
	case PGRES_POLLING_WRITING:
		rc = watch(ck, UV_WRITABLE);
		break;
	case PGRES_POLLING_OK:
		if (PQsetnonblocking(ck->conn, 1) != 0) {
			fail(ck, false, "%s", PQerrorMessage(ck->conn));
			return;
		}
		send_query(ck);
		return;
	case PGRES_POLLING_FAILED:
	default:
		fail(ck, false, "%s", PQerrorMessage(ck->conn));
		return;
	}
	if (rc < 0)
		fail(ck, false, "poll: %s", uv_strerror(rc));
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
	struct checker *ck = p->data;

	/*
	 * libuv reports POLLERR as UV_EBADF and stops the handle. libpq reads
	 * the real reason (SO_ERROR, a reset) when asked to go on, so we ask it.
	 */
	if (status < 0)
		events = UV_READABLE | UV_WRITABLE;
	switch (ck->phase) {
	case PH_CONNECT:
		connect_step(ck);
		break;
	case PH_QUERY:
		if (events & UV_WRITABLE) {
			int rc = PQflush(ck->conn);

			if (rc < 0) {
				fail(ck, false, "%s", PQerrorMessage(ck->conn));
				return;
			}
			if (rc == 0 && watch(ck, UV_READABLE) < 0) {
				fail(ck, false, "poll failed");
				return;
			}
		}
		if (events & UV_READABLE)
			read_results(ck);
		break;
	case PH_AUTH:
		if ((events & UV_WRITABLE) && PQflush(ck->conn) == 0 &&
		    watch(ck, UV_READABLE) < 0) {
			fail(ck, false, "poll failed");
			return;
		}
		if (events & UV_READABLE)
			read_auth(ck);
		break;
	case PH_IDLE:
		/* Readable between checks: a notice, or the server closing on us. */
		if (!PQconsumeInput(ck->conn) || PQstatus(ck->conn) != CONNECTION_OK) {
			fail(ck, true, "connection lost: %s", PQerrorMessage(ck->conn));
			return;
		}
		if (status < 0 && watch(ck, UV_READABLE) < 0) {
			fail(ck, true, "connection lost: poll failed");
			return;
		}
		while (PQisBusy(ck->conn) == 0) {
			PGresult *res = PQgetResult(ck->conn);

			if (res == NULL)
				break;
			PQclear(res);
		}
		break;
	case PH_RESOLVE:
		break;
	}
}

/* Server notices on a health connection go to our log, not libpq's stderr. */
static void notice_cb(void *arg, const char *msg)
{
	struct checker *ck = arg;
	char line[256];

	log_first_line(line, sizeof(line), msg, false);
	log_debug("health: notice cluster=%s host=%s:%u: %s", ck->cluster, ck->host, ck->port,
		  line);
}

/* Appends one libpq keyword when it has a value (NULL: libpq's default). */
static void add_param(const char **keys, const char **vals, int *n, const char *key,
		      const char *val)
{
	if (val == NULL)
		return;
	keys[*n] = key;
	vals[(*n)++] = val;
}

/*
 * libpq keywords for a connection to ck's host (NULL-terminated; the
 * strings are borrowed from ck and h, port from the caller's buffer).
 */
static void conn_params(struct checker *ck, const char **keys, const char **vals, char *port,
			size_t portcap, const char *appname)
{
	struct health *h = ck->h;
	int n = 0;

	snprintf(port, portcap, "%u", ck->port);
	if (h->conninfo[0]) {
		keys[n] = "dbname";
		vals[n++] = h->conninfo;
	}
	keys[n] = "host";
	vals[n++] = ck->host;
	keys[n] = "hostaddr";
	vals[n++] = ck->addrstr;
	keys[n] = "port";
	vals[n++] = port;
	keys[n] = "fallback_application_name";
	vals[n++] = appname;
	add_param(keys, vals, &n, "sslmode", ck->sslmode);
	add_param(keys, vals, &n, "sslrootcert", ck->sslrootcert);
	add_param(keys, vals, &n, "sslcert", ck->sslcert);
	add_param(keys, vals, &n, "sslkey", ck->sslkey);
	add_param(keys, vals, &n, "ssl_min_protocol_version", ck->sslmin);
	add_param(keys, vals, &n, "ssl_max_protocol_version", ck->sslmax);
	keys[n] = NULL;
	vals[n] = NULL;
}

static void connect_start(struct checker *ck)
{
	char port[8];
	const char *keys[16], *vals[16];

	conn_params(ck, keys, vals, port, sizeof(port), "tenant-router-health");
	ck->phase = PH_CONNECT;
	ck->conn = PQconnectStartParams(keys, vals, 1);
	if (ck->conn == NULL) {
		fail(ck, false, "out of memory");
		return;
	}
	if (PQstatus(ck->conn) == CONNECTION_BAD) {
		fail(ck, false, "%s", PQerrorMessage(ck->conn));
		return;
	}
	PQsetNoticeProcessor(ck->conn, notice_cb, ck);
	/* libpq: after PQconnectStart, wait until the socket is writable. */
	if (watch(ck, UV_WRITABLE) < 0)
		fail(ck, false, "poll failed");
}

/* The watch's report (health loop): record it and log what changed for the cluster. */
static void worker_report_cb(void *arg, const struct citus_report *r)
{
	struct checker *ck = arg;
	struct health *h = ck->h;
	struct writer_change ch;
	struct cluster_map *m;
	bool bad = r->result == CITUS_WORKERS_UNREACHABLE;

	/* A check that could not run says nothing of the workers: keep the last verdict. */
	if (r->result == CITUS_CHECK_FAILED) {
		if (strcmp(ck->worker_failed, r->why) != 0)
			log_warn("health: cluster %s: %s (host %s:%u)", ck->cluster, r->why, ck->host,
				 ck->port);
		snprintf(ck->worker_failed, sizeof(ck->worker_failed), "%s", r->why);
		return;
	}
	ck->worker_failed[0] = '\0';
	uv_rwlock_wrlock(&h->lock);
	ck->worker_bad = bad;
	snprintf(ck->worker_why, sizeof(ck->worker_why), "%s", bad ? r->why : "");
	m = map_find(h, ck->cluster);
	if (m)
		choose_writer(m, &ch);
	uv_rwlock_wrunlock(&h->lock);
	if (m)
		log_change(&ch);
}

static void maybe_stopped(struct health *h);

static void watch_closed_cb(void *arg)
{
	struct health *h = arg;

	h->closing--;
	maybe_stopped(h);
}

/* Ends ck's watch and forgets what it found (the caller re-evaluates the cluster). */
static void watch_stop(struct checker *ck)
{
	struct health *h = ck->h;

	if (ck->watch == NULL)
		return;
	h->closing++;
	citus_watch_close(ck->watch, watch_closed_cb, h);
	uv_rwlock_wrlock(&h->lock);
	ck->watch = NULL;
	ck->worker_bad = false;
	ck->worker_why[0] = '\0';
	uv_rwlock_wrunlock(&h->lock);
	ck->worker_failed[0] = '\0';
}

/*
 * Only a cluster's writer has its workers watched, and only when it is a
 * Citus coordinator: a standby's view of the workers does not matter to
 * sessions, and without Citus nothing but the probe's one column changes.
 */
static void sync_watches(struct cluster_map *m)
{
	for (size_t i = 0; i < m->n; i++) {
		struct checker *ck = m->hosts[i];
		struct health *h = ck->h;
		bool want = !ck->stopping && ck->citus && m->writer == ck &&
			    h->worker_interval_ms > 0;

		if (!want && ck->watch) {
			watch_stop(ck);
		} else if (want && ck->watch == NULL) {
			char port[8];
			const char *keys[16], *vals[16];

			conn_params(ck, keys, vals, port, sizeof(port), "tenant-router-citus");
			ck->watch = citus_watch_start(h->loop, keys, vals, h->worker_interval_ms,
						      h->worker_timeout_ms, worker_report_cb, ck);
			if (ck->watch == NULL)
				log_error("health: out of memory starting the worker check cluster=%s",
					  ck->cluster);
		}
	}
}

static void checker_release(struct checker *ck);

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct checker *ck = req->data;

	ck->resolving = false;
	if (ck->stopping) {
		uv_freeaddrinfo(res);
		checker_release(ck);
		return;
	}
	/* The check timed out while we were resolving: this answer is stale. */
	if (ck->phase != PH_RESOLVE) {
		uv_freeaddrinfo(res);
		return;
	}
	if (status < 0 || res == NULL) {
		uv_freeaddrinfo(res);
		fail(ck, false, "could not resolve %s: %s", ck->host, uv_strerror(status));
		return;
	}
	uv_rwlock_wrlock(&ck->h->lock);
	memcpy(&ck->addr, res->ai_addr, res->ai_addrlen);
	ck->have_addr = true;
	uv_rwlock_wrunlock(&ck->h->lock);
	if (res->ai_family == AF_INET6)
		uv_ip6_name((struct sockaddr_in6 *)(void *)res->ai_addr, ck->addrstr, sizeof(ck->addrstr));
	else
		uv_ip4_name((struct sockaddr_in *)(void *)res->ai_addr, ck->addrstr, sizeof(ck->addrstr));
	uv_freeaddrinfo(res);
	connect_start(ck);
}

static void start_check(struct checker *ck)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	char port[8];
	int rc;

	ck->started = uv_now(ck->h->loop);
	ck->check_t0_ns = uv_hrtime();
	uv_timer_start(&ck->timer, timer_cb, ck->h->timeout_ms, 0);
	if (ck->conn && PQstatus(ck->conn) == CONNECTION_OK) {
		send_query(ck);
		return;
	}
	drop_conn(ck);
	if (ck->resolving) {
		fail(ck, false, "still resolving %s", ck->host);
		return;
	}
	ck->phase = PH_RESOLVE;
	snprintf(port, sizeof(port), "%u", ck->port);
	ck->gai.data = ck;
	rc = uv_getaddrinfo(ck->h->loop, &ck->gai, gai_cb, ck->host, port, &hints);
	if (rc < 0)
		fail(ck, false, "could not resolve %s: %s", ck->host, uv_strerror(rc));
	else
		ck->resolving = true;
}

static void timer_cb(uv_timer_t *t)
{
	struct checker *ck = container_of(t, struct checker, timer);

	switch (ck->phase) {
	case PH_IDLE:
		start_check(ck);
		break;
	case PH_RESOLVE:
		/* The lookup cannot be abandoned; gai_cb will find it stale. */
		uv_cancel((uv_req_t *)&ck->gai);
		fail(ck, false, "timed out resolving %s after %llu ms", ck->host,
		     (unsigned long long)ck->h->timeout_ms);
		break;
	case PH_CONNECT:
	case PH_QUERY:
		fail(ck, false, "check timed out after %llu ms",
		     (unsigned long long)ck->h->timeout_ms);
		break;
	case PH_AUTH:
		fail(ck, false, "auth_query timed out after %llu ms",
		     (unsigned long long)ck->h->timeout_ms);
		break;
	}
}

/* Health loop: requests handed over by sessions go to their cluster's writer. */
static void auth_wake_cb(uv_async_t *w)
{
	struct health *h = w->data;
	struct health_auth *list, *a;

	uv_mutex_lock(&h->auth_mu);
	list = h->auth_in;
	h->auth_in = NULL;
	uv_mutex_unlock(&h->auth_mu);
	/* The list is newest first: reverse it to serve in order. */
	{
		struct health_auth *rev = NULL;

		while ((a = list) != NULL) {
			list = a->next;
			a->next = rev;
			rev = a;
		}
		list = rev;
	}
	while ((a = list) != NULL) {
		struct cluster_map *m = map_find(h, a->cluster);
		/* The health loop writes the choice, so it may read it without the lock. */
		struct checker *ck = m ? m->writer : NULL;

		list = a->next;
		a->next = NULL;
		if (ck == NULL) {
			auth_finish(a, false, NULL, "the cluster has no healthy coordinator");
			continue;
		}
		/* Append: requests are answered in the order they came. */
		{
			struct health_auth **pp = &ck->auth_q;

			while (*pp)
				pp = &(*pp)->next;
			*pp = a;
		}
		auth_kick(ck);
	}
}

struct health *health_new(uv_loop_t *loop)
{
	struct health *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return NULL;
	h->loop = loop;
	h->conninfo = strdup("");
	if (h->conninfo == NULL || uv_rwlock_init(&h->lock) != 0) {
		free(h->conninfo);
		free(h);
		return NULL;
	}
	if (uv_mutex_init(&h->auth_mu) != 0) {
		uv_rwlock_destroy(&h->lock);
		free(h->conninfo);
		free(h);
		return NULL;
	}
	uv_async_init(loop, &h->auth_wake, auth_wake_cb);
	h->auth_wake.data = h;
	/* Only pending requests should keep the loop alive. */
	uv_unref((uv_handle_t *)&h->auth_wake);
	return h;
}

static void free_auth_cb(uv_handle_t *hd)
{
	struct health_auth *a = container_of((uv_async_t *)hd, struct health_auth, done);

	free(a->query);
	free(a);
}

static void auth_done_cb(uv_async_t *d)
{
	struct health_auth *a = container_of(d, struct health_auth, done);

	if (!a->cancelled)
		a->fn(a->arg, a->ok, a->secret, a->why);
	uv_close((uv_handle_t *)&a->done, free_auth_cb);
}

struct health_auth *health_auth_start(struct health *h, uv_loop_t *loop, const char *cluster,
				      const char *query, const char *user, health_auth_fn fn,
				      void *arg)
{
	struct health_auth *a = calloc(1, sizeof(*a));

	if (a == NULL)
		return NULL;
	a->fn = fn;
	a->arg = arg;
	snprintf(a->cluster, sizeof(a->cluster), "%s", cluster);
	snprintf(a->user, sizeof(a->user), "%s", user);
	a->query = strdup(query);
	if (a->query == NULL || uv_async_init(loop, &a->done, auth_done_cb) != 0) {
		free(a->query);
		free(a);
		return NULL;
	}
	uv_mutex_lock(&h->auth_mu);
	if (h->auth_stopping) {
		uv_mutex_unlock(&h->auth_mu);
		/* Never sent: close it here, on its own loop. */
		a->cancelled = true;
		uv_close((uv_handle_t *)&a->done, free_auth_cb);
		return NULL;
	}
	a->next = h->auth_in;
	h->auth_in = a;
	uv_mutex_unlock(&h->auth_mu);
	uv_async_send(&h->auth_wake);
	return a;
}

void health_auth_cancel(struct health_auth *a)
{
	if (a)
		a->cancelled = true;
}

size_t health_parameter_status(struct health *h, uint8_t *out, size_t cap)
{
	size_t n = 0;

	uv_rwlock_rdlock(&h->lock);
	for (size_t i = 0; i < h->nmap && n == 0; i++) {
		for (size_t j = 0; j < h->map[i].n; j++) {
			struct checker *ck = h->map[i].hosts[j];

			if (ck->state == HEALTH_UP && ck->paramslen > 0 && ck->paramslen <= cap) {
				memcpy(out, ck->params, ck->paramslen);
				n = ck->paramslen;
				break;
			}
		}
	}
	uv_rwlock_rdunlock(&h->lock);
	return n;
}

static void checker_free(struct checker *ck)
{
	free(ck->sslmode);
	free(ck->sslrootcert);
	free(ck->sslcert);
	free(ck->sslkey);
	free(ck->sslmin);
	free(ck->sslmax);
	free(ck->cluster);
	free(ck->host);
	free(ck);
}

static void maybe_stopped(struct health *h)
{
	if (h->closing == 0 && h->stopped) {
		void (*fn)(void *) = h->stopped;

		h->stopped = NULL;
		fn(h->stopped_arg);
	}
}

/* Frees a stopped checker once its timer is closed and no lookup is in flight. */
static void checker_release(struct checker *ck)
{
	struct health *h = ck->h;

	if (!ck->timer_closed || ck->resolving)
		return;
	checker_free(ck);
	h->closing--;
	maybe_stopped(h);
}

static void timer_close_cb(uv_handle_t *t)
{
	struct checker *ck = container_of((uv_timer_t *)t, struct checker, timer);

	ck->timer_closed = true;
	checker_release(ck);
}

static void checker_stop(struct checker *ck)
{
	auth_fail_all(ck, "the router is stopping");
	ck->stopping = true;
	watch_stop(ck);
	drop_conn(ck);
	if (!ck->first_done)
		first_round_done(ck);
	ck->h->closing++;
	if (ck->resolving)
		uv_cancel((uv_req_t *)&ck->gai);
	uv_close((uv_handle_t *)&ck->timer, timer_close_cb);
}

static struct checker *checker_new(struct health *h, const char *cluster, const char *host,
				   uint16_t port)
{
	struct checker *ck = calloc(1, sizeof(*ck));

	if (ck == NULL)
		return NULL;
	ck->h = h;
	ck->cluster = strdup(cluster);
	ck->host = strdup(host);
	ck->port = port;
	if (ck->cluster == NULL || ck->host == NULL || uv_timer_init(h->loop, &ck->timer) < 0) {
		checker_free(ck);
		return NULL;
	}
	return ck;
}

static bool same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static bool set_str(char **field, const char *v, bool *changed)
{
	char *copy;

	if (same_str(*field, v))
		return true;
	copy = v ? strdup(v) : NULL;
	if (v && copy == NULL)
		return false;
	free(*field);
	*field = copy;
	*changed = true;
	return true;
}

/*
 * The cluster's TLS settings as libpq parameters. With sslmode=require libpq
 * verifies anyway when given a root certificate, so we give none there, to
 * behave as the sessions do.
 */
static bool set_tls(struct checker *ck, const struct config *cfg, const struct cluster_cfg *cl)
{
	const char *ca = cl->tls_ca_file ? cl->tls_ca_file : cfg->server_tls_ca_file;
	const char *min = NULL, *max = NULL;
	bool changed = false;
	bool ok;

	/* Validated with the config: only the range's names are wanted here. */
	if (!tls_protocols_libpq(cfg->server_tls_protocols, &min, &max))
		min = max = NULL;
	ok = set_str(&ck->sslmode, tls_server_mode_name(cl->tls_mode), &changed) &&
	     set_str(&ck->sslmin, min, &changed) && set_str(&ck->sslmax, max, &changed) &&
		  set_str(&ck->sslrootcert, cl->tls_mode >= TLS_SERVER_VERIFY_CA ? ca : NULL,
			  &changed) &&
		  set_str(&ck->sslcert, cfg->server_tls_cert_file, &changed) &&
		  set_str(&ck->sslkey, cfg->server_tls_key_file, &changed);

	/* New TLS settings apply from the next connection. */
	if (changed && ck->phase == PH_IDLE)
		drop_conn(ck);
	return ok;
}

static void free_map(struct cluster_map *map, size_t n)
{
	if (map == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(map[i].name);
	free(map);
}

static struct checker *find_checker(struct health *h, const char *cluster, const char *host,
				    uint16_t port)
{
	for (struct checker *ck = h->checkers; ck; ck = ck->next) {
		if (ck->port == port && strcmp(ck->cluster, cluster) == 0 &&
		    strcmp(ck->host, host) == 0)
			return ck;
	}
	return NULL;
}

int health_apply(struct health *h, const struct config *cfg, health_ready_fn ready, void *arg)
{
	struct cluster_map *map, *old;
	struct writer_change *ch;
	size_t oldn;
	struct checker **pp;
	bool conninfo_changed = strcmp(h->conninfo, cfg->health_conninfo) != 0;
	char *ci;

	map = calloc(cfg->nclusters, sizeof(*map));
	ch = calloc(cfg->nclusters, sizeof(*ch));
	ci = strdup(cfg->health_conninfo);
	if (map == NULL || ch == NULL || ci == NULL)
		goto fail;
	for (size_t i = 0; i < cfg->nclusters; i++) {
		map[i].name = strdup(cfg->clusters[i].name);
		if (map[i].name == NULL)
			goto fail;
	}
	for (struct checker *ck = h->checkers; ck; ck = ck->next)
		ck->keep = false;
	for (size_t i = 0; i < cfg->nclusters; i++) {
		const struct cluster_cfg *cl = &cfg->clusters[i];

		for (size_t j = 0; j < cl->nhosts; j++) {
			struct checker *ck =
				find_checker(h, cl->name, cl->hosts[j].host, cl->hosts[j].port);

			if (ck == NULL) {
				ck = checker_new(h, cl->name, cl->hosts[j].host, cl->hosts[j].port);
				if (ck == NULL)
					goto fail;
				ck->next = h->checkers;
				h->checkers = ck;
				ck->keep = true;
				h->first_pending++;
				/* Checks start once the settings below are in place. */
				uv_timer_start(&ck->timer, timer_cb, 0, 0);
			}
			ck->keep = true;
			if (!set_tls(ck, cfg, cl))
				goto fail;
			map[i].hosts[map[i].n++] = ck;
		}
	}
	/* Publish the new map first: no reader may reach a checker we stop below. */
	uv_rwlock_wrlock(&h->lock);
	old = h->map;
	oldn = h->nmap;
	for (size_t i = 0; i < cfg->nclusters; i++) {
		struct cluster_map *was = NULL;

		/* The previous choice, only to log what the new host list changes. */
		for (size_t k = 0; k < oldn && was == NULL; k++) {
			if (strcmp(old[k].name, map[i].name) == 0)
				was = &old[k];
		}
		if (was) {
			map[i].writer = was->writer;
			map[i].tie[0] = was->tie[0];
			map[i].tie[1] = was->tie[1];
			map[i].degraded = was->degraded;
			memcpy(map[i].degraded_why, was->degraded_why, sizeof(map[i].degraded_why));
		}
		choose_writer(&map[i], &ch[i]);
	}
	h->map = map;
	h->nmap = cfg->nclusters;
	uv_rwlock_wrunlock(&h->lock);
	for (size_t i = 0; i < cfg->nclusters; i++)
		log_change(&ch[i]);
	free(ch);
	free_map(old, oldn);
	/* Stop checkers of hosts the new configuration no longer lists. */
	for (pp = &h->checkers; *pp;) {
		struct checker *ck = *pp;

		if (!ck->keep) {
			*pp = ck->next;
			checker_stop(ck);
		} else {
			pp = &ck->next;
		}
	}
	free(h->conninfo);
	h->conninfo = ci;
	h->interval_ms = cfg->health_interval_ms;
	h->timeout_ms = cfg->health_timeout_ms;
	h->fail_after = cfg->health_fail_after;
	/* New worker check settings: watches start afresh with them. */
	if (h->worker_interval_ms != cfg->health_worker_interval_ms ||
	    h->worker_timeout_ms != cfg->health_worker_timeout_ms) {
		h->worker_interval_ms = cfg->health_worker_interval_ms;
		h->worker_timeout_ms = cfg->health_worker_timeout_ms;
		for (struct checker *ck = h->checkers; ck; ck = ck->next)
			watch_stop(ck);
	}
	for (size_t i = 0; i < h->nmap; i++)
		sync_watches(&h->map[i]);
	/* Both apply from each host's next check. */
	h->guard_check = cfg->guard_server_check;
	snprintf(h->tenant_key, sizeof(h->tenant_key), "%s", cfg->rule.key);
	if (ready && h->first_pending > 0) {
		h->ready = ready;
		h->ready_arg = arg;
	} else if (ready) {
		ready(arg);
	}
	/* New credentials or options: reconnect at the next check (not a failure). */
	if (conninfo_changed) {
		for (struct checker *ck = h->checkers; ck; ck = ck->next) {
			if (ck->phase == PH_IDLE)
				drop_conn(ck);
		}
	}
	return 0;
fail:
	free(ci);
	free(ch);
	free_map(map, cfg->nclusters);
	return UV_ENOMEM;
}

bool health_writer(struct health *h, const char *cluster, struct health_target *t, char *why,
		   size_t whylen)
{
	struct cluster_map *m = NULL;
	const struct checker *stale = NULL, *unguarded = NULL;
	size_t down = 0, standby = 0;
	bool found = false;

	uv_rwlock_rdlock(&h->lock);
	m = map_find(h, cluster);
	if (m == NULL) {
		snprintf(why, whylen, "no health information yet");
		goto out;
	}
	if (m->writer) {
		const struct checker *ck = m->writer;

		memcpy(&t->addr, &ck->addr, sizeof(t->addr));
		snprintf(t->host, sizeof(t->host), "%s", ck->host);
		t->port = ck->port;
		found = true;
		goto out;
	}
	if (m->tie[0]) {
		const struct checker *a = m->tie[0], *b = m->tie[1];
		char more[32] = "";

		if (m->ntie > 2)
			snprintf(more, sizeof(more), " and %zu more", m->ntie - 2);
		if (a->sysid == b->sysid)
			snprintf(why, whylen, "two primaries on the same timeline %u: %s:%u and %s:%u%s",
				 a->tli, a->host, a->port, b->host, b->port, more);
		else
			snprintf(why, whylen,
				 "two primaries of different databases: %s:%u (timeline %u) and "
				 "%s:%u (timeline %u)%s",
				 a->host, a->port, a->tli, b->host, b->port, b->tli, more);
		goto out;
	}
	for (size_t i = 0; i < m->n; i++) {
		const struct checker *ck = m->hosts[i];

		if (ck->unguarded[0] && ck->state == HEALTH_UP && !ck->in_recovery)
			unguarded = ck;
		else if (ck->behind)
			stale = ck;
		else if (ck->state == HEALTH_UP)
			standby++;
		else
			down++;
	}
	if (unguarded)
		snprintf(why, whylen, "%s", unguarded->unguarded);
	else if (stale)
		snprintf(why, whylen,
			 "host %s:%u is a stale primary (timeline %u, behind timeline %u of a "
			 "promoted host)",
			 stale->host, stale->port, stale->tli, stale->behind);
	else if (standby > 0 && down == 0)
		snprintf(why, whylen, "all %zu hosts are standbys (in recovery)", standby);
	else if (m->n == 1)
		snprintf(why, whylen, "host %s:%u is %s: %s", m->hosts[0]->host, m->hosts[0]->port,
			 m->hosts[0]->state == HEALTH_DOWN ? "down" : "unchecked",
			 m->hosts[0]->why[0] ? m->hosts[0]->why : "no check has finished yet");
	else
		snprintf(why, whylen, "%zu of %zu hosts down, %zu standby", down, m->n, standby);
out:
	uv_rwlock_rdunlock(&h->lock);
	return found;
}

void health_hosts(struct health *h, health_host_fn fn, void *arg)
{
	uv_rwlock_rdlock(&h->lock);
	for (size_t i = 0; i < h->nmap; i++) {
		const struct cluster_map *m = &h->map[i];

		for (size_t j = 0; j < m->n; j++) {
			const struct checker *ck = m->hosts[j];
			struct health_host_info hi = {
				.cluster = m->name,
				.host = ck->host,
				.port = ck->port,
				.state = ck->state,
				.in_recovery = ck->in_recovery,
				.writer = m->writer == ck,
				.timeline = ck->tli,
				.fails = ck->fails,
				.why = ck->state == HEALTH_UP ? "" : ck->why,
				.last_check_ns = ck->last_check_ns,
			};
			unsigned n = ck->nhistory < HEALTH_HISTORY ? ck->nhistory : HEALTH_HISTORY;

			for (unsigned k = 0; k < n; k++)
				hi.history[k] = ck->history[(ck->nhistory - n + k) % HEALTH_HISTORY];
			hi.history[n] = '\0';
			fn(arg, &hi);
		}
	}
	uv_rwlock_rdunlock(&h->lock);
}

enum health_cluster health_cluster_state(struct health *h, const char *cluster, char *why,
					 size_t whylen)
{
	struct health_target t;
	struct cluster_map *m;
	enum health_cluster st = HEALTH_CLUSTER_UP;

	if (!health_writer(h, cluster, &t, why, whylen))
		return HEALTH_CLUSTER_DOWN;
	uv_rwlock_rdlock(&h->lock);
	m = map_find(h, cluster);
	if (m && m->degraded) {
		st = HEALTH_CLUSTER_DEGRADED;
		snprintf(why, whylen, "%s", m->degraded_why);
	} else {
		snprintf(why, whylen, "%s", "");
	}
	uv_rwlock_rdunlock(&h->lock);
	return st;
}

void health_stop(struct health *h, void (*done)(void *arg), void *arg)
{
	struct checker *ck;

	h->stopped = done;
	h->stopped_arg = arg;
	uv_mutex_lock(&h->auth_mu);
	h->auth_stopping = true;
	uv_mutex_unlock(&h->auth_mu);
	/* Answer what was handed over but not yet taken, then stop taking. */
	auth_wake_cb(&h->auth_wake);
	uv_close((uv_handle_t *)&h->auth_wake, NULL);
	uv_rwlock_wrlock(&h->lock);
	free_map(h->map, h->nmap);
	h->map = NULL;
	h->nmap = 0;
	uv_rwlock_wrunlock(&h->lock);
	while ((ck = h->checkers) != NULL) {
		h->checkers = ck->next;
		checker_stop(ck);
	}
	maybe_stopped(h);
}

void health_free(struct health *h)
{
	if (h == NULL)
		return;
	TR_ASSERT(h->checkers == NULL && h->closing == 0);
	free_map(h->map, h->nmap);
	uv_rwlock_destroy(&h->lock);
	uv_mutex_destroy(&h->auth_mu);
	free(h->conninfo);
	free(h);
}
