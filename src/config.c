/*
 * config.c - INI file -> immutable struct config.
 *
 * inih does the lexing; we count lines ourselves (through ini_parse_stream's
 * reader) so every problem names its line, and we keep going after a problem
 * so --check and a failed reload report all of them at once. Nothing here
 * touches the event loop: a reload calls config_load() on a worker thread.
 *
 * A typo must never quietly change where tenants go, so anything that would
 * change the ring without saying so is an error: a cluster section without
 * hosts (even an empty one), a section given twice, an unknown section or
 * key, a host listed twice or shared by two clusters.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>
#include <uv.h>
#include <libpq-fe.h>
#include <xxhash.h>

#include "auth.h"
#include "pins.h"
#include "ring.h"

#define MAX_REPORTED 50
/* inih (ini.c's MAX_SECTION) passes the handler only this much of a section name. */
#define INIH_SECTION_KEPT ((size_t)49)
#define CLUSTER_NAME_MAX  (INIH_SECTION_KEPT - sizeof("cluster.") + 1)
#define ROUTE_NAME_MAX    (INIH_SECTION_KEPT - sizeof("route.") + 1)

struct inline_pin {
	char *tenant;  /* owned */
	char *cluster; /* owned */
	int line;
};

/* A "[name]" line, as the reader saw it. */
struct header {
	char *name; /* owned; whole (inih keeps only the first 49 bytes) */
	int line;
};

/* One entry of a cluster's hosts, to find a host listed twice. */
struct host_ref {
	char *canon;	  /* owned; an address in canonical form or a name in lower case */
	const char *host; /* borrowed: clusters[cluster].hosts[], as written */
	uint16_t port;
	size_t cluster;
	int line;
	size_t seq; /* file order */
	/* Set when an earlier entry has the same host and port: */
	bool dup;
	size_t first_cluster;
	int first_line;
};

/* What validate() needs to know about a [route.NAME] besides its struct route_cfg. */
struct route_ref {
	int line;	    /* of the header */
	char *cluster;	    /* owned; the cluster = value, checked once clusters are known */
	int cluster_line;
	int host_line;	    /* 0: no host = line */
	int database_line;  /* 0: no database = line */
};

struct loader {
	struct config *c;
	const char *path;
	FILE *f;
	int line;
	/* Section headers in file order; the last one is the current section. */
	struct header *headers;
	size_t nheaders;
	bool section_ok;    /* false: refused at its header, its keys are skipped */
	size_t cur_cluster; /* index in c->clusters when in a [cluster.NAME] */
	size_t cur_route;   /* index in c->routes when in a [route.NAME] */
	struct route_ref *rrefs; /* parallel to c->routes */
	bool after_key;	    /* the handler ran since the last header (see note_header) */
	int skip_line;	    /* a line already refused by note_header(), or 0 */
	struct host_ref *hrefs;
	size_t nhrefs, hrefcap;
	/* Problems, one per line, in a growing buffer. */
	char *errs;
	size_t errlen, errcap;
	int nerrs;
	/* "section\nkey" of every setting seen, to refuse duplicates. */
	char **seen;
	size_t nseen;
	struct inline_pin *pins;
	size_t npins, pincap;
	char *auth_cluster; /* [auth] auth_cluster, checked once clusters are known */
	int auth_cluster_line;
	const char *pins_override; /* borrowed: read pins from here instead of [pins] file */
	int admin_users_line;
	bool oom;
};

static void problem(struct loader *L, int line, const char *fmt, ...) PRINTF_LIKE(3, 4);

/* Appends one line to the report. */
static void add_line(struct loader *L, const char *text)
{
	size_t n = strlen(text);

	L->nerrs++;
	if (L->nerrs > MAX_REPORTED)
		return;
	if (L->errlen + n + 2 > L->errcap) {
		size_t cap = (L->errcap + n + 2) * 2;
		char *p = realloc(L->errs, cap);

		if (p == NULL) {
			L->oom = true;
			return;
		}
		L->errs = p;
		L->errcap = cap;
	}
	memcpy(L->errs + L->errlen, text, n);
	L->errlen += n;
	L->errs[L->errlen++] = '\n';
	L->errs[L->errlen] = '\0';
}

static void problem(struct loader *L, int line, const char *fmt, ...)
{
	char msg[512], text[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (line > 0)
		snprintf(text, sizeof(text), "%s:%d: %s", L->path, line, msg);
	else
		snprintf(text, sizeof(text), "%s: %s", L->path, msg);
	add_line(L, text);
}

bool config_parse_duration(const char *s, uint64_t *ms)
{
	char *end;
	unsigned long long v;
	uint64_t mult;

	while (*s == ' ')
		s++;
	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return false;
	while (*end == ' ')
		end++;
	if (*end == '\0' || strcmp(end, "s") == 0)
		mult = 1000;
	else if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "min") == 0 || strcmp(end, "m") == 0)
		mult = 60 * 1000;
	else if (strcmp(end, "h") == 0)
		mult = 3600 * 1000;
	else
		return false;
	/* A week is more than any timeout we take; this also keeps v * mult exact. */
	if (v > 7ull * 24 * 3600 * 1000 / mult)
		return false;
	*ms = v * mult;
	return true;
}

bool config_parse_size(const char *s, uint64_t *bytes)
{
	static const struct {
		const char *unit;
		uint64_t mult;
	} units[] = {{"", 1},	       {"B", 1},	   {"kB", 1024}, {"KB", 1024},
		     {"KiB", 1024},    {"MB", 1u << 20}, {"MiB", 1u << 20}, {"GB", 1u << 30},
		     {"GiB", 1u << 30}};
	char *end;
	unsigned long long v;

	while (*s == ' ')
		s++;
	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return false;
	while (*end == ' ')
		end++;
	for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
		if (strcmp(end, units[i].unit) == 0) {
			/* 1 TiB is more than any limit we take; this also keeps v * mult exact. */
			if (v > (1ull << 40) / units[i].mult)
				return false;
			*bytes = v * units[i].mult;
			return true;
		}
	}
	return false;
}

static bool parse_uint(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	char *end;
	unsigned long v;

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*out = (uint32_t)v;
	return true;
}

bool config_parse_host_port(const char *s, uint16_t defport, struct host_port *out)
{
	const char *host = s, *colon;
	size_t hlen;
	uint32_t port = defport;

	if (*s == '[') {
		const char *rb = strchr(s, ']');

		if (rb == NULL)
			return false;
		host = s + 1;
		hlen = (size_t)(rb - host);
		colon = rb[1] == ':' ? rb + 1 : NULL;
		if (rb[1] != '\0' && colon == NULL)
			return false;
	} else {
		colon = strrchr(s, ':');
		/* A bare IPv6 address has several colons and no port. */
		if (colon && strchr(s, ':') != colon)
			colon = NULL;
		hlen = colon ? (size_t)(colon - s) : strlen(s);
	}
	if (hlen == 0 || hlen > 255)
		return false;
	if (colon && !parse_uint(colon + 1, 1, 65535, &port))
		return false;
	out->host = strndup(host, hlen);
	if (out->host == NULL)
		return false;
	out->port = (uint16_t)port;
	return true;
}

/* Splits a comma list in place; returns the number of items (trimmed). */
static size_t split_list(char *s, char **items, size_t max)
{
	size_t n = 0;
	char *save = NULL;

	for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *e;

		while (*tok == ' ' || *tok == '\t')
			tok++;
		e = tok + strlen(tok);
		while (e > tok && (e[-1] == ' ' || e[-1] == '\t'))
			*--e = '\0';
		if (*tok == '\0')
			continue;
		if (n == max)
			return max + 1;
		items[n++] = tok;
	}
	return n;
}

/* Letters, digits, '_' and '-'; the length is checked by section_start(). */
static bool valid_cluster_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
			return false;
	}
	return true;
}

static struct cluster_cfg *get_cluster(struct loader *L, const char *name)
{
	struct config *c = L->c;
	struct cluster_cfg *nc;

	for (size_t i = 0; i < c->nclusters; i++) {
		if (strcmp(c->clusters[i].name, name) == 0)
			return &c->clusters[i];
	}
	if (c->nclusters == CONFIG_MAX_CLUSTERS)
		return NULL;
	nc = realloc(c->clusters, (c->nclusters + 1) * sizeof(*nc));
	if (nc == NULL)
		return NULL;
	c->clusters = nc;
	nc = &c->clusters[c->nclusters];
	memset(nc, 0, sizeof(*nc));
	nc->name = strdup(name);
	if (nc->name == NULL)
		return NULL;
	nc->weight = 1;
	c->nclusters++;
	return nc;
}

static bool was_set(const struct loader *L, const char *section, const char *key)
{
	size_t sl = strlen(section);

	for (size_t i = 0; i < L->nseen; i++) {
		if (strncmp(L->seen[i], section, sl) == 0 && L->seen[i][sl] == '\n' &&
		    strcmp(L->seen[i] + sl + 1, key) == 0)
			return true;
	}
	return false;
}

/* Records section+key; false if it was already set. */
static bool first_time(struct loader *L, const char *section, const char *key)
{
	size_t sl = strlen(section), kl = strlen(key);
	char *k, **ns;

	if (was_set(L, section, key))
		return false;
	k = malloc(sl + kl + 2);
	ns = realloc(L->seen, (L->nseen + 1) * sizeof(*ns));
	if (k == NULL || ns == NULL) {
		free(k);
		if (ns)
			L->seen = ns;
		L->oom = true;
		return true;
	}
	memcpy(k, section, sl);
	k[sl] = '\n';
	memcpy(k + sl + 1, key, kl + 1);
	L->seen = ns;
	L->seen[L->nseen++] = k;
	return true;
}

static bool parse_sources(const char *value, unsigned *out)
{
	char buf[256], *items[8];
	size_t n;
	unsigned src = 0;

	if (strlen(value) >= sizeof(buf))
		return false;
	strcpy(buf, value);
	n = split_list(buf, items, ARRAY_SIZE(items));
	if (n == 0 || n > ARRAY_SIZE(items))
		return false;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(items[i], "options") == 0)
			src |= TENANT_SRC_OPTIONS;
		else if (strcmp(items[i], "parameter") == 0)
			src |= TENANT_SRC_PARAMETER;
		else if (strcmp(items[i], "user") == 0)
			src |= TENANT_SRC_USER;
		else if (strcmp(items[i], "database") == 0)
			src |= TENANT_SRC_DATABASE;
		else if (strcmp(items[i], "query") == 0)
			src |= TENANT_SRC_QUERY;
		else
			return false;
	}
	*out = src;
	return true;
}

static void set_duration(struct loader *L, const char *sec, const char *key, const char *value,
			 uint64_t *out)
{
	if (!config_parse_duration(value, out))
		problem(L, L->line, "[%s] %s: \"%s\" is not a duration (use e.g. 500ms, 5s, 1m)", sec,
			key, value);
}

static void set_uint(struct loader *L, const char *sec, const char *key, const char *value,
		     uint32_t min, uint32_t max, uint32_t *out)
{
	if (!parse_uint(value, min, max, out))
		problem(L, L->line, "[%s] %s: \"%s\" is not a whole number from %u to %u", sec, key,
			value, min, max);
}

static void set_pool_mode(struct loader *L, const char *sec, const char *value,
			  enum pool_mode *out)
{
	if (strcmp(value, "none") == 0)
		*out = POOL_NONE;
	else if (strcmp(value, "session") == 0)
		*out = POOL_SESSION;
	else
		problem(L, L->line, "[%s] pool_mode: \"%s\" is not none or session", sec, value);
}

/* A relative path is relative to the configuration file's directory. */
static char *resolve_path(struct loader *L, const char *value)
{
	const char *slash = strrchr(L->path, '/');
	size_t dl;
	char *p;

	if (value[0] == '/' || slash == NULL) {
		p = strdup(value);
	} else {
		dl = (size_t)(slash - L->path) + 1;
		p = malloc(dl + strlen(value) + 1);
		if (p) {
			memcpy(p, L->path, dl);
			strcpy(p + dl, value);
		}
	}
	if (p == NULL)
		L->oom = true;
	return p;
}

/* The [router] client_tls_* and server_tls_* keys; false if key is not one. */
static bool tls_key(struct loader *L, const char *key, const char *value)
{
	struct config *c = L->c;
	const struct {
		const char *key;
		char **field;
	} strings[] = {
		{"client_tls_cert_file", &c->client_tls_cert_file},
		{"client_tls_key_file", &c->client_tls_key_file},
		{"client_tls_ca_file", &c->client_tls_ca_file},
		{"client_tls_protocols", &c->client_tls_protocols},
		{"client_tls_ciphers", &c->client_tls_ciphers},
		{"server_tls_ca_file", &c->server_tls_ca_file},
		{"server_tls_cert_file", &c->server_tls_cert_file},
		{"server_tls_key_file", &c->server_tls_key_file},
		{"server_tls_protocols", &c->server_tls_protocols},
		{"server_tls_ciphers", &c->server_tls_ciphers},
	};

	if (strcmp(key, "client_tls_mode") == 0) {
		if (!tls_client_mode_parse(value, &c->client_tls_mode))
			problem(L, L->line,
				"[router] client_tls_mode: \"%s\" is not disable, allow, require or "
				"verify-ca",
				value);
		return true;
	}
	if (strcmp(key, "server_tls_mode") == 0) {
		if (!tls_server_mode_parse(value, &c->server_tls_mode))
			problem(L, L->line,
				"[router] server_tls_mode: \"%s\" is not disable, prefer, require, "
				"verify-ca or verify-full",
				value);
		return true;
	}
	for (size_t i = 0; i < ARRAY_SIZE(strings); i++) {
		if (strcmp(key, strings[i].key) == 0) {
			char **field = strings[i].field;

			free(*field);
			*field = strstr(key, "_file") ? resolve_path(L, value) : strdup(value);
			if (*field == NULL)
				L->oom = true;
			return true;
		}
	}
	return false;
}

static void free_admin_users(struct config *c)
{
	for (size_t i = 0; i < c->nadmin_users; i++)
		free(c->admin_users[i]);
	free(c->admin_users);
	c->admin_users = NULL;
	c->nadmin_users = 0;
}

/* admin_users = name, name...: PostgreSQL user names (what a startup packet's user may be). */
static void admin_users_key(struct loader *L, const char *value)
{
	struct config *c = L->c;
	char buf[4096], *items[CONFIG_MAX_ADMIN_USERS + 1];
	size_t n;

	free_admin_users(c);
	L->admin_users_line = L->line;
	if (strlen(value) >= sizeof(buf)) {
		problem(L, L->line, "[router] admin_users: value too long");
		return;
	}
	strcpy(buf, value);
	n = split_list(buf, items, ARRAY_SIZE(items));
	if (n > CONFIG_MAX_ADMIN_USERS) {
		problem(L, L->line, "[router] admin_users: at most %d users",
			CONFIG_MAX_ADMIN_USERS);
		return;
	}
	if (n == 0)
		return; /* empty: the console is off */
	c->admin_users = calloc(n, sizeof(*c->admin_users));
	if (c->admin_users == NULL) {
		L->oom = true;
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (*items[i] == '\0' || strlen(items[i]) > 63 || strpbrk(items[i], " \t\"'\\")) {
			problem(L, L->line,
				"[router] admin_users: \"%s\" is not a user name (1 to 63 "
				"characters, no blanks or quotes)",
				items[i]);
			continue;
		}
		if ((c->admin_users[c->nadmin_users] = strdup(items[i])) == NULL) {
			L->oom = true;
			return;
		}
		c->nadmin_users++;
	}
}

bool config_is_admin(const struct config *c, const char *user)
{
	for (size_t i = 0; i < c->nadmin_users; i++) {
		if (strcmp(c->admin_users[i], user) == 0)
			return true;
	}
	return false;
}

static void router_key(struct loader *L, const char *key, const char *value)
{
	struct config *c = L->c;

	if (tls_key(L, key, value))
		return;

	if (strcmp(key, "listen") == 0) {
		char buf[1024], *items[CONFIG_MAX_LISTEN];
		size_t n;

		for (size_t i = 0; i < c->nlisten; i++)
			free(c->listen[i].host);
		c->nlisten = 0;
		if (strlen(value) >= sizeof(buf)) {
			problem(L, L->line, "[router] listen: value too long");
			return;
		}
		strcpy(buf, value);
		n = split_list(buf, items, CONFIG_MAX_LISTEN);
		if (n == 0 || n > CONFIG_MAX_LISTEN) {
			problem(L, L->line, "[router] listen: give 1 to %d HOST:PORT addresses",
				CONFIG_MAX_LISTEN);
			return;
		}
		for (size_t i = 0; i < n; i++) {
			if (!config_parse_host_port(items[i], 6432, &c->listen[c->nlisten]))
				problem(L, L->line, "[router] listen: \"%s\" is not HOST:PORT",
					items[i]);
			else
				c->nlisten++;
		}
	} else if (strcmp(key, "tenant_key") == 0) {
		if (*value == '\0' || strlen(value) > 63 || strchr(value, '=') ||
		    strpbrk(value, " \t\\")) {
			problem(L, L->line,
				"[router] tenant_key: \"%s\" is not a setting name (e.g. app.tenant_id)",
				value);
			return;
		}
		free((char *)c->rule.key);
		c->rule.key = strdup(value);
		if (c->rule.key == NULL)
			L->oom = true;
	} else if (strcmp(key, "tenant_sources") == 0) {
		if (!parse_sources(value, &c->rule.sources))
			problem(L, L->line,
				"[router] tenant_sources: \"%s\" is not a list of options, "
				"parameter, user, database, query",
				value);
	} else if (strcmp(key, "tenant_column") == 0) {
		if (*value == '\0' || strlen(value) > 63 || strpbrk(value, " \t\\\"'.=")) {
			problem(L, L->line, "[router] tenant_column: \"%s\" is not a column name",
				value);
			return;
		}
		free(c->tenant_column);
		c->tenant_column = strdup(value);
		if (c->tenant_column == NULL)
			L->oom = true;
	} else if (strcmp(key, "guard") == 0) {
		if (strcmp(value, "on") == 0)
			c->guard = GUARD_ON;
		else if (strcmp(value, "strict") == 0)
			c->guard = GUARD_STRICT;
		else if (strcmp(value, "off") == 0)
			c->guard = GUARD_OFF;
		else
			problem(L, L->line, "[router] guard: \"%s\" is not on, strict or off", value);
	} else if (strcmp(key, "guard_server_check") == 0) {
		if (strcmp(value, "on") == 0)
			c->guard_server_check = true;
		else if (strcmp(value, "off") == 0)
			c->guard_server_check = false;
		else
			problem(L, L->line, "[router] guard_server_check: \"%s\" is not on or off",
				value);
	} else if (strcmp(key, "guard_max_statement") == 0 || strcmp(key, "guard_max_held") == 0) {
		uint64_t v;
		bool stmt = key[10] == 's';

		if (!config_parse_size(value, &v) || v < 1024 || v > (1ull << 30))
			problem(L, L->line,
				"[router] %s: \"%s\" is not a size from 1kB to 1GB (e.g. 1MB)", key,
				value);
		else if (stmt)
			c->guard_max_statement = (size_t)v;
		else
			c->guard_max_held = (size_t)v;
	} else if (strcmp(key, "tenant_separator") == 0) {
		if (strlen(value) != 1 || value[0] == ' ')
			problem(L, L->line, "[router] tenant_separator: give exactly one character");
		else
			c->rule.separator = value[0];
	} else if (strcmp(key, "threads") == 0) {
		if (strcmp(value, "auto") == 0) {
			unsigned n = uv_available_parallelism();

			c->threads = n < 1 ? 1 : n > 64 ? 64 : n;
		} else {
			set_uint(L, "router", key, value, 1, 64, &c->threads);
		}
	} else if (strcmp(key, "max_client_conn") == 0) {
		set_uint(L, "router", key, value, 1, 1000000, &c->max_client_conn);
	} else if (strcmp(key, "client_login_timeout") == 0) {
		set_duration(L, "router", key, value, &c->client_login_timeout_ms);
	} else if (strcmp(key, "server_connect_timeout") == 0) {
		set_duration(L, "router", key, value, &c->server_connect_timeout_ms);
	} else if (strcmp(key, "shutdown_timeout") == 0) {
		set_duration(L, "router", key, value, &c->shutdown_timeout_ms);
	} else if (strcmp(key, "metrics_listen") == 0) {
		free(c->metrics_listen.host);
		c->metrics_listen.host = NULL;
		if (*value != '\0' && strcmp(value, "off") != 0 &&
		    !config_parse_host_port(value, 9187, &c->metrics_listen))
			problem(L, L->line, "[router] metrics_listen: \"%s\" is not HOST:PORT",
				value);
	} else if (strcmp(key, "peer_socket_dir") == 0) {
		/* Absolute only: a relative path here would depend on the working directory. */
		free(c->peer_socket_dir);
		c->peer_socket_dir = NULL;
		if (value[0] != '/')
			problem(L, L->line, "[router] peer_socket_dir: give an absolute path");
		else if (strlen(value) > 64)
			problem(L, L->line,
				"[router] peer_socket_dir: at most 64 bytes (a socket path is "
				"at most 107)");
		else if ((c->peer_socket_dir = strdup(value)) == NULL)
			L->oom = true;
	} else if (strcmp(key, "pool_mode") == 0) {
		set_pool_mode(L, "router", value, &c->pool_mode);
	} else if (strcmp(key, "pool_size") == 0) {
		set_uint(L, "router", key, value, 1, 100000, &c->pool_size);
	} else if (strcmp(key, "max_server_conn") == 0) {
		set_uint(L, "router", key, value, 0, 1000000, &c->max_server_conn);
	} else if (strcmp(key, "server_idle_timeout") == 0) {
		set_duration(L, "router", key, value, &c->server_idle_timeout_ms);
	} else if (strcmp(key, "server_lifetime") == 0) {
		set_duration(L, "router", key, value, &c->server_lifetime_ms);
	} else if (strcmp(key, "query_wait_timeout") == 0) {
		set_duration(L, "router", key, value, &c->query_wait_timeout_ms);
	} else if (strcmp(key, "server_login_retry") == 0) {
		set_duration(L, "router", key, value, &c->server_login_retry_ms);
	} else if (strcmp(key, "server_reset_query") == 0) {
		free(c->server_reset_query);
		/* One simple Query: no NUL, and short enough to stay one small message. */
		if (strlen(value) > 1024) {
			problem(L, L->line, "[router] server_reset_query: at most 1024 bytes");
			c->server_reset_query = NULL;
		} else if ((c->server_reset_query = strdup(value)) == NULL) {
			L->oom = true;
		}
	} else if (strcmp(key, "admin_users") == 0) {
		admin_users_key(L, value);
	} else if (strcmp(key, "admin_trust") == 0) {
		if (strcmp(value, "on") == 0)
			c->admin_trust = true;
		else if (strcmp(value, "off") == 0)
			c->admin_trust = false;
		else
			problem(L, L->line, "[router] admin_trust: \"%s\" is not on or off", value);
	} else if (strcmp(key, "pause_timeout") == 0) {
		set_duration(L, "router", key, value, &c->pause_timeout_ms);
	} else if (strcmp(key, "log_level") == 0) {
		if (!log_level_parse(value, &c->log_level))
			problem(L, L->line,
				"[router] log_level: \"%s\" is not error, warn, info, debug or trace",
				value);
	} else {
		problem(L, L->line, "[router] %s: unknown setting", key);
	}
}

static void auth_key(struct loader *L, const char *key, const char *value)
{
	struct config *c = L->c;

	if (strcmp(key, "auth_type") == 0) {
		if (strcmp(value, "scram-sha-256") == 0)
			c->auth_type = AUTH_SCRAM;
		else if (strcmp(value, "md5") == 0)
			c->auth_type = AUTH_MD5;
		else if (strcmp(value, "trust") == 0)
			c->auth_type = AUTH_TRUST;
		else
			problem(L, L->line,
				"[auth] auth_type: \"%s\" is not scram-sha-256, md5 or trust", value);
	} else if (strcmp(key, "auth_file") == 0) {
		free(c->auth_file);
		c->auth_file = resolve_path(L, value);
	} else if (strcmp(key, "server_passfile") == 0) {
		free(c->server_passfile);
		c->server_passfile = resolve_path(L, value);
	} else if (strcmp(key, "auth_query") == 0) {
		if (strstr(value, "$1") == NULL) {
			problem(L, L->line,
				"[auth] auth_query: must take the user name as $1 and return the "
				"user's name and password, e.g. SELECT usename, passwd FROM pg_shadow "
				"WHERE usename = $1");
			return;
		}
		free(c->auth_query);
		c->auth_query = strdup(value);
		if (c->auth_query == NULL)
			L->oom = true;
	} else if (strcmp(key, "auth_cluster") == 0) {
		free(L->auth_cluster);
		L->auth_cluster = strdup(value);
		L->auth_cluster_line = L->line;
		if (L->auth_cluster == NULL)
			L->oom = true;
	} else {
		problem(L, L->line, "[auth] %s: unknown setting", key);
	}
}

static void health_key(struct loader *L, const char *key, const char *value)
{
	struct config *c = L->c;

	if (strcmp(key, "interval") == 0) {
		set_duration(L, "health", key, value, &c->health_interval_ms);
	} else if (strcmp(key, "timeout") == 0) {
		set_duration(L, "health", key, value, &c->health_timeout_ms);
	} else if (strcmp(key, "fail_after") == 0) {
		set_uint(L, "health", key, value, 1, 100, &c->health_fail_after);
	} else if (strcmp(key, "worker_interval") == 0) {
		set_duration(L, "health", key, value, &c->health_worker_interval_ms);
	} else if (strcmp(key, "worker_timeout") == 0) {
		set_duration(L, "health", key, value, &c->health_worker_timeout_ms);
	} else if (strcmp(key, "conninfo") == 0) {
		char *perr = NULL;
		PQconninfoOption *opts = PQconninfoParse(value, &perr);

		if (opts == NULL) {
			problem(L, L->line, "[health] conninfo: %s",
				perr ? strtok(perr, "\n") : "out of memory");
			PQfreemem(perr);
			return;
		}
		for (PQconninfoOption *o = opts; o->keyword; o++) {
			if (o->val && (strcmp(o->keyword, "host") == 0 ||
				       strcmp(o->keyword, "hostaddr") == 0 ||
				       strcmp(o->keyword, "port") == 0))
				problem(L, L->line,
					"[health] conninfo: remove %s=, hosts and ports come from "
					"each [cluster.NAME] hosts",
					o->keyword);
		}
		PQconninfoFree(opts);
		free(c->health_conninfo);
		c->health_conninfo = strdup(value);
		if (c->health_conninfo == NULL)
			L->oom = true;
	} else {
		problem(L, L->line, "[health] %s: unknown setting", key);
	}
}

/* An SQL identifier we may write unquoted: [a-z_][a-z0-9_]*, optionally schema.name. */
static bool valid_sql_name(const char *s, bool dotted)
{
	const char *p = s;

	for (int part = 0; part < 2; part++) {
		if (!((*p >= 'a' && *p <= 'z') || *p == '_'))
			return false;
		while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')
			p++;
		if (*p == '\0')
			return p - s <= 127;
		if (*p != '.' || !dotted || part == 1)
			return false;
		p++;
	}
	return false;
}

static void set_string(struct loader *L, char **dst, const char *value)
{
	free(*dst);
	*dst = strdup(value);
	if (*dst == NULL)
		L->oom = true;
}

static void directory_key(struct loader *L, const char *key, const char *value)
{
	struct config *c = L->c;

	if (strcmp(key, "conninfo") == 0) {
		char *perr = NULL;
		PQconninfoOption *opts = PQconninfoParse(value, &perr);

		if (opts == NULL) {
			problem(L, L->line, "[directory] conninfo: %s",
			        perr ? strtok(perr, "\n") : "out of memory");
			PQfreemem(perr);
			return;
		}
		PQconninfoFree(opts);
		set_string(L, &c->dir_conninfo, value);
	} else if (strcmp(key, "schema") == 0) {
		if (!valid_sql_name(value, false))
			problem(L, L->line,
			        "[directory] schema: \"%s\" is not a lower-case SQL name "
			        "([a-z_][a-z0-9_]*)",
			        value);
		else
			set_string(L, &c->dir_schema, value);
	} else if (strcmp(key, "refresh") == 0) {
		set_duration(L, "directory", key, value, &c->dir_refresh_ms);
	} else if (strcmp(key, "heartbeat") == 0) {
		set_duration(L, "directory", key, value, &c->dir_heartbeat_ms);
	} else if (strcmp(key, "directory_lease") == 0) {
		set_duration(L, "directory", key, value, &c->dir_lease_ms);
	} else if (strcmp(key, "move_drain_timeout") == 0) {
		set_duration(L, "directory", key, value, &c->dir_move_drain_timeout_ms);
	} else if (strcmp(key, "directory_stale") == 0) {
		if (strcmp(value, "refuse") == 0)
			c->dir_stale_serve = false;
		else if (strcmp(value, "serve") == 0)
			c->dir_stale_serve = true;
		else
			problem(L, L->line,
			        "[directory] directory_stale: \"%s\" is not refuse or serve",
			        value);
	} else if (strcmp(key, "cache_file") == 0) {
		free(c->dir_cache_file);
		c->dir_cache_file = resolve_path(L, value);
	} else if (strcmp(key, "router_id") == 0) {
		if (value[0] == '\0' || strlen(value) > 200)
			problem(L, L->line, "[directory] router_id: 1 to 200 characters");
		else
			set_string(L, &c->dir_router_id, value);
	} else {
		problem(L, L->line, "[directory] %s: unknown setting", key);
	}
}

static void move_key(struct loader *L, const char *key, const char *value)
{
	struct config *c = L->c;

	if (strcmp(key, "tables") == 0) {
		char *copy = strdup(value), *save = NULL;

		if (copy == NULL) {
			L->oom = true;
			return;
		}
		for (char *t = strtok_r(copy, ", \t", &save); t;
		     t = strtok_r(NULL, ", \t", &save)) {
			char **v;

			if (!valid_sql_name(t, true)) {
				problem(L, L->line,
				        "[move] tables: \"%s\" is not a lower-case SQL name (table "
				        "or "
				        "schema.table)",
				        t);
				continue;
			}
			v = realloc(c->move_tables, (c->nmove_tables + 1) * sizeof(*v));
			if (v == NULL || (v[c->nmove_tables] = strdup(t)) == NULL) {
				if (v)
					c->move_tables = v;
				L->oom = true;
				break;
			}
			c->move_tables = v;
			c->nmove_tables++;
		}
		free(copy);
	} else if (strcmp(key, "tenant_column") == 0) {
		if (!valid_sql_name(value, false))
			problem(L, L->line,
			        "[move] tenant_column: \"%s\" is not a lower-case SQL name", value);
		else
			set_string(L, &c->move_tenant_column, value);
	} else if (strcmp(key, "conninfo") == 0) {
		set_string(L, &c->move_conninfo, value);
	} else if (strcmp(key, "fence_timeout") == 0) {
		set_duration(L, "move", key, value, &c->move_fence_timeout_ms);
	} else {
		problem(L, L->line, "[move] %s: unknown setting", key);
	}
}

/*
 * Canonical spelling of a host for comparison: one address has many IPv6
 * spellings ("::1", "0:0::1"), and names are case-insensitive. Names are not
 * resolved, so "localhost" and "127.0.0.1" stay different.
 */
static char *canon_host(const char *host)
{
	unsigned char addr[sizeof(struct in6_addr)];
	char buf[INET6_ADDRSTRLEN];
	char *p;

	if (inet_pton(AF_INET6, host, addr) == 1 && inet_ntop(AF_INET6, addr, buf, sizeof(buf)))
		return strdup(buf);
	p = strdup(host);
	for (char *q = p; q && *q; q++)
		*q = (char)tolower((unsigned char)*q);
	return p;
}

/* Notes one parsed host of the current cluster for validate_hosts(). */
static void add_host_ref(struct loader *L, const struct host_port *hp)
{
	struct host_ref *r;

	if (L->nhrefs == L->hrefcap) {
		size_t cap = L->hrefcap ? L->hrefcap * 2 : 16;

		r = realloc(L->hrefs, cap * sizeof(*r));
		if (r == NULL) {
			L->oom = true;
			return;
		}
		L->hrefs = r;
		L->hrefcap = cap;
	}
	r = &L->hrefs[L->nhrefs];
	*r = (struct host_ref){.host = hp->host,
			       .port = hp->port,
			       .cluster = L->cur_cluster,
			       .line = L->line,
			       .seq = L->nhrefs};
	r->canon = canon_host(hp->host);
	if (r->canon == NULL) {
		L->oom = true;
		return;
	}
	L->nhrefs++;
}

static void cluster_key(struct loader *L, const char *section, const char *key, const char *value)
{
	struct cluster_cfg *cl = &L->c->clusters[L->cur_cluster];

	if (strcmp(key, "hosts") == 0) {
		char buf[2048], *items[CONFIG_MAX_HOSTS];
		size_t n;

		if (strlen(value) >= sizeof(buf)) {
			problem(L, L->line, "[%s] hosts: value too long", section);
			return;
		}
		strcpy(buf, value);
		n = split_list(buf, items, CONFIG_MAX_HOSTS);
		if (n == 0 || n > CONFIG_MAX_HOSTS) {
			problem(L, L->line, "[%s] hosts: give 1 to %d HOST:PORT entries", section,
				CONFIG_MAX_HOSTS);
			return;
		}
		for (size_t i = 0; i < n; i++) {
			if (!config_parse_host_port(items[i], 5432, &cl->hosts[cl->nhosts]))
				problem(L, L->line, "[%s] hosts: \"%s\" is not HOST:PORT", section,
					items[i]);
			else
				add_host_ref(L, &cl->hosts[cl->nhosts++]);
		}
	} else if (strcmp(key, "weight") == 0) {
		set_uint(L, section, key, value, 1, 1000, &cl->weight);
	} else if (strcmp(key, "pool_mode") == 0) {
		set_pool_mode(L, section, value, &cl->pool_mode);
		cl->pool_mode_set = true;
	} else if (strcmp(key, "pool_size") == 0) {
		set_uint(L, section, key, value, 1, 100000, &cl->pool_size);
		cl->pool_size_set = true;
	} else if (strcmp(key, "max_server_conn") == 0) {
		set_uint(L, section, key, value, 0, 1000000, &cl->max_server_conn);
		cl->max_server_conn_set = true;
	} else if (strcmp(key, "server_tls_mode") == 0) {
		if (!tls_server_mode_parse(value, &cl->tls_mode))
			problem(L, L->line,
				"[%s] server_tls_mode: \"%s\" is not disable, prefer, require, "
				"verify-ca or verify-full",
				section, value);
		cl->tls_mode_set = true;
	} else if (strcmp(key, "server_tls_ca_file") == 0) {
		free(cl->tls_ca_file);
		cl->tls_ca_file = resolve_path(L, value);
	} else {
		problem(L, L->line, "[%s] %s: unknown setting", section, key);
	}
}

static void pins_key(struct loader *L, const char *key, const char *value)
{
	struct config *c = L->c;
	struct inline_pin *p;

	if (strcmp(key, "file") == 0) {
		free(c->pins_file);
		c->pins_file = resolve_path(L, value);
		return;
	}
	if (L->npins == L->pincap) {
		size_t cap = L->pincap ? L->pincap * 2 : 16;

		p = realloc(L->pins, cap * sizeof(*p));
		if (p == NULL) {
			L->oom = true;
			return;
		}
		L->pins = p;
		L->pincap = cap;
	}
	p = &L->pins[L->npins];
	p->tenant = strdup(key);
	p->cluster = strdup(value);
	p->line = L->line;
	if (p->tenant == NULL || p->cluster == NULL) {
		free(p->tenant);
		free(p->cluster);
		L->oom = true;
		return;
	}
	L->npins++;
}

/*
 * A [route.NAME] key. Where the route goes (cluster or host) is checked in
 * validate(), once every cluster is known and both keys have been seen.
 */
static void route_key(struct loader *L, const char *section, const char *key, const char *value)
{
	struct route_cfg *r = &L->c->routes[L->cur_route];
	struct route_ref *rr = &L->rrefs[L->cur_route];

	if (strcmp(key, "database") == 0) {
		rr->database_line = L->line;
		if (*value == '\0' || strlen(value) > CONFIG_MAX_DATABASE) {
			problem(L, L->line, "[%s] database: give a database name of 1 to %d bytes",
				section, CONFIG_MAX_DATABASE);
			return;
		}
		r->database = strdup(value);
		if (r->database == NULL)
			L->oom = true;
	} else if (strcmp(key, "cluster") == 0) {
		rr->cluster_line = L->line;
		rr->cluster = strdup(value);
		if (rr->cluster == NULL)
			L->oom = true;
	} else if (strcmp(key, "host") == 0) {
		rr->host_line = L->line;
		if (!config_parse_host_port(value, 5432, &r->host)) {
			problem(L, L->line, "[%s] host: \"%s\" is not HOST:PORT", section, value);
		}
	} else {
		problem(L, L->line, "[%s] %s: unknown setting", section, key);
	}
}

/* The section a key line belongs to, "" before the first header. */
static const char *cur_section(const struct loader *L)
{
	return L->nheaders ? L->headers[L->nheaders - 1].name : "";
}

static bool is_known_section(const char *name)
{
	static const char *const fixed[] = {"router", "auth",      "health", "ring",
	                                    "pins",   "directory", "move"};

	for (size_t i = 0; i < ARRAY_SIZE(fixed); i++) {
		if (strcmp(name, fixed[i]) == 0)
			return true;
	}
	return strncmp(name, "cluster.", 8) == 0 || strncmp(name, "route.", 6) == 0;
}

/* A new [route.NAME] (name: after "route."); false when out of memory. */
static bool add_route(struct loader *L, const char *name)
{
	struct config *c = L->c;
	struct route_cfg *nr = realloc(c->routes, (c->nroutes + 1) * sizeof(*nr));
	struct route_ref *rr;

	if (nr == NULL)
		return false;
	c->routes = nr;
	rr = realloc(L->rrefs, (c->nroutes + 1) * sizeof(*rr));
	if (rr == NULL)
		return false;
	L->rrefs = rr;
	L->rrefs[c->nroutes] = (struct route_ref){.line = L->line};
	nr = &c->routes[c->nroutes];
	*nr = (struct route_cfg){.cluster = -1};
	nr->name = strdup(name);
	if (nr->name == NULL)
		return false;
	L->cur_route = c->nroutes++;
	return true;
}

/*
 * A "[name]" header at L->line; takes name. Each section is checked here
 * once, so a bad header is one problem rather than one per key, and an empty
 * section is checked at all. A cluster exists from its header on: validate()
 * then finds a [cluster.NAME] without hosts instead of a ring without it.
 */
static void section_start(struct loader *L, char *name)
{
	struct header *h = realloc(L->headers, (L->nheaders + 1) * sizeof(*h));
	const char *cname;
	int idx;

	L->after_key = false;
	L->section_ok = false;
	if (h == NULL) {
		free(name);
		L->oom = true;
		return;
	}
	L->headers = h;
	L->headers[L->nheaders++] = (struct header){name, L->line};
	if (!is_known_section(name)) {
		problem(L, L->line,
		        "[%s]: unknown section (sections are router, auth, health, ring, pins, "
		        "directory, move, cluster.NAME and route.NAME)",
		        name);
		return;
	}
	for (size_t i = 0; i + 1 < L->nheaders; i++) {
		if (strcmp(L->headers[i].name, name) == 0) {
			problem(L, L->line, "[%s]: section given twice (first at line %d)", name,
				L->headers[i].line);
			return;
		}
	}
	if (strncmp(name, "route.", 6) == 0) {
		cname = name + strlen("route.");
		/* The same rules as cluster names: the name is in logs (by=route:NAME). */
		if (!valid_cluster_name(cname) || strlen(cname) > ROUTE_NAME_MAX) {
			problem(L, L->line,
				"[%s]: route names are 1 to %zu letters, digits, '_' or '-'", name,
				ROUTE_NAME_MAX);
			return;
		}
		if (L->c->nroutes == CONFIG_MAX_ROUTES) {
			problem(L, L->line, "[%s]: too many routes (at most %d)", name,
				CONFIG_MAX_ROUTES);
			return;
		}
		if (!add_route(L, cname)) {
			L->oom = true;
			return;
		}
		L->section_ok = true;
		return;
	}
	if (strncmp(name, "cluster.", 8) != 0) {
		L->section_ok = true;
		return;
	}
	cname = name + strlen("cluster.");
	if (!valid_cluster_name(cname)) {
		problem(L, L->line, "[%s]: cluster names are 1 to %zu letters, digits, '_' or '-'",
			name, CLUSTER_NAME_MAX);
		return;
	}
	/*
	 * inih hands the handler the name cut short, so a long name has always
	 * meant its first bytes, and the ring hashes names: using the whole
	 * name now would move the cluster's tenants. Refuse it instead.
	 */
	if (strlen(cname) > CLUSTER_NAME_MAX) {
		problem(L, L->line,
			"[%s]: cluster names are at most %zu characters (the INI parser keeps only "
			"[%.*s])",
			name, CLUSTER_NAME_MAX, (int)INIH_SECTION_KEPT, name);
		return;
	}
	if (L->c->nclusters == CONFIG_MAX_CLUSTERS) {
		problem(L, L->line, "[%s]: too many clusters (at most %d)", name,
			CONFIG_MAX_CLUSTERS);
		return;
	}
	if (get_cluster(L, cname) == NULL) {
		L->oom = true;
		return;
	}
	idx = config_cluster_index(L->c, cname);
	TR_ASSERT(idx >= 0);
	L->cur_cluster = (size_t)idx;
	L->section_ok = true;
}

static int handler(void *user, const char *section, const char *key, const char *value)
{
	struct loader *L = user;
	const char *sec = cur_section(L);

	/* inih continues only a named key's value (its prev_name). */
	L->after_key = key[0] != '\0';
	/*
	 * inih's copy of the name is ours, or its first bytes for a long one.
	 * Any other difference means note_header() read a line otherwise than
	 * inih did, and this key could land in the wrong section: refuse it.
	 */
	if (strcmp(sec, section) != 0 &&
	    (strlen(section) < INIH_SECTION_KEPT || strncmp(sec, section, strlen(section)) != 0)) {
		problem(L, L->line, "[%s] %s: cannot tell which section this line is in", section,
			key);
		return 1;
	}
	if (L->line == L->skip_line)
		return 1; /* reported by note_header() */
	if (L->nheaders == 0) {
		problem(L, L->line, "%s: setting before the first [section]", key);
		return 1;
	}
	if (!L->section_ok)
		return 1; /* reported at its header */
	if (strcmp(sec, "pins") != 0 && !first_time(L, sec, key)) {
		problem(L, L->line, "[%s] %s: set twice", sec, key);
		return 1;
	}
	if (strcmp(sec, "router") == 0)
		router_key(L, key, value);
	else if (strcmp(sec, "auth") == 0)
		auth_key(L, key, value);
	else if (strcmp(sec, "health") == 0)
		health_key(L, key, value);
	else if (strcmp(sec, "ring") == 0 && strcmp(key, "vnodes") == 0)
		set_uint(L, "ring", key, value, 1, RING_MAX_VNODES, &L->c->vnodes);
	else if (strcmp(sec, "ring") == 0)
		problem(L, L->line, "[ring] %s: unknown setting", key);
	else if (strcmp(sec, "directory") == 0)
		directory_key(L, key, value);
	else if (strcmp(sec, "move") == 0)
		move_key(L, key, value);
	else if (strncmp(sec, "cluster.", 8) == 0)
		cluster_key(L, sec, key, value);
	else if (strncmp(sec, "route.", 6) == 0)
		route_key(L, sec, key, value);
	else
		pins_key(L, key, value);
	/* We report our own problems; a 0 here would only add a vaguer one. */
	return 1;
}

/*
 * inih calls the handler only for key lines, so an empty section never
 * reaches it (INI_CALL_HANDLER_ON_NEW_SECTION would, but that is fixed when
 * the library is built, and Debian's is built without it), and it cuts section
 * names at 49 bytes, which quietly renames a long cluster. The reader
 * sees every line just before inih does, so it notes headers itself, by
 * inih's rules: after blanks (and a UTF-8 BOM on line 1) a '[', then the name
 * up to the first ']' unless an inline comment (" ;") comes first; and an
 * indented line after a key continues that key's value instead. A separate
 * pre-scan of the file would need the same rules and a second read.
 */
static void note_header(struct loader *L, const char *line)
{
	const char *s = line, *e, *rest;
	bool was_space = false;
	char *name;

	if (INI_ALLOW_BOM && L->line == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3;
	while (isspace((unsigned char)*s))
		s++;
	if (*s != '[')
		return;
	if (INI_ALLOW_MULTILINE && L->after_key && s > line) {
		/* Never a value we take: our keys are one line each. */
		problem(L, L->line,
			"an indented line continues the value above, so this is not a section "
			"header: remove the indentation");
		L->skip_line = L->line;
		return;
	}
	for (e = s + 1; *e != '\0' && *e != ']'; e++) {
		if (INI_ALLOW_INLINE_COMMENTS && was_space &&
		    strchr(INI_INLINE_COMMENT_PREFIXES, *e))
			return; /* no ']': inih's syntax error, the section goes on */
		was_space = isspace((unsigned char)*e);
	}
	if (*e != ']')
		return;
	name = strndup(s + 1, (size_t)(e - s - 1));
	if (name == NULL) {
		L->oom = true;
		return;
	}
	/* inih ignores the rest of the line; only a comment may be there. */
	for (rest = e + 1; isspace((unsigned char)*rest); rest++)
		;
	if (*rest != '\0' && !strchr(INI_START_COMMENT_PREFIXES INI_INLINE_COMMENT_PREFIXES, *rest))
		problem(L, L->line,
			"[%s]: text after ']' is ignored: put settings on lines of their own",
			name);
	section_start(L, name);
}

/* fgets() for inih that counts lines and refuses lines inih would cut. */
static char *reader(char *str, int num, void *stream)
{
	struct loader *L = stream;
	size_t n;

	if (fgets(str, num, L->f) == NULL)
		return NULL;
	L->line++;
	n = strlen(str);
	if (n == (size_t)num - 1 && str[n - 1] != '\n' && !feof(L->f)) {
		int ch;

		problem(L, L->line, "line longer than %d characters", num - 2);
		while ((ch = fgetc(L->f)) != EOF && ch != '\n')
			;
		str[0] = '\0';
	}
	note_header(L, str);
	return str;
}

static void set_defaults(struct config *c)
{
	c->rule.sources = TENANT_SRC_OPTIONS | TENANT_SRC_PARAMETER;
	c->rule.separator = '+';
	c->max_client_conn = 1000;
	c->threads = 1;
	c->client_login_timeout_ms = 60000;
	c->server_connect_timeout_ms = 5000;
	c->shutdown_timeout_ms = 30000;
	c->log_level = LOG_INFO;
	c->client_tls_mode = TLS_CLIENT_DISABLE;
	c->server_tls_mode = TLS_SERVER_PREFER;
	c->health_interval_ms = 1000;
	c->health_timeout_ms = 2000;
	c->health_fail_after = 2;
	c->health_worker_interval_ms = 5000;
	c->health_worker_timeout_ms = 10000;
	c->vnodes = 256;
	c->guard = GUARD_ON;
	c->guard_max_statement = 1u << 20;
	c->guard_max_held = 64u << 20;
	c->auth_type = AUTH_SCRAM;
	c->dir_refresh_ms = 300000;
	c->dir_heartbeat_ms = 1000;
	c->dir_lease_ms = 10000;
	c->dir_move_drain_timeout_ms = 10000;
	c->move_fence_timeout_ms = 60000;
	/* PgBouncer's defaults. */
	c->pool_mode = POOL_NONE;
	c->pool_size = 20;
	c->server_idle_timeout_ms = 600000;
	c->server_lifetime_ms = 3600000;
	c->query_wait_timeout_ms = 120000;
	c->server_login_retry_ms = 15000;
	c->pause_timeout_ms = 30000;
}

/* Line of the first "[name]" header, or 0. */
static int header_line(const struct loader *L, const char *name)
{
	for (size_t i = 0; i < L->nheaders; i++) {
		if (strcmp(L->headers[i].name, name) == 0)
			return L->headers[i].line;
	}
	return 0;
}

static int host_ref_by_host(const void *a, const void *b)
{
	const struct host_ref *x = a, *y = b;
	int d = strcmp(x->canon, y->canon);

	if (d != 0)
		return d;
	if (x->port != y->port)
		return x->port < y->port ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int host_ref_by_seq(const void *a, const void *b)
{
	const struct host_ref *x = a, *y = b;

	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/*
 * A host listed twice in one cluster is a typo; one shared by two clusters
 * makes them one server under two names, so tenants "moved" between them
 * would not move. Sorting finds both in n log n even for thousands of hosts;
 * the second sort reports them in file order.
 */
static void validate_hosts(struct loader *L)
{
	struct config *c = L->c;
	size_t first = 0;

	if (L->nhrefs < 2)
		return; /* and qsort() must not see a NULL array */
	qsort(L->hrefs, L->nhrefs, sizeof(*L->hrefs), host_ref_by_host);
	for (size_t i = 1; i < L->nhrefs; i++) {
		struct host_ref *f = &L->hrefs[first], *r = &L->hrefs[i];

		if (strcmp(f->canon, r->canon) != 0 || f->port != r->port) {
			first = i;
			continue;
		}
		r->dup = true;
		r->first_cluster = f->cluster;
		r->first_line = f->line;
	}
	qsort(L->hrefs, L->nhrefs, sizeof(*L->hrefs), host_ref_by_seq);
	for (size_t i = 0; i < L->nhrefs; i++) {
		const struct host_ref *r = &L->hrefs[i];
		const char *name = c->clusters[r->cluster].name;
		bool v6 = strchr(r->host, ':') != NULL;

		if (!r->dup)
			continue;
		if (r->first_cluster == r->cluster)
			problem(L, r->line, "[cluster.%s] hosts: %s%s%s:%u is listed twice", name,
				v6 ? "[" : "", r->host, v6 ? "]" : "", r->port);
		else
			problem(L, r->line,
				"[cluster.%s] hosts: %s%s%s:%u is also a host of [cluster.%s] "
				"(line %d): two clusters cannot share a server",
				name, v6 ? "[" : "", r->host, v6 ? "]" : "", r->port,
				c->clusters[r->first_cluster].name, r->first_line);
	}
}

/*
 * Each route goes to exactly one place, and a database has at most one
 * route: two would leave which one wins to the order of the file.
 */
static void validate_routes(struct loader *L)
{
	struct config *c = L->c;

	for (size_t i = 0; i < c->nroutes; i++) {
		struct route_cfg *r = &c->routes[i];
		struct route_ref *rr = &L->rrefs[i];

		if (rr->database_line == 0)
			problem(L, rr->line,
				"[route.%s] database: missing (the database this route is for)",
				r->name);
		if (rr->cluster && rr->host_line)
			problem(L, rr->host_line,
				"[route.%s]: give cluster or host, not both (cluster at line %d)",
				r->name, rr->cluster_line);
		else if (rr->cluster == NULL && rr->host_line == 0)
			problem(L, rr->line, "[route.%s]: give cluster = NAME or host = HOST:PORT",
				r->name);
		else if (rr->cluster) {
			r->cluster = config_cluster_index(c, rr->cluster);
			if (r->cluster < 0)
				problem(L, rr->cluster_line, "[route.%s] cluster: unknown cluster \"%s\"",
					r->name, rr->cluster);
		}
		if (r->database == NULL)
			continue;
		for (size_t j = 0; j < i; j++) {
			if (c->routes[j].database && strcmp(c->routes[j].database, r->database) == 0) {
				problem(L, rr->database_line,
					"[route.%s] database: \"%s\" is also the database of "
					"[route.%s] (line %d)",
					r->name, r->database, c->routes[j].name,
					L->rrefs[j].database_line);
				break;
			}
		}
	}
}

static void validate(struct loader *L)
{
	struct config *c = L->c;

	if (c->nlisten == 0) {
		c->listen[0].host = strdup("127.0.0.1");
		c->listen[0].port = 6432;
		if (c->listen[0].host == NULL)
			L->oom = true;
		else
			c->nlisten = 1;
	}
	if (c->rule.key == NULL && (c->rule.key = strdup("app.tenant_id")) == NULL)
		L->oom = true;
	if (c->health_conninfo == NULL && (c->health_conninfo = strdup("")) == NULL)
		L->oom = true;
	if (c->health_interval_ms == 0)
		problem(L, 0, "[health] interval: must be more than 0");
	if (c->dir_schema == NULL && (c->dir_schema = strdup("tenant_router")) == NULL)
		L->oom = true;
	if (c->move_tenant_column == NULL && (c->move_tenant_column = strdup("tenant_id")) == NULL)
		L->oom = true;
	if (c->dir_refresh_ms == 0 || c->dir_heartbeat_ms == 0 || c->dir_lease_ms == 0)
		problem(L, 0,
		        "[directory] refresh, heartbeat and directory_lease: must be more than 0");
	else if (c->dir_lease_ms <= c->dir_heartbeat_ms * 2)
		problem(L, 0,
		        "[directory] directory_lease: must be more than twice heartbeat (one lost "
		        "heartbeat must not make the copy stale)");
	if (c->health_timeout_ms == 0)
		problem(L, 0, "[health] timeout: must be more than 0");
	if (c->health_worker_timeout_ms == 0)
		problem(L, 0, "[health] worker_timeout: must be more than 0");
	if (c->client_login_timeout_ms == 0)
		problem(L, 0, "[router] client_login_timeout: must be more than 0");
	if (c->server_connect_timeout_ms == 0)
		problem(L, 0, "[router] server_connect_timeout: must be more than 0");
	if (c->nclusters == 0)
		problem(L, 0, "no [cluster.NAME] section: define at least one cluster");
	for (size_t i = 0; i < L->npins; i++) {
		if (config_cluster_index(c, L->pins[i].cluster) < 0)
			problem(L, L->pins[i].line, "[pins] %s: unknown cluster \"%s\"",
				L->pins[i].tenant, L->pins[i].cluster);
	}
	if (L->auth_cluster) {
		c->auth_cluster = config_cluster_index(c, L->auth_cluster);
		if (c->auth_cluster < 0)
			problem(L, L->auth_cluster_line, "[auth] auth_cluster: unknown cluster \"%s\"",
				L->auth_cluster);
	}
	if ((c->rule.sources & TENANT_SRC_QUERY) && c->auth_type != AUTH_TRUST &&
	    c->auth_file == NULL && c->auth_query == NULL)
		problem(L, 0,
			"[auth]: tenant source \"query\" needs auth_file or auth_query (or auth_type "
			"= trust): the router authenticates those clients itself");
	if (c->server_reset_query == NULL && !L->oom &&
	    (c->server_reset_query = strdup("DISCARD ALL")) == NULL)
		L->oom = true;
	/*
	 * Whatever the reset query, the tenant setting goes back to the startup
	 * value (part of the pool key): the next client's tenant, always.
	 */
	if (c->server_reset_query && c->rule.key && !L->oom) {
		size_t cap = strlen(c->server_reset_query) + 2 * strlen(c->rule.key) + 16;

		c->pool_reset_sql = malloc(cap);
		if (c->pool_reset_sql == NULL) {
			L->oom = true;
		} else if (c->server_reset_query[0]) {
			snprintf(c->pool_reset_sql, cap, "%s", c->server_reset_query);
		} else {
			size_t n = (size_t)snprintf(c->pool_reset_sql, cap, "RESET \"");

			for (const char *k = c->rule.key; *k; k++) {
				if (*k == '"')
					c->pool_reset_sql[n++] = '"';
				c->pool_reset_sql[n++] = *k;
			}
			snprintf(c->pool_reset_sql + n, cap - n, "\"");
		}
	}
	for (size_t i = 0; i < c->nclusters; i++) {
		struct cluster_cfg *cl = &c->clusters[i];

		if (!cl->pool_mode_set)
			cl->pool_mode = c->pool_mode;
		if (!cl->pool_size_set)
			cl->pool_size = c->pool_size;
		if (!cl->max_server_conn_set)
			cl->max_server_conn = c->max_server_conn;
		c->pooling |= cl->pool_mode == POOL_SESSION;
		if (cl->pool_mode == POOL_SESSION && cl->pool_mode_set && c->auth_type != AUTH_TRUST &&
		    c->auth_file == NULL && c->auth_query == NULL)
			problem(L, 0,
				"[cluster.%s] pool_mode = session needs [auth] auth_file or auth_query "
				"(or auth_type = trust): the router authenticates pooled clients "
				"itself",
				cl->name);
	}
	if (c->pool_mode == POOL_SESSION && c->pooling && c->auth_type != AUTH_TRUST &&
	    c->auth_file == NULL && c->auth_query == NULL)
		problem(L, 0,
			"[router] pool_mode = session needs [auth] auth_file or auth_query (or "
			"auth_type = trust): the router authenticates pooled clients itself");
	if (c->nadmin_users && c->auth_type == AUTH_TRUST && !c->admin_trust)
		problem(L, L->admin_users_line,
			"[router] admin_users: with [auth] auth_type = trust anyone who reaches a "
			"listener would get the console; set admin_trust = on to allow that, or use "
			"scram-sha-256 or md5");
	if (c->nadmin_users && !c->admin_trust && c->auth_type != AUTH_TRUST &&
	    c->auth_file == NULL && c->auth_query == NULL)
		problem(L, L->admin_users_line,
			"[router] admin_users: the router checks admins' passwords itself and "
			"needs [auth] auth_file or auth_query (or admin_trust = on)");
	if (c->pause_timeout_ms == 0)
		problem(L, 0, "[router] pause_timeout: must be more than 0");
	if (c->auth_file && L->nerrs == 0 && !L->oom) {
		char uerr[512];

		c->userlist = userlist_load(c->auth_file, uerr, sizeof(uerr));
		if (c->userlist == NULL)
			problem(L, 0, "[auth] auth_file: %s", uerr);
	}
	for (size_t i = 0; i < c->nclusters; i++) {
		char sec[80];

		snprintf(sec, sizeof(sec), "cluster.%s", c->clusters[i].name);
		/* Given but unusable hosts were reported where they stand. */
		if (c->clusters[i].nhosts == 0 && !was_set(L, sec, "hosts"))
			problem(L, header_line(L, sec),
				"[%s] hosts: missing (every cluster needs hosts; to remove a "
				"cluster, delete its section)",
				sec);
		if ((uint64_t)c->clusters[i].weight * c->vnodes > RING_MAX_VNODES)
			problem(L, 0, "[%s] weight: weight * vnodes must be at most %u", sec,
				RING_MAX_VNODES);
	}
	validate_hosts(L);
	validate_routes(L);
}

static void build_placement(struct loader *L)
{
	struct config *c = L->c;
	struct ring_member *m;
	char err[512];

	c->cluster_names = calloc(c->nclusters, sizeof(*c->cluster_names));
	m = calloc(c->nclusters, sizeof(*m));
	if (c->cluster_names == NULL || m == NULL) {
		free(m);
		L->oom = true;
		return;
	}
	for (size_t i = 0; i < c->nclusters; i++) {
		c->cluster_names[i] = c->clusters[i].name;
		m[i].name = c->clusters[i].name;
		m[i].weight = c->clusters[i].weight;
	}
	c->ring = ring_build(m, c->nclusters, c->vnodes, err, sizeof(err));
	free(m);
	if (c->ring == NULL) {
		problem(L, 0, "[ring]: %s", err);
		return;
	}
	c->pins = pins_new();
	if (c->pins == NULL) {
		L->oom = true;
		return;
	}
	for (size_t i = 0; i < L->npins; i++) {
		struct inline_pin *p = &L->pins[i];
		int idx = config_cluster_index(c, p->cluster);
		int rc;

		if (idx < 0)
			continue; /* reported by validate() */
		rc = pins_add(c->pins, p->tenant, strlen(p->tenant), (uint16_t)idx);
		if (rc == -EEXIST)
			problem(L, p->line, "[pins] %s: tenant is already pinned to another cluster",
				p->tenant);
		else if (rc == -EINVAL)
			problem(L, p->line, "[pins] %s: tenant is empty or longer than %d bytes",
				p->tenant, PINS_MAX_TENANT_LEN);
		else if (rc != 0)
			L->oom = true;
	}
	if (L->pins_override && c->pins_file == NULL)
		problem(L, 0, "[pins] file: not set (the admin console writes pins there)");
	if (c->pins_file) {
		const char *pf = L->pins_override ? L->pins_override : c->pins_file;
		struct pins_clusters pc = {c->cluster_names, c->nclusters};
		size_t cap = 8192;
		char *perr = malloc(cap);
		int rc;

		if (perr == NULL) {
			L->oom = true;
			return;
		}
		perr[0] = '\0';
		rc = pins_load_file(c->pins, pf, &pc, perr, cap);
		if (rc != 0) {
			/* pins_load_file already names file and line on each of its lines. */
			for (char *save = NULL, *ln = strtok_r(perr, "\n", &save); ln;
			     ln = strtok_r(NULL, "\n", &save))
				add_line(L, ln);
			if (rc < 0 && perr[0] == '\0')
				problem(L, 0, "[pins] file: cannot read %s: %s", pf,
					strerror(-rc));
		}
		free(perr);
	}
	/* From here on the table is shared read-only by every session. */
	pins_seal(c->pins);
}

static void build_tls(struct loader *L)
{
	struct config *c = L->c;
	char err[512];

	if (c->client_tls_mode != TLS_CLIENT_DISABLE) {
		struct tls_settings ts = {c->client_tls_cert_file, c->client_tls_key_file,
					  c->client_tls_ca_file, c->client_tls_protocols,
					  c->client_tls_ciphers};

		c->client_tls_ctx = tls_accept_ctx_new(
			&ts, c->client_tls_mode == TLS_CLIENT_VERIFY_CA, err, sizeof(err));
		if (c->client_tls_ctx == NULL)
			problem(L, 0, "[router] client_tls: %s", err);
	}
	for (size_t i = 0; i < c->nclusters; i++) {
		struct cluster_cfg *cl = &c->clusters[i];
		struct tls_settings ts = {c->server_tls_cert_file, c->server_tls_key_file,
					  cl->tls_ca_file ? cl->tls_ca_file : c->server_tls_ca_file,
					  c->server_tls_protocols, c->server_tls_ciphers};

		if (!cl->tls_mode_set)
			cl->tls_mode = c->server_tls_mode;
		if (cl->tls_mode == TLS_SERVER_DISABLE)
			continue;
		cl->tls_ctx = tls_connect_ctx_new(&ts, cl->tls_mode, err, sizeof(err));
		if (cl->tls_ctx == NULL)
			problem(L, 0, "[cluster.%s] server_tls: %s", cl->name, err);
	}
	for (size_t i = 0; i < c->nroutes; i++) {
		struct route_cfg *r = &c->routes[i];
		struct tls_settings ts = {c->server_tls_cert_file, c->server_tls_key_file,
					  c->server_tls_ca_file, c->server_tls_protocols,
					  c->server_tls_ciphers};

		/* A cluster route uses its cluster's settings when it connects. */
		r->tls_mode = c->server_tls_mode;
		if (r->cluster >= 0 || r->tls_mode == TLS_SERVER_DISABLE)
			continue;
		r->tls_ctx = tls_connect_ctx_new(&ts, r->tls_mode, err, sizeof(err));
		if (r->tls_ctx == NULL)
			problem(L, 0, "[route.%s] server_tls: %s", r->name, err);
	}
}

static void free_config(struct config *c)
{
	free(c->metrics_listen.host);
	for (size_t i = 0; i < c->nlisten; i++)
		free(c->listen[i].host);
	for (size_t i = 0; i < c->nclusters; i++) {
		for (size_t j = 0; j < c->clusters[i].nhosts; j++)
			free(c->clusters[i].hosts[j].host);
		free(c->clusters[i].name);
		free(c->clusters[i].tls_ca_file);
		tls_ctx_free(c->clusters[i].tls_ctx);
	}
	free(c->clusters);
	free(c->cluster_names);
	for (size_t i = 0; i < c->nroutes; i++) {
		free(c->routes[i].name);
		free(c->routes[i].database);
		free(c->routes[i].host.host);
		tls_ctx_free(c->routes[i].tls_ctx);
	}
	free(c->routes);
	free((char *)c->rule.key);
	free(c->health_conninfo);
	free(c->dir_conninfo);
	free(c->dir_schema);
	free(c->dir_cache_file);
	free(c->dir_router_id);
	for (size_t i = 0; i < c->nmove_tables; i++)
		free(c->move_tables[i]);
	free(c->move_tables);
	free(c->move_tenant_column);
	free(c->move_conninfo);
	free(c->pins_file);
	free(c->tenant_column);
	free(c->auth_file);
	free(c->auth_query);
	free(c->server_passfile);
	free(c->server_reset_query);
	free(c->pool_reset_sql);
	free(c->peer_socket_dir);
	free_admin_users(c);
	if (c->userlist)
		userlist_free(c->userlist);
	free(c->path);
	free(c->client_tls_cert_file);
	free(c->client_tls_key_file);
	free(c->client_tls_ca_file);
	free(c->client_tls_protocols);
	free(c->client_tls_ciphers);
	free(c->server_tls_ca_file);
	free(c->server_tls_cert_file);
	free(c->server_tls_key_file);
	free(c->server_tls_protocols);
	free(c->server_tls_ciphers);
	tls_ctx_free(c->client_tls_ctx);
	if (c->ring)
		ring_free(c->ring);
	if (c->pins)
		pins_free(c->pins);
	free(c);
}

/*
 * What metrics show of placement: each cluster's pins and ring share, and
 * the fingerprint (see config.h). Runs with the load, off the event loop,
 * since digesting millions of pins takes a while.
 */
static void summarize(struct loader *L)
{
	struct config *c = L->c;
	size_t *npins = calloc(c->nclusters, sizeof(*npins));
	double *share = calloc(c->nclusters, sizeof(*share));
	uint64_t clusters = 0, parts[3];

	if (npins == NULL || share == NULL) {
		L->oom = true;
		goto out;
	}
	ring_shares(c->ring, share, c->nclusters);
	for (size_t i = 0; i < c->nclusters; i++) {
		char w[16];
		uint64_t h = XXH3_64bits(c->clusters[i].name, strlen(c->clusters[i].name));

		snprintf(w, sizeof(w), "%u", c->clusters[i].weight);
		/* A sum: the order of [cluster.*] sections does not place anyone. */
		clusters += XXH3_64bits_withSeed(w, strlen(w), h);
		c->clusters[i].ring_share = share[i];
	}
	parts[0] = c->vnodes;
	parts[1] = clusters;
	parts[2] = pins_digest(c->pins, c->cluster_names, c->nclusters, npins);
	for (size_t i = 0; i < c->nclusters; i++)
		c->clusters[i].npins = npins[i];
	c->fingerprint = XXH3_64bits(parts, sizeof(parts));
out:
	free(npins);
	free(share);
}

static struct config *load(const char *path, const char *pins_override, char *err,
			   size_t errlen)
{
	static atomic_uint_fast64_t generations;
	struct loader L = {.path = path, .pins_override = pins_override};
	struct config *c;
	int rc;

	if (errlen)
		err[0] = '\0';
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		snprintf(err, errlen, "%s: out of memory\n", path);
		return NULL;
	}
	atomic_init(&c->refs, 1);
	c->generation = atomic_fetch_add(&generations, 1) + 1;
	set_defaults(c);
	L.c = c;
	c->path = strdup(path);
	L.f = fopen(path, "r");
	if (L.f == NULL) {
		problem(&L, 0, "cannot open: %s", strerror(errno));
		goto done;
	}
	rc = ini_parse_stream(reader, &L, handler, &L);
	fclose(L.f);
	if (rc > 0)
		problem(&L, rc, "syntax error (expected [section], key = value or a comment)");
	else if (rc < 0)
		problem(&L, 0, "could not be parsed (%d)", rc);
	validate(&L);
	if (L.nerrs == 0 && !L.oom)
		build_placement(&L);
	if (L.nerrs == 0 && !L.oom)
		build_tls(&L);
	if (L.nerrs == 0 && !L.oom)
		summarize(&L);
done:
	if (L.oom)
		problem(&L, 0, "out of memory");
	if (L.nerrs > MAX_REPORTED) {
		int more = L.nerrs - MAX_REPORTED;

		/* Make room for one last line past the cap. */
		L.nerrs = MAX_REPORTED - 1;
		problem(&L, 0, "... and %d more problems", more);
	}
	if (L.errs && errlen) {
		snprintf(err, errlen, "%s", L.errs);
	}
	for (size_t i = 0; i < L.nseen; i++)
		free(L.seen[i]);
	free(L.seen);
	for (size_t i = 0; i < L.nheaders; i++)
		free(L.headers[i].name);
	free(L.headers);
	for (size_t i = 0; i < L.nhrefs; i++)
		free(L.hrefs[i].canon);
	free(L.hrefs);
	for (size_t i = 0; i < L.npins; i++) {
		free(L.pins[i].tenant);
		free(L.pins[i].cluster);
	}
	free(L.pins);
	for (size_t i = 0; i < c->nroutes; i++)
		free(L.rrefs[i].cluster);
	free(L.rrefs);
	free(L.auth_cluster);
	free(L.errs);
	if (L.nerrs > 0 || L.oom || c->path == NULL) {
		free_config(c);
		return NULL;
	}
	return c;
}

struct config *config_load(const char *path, char *err, size_t errlen)
{
	return load(path, NULL, err, errlen);
}

struct config *config_load_pins(const char *path, const char *pins_path, char *err,
				size_t errlen)
{
	return load(path, pins_path, err, errlen);
}

struct config *config_ref(struct config *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return c;
}

void config_unref(struct config *c)
{
	if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
		free_config(c);
}

const struct route_cfg *config_route_lookup(const struct config *c, const char *database)
{
	/* A handful of routes at most: a scan beats any index. */
	for (size_t i = 0; i < c->nroutes; i++) {
		if (strcmp(c->routes[i].database, database) == 0)
			return &c->routes[i];
	}
	return NULL;
}

int config_cluster_index(const struct config *c, const char *name)
{
	for (size_t i = 0; i < c->nclusters; i++) {
		if (strcmp(c->clusters[i].name, name) == 0)
			return (int)i;
	}
	return -1;
}

/* --- SHOW CONFIG --------------------------------------------------------------------------- */

static const char *fmt_ms(char *buf, size_t cap, uint64_t ms)
{
	if (ms % 1000 == 0)
		snprintf(buf, cap, "%llus", (unsigned long long)(ms / 1000));
	else
		snprintf(buf, cap, "%llums", (unsigned long long)ms);
	return buf;
}

static const char *fmt_u(char *buf, size_t cap, uint64_t v)
{
	snprintf(buf, cap, "%llu", (unsigned long long)v);
	return buf;
}

static const char *fmt_hp(char *buf, size_t cap, const struct host_port *hp)
{
	if (hp->host == NULL)
		snprintf(buf, cap, "off");
	else if (strchr(hp->host, ':'))
		snprintf(buf, cap, "[%s]:%u", hp->host, hp->port);
	else
		snprintf(buf, cap, "%s:%u", hp->host, hp->port);
	return buf;
}

static const char *on_off(bool b)
{
	return b ? "on" : "off";
}

void config_show(const struct config *c, config_show_fn fn, void *arg)
{
	static const char *const guards[] = {"off", "on", "strict"};
	static const char *const auths[] = {"trust", "md5", "scram-sha-256"};
	static const char *const client_tls[] = {"disable", "allow", "require", "verify-ca"};
	static const char *const srcnames[] = {"options", "parameter", "user", "database", "query"};
	char v[1024], t[64];
	size_t n = 0;

	v[0] = '\0';
	for (size_t i = 0; i < c->nlisten && n < sizeof(v); i++)
		n += (size_t)snprintf(v + n, sizeof(v) - n, "%s%s", i ? ", " : "",
				      fmt_hp(t, sizeof(t), &c->listen[i]));
	fn(arg, "listen", v, "127.0.0.1:6432", false);
	fn(arg, "threads", fmt_u(v, sizeof(v), c->threads), "1", false);
	fn(arg, "tenant_key", c->rule.key, "app.tenant_id", true);
	n = 0;
	v[0] = '\0';
	for (size_t i = 0; i < ARRAY_SIZE(srcnames) && n < sizeof(v); i++) {
		if (c->rule.sources & (1u << i))
			n += (size_t)snprintf(v + n, sizeof(v) - n, "%s%s", n ? ", " : "",
					      srcnames[i]);
	}
	fn(arg, "tenant_sources", v, "options, parameter", true);
	snprintf(v, sizeof(v), "%c", c->rule.separator);
	fn(arg, "tenant_separator", v, "+", true);
	fn(arg, "tenant_column", c->tenant_column ? c->tenant_column : "", "", true);
	fn(arg, "max_client_conn", fmt_u(v, sizeof(v), c->max_client_conn), "1000", true);
	fn(arg, "client_login_timeout", fmt_ms(v, sizeof(v), c->client_login_timeout_ms), "60s",
	   true);
	fn(arg, "server_connect_timeout", fmt_ms(v, sizeof(v), c->server_connect_timeout_ms),
	   "5s", true);
	fn(arg, "shutdown_timeout", fmt_ms(v, sizeof(v), c->shutdown_timeout_ms), "30s", true);
	fn(arg, "pause_timeout", fmt_ms(v, sizeof(v), c->pause_timeout_ms), "30s", true);
	fn(arg, "log_level", log_level_name(c->log_level), "info", true);
	fn(arg, "guard", guards[c->guard], "on", true);
	fn(arg, "guard_max_statement", fmt_u(v, sizeof(v), c->guard_max_statement), "1048576",
	   true);
	fn(arg, "guard_max_held", fmt_u(v, sizeof(v), c->guard_max_held), "67108864", true);
	fn(arg, "guard_server_check", on_off(c->guard_server_check), "off", true);
	fn(arg, "metrics_listen", fmt_hp(v, sizeof(v), &c->metrics_listen), "off", false);
	fn(arg, "peer_socket_dir", c->peer_socket_dir ? c->peer_socket_dir : "", "", false);
	n = 0;
	v[0] = '\0';
	for (size_t i = 0; i < c->nadmin_users && n < sizeof(v); i++)
		n += (size_t)snprintf(v + n, sizeof(v) - n, "%s%s", i ? ", " : "",
				      c->admin_users[i]);
	fn(arg, "admin_users", v, "", true);
	fn(arg, "admin_trust", on_off(c->admin_trust), "off", true);
	fn(arg, "client_tls_mode", client_tls[c->client_tls_mode], "disable", true);
	fn(arg, "server_tls_mode", tls_server_mode_name(c->server_tls_mode), "prefer", true);
	fn(arg, "auth.auth_type", auths[c->auth_type], "scram-sha-256", true);
	fn(arg, "auth.auth_file", c->auth_file ? c->auth_file : "", "", true);
	fn(arg, "auth.auth_query", c->auth_query ? c->auth_query : "", "", true);
	fn(arg, "auth.auth_cluster", c->nclusters ? c->cluster_names[c->auth_cluster] : "", "",
	   true);
	fn(arg, "health.interval", fmt_ms(v, sizeof(v), c->health_interval_ms), "1s", true);
	fn(arg, "health.timeout", fmt_ms(v, sizeof(v), c->health_timeout_ms), "2s", true);
	fn(arg, "health.fail_after", fmt_u(v, sizeof(v), c->health_fail_after), "2", true);
	fn(arg, "health.worker_interval", fmt_ms(v, sizeof(v), c->health_worker_interval_ms),
	   "5s", true);
	fn(arg, "health.worker_timeout", fmt_ms(v, sizeof(v), c->health_worker_timeout_ms), "10s",
	   true);
	/* conninfo may carry a password: say only whether it is set. */
	fn(arg, "health.conninfo", c->health_conninfo && *c->health_conninfo ? "(set)" : "", "",
	   true);
	fn(arg, "ring.vnodes", fmt_u(v, sizeof(v), c->vnodes), "256", true);
	fn(arg, "pins.file", c->pins_file ? c->pins_file : "", "", true);
	fn(arg, "pins.count", fmt_u(v, sizeof(v), pins_count(c->pins)), "0", true);
	fn(arg, "clusters", fmt_u(v, sizeof(v), c->nclusters), "", true);
	/* [directory]: turning it on or off needs a restart; the rest applies on reload. */
	fn(arg, "directory.conninfo", c->dir_conninfo ? "(set)" : "", "", false);
	fn(arg, "directory.schema", c->dir_schema ? c->dir_schema : "", "tenant_router", true);
	fn(arg, "directory.refresh", fmt_ms(v, sizeof(v), c->dir_refresh_ms), "5m", true);
	fn(arg, "directory.heartbeat", fmt_ms(v, sizeof(v), c->dir_heartbeat_ms), "1s", true);
	fn(arg, "directory.directory_lease", fmt_ms(v, sizeof(v), c->dir_lease_ms), "10s", true);
	fn(arg, "directory.directory_stale", c->dir_stale_serve ? "serve" : "refuse", "refuse",
	   true);
	fn(arg, "directory.cache_file", c->dir_cache_file ? c->dir_cache_file : "", "", true);
	fn(arg, "directory.move_drain_timeout", fmt_ms(v, sizeof(v), c->dir_move_drain_timeout_ms),
	   "10s", true);
	fn(arg, "directory.router_id", c->dir_router_id ? c->dir_router_id : "", "", true);
	/* [move]: read by `tenant-router move` each time it runs. */
	n = 0;
	v[0] = '\0';
	for (size_t i = 0; i < c->nmove_tables && n < sizeof(v); i++)
		n += (size_t)snprintf(v + n, sizeof(v) - n, "%s%s", i ? ", " : "",
		                      c->move_tables[i]);
	fn(arg, "move.tables", v, "", true);
	fn(arg, "move.tenant_column", c->move_tenant_column ? c->move_tenant_column : "",
	   "tenant_id", true);
	fn(arg, "move.conninfo", c->move_conninfo ? "(set)" : "", "", true);
	fn(arg, "move.fence_timeout", fmt_ms(v, sizeof(v), c->move_fence_timeout_ms), "60s", true);
}
