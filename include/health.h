/*
 * health.h - one non-blocking libpq checker per coordinator host.
 *
 * Each checker keeps a persistent connection and probes it every interval,
 * driven by the event loop (PQconnectStart/PQconnectPoll and PQsendQuery on
 * a uv_poll_t): pg_is_in_recovery(), a primary's timeline (from
 * pg_walfile_name(pg_current_wal_lsn())), the system identifier and, for
 * guard_server_check, the tenant_guard library's tenant_guard.key, in one
 * round trip. A host is down after fail_after consecutive failures (at
 * start-up, the first failure already counts as down: nothing is known yet)
 * and up again on the first success.
 *
 * A cluster's writer is its one primary (up, not in recovery), whatever the
 * host order. A primary behind the highest timeline any host of the cluster
 * has shown for the same system identifier since the router started is a
 * stale old primary and is never the writer, even alone. Two or more
 * primaries left (the same timeline, or different system identifiers) leave
 * the cluster without a writer until all but one are gone. With
 * guard_server_check on, a host that lacks tenant_guard (or guards another
 * setting than tenant_key) is never the writer either.
 *
 * On a Citus coordinator (the probe finds citus_check_connection_to_node),
 * the writer's checker also watches the workers, every worker_interval on a
 * second connection (citus.c), so a slow worker never delays the writer
 * probe. A cluster whose writer cannot reach all its workers is degraded:
 * still routed, logged once per change.
 *
 * Checkers are keyed by (cluster, host, port): a reload that keeps a host
 * keeps its checker and its state, so routing never blinks.
 */
#ifndef TR_HEALTH_H
#define TR_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "common.h"

struct config;
struct health;

enum health_state { HEALTH_UNKNOWN, HEALTH_UP, HEALTH_DOWN };

/* A cluster as a whole: down has no writer; degraded has one that misses Citus workers. */
enum health_cluster { HEALTH_CLUSTER_UP, HEALTH_CLUSTER_DEGRADED, HEALTH_CLUSTER_DOWN };

/* What a session needs to reach a cluster's writer (a copy, not a reference). */
struct health_target {
	struct sockaddr_storage addr;
	char host[256]; /* as configured, for messages */
	uint16_t port;
};

/* Called once when every checker has finished its first check. */
typedef void (*health_ready_fn)(void *arg);

struct health *health_new(uv_loop_t *loop) MUSTCHECK;

/*
 * Starts, keeps or stops checkers to match cfg (holds no reference to cfg
 * beyond the call). ready is called once, after the first round that
 * follows the first health_apply (may be NULL).
 */
int health_apply(struct health *h, const struct config *cfg, health_ready_fn ready,
		 void *arg) MUSTCHECK;

/*
 * Fills *t with the named cluster's current writer. Returns false if it has
 * none, with the reason in why (for the client's error message: "two
 * primaries on the same timeline N: H:P and H:P", a stale primary, all
 * standbys, hosts down). Safe from any thread: the choice is made on the
 * health loop and read under the lock, and the lookup is by name, so a
 * session routing with a config older or newer than the health map still
 * gets the right cluster.
 */
bool health_writer(struct health *h, const char *cluster, struct health_target *t, char *why,
		   size_t whylen);

/*
 * The named cluster's state, for the console and metrics. why gets the
 * reason for down (as health_writer gives it) or degraded ("worker H:P
 * unreachable"), "" for up. Safe from any thread.
 */
enum health_cluster health_cluster_state(struct health *h, const char *cluster, char *why,
					 size_t whylen);

/*
 * ParameterStatus messages ('S', framed) as a healthy coordinator reported
 * them to its checker: server_version, encodings, DateStyle, TimeZone, ...
 * For a client the router answers itself. Returns the bytes written to out,
 * 0 if no coordinator is up or cap is too small. Safe from any thread.
 */
size_t health_parameter_status(struct health *h, uint8_t *out, size_t cap);

/*
 * auth_query: runs query (with user as $1) on the health connection of the
 * named cluster's writer, between checks. fn runs on loop (the caller's)
 * exactly once, unless health_auth_cancel() was called before: ok false
 * with why when the query could not run; else secret is column 2 of the
 * row ("" when no row: an unknown user). NULL if it cannot be started.
 */
struct health_auth;
typedef void (*health_auth_fn)(void *arg, bool ok, const char *secret, const char *why);
struct health_auth *health_auth_start(struct health *h, uv_loop_t *loop, const char *cluster,
				      const char *query, const char *user, health_auth_fn fn,
				      void *arg) MUSTCHECK;
/* fn will not be called; the request frees itself. Only on the requester's loop. */
void health_auth_cancel(struct health_auth *a);

/* Recent check results kept per host, for the status page. */
#define HEALTH_HISTORY 20

/* One host as the checkers see it now (for metrics; everything borrowed for the call). */
struct health_host_info {
	const char *cluster;
	const char *host;
	uint16_t port;
	enum health_state state;
	bool in_recovery;
	bool writer;	  /* the cluster's chosen writer */
	uint32_t timeline; /* 0: a standby, or not known */
	uint32_t fails;	  /* consecutive failed checks */
	const char *why;  /* the last failure's reason ("" if none) */
	uint64_t last_check_ns; /* how long the last finished check took; 0: none yet */
	/* The last checks, oldest first: '+' passed, '-' failed; NUL-terminated. */
	char history[HEALTH_HISTORY + 1];
};
typedef void (*health_host_fn)(void *arg, const struct health_host_info *hi);

/*
 * Calls fn for every host, cluster by cluster in configuration order, under
 * the read lock: fn must be quick and must not call into health. Safe from
 * any thread.
 */
void health_hosts(struct health *h, health_host_fn fn, void *arg);

/* Stops every checker; done is called when all handles are closed. */
void health_stop(struct health *h, void (*done)(void *arg), void *arg);
void health_free(struct health *h);

#endif /* TR_HEALTH_H */
