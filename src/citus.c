/*
 * citus.c - the worker watch of a Citus coordinator, on its own libpq
 * connection, driven by the event loop like health.c's checkers (uv_poll on
 * libpq's socket, one timer that is the next tick while idle and the
 * check's bound while it runs).
 *
 * Why this query, measured on Citus 13.2.2 with a worker frozen by SIGSTOP
 * (TCP still accepts, nothing answers):
 *  - citus_check_cluster_node_health() checks every node from every node,
 *    each hop with that node's own citus.node_connection_timeout (30 s by
 *    default): one frozen worker kept it busy past 8 s. It also needs the
 *    workers to reach each other, which is not what sessions depend on.
 *  - citus_check_connection_to_node() run on the coordinator for each
 *    active worker answers false for the frozen one after our
 *    citus.node_connection_timeout (2.0 s for 2 s), true for the others.
 *  - but over a connection Citus had cached from an earlier check it hung
 *    for as long as the worker stayed frozen (10 minutes in our run), deaf
 *    to statement_timeout. Hence citus.max_cached_conns_per_worker = 0:
 *    each check opens fresh connections, which node_connection_timeout
 *    bounds. Three connections every worker_interval is a small price.
 * statement_timeout bounds the whole check on the server; our own timer,
 * a second later, bounds it on our side should the coordinator not answer
 * at all (it then drops the connection and starts afresh next time).
 */
#include "citus.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <uv.h>

#include "log.h"

#define CITUS_CHECK_SQL                                                           \
	"SET citus.node_connection_timeout = %llu; "                              \
	"SET citus.max_cached_conns_per_worker = 0; "                             \
	"SET statement_timeout = %llu; "                                          \
	"SELECT node_name, node_port, citus_check_connection_to_node(node_name, " \
	"node_port::int) FROM citus_get_active_worker_nodes() ORDER BY 1, 2"

/* How many unreachable workers a report names; the rest are counted. */
#define CITUS_NAMED      4
#define CITUS_MAX_PARAMS 24

enum wphase { W_IDLE, W_CONNECT, W_QUERY };

struct wpoll {
	uv_poll_t handle;
	int fd;
	struct citus_watch *w; /* borrowed */
};

struct citus_watch {
	uv_loop_t *loop;
	char *keys[CITUS_MAX_PARAMS + 1]; /* owned, NULL-terminated */
	char *vals[CITUS_MAX_PARAMS + 1]; /* owned */
	char sql[512];
	uint64_t interval_ms, timeout_ms;
	citus_report_fn fn;
	void *arg;
	PGconn *conn;       /* owned */
	struct wpoll *poll; /* owned until its close callback */
	uv_timer_t timer;
	enum wphase phase;
	uint64_t started;
	/* The check under way. */
	struct citus_report rep;
	bool got_rows;
	char error[200];
	bool timed_out;
	size_t nbad;
	char named[CITUS_NAMED][280];
	/* Closing: done runs when the timer and any poll handle are closed. */
	bool closing;
	unsigned open_handles;
	void (*done)(void *arg);
	void *done_arg;
};

static void watch_timer_cb(uv_timer_t *t);
static void watch_poll_cb(uv_poll_t *p, int status, int events);

static void maybe_freed(struct citus_watch *w)
{
	void (*done)(void *);
	void *arg;

	if (!w->closing || w->open_handles > 0)
		return;
	done = w->done;
	arg = w->done_arg;
	for (size_t i = 0; w->keys[i]; i++) {
		free(w->keys[i]);
		free(w->vals[i]);
	}
	free(w);
	if (done)
		done(arg);
}

static void wpoll_close_cb(uv_handle_t *h)
{
	struct wpoll *p = container_of((uv_poll_t *)h, struct wpoll, handle);
	struct citus_watch *w = p->w;

	free(p);
	w->open_handles--;
	maybe_freed(w);
}

static void drop_conn(struct citus_watch *w)
{
	if (w->poll) {
		uv_poll_stop(&w->poll->handle);
		uv_close((uv_handle_t *)&w->poll->handle, wpoll_close_cb);
		w->poll = NULL;
	}
	if (w->conn) {
		PQfinish(w->conn);
		w->conn = NULL;
	}
}

static void schedule(struct citus_watch *w)
{
	uint64_t elapsed = uv_now(w->loop) - w->started;

	w->phase = W_IDLE;
	uv_timer_start(&w->timer, watch_timer_cb,
	               elapsed >= w->interval_ms ? 0 : w->interval_ms - elapsed, 0);
}

/* Ends a check: reports, then waits for the next tick. */
static void finish(struct citus_watch *w, enum citus_result result, const char *fmt, ...)
        PRINTF_LIKE(3, 4);

static void finish(struct citus_watch *w, enum citus_result result, const char *fmt, ...)
{
	struct citus_report rep = w->rep;
	va_list ap;

	rep.result = result;
	va_start(ap, fmt);
	vsnprintf(rep.why, sizeof(rep.why), fmt, ap);
	va_end(ap);
	if (result != CITUS_WORKERS_OK)
		log_debug("health: citus worker check: %s", rep.why);
	schedule(w);
	w->fn(w->arg, &rep);
}

static void fail(struct citus_watch *w, const char *what, const char *msg)
{
	char line[200];

	log_first_line(line, sizeof(line), msg, true);
	drop_conn(w);
	finish(w, CITUS_CHECK_FAILED, "worker check failed: %s%s", what, line);
}

static int watch(struct citus_watch *w, int events)
{
	int fd = PQsocket(w->conn);
	int rc;

	if (fd < 0)
		return UV_EBADF;
	if (w->poll && w->poll->fd != fd) {
		uv_poll_stop(&w->poll->handle);
		uv_close((uv_handle_t *)&w->poll->handle, wpoll_close_cb);
		w->poll = NULL;
	}
	if (w->poll == NULL) {
		w->poll = malloc(sizeof(*w->poll));
		if (w->poll == NULL)
			return UV_ENOMEM;
		rc = uv_poll_init(w->loop, &w->poll->handle, fd);
		if (rc < 0) {
			free(w->poll);
			w->poll = NULL;
			return rc;
		}
		w->poll->fd = fd;
		w->poll->w = w;
		w->poll->handle.data = w;
		w->open_handles++;
	}
	uv_poll_stop(&w->poll->handle);
	return uv_poll_start(&w->poll->handle, events, watch_poll_cb);
}

static void send_check(struct citus_watch *w)
{
	int rc;

	w->phase = W_QUERY;
	w->got_rows = false;
	w->error[0] = '\0';
	w->timed_out = false;
	w->nbad = 0;
	memset(&w->rep, 0, sizeof(w->rep));
	if (!PQsendQuery(w->conn, w->sql)) {
		fail(w, "", PQerrorMessage(w->conn));
		return;
	}
	rc = PQflush(w->conn);
	if (rc < 0) {
		fail(w, "", PQerrorMessage(w->conn));
		return;
	}
	if (watch(w, UV_READABLE | (rc == 1 ? UV_WRITABLE : 0)) < 0)
		fail(w, "", "poll failed");
}

static void read_rows(struct citus_watch *w, const PGresult *res)
{
	int n = PQntuples(res);

	w->got_rows = true;
	w->rep.nworkers = (size_t)n;
	for (int i = 0; i < n; i++) {
		/* NULL (the check could not even run) counts as unreachable too. */
		if (!PQgetisnull(res, i, 2) && PQgetvalue(res, i, 2)[0] == 't')
			continue;
		if (w->nbad < CITUS_NAMED)
			snprintf(w->named[w->nbad], sizeof(w->named[0]), "%.200s:%.10s",
			         PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
		w->nbad++;
	}
}

static void report_rows(struct citus_watch *w)
{
	char list[256] = "";
	size_t len = 0;

	if (w->nbad == 0) {
		finish(w, CITUS_WORKERS_OK, "%zu workers reachable", w->rep.nworkers);
		return;
	}
	for (size_t i = 0; i < w->nbad && i < CITUS_NAMED; i++) {
		int k = snprintf(list + len, sizeof(list) - len, "%s%s", i ? ", " : "",
		                 w->named[i]);

		if (k < 0 || (size_t)k >= sizeof(list) - len)
			break;
		len += (size_t)k;
	}
	if (w->nbad > CITUS_NAMED)
		finish(w, CITUS_WORKERS_UNREACHABLE, "workers %s and %zu more unreachable", list,
		       w->nbad - CITUS_NAMED);
	else
		finish(w, CITUS_WORKERS_UNREACHABLE, "worker%s %s unreachable",
		       w->nbad > 1 ? "s" : "", list);
}

static void read_results(struct citus_watch *w)
{
	PGresult *res;

	if (!PQconsumeInput(w->conn)) {
		fail(w, "", PQerrorMessage(w->conn));
		return;
	}
	while (!PQisBusy(w->conn)) {
		res = PQgetResult(w->conn);
		if (res == NULL) {
			if (w->timed_out)
				finish(w, CITUS_WORKERS_UNREACHABLE,
				       "worker check timed out after %llu ms (statement_timeout)",
				       (unsigned long long)w->timeout_ms);
			else if (w->error[0])
				finish(w, CITUS_CHECK_FAILED, "worker check failed: %s", w->error);
			else if (!w->got_rows)
				finish(w, CITUS_CHECK_FAILED, "worker check failed: no rows");
			else
				report_rows(w);
			/* Between checks, only watch for the server going away. */
			if (w->conn && watch(w, UV_READABLE) < 0)
				drop_conn(w);
			return;
		}
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQnfields(res) == 3) {
			read_rows(w, res);
		} else if (PQresultStatus(res) == PGRES_FATAL_ERROR && !w->error[0]) {
			const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

			/* 57014: query_canceled, here our statement_timeout. */
			w->timed_out = state && strcmp(state, "57014") == 0;
			log_first_line(w->error, sizeof(w->error), PQresultErrorMessage(res), true);
		}
		PQclear(res);
	}
}

static void connect_step(struct citus_watch *w)
{
	int rc;

	switch (PQconnectPoll(w->conn)) {
	case PGRES_POLLING_READING:
		rc = watch(w, UV_READABLE);
		break;
	case PGRES_POLLING_WRITING:
		rc = watch(w, UV_WRITABLE);
		break;
	case PGRES_POLLING_OK:
		if (PQsetnonblocking(w->conn, 1) != 0) {
			fail(w, "", PQerrorMessage(w->conn));
			return;
		}
		send_check(w);
		return;
	case PGRES_POLLING_FAILED:
	default:
		fail(w, "connecting to the coordinator: ", PQerrorMessage(w->conn));
		return;
	}
	if (rc < 0)
		fail(w, "", "poll failed");
}

static void watch_poll_cb(uv_poll_t *p, int status, int events)
{
	struct citus_watch *w = p->data;

	/* As in health.c: POLLERR stops the handle; libpq finds the reason. */
	if (status < 0)
		events = UV_READABLE | UV_WRITABLE;
	switch (w->phase) {
	case W_CONNECT:
		connect_step(w);
		break;
	case W_QUERY:
		if (events & UV_WRITABLE) {
			int rc = PQflush(w->conn);

			if (rc < 0) {
				fail(w, "", PQerrorMessage(w->conn));
				return;
			}
			if (rc == 0 && watch(w, UV_READABLE) < 0) {
				fail(w, "", "poll failed");
				return;
			}
		}
		if (events & UV_READABLE)
			read_results(w);
		break;
	case W_IDLE:
		/* A notice, or the server closing on us: reconnect at the next check. */
		if (!PQconsumeInput(w->conn) || PQstatus(w->conn) != CONNECTION_OK) {
			drop_conn(w);
			return;
		}
		while (!PQisBusy(w->conn)) {
			PGresult *res = PQgetResult(w->conn);

			if (res == NULL)
				break;
			PQclear(res);
		}
		if (status < 0)
			drop_conn(w);
		break;
	}
}

static void notice_cb(void *arg, const char *msg)
{
	char line[200];

	(void)arg;
	log_first_line(line, sizeof(line), msg, true);
	log_debug("health: citus worker check notice: %s", line);
}

static void start_check(struct citus_watch *w)
{
	w->started = uv_now(w->loop);
	/* statement_timeout ends the check on the server; this is for a server that is gone. */
	uv_timer_start(&w->timer, watch_timer_cb, w->timeout_ms + 1000, 0);
	if (w->conn && PQstatus(w->conn) == CONNECTION_OK) {
		send_check(w);
		return;
	}
	drop_conn(w);
	w->phase = W_CONNECT;
	w->conn =
	        PQconnectStartParams((const char *const *)w->keys, (const char *const *)w->vals, 1);
	if (w->conn == NULL) {
		finish(w, CITUS_CHECK_FAILED, "worker check failed: out of memory");
		return;
	}
	if (PQstatus(w->conn) == CONNECTION_BAD) {
		fail(w, "", PQerrorMessage(w->conn));
		return;
	}
	PQsetNoticeProcessor(w->conn, notice_cb, w);
	if (watch(w, UV_WRITABLE) < 0)
		fail(w, "", "poll failed");
}

static void watch_timer_cb(uv_timer_t *t)
{
	struct citus_watch *w = container_of(t, struct citus_watch, timer);

	switch (w->phase) {
	case W_IDLE:
		start_check(w);
		break;
	case W_CONNECT:
	case W_QUERY:
		/* The coordinator does not answer: our writer probe will say so too. */
		drop_conn(w);
		finish(w, CITUS_WORKERS_UNREACHABLE, "worker check timed out after %llu ms",
		       (unsigned long long)(w->timeout_ms + 1000));
		break;
	}
}

static void timer_close_cb(uv_handle_t *h)
{
	struct citus_watch *w = container_of((uv_timer_t *)h, struct citus_watch, timer);

	w->open_handles--;
	maybe_freed(w);
}

struct citus_watch *citus_watch_start(uv_loop_t *loop, const char *const *keys,
                                      const char *const *vals, uint64_t interval_ms,
                                      uint64_t timeout_ms, citus_report_fn fn, void *arg)
{
	struct citus_watch *w = calloc(1, sizeof(*w));
	uint64_t node_ms = timeout_ms / 4;
	size_t n = 0;

	if (w == NULL)
		return NULL;
	for (; n < CITUS_MAX_PARAMS && keys[n]; n++) {
		w->keys[n] = strdup(keys[n]);
		w->vals[n] = strdup(vals[n]);
		if (w->keys[n] == NULL || w->vals[n] == NULL) {
			free(w->keys[n]);
			free(w->vals[n]);
			w->keys[n] = NULL;
			goto fail;
		}
	}
	w->loop = loop;
	w->interval_ms = interval_ms;
	w->timeout_ms = timeout_ms;
	w->fn = fn;
	w->arg = arg;
	/*
	 * Each frozen worker costs one node_connection_timeout, one after the
	 * other: a quarter of the bound names up to three of them in time.
	 * 10 ms is Citus's own minimum.
	 */
	if (node_ms < 10)
		node_ms = 10;
	snprintf(w->sql, sizeof(w->sql), CITUS_CHECK_SQL, (unsigned long long)node_ms,
	         (unsigned long long)timeout_ms);
	if (uv_timer_init(loop, &w->timer) < 0)
		goto fail;
	w->open_handles = 1;
	w->phase = W_IDLE;
	uv_timer_start(&w->timer, watch_timer_cb, 0, 0);
	return w;
fail:
	for (size_t i = 0; w->keys[i]; i++) {
		free(w->keys[i]);
		free(w->vals[i]);
	}
	free(w);
	return NULL;
}

void citus_watch_close(struct citus_watch *w, void (*done)(void *arg), void *arg)
{
	w->closing = true;
	w->done = done;
	w->done_arg = arg;
	drop_conn(w);
	uv_timer_stop(&w->timer);
	uv_close((uv_handle_t *)&w->timer, timer_close_cb);
}
