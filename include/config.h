/*
 * config.h - the configuration snapshot.
 *
 * A struct config is built whole (INI parsed, validated, ring built, pins
 * loaded), then never changed: a reload builds a new one off the event loop
 * and swaps it in. Holders share it with config_ref()/config_unref(); the
 * count is atomic so any thread may drop a reference.
 */
#ifndef TR_CONFIG_H
#define TR_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "log.h"
#include "startup.h"
#include "tls.h"

struct pins;
struct ring;
struct userlist;

/* The stickiness guard on spliced sessions. */
enum guard_mode { GUARD_OFF, GUARD_ON, GUARD_STRICT };

/* How the router checks a client it authenticates itself (tenant source query). */
enum auth_type { AUTH_TRUST, AUTH_MD5, AUTH_SCRAM };

#define CONFIG_MAX_CLUSTERS 1024
#define CONFIG_MAX_HOSTS    16 /* per cluster */
#define CONFIG_MAX_LISTEN   16
#define CONFIG_MAX_ROUTES   256
#define CONFIG_MAX_ADMIN_USERS 64
/* PostgreSQL keeps 63 bytes of a database name (NAMEDATALEN - 1). */
#define CONFIG_MAX_DATABASE 63

struct host_port {
	char *host; /* owned; a name or an address, no brackets */
	uint16_t port;
};

/* pool_mode: none passes each client's login through to its own server connection. */
enum pool_mode { POOL_NONE, POOL_SESSION };

struct cluster_cfg {
	char *name; /* owned */
	uint32_t weight;
	/* Pooling: the [router] values unless set in the section. */
	enum pool_mode pool_mode;
	uint32_t pool_size;
	uint32_t max_server_conn; /* 0: no limit */
	bool pool_mode_set, pool_size_set, max_server_conn_set;
	/* TLS to this cluster's hosts: [router] server_tls_* unless overridden here. */
	enum tls_server_mode tls_mode;
	bool tls_mode_set;
	char *tls_ca_file;  /* owned; NULL: the [router] one */
	SSL_CTX *tls_ctx;   /* owned; NULL when tls_mode is disable */
	size_t nhosts;
	struct host_port hosts[CONFIG_MAX_HOSTS];
	/* For metrics and the status page, computed at load. */
	size_t npins;	   /* tenants pinned to this cluster */
	double ring_share; /* of the hash space, 0..1 */
};

/*
 * [route.NAME]: clients asking for this database go to one place whatever
 * their tenant (a federation database, an admin or analytics endpoint).
 */
struct route_cfg {
	char *name;	       /* owned */
	char *database;	       /* owned; compared exactly, as PostgreSQL does */
	int cluster;	       /* index in clusters: that cluster's writer; -1: host */
	struct host_port host; /* host.host owned; only when cluster < 0 */
	/* TLS towards a host route: the [router] server_tls_* settings. */
	enum tls_server_mode tls_mode;
	SSL_CTX *tls_ctx; /* owned; NULL for cluster routes and when tls_mode is disable */
};

struct config {
	atomic_int refs;
	char *path; /* owned */
	/* Increases with every snapshot loaded in this process (1 for the first). */
	uint64_t generation;

	/* [router] */
	size_t nlisten;
	struct host_port listen[CONFIG_MAX_LISTEN];
	struct tenant_rule rule; /* rule.key: owned */
	uint32_t max_client_conn;
	uint32_t threads; /* event loops; "auto" = the CPUs we may use */
	uint64_t client_login_timeout_ms;
	uint64_t server_connect_timeout_ms;
	uint64_t shutdown_timeout_ms;
	enum log_level log_level;
	char *peer_socket_dir; /* owned; NULL: no peers (rolling restart hand-over, cancels) */
	char *tenant_column; /* owned; NULL: the column source is off */
	enum guard_mode guard;
	size_t guard_max_statement; /* the longest statement the guard holds to read */
	size_t guard_max_held;	    /* what all sessions' guards may hold together */
	bool guard_server_check;    /* hosts must run the tenant_guard server library */
	struct host_port metrics_listen; /* HTTP metrics and status; host NULL: off */
	/* Session pooling (the per-cluster values are in struct cluster_cfg). */
	enum pool_mode pool_mode;
	bool pooling; /* some cluster has pool_mode = session */
	uint32_t pool_size;
	uint32_t max_server_conn; /* per cluster; 0: no limit */
	uint64_t server_idle_timeout_ms; /* 0: never */
	uint64_t server_lifetime_ms;	 /* 0: never */
	char *server_reset_query;	 /* owned; "" : none */
	char *pool_reset_sql; /* owned: what runs at logout (server_reset_query, or at least RESET of
				 tenant_key) */
	uint64_t query_wait_timeout_ms;	 /* 0: wait for ever */
	uint64_t server_login_retry_ms;
	/* The admin console (virtual database tenant_router). */
	char **admin_users; /* owned array of owned names; NULL: the console is off */
	size_t nadmin_users;
	bool admin_trust;	     /* admins log in without a password */
	uint64_t pause_timeout_ms;   /* how long a paused tenant's new session waits */

	/* [auth]: clients the router authenticates itself (tenant source query). */
	enum auth_type auth_type;
	char *auth_file;	   /* owned; resolved path or NULL */
	struct userlist *userlist; /* owned; loaded from auth_file */
	char *auth_query;	   /* owned or NULL */
	int auth_cluster;	   /* index of the cluster whose health connection runs auth_query */
	char *server_passfile;	   /* owned; resolved path or NULL */

	/* [router] client_tls_*: we are the TLS server for clients. */
	enum tls_client_mode client_tls_mode;
	char *client_tls_cert_file, *client_tls_key_file, *client_tls_ca_file; /* owned */
	char *client_tls_protocols, *client_tls_ciphers;			/* owned */
	SSL_CTX *client_tls_ctx; /* owned; NULL when disabled */

	/* [router] server_tls_*: we are the TLS client of coordinators. */
	enum tls_server_mode server_tls_mode;
	char *server_tls_ca_file, *server_tls_cert_file, *server_tls_key_file; /* owned */
	char *server_tls_protocols, *server_tls_ciphers;			/* owned */

	/* [health] */
	uint64_t health_interval_ms;
	uint64_t health_timeout_ms;
	uint32_t health_fail_after;
	char *health_conninfo; /* owned; may be "" */
	uint64_t health_worker_interval_ms; /* Citus worker check; 0: off */
	uint64_t health_worker_timeout_ms;

	/* [ring] */
	uint32_t vnodes;

	/* [directory]: the shared tenant directory (README, "Tenant directory"); off without
	 * conninfo. */
	char *dir_conninfo;        /* owned; NULL: no directory */
	char *dir_schema;          /* owned; an SQL identifier, default tenant_router */
	uint64_t dir_refresh_ms;   /* full refresh, besides LISTEN + incremental fetches */
	uint64_t dir_heartbeat_ms; /* the routers row */
	uint64_t dir_lease_ms;     /* without a heartbeat that long, the copy is stale */
	bool dir_stale_serve;      /* directory_stale = serve: route by a stale copy anyway */
	char *dir_cache_file;      /* owned; resolved path or NULL */
	uint64_t dir_move_drain_timeout_ms; /* live sessions of a moving tenant, then FATAL */
	char *dir_router_id;                /* owned; NULL: HOSTNAME:PID */

	/* [move]: what `tenant-router move` copies. */
	char **move_tables; /* owned: SQL identifiers (schema.table allowed) */
	size_t nmove_tables;
	char *move_tenant_column; /* owned; NULL: tenant_id */
	char *move_conninfo;      /* owned; NULL: [health] conninfo (hosts from each cluster) */
	uint64_t move_fence_timeout_ms; /* how long move waits for every router */

	/* [cluster.NAME], in file order; the ring's member i is clusters[i]. */
	size_t nclusters;
	struct cluster_cfg *clusters; /* owned */
	const char **cluster_names;   /* owned array, names borrowed from clusters */

	/* [route.NAME], in file order. */
	size_t nroutes;
	struct route_cfg *routes; /* owned */

	struct ring *ring; /* owned */
	struct pins *pins; /* owned */
	char *pins_file;   /* owned; resolved path or NULL */
	/*
	 * A hash of what decides placement (cluster names and weights, vnodes,
	 * every pin and its cluster's name), independent of the order of
	 * sections and pins: two routers that agree on it route alike.
	 */
	uint64_t fingerprint;
};

/*
 * Loads and validates a configuration file, building its ring and pins.
 * Returns NULL with every problem found written to err, one per line
 * ("FILE:LINE: [section] key: reason"). May take seconds for a large pins
 * file: call it off the event loop. The caller owns one reference.
 */
struct config *config_load(const char *path, char *err, size_t errlen) MUSTCHECK;

/*
 * The same, but the pins of [pins] file are read from pins_path instead (a
 * rewritten copy the admin console is about to rename over it); the
 * snapshot's pins_file is still the configured path. A configuration
 * without [pins] file is an error here.
 */
struct config *config_load_pins(const char *path, const char *pins_path, char *err,
				size_t errlen) MUSTCHECK;

/* Whether user may use the admin console. */
bool config_is_admin(const struct config *c, const char *user);

/*
 * Every setting for SHOW CONFIG: section.key (keys of [router] bare), its
 * value now, its default, and whether a reload applies it (false: a
 * restart). Secrets are not shown. fn is called once per setting.
 */
typedef void (*config_show_fn)(void *arg, const char *key, const char *value,
			       const char *defval, bool reloadable);
void config_show(const struct config *c, config_show_fn fn, void *arg);

struct config *config_ref(struct config *c);
void config_unref(struct config *c);

/* Index of the cluster with this name, or -1. */
int config_cluster_index(const struct config *c, const char *name);

/*
 * The static route for a client's database, or NULL. database is the one
 * the server would use: the startup packet's, or the user name without one.
 */
const struct route_cfg *config_route_lookup(const struct config *c, const char *database);

/* Parses "500ms", "5s", "1m", "1h" or bare seconds into milliseconds. */
bool config_parse_duration(const char *s, uint64_t *ms);

/* Parses "1048576", "512kB", "1MB", "1GiB" (units of 1024) into bytes. */
bool config_parse_size(const char *s, uint64_t *bytes);

/* Parses "HOST:PORT", "[V6]:PORT" or "HOST" (port = defport). Owned copy in out->host. */
bool config_parse_host_port(const char *s, uint16_t defport, struct host_port *out);

#endif /* TR_CONFIG_H */
