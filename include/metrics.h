/*
 * metrics.h - the HTTP endpoints for operators: /metrics (Prometheus text
 * format 0.0.4), /status.json, / (a self-contained status page that reads
 * /status.json) and /healthz (for load balancers and HEALTHCHECK).
 *
 * Served from one event loop (the main one) by http.c; everything shown is
 * read at request time from stats.h counters, the health checkers and the
 * current configuration, which the owner hands over as callbacks.
 */
#ifndef TR_METRICS_H
#define TR_METRICS_H

#include <stdbool.h>

#include <uv.h>

#include "common.h"

struct config;
struct dirsync;
struct health;
struct host_port;
struct metrics;

struct metrics_source {
	const char *version;   /* borrowed: a literal */
	struct health *health; /* borrowed: outlives the metrics */
	struct dirsync *dir;   /* borrowed; NULL without a tenant directory */
	/* The current configuration snapshot, borrowed for the request. */
	const struct config *(*config)(void *arg);
	/* True while the router listens for clients (false before start-up and while draining). */
	bool (*accepting)(void *arg);
	void *arg;
};

/* Listens on at (on loop). NULL if it cannot, with a line logged. */
struct metrics *metrics_start(uv_loop_t *loop, const struct host_port *at,
                              const struct metrics_source *src) MUSTCHECK;

/* Stops listening and closes every HTTP connection; frees itself when closed. */
void metrics_stop(struct metrics *m);

#endif /* TR_METRICS_H */
