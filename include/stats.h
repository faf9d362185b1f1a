/*
 * stats.h - counters, gauges and histograms for /metrics and /status.json
 * (pure: atomics only, no libuv, no libpq).
 *
 * Writers are the data path on any event-loop thread (sessions, the guard,
 * the health checkers, reloads); the reader is the metrics module on the
 * main loop, at scrape time. Every update is a relaxed atomic add, or for
 * bytes an add to the calling thread's own slot (summed at scrape), so the
 * splice pays one uncontended add per read or write. Nothing here is ever
 * freed before exit: a pointer from stats_cluster() stays valid, and a
 * cluster removed by a reload keeps its counters (they stop moving).
 *
 * Session states are small integers (enum client_state) the caller names
 * at render time; this module only counts them.
 */
#ifndef TR_STATS_H
#define TR_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define STATS_MAX_CLUSTERS  1024 /* as CONFIG_MAX_CLUSTERS; more share no slot */
#define STATS_MAX_STATES    16
#define STATS_MAX_SQLSTATES 64
#define STATS_RECENT        32 /* recent refusals kept for /status.json */
#define STATS_NBUCKETS      14 /* histogram buckets, +Inf not included */

struct stats_cluster;

enum stats_bytes_dir {
	STATS_FROM_CLIENT, /* read from clients */
	STATS_TO_CLIENT,   /* written to clients */
	STATS_FROM_SERVER, /* read from coordinators */
	STATS_TO_SERVER,   /* written to coordinators */
	STATS_NDIRS
};

enum stats_hist_kind { STATS_LOGIN, STATS_CHECK, STATS_NHISTS };

/*
 * The counters of the named cluster, made on first use; NULL when the table
 * is full (STATS_MAX_CLUSTERS names seen) or name is empty. Lock-free, safe
 * from any thread; the result lives until exit.
 */
struct stats_cluster *stats_cluster(const char *name);

/* A session was accepted in state (it counts in that state until it moves or ends). */
void stats_session_new(unsigned state);
/* A session moved from -> to; c is its cluster once routed, else NULL. */
void stats_session_state(struct stats_cluster *c, unsigned from, unsigned to);
/* A session in state was routed to c (pinned or by the ring): it now counts under c too. */
void stats_session_routed(struct stats_cluster *c, bool pinned, unsigned state);
/* A session in state ended (freed). */
void stats_session_end(struct stats_cluster *c, unsigned state);

/*
 * A connection or statement was refused with sqlstate (5 characters). cluster
 * and tenant may be NULL or "" when not known yet; both are copied, cut to
 * fit. Counted by SQLSTATE, and kept in the ring of recent refusals.
 */
void stats_refusal(const char *sqlstate, const char *cluster, const char *tenant);

/* n bytes moved in direction d (from the caller's thread slot: cheap on the splice). */
void stats_bytes(enum stats_bytes_dir d, size_t n);

/* One observation of ns nanoseconds: a login (accept to ReadyForQuery) or a health check. */
void stats_observe(enum stats_hist_kind k, uint64_t ns);

/* A reload finished: ok (swapped in) or failed (kept the running configuration). */
void stats_reload(bool ok);

/* --- read side (the scrape) --- */

/* Upper bound of bucket i (< STATS_NBUCKETS), in seconds. */
double stats_bucket_bound(size_t i);

struct stats_hist_view {
	uint64_t bucket[STATS_NBUCKETS + 1]; /* per bucket, last is +Inf; not cumulative */
	uint64_t count;
	double sum; /* seconds */
};
void stats_hist_read(enum stats_hist_kind k, struct stats_hist_view *out);

struct stats_cluster_view {
	const char *name; /* borrowed: lives until exit */
	uint64_t routed_pin, routed_ring;
	uint64_t refusals; /* refusals that named this cluster */
	int64_t sessions[STATS_MAX_STATES]; /* by state, now */
};
/* Copies up to cap clusters (in the order first seen); returns how many. */
size_t stats_clusters(struct stats_cluster_view *out, size_t cap);
/* The one for name; false if it has never been seen. */
bool stats_cluster_read(const char *name, struct stats_cluster_view *out);

/* Every session by state, now (routed or not). */
void stats_states(int64_t out[STATS_MAX_STATES]);

struct stats_count {
	char sqlstate[6];
	uint64_t n;
};
/* Refusals by SQLSTATE (first seen first); returns how many. */
size_t stats_refusal_counts(struct stats_count *out, size_t cap);

struct stats_refusal {
	int64_t unix_ms; /* wall clock */
	char sqlstate[6];
	char cluster[64];
	char tenant[256];
};
/* The most recent refusals, newest first (at most STATS_RECENT); returns how many. */
size_t stats_recent_refusals(struct stats_refusal *out, size_t cap);

uint64_t stats_bytes_total(enum stats_bytes_dir d);
uint64_t stats_reloads(bool ok);

/* Pooled server connections (pool_mode = session), all loops together. */
enum stats_pool_kind {
	STATS_POOL_IDLE,    /* gauge: idle in a pool */
	STATS_POOL_BUSY,    /* gauge: lent to a client, or being reset */
	STATS_POOL_CREATED, /* counter: logged in for a pool */
	STATS_POOL_REUSED,  /* counter: an idle one lent to a client */
	STATS_POOL_NKINDS
};
/* Adds d to one of them (d < 0 only for the gauges). */
void stats_pool(enum stats_pool_kind k, int d);
int64_t stats_pool_read(enum stats_pool_kind k);

#endif /* TR_STATS_H */
