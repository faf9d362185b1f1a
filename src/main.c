/*
 * main.c - command line, start-up, signals, reload and graceful shutdown.
 *
 *   tenant-router -c FILE                 run in the foreground
 *   tenant-router --check -c FILE         validate a configuration
 *   tenant-router route -c FILE TENANT... print where tenants go
 *   tenant-router federation -c FILE ...  SQL of a read federation (or --apply it)
 *
 * Start-up order: load the config, start the health checkers, and only
 * after their first round listen and tell systemd READY=1, so the first
 * client never meets an "unknown" cluster. SIGHUP loads a new config on the
 * thread pool (a big pins file must not stall the loop) and swaps it in;
 * a broken one is logged and dropped. SIGTERM/SIGINT stop accepting and
 * wait for sessions up to shutdown_timeout; a second signal closes them now.
 *
 * Threads: `threads = N` runs N event loops. Worker 0 is the main loop,
 * which also owns signals, reloads and the health checkers; every worker
 * has its own SO_REUSEPORT listener and its own sessions. The main loop
 * talks to the others only through each worker's uv_async_t and a small
 * mailbox under a mutex (a new config, drain, close all, stop). The admin
 * console runs on any loop; what it asks of the daemon (RELOAD, SHUTDOWN,
 * PIN, UNPIN) comes to the main loop through an inbox of its own and goes
 * back through a second async handle per worker, which also makes each loop
 * end the sessions KILL marked in the roster.
 *
 * Rolling restart: every listener has SO_REUSEPORT, also with one thread,
 * so a second process can listen on the same addresses. With
 * peer_socket_dir set, the new process takes the old one's listening
 * sockets themselves (peer.c) before it listens, so closing them in the
 * old process at SIGTERM resets nothing that was queued.
 */
#include <errno.h>
#include <netinet/in.h>
#include <sys/types.h>
#include <stdatomic.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <uv.h>

#include "cancel.h"
#include "client.h"
#include "config.h"
#include "dircli.h"
#include "dirsync.h"
#include "federation.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "admin.h"
#include "peer.h"
#include "pool.h"
#include "pins.h"
#include "ring.h"
#include "route.h"
#include "roster.h"
#include "router.h"
#include "sdnotify.h"
#include "splice.h"
#include "stats.h"

#define RELOAD_ERR_CAP 16384
#define MAX_THREADS 64
/* Listening sockets per worker: one per address, plus any handed over by a process with more threads. */
#define WORKER_MAX_LISTENERS (CONFIG_MAX_LISTEN * 4)
/* How long a new process waits for the one it replaces to hand its sockets over. */
#define PEER_TAKE_TIMEOUT_MS 1000

struct worker {
	int index;
	uv_loop_t own_loop; /* workers > 0 */
	uv_loop_t *loop;    /* borrowed: own_loop, or the main loop for worker 0 */
	struct router rt;
	uv_tcp_t listeners[WORKER_MAX_LISTENERS];
	size_t nlisteners;
	struct log_limit accept_log; /* failed accepts, one line per second */
	uv_async_t wake; /* workers > 0 */
	uv_thread_t thread;
	bool started;
	/* Mailbox from the main loop, under lock. */
	uv_mutex_t lock;
	struct config *pending; /* owned reference */
	bool drain, close_all, stop;
	struct admin_req *replies; /* console answers for this loop, under lock */
	uv_async_t admin_async;	   /* on this worker's loop: answers and kills */
	bool admin_async_inited;
	atomic_uint_fast64_t gen; /* generation of the snapshot this loop routes with */
	uv_timer_t dir_tick; /* with a directory: counts (and ends) sessions of moving tenants */
	/* A reload's ring change to check against this loop's sessions (reload_check). */
	struct config *check; /* owned reference */
	bool checked;
	size_t moved;           /* sessions whose tenant the new ring would move */
	char moved_tenant[400]; /* the first of them, with its clusters */
};

struct daemon {
	uv_loop_t loop;
	const char *config_path;
	struct config *cfg; /* owned reference: the main loop's current snapshot */
	struct health *health;
	struct cancel_map *cancels;
	size_t nworkers;
	struct worker *workers; /* owned array */
	atomic_size_t live;	/* sessions across all workers */
	atomic_size_t held;	/* bytes the guard holds across all workers */
	struct limits limits;	/* the open file budget, shared by the workers */
	bool draining;
	uv_async_t empty_async; /* a worker's last session ended while draining */
	uv_signal_t sighup, sigterm, sigint;
	uv_timer_t shutdown_timer;
	uv_work_t reload_work;
	bool reloading, reload_again;
	struct config *reload_result;
	char reload_err[RELOAD_ERR_CAP];
	bool finishing;
	int exit_code;
	struct metrics *metrics; /* owned; NULL unless metrics_listen */
	/* Console requests for the main loop (admin_submit), from any loop. */
	uv_mutex_t admin_lock;
	struct admin_req *admin_inbox; /* under admin_lock */
	uv_async_t admin_in;
	struct admin_req *reload_waiting; /* RELOADs answered by the reload running now */
	struct admin_req *reload_next;	  /* RELOADs answered by the next one */
	struct admin_req *pin_queue;	  /* PIN/UNPIN waiting for the reload or pin before */
	struct pin_job *pin_job;	  /* the pin change running, or NULL */
	struct dirsync *dir;              /* owned; NULL without [directory] conninfo */
	bool health_ready, dir_ready;     /* both before we listen */
	struct config *checking; /* owned reference: a reload waiting for the loops' check */
	uv_async_t check_async;  /* a loop has checked */
};

static struct daemon D;

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: tenant-router -c FILE               run in the foreground\n"
	        "       tenant-router --check -c FILE       validate a configuration\n"
	        "       tenant-router route -c FILE TENANT...  show where tenants go\n"
	        "       tenant-router federation -c FILE --dbname DB [--schema S]... [--apply "
	        "DSN]\n"
	        "                                           SQL of a read federation (see README)\n"
	        "       tenant-router directory init -c FILE  create the tenant directory schema\n"
	        "       tenant-router move TENANT --to CLUSTER -c FILE [--no-copy] "
	        "[--delete-source]\n"
	        "       tenant-router plan -c FILE [--add-cluster NAME[:W]] [--remove-cluster "
	        "NAME]\n"
	        "                      [--weight NAME:W] [--tenants FILE] [--freeze]\n"
	        "       tenant-router --version\n");
}

/* Joins a multi-line problem report into one log line. */
static void one_line(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && s[n - 1] == '\n')
		s[--n] = '\0';
	for (char *p = s; *p; p++) {
		if (*p == '\n')
			*p = ';';
	}
}

static void close_noop_cb(uv_handle_t *h)
{
}

static void walk_close_cb(uv_handle_t *h, void *arg)
{
	if (!uv_is_closing(h))
		uv_close(h, close_noop_cb);
}

struct release {
	uv_work_t work;
	struct config *cfg; /* owned reference */
};

static void release_work_cb(uv_work_t *w)
{
	config_unref(container_of(w, struct release, work)->cfg);
}

static void release_after_cb(uv_work_t *w, int status)
{
	free(container_of(w, struct release, work));
}

/*
 * Drops a reference on the thread pool: the last one frees the snapshot,
 * and unmapping a table of ten million pins takes tens of milliseconds that
 * no event loop should stall for.
 */
static void release_config(uv_loop_t *loop, struct config *cfg)
{
	struct release *r;

	if (cfg == NULL)
		return;
	r = malloc(sizeof(*r));
	if (r == NULL || (r->cfg = cfg, uv_queue_work(loop, &r->work, release_work_cb,
						     release_after_cb) != 0)) {
		free(r);
		config_unref(cfg);
	}
}

/* Sets mailbox flags (and a config) for worker w and wakes it. */
static void post(struct worker *w, struct config *cfg, bool drain, bool close_all, bool stop)
{
	uv_mutex_lock(&w->lock);
	if (cfg) {
		config_unref(w->pending);
		w->pending = config_ref(cfg);
	}
	w->drain |= drain;
	w->close_all |= close_all;
	w->stop |= stop;
	uv_mutex_unlock(&w->lock);
	uv_async_send(&w->wake);
}

static void health_stopped_cb(void *arg)
{
	uv_close((uv_handle_t *)&D.admin_in, close_noop_cb);
	if (D.workers[0].admin_async_inited)
		uv_close((uv_handle_t *)&D.workers[0].admin_async, close_noop_cb);
	uv_close((uv_handle_t *)&D.sighup, close_noop_cb);
	uv_close((uv_handle_t *)&D.sigterm, close_noop_cb);
	uv_close((uv_handle_t *)&D.sigint, close_noop_cb);
	uv_close((uv_handle_t *)&D.shutdown_timer, close_noop_cb);
	uv_close((uv_handle_t *)&D.empty_async, close_noop_cb);
	uv_close((uv_handle_t *)&D.check_async, close_noop_cb);
}

/*
 * Tells systemd state (e.g. "READY=1") with a one-line STATUS= for
 * `systemctl status`: how many clusters have a writer, how many sessions.
 */
static void notify_serving(const char *state, const char *what)
{
	struct health_target t;
	char why[256];
	size_t up = 0;

	for (size_t i = 0; i < D.cfg->nclusters; i++) {
		if (health_writer(D.health, D.cfg->clusters[i].name, &t, why, sizeof(why)))
			up++;
	}
	sdnotifyf("%s\nSTATUS=%s: %zu of %zu clusters up, %zu sessions", state, what, up,
		  D.cfg->nclusters, atomic_load(&D.live));
}

/* Every session is gone: stop the workers and the checkers; the loop runs dry. */
static void finish(void)
{
	if (D.finishing)
		return;
	D.finishing = true;
	log_info("shutdown complete");
	sdnotify("STOPPING=1\nSTATUS=stopped: every session has ended");
	metrics_stop(D.metrics);
	D.metrics = NULL;
	peer_stop();
	/* Idle pooled server connections would keep the loop running. */
	pool_set_shutdown(D.workers[0].rt.pools);
	for (size_t i = 1; i < D.nworkers; i++) {
		if (D.workers[i].started)
			post(&D.workers[i], NULL, false, false, true);
	}
	if (D.dir) {
		dirsync_stop(D.dir);
		uv_close((uv_handle_t *)&D.workers[0].dir_tick, close_noop_cb);
	}
	health_stop(D.health, health_stopped_cb, NULL);
}

static void check_finished(void)
{
	if (D.draining && atomic_load(&D.live) == 0)
		finish();
}

static void empty_async_cb(uv_async_t *a)
{
	check_finished();
}

/* Called on the worker's own thread when its last session ends while draining. */
static void on_empty(struct router *rt)
{
	struct worker *w = container_of(rt, struct worker, rt);

	if (w->index == 0)
		check_finished();
	else
		uv_async_send(&D.empty_async);
}

static void close_listeners(struct worker *w)
{
	for (size_t i = 0; i < w->nlisteners; i++) {
		if (!uv_is_closing((uv_handle_t *)&w->listeners[i]))
			uv_close((uv_handle_t *)&w->listeners[i], close_noop_cb);
	}
}

/* On the worker's thread: stop accepting and report when empty. */
static void worker_drain(struct worker *w)
{
	if (w->rt.draining)
		return;
	w->rt.draining = true;
	close_listeners(w);
	if (w->rt.nsessions == 0)
		on_empty(&w->rt);
}

/*
 * On the worker's loop: would the configuration in w->check move the tenant
 * of a live session of this loop by a ring change? Answered under the lock,
 * then the main loop is told (check_async).
 */
static void worker_check(struct worker *w)
{
	struct config *cfg;
	char first[sizeof(w->moved_tenant)] = "";
	size_t moved;

	uv_mutex_lock(&w->lock);
	cfg = w->check;
	w->check = NULL;
	uv_mutex_unlock(&w->lock);
	if (cfg == NULL)
		return;
	moved = client_ring_moves(&w->rt, cfg, first, sizeof(first));
	config_unref(cfg); /* D.checking holds another reference: never the last */
	uv_mutex_lock(&w->lock);
	w->moved = moved;
	memcpy(w->moved_tenant, first, sizeof(first));
	w->checked = true;
	uv_mutex_unlock(&w->lock);
	uv_async_send(&D.check_async);
}

static void wake_cb(uv_async_t *a)
{
	struct worker *w = a->data;
	struct config *cfg;
	bool drain, close_all, stop;

	uv_mutex_lock(&w->lock);
	cfg = w->pending;
	w->pending = NULL;
	drain = w->drain;
	close_all = w->close_all;
	stop = w->stop;
	w->close_all = false;
	uv_mutex_unlock(&w->lock);
	if (cfg) {
		release_config(w->loop, w->rt.cfg);
		w->rt.cfg = cfg;
		atomic_store(&w->gen, cfg->generation);
		/* The main loop forgets pin changes every loop has caught up with. */
		uv_async_send(&D.admin_in);
	}
	worker_check(w);
	if (drain)
		worker_drain(w);
	if (close_all)
		client_close_all(&w->rt);
	if (stop) {
		pool_set_shutdown(w->rt.pools);
		uv_walk(w->loop, walk_close_cb, NULL);
	}
}

/* How often each loop counts its sessions of moving tenants for the fence. */
#define DIR_TICK_MS 100

/*
 * On each worker's loop: its live sessions of each moving tenant, for this
 * router's heartbeat (the fence), and the end of those past
 * move_drain_timeout. With a stale copy and directory_stale = refuse, every
 * tenant session ends: the router cannot know whether its tenant was moved.
 */
static void dir_tick_cb(uv_timer_t *t)
{
	struct worker *w = t->data;
	struct dirsync_moving *mv;
	uint64_t now = uv_hrtime() / 1000000u;
	int64_t version;
	size_t n = dirsync_moving(D.dir, &mv, &version), *counts = NULL;

	if (n > 0 && (counts = calloc(n, sizeof(*counts))) == NULL) {
		free(mv);
		return; /* no report: the fence waits for the next tick */
	}
	for (size_t i = 0; i < n; i++) {
		char why[400];
		uint64_t drain = w->rt.cfg->dir_move_drain_timeout_ms, age = now - mv[i].since_ms;
		bool end = age >= drain;

		snprintf(why, sizeof(why),
		         "tenant \"%s\" is being moved to another cluster; this session was ended "
		         "after move_drain_timeout",
		         (const char *)mv[i].tenant);
		/* Between statements from the drain timeout on; whatever they do, at twice it. */
		counts[i] = client_tenant_sessions(&w->rt, mv[i].tenant, mv[i].len, mv[i].cluster,
		                                   end ? why : NULL, age >= 2 * drain);
	}
	if (!dirsync_sure(D.dir))
		client_tenant_sessions(&w->rt, NULL, 0, NULL,
		                       "the tenant directory has been out of reach for longer than "
		                       "directory_lease; placement cannot be confirmed",
		                       true);
	dirsync_report(D.dir, (size_t)w->index, version, mv, counts, n);
	free(counts);
	free(mv);
}

static void worker_thread(void *arg)
{
	struct worker *w = arg;

	uv_run(w->loop, UV_RUN_DEFAULT);
	/* The relay buffer pool is per thread. */
	splice_pool_drain();
}

static void close_all_sessions(void)
{
	client_close_all(&D.workers[0].rt);
	for (size_t i = 1; i < D.nworkers; i++) {
		if (D.workers[i].started)
			post(&D.workers[i], NULL, false, true, false);
	}
}

static void shutdown_timer_cb(uv_timer_t *t)
{
	log_info("shutdown timeout reached, closing %zu sessions", atomic_load(&D.live));
	close_all_sessions();
}

static void begin_shutdown(int signum)
{
	if (D.draining) {
		log_info("second signal (%s), closing %zu sessions now", strsignal(signum),
			 atomic_load(&D.live));
		close_all_sessions();
		return;
	}
	D.draining = true;
	sdnotifyf("STOPPING=1\nSTATUS=draining: %zu sessions", atomic_load(&D.live));
	log_info("shutting down on %s: waiting up to %llu ms for %zu sessions", strsignal(signum),
		 (unsigned long long)D.cfg->shutdown_timeout_ms, atomic_load(&D.live));
	for (size_t i = 1; i < D.nworkers; i++) {
		if (D.workers[i].started)
			post(&D.workers[i], NULL, true, false, false);
	}
	worker_drain(&D.workers[0]);
	uv_timer_start(&D.shutdown_timer, shutdown_timer_cb, D.cfg->shutdown_timeout_ms, 0);
	check_finished();
}

/*
 * Descriptors the router needs besides its sessions (README, "File descriptors"):
 * stdio, libuv's own (signal pipes, the EMFILE spare), name lookups on the
 * thread pool, files read on reload, cancel requests being forwarded.
 */
#define FD_RESERVE_BASE 32
/* Each event loop: epoll, its async wakeup, libuv's EMFILE spare, a signal pipe (two). */
#define FD_PER_LOOP 5

/*
 * Computes how many sessions the open file limit fits and publishes it to
 * the workers (struct limits). A session holds two descriptors, client and
 * server; kept aside are FD_RESERVE_BASE, per loop FD_PER_LOOP and its
 * listeners, one health connection per host, and the connections that may
 * wait to be told they are refused. At start the soft limit is first raised
 * to the hard one; a reload (new hosts, a new max_client_conn) recomputes.
 */
static void fd_budget_update(const struct config *cfg, bool at_start)
{
	struct rlimit rl;
	size_t nofile, nhosts = 0, slots, loops, reserve, sessions;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
		log_warn("getrlimit(RLIMIT_NOFILE): %s; sessions are limited by max_client_conn "
			 "only",
			 strerror(errno));
		atomic_store(&D.limits.nofile, 0);
		return;
	}
	if (at_start && rl.rlim_cur < rl.rlim_max) {
		rlim_t was = rl.rlim_cur;

		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
			log_warn("could not raise the open file limit from %llu to %llu: %s",
				 (unsigned long long)was, (unsigned long long)rl.rlim_max,
				 strerror(errno));
			rl.rlim_cur = was;
		}
	}
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > SIZE_MAX / 4) {
		atomic_store(&D.limits.nofile, 0);
		return;
	}
	nofile = (size_t)rl.rlim_cur;
	for (size_t i = 0; i < cfg->nclusters; i++)
		nhosts += cfg->clusters[i].nhosts;
	slots = nofile / 64 < 2 ? 2 : nofile / 64 > 64 ? 64 : nofile / 64;
	/* Threads and listeners change only with a restart: count the running ones. */
	loops = D.nworkers ? D.nworkers : cfg->threads;
	reserve = FD_RESERVE_BASE + loops * (FD_PER_LOOP + cfg->nlisten) + nhosts + slots;
	sessions = nofile > reserve ? (nofile - reserve) / 2 : 0;
	atomic_store(&D.limits.fd_sessions, sessions);
	atomic_store(&D.limits.wait_slots, slots);
	atomic_store(&D.limits.nofile, nofile);
	if (sessions < cfg->max_client_conn)
		log_warn("open file limit %zu fits %zu sessions (2 descriptors each, %zu kept for "
			 "the router), fewer than max_client_conn = %u: the others get 53300; "
			 "raise LimitNOFILE or ulimit -n to %zu",
			 nofile, sessions, reserve, cfg->max_client_conn,
			 reserve + 2 * (size_t)cfg->max_client_conn);
	else if (at_start)
		log_info("open file limit %zu fits %zu sessions (2 descriptors each, %zu kept for "
			 "the router)",
			 nofile, sessions, reserve);
}

static void reload_start(void);
static void worker_check(struct worker *w);

static void reload_work_cb(uv_work_t *w)
{
	D.reload_result = config_load(D.config_path, D.reload_err, sizeof(D.reload_err));
}

static bool same_listen(const struct config *a, const struct config *b)
{
	if (a->nlisten != b->nlisten || a->threads != b->threads)
		return false;
	for (size_t i = 0; i < a->nlisten; i++) {
		if (a->listen[i].port != b->listen[i].port ||
		    strcmp(a->listen[i].host, b->listen[i].host) != 0)
			return false;
	}
	return true;
}

static bool same_metrics_listen(const struct config *a, const struct config *b)
{
	const struct host_port *x = &a->metrics_listen, *y = &b->metrics_listen;

	if (x->host == NULL || y->host == NULL)
		return x->host == y->host;
	return x->port == y->port && strcmp(x->host, y->host) == 0;
}

static void admin_answer(struct admin_req *r);
static void admin_fail(struct admin_req *r, const char *sqlstate, const char *hint,
		       const char *fmt, ...) PRINTF_LIKE(4, 5);
static void pin_next(void);

/*
 * Swaps in a new snapshot on every loop (the main loop now, the others
 * through their mailboxes). Returns 0, or a libuv error with the old
 * snapshot kept (nc is then still the caller's).
 */
static int apply_config(struct config *nc, const char *what)
{
	struct config *old = D.cfg;
	int rc = health_apply(D.health, nc, NULL, NULL);

	if (rc < 0)
		return rc;
	if (!same_listen(old, nc))
		log_warn("%s: listen addresses or threads changed; restart to apply them", what);
	if (!same_metrics_listen(old, nc))
		log_warn("%s: metrics_listen changed; restart to apply it", what);
	if ((old->peer_socket_dir == NULL) != (nc->peer_socket_dir == NULL) ||
	    (old->peer_socket_dir && strcmp(old->peer_socket_dir, nc->peer_socket_dir) != 0))
		log_warn("%s: peer_socket_dir changed; restart to apply it", what);
	D.cfg = nc;
	if (D.dir)
		dirsync_reconfigure(D.dir, nc);
	if ((D.dir != NULL) != (nc->dir_conninfo != NULL))
		log_warn("%s: [directory] conninfo was added or removed; restart to apply it",
		         what);
	release_config(&D.loop, D.workers[0].rt.cfg);
	D.workers[0].rt.cfg = config_ref(nc);
	atomic_store(&D.workers[0].gen, nc->generation);
	for (size_t i = 1; i < D.nworkers; i++) {
		struct worker *w = &D.workers[i];

		if (w->started) {
			post(w, nc, false, false, false);
			continue;
		}
		/* Not running yet (before the first health round): still ours to set. */
		release_config(&D.loop, w->rt.cfg);
		w->rt.cfg = config_ref(nc);
		atomic_store(&w->gen, nc->generation);
	}
	release_config(&D.loop, old);
	log_set_level(nc->log_level);
	fd_budget_update(nc, false);
	return 0;
}

/* Answers the RELOADs this reload was for. */
static void reload_answer(bool ok, const char *why)
{
	struct admin_req *r = D.reload_waiting, *next;

	D.reload_waiting = NULL;
	for (; r; r = next) {
		next = r->next;
		if (ok)
			admin_answer(r);
		else
			admin_fail(r, "F0000", "Fix the configuration file; the running one is kept.",
				   "reload failed: %s", why);
	}
}

static void reload_finish(bool ok)
{
	notify_serving("READY=1", ok ? "serving" : "serving (reload failed, configuration kept)");
	if (D.reload_again && !D.draining) {
		D.reload_again = false;
		reload_start();
	}
	pin_next();
}

/* The new configuration passed every check: swap it in everywhere. */
static void reload_apply(struct config *nc)
{
	int rc = apply_config(nc, "reload");

	if (rc < 0) {
		log_error("reload failed, keeping the running configuration: %s", uv_strerror(rc));
		stats_reload(false);
		reload_answer(false, uv_strerror(rc));
		config_unref(nc);
		reload_finish(false);
		return;
	}
	log_info("reloaded configuration clusters=%zu pins=%zu", nc->nclusters,
	         pins_count(nc->pins));
	stats_reload(true);
	reload_answer(true, NULL);
	reload_finish(true);
}

/* Do the two configurations build the same ring (names, weights, vnodes; order aside)? */
static bool same_ring(const struct config *a, const struct config *b)
{
	if (a->nclusters != b->nclusters || a->vnodes != b->vnodes)
		return false;
	for (size_t i = 0; i < a->nclusters; i++) {
		int j = config_cluster_index(b, a->clusters[i].name);

		if (j < 0 || b->clusters[j].weight != a->clusters[i].weight)
			return false;
	}
	return true;
}

/* A reload ends without a swap while draining: answer what waits for it. */
static void reload_drop_draining(struct config *nc)
{
	config_unref(nc);
	reload_answer(false, "the router is shutting down");
	/* No reload or pin change starts any more: answer those still waiting. */
	D.reload_waiting = D.reload_next;
	D.reload_next = NULL;
	reload_answer(false, "the router is shutting down");
	pin_next();
}

/* Every loop has answered reload_check (or this is called again when the next one does). */
static void check_collect(void)
{
	struct config *nc = D.checking;
	char first[sizeof(D.workers[0].moved_tenant)] = "";
	size_t moved = 0;

	if (nc == NULL)
		return;
	for (size_t i = 0; i < D.nworkers; i++) {
		struct worker *w = &D.workers[i];
		bool done;

		if (i > 0 && !w->started)
			continue;
		uv_mutex_lock(&w->lock);
		done = w->checked;
		if (done) {
			moved += w->moved;
			if (first[0] == '\0')
				memcpy(first, w->moved_tenant, sizeof(first));
		}
		uv_mutex_unlock(&w->lock);
		if (!done)
			return;
	}
	D.checking = NULL;
	for (size_t i = 0; i < D.nworkers; i++) {
		uv_mutex_lock(&D.workers[i].lock);
		D.workers[i].checked = false;
		uv_mutex_unlock(&D.workers[i].lock);
	}
	D.reloading = false;
	if (D.draining) {
		reload_drop_draining(nc);
		return;
	}
	if (moved > 0) {
		char why[sizeof(first) + 320];

		snprintf(why, sizeof(why),
		         "its ring change would move tenant %s, which has live sessions on this "
		         "router (%zu sessions in all); keep such tenants where they are first "
		         "(tenant-router plan --freeze, or pins), or let their sessions end",
		         first, moved);
		log_error("reload failed, keeping the running configuration: %s", why);
		stats_reload(false);
		reload_answer(false, why);
		config_unref(nc);
		reload_finish(false);
		return;
	}
	reload_apply(nc);
}

static void check_async_cb(uv_async_t *a)
{
	check_collect();
}

/*
 * A ring change must not move a tenant that has live sessions here: its
 * new sessions would go to another cluster while the old ones write on.
 * Each loop checks its own sessions (they are its own to walk); the reload
 * goes on when all have answered. D.reloading stays set meanwhile, so
 * another reload or a pin change waits.
 */
static void reload_check(struct config *nc)
{
	D.reloading = true;
	D.checking = nc;
	for (size_t i = 0; i < D.nworkers; i++) {
		struct worker *w = &D.workers[i];

		if (i > 0 && !w->started)
			continue;
		uv_mutex_lock(&w->lock);
		config_unref(w->check);
		w->check = config_ref(nc);
		w->checked = false;
		uv_mutex_unlock(&w->lock);
		if (i == 0)
			worker_check(w);
		else
			uv_async_send(&w->wake);
	}
	check_collect();
}

static void reload_after_cb(uv_work_t *work, int status)
{
	struct config *nc = D.reload_result;

	D.reloading = false;
	D.reload_result = NULL;
	if (nc == NULL) {
		one_line(D.reload_err);
		log_error("reload failed, keeping the running configuration: %s", D.reload_err);
		stats_reload(false);
		reload_answer(false, D.reload_err);
		reload_finish(false);
		return;
	}
	if (D.draining) {
		reload_drop_draining(nc);
		return;
	}
	if (!same_ring(D.cfg, nc)) {
		reload_check(nc);
		return;
	}
	reload_apply(nc);
}

static void reload_start(void)
{
	if (D.reloading) {
		D.reload_again = true;
		return;
	}
	D.reloading = true;
	/* RELOADs that came before this point are answered by this reload. */
	D.reload_waiting = D.reload_next;
	D.reload_next = NULL;
	sdnotifyf("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading %s",
		  sdnotify_monotonic_usec(), D.config_path);
	log_info("reloading configuration from %s", D.config_path);
	if (uv_queue_work(&D.loop, &D.reload_work, reload_work_cb, reload_after_cb) < 0) {
		D.reloading = false;
		log_error("reload failed: could not queue work");
		reload_answer(false, "could not queue work");
	}
}

/*
 * --- Console commands that the main loop carries out ---
 *
 * A console runs on whatever loop its client landed on; RELOAD, SHUTDOWN,
 * PIN and UNPIN change the daemon, which only the main loop may touch. The
 * console submits a request (any thread: inbox under a lock, then an async
 * wakeup), the main loop runs it, and the answer goes back to the
 * requester's loop through that worker's own async handle.
 *
 * A pin change is a reload with one pins file line changed: the file is
 * rewritten to a temporary copy, the configuration is loaded with the
 * copy's pins on the thread pool, the copy is renamed over the file, and
 * the new snapshot is published to every loop the way a reload publishes
 * one. Pin changes and reloads run one at a time (both use D.reloading).
 * From the check that the tenant has no live session until every loop routes
 * with the new snapshot, the tenant's new sessions wait (roster.h).
 */

/* Hands r back to its console's loop. */
static void admin_answer(struct admin_req *r)
{
	struct worker *w = container_of(r->from, struct worker, rt);

	r->next = NULL;
	uv_mutex_lock(&w->lock);
	r->next = w->replies;
	w->replies = r;
	uv_mutex_unlock(&w->lock);
	r->ok = r->sqlstate[0] == '\0';
	uv_async_send(&w->admin_async);
}

static void admin_fail(struct admin_req *r, const char *sqlstate, const char *hint,
		       const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->message, sizeof(r->message), fmt, ap);
	va_end(ap);
	snprintf(r->sqlstate, sizeof(r->sqlstate), "%s", sqlstate);
	snprintf(r->hint, sizeof(r->hint), "%s", hint);
	admin_answer(r);
}

/* From any loop. */
static void admin_submit(struct admin_req *r)
{
	r->sqlstate[0] = r->message[0] = r->hint[0] = r->notice[0] = '\0';
	uv_mutex_lock(&D.admin_lock);
	r->next = D.admin_inbox;
	D.admin_inbox = r;
	uv_mutex_unlock(&D.admin_lock);
	uv_async_send(&D.admin_in);
}

/* Forgets finished pin changes that every running loop routes past. */
static void admin_sweep(void)
{
	uint64_t min = UINT64_MAX;

	for (size_t i = 0; i < D.nworkers; i++) {
		uint64_t g = atomic_load(&D.workers[i].gen);

		if (g < min)
			min = g;
	}
	roster_sweep(min);
}

struct pin_job {
	uv_work_t work;
	struct admin_req *r; /* owned until answered */
	char *config_path;   /* borrowed: D.config_path */
	char pins_file[4096];
	char tmp[4200];
	bool unpin;
	struct config *result; /* owned: the snapshot with the change */
	char err[RELOAD_ERR_CAP];
	char sqlstate[6];
	char hint[320];
};

static void pin_work_cb(uv_work_t *work)
{
	struct pin_job *j = container_of(work, struct pin_job, work);
	struct admin_req *r = j->r;
	struct config *nc;
	bool found;
	int idx;

	if (pins_file_rewrite(j->pins_file, r->tenant, r->tlen, j->unpin ? NULL : r->cluster, j->tmp,
			      sizeof(j->tmp), &found, j->err, sizeof(j->err)) < 0) {
		snprintf(j->sqlstate, sizeof(j->sqlstate), "58030");
		snprintf(j->hint, sizeof(j->hint),
			 "The router must be able to write the pins file's directory.");
		return;
	}
	if (j->unpin && !found) {
		unlink(j->tmp);
		snprintf(j->sqlstate, sizeof(j->sqlstate), "42704");
		snprintf(j->err, sizeof(j->err), "tenant \"%s\" has no line in the pins file %s",
			 r->tenant, j->pins_file);
		snprintf(j->hint, sizeof(j->hint),
			 "A pin written inline in [pins] of the configuration file is removed "
			 "there; ROUTE shows where the tenant goes.");
		return;
	}
	nc = config_load_pins(j->config_path, j->tmp, j->err, sizeof(j->err));
	if (nc == NULL) {
		unlink(j->tmp);
		one_line(j->err);
		snprintf(j->sqlstate, sizeof(j->sqlstate), "F0000");
		snprintf(j->hint, sizeof(j->hint),
			 "Nothing changed. Fix the configuration file, RELOAD, then try again.");
		return;
	}
	idx = pins_lookup(nc->pins, r->tenant, r->tlen);
	if (strcmp(nc->pins_file, j->pins_file) != 0 ||
	    (j->unpin ? idx >= 0 : idx != config_cluster_index(nc, r->cluster))) {
		unlink(j->tmp);
		snprintf(j->sqlstate, sizeof(j->sqlstate), "55000");
		if (strcmp(nc->pins_file, j->pins_file) != 0)
			snprintf(j->err, sizeof(j->err),
				 "[pins] file changed in the configuration file since it was "
				 "loaded");
		else
			snprintf(j->err, sizeof(j->err),
				 "tenant \"%s\" is pinned inline in [pins] of %s, which the console "
				 "does not change",
				 r->tenant, j->config_path);
		snprintf(j->hint, sizeof(j->hint), "Nothing changed. Edit the configuration file "
						   "and RELOAD.");
		config_unref(nc);
		return;
	}
	if (pins_file_commit(j->tmp, j->pins_file, j->err, sizeof(j->err)) < 0) {
		snprintf(j->sqlstate, sizeof(j->sqlstate), "58030");
		snprintf(j->hint, sizeof(j->hint), "Nothing changed in routing; check the disk.");
		config_unref(nc);
		return;
	}
	j->result = nc;
}

static void pin_after_cb(uv_work_t *work, int status)
{
	struct pin_job *j = container_of(work, struct pin_job, work);
	struct admin_req *r = j->r;
	struct config *nc = j->result;
	const char *verb = j->unpin ? "unpin" : "pin";
	int rc;

	D.reloading = false;
	D.pin_job = NULL;
	if (nc == NULL) {
		roster_move_end(r->tenant, r->tlen, 0);
		log_warn("console %s tenant=%s failed: %s", verb, r->tenant, j->err);
		admin_fail(r, j->sqlstate[0] ? j->sqlstate : "58030", j->hint, "%s", j->err);
	} else if (D.draining) {
		roster_move_end(r->tenant, r->tlen, 0);
		config_unref(nc);
		admin_fail(r, "57P01", "The new pin is in the pins file; it applies at the next start.",
			   "the router is shutting down");
	} else if ((rc = apply_config(nc, verb)) < 0) {
		roster_move_end(r->tenant, r->tlen, 0);
		config_unref(nc);
		log_error("console %s tenant=%s: written to the pins file but not applied: %s", verb,
			  r->tenant, uv_strerror(rc));
		admin_fail(r, "58000", "RELOAD applies the pins file as it is now.",
			   "the pins file was changed but the router could not apply it: %s",
			   uv_strerror(rc));
	} else {
		roster_move_end(r->tenant, r->tlen, nc->generation);
		log_info("console %s tenant=%s%s%s pins=%zu", verb, r->tenant,
			 j->unpin ? "" : " cluster=", j->unpin ? "" : r->cluster,
			 pins_count(nc->pins));
		stats_reload(true);
		admin_answer(r);
	}
	free(j);
	if (D.reload_again && !D.draining) {
		D.reload_again = false;
		reload_start();
	} else if (D.draining && D.reload_next) {
		D.reload_waiting = D.reload_next;
		D.reload_next = NULL;
		reload_answer(false, "the router is shutting down");
	}
	pin_next();
}

/*
 * Starts r (PIN or UNPIN) on the main loop's snapshot. Refusals that need
 * no file (no pins file, unknown cluster, live sessions) answer at once.
 */
static void pin_start(struct admin_req *r)
{
	const struct config *cfg = D.cfg;
	bool unpin = r->cluster[0] == '\0', pinned;
	size_t now = route_lookup(cfg->pins, cfg->ring, r->tenant, r->tlen, &pinned), to;
	struct pin_job *j;
	int live, idx;

	if (cfg->pins_file == NULL) {
		admin_fail(r, "55000",
			   "Add [pins] file = PATH to the configuration file and RELOAD: PIN and "
			   "UNPIN write there, so a change survives a restart.",
			   "no pins file is configured");
		return;
	}
	if (D.dir) {
		struct route_place pl;

		(void)dirsync_place(D.dir, cfg, r->tenant, r->tlen, &pl);
		if (pl.source == ROUTE_DIRECTORY) {
			admin_fail(r, "55000",
			           "Its directory row wins over pins: change it with tenant-router "
			           "move (README, \"Moving a tenant\").",
			           "tenant \"%s\" is placed by the tenant directory", r->tenant);
			return;
		}
	}
	if (!admin_tenant_is_pinnable(r->tenant, r->tlen)) {
		admin_fail(r, "22023",
			   "A pins file line is TENANT CLUSTER: the tenant cannot hold blanks, '#' "
			   "or control characters.",
			   "tenant \"%s\" cannot be written to the pins file", r->tenant);
		return;
	}
	if (unpin) {
		to = ring_lookup(cfg->ring, r->tenant, r->tlen);
		if (!pinned) {
			admin_fail(r, "42704", "ROUTE shows where the tenant goes.",
				   "tenant \"%s\" is not pinned", r->tenant);
			return;
		}
	} else {
		idx = config_cluster_index(cfg, r->cluster);
		if (idx < 0) {
			admin_fail(r, "42704", "SHOW CLUSTERS lists the clusters.",
				   "unknown cluster \"%s\"", r->cluster);
			return;
		}
		to = (size_t)idx;
	}
	live = roster_move_begin(r->tenant, r->tlen);
	if (live == -EBUSY) {
		admin_fail(r, "55006", "Try again when the other change has finished.",
			   "another pin change of tenant \"%s\" is in progress", r->tenant);
		return;
	}
	if (live < 0) {
		admin_fail(r, "53000", "RESUME paused tenants first.",
			   "too many tenants are paused or being moved");
		return;
	}
	if (to != now && live > 0 && !r->force) {
		roster_move_end(r->tenant, r->tlen, 0);
		admin_fail(r, "55006",
			   "New sessions would go to the other cluster while these stay where they "
			   "are. Move the tenant's data first, end its sessions (KILL TENANT), then "
			   "retry; FORCE changes the pin anyway.",
			   "tenant \"%s\" has %d live session%s on cluster \"%s\"", r->tenant, live,
			   live == 1 ? "" : "s", cfg->clusters[now].name);
		return;
	}
	if (to != now && live > 0)
		snprintf(r->notice, sizeof(r->notice),
			 "tenant \"%s\" now goes to cluster \"%s\"; its %d live session%s stay%s on "
			 "cluster \"%s\" until they end",
			 r->tenant, cfg->clusters[to].name, live, live == 1 ? "" : "s",
			 live == 1 ? "s" : "", cfg->clusters[now].name);
	else if (to != now)
		snprintf(r->notice, sizeof(r->notice),
			 "tenant \"%s\" moves from cluster \"%s\" to \"%s\": its data must be there",
			 r->tenant, cfg->clusters[now].name, cfg->clusters[to].name);
	j = calloc(1, sizeof(*j));
	if (j == NULL) {
		roster_move_end(r->tenant, r->tlen, 0);
		admin_fail(r, "53200", "Retry.", "out of memory");
		return;
	}
	j->r = r;
	j->unpin = unpin;
	j->config_path = (char *)D.config_path;
	snprintf(j->pins_file, sizeof(j->pins_file), "%s", cfg->pins_file);
	D.reloading = true;
	D.pin_job = j;
	if (uv_queue_work(&D.loop, &j->work, pin_work_cb, pin_after_cb) < 0) {
		D.reloading = false;
		D.pin_job = NULL;
		roster_move_end(r->tenant, r->tlen, 0);
		free(j);
		admin_fail(r, "58000", "Retry.", "could not queue the pins file change");
	}
}

/* Starts the next queued pin change when nothing else is changing the snapshot. */
static void pin_next(void)
{
	struct admin_req *r;

	if (D.reloading || D.pin_queue == NULL)
		return;
	r = D.pin_queue;
	D.pin_queue = r->next;
	if (D.draining) {
		admin_fail(r, "57P01", "Retry against the router that replaces this one.",
			   "the router is shutting down");
		pin_next();
		return;
	}
	pin_start(r);
}

static void admin_in_cb(uv_async_t *a)
{
	struct admin_req *r, *rev = NULL, *next;

	uv_mutex_lock(&D.admin_lock);
	r = D.admin_inbox;
	D.admin_inbox = NULL;
	uv_mutex_unlock(&D.admin_lock);
	/* The inbox is a stack: turn it round to run requests in the order they came. */
	for (; r; r = next) {
		next = r->next;
		r->next = rev;
		rev = r;
	}
	admin_sweep();
	for (r = rev; r; r = next) {
		next = r->next;
		r->next = NULL;
		if (D.draining && r->kind != ADMIN_REQ_SHUTDOWN) {
			admin_fail(r, "57P01", "Retry against the router that replaces this one.",
				   "the router is shutting down");
			continue;
		}
		switch (r->kind) {
		case ADMIN_REQ_RELOAD:
			log_info("console: reload requested");
			r->next = D.reload_next;
			D.reload_next = r;
			reload_start();
			break;
		case ADMIN_REQ_SHUTDOWN:
			log_info("console: shutdown requested");
			admin_answer(r);
			begin_shutdown(SIGTERM);
			break;
		case ADMIN_REQ_PIN: {
			struct admin_req **tail = &D.pin_queue;

			while (*tail)
				tail = &(*tail)->next;
			*tail = r;
			pin_next();
			break;
		}
		}
	}
}

/* On each worker's own loop: console answers, and sessions marked to be killed. */
static void admin_async_cb(uv_async_t *a)
{
	struct worker *w = a->data;
	struct admin_req *r, *next;

	uv_mutex_lock(&w->lock);
	r = w->replies;
	w->replies = NULL;
	uv_mutex_unlock(&w->lock);
	for (; r; r = next) {
		next = r->next;
		if (r->cancelled)
			free(r);
		else
			r->done(r);
	}
	client_kill_marked(&w->rt);
}

static void signal_cb(uv_signal_t *h, int signum)
{
	if (signum == SIGHUP) {
		if (!D.draining)
			reload_start();
		return;
	}
	begin_shutdown(signum);
}

/*
 * Out of descriptors, libuv closes its spare one, accepts and closes what is
 * pending (those clients see a bare close) and tells us only when even that
 * failed. The fd budget (fd_budget_update) is there so we never get here;
 * when we do, it can be thousands of times a second: one line per second.
 */
static void connection_cb(uv_stream_t *server, int status)
{
	struct worker *w = server->data;
	bool nofds = status == UV_EMFILE || status == UV_ENFILE;
	size_t n;

	if (status < 0) {
		n = log_limit_hit(&w->accept_log, uv_now(w->loop), 1000);
		if (n > 0)
			log_warn("accept failed: %s (%zu times since the last line)%s",
				 uv_strerror(status), n,
				 nofds ? "; out of file descriptors: raise LimitNOFILE" : "");
		return;
	}
	client_accept(&w->rt, server);
}

/* Starts accepting on fd (a bound socket, handed over or new) as one of w's listeners. */
static int listen_fd(struct worker *w, int fd, const struct host_port *hp)
{
	uv_tcp_t *l = &w->listeners[w->nlisteners];
	int rc;

	if (w->nlisteners >= ARRAY_SIZE(w->listeners)) {
		log_error("listen %s:%u: more than %zu sockets for one thread", hp->host, hp->port,
			  ARRAY_SIZE(w->listeners));
		close(fd);
		return UV_EMFILE;
	}
	rc = uv_tcp_init(w->loop, l);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	l->data = w;
	w->nlisteners++;
	rc = uv_tcp_open(l, fd);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	/* The handle owns fd now; on a handed-over socket listen() only sets the backlog. */
	return uv_listen((uv_stream_t *)l, 1024, connection_cb);
}

/*
 * A new listening socket for w. Always SO_REUSEPORT: with several workers
 * each has its own socket on the address and the kernel spreads
 * connections; with one, a second process can still listen beside us.
 */
static int listen_new(struct worker *w, const struct host_port *hp, const struct addrinfo *res)
{
	int one = 1, fd, rc;

	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1 ||
	    (res->ai_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == -1) ||
	    bind(fd, res->ai_addr, res->ai_addrlen) == -1) {
		rc = -errno;
		if (fd != -1)
			close(fd);
		return rc;
	}
	return listen_fd(w, fd, hp);
}

/* Is fd a listening TCP socket bound to ai's address? */
static bool is_listening_on(int fd, const struct addrinfo *ai)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss), olen = sizeof(int);
	int acc = 0;

	if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1 ||
	    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &olen) == -1 || !acc ||
	    ss.ss_family != ai->ai_family)
		return false;
	if (ai->ai_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
		const struct sockaddr_in *b = (const struct sockaddr_in *)(void *)ai->ai_addr;

		return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
	}
	if (ai->ai_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
		const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)(void *)ai->ai_addr;

		return a->sin6_port == b->sin6_port &&
		       memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
	}
	return false;
}

/*
 * Listens on every configured address with every worker. Sockets handed
 * over (inh, owned; taken ones set to -1) go first, to the workers in turn,
 * because each of them must keep being accepted from: connections the
 * kernel queued on it stay there when the old process closes its copy.
 * A worker that got none for an address opens its own.
 */
static int listen_all(const struct config *cfg, int *inh, size_t ninh)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
				 .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE};

	for (size_t j = 0; j < cfg->nlisten; j++) {
		const struct host_port *hp = &cfg->listen[j];
		struct addrinfo *res = NULL;
		size_t taken = 0;
		char port[8];
		int rc;

		snprintf(port, sizeof(port), "%u", hp->port);
		rc = getaddrinfo(strcmp(hp->host, "*") == 0 ? NULL : hp->host, port, &hints, &res);
		if (rc != 0) {
			log_error("listen %s:%u: %s", hp->host, hp->port, gai_strerror(rc));
			return -1;
		}
		rc = 0;
		for (size_t k = 0; k < ninh && rc == 0; k++) {
			if (inh[k] == -1 || !is_listening_on(inh[k], res))
				continue;
			rc = listen_fd(&D.workers[taken % D.nworkers], inh[k], hp);
			inh[k] = -1;
			taken++;
		}
		for (size_t i = taken; i < D.nworkers && rc == 0; i++)
			rc = listen_new(&D.workers[i], hp, res);
		freeaddrinfo(res);
		if (rc < 0) {
			log_error("listen %s:%u: %s", hp->host, hp->port, uv_strerror(rc));
			return -1;
		}
		if (taken > 0)
			log_info("listening on %s:%u (%zu sockets taken over from the process this one "
				 "replaces)",
				 hp->host, hp->port, taken);
		else
			log_info("listening on %s:%u", hp->host, hp->port);
	}
	for (size_t k = 0; k < ninh; k++) {
		if (inh[k] != -1) {
			log_info("a listening socket handed over is not in this configuration: closed");
			close(inh[k]);
		}
	}
	return 0;
}

/* For peer.c: our listening sockets, to hand to a process that replaces us. */
static size_t listener_fds(int *fds, size_t cap)
{
	size_t n = 0;

	/* Once draining, ours are closed or closing; the successor has its own by now. */
	if (D.draining)
		return 0;
	for (size_t i = 0; i < D.nworkers; i++) {
		struct worker *w = &D.workers[i];

		for (size_t j = 0; j < w->nlisteners && n < cap; j++) {
			uv_os_fd_t fd;

			if (uv_fileno((uv_handle_t *)&w->listeners[j], &fd) == 0)
				fds[n++] = fd;
		}
	}
	return n;
}

/* For metrics: the current snapshot (the main loop's), and whether clients can connect. */
static const struct config *metrics_config(void *arg)
{
	return D.cfg;
}

static bool metrics_accepting(void *arg)
{
	return !D.draining && D.workers[0].nlisteners > 0;
}

/*
 * HTTP metrics on the main loop, once the client listeners are up (so
 * /healthz never says ok before clients can connect). A port that cannot
 * be had is logged and the router runs on without it: metrics must never
 * keep tenants from their data.
 */
static void metrics_begin(void)
{
	struct metrics_source src = {.version = TR_VERSION,
	                             .health = D.health,
	                             .dir = D.dir,
	                             .config = metrics_config,
	                             .accepting = metrics_accepting};

	if (D.cfg->metrics_listen.host)
		D.metrics = metrics_start(&D.loop, &D.cfg->metrics_listen, &src);
}

static void serve(void);

static void health_ready_cb(void *arg)
{
	D.health_ready = true;
	if (D.dir_ready || D.dir == NULL)
		serve();
}

static void dir_ready_cb(void *arg)
{
	D.dir_ready = true;
	log_info("directory: first copy loaded");
	if (D.health_ready)
		serve();
}

/* Health checkers have had their first round and the directory (if any) is loaded: listen. */
static void serve(void)
{
	const struct config *cfg = D.cfg;
	int inh[WORKER_MAX_LISTENERS];
	size_t ninh = 0;

	if (D.draining)
		return;
	if (cfg->peer_socket_dir)
		ninh = peer_take_listeners(inh, ARRAY_SIZE(inh), PEER_TAKE_TIMEOUT_MS);
	if (listen_all(cfg, inh, ninh) < 0) {
		for (size_t k = 0; k < ninh; k++) {
			if (inh[k] != -1)
				close(inh[k]);
		}
		D.exit_code = 1;
		begin_shutdown(SIGTERM);
		return;
	}
	/* The other loops start only now: until here the main thread set them up. */
	for (size_t i = 1; i < D.nworkers; i++) {
		if (uv_thread_create(&D.workers[i].thread, worker_thread, &D.workers[i]) != 0) {
			log_error("could not start event-loop thread %zu", i);
			D.exit_code = 1;
			begin_shutdown(SIGTERM);
			return;
		}
		D.workers[i].started = true;
	}
	if (D.nworkers > 1)
		log_info("running %zu event-loop threads", D.nworkers);
	metrics_begin();
	notify_serving("READY=1", "serving");
}

static int workers_init(struct config *cfg)
{
	D.nworkers = cfg->threads;
	D.workers = calloc(D.nworkers, sizeof(*D.workers));
	if (D.workers == NULL)
		return UV_ENOMEM;
	for (size_t i = 0; i < D.nworkers; i++) {
		struct worker *w = &D.workers[i];

		w->index = (int)i;
		if (uv_mutex_init(&w->lock) != 0)
			return UV_ENOMEM;
		if (i == 0) {
			w->loop = &D.loop;
		} else {
			w->loop = &w->own_loop;
			if (uv_loop_init(w->loop) != 0 ||
			    uv_async_init(w->loop, &w->wake, wake_cb) != 0)
				return UV_ENOMEM;
			w->wake.data = w;
		}
		if (uv_async_init(w->loop, &w->admin_async, admin_async_cb) != 0)
			return UV_ENOMEM;
		w->admin_async.data = w;
		w->admin_async_inited = true;
		atomic_init(&w->gen, cfg->generation);
		w->rt.index = (unsigned)i;
		w->rt.started_ns = uv_hrtime();
		w->rt.admin_wake = &w->admin_async;
		w->rt.admin_submit = admin_submit;
		w->rt.loop = w->loop;
		w->rt.cfg = config_ref(cfg);
		w->rt.health = D.health;
		w->rt.dir = D.dir;
		w->rt.cancels = D.cancels;
		if (D.dir) {
			if (uv_timer_init(w->loop, &w->dir_tick) != 0)
				return UV_ENOMEM;
			w->dir_tick.data = w;
			uv_timer_start(&w->dir_tick, dir_tick_cb, DIR_TICK_MS, DIR_TICK_MS);
		}
		w->rt.live = &D.live;
		w->rt.held = &D.held;
		w->rt.limits = &D.limits;
		w->rt.on_empty = on_empty;
	}
	return 0;
}

static void workers_free(void)
{
	for (size_t i = 0; i < D.nworkers; i++) {
		struct worker *w = &D.workers[i];

		if (i > 0) {
			if (w->started) {
				uv_thread_join(&w->thread);
			} else {
				/* Never started: close what the main thread set up for it. */
				uv_walk(w->loop, walk_close_cb, NULL);
				uv_run(w->loop, UV_RUN_DEFAULT);
			}
			if (uv_loop_close(w->loop) != 0)
				log_warn("event loop %zu closed with handles still open", i);
		}
		pool_set_free(w->rt.pools);
		config_unref(w->pending);
		config_unref(w->check);
		config_unref(w->rt.cfg);
		/* Answers that came after the console's loop stopped. */
		while (w->replies) {
			struct admin_req *r = w->replies;

			w->replies = r->next;
			free(r);
		}
		uv_mutex_destroy(&w->lock);
	}
	free(D.workers);
}

/* Loads a configuration, or prints every problem to stderr and returns NULL. */
static struct config *load_or_report(const char *path)
{
	char *err = malloc(RELOAD_ERR_CAP);
	struct config *cfg;

	if (err == NULL) {
		fprintf(stderr, "tenant-router: out of memory\n");
		return NULL;
	}
	cfg = config_load(path, err, RELOAD_ERR_CAP);
	if (cfg == NULL)
		fputs(err, stderr);
	free(err);
	return cfg;
}

static int run(const char *path)
{
	struct config *cfg = load_or_report(path);

	if (cfg == NULL) {
		fprintf(stderr, "tenant-router: not started: the configuration has problems\n");
		return 1;
	}
	log_set_level(cfg->log_level);
	signal(SIGPIPE, SIG_IGN);
	fd_budget_update(cfg, true);
	D.config_path = path;
	D.cfg = cfg;
	if (uv_loop_init(&D.loop) != 0) {
		log_error("could not create the event loop");
		return 1;
	}
	if (uv_mutex_init(&D.admin_lock) != 0 ||
	    uv_async_init(&D.loop, &D.admin_in, admin_in_cb) != 0) {
		log_error("out of memory at start-up");
		return 1;
	}
	D.cancels = cancel_map_new();
	D.health = health_new(&D.loop);
	if (cfg->dir_conninfo && (D.dir = dirsync_new(cfg, cfg->threads)) == NULL) {
		log_error("out of memory at start-up");
		return 1;
	}
	if (D.cancels == NULL || D.health == NULL || workers_init(cfg) < 0) {
		log_error("out of memory at start-up");
		return 1;
	}
	if (cfg->peer_socket_dir) {
		int rc = peer_start(&D.loop, cfg->peer_socket_dir, D.cancels, listener_fds);

		if (rc < 0) {
			log_error("peer_socket_dir %s: %s", cfg->peer_socket_dir, strerror(-rc));
			return 1;
		}
	}
	uv_signal_init(&D.loop, &D.sighup);
	uv_signal_init(&D.loop, &D.sigterm);
	uv_signal_init(&D.loop, &D.sigint);
	uv_timer_init(&D.loop, &D.shutdown_timer);
	uv_async_init(&D.loop, &D.empty_async, empty_async_cb);
	uv_async_init(&D.loop, &D.check_async, check_async_cb);
	uv_signal_start(&D.sighup, signal_cb, SIGHUP);
	uv_signal_start(&D.sigterm, signal_cb, SIGTERM);
	uv_signal_start(&D.sigint, signal_cb, SIGINT);
	log_info("tenant-router %s starting: clusters=%zu pins=%zu vnodes=%u threads=%u",
		 TR_VERSION, cfg->nclusters, pins_count(cfg->pins), cfg->vnodes, cfg->threads);
	if (D.dir && dirsync_start(D.dir, &D.loop, dir_ready_cb, NULL) < 0) {
		log_error("could not start the directory thread");
		return 1;
	}
	if (health_apply(D.health, cfg, health_ready_cb, NULL) < 0) {
		log_error("out of memory starting health checks");
		return 1;
	}
	uv_run(&D.loop, UV_RUN_DEFAULT);
	/* Anything still open (none expected) is closed so the loop can be freed. */
	uv_walk(&D.loop, walk_close_cb, NULL);
	uv_run(&D.loop, UV_RUN_DEFAULT);
	workers_free();
	dirsync_free(D.dir);
	if (uv_loop_close(&D.loop) != 0)
		log_warn("event loop closed with handles still open");
	health_free(D.health);
	cancel_map_free(D.cancels);
	config_unref(D.cfg);
	config_unref(D.checking);
	splice_pool_drain();
	return D.exit_code;
}

static int check(const char *path)
{
	struct config *cfg = load_or_report(path);

	if (cfg == NULL)
		return 1;
	printf("configuration ok: %zu clusters, %zu pins\n", cfg->nclusters,
	       pins_count(cfg->pins));
	config_unref(cfg);
	return 0;
}

static int route_cmd(const char *path, char **tenants, int n)
{
	struct config *cfg = load_or_report(path);
	int rc = 0;

	if (cfg == NULL)
		return 1;
	if (cfg->dir_conninfo) {
		rc = dircli_route(cfg, tenants, n);
		config_unref(cfg);
		return rc;
	}
	for (int i = 0; i < n; i++) {
		size_t len = strlen(tenants[i]);
		bool pinned;
		size_t idx;

		if (len == 0 || len > STARTUP_MAX_TENANT_LEN) {
			fprintf(stderr, "tenant-router: \"%s\": a tenant is 1 to %d bytes\n",
				tenants[i], STARTUP_MAX_TENANT_LEN);
			rc = 1;
			continue;
		}
		idx = route_lookup(cfg->pins, cfg->ring, tenants[i], len, &pinned);
		printf("%s\t%s\t%s\n", tenants[i], cfg->clusters[idx].name,
		       pinned ? "pinned" : "ring");
	}
	config_unref(cfg);
	return rc;
}


/* Notices of the federation script (views made, columns left out) go to stderr. */
static void fed_notice_cb(void *arg, const char *message)
{
	fputs(message, stderr);
}

/* Runs the script on dsn in one PQexec (it is one transaction) and says what it made. */
static int fed_apply(const char *dsn, const char *sql, const char *into)
{
	const char *params[1] = {into};
	PGconn *conn = PQconnectdb(dsn);
	PGresult *res;
	int rc = 1;

	if (PQstatus(conn) != CONNECTION_OK) {
		fprintf(stderr, "tenant-router: federation: could not connect: %s",
			PQerrorMessage(conn));
		goto done;
	}
	PQsetNoticeProcessor(conn, fed_notice_cb, NULL);
	res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		/* The transaction rolled back: the previous federation, if any, is intact. */
		fprintf(stderr, "tenant-router: federation: nothing changed: %s",
			PQresultErrorMessage(res));
		PQclear(res);
		goto done;
	}
	PQclear(res);
	res = PQexecParams(conn,
			   "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = "
			   "c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'v'",
			   1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		printf("federation applied: %s views in schema %s\n", PQgetvalue(res, 0, 0), into);
	else
		printf("federation applied\n");
	PQclear(res);
	rc = 0;
done:
	PQfinish(conn);
	return rc;
}

/* A repeatable option's values, borrowed from argv. */
struct strv {
	const char **v;
	size_t n;
};

static bool strv_add(struct strv *sv, const char *s)
{
	const char **v = realloc(sv->v, (sv->n + 1) * sizeof(*v));

	if (v == NULL)
		return false;
	v[sv->n++] = s;
	sv->v = v;
	return true;
}

static int federation_cmd(int argc, char **argv)
{
	static const struct {
		const char *flag;
		size_t off;
	} single[] = {
		{"--dbname", offsetof(struct federation_opts, dbname)},
		{"--user", offsetof(struct federation_opts, user)},
		{"--password", offsetof(struct federation_opts, password)},
		{"--local-user", offsetof(struct federation_opts, local_role)},
		{"--into", offsetof(struct federation_opts, into)},
		{"--prefix", offsetof(struct federation_opts, prefix)},
		{"--cluster-column", offsetof(struct federation_opts, cluster_column)},
		{"--target-session-attrs", offsetof(struct federation_opts, target_session_attrs)},
	};
	struct federation_opts o = {0};
	struct strv schemas = {0}, except = {0}, options = {0}, grants = {0};
	struct federation_cluster *fc = NULL;
	const char *path = NULL, *dsn = NULL;
	struct config *cfg = NULL;
	char err[512], *sql = NULL;
	int rc = 2;

	for (int i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		size_t k = 0;
		bool ok = true;

		if (v == NULL)
			goto usage;
		while (k < ARRAY_SIZE(single) && strcmp(a, single[k].flag) != 0)
			k++;
		if (k < ARRAY_SIZE(single))
			*(const char **)((char *)&o + single[k].off) = v;
		else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0)
			path = v;
		else if (strcmp(a, "--apply") == 0)
			dsn = v;
		else if (strcmp(a, "--schema") == 0)
			ok = strv_add(&schemas, v);
		else if (strcmp(a, "--except") == 0)
			ok = strv_add(&except, v);
		else if (strcmp(a, "--option") == 0)
			ok = strv_add(&options, v);
		else if (strcmp(a, "--grant") == 0)
			ok = strv_add(&grants, v);
		else
			goto usage;
		if (!ok) {
			fprintf(stderr, "tenant-router: out of memory\n");
			rc = 1;
			goto out;
		}
		i++;
	}
	if (path == NULL)
		goto usage;
	/* libpq's own default user: PGUSER, else the login name. */
	if (o.user == NULL && (o.user = getenv("PGUSER")) == NULL) {
		struct passwd *pw = getpwuid(geteuid());

		o.user = pw ? pw->pw_name : NULL;
	}
	rc = 1;
	cfg = load_or_report(path);
	if (cfg == NULL)
		goto out;
	fc = calloc(cfg->nclusters, sizeof(*fc));
	for (size_t i = 0; fc && i < cfg->nclusters; i++) {
		const struct cluster_cfg *cl = &cfg->clusters[i];
		const char **hosts = calloc(cl->nhosts, sizeof(*hosts));
		uint16_t *ports = calloc(cl->nhosts, sizeof(*ports));

		fc[i] = (struct federation_cluster){cl->name, cl->nhosts, hosts, ports};
		if (hosts == NULL || ports == NULL) {
			fc[i].nhosts = 0;
			break;
		}
		for (size_t j = 0; j < cl->nhosts; j++) {
			hosts[j] = cl->hosts[j].host;
			ports[j] = cl->hosts[j].port;
		}
	}
	o.source = path;
	o.schemas = schemas.v;
	o.nschemas = schemas.n;
	o.except = except.v;
	o.nexcept = except.n;
	o.options = options.v;
	o.noptions = options.n;
	o.grants = grants.v;
	o.ngrants = grants.n;
	sql = fc ? federation_sql(fc, cfg->nclusters, &o, err, sizeof(err)) : NULL;
	if (sql == NULL) {
		fprintf(stderr, "tenant-router: federation: %s\n", fc ? err : "out of memory");
		goto out;
	}
	if (dsn)
		rc = fed_apply(dsn, sql, o.into ? o.into : "federation");
	else
		rc = fputs(sql, stdout) < 0 || fflush(stdout) != 0;
	goto out;
usage:
	fprintf(stderr,
		"usage: tenant-router federation -c FILE --dbname DB [--schema S]... [--except TABLE]...\n"
		"         [--user U] [--password P] [--local-user ROLE|PUBLIC] [--into SCHEMA]\n"
		"         [--prefix P] [--cluster-column C] [--target-session-attrs A]\n"
		"         [--option KEY=VALUE]... [--grant ROLE]... [--apply DSN]\n");
out:
	/* The password may sit in the script: clear it before it goes back to the heap. */
	if (sql) {
		explicit_bzero(sql, strlen(sql));
		free(sql);
	}
	for (size_t i = 0; fc && i < cfg->nclusters; i++) {
		free((void *)fc[i].hosts);
		free((void *)fc[i].ports);
	}
	free(fc);
	free(schemas.v);
	free(except.v);
	free(options.v);
	free(grants.v);
	config_unref(cfg);
	return rc;
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	bool do_check = false, do_route = false;
	int i = 1;

	log_init();
	if (argc > 1 && strcmp(argv[1], "federation") == 0)
		return federation_cmd(argc, argv);
	if (argc > 1 && strcmp(argv[1], "directory") == 0)
		return dircli_directory(argc - 2, argv + 2);
	if (argc > 1 && strcmp(argv[1], "move") == 0)
		return dircli_move(argc - 2, argv + 2);
	if (argc > 1 && strcmp(argv[1], "plan") == 0)
		return dircli_plan(argc - 2, argv + 2);
	if (argc > 1 && strcmp(argv[1], "route") == 0) {
		do_route = true;
		i = 2;
	}
	for (; i < argc; i++) {
		if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) &&
		    i + 1 < argc) {
			path = argv[++i];
		} else if (strcmp(argv[i], "--check") == 0) {
			do_check = true;
		} else if (strcmp(argv[i], "--version") == 0) {
			printf("tenant-router %s\n", TR_VERSION);
			return 0;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (do_route && argv[i][0] != '-') {
			break;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (path == NULL || (do_route && i >= argc)) {
		usage(stderr);
		return 2;
	}
	if (do_route)
		return route_cmd(path, argv + i, argc - i);
	if (do_check)
		return check(path);
	return run(path);
}
