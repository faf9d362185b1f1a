/*
 * pool.h - server connections that outlive their clients (pool_mode =
 * session), one set of pools per event loop.
 *
 * A pool holds the connections to one host for one key: the database, the
 * user and every startup parameter that sets session state (the tenant
 * setting included), everything but application_name. A client takes an
 * idle connection, or the right to make a new one (a slot: the client
 * logs in with its own credentials), or waits in line. At logout the
 * client gives the connection back; the pool resets it (ROLLBACK first if
 * a transaction was open, then server_reset_query) and keeps it only if
 * that went cleanly.
 *
 * Health: every second the pools compare their host with their cluster's
 * writer (health.c). A pool whose host is no longer the writer, or is
 * down, goes stale: its idle connections are closed, its busy ones are
 * closed when given back, and it never hands out a connection again.
 *
 * The pool calls its clients only through the pool_req callback they
 * gave; it never names client code.
 */
#ifndef TR_POOL_H
#define TR_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common.h"
#include "health.h"

struct pool;
struct pool_set;
struct server;
struct health;

/* A client waiting for a connection, in the caller's memory. */
struct pool_req {
	struct pool_req *next; /* the pool's line */
	struct pool *pool;     /* borrowed: set by pool_acquire */
	bool waiting;
	/*
	 * The line moved: sv is an idle connection now the caller's (attach
	 * it), or NULL: a slot, make a new connection (pool_slot_done or
	 * pool_adopt afterwards).
	 */
	void (*ready)(struct pool_req *r, struct server *sv);
};

/* What pool_acquire gives. */
enum pool_take {
	POOL_GOT,    /* *out: an idle, clean connection, now the caller's */
	POOL_SLOT,   /* make a new connection; it counts against the limits already */
	POOL_WAIT,   /* the request waits in line: ready() follows, or pool_cancel */
	POOL_REFUSE, /* a login failed within server_login_retry: *why says what failed */
};

/* Limits and timings, from the configuration at the moment. */
struct pool_limits {
	uint32_t pool_size;
	uint32_t max_server_conn; /* per cluster on this loop; 0: no limit */
	uint64_t idle_timeout_ms, lifetime_ms, login_retry_ms;
	const char *reset_query; /* borrowed; "" for none */
};

struct pool_set *pool_set_new(uv_loop_t *loop, struct health *health) MUSTCHECK;
/* Closes every idle connection and stops the timer (shutdown). */
void pool_set_shutdown(struct pool_set *ps);
/* Frees the set once its loop has run its close callbacks. */
void pool_set_free(struct pool_set *ps);

/*
 * A connection for key (keylen bytes) to target, of cluster. *why: the
 * message of the last failed login (POOL_REFUSE), with its SQLSTATE in
 * sqlstate[6]. NULL pool set or out of memory: POOL_SLOT without a pool
 * (r->pool NULL), as without pooling.
 */
enum pool_take pool_acquire(struct pool_set *ps, const char *cluster,
                            const struct health_target *target, const uint8_t *key, size_t keylen,
                            const struct pool_limits *lim, struct pool_req *r, struct server **out,
                            const char **why, char sqlstate[6]);
/* The waiting client left. */
void pool_cancel(struct pool_req *r);
/* A slot's connection failed or was never made (why: its error, for server_login_retry). */
void pool_slot_done(struct pool *p, const char *sqlstate, const char *why);
/* A slot's connection has logged in: it belongs to p from now on (busy). */
void pool_adopt(struct pool *p, struct server *sv);
/*
 * The client is done with sv (a connection of a pool). clean: at a message
 * boundary with nothing in flight; txn: the last ReadyForQuery's status.
 * The pool resets and keeps it, or closes it. The caller must not touch
 * sv afterwards.
 */
void pool_release(struct server *sv, bool clean, char txn, const struct pool_limits *lim);
/* Counters of this loop's pools, for logs and tests. */
size_t pool_idle_count(const struct pool_set *ps);

#endif /* TR_POOL_H */
