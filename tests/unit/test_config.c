/*
 * test_config.c - configuration loading and validation.
 *
 * Each case writes an INI file to a temporary directory, loads it, and checks
 * either the values or the exact problem lines an operator would read from
 * --check or a failed reload.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "pins.h"
#include "ring.h"
#include "route.h"

static char dir[64];

static int setup(void **state)
{
	strcpy(dir, "/tmp/tr-config-XXXXXX");
	assert_non_null(mkdtemp(dir));
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
	return 0;
}

static const char *write_file(const char *name, const char *text)
{
	static char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return path;
}

static const char base[] = "[cluster.a]\nhosts = 127.0.0.1:5433\n"
			   "[cluster.b]\nhosts = 127.0.0.1:5434, [::1]:5435, db.example\n";

static void test_config_defaults(void **state)
{
	char err[4096];
	struct config *c = config_load(write_file("d.ini", base), err, sizeof(err));

	assert_non_null(c);
	assert_string_equal(err, "");
	assert_int_equal(c->nlisten, 1);
	assert_string_equal(c->listen[0].host, "127.0.0.1");
	assert_int_equal(c->listen[0].port, 6432);
	assert_string_equal(c->rule.key, "app.tenant_id");
	assert_int_equal(c->rule.sources, TENANT_SRC_OPTIONS | TENANT_SRC_PARAMETER);
	assert_int_equal(c->rule.separator, '+');
	assert_int_equal(c->max_client_conn, 1000);
	assert_int_equal(c->threads, 1);
	assert_int_equal(c->client_login_timeout_ms, 60000);
	assert_int_equal(c->server_connect_timeout_ms, 5000);
	assert_int_equal(c->health_interval_ms, 1000);
	assert_int_equal(c->health_timeout_ms, 2000);
	assert_int_equal(c->health_fail_after, 2);
	assert_int_equal(c->vnodes, 256);
	assert_int_equal(c->nclusters, 2);
	assert_string_equal(c->clusters[1].name, "b");
	assert_int_equal(c->clusters[1].nhosts, 3);
	assert_string_equal(c->clusters[1].hosts[1].host, "::1");
	assert_int_equal(c->clusters[1].hosts[1].port, 5435);
	assert_string_equal(c->clusters[1].hosts[2].host, "db.example");
	assert_int_equal(c->clusters[1].hosts[2].port, 5432);
	config_unref(c);
}

static void test_config_pool_keys(void **state)
{
	char err[4096];
	struct config *c = config_load(write_file("pd.ini", base), err, sizeof(err));

	/* PgBouncer's defaults; pooling off. */
	assert_non_null(c);
	assert_int_equal(c->pool_mode, POOL_NONE);
	assert_false(c->pooling);
	assert_int_equal(c->pool_size, 20);
	assert_int_equal(c->max_server_conn, 0);
	assert_int_equal(c->server_idle_timeout_ms, 600000);
	assert_int_equal(c->server_lifetime_ms, 3600000);
	assert_int_equal(c->query_wait_timeout_ms, 120000);
	assert_int_equal(c->server_login_retry_ms, 15000);
	assert_string_equal(c->server_reset_query, "DISCARD ALL");
	assert_string_equal(c->pool_reset_sql, "DISCARD ALL");
	assert_int_equal(c->clusters[0].pool_mode, POOL_NONE);
	config_unref(c);

	write_file("users.txt", "\"app\" \"pw\"\n");
	c = config_load(write_file("p.ini", "[router]\npool_size = 5\nmax_server_conn = 9\n"
					    "server_reset_query =\nquery_wait_timeout = 3s\n"
					    "[auth]\nauth_file = users.txt\n"
					    "[cluster.a]\nhosts = 127.0.0.1:5433\npool_mode = session\n"
					    "pool_size = 2\n"
					    "[cluster.b]\nhosts = 127.0.0.1:5434\n"),
			err, sizeof(err));
	assert_non_null(c);
	assert_true(c->pooling);
	assert_int_equal(c->clusters[0].pool_mode, POOL_SESSION);
	assert_int_equal(c->clusters[0].pool_size, 2);
	assert_int_equal(c->clusters[0].max_server_conn, 9);
	assert_int_equal(c->clusters[1].pool_mode, POOL_NONE);
	assert_int_equal(c->clusters[1].pool_size, 5);
	assert_int_equal(c->query_wait_timeout_ms, 3000);
	/* No reset query: the tenant setting is reset all the same. */
	assert_string_equal(c->server_reset_query, "");
	assert_string_equal(c->pool_reset_sql, "RESET \"app.tenant_id\"");
	config_unref(c);

	c = config_load(write_file("pb.ini", "[router]\npool_mode = transaction\npool_size = 0\n"
					     "[cluster.a]\nhosts = 127.0.0.1:5433\npool_mode = session\n"),
			err, sizeof(err));
	assert_null(c);
	assert_non_null(strstr(err, "[router] pool_mode: \"transaction\" is not none or session"));
	assert_non_null(strstr(err, "[router] pool_size: \"0\" is not a whole number"));
	assert_non_null(strstr(err, "[cluster.a] pool_mode = session needs [auth]"));
}

static void test_config_all_keys(void **state)
{
	char err[4096];
	struct config *c;

	write_file("p.txt", "t1 b\n# comment\nt2 a\n");
	c = config_load(write_file("all.ini",
				   "[router]\n"
				   "listen = 127.0.0.1:7000, [::1]:7001\n"
				   "tenant_key = app.partner_id\n"
				   "tenant_sources = options, user, database\n"
				   "tenant_separator = @\n"
				   "max_client_conn = 50\n"
				   "threads = 3\n"
				   "client_login_timeout = 1500ms\n"
				   "server_connect_timeout = 2\n"
				   "shutdown_timeout = 1m\n"
				   "log_level = debug\n"
				   "[health]\ninterval = 250ms\ntimeout = 1s\nfail_after = 3\n"
				   "conninfo = user=health dbname=postgres\n"
				   "[ring]\nvnodes = 64\n"
				   "[cluster.a]\nhosts = 127.0.0.1:5433\nweight = 3\n"
				   "[cluster.b]\nhosts = 127.0.0.1:5434\n"
				   "[pins]\nfile = p.txt\n42 = b ; inline comment\n"),
			err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->nlisten, 2);
	assert_int_equal(c->listen[1].port, 7001);
	assert_string_equal(c->rule.key, "app.partner_id");
	assert_int_equal(c->rule.sources,
			 TENANT_SRC_OPTIONS | TENANT_SRC_USER | TENANT_SRC_DATABASE);
	assert_int_equal(c->rule.separator, '@');
	assert_int_equal(c->max_client_conn, 50);
	assert_int_equal(c->threads, 3);
	assert_int_equal(c->client_login_timeout_ms, 1500);
	assert_int_equal(c->server_connect_timeout_ms, 2000);
	assert_int_equal(c->shutdown_timeout_ms, 60000);
	assert_int_equal(c->log_level, LOG_DEBUG);
	assert_int_equal(c->health_interval_ms, 250);
	assert_int_equal(c->health_fail_after, 3);
	assert_string_equal(c->health_conninfo, "user=health dbname=postgres");
	assert_int_equal(c->vnodes, 64);
	assert_int_equal(c->clusters[0].weight, 3);
	/* The pins file is found next to the config; inline pins join it. */
	assert_int_equal(pins_count(c->pins), 3);
	assert_int_equal(pins_lookup(c->pins, "t1", 2), 1);
	assert_int_equal(pins_lookup(c->pins, "t2", 2), 0);
	assert_int_equal(pins_lookup(c->pins, "42", 2), 1);
	assert_int_equal(pins_lookup(c->pins, "042", 3), -1);
	config_unref(c);
}

static void test_config_reports_every_problem(void **state)
{
	char err[4096], want[4096];
	const char *path = write_file("bad.ini", "[router]\n"
						 "listen = nope:x\n"
						 "max_client_conn = abc\n"
						 "bogus = 1\n"
						 "[health]\n"
						 "interval = 5 parsecs\n"
						 "conninfo = host=x user=y\n"
						 "[cluster.a]\n"
						 "weight = 0\n"
						 "[pins]\n"
						 "7 = zz\n"
						 "[weird]\n"
						 "x = 1\n");

	assert_null(config_load(path, err, sizeof(err)));
	snprintf(want, sizeof(want),
		 "%1$s:2: [router] listen: \"nope:x\" is not HOST:PORT\n"
		 "%1$s:3: [router] max_client_conn: \"abc\" is not a whole number from 1 to "
		 "1000000\n"
		 "%1$s:4: [router] bogus: unknown setting\n"
		 "%1$s:6: [health] interval: \"5 parsecs\" is not a duration (use e.g. 500ms, 5s, "
		 "1m)\n"
		 "%1$s:7: [health] conninfo: remove host=, hosts and ports come from each "
		 "[cluster.NAME] hosts\n"
		 "%1$s:9: [cluster.a] weight: \"0\" is not a whole number from 1 to 1000\n"
		 "%1$s:12: [weird]: unknown section (sections are router, auth, health, ring, "
		 "pins, directory, move, cluster.NAME and route.NAME)\n"
		 "%1$s:11: [pins] 7: unknown cluster \"zz\"\n"
		 "%1$s:8: [cluster.a] hosts: missing (every cluster needs hosts; to remove a "
		 "cluster, delete its section)\n",
		 path);
	assert_string_equal(err, want);
}

static void test_config_duplicates_and_syntax(void **state)
{
	char err[4096];
	const char *path = write_file("dup.ini", "[router]\nmax_client_conn = 5\n"
						 "max_client_conn = 6\n"
						 "this line has no equals sign\n"
						 "[cluster.a]\nhosts = 127.0.0.1:1\n");

	assert_null(config_load(path, err, sizeof(err)));
	assert_non_null(strstr(err, ":3: [router] max_client_conn: set twice\n"));
	assert_non_null(strstr(err, ":4: syntax error"));
}

/* Lines in a report. */
static size_t count_lines(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

#define A "[cluster.a]\nhosts = 127.0.0.1:5433\n" /* lines 1-2 */

/*
 * Typos that would change where tenants go without a word. Each must be
 * refused with exactly the listed problems (one line each, naming line,
 * section and key), and nothing else.
 */
static void test_config_typos_refused(void **state)
{
	static const struct {
		const char *ini;
		const char *want[3];
	} cases[] = {
		/* A cluster section without hosts, however it comes about. */
		{A "[cluster.b]\n", {":3: [cluster.b] hosts: missing (every cluster needs hosts; "
				     "to remove a cluster, delete its section)\n"}},
		{"[cluster.b]\n" A, {":1: [cluster.b] hosts: missing ("}},
		{A "[cluster.b]\n# hosts = 127.0.0.1:5434\n\n",
		 {":3: [cluster.b] hosts: missing ("}},
		{A "[cluster.b]\nweight = 2\n", {":3: [cluster.b] hosts: missing ("}},
		{A "[cluster.b]\nserver_tls_mode = disable\n",
		 {":3: [cluster.b] hosts: missing ("}},
		{A "[cluster.b]\nhost = 127.0.0.1:5434\n",
		 {":4: [cluster.b] host: unknown setting\n", ":3: [cluster.b] hosts: missing ("}},
		/* The same section or key twice. */
		{A "[cluster.a]\n", {":3: [cluster.a]: section given twice (first at line 1)\n"}},
		{A "[cluster.b]\nhosts = 127.0.0.1:5434\n[cluster.a]\nweight = 5\n",
		 {":5: [cluster.a]: section given twice (first at line 1)\n"}},
		{"[router]\nmax_client_conn = 5\n" A "[router]\nthreads = 2\n",
		 {":5: [router]: section given twice (first at line 1)\n"}},
		{A "hosts = 127.0.0.1:5434\n", {":3: [cluster.a] hosts: set twice\n"}},
		/* Weights and vnodes. */
		{A "weight = 0\n", {":3: [cluster.a] weight: \"0\" is not a whole number from 1 to "
				   "1000\n"}},
		{A "weight = -1\n", {":3: [cluster.a] weight: \"-1\" is not a whole number"}},
		{A "weight = abc\n", {":3: [cluster.a] weight: \"abc\" is not a whole number"}},
		{A "weight = 1.5\n", {":3: [cluster.a] weight: \"1.5\" is not a whole number"}},
		{A "weight = 2x\n", {":3: [cluster.a] weight: \"2x\" is not a whole number"}},
		{A "weight =\n", {":3: [cluster.a] weight: \"\" is not a whole number"}},
		{A "weight = 1001\n", {":3: [cluster.a] weight: \"1001\" is not a whole number"}},
		{"[ring]\nvnodes = 0\n" A,
		 {":2: [ring] vnodes: \"0\" is not a whole number from 1 to "}},
		{"[ring]\nvnodes = -5\n" A, {":2: [ring] vnodes: \"-5\" is not a whole number"}},
		/* Unknown keys, in every section. */
		{"[ring]\nvnode = 64\n" A, {":2: [ring] vnode: unknown setting\n"}},
		{"[router]\nlisten_addr = x\n" A, {":2: [router] listen_addr: unknown setting\n"}},
		{"[health]\nintervall = 1s\n" A, {":2: [health] intervall: unknown setting\n"}},
		{"[auth]\nauthtype = md5\n" A, {":2: [auth] authtype: unknown setting\n"}},
		{A "Hosts = 127.0.0.1:5434\n", {":3: [cluster.a] Hosts: unknown setting\n"}},
		{"vnodes = 64\n" A, {":1: vnodes: setting before the first [section]\n"}},
		/* Section names that are not ours, with keys or without. */
		{A "[cluster]\nhosts = 127.0.0.1:5434\n",
		 {":3: [cluster]: unknown section (sections are router, auth, health, ring, pins, "
		  "directory, move, cluster.NAME and route.NAME)\n"}},
		{A "[clusters.b]\nhosts = 127.0.0.1:5434\n", {":3: [clusters.b]: unknown section"}},
		{A "[Cluster.b]\n", {":3: [Cluster.b]: unknown section"}},
		{A "[ cluster.b ]\nhosts = 127.0.0.1:5434\n",
		 {":3: [ cluster.b ]: unknown section"}},
		{A "[rings]\n", {":3: [rings]: unknown section"}},
		{A "[cluster.]\n", {":3: [cluster.]: cluster names are 1 to 41 letters, digits, "
				   "'_' or '-'\n"}},
		{A "[cluster.b c]\nhosts = 127.0.0.1:5434\n", {":3: [cluster.b c]: cluster names"}},
		{A "[cluster.b] hosts = 127.0.0.1:5434\n",
		 {":3: [cluster.b]: text after ']' is ignored: put settings on lines of their "
		  "own\n",
		  ":3: [cluster.b] hosts: missing ("}},
		/* inih would keep only [cluster.] and 41 x: a silent rename. */
		{A "[cluster.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx]\nhosts = 127.0.0.1:5434\n",
		 {":3: [cluster.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx]: cluster names are at "
		  "most 41 characters (the INI parser keeps only "
		  "[cluster.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx])\n"}},
		/* An indented header after a key continues that key's value (inih's rule). */
		{A "  [cluster.b]\nhosts = 127.0.0.1:5434\n",
		 {":3: an indented line continues the value above, so this is not a section "
		  "header: remove the indentation\n",
		  ":4: [cluster.a] hosts: set twice\n"}},
		/* A host twice in one cluster, or in two. */
		{"[cluster.a]\nhosts = 127.0.0.1:5433, 127.0.0.1:5433\n",
		 {":2: [cluster.a] hosts: 127.0.0.1:5433 is listed twice\n"}},
		{"[cluster.a]\nhosts = db, DB:5432\n", {":2: [cluster.a] hosts: DB:5432 is listed "
							"twice\n"}},
		{"[cluster.a]\nhosts = [::1]:5433, [0:0::1]:5433\n",
		 {":2: [cluster.a] hosts: [0:0::1]:5433 is listed twice\n"}},
		{A "[cluster.b]\nhosts = 127.0.0.1:5434, 127.0.0.1:5433\n",
		 {":4: [cluster.b] hosts: 127.0.0.1:5433 is also a host of [cluster.a] (line 2): "
		  "two clusters cannot share a server\n"}},
		{A "[cluster.b]\nhosts = 127.0.0.2:1\n[cluster.c]\nhosts = 127.0.0.1:5433\n",
		 {":6: [cluster.c] hosts: 127.0.0.1:5433 is also a host of [cluster.a] (line 2)"}},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char err[4096];
		size_t nwant = 0;

		assert_null(config_load(write_file("typo.ini", cases[i].ini), err, sizeof(err)));
		for (; nwant < ARRAY_SIZE(cases[i].want) && cases[i].want[nwant]; nwant++) {
			if (strstr(err, cases[i].want[nwant]) == NULL)
				fail_msg("case %zu: no \"%s\" in:\n%s", i, cases[i].want[nwant],
					 err);
		}
		if (count_lines(err) != nwant)
			fail_msg("case %zu: %zu problems expected, got:\n%s", i, nwant, err);
	}
}

/* Every typo in one file is reported, each on its own line, in one load. */
static void test_config_typos_all_reported(void **state)
{
	char err[4096];
	const char *path = write_file("many.ini", A "[cluster.b]\n"
						    "[cluster.c]\nweight = 0\n"
						    "[clusters.d]\nhosts = 127.0.0.1:1\n"
						    "[cluster.a]\n"
						    "[cluster.e]\nhosts = 127.0.0.1:5433\n");

	assert_null(config_load(path, err, sizeof(err)));
	assert_non_null(strstr(err, ":5: [cluster.c] weight: \"0\" is not a whole number"));
	assert_non_null(strstr(err, ":6: [clusters.d]: unknown section"));
	assert_non_null(strstr(err, ":8: [cluster.a]: section given twice (first at line 1)\n"));
	assert_non_null(strstr(err, ":3: [cluster.b] hosts: missing ("));
	assert_non_null(strstr(err, ":4: [cluster.c] hosts: missing ("));
	assert_non_null(strstr(err, ":10: [cluster.e] hosts: 127.0.0.1:5433 is also a host of "
				    "[cluster.a] (line 2)"));
	assert_int_equal(count_lines(err), 6);
}

/* What the new checks must still let through. */
static void test_config_typo_checks_accept(void **state)
{
	static const struct {
		const char *ini;
		size_t nclusters;
		const char *last; /* name of the last cluster */
	} cases[] = {
		{"\xEF\xBB\xBF" A, 1, "a"},				   /* a UTF-8 BOM */
		{"[cluster.a] ; the main one\nhosts = 127.0.0.1:5433\n", 1, "a"}, /* a comment */
		{"  [cluster.a]\nhosts = 127.0.0.1:5433\n", 1, "a"}, /* indented, not after a key */
		{A "\n; [cluster.b]\n# [cluster.c]\n", 1, "a"},	/* commented-out sections */
		{A "[pins]\n[ring]\n[router]\n[health]\n[auth]\n", 1, "a"}, /* empty known ones */
		/* 41 characters, the most */
		{A "[cluster.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx]\nhosts = 127.0.0.1:5434\n",
		 2, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},
		/* Same address, other port; same port, other address. */
		{A "[cluster.b]\nhosts = 127.0.0.1:5434, 127.0.0.2:5433\n", 2, "b"},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char err[4096];
		struct config *c;

		c = config_load(write_file("ok.ini", cases[i].ini), err, sizeof(err));
		if (c == NULL)
			fail_msg("case %zu refused:\n%s", i, err);
		assert_int_equal(c->nclusters, cases[i].nclusters);
		assert_string_equal(c->clusters[c->nclusters - 1].name, cases[i].last);
		config_unref(c);
	}
}

#undef A

static void test_config_no_cluster(void **state)
{
	char err[4096];

	assert_null(config_load(write_file("empty.ini", "[router]\n"), err, sizeof(err)));
	assert_non_null(strstr(err, "no [cluster.NAME] section"));
}

static void test_config_missing_file(void **state)
{
	char err[4096];

	assert_null(config_load("/nonexistent/tr.ini", err, sizeof(err)));
	assert_string_equal(err, "/nonexistent/tr.ini: cannot open: No such file or directory\n");
}

static void test_config_pin_conflicts(void **state)
{
	char err[4096];
	struct config *c;

	write_file("p2.txt", "42 a\n");
	c = config_load(write_file("conf.ini", "[cluster.a]\nhosts = h:1\n[cluster.b]\nhosts = h:2\n"
					       "[pins]\n42 = b\nfile = p2.txt\n"),
			err, sizeof(err));
	assert_null(c);
	assert_non_null(strstr(err, "p2.txt:1:"));
}

static void test_config_bad_pins_file(void **state)
{
	char err[4096];
	struct config *c;

	write_file("p3.txt", "ok a\nbad nowhere\ntoo many fields\n");
	c = config_load(write_file("bp.ini", "[cluster.a]\nhosts = h:1\n[pins]\nfile = p3.txt\n"),
			err, sizeof(err));
	assert_null(c);
	assert_non_null(strstr(err, "p3.txt:2:"));
	assert_non_null(strstr(err, "p3.txt:3:"));
	assert_null(strstr(err, "p3.txt:1:"));
}

static void test_config_long_line(void **state)
{
	char err[4096], text[2048];
	struct config *c;

	snprintf(text, sizeof(text), "[cluster.a]\nhosts = h:1\n[health]\nconninfo = user=%0400d\n",
		 7);
	c = config_load(write_file("long.ini", text), err, sizeof(err));
	/* inih would cut the line; we refuse it rather than use half a value. */
	assert_null(c);
	assert_non_null(strstr(err, ":4: line longer than"));
}

static void test_config_durations(void **state)
{
	static const struct {
		const char *in;
		bool ok;
		uint64_t ms;
	} cases[] = {
		{"500ms", true, 500}, {"5s", true, 5000}, {"5", true, 5000},  {"2m", true, 120000},
		{"1min", true, 60000}, {"1h", true, 3600000}, {"0", true, 0}, {"", false, 0},
		{"-1s", false, 0},   {"5 s", true, 5000}, {"5x", false, 0},   {"s", false, 0},
		{"99999999999h", false, 0},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		uint64_t ms = 0;

		assert_int_equal(config_parse_duration(cases[i].in, &ms), cases[i].ok);
		if (cases[i].ok)
			assert_int_equal(ms, cases[i].ms);
	}
}

static void test_config_host_port(void **state)
{
	static const struct {
		const char *in;
		bool ok;
		const char *host;
		uint16_t port;
	} cases[] = {
		{"127.0.0.1:5433", true, "127.0.0.1", 5433},
		{"db", true, "db", 5432},
		{"[::1]:6000", true, "::1", 6000},
		{"[::1]", true, "::1", 5432},
		{"::1", true, "::1", 5432},
		{"h:0", false, NULL, 0},
		{"h:65536", false, NULL, 0},
		{":5432", false, NULL, 0},
		{"[::1", false, NULL, 0},
		{"[::1]x", false, NULL, 0},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct host_port hp = {0};

		assert_int_equal(config_parse_host_port(cases[i].in, 5432, &hp), cases[i].ok);
		if (cases[i].ok) {
			assert_string_equal(hp.host, cases[i].host);
			assert_int_equal(hp.port, cases[i].port);
		}
		free(hp.host);
	}
}

/* Tenant source query, the guard and [auth]. */
static void test_config_query_and_auth(void **state)
{
	char err[4096], text[1024];
	struct config *c;
	const char *path;

	write_file("users.txt", "\"app\" \"md5d41d8cd98f00b204e9800998ecf8427e\"\n");
	snprintf(text, sizeof(text),
		 "[router]\ntenant_sources = options, query\ntenant_column = tenant_id\n"
		 "guard = strict\nguard_server_check = on\n[auth]\nauth_type = md5\n"
		 "auth_file = users.txt\n"
		 "auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename = $1\n"
		 "auth_cluster = b\nserver_passfile = pass\n%s",
		 base);
	path = write_file("q.ini", text);
	c = config_load(path, err, sizeof(err));
	assert_non_null(c);
	assert_true(c->rule.sources & TENANT_SRC_QUERY);
	assert_string_equal(c->tenant_column, "tenant_id");
	assert_int_equal(c->guard, GUARD_STRICT);
	assert_true(c->guard_server_check);
	assert_int_equal(c->auth_type, AUTH_MD5);
	assert_non_null(c->userlist);
	assert_int_equal(c->auth_cluster, 1);
	assert_non_null(strstr(c->server_passfile, "/pass"));
	config_unref(c);

	/* Defaults: guard on, SCRAM. */
	c = config_load(write_file("d.ini", base), err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->guard, GUARD_ON);
	assert_false(c->guard_server_check);
	assert_int_equal(c->auth_type, AUTH_SCRAM);
	assert_null(c->userlist);
	config_unref(c);

	snprintf(text, sizeof(text),
		 "[router]\ntenant_sources = query\nguard = maybe\n[auth]\nauth_type = pw\n"
		 "auth_query = SELECT 1\nauth_cluster = zz\n%s",
		 base);
	path = write_file("bad.ini", text);
	assert_null(config_load(path, err, sizeof(err)));
	assert_non_null(strstr(err, ":3: [router] guard: \"maybe\" is not on, strict or off\n"));
	assert_non_null(strstr(err, ":5: [auth] auth_type: \"pw\" is not scram-sha-256, md5 or "
				    "trust\n"));
	assert_non_null(strstr(err, ":6: [auth] auth_query: must take the user name as $1"));
	assert_non_null(strstr(err, ":7: [auth] auth_cluster: unknown cluster \"zz\"\n"));
	assert_non_null(strstr(err, "[auth]: tenant source \"query\" needs auth_file or "
				    "auth_query"));

	snprintf(text, sizeof(text), "[router]\nguard_server_check = yes\n%s", base);
	assert_null(config_load(write_file("gsc.ini", text), err, sizeof(err)));
	assert_non_null(strstr(err, ":2: [router] guard_server_check: \"yes\" is not on or off\n"));

	/* A missing auth_file is named. */
	snprintf(text, sizeof(text), "[router]\ntenant_sources = query\n[auth]\n"
				     "auth_file = nope.txt\n%s",
		 base);
	assert_null(config_load(write_file("nf.ini", text), err, sizeof(err)));
	assert_non_null(strstr(err, "[auth] auth_file: "));
	assert_non_null(strstr(err, "nope.txt"));
}

static void show_count_cb(void *arg, const char *key, const char *value, const char *defval,
			  bool reloadable)
{
	(*(int *)arg)++;
	assert_non_null(value);
	assert_non_null(defval);
	if (strcmp(key, "listen") == 0)
		assert_false(reloadable);
	if (strcmp(key, "admin_users") == 0)
		assert_string_equal(value, "alice, bob");
	if (strcmp(key, "pause_timeout") == 0)
		assert_string_equal(value, "1500ms");
}

static void test_config_admin_console(void **state)
{
	char err[4096], text[1024];
	struct config *c, *d;
	const char *path;
	int n = 0;

	write_file("users.txt", "\"alice\" \"md5d41d8cd98f00b204e9800998ecf8427e\"\n");
	write_file("pins.txt", "t1 a\n");
	write_file("pins2.txt", "t1 b\nt2 b\n");
	snprintf(text, sizeof(text),
		 "[router]\nadmin_users = alice, bob\npause_timeout = 1500ms\n[auth]\n"
		 "auth_file = users.txt\n[pins]\nfile = pins.txt\n%s",
		 base);
	path = write_file("adm.ini", text);
	c = config_load(path, err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(c->nadmin_users, 2);
	assert_true(config_is_admin(c, "bob"));
	assert_false(config_is_admin(c, "bo"));
	assert_false(c->admin_trust);
	assert_int_equal(c->pause_timeout_ms, 1500);
	config_show(c, show_count_cb, &n);
	assert_true(n > 30);
	/* The same file with the pins read from elsewhere: a later generation, the same path. */
	snprintf(text, sizeof(text), "%s/pins2.txt", dir);
	d = config_load_pins(path, text, err, sizeof(err));
	assert_non_null(d);
	assert_true(d->generation > c->generation);
	assert_int_equal(pins_count(d->pins), 2);
	assert_non_null(strstr(d->pins_file, "/pins.txt"));
	config_unref(d);
	config_unref(c);

	/* Trust needs saying so; passwords need a place to come from; no pins file, no PIN. */
	snprintf(text, sizeof(text), "[router]\nadmin_users = alice\n[auth]\nauth_type = trust\n%s",
		 base);
	path = write_file("adm2.ini", text);
	assert_null(config_load(path, err, sizeof(err)));
	assert_non_null(strstr(err, "admin_trust = on"));
	snprintf(text, sizeof(text), "[router]\nadmin_users = alice\n%s", base);
	path = write_file("adm3.ini", text);
	assert_null(config_load(path, err, sizeof(err)));
	assert_non_null(strstr(err, "auth_file or auth_query"));
	snprintf(text, sizeof(text), "[router]\nadmin_users = alice\nadmin_trust = on\n%s", base);
	path = write_file("adm4.ini", text);
	c = config_load(path, err, sizeof(err));
	assert_non_null(c);
	config_unref(c);
	assert_null(config_load_pins(path, "/tmp/whatever", err, sizeof(err)));
	assert_non_null(strstr(err, "[pins] file: not set"));
	snprintf(text, sizeof(text),
		 "[router]\nadmin_users = al ice\nadmin_trust = maybe\npause_timeout = 0\n%s",
		 base);
	path = write_file("adm5.ini", text);
	assert_null(config_load(path, err, sizeof(err)));
	assert_non_null(strstr(err, "admin_users"));
	assert_non_null(strstr(err, "admin_trust"));
	assert_non_null(strstr(err, "pause_timeout"));
}

static void test_config_refcount(void **state)
{
	char err[4096];
	struct config *c = config_load(write_file("rc.ini", base), err, sizeof(err));

	assert_non_null(c);
	assert_ptr_equal(config_ref(c), c);
	config_unref(c);
	/* Still alive: one reference left. */
	assert_int_equal(config_cluster_index(c, "b"), 1);
	assert_int_equal(config_cluster_index(c, "zz"), -1);
	config_unref(c);
}

/* [route.NAME]: what it holds, and every way it can be wrong, each with its line. */
static void test_config_routes(void **state)
{
	static const struct {
		const char *ini;
		const char *want[3];
	} bad[] = {
		{"[route.f]\ndatabase = fed\ncluster = zz\n",
		 {":7: [route.f] cluster: unknown cluster \"zz\"\n"}},
		{"[route.f]\ndatabase = fed\ncluster = a\nhost = 10.0.0.1:5432\n",
		 {":8: [route.f]: give cluster or host, not both (cluster at line 7)\n"}},
		{"[route.f]\ndatabase = fed\n",
		 {":5: [route.f]: give cluster = NAME or host = HOST:PORT\n"}},
		{"[route.f]\ncluster = a\n",
		 {":5: [route.f] database: missing (the database this route is for)\n"}},
		{"[route.f]\ndatabase = fed\nhost = h:0\n",
		 {":7: [route.f] host: \"h:0\" is not HOST:PORT\n"}},
		{"[route.f]\ndatabase = fed\nhost = [::1\n",
		 {":7: [route.f] host: \"[::1\" is not HOST:PORT\n"}},
		{"[route.f]\ndatabase = fed\ncluster = a\n[route.g]\ndatabase = fed\nhost = h\n",
		 {":9: [route.g] database: \"fed\" is also the database of [route.f] (line 6)\n"}},
		{"[route.f]\ndatabase = "
		 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\ncluster = a\n",
		 {":6: [route.f] database: give a database name of 1 to 63 bytes\n"}},
		{"[route.f]\ndatabase = fed\ncluster = a\nweight = 1\n",
		 {":8: [route.f] weight: unknown setting\n"}},
		{"[route.f]\ndatabase = fed\ncluster = a\ncluster = b\n",
		 {":8: [route.f] cluster: set twice\n"}},
		{"[route.]\n", {":5: [route.]: route names are 1 to 43 letters, digits, '_' or '-'\n"}},
		{"[route.f]\ndatabase = a\ncluster = a\n[route.f]\ndatabase = b\ncluster = b\n",
		 {":8: [route.f]: section given twice (first at line 5)\n"}},
		/* Every problem of every route at once. */
		{"[route.f]\ncluster = zz\n[route.g]\ndatabase = x\n",
		 {":5: [route.f] database: missing", ":6: [route.f] cluster: unknown cluster",
		  ":7: [route.g]: give cluster = NAME or host = HOST:PORT"}},
	};
	char text[1024], err[4096];
	struct config *c;
	const struct route_cfg *r;

	snprintf(text, sizeof(text),
		 "%s[route.fed]\ndatabase = federation\ncluster = b\n"
		 "[route.adm]\ndatabase = Admin DB\nhost = [::1]:6000\n"
		 "[route.named]\nhost = db.example\ndatabase = n\n",
		 base);
	c = config_load(write_file("routes.ini", text), err, sizeof(err));
	assert_non_null(c);
	assert_string_equal(err, "");
	assert_int_equal(c->nroutes, 3);
	r = config_route_lookup(c, "federation");
	assert_non_null(r);
	assert_string_equal(r->name, "fed");
	assert_int_equal(r->cluster, 1);
	r = config_route_lookup(c, "Admin DB");
	assert_non_null(r);
	assert_int_equal(r->cluster, -1);
	assert_string_equal(r->host.host, "::1");
	assert_int_equal(r->host.port, 6000);
	r = config_route_lookup(c, "n");
	assert_non_null(r);
	assert_string_equal(r->host.host, "db.example");
	assert_int_equal(r->host.port, 5432);
	/* Database names compare exactly, as PostgreSQL compares them. */
	assert_null(config_route_lookup(c, "admin db"));
	assert_null(config_route_lookup(c, "federation "));
	config_unref(c);

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		size_t nwant = 0;

		snprintf(text, sizeof(text), "%s%s", base, bad[i].ini);
		assert_null(config_load(write_file("rbad.ini", text), err, sizeof(err)));
		for (; nwant < ARRAY_SIZE(bad[i].want) && bad[i].want[nwant]; nwant++) {
			if (strstr(err, bad[i].want[nwant]) == NULL)
				fail_msg("case %zu: no \"%s\" in:\n%s", i, bad[i].want[nwant], err);
		}
		if (count_lines(err) != nwant)
			fail_msg("case %zu: %zu problems expected, got:\n%s", i, nwant, err);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_defaults),
		cmocka_unit_test(test_config_pool_keys),
		cmocka_unit_test(test_config_admin_console),
		cmocka_unit_test(test_config_all_keys),
		cmocka_unit_test(test_config_reports_every_problem),
		cmocka_unit_test(test_config_duplicates_and_syntax),
		cmocka_unit_test(test_config_typos_refused),
		cmocka_unit_test(test_config_typos_all_reported),
		cmocka_unit_test(test_config_typo_checks_accept),
		cmocka_unit_test(test_config_no_cluster),
		cmocka_unit_test(test_config_missing_file),
		cmocka_unit_test(test_config_pin_conflicts),
		cmocka_unit_test(test_config_bad_pins_file),
		cmocka_unit_test(test_config_long_line),
		cmocka_unit_test(test_config_durations),
		cmocka_unit_test(test_config_host_port),
		cmocka_unit_test(test_config_refcount),
		cmocka_unit_test(test_config_query_and_auth),
		cmocka_unit_test(test_config_routes),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
