/*
 * pool.c - session pooling: idle server connections kept per host and
 * startup-parameter set, handed to the next client of the same key.
 *
 * Each event loop has its own pool set (a connection belongs to one loop).
 * A pool counts every connection it is responsible for: idle, busy with a
 * client, being reset, and slots granted to clients making a new one;
 * pool_size bounds that count, max_server_conn the sum over a cluster's
 * pools on this loop. A client over a limit waits in the pool's line (FIFO)
 * until a connection comes back or a slot frees, or its query_wait_timeout
 * ends (client.c refuses it with 53300).
 *
 * What is never reused: a connection given back dirty (mid-query, mid-COPY,
 * unsynced extended protocol, a broken framing), one whose reset failed or
 * sent an ErrorResponse, one past server_lifetime, one that said anything
 * while idle, and every connection of a stale pool (its host is no longer
 * its cluster's writer, or is down): a demoted primary never gets another
 * transaction from us.
 *
 * The pool calls a waiting client only through its pool_req callback, and
 * a connection's events come here through the struct server_ops this file
 * gives it while the pool owns it.
 */
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "health.h"
#include "log.h"
#include "proto.h"
#include "server.h"
#include "stats.h"

/* How long a reset may take before the connection is closed instead. */
#define RESET_TIMEOUT_MS 10000
#define SWEEP_MS         1000

enum { PS_BUSY, PS_RESETTING, PS_IDLE };

struct pool {
	struct pool *next;
	struct pool_set *ps; /* borrowed */
	char cluster[64];
	struct health_target target;
	uint8_t *key; /* owned */
	size_t keylen;
	struct server *idle;   /* most recently used first */
	struct server *others; /* busy and resetting */
	size_t nservers;       /* idle + busy + resetting + slots granted */
	size_t nidle;
	struct pool_req *head, *tail; /* the line */
	bool stale;
	uint64_t failed_ms; /* last failed login, for server_login_retry; 0: none */
	char failed_state[6];
	char failed_why[400];
	struct pool_limits lim; /* the latest the clients gave */
	char reset_query[1025];
};

struct pool_set {
	uv_loop_t *loop;       /* borrowed */
	struct health *health; /* borrowed */
	uv_timer_t timer;
	struct pool *pools; /* owned */
	bool closing;
};

static const struct server_ops pool_sv_ops;

static void list_add(struct server **head, struct server *sv)
{
	sv->prev = NULL;
	sv->next = *head;
	if (*head)
		(*head)->prev = sv;
	*head = sv;
}

static void list_del(struct server **head, struct server *sv)
{
	if (sv->prev)
		sv->prev->next = sv->next;
	else
		*head = sv->next;
	if (sv->next)
		sv->next->prev = sv->prev;
	sv->prev = sv->next = NULL;
}

/* Connections of cluster on this loop, all pools together. */
static size_t cluster_count(struct pool_set *ps, const char *cluster)
{
	size_t n = 0;

	for (struct pool *p = ps->pools; p; p = p->next) {
		if (strcmp(p->cluster, cluster) == 0)
			n += p->nservers;
	}
	return n;
}

static bool may_grow(struct pool *p)
{
	if (p->nservers >= p->lim.pool_size)
		return false;
	return p->lim.max_server_conn == 0 ||
	       cluster_count(p->ps, p->cluster) < p->lim.max_server_conn;
}

static void wake(struct pool *p);
static void wake_cluster(struct pool_set *ps, const char *cluster);

/* Closes sv, a connection the pool owns (idle or resetting) or one given back. */
static void close_server(struct server *sv)
{
	struct pool *p = sv->pool;

	if (sv->pstate == PS_IDLE) {
		list_del(&p->idle, sv);
		p->nidle--;
		stats_pool(STATS_POOL_IDLE, -1);
	} else {
		list_del(&p->others, sv);
		stats_pool(STATS_POOL_BUSY, -1);
	}
	p->nservers--;
	sv->pool = NULL;
	server_close(sv);
	if (!p->ps->closing)
		wake_cluster(p->ps, p->cluster);
}

/* An idle connection the line may take: the pool's most recent one still young enough. */
static struct server *take_idle(struct pool *p, uint64_t now)
{
	while (p->idle) {
		struct server *sv = p->idle;

		if (p->lim.lifetime_ms && now - sv->born_ms >= p->lim.lifetime_ms) {
			close_server(sv);
			continue;
		}
		list_del(&p->idle, sv);
		p->nidle--;
		sv->pstate = PS_BUSY;
		list_add(&p->others, sv);
		stats_pool(STATS_POOL_IDLE, -1);
		stats_pool(STATS_POOL_BUSY, 1);
		stats_pool(STATS_POOL_REUSED, 1);
		return sv;
	}
	return NULL;
}

/* Moves the line: idle connections first, then new slots while the limits allow. */
static void wake(struct pool *p)
{
	uint64_t now = uv_now(p->ps->loop);

	while (p->head && !p->ps->closing) {
		struct pool_req *r = p->head;
		struct server *sv = p->stale ? NULL : take_idle(p, now);

		if (sv == NULL && !p->stale && !may_grow(p))
			return;
		p->head = r->next;
		if (p->head == NULL)
			p->tail = NULL;
		r->next = NULL;
		r->waiting = false;
		if (p->stale) {
			/* Its host is no longer the writer: the client must route again. */
			r->pool = NULL;
		} else if (sv == NULL) {
			p->nservers++;
		}
		r->ready(r, sv);
	}
}

static void wake_cluster(struct pool_set *ps, const char *cluster)
{
	for (struct pool *p = ps->pools; p; p = p->next) {
		if (p->head && strcmp(p->cluster, cluster) == 0)
			wake(p);
	}
}

/* The reset went cleanly: the connection waits for its next client. */
static void make_idle(struct server *sv)
{
	struct pool *p = sv->pool;

	list_del(&p->others, sv);
	sv->pstate = PS_IDLE;
	sv->since_ms = uv_now(p->ps->loop);
	list_add(&p->idle, sv);
	p->nidle++;
	stats_pool(STATS_POOL_BUSY, -1);
	stats_pool(STATS_POOL_IDLE, 1);
	wake_cluster(p->ps, p->cluster);
}

static bool same_host(const struct health_target *a, const struct health_target *b)
{
	return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* Closes the least recently used idle connection of another pool of p's cluster. */
static void evict_idle(struct pool_set *ps, struct pool *p)
{
	struct server *lru = NULL;

	for (struct pool *q = ps->pools; q; q = q->next) {
		if (q == p || strcmp(q->cluster, p->cluster) != 0)
			continue;
		for (struct server *sv = q->idle; sv; sv = sv->next) {
			if (lru == NULL || sv->since_ms < lru->since_ms)
				lru = sv;
		}
	}
	if (lru)
		close_server(lru);
}

static struct pool *pool_find(struct pool_set *ps, const char *cluster,
                              const struct health_target *t, const uint8_t *key, size_t keylen)
{
	for (struct pool *p = ps->pools; p; p = p->next) {
		if (!p->stale && p->keylen == keylen && same_host(&p->target, t) &&
		    strcmp(p->cluster, cluster) == 0 && memcmp(p->key, key, keylen) == 0)
			return p;
	}
	return NULL;
}

static void pool_free_one(struct pool *p)
{
	free(p->key);
	free(p);
}

/* A pool with nothing in it and nothing to remember goes. */
static bool pool_unused(const struct pool *p, uint64_t now)
{
	return p->nservers == 0 && p->head == NULL &&
	       (p->stale || p->failed_ms == 0 || now - p->failed_ms >= p->lim.login_retry_ms);
}

static void sweep_cb(uv_timer_t *t)
{
	struct pool_set *ps = t->data;
	uint64_t now = uv_now(ps->loop);
	struct pool **pp = &ps->pools;

	for (struct pool *p = ps->pools; p; p = p->next) {
		struct health_target w;
		char why[160];

		if (!p->stale && (!health_writer(ps->health, p->cluster, &w, why, sizeof(why)) ||
		                  !same_host(&w, &p->target))) {
			p->stale = true;
			log_info(
			        "pool cluster=%s host=%s:%u: no longer the writer, closing its %zu "
			        "idle connections",
			        p->cluster, p->target.host, p->target.port, p->nidle);
			wake(p);
		}
		/* A close may move the line, and with it the lists: start over after each. */
		for (struct server *sv = p->idle; sv;) {
			if (p->stale ||
			    (p->lim.idle_timeout_ms &&
			     now - sv->since_ms >= p->lim.idle_timeout_ms) ||
			    (p->lim.lifetime_ms && now - sv->born_ms >= p->lim.lifetime_ms)) {
				close_server(sv);
				sv = p->idle;
			} else {
				sv = sv->next;
			}
		}
		for (struct server *sv = p->others; sv;) {
			if (sv->pstate == PS_RESETTING && now - sv->since_ms >= RESET_TIMEOUT_MS) {
				log_warn("pool cluster=%s host=%s:%u: reset took too long, closing",
				         p->cluster, p->target.host, p->target.port);
				close_server(sv);
				sv = p->others;
			} else {
				sv = sv->next;
			}
		}
	}
	while (*pp) {
		struct pool *p = *pp;

		if (pool_unused(p, now)) {
			*pp = p->next;
			pool_free_one(p);
		} else {
			pp = &p->next;
		}
	}
}

struct pool_set *pool_set_new(uv_loop_t *loop, struct health *health)
{
	struct pool_set *ps = calloc(1, sizeof(*ps));

	if (ps == NULL)
		return NULL;
	ps->loop = loop;
	ps->health = health;
	uv_timer_init(loop, &ps->timer);
	ps->timer.data = ps;
	uv_timer_start(&ps->timer, sweep_cb, SWEEP_MS, SWEEP_MS);
	/* Idle connections alone do not keep the loop running; the timer neither. */
	uv_unref((uv_handle_t *)&ps->timer);
	return ps;
}

static void noop_close_cb(uv_handle_t *h)
{
}

void pool_set_shutdown(struct pool_set *ps)
{
	if (ps == NULL || ps->closing)
		return;
	ps->closing = true;
	for (struct pool *p = ps->pools; p; p = p->next) {
		while (p->idle)
			close_server(p->idle);
		for (struct server *sv = p->others, *next; sv; sv = next) {
			next = sv->next;
			if (sv->pstate == PS_RESETTING)
				close_server(sv);
		}
	}
	if (!uv_is_closing((uv_handle_t *)&ps->timer))
		uv_close((uv_handle_t *)&ps->timer, noop_close_cb);
}

void pool_set_free(struct pool_set *ps)
{
	if (ps == NULL)
		return;
	while (ps->pools) {
		struct pool *p = ps->pools;

		ps->pools = p->next;
		pool_free_one(p);
	}
	free(ps);
}

enum pool_take pool_acquire(struct pool_set *ps, const char *cluster,
                            const struct health_target *target, const uint8_t *key, size_t keylen,
                            const struct pool_limits *lim, struct pool_req *r, struct server **out,
                            const char **why, char sqlstate[6])
{
	uint64_t now;
	struct pool *p;

	r->pool = NULL;
	r->waiting = false;
	r->next = NULL;
	*out = NULL;
	if (ps == NULL || ps->closing)
		return POOL_SLOT;
	now = uv_now(ps->loop);
	p = pool_find(ps, cluster, target, key, keylen);
	if (p == NULL) {
		p = calloc(1, sizeof(*p));
		if (p == NULL || (p->key = malloc(keylen ? keylen : 1)) == NULL) {
			free(p);
			return POOL_SLOT;
		}
		p->ps = ps;
		snprintf(p->cluster, sizeof(p->cluster), "%s", cluster);
		p->target = *target;
		memcpy(p->key, key, keylen);
		p->keylen = keylen;
		p->next = ps->pools;
		ps->pools = p;
	}
	p->lim = *lim;
	snprintf(p->reset_query, sizeof(p->reset_query), "%s", lim->reset_query);
	p->lim.reset_query = p->reset_query;
	r->pool = p;
	if (p->failed_ms && now - p->failed_ms < lim->login_retry_ms && p->nidle == 0) {
		*why = p->failed_why;
		memcpy(sqlstate, p->failed_state, 6);
		r->pool = NULL;
		return POOL_REFUSE;
	}
	/* Nobody may overtake the line. */
	if (p->head == NULL) {
		*out = take_idle(p, now);
		if (*out)
			return POOL_GOT;
		/* At max_server_conn, an idle connection of another key gives way. */
		if (!may_grow(p) && p->nservers < p->lim.pool_size)
			evict_idle(ps, p);
		if (p->head == NULL && may_grow(p)) {
			p->nservers++;
			return POOL_SLOT;
		}
	}
	r->waiting = true;
	if (p->tail)
		p->tail->next = r;
	else
		p->head = r;
	p->tail = r;
	return POOL_WAIT;
}

void pool_cancel(struct pool_req *r)
{
	struct pool *p = r->pool;
	struct pool_req **pp;

	if (p == NULL || !r->waiting)
		return;
	r->waiting = false;
	for (pp = &p->head; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	}
	p->tail = NULL;
	for (struct pool_req *q = p->head; q; q = q->next)
		p->tail = q;
	r->next = NULL;
}

void pool_slot_done(struct pool *p, const char *sqlstate, const char *why)
{
	if (p == NULL)
		return;
	p->nservers--;
	if (why) {
		p->failed_ms = uv_now(p->ps->loop);
		snprintf(p->failed_state, sizeof(p->failed_state), "%s", sqlstate);
		snprintf(p->failed_why, sizeof(p->failed_why), "%s", why);
	}
	if (!p->ps->closing)
		wake_cluster(p->ps, p->cluster);
}

void pool_adopt(struct pool *p, struct server *sv)
{
	sv->pool = p;
	sv->pstate = PS_BUSY;
	sv->dirty = false;
	p->failed_ms = 0;
	list_add(&p->others, sv);
	stats_pool(STATS_POOL_BUSY, 1);
	stats_pool(STATS_POOL_CREATED, 1);
}

/* Sends one simple Query; false when the write failed. */
static bool send_query(struct server *sv, const char *sql)
{
	return server_send_msg(sv, 'Q', sql, strlen(sql) + 1) == 0;
}

void pool_release(struct server *sv, bool clean, char txn, const struct pool_limits *lim)
{
	struct pool *p = sv->pool;
	uint64_t now;
	bool rollback = txn != 'I';
	const char *reset;

	server_adopt(sv, &pool_sv_ops, sv);
	sv->c.peer = NULL;
	sv->c.halted = sv->c.closed;
	now = uv_now(p->ps->loop);
	if (!clean || sv->dirty || p->stale || p->ps->closing || sv->c.closed ||
	    (lim->lifetime_ms && now - sv->born_ms >= lim->lifetime_ms)) {
		close_server(sv);
		return;
	}
	reset = p->reset_query;
	/* The framer reads the reset's answers; any type may come. */
	sv->hlen = 0;
	sv->got_ready = true;
	sv->ready = false;
	sv->pstate = PS_RESETTING;
	sv->since_ms = now;
	sv->resets_left = (uint8_t)(rollback + (reset[0] != '\0'));
	if (sv->resets_left == 0) {
		make_idle(sv);
		return;
	}
	if ((rollback && !send_query(sv, "ROLLBACK")) || (reset[0] && !send_query(sv, reset))) {
		close_server(sv);
		return;
	}
	sv->c.paused = false;
	conn_start_reading(&sv->c);
}

size_t pool_idle_count(const struct pool_set *ps)
{
	size_t n = 0;

	for (const struct pool *p = ps ? ps->pools : NULL; p; p = p->next)
		n += p->nidle;
	return n;
}

/* Connection events while the pool owns it: anything unexpected closes it. */
static void sv_connected(struct server *sv)
{
}

static void sv_fail(struct server *sv, const char *sqlstate, const char *hint, const char *msg)
{
	close_server(sv);
}

static void sv_data(struct server *sv, struct block *b, size_t n)
{
	char why[160];
	bool ok;

	if (sv->pstate != PS_RESETTING) {
		/* An idle connection said something (it is going away, or broken). */
		block_put(b);
		close_server(sv);
		return;
	}
	ok = server_login_bytes(sv, (const uint8_t *)b->data, n, why, sizeof(why));
	block_put(b);
	if (!ok && sv->pool)
		close_server(sv);
}

static bool sv_msg(struct server *sv, uint8_t type, const uint8_t *body, size_t len)
{
	switch (type) {
	case 'E':
		sv->dirty = true;
		return true;
	case 'S':
		server_keep_param(sv, body, len);
		return true;
	case 'Z':
		if (--sv->resets_left > 0)
			return true;
		if (sv->dirty || len < 1 || body[0] != 'I')
			close_server(sv);
		else
			make_idle(sv);
		return false;
	default:
		return true;
	}
}

static void sv_rest(struct server *sv, const uint8_t *p, size_t n)
{
}

static void sv_end(struct server *sv, int err)
{
	close_server(sv);
}

static void sv_send_failed(struct server *sv, int rc)
{
	close_server(sv);
}

static void sv_writable(struct server *sv)
{
}

static void sv_shutdown(struct server *sv)
{
	close_server(sv);
}

static void sv_fatal(struct server *sv, int err)
{
	close_server(sv);
}

static const struct server_ops pool_sv_ops = {
        .on_connected = sv_connected,
        .on_fail = sv_fail,
        .on_data = sv_data,
        .on_login_msg = sv_msg,
        .on_login_rest = sv_rest,
        .on_end = sv_end,
        .on_send_failed = sv_send_failed,
        .on_writable = sv_writable,
        .on_shutdown = sv_shutdown,
        .on_fatal = sv_fatal,
};
