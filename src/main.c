/*
 * main.c - command line, start-up, signals, reload and graceful shutdown.
 *
 *   tenant-router -c FILE                 run in the foreground
 *   tenant-router --check -c FILE         validate a configuration
 *   tenant-router route -c FILE TENANT... print where tenants go
 *
 * Start-up order: load the config, start the health checkers, and only
 * after their first round listen and tell systemd READY=1, so the first
 * client never meets an "unknown" cluster. SIGHUP loads a new config on the
 * thread pool (a big pins file must not stall the loop) and swaps it in;
 * a broken one is logged and dropped. SIGTERM/SIGINT stop accepting and
 * wait for sessions up to shutdown_timeout; a second signal closes them now.
 */
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <uv.h>

#include "cancel.h"
#include "client.h"
#include "config.h"
#include "health.h"
#include "log.h"
#include "pins.h"
#include "ring.h"
#include "route.h"
#include "router.h"
#include "sdnotify.h"
#include "splice.h"

#define TR_VERSION "0.1.0"
#define RELOAD_ERR_CAP 16384

struct daemon {
	uv_loop_t loop;
	struct router rt;
	const char *config_path;
	uv_tcp_t listeners[CONFIG_MAX_LISTEN];
	size_t nlisteners;
	uv_signal_t sighup, sigterm, sigint;
	uv_timer_t shutdown_timer;
	bool shutdown_timer_on;
	uv_work_t reload_work;
	bool reloading, reload_again;
	struct config *reload_result;
	char reload_err[RELOAD_ERR_CAP];
	bool finishing;
	int exit_code;
};

static struct daemon D;

static void usage(FILE *f)
{
	fprintf(f, "usage: tenant-router -c FILE               run in the foreground\n"
		   "       tenant-router --check -c FILE       validate a configuration\n"
		   "       tenant-router route -c FILE TENANT...  show where tenants go\n"
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

static void health_stopped_cb(void *arg)
{
	uv_close((uv_handle_t *)&D.sighup, close_noop_cb);
	uv_close((uv_handle_t *)&D.sigterm, close_noop_cb);
	uv_close((uv_handle_t *)&D.sigint, close_noop_cb);
	uv_close((uv_handle_t *)&D.shutdown_timer, close_noop_cb);
}

/* Every session is gone: stop the checkers, then the loop runs dry. */
static void finish(void)
{
	if (D.finishing)
		return;
	D.finishing = true;
	log_info("shutdown complete");
	sdnotify("STOPPING=1");
	health_stop(D.rt.health, health_stopped_cb, NULL);
}

static void on_empty(struct router *rt)
{
	finish();
}

static void close_listeners(void)
{
	for (size_t i = 0; i < D.nlisteners; i++) {
		if (!uv_is_closing((uv_handle_t *)&D.listeners[i]))
			uv_close((uv_handle_t *)&D.listeners[i], close_noop_cb);
	}
}

static void shutdown_timer_cb(uv_timer_t *t)
{
	log_info("shutdown timeout reached, closing %zu sessions", D.rt.nsessions);
	client_close_all(&D.rt);
}

static void begin_shutdown(int signum)
{
	if (D.rt.draining) {
		log_info("second signal (%s), closing %zu sessions now", strsignal(signum),
			 D.rt.nsessions);
		client_close_all(&D.rt);
		return;
	}
	D.rt.draining = true;
	sdnotify("STOPPING=1");
	close_listeners();
	log_info("shutting down on %s: waiting up to %llu ms for %zu sessions", strsignal(signum),
		 (unsigned long long)D.rt.cfg->shutdown_timeout_ms, D.rt.nsessions);
	if (D.rt.nsessions == 0) {
		finish();
		return;
	}
	uv_timer_start(&D.shutdown_timer, shutdown_timer_cb, D.rt.cfg->shutdown_timeout_ms, 0);
}

static void reload_start(void);

static void reload_work_cb(uv_work_t *w)
{
	D.reload_result = config_load(D.config_path, D.reload_err, sizeof(D.reload_err));
}

static bool same_listen(const struct config *a, const struct config *b)
{
	if (a->nlisten != b->nlisten)
		return false;
	for (size_t i = 0; i < a->nlisten; i++) {
		if (a->listen[i].port != b->listen[i].port ||
		    strcmp(a->listen[i].host, b->listen[i].host) != 0)
			return false;
	}
	return true;
}

static void reload_after_cb(uv_work_t *w, int status)
{
	struct config *nc = D.reload_result, *old = D.rt.cfg;
	int rc;

	D.reloading = false;
	D.reload_result = NULL;
	if (nc == NULL) {
		one_line(D.reload_err);
		log_error("reload failed, keeping the running configuration: %s", D.reload_err);
		goto done;
	}
	if (D.rt.draining) {
		config_unref(nc);
		return;
	}
	rc = health_apply(D.rt.health, nc, NULL, NULL);
	if (rc < 0) {
		log_error("reload failed, keeping the running configuration: %s", uv_strerror(rc));
		config_unref(nc);
		goto done;
	}
	if (!same_listen(old, nc))
		log_warn("reload: listen addresses changed; restart to apply them");
	D.rt.cfg = nc;
	config_unref(old);
	log_set_level(nc->log_level);
	log_info("reloaded configuration clusters=%zu pins=%zu", nc->nclusters,
		 pins_count(nc->pins));
done:
	sdnotify("READY=1");
	if (D.reload_again && !D.rt.draining) {
		D.reload_again = false;
		reload_start();
	}
}

static void reload_start(void)
{
	if (D.reloading) {
		D.reload_again = true;
		return;
	}
	D.reloading = true;
	sdnotify("RELOADING=1");
	log_info("reloading configuration from %s", D.config_path);
	if (uv_queue_work(&D.loop, &D.reload_work, reload_work_cb, reload_after_cb) < 0) {
		D.reloading = false;
		log_error("reload failed: could not queue work");
	}
}

static void signal_cb(uv_signal_t *h, int signum)
{
	if (signum == SIGHUP) {
		if (!D.rt.draining)
			reload_start();
		return;
	}
	begin_shutdown(signum);
}

static void connection_cb(uv_stream_t *server, int status)
{
	if (status < 0) {
		log_warn("accept: %s", uv_strerror(status));
		return;
	}
	client_accept(&D.rt, server);
}

static int listen_one(const struct host_port *hp)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
				 .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE};
	struct addrinfo *res = NULL;
	char port[8];
	uv_tcp_t *l = &D.listeners[D.nlisteners];
	int rc;

	snprintf(port, sizeof(port), "%u", hp->port);
	rc = getaddrinfo(strcmp(hp->host, "*") == 0 ? NULL : hp->host, port, &hints, &res);
	if (rc != 0) {
		log_error("listen %s:%u: %s", hp->host, hp->port, gai_strerror(rc));
		return -1;
	}
	rc = uv_tcp_init_ex(&D.loop, l, res->ai_family);
	if (rc == 0) {
		D.nlisteners++;
		rc = uv_tcp_bind(l, res->ai_addr, 0);
	}
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)l, 1024, connection_cb);
	freeaddrinfo(res);
	if (rc < 0) {
		log_error("listen %s:%u: %s", hp->host, hp->port, uv_strerror(rc));
		return -1;
	}
	log_info("listening on %s:%u", hp->host, hp->port);
	return 0;
}

static void health_ready_cb(void *arg)
{
	const struct config *cfg = D.rt.cfg;

	if (D.rt.draining)
		return;
	for (size_t i = 0; i < cfg->nlisten; i++) {
		if (listen_one(&cfg->listen[i]) < 0) {
			D.exit_code = 1;
			begin_shutdown(SIGTERM);
			return;
		}
	}
	sdnotify("READY=1");
}

static void raise_nofile(const struct config *cfg)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)cfg->max_client_conn * 2 + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur < want)
		log_warn("open file limit is %llu, below the %llu that max_client_conn = %u needs; "
			 "raise LimitNOFILE",
			 (unsigned long long)rl.rlim_cur, (unsigned long long)want,
			 cfg->max_client_conn);
}

static void walk_close_cb(uv_handle_t *h, void *arg)
{
	if (!uv_is_closing(h))
		uv_close(h, close_noop_cb);
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
	raise_nofile(cfg);
	D.config_path = path;
	if (uv_loop_init(&D.loop) != 0) {
		log_error("could not create the event loop");
		return 1;
	}
	D.rt.loop = &D.loop;
	D.rt.cfg = cfg;
	D.rt.on_empty = on_empty;
	D.rt.cancels = cancel_map_new();
	D.rt.health = health_new(&D.loop);
	if (D.rt.cancels == NULL || D.rt.health == NULL) {
		log_error("out of memory at start-up");
		return 1;
	}
	uv_signal_init(&D.loop, &D.sighup);
	uv_signal_init(&D.loop, &D.sigterm);
	uv_signal_init(&D.loop, &D.sigint);
	uv_timer_init(&D.loop, &D.shutdown_timer);
	uv_signal_start(&D.sighup, signal_cb, SIGHUP);
	uv_signal_start(&D.sigterm, signal_cb, SIGTERM);
	uv_signal_start(&D.sigint, signal_cb, SIGINT);
	log_info("tenant-router %s starting: clusters=%zu pins=%zu vnodes=%u", TR_VERSION,
		 cfg->nclusters, pins_count(cfg->pins), cfg->vnodes);
	if (health_apply(D.rt.health, cfg, health_ready_cb, NULL) < 0) {
		log_error("out of memory starting health checks");
		return 1;
	}
	uv_run(&D.loop, UV_RUN_DEFAULT);
	/* Anything still open (none expected) is closed so the loop can be freed. */
	uv_walk(&D.loop, walk_close_cb, NULL);
	uv_run(&D.loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&D.loop) != 0)
		log_warn("event loop closed with handles still open");
	health_free(D.rt.health);
	cancel_map_free(D.rt.cancels);
	config_unref(D.rt.cfg);
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

int main(int argc, char **argv)
{
	const char *path = NULL;
	bool do_check = false, do_route = false;
	int i = 1;

	log_init();
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
