/*
 * citus.h - what the router asks a Citus coordinator (every Citus query lives in citus.c).
 *
 * A coordinator's own health check cannot see its workers: Citus's
 * metadata never marks a worker that went away, reads go on from the other
 * copy, and only writes to shards with a copy on it fail (or, with a frozen
 * worker, wait for citus.node_connection_timeout). The watch asks the
 * coordinator itself to connect to each active worker,
 * citus_check_connection_to_node() over citus_get_active_worker_nodes(),
 * on a libpq connection of its own, so a slow answer never delays the
 * writer probe on the checker's connection.
 */
#ifndef TR_CITUS_H
#define TR_CITUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common.h"

/*
 * A column for the writer probe: true when the host can run the watch's
 * query (a Citus coordinator, or anything that defines the function on the
 * checker's search_path). A catalog lookup, no extra round trip.
 */
#define CITUS_PROBE_COLUMN "to_regproc('citus_check_connection_to_node') IS NOT NULL"

enum citus_result {
	CITUS_WORKERS_OK,          /* every active worker answered the coordinator */
	CITUS_WORKERS_UNREACHABLE, /* one or more did not, or the check timed out */
	CITUS_CHECK_FAILED,        /* the check itself could not run (says nothing of workers) */
};

struct citus_report {
	enum citus_result result;
	size_t nworkers; /* rows the check returned */
	/* "worker H:P unreachable", "workers H:P, H:P unreachable", "worker check timed out ...",
	 * or the error; "" when OK. */
	char why[256];
};

struct citus_watch;

/* Called on the loop after each check; must not close the watch itself. */
typedef void (*citus_report_fn)(void *arg, const struct citus_report *r);

/*
 * A watch of one coordinator: keys/vals are libpq connection keywords
 * (NULL-terminated; copied), the first check runs at once, then one every
 * interval_ms, each bounded by timeout_ms. NULL if out of memory.
 */
struct citus_watch *citus_watch_start(uv_loop_t *loop, const char *const *keys,
                                      const char *const *vals, uint64_t interval_ms,
                                      uint64_t timeout_ms, citus_report_fn fn, void *arg) MUSTCHECK;

/* Stops checking: fn is never called again; done(arg) runs once every handle is closed. */
void citus_watch_close(struct citus_watch *w, void (*done)(void *arg), void *arg);

#endif /* TR_CITUS_H */
