/*
 * metrics.c - what /metrics, /status.json, / and /healthz answer.
 *
 * Every answer is built at request time, on the main loop, from three
 * sources that are each safe to read there: the stats.h counters (atomics,
 * written by every loop), the health checkers (health_hosts and
 * health_writer, under their read lock) and the current configuration
 * (borrowed from the owner for the request). Nothing is cached, so a scrape
 * costs a few microseconds per cluster and host and never blocks a session.
 *
 * Names follow the Prometheus conventions: a tenant_router_ prefix, _total
 * on counters, base units (seconds, bytes), labels for what varies. README
 * ("Metrics and status page") lists them; keep the two in step.
 *
 * The status page is src/status.html, embedded at build time (the Makefile
 * turns it into a C string): no external assets, so it works on a
 * router with no way out to the internet.
 */
#include "metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "client.h"
#include "config.h"
#include "dirsync.h"
#include "health.h"
#include "http.h"
#include "log.h"
#include "stats.h"

#include "status_html.h"

#define NSTATES (CLIENT_ADMIN + 1)
/* A string literal, without its NUL. */
#define APPEND_LIT(res, lit) http_append((res), (lit), sizeof(lit) - 1)

struct metrics {
	struct http_server *srv; /* owned */
	struct metrics_source src;
	uint64_t started_ms; /* uv_now at start, for uptime */
	uv_loop_t *loop;     /* borrowed */
};

/* --- escaping --- */

/* A Prometheus label value: backslash, double quote and newline are escaped. */
static void put_label(struct http_response *res, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			http_printf(res, "\\%c", *s);
		else if (*s == '\n')
			APPEND_LIT(res, "\\n");
		else
			http_append(res, s, 1);
	}
}

/* Length of the valid UTF-8 sequence at p (n bytes left), or 0 if it is not one. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
	size_t len = p[0] >= 0xf0 && p[0] <= 0xf4 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc2 ? 2 : 0;

	if (p[0] >= 0xf5 || len == 0 || len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	}
	return len;
}

/*
 * A JSON string. Tenants are opaque bytes: valid UTF-8 passes as is, any
 * other byte becomes \u00XX, so the document always parses.
 */
static void put_json(struct http_response *res, const char *str)
{
	const unsigned char *s = (const unsigned char *)(str ? str : "");
	size_t n = strlen((const char *)s);

	APPEND_LIT(res, "\"");
	for (size_t i = 0; i < n;) {
		unsigned char ch = s[i];
		size_t k;

		if (ch == '"' || ch == '\\') {
			http_printf(res, "\\%c", ch);
			i++;
		} else if (ch < 0x20 || ch == 0x7f) {
			http_printf(res, "\\u%04x", ch);
			i++;
		} else if (ch < 0x80) {
			http_append(res, &s[i], 1);
			i++;
		} else if ((k = utf8_seq(s + i, n - i)) > 0) {
			http_append(res, &s[i], k);
			i += k;
		} else {
			http_printf(res, "\\u%04x", ch);
			i++;
		}
	}
	APPEND_LIT(res, "\"");
}

static void family(struct http_response *res, const char *name, const char *type, const char *help)
{
	http_printf(res, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* --- /metrics --- */

static void histogram(struct http_response *res, const char *name, const char *help,
                      enum stats_hist_kind k)
{
	struct stats_hist_view v;
	uint64_t cum = 0;

	stats_hist_read(k, &v);
	family(res, name, "histogram", help);
	for (size_t i = 0; i < STATS_NBUCKETS; i++) {
		cum += v.bucket[i];
		http_printf(res, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, stats_bucket_bound(i),
		            cum);
	}
	http_printf(res, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.9g\n%s_count %" PRIu64 "\n",
	            name, v.count, name, v.sum, name, v.count);
}

/* One sample per host of the family in which (health_hosts callback). */
struct host_sample {
	struct http_response *res;
	int which;
};

static void host_sample_cb(void *arg, const struct health_host_info *hi)
{
	struct host_sample *hs = arg;
	struct http_response *res = hs->res;
	static const char *const names[] = {
	        "tenant_router_host_up", "tenant_router_host_in_recovery",
	        "tenant_router_host_writer", "tenant_router_host_last_check_seconds",
	        "tenant_router_host_consecutive_failures"};

	http_printf(res, "%s{cluster=\"", names[hs->which]);
	put_label(res, hi->cluster);
	APPEND_LIT(res, "\",host=\"");
	put_label(res, hi->host);
	http_printf(res, ":%u\"} ", hi->port);
	switch (hs->which) {
	case 0:
		http_printf(res, "%d\n", hi->state == HEALTH_UP);
		break;
	case 1:
		http_printf(res, "%d\n", hi->state == HEALTH_UP && hi->in_recovery);
		break;
	case 2:
		http_printf(res, "%d\n", hi->writer);
		break;
	case 3:
		http_printf(res, "%.6f\n", (double)hi->last_check_ns / 1e9);
		break;
	default:
		http_printf(res, "%u\n", hi->fails);
		break;
	}
}

static void hosts_family(struct metrics *m, struct http_response *res, int which, const char *name,
                         const char *help)
{
	struct host_sample hs = {res, which};

	family(res, name, "gauge", help);
	health_hosts(m->src.health, host_sample_cb, &hs);
}

static void cluster_label(struct http_response *res, const char *metric, const char *cluster)
{
	http_printf(res, "%s{cluster=\"", metric);
	put_label(res, cluster);
	APPEND_LIT(res, "\"");
}


/* The tenant directory's copy (dirsync.h), when there is one. */
static void directory_metrics(struct metrics *m, struct http_response *res)
{
	struct dirsync_status st;

	dirsync_status(m->src.dir, &st);
	family(res, "tenant_router_directory_loaded", "gauge",
	       "1 once a copy of the tenant directory is loaded (from the directory or "
	       "cache_file).");
	http_printf(res, "tenant_router_directory_loaded %d\n", st.loaded);
	family(res, "tenant_router_directory_connected", "gauge",
	       "1 while the router holds a connection to the tenant directory.");
	http_printf(res, "tenant_router_directory_connected %d\n", st.connected);
	family(res, "tenant_router_directory_stale", "gauge",
	       "1 when the last accepted heartbeat is older than directory_lease.");
	http_printf(res, "tenant_router_directory_stale %d\n", st.stale);
	family(res, "tenant_router_directory_age_seconds", "gauge",
	       "Seconds since the directory last accepted this router's heartbeat.");
	http_printf(res, "tenant_router_directory_age_seconds %.3f\n", (double)st.age_ms / 1e3);
	family(res, "tenant_router_directory_version", "gauge",
	       "The highest row version in this router's copy of the directory.");
	http_printf(res, "tenant_router_directory_version %" PRId64 "\n", st.version);
	family(res, "tenant_router_directory_rows", "gauge", "Rows in the copy of the directory.");
	http_printf(res, "tenant_router_directory_rows %zu\n", st.rows);
	family(res, "tenant_router_directory_ignored_rows", "gauge",
	       "Rows naming an unknown cluster or state: their tenants are refused.");
	http_printf(res, "tenant_router_directory_ignored_rows %zu\n", st.ignored);
	family(res, "tenant_router_directory_moving_tenants", "gauge", "Tenants in state moving.");
	http_printf(res, "tenant_router_directory_moving_tenants %zu\n", st.moving);
	family(res, "tenant_router_directory_memory_bytes", "gauge", "Bytes of the copy.");
	http_printf(res, "tenant_router_directory_memory_bytes %zu\n", st.memory);
	family(res, "tenant_router_directory_loads_total", "counter",
	       "Directory fetches, by kind (full: the whole table; incremental: changed rows).");
	http_printf(res,
	            "tenant_router_directory_loads_total{kind=\"full\"} %" PRIu64 "\n"
	            "tenant_router_directory_loads_total{kind=\"incremental\"} %" PRIu64 "\n",
	            st.loads, st.incrementals);
	family(res, "tenant_router_directory_failures_total", "counter",
	       "Failed connections or statements to the directory.");
	http_printf(res, "tenant_router_directory_failures_total %" PRIu64 "\n", st.failures);
	family(res, "tenant_router_directory_routers", "gauge",
	       "Live routers in the directory's routers table (this one included).");
	http_printf(res, "tenant_router_directory_routers %zu\n", st.routers);
	family(res, "tenant_router_directory_fingerprint_mismatch", "gauge",
	       "Live routers whose configuration fingerprint differs from this one's.");
	http_printf(res, "tenant_router_directory_fingerprint_mismatch %zu\n", st.mismatched);
}

static void render_metrics(struct metrics *m, struct http_response *res)
{
	const struct config *cfg = m->src.config(m->src.arg);
	struct stats_cluster_view *cv = malloc(STATS_MAX_CLUSTERS * sizeof(*cv));
	struct stats_count counts[STATS_MAX_SQLSTATES];
	int64_t states[STATS_MAX_STATES];
	size_t ncv, ncounts, npins = 0;
	struct health_target t;
	char why[320];

	if (cv == NULL) {
		res->failed = true;
		return;
	}
	/* Every configured cluster shows, with zeros, from the first scrape on. */
	for (size_t i = 0; i < cfg->nclusters; i++)
		(void)stats_cluster(cfg->clusters[i].name);
	ncv = stats_clusters(cv, STATS_MAX_CLUSTERS);
	res->content_type = "text/plain; version=0.0.4; charset=utf-8";

	family(res, "tenant_router_build_info", "gauge", "The router's version (always 1).");
	http_printf(res, "tenant_router_build_info{version=\"%s\"} 1\n", m->src.version);
	family(res, "tenant_router_config_info", "gauge",
	       "Fingerprint of what places tenants: cluster names and weights, vnodes, pins "
	       "(always 1). Routers that show the same one route alike.");
	http_printf(res, "tenant_router_config_info{fingerprint=\"%016" PRIx64 "\"} 1\n",
	            cfg->fingerprint);
	family(res, "tenant_router_uptime_seconds", "gauge", "Seconds since the router started.");
	http_printf(res, "tenant_router_uptime_seconds %.3f\n",
	            (double)(uv_now(m->loop) - m->started_ms) / 1e3);

	stats_states(states);
	family(res, "tenant_router_connections", "gauge",
	       "Client connections open now, by session state (routed or not).");
	for (int s = 0; s < NSTATES; s++)
		http_printf(res, "tenant_router_connections{state=\"%s\"} %" PRId64 "\n",
		            client_state_name((enum client_state)s), states[s]);

	family(res, "tenant_router_sessions", "gauge",
	       "Sessions routed to a cluster and open now, by cluster and state.");
	for (size_t i = 0; i < ncv; i++) {
		for (int s = CLIENT_ROUTING; s < NSTATES; s++) {
			if (s == CLIENT_LOCAL_AUTH || s == CLIENT_NO_TENANT || s == CLIENT_ADMIN)
				continue; /* a session in these has no cluster yet */
			cluster_label(res, "tenant_router_sessions", cv[i].name);
			http_printf(res, ",state=\"%s\"} %" PRId64 "\n",
			            client_state_name((enum client_state)s), cv[i].sessions[s]);
		}
	}

	family(res, "tenant_router_sessions_routed_total", "counter",
	       "Sessions routed to a cluster's writer, by cluster and source (pin or ring).");
	for (size_t i = 0; i < ncv; i++) {
		cluster_label(res, "tenant_router_sessions_routed_total", cv[i].name);
		http_printf(res, ",source=\"pin\"} %" PRIu64 "\n", cv[i].routed_pin);
		cluster_label(res, "tenant_router_sessions_routed_total", cv[i].name);
		http_printf(res, ",source=\"ring\"} %" PRIu64 "\n", cv[i].routed_ring);
	}

	ncounts = stats_refusal_counts(counts, ARRAY_SIZE(counts));
	family(res, "tenant_router_refusals_total", "counter",
	       "Connections and statements refused, by SQLSTATE (08004 no tenant, 57P03 no "
	       "writer, 53300 limits, 42501 the guard, ...).");
	for (size_t i = 0; i < ncounts; i++) {
		APPEND_LIT(res, "tenant_router_refusals_total{sqlstate=\"");
		put_label(res, counts[i].sqlstate);
		http_printf(res, "\"} %" PRIu64 "\n", counts[i].n);
	}

	family(res, "tenant_router_received_bytes_total", "counter",
	       "Bytes read from clients and from servers (as on the wire: TLS included).");
	http_printf(res,
	            "tenant_router_received_bytes_total{peer=\"client\"} %" PRIu64 "\n"
	            "tenant_router_received_bytes_total{peer=\"server\"} %" PRIu64 "\n",
	            stats_bytes_total(STATS_FROM_CLIENT), stats_bytes_total(STATS_FROM_SERVER));
	family(res, "tenant_router_sent_bytes_total", "counter",
	       "Bytes written to clients and to servers (as on the wire: TLS included).");
	http_printf(res,
	            "tenant_router_sent_bytes_total{peer=\"client\"} %" PRIu64 "\n"
	            "tenant_router_sent_bytes_total{peer=\"server\"} %" PRIu64 "\n",
	            stats_bytes_total(STATS_TO_CLIENT), stats_bytes_total(STATS_TO_SERVER));

	histogram(res, "tenant_router_login_duration_seconds",
	          "From accept to the server's first ReadyForQuery, for sessions that got there.",
	          STATS_LOGIN);
	histogram(res, "tenant_router_health_check_duration_seconds",
	          "How long each health check took (failed ones included).", STATS_CHECK);

	hosts_family(m, res, 0, "tenant_router_host_up", "1 if the host's health checks pass.");
	hosts_family(m, res, 1, "tenant_router_host_in_recovery",
	             "1 if the host is up and a standby (in recovery), 0 for a primary or a host "
	             "that is down.");
	hosts_family(m, res, 2, "tenant_router_host_writer",
	             "1 for the host sessions of its cluster go to.");
	hosts_family(m, res, 3, "tenant_router_host_last_check_seconds",
	             "How long the host's last finished health check took.");
	hosts_family(m, res, 4, "tenant_router_host_consecutive_failures",
	             "Health checks of the host that failed in a row.");

	family(res, "tenant_router_cluster_has_writer", "gauge",
	       "1 if the cluster has a writer (its tenants can connect).");
	for (size_t i = 0; i < cfg->nclusters; i++) {
		bool ok = health_writer(m->src.health, cfg->clusters[i].name, &t, why, sizeof(why));

		cluster_label(res, "tenant_router_cluster_has_writer", cfg->clusters[i].name);
		http_printf(res, "} %d\n", ok);
	}
	family(res, "tenant_router_cluster_ring_share", "gauge",
	       "The share of the hash ring the cluster owns (of tenants not pinned).");
	for (size_t i = 0; i < cfg->nclusters; i++) {
		cluster_label(res, "tenant_router_cluster_ring_share", cfg->clusters[i].name);
		http_printf(res, "} %.6f\n", cfg->clusters[i].ring_share);
	}
	family(res, "tenant_router_cluster_pins", "gauge", "Tenants pinned to the cluster.");
	for (size_t i = 0; i < cfg->nclusters; i++) {
		cluster_label(res, "tenant_router_cluster_pins", cfg->clusters[i].name);
		http_printf(res, "} %zu\n", cfg->clusters[i].npins);
		npins += cfg->clusters[i].npins;
	}
	family(res, "tenant_router_pins", "gauge", "Pinned tenants in the running configuration.");
	http_printf(res, "tenant_router_pins %zu\n", npins);

	family(res, "tenant_router_pool_server_connections", "gauge",
	       "Pooled server connections (pool_mode = session), by state (busy: lent to a "
	       "client or being reset).");
	http_printf(res,
	            "tenant_router_pool_server_connections{state=\"idle\"} %" PRId64 "\n"
	            "tenant_router_pool_server_connections{state=\"busy\"} %" PRId64 "\n",
	            stats_pool_read(STATS_POOL_IDLE), stats_pool_read(STATS_POOL_BUSY));
	family(res, "tenant_router_pool_server_logins_total", "counter",
	       "Server connections the router logged in to for a pool.");
	http_printf(res, "tenant_router_pool_server_logins_total %" PRId64 "\n",
	            stats_pool_read(STATS_POOL_CREATED));
	family(res, "tenant_router_pool_reused_total", "counter",
	       "Logins served by an idle pooled server connection.");
	http_printf(res, "tenant_router_pool_reused_total %" PRId64 "\n",
	            stats_pool_read(STATS_POOL_REUSED));

	family(res, "tenant_router_reloads_total", "counter",
	       "Configuration reloads, by result (ok: swapped in; failed: kept the old one).");
	http_printf(res,
	            "tenant_router_reloads_total{result=\"ok\"} %" PRIu64 "\n"
	            "tenant_router_reloads_total{result=\"failed\"} %" PRIu64 "\n",
	            stats_reloads(true), stats_reloads(false));
	if (m->src.dir)
		directory_metrics(m, res);
	free(cv);
}

/* --- /status.json --- */

/* A copy of one host, kept past the health_hosts callback. */
struct host_copy {
	char cluster[64];
	char host[256];
	uint16_t port;
	enum health_state state;
	bool in_recovery, writer;
	uint32_t timeline, fails;
	char why[256];
	uint64_t last_check_ns;
	char history[HEALTH_HISTORY + 1];
};

struct host_list {
	struct host_copy *v;
	size_t n, cap;
	bool oom;
};

static void host_copy_cb(void *arg, const struct health_host_info *hi)
{
	struct host_list *l = arg;
	struct host_copy *c;

	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct host_copy *v = realloc(l->v, cap * sizeof(*v));

		if (v == NULL) {
			l->oom = true;
			return;
		}
		l->v = v;
		l->cap = cap;
	}
	c = &l->v[l->n++];
	snprintf(c->cluster, sizeof(c->cluster), "%s", hi->cluster);
	snprintf(c->host, sizeof(c->host), "%s", hi->host);
	c->port = hi->port;
	c->state = hi->state;
	c->in_recovery = hi->in_recovery;
	c->writer = hi->writer;
	c->timeline = hi->timeline;
	c->fails = hi->fails;
	snprintf(c->why, sizeof(c->why), "%s", hi->why ? hi->why : "");
	c->last_check_ns = hi->last_check_ns;
	memcpy(c->history, hi->history, sizeof(c->history));
}

static const char *health_name(enum health_state s)
{
	return s == HEALTH_UP ? "up" : s == HEALTH_DOWN ? "down" : "unknown";
}

static void json_host(struct http_response *res, const struct host_copy *h)
{
	char hp[300];

	snprintf(hp, sizeof(hp), "%s:%u", h->host, h->port);
	APPEND_LIT(res, "{\"host\":");
	put_json(res, hp);
	http_printf(res,
	            ",\"health\":\"%s\",\"role\":\"%s\",\"writer\":%s,\"timeline\":%u,"
	            "\"consecutive_failures\":%u,\"last_check_seconds\":%.6f,\"history\":",
	            health_name(h->state),
	            h->state != HEALTH_UP ? "unknown"
	            : h->in_recovery      ? "standby"
	                                  : "primary",
	            h->writer ? "true" : "false", h->timeline, h->fails,
	            (double)h->last_check_ns / 1e9);
	put_json(res, h->history);
	APPEND_LIT(res, ",\"why\":");
	put_json(res, h->why);
	APPEND_LIT(res, "}");
}

/*
 * A cluster's state: "up" with a writer; "down" when every host is down;
 * otherwise "no_writer" (hosts answer, but none may take its sessions).
 */
static const char *cluster_state(const struct host_list *hl, const char *name, bool has_writer)
{
	size_t n = 0, down = 0;

	if (has_writer)
		return "up";
	for (size_t i = 0; i < hl->n; i++) {
		if (strcmp(hl->v[i].cluster, name) != 0)
			continue;
		n++;
		down += hl->v[i].state != HEALTH_UP;
	}
	return n == down ? "down" : "no_writer";
}

static void render_status(struct metrics *m, struct http_response *res)
{
	const struct config *cfg = m->src.config(m->src.arg);
	struct stats_refusal *recent = malloc(STATS_RECENT * sizeof(*recent));
	struct stats_count counts[STATS_MAX_SQLSTATES];
	struct host_list hl = {0};
	int64_t states[STATS_MAX_STATES];
	size_t nrecent, ncounts;

	if (recent == NULL) {
		res->failed = true;
		return;
	}
	health_hosts(m->src.health, host_copy_cb, &hl);
	if (hl.oom)
		res->failed = true;
	res->content_type = "application/json";
	http_printf(res,
	            "{\"version\":\"%s\",\"fingerprint\":\"%016" PRIx64 "\","
	            "\"uptime_seconds\":%.3f,\"accepting\":%s,\"vnodes\":%u,\"clusters\":[",
	            m->src.version, cfg->fingerprint,
	            (double)(uv_now(m->loop) - m->started_ms) / 1e3,
	            m->src.accepting(m->src.arg) ? "true" : "false", cfg->vnodes);
	for (size_t i = 0; i < cfg->nclusters; i++) {
		const struct cluster_cfg *cl = &cfg->clusters[i];
		struct stats_cluster_view v = {0};
		struct health_target t;
		char why[320] = "";
		bool ok = health_writer(m->src.health, cl->name, &t, why, sizeof(why));
		int64_t total = 0;
		bool first = true;

		(void)stats_cluster(cl->name);
		(void)stats_cluster_read(cl->name, &v);
		for (int s = 0; s < NSTATES; s++)
			total += v.sessions[s];
		http_printf(res, "%s{\"name\":", i ? "," : "");
		put_json(res, cl->name);
		http_printf(res, ",\"state\":\"%s\",\"writer\":", cluster_state(&hl, cl->name, ok));
		if (ok) {
			char hp[300];

			snprintf(hp, sizeof(hp), "%s:%u", t.host, t.port);
			put_json(res, hp);
		} else {
			APPEND_LIT(res, "null");
		}
		APPEND_LIT(res, ",\"why\":");
		put_json(res, ok ? "" : why);
		http_printf(res,
		            ",\"weight\":%u,\"ring_share\":%.6f,\"pinned_tenants\":%zu,"
		            "\"sessions\":%" PRId64 ",\"sessions_by_state\":{",
		            cl->weight, cl->ring_share, cl->npins, total);
		for (int s = CLIENT_ROUTING; s < NSTATES; s++) {
			if (s == CLIENT_LOCAL_AUTH || s == CLIENT_NO_TENANT || s == CLIENT_ADMIN)
				continue;
			http_printf(res, "%s\"%s\":%" PRId64, s == CLIENT_ROUTING ? "" : ",",
			            client_state_name((enum client_state)s), v.sessions[s]);
		}
		http_printf(res,
		            "},\"routed\":{\"pin\":%" PRIu64 ",\"ring\":%" PRIu64 "},\"hosts\":[",
		            v.routed_pin, v.routed_ring);
		for (size_t j = 0; j < hl.n; j++) {
			if (strcmp(hl.v[j].cluster, cl->name) != 0)
				continue;
			if (!first)
				APPEND_LIT(res, ",");
			first = false;
			json_host(res, &hl.v[j]);
		}
		APPEND_LIT(res, "]}");
	}
	stats_states(states);
	APPEND_LIT(res, "],\"connections\":{");
	for (int s = 0; s < NSTATES; s++)
		http_printf(res, "%s\"%s\":%" PRId64, s ? "," : "",
		            client_state_name((enum client_state)s), states[s]);
	ncounts = stats_refusal_counts(counts, ARRAY_SIZE(counts));
	APPEND_LIT(res, "},\"refusals\":{");
	for (size_t i = 0; i < ncounts; i++) {
		if (i)
			APPEND_LIT(res, ",");
		put_json(res, counts[i].sqlstate);
		http_printf(res, ":%" PRIu64, counts[i].n);
	}
	nrecent = stats_recent_refusals(recent, STATS_RECENT);
	APPEND_LIT(res, "},\"recent_refusals\":[");
	for (size_t i = 0; i < nrecent; i++) {
		http_printf(res, "%s{\"unix_ms\":%" PRId64 ",\"sqlstate\":", i ? "," : "",
		            recent[i].unix_ms);
		put_json(res, recent[i].sqlstate);
		APPEND_LIT(res, ",\"cluster\":");
		put_json(res, recent[i].cluster);
		APPEND_LIT(res, ",\"tenant\":");
		put_json(res, recent[i].tenant);
		APPEND_LIT(res, "}");
	}
	APPEND_LIT(res, "]");
	if (m->src.dir) {
		struct dirsync_status ds;

		dirsync_status(m->src.dir, &ds);
		http_printf(res,
		            ",\"directory\":{\"loaded\":%s,\"connected\":%s,\"stale\":%s,"
		            "\"from_cache\":%s,\"version\":%" PRId64 ",\"rows\":%zu,\"ignored\":%zu,"
		            "\"moving\":%zu,\"age_ms\":%" PRIu64 ",\"routers\":%zu,"
		            "\"fingerprint_mismatch\":%zu,\"last_load_ms\":%" PRIu64
		            ",\"last_apply_us\":%" PRIu64 "}",
		            ds.loaded ? "true" : "false", ds.connected ? "true" : "false",
		            ds.stale ? "true" : "false", ds.from_cache ? "true" : "false", ds.version,
		            ds.rows, ds.ignored, ds.moving, ds.age_ms, ds.routers, ds.mismatched,
		            ds.last_load_ms, ds.last_apply_us);
	}
	APPEND_LIT(res, "}\n");
	free(hl.v);
	free(recent);
}

/* --- /healthz, dispatch --- */

/* 200 while the router listens and at least one cluster has a writer, else 503. */
static void render_healthz(struct metrics *m, struct http_response *res)
{
	const struct config *cfg = m->src.config(m->src.arg);
	struct health_target t;
	char why[320];
	size_t writers = 0;

	for (size_t i = 0; i < cfg->nclusters; i++)
		writers +=
		        health_writer(m->src.health, cfg->clusters[i].name, &t, why, sizeof(why));
	if (!m->src.accepting(m->src.arg)) {
		res->status = 503;
		http_printf(res, "not accepting connections\n");
	} else if (writers == 0) {
		res->status = 503;
		http_printf(res, "no cluster has a writer\n");
	} else {
		http_printf(res, "ok\n");
	}
}

static void handle(void *arg, const struct http_request *req, struct http_response *res)
{
	struct metrics *m = arg;

	if (strcmp(req->method, "GET") != 0) {
		res->status = 405;
		res->allow = "GET";
		http_printf(res, "method not allowed: only GET\n");
		return;
	}
	if (strcmp(req->path, "/metrics") == 0) {
		render_metrics(m, res);
	} else if (strcmp(req->path, "/status.json") == 0) {
		render_status(m, res);
	} else if (strcmp(req->path, "/healthz") == 0) {
		render_healthz(m, res);
	} else if (strcmp(req->path, "/") == 0) {
		res->content_type = "text/html; charset=utf-8";
		http_append(res, status_html, sizeof(status_html) - 1);
	} else {
		res->status = 404;
		http_printf(res, "not found; try /, /metrics, /status.json or /healthz\n");
	}
}

struct metrics *metrics_start(uv_loop_t *loop, const struct host_port *at,
                              const struct metrics_source *src)
{
	struct metrics *m = calloc(1, sizeof(*m));
	char err[256];

	if (m == NULL) {
		log_error("metrics: out of memory");
		return NULL;
	}
	m->src = *src;
	m->loop = loop;
	m->started_ms = uv_now(loop);
	m->srv = http_start(loop, at->host, at->port, handle, m, err, sizeof(err));
	if (m->srv == NULL) {
		log_error("metrics: cannot listen on %s:%u: %s", at->host, at->port, err);
		free(m);
		return NULL;
	}
	log_info("metrics listening on %s:%u", at->host, at->port);
	return m;
}

void metrics_stop(struct metrics *m)
{
	if (m == NULL)
		return;
	http_stop(m->srv);
	free(m);
}
