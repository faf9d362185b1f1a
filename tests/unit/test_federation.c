/*
 * test_federation.c - the federation script builder: quoting, layout, refusals.
 *
 * What PostgreSQL makes of the script is tested against real servers in
 * tests/integration/test_federation.py; here we check that every name and
 * value reaches the text quoted as quote_ident/quote_literal would, that a
 * password appears only when given, and that unusable options are refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "federation.h"

static const char *const hosts_a[] = {"10.0.0.1", "db-a2.example", "::1"};
static const uint16_t ports_a[] = {5432, 5433, 6000};
static const char *const hosts_b[] = {"b.example"};
static const uint16_t ports_b[] = {5432};

static const struct federation_cluster two[] = {
	{"a", 3, hosts_a, ports_a},
	{"My-B", 1, hosts_b, ports_b},
};

static char *build(const struct federation_opts *o, char *err, size_t errlen)
{
	return federation_sql(two, ARRAY_SIZE(two), o, err, errlen);
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;

	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

static void expect_ident(const char *in, const char *want)
{
	char *q = federation_quote_ident(in);

	assert_non_null(q);
	if (strcmp(q, want) != 0)
		fail_msg("quote_ident(%s) = %s, want %s", in, q, want);
	free(q);
}

static void expect_literal(const char *in, const char *want)
{
	char *q = federation_quote_literal(in);

	assert_non_null(q);
	if (strcmp(q, want) != 0)
		fail_msg("quote_literal(%s) = %s, want %s", in, q, want);
	free(q);
}

/* The answers of PostgreSQL 15's quote_ident() and quote_literal() for the same inputs. */
static void test_federation_quoting(void **state)
{
	expect_ident("public", "public");
	expect_ident("cluster_a", "cluster_a");
	expect_ident("_x1", "_x1");
	expect_ident("cluster_My-B", "\"cluster_My-B\"");
	expect_ident("Items", "\"Items\"");
	expect_ident("1st", "\"1st\"");
	expect_ident("odd \"name\"", "\"odd \"\"name\"\"\"");
	expect_ident("a.b", "\"a.b\"");
	expect_ident("", "\"\"");
	expect_ident("café", "\"café\"");
	/* Reserved in any way: quoted; unreserved keywords are not. */
	expect_ident("select", "\"select\"");
	expect_ident("user", "\"user\"");
	expect_ident("between", "\"between\"");
	expect_ident("xmltable", "\"xmltable\"");
	expect_ident("all", "\"all\"");
	expect_ident("name", "name");
	expect_ident("schema", "schema");
	expect_ident("cluster", "cluster");

	expect_literal("plain", "'plain'");
	expect_literal("", "''");
	expect_literal("it's", "'it''s'");
	expect_literal("''", "''''''");
	expect_literal("back\\slash", "E'back\\\\slash'");
	expect_literal("\\'", "E'\\\\'''");
	expect_literal("$fed$", "'$fed$'");
}

static void test_federation_layout(void **state)
{
	struct federation_opts o = {.dbname = "app'db", .user = "fed user", .source = "/etc/r.ini"};
	char err[256];
	char *sql = build(&o, err, sizeof(err));
	const char *begin, *commit;

	assert_non_null(sql);
	assert_string_equal(err, "");
	/* One transaction, the extension first. */
	begin = strstr(sql, "\nBEGIN;\n");
	commit = strstr(sql, "\nCOMMIT;\n");
	assert_non_null(begin);
	assert_non_null(commit);
	assert_true(begin < strstr(sql, "CREATE EXTENSION IF NOT EXISTS postgres_fdw;"));
	assert_string_equal(commit + strlen("\nCOMMIT;\n"), "");
	assert_non_null(strstr(sql, "-- tenant-router federation: read-only views over every "
				    "cluster of /etc/r.ini.\n"));
	/* Every host of a cluster, as libpq lists them, and where the writer is. */
	assert_non_null(strstr(sql, "CREATE SERVER cluster_a FOREIGN DATA WRAPPER postgres_fdw\n"
				    "\tOPTIONS (host '10.0.0.1,db-a2.example,::1', "
				    "port '5432,5433,6000', dbname 'app''db', "
				    "target_session_attrs 'read-write');\n"));
	assert_non_null(strstr(sql, "-- cluster a: 10.0.0.1:5432, db-a2.example:5433, [::1]:6000\n"));
	/* A name that needs quotes gets them everywhere. */
	assert_non_null(strstr(sql, "CREATE SERVER \"cluster_My-B\" FOREIGN DATA WRAPPER"));
	assert_non_null(strstr(sql, "IMPORT FOREIGN SCHEMA public FROM SERVER \"cluster_My-B\" "
				    "INTO \"cluster_My-B\";\n"));
	assert_int_equal(count(sql, "cluster_My-B"), count(sql, "\"cluster_My-B\"") +
							    count(sql, "'cluster_My-B'"));
	assert_non_null(strstr(sql, "CREATE USER MAPPING FOR CURRENT_USER SERVER cluster_a\n"
				    "\tOPTIONS (user 'fed user');\n"));
	/* The views' block knows the clusters by name and where their tables are. */
	assert_non_null(strstr(sql, "cluster_names CONSTANT text[] := ARRAY['a', "
				    "'My-B']::text[];\n"));
	assert_non_null(strstr(sql, "local_schemas CONSTANT text[] := ARRAY['cluster_a', "
				    "'cluster_My-B']::text[];\n"));
	assert_non_null(strstr(sql, "into_schema CONSTANT text := 'federation';\n"));
	assert_non_null(strstr(sql, "cluster_column CONSTANT text := 'cluster';\n"));
	/* Replacing: drops before creates, our marks, and the check that guards the drops. */
	assert_int_equal(count(sql, "DROP SERVER IF EXISTS"), 2);
	assert_int_equal(count(sql, "DROP SCHEMA IF EXISTS"), 3);
	assert_int_equal(count(sql, "IS 'managed by tenant-router federation';\n"), 5);
	assert_true(strstr(sql, "was not made by tenant-router federation") <
		    strstr(sql, "DROP SCHEMA IF EXISTS"));
	/* No password given: none in any statement, and a note on how to add one. */
	assert_null(strstr(strstr(sql, "BEGIN;"), "password"));
	assert_non_null(strstr(sql, "-- No password was given (--password)"));
	assert_null(strstr(sql, "GRANT"));
	free(sql);
}

static void test_federation_options(void **state)
{
	static const char *const schemas[] = {"public", "Sales Data"};
	static const char *const except[] = {"citus_tables", "Secret"};
	static const char *const options[] = {"fetch_size=10000", "sslmode=require",
					      "application_name=it's"};
	static const char *const grants[] = {"analyst", "BI Team"};
	struct federation_opts o = {
		.dbname = "app",
		.user = "u",
		.password = "pa'ss\\word",
		.local_role = "PUBLIC",
		.into = "Fed",
		.prefix = "c_",
		.cluster_column = "source cluster",
		.target_session_attrs = "prefer-standby",
		.schemas = schemas,
		.nschemas = ARRAY_SIZE(schemas),
		.except = except,
		.nexcept = ARRAY_SIZE(except),
		.options = options,
		.noptions = ARRAY_SIZE(options),
		.grants = grants,
		.ngrants = ARRAY_SIZE(grants),
	};
	char err[256];
	char *sql = build(&o, err, sizeof(err));

	assert_non_null(sql);
	assert_non_null(strstr(sql, "OPTIONS (host 'b.example', port '5432', dbname 'app', "
				    "target_session_attrs 'prefer-standby', fetch_size '10000', "
				    "sslmode 'require', application_name 'it''s');\n"));
	assert_non_null(strstr(sql, "CREATE USER MAPPING FOR PUBLIC SERVER c_a\n"
				    "\tOPTIONS (user 'u', password E'pa''ss\\\\word');\n"));
	assert_int_equal(count(sql, "password E'pa''ss\\\\word'"), 2);
	assert_null(strstr(sql, "-- No password was given"));
	assert_non_null(strstr(sql, "IMPORT FOREIGN SCHEMA \"Sales Data\" EXCEPT (citus_tables, "
				    "\"Secret\") FROM SERVER c_a INTO c_a;\n"));
	assert_non_null(strstr(sql, "IMPORT FOREIGN SCHEMA public EXCEPT (citus_tables, "
				    "\"Secret\") FROM SERVER \"c_My-B\" INTO \"c_My-B\";\n"));
	assert_non_null(strstr(sql, "CREATE SCHEMA \"Fed\";\n"));
	assert_non_null(strstr(sql, "cluster_column CONSTANT text := 'source cluster';\n"));
	assert_non_null(strstr(sql, "GRANT USAGE ON SCHEMA \"Fed\" TO \"BI Team\";\n"
				    "GRANT SELECT ON ALL TABLES IN SCHEMA \"Fed\" TO \"BI Team\";\n"));
	free(sql);

	o.local_role = "Report Owner";
	sql = build(&o, err, sizeof(err));
	assert_non_null(sql);
	assert_non_null(strstr(sql, "CREATE USER MAPPING FOR \"Report Owner\" SERVER c_a\n"));
	free(sql);
}

/* A name holding the dollar tag must not end the DO block early. */
static void test_federation_dollar_tag(void **state)
{
	static const char *const hosts[] = {"h"};
	static const uint16_t ports[] = {1};
	static const struct federation_cluster cl[] = {{"x", 1, hosts, ports}};
	struct federation_opts o = {.dbname = "d", .user = "u", .into = "v$fed$w",
				    .cluster_column = "$fed1$"};
	char err[256];
	char *sql = federation_sql(cl, 1, &o, err, sizeof(err));
	const char *body, *end;

	assert_non_null(sql);
	/* Each DO block takes the first tag found nowhere in its body. */
	body = strstr(sql, "DO $fed1$\n"); /* the ownership check holds 'v$fed$w' */
	assert_non_null(body);
	end = strstr(body + 10, "$fed1$");
	assert_non_null(end);
	assert_memory_equal(end, "$fed1$;\n", 8);
	body = strstr(sql, "DO $fed2$\n"); /* the views' block holds both */
	assert_non_null(body);
	end = strstr(body + 10, "$fed2$");
	assert_non_null(end);
	assert_memory_equal(end, "$fed2$;\n", 8);
	assert_true(strstr(body, "'$fed1$'") < end);
	assert_non_null(strstr(sql, "into_schema CONSTANT text := 'v$fed$w';\n"));
	free(sql);
}

static void test_federation_refusals(void **state)
{
	static const char *const long_schema[] = {
		"ssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss"};
	static const char *const o_host[] = {"host=x"}, *const o_port[] = {"port=1"},
				 *const o_pw[] = {"password=x"}, *const o_nokey[] = {"nokey"},
				 *const o_bad[] = {"Bad-Key=1"};
	static const struct {
		struct federation_opts o;
		const char *want;
	} cases[] = {
		{{.user = "u"}, "give the application database of the clusters (--dbname)"},
		{{.dbname = "d"}, "give the user the federation logs in to the clusters as (--user)"},
		{{.dbname = "d", .user = "u", .options = o_host,
		  .noptions = 1},
		 "option \"host\": set by this command"},
		{{.dbname = "d", .user = "u", .options = o_port,
		  .noptions = 1},
		 "option \"port\": set by this command"},
		{{.dbname = "d", .user = "u", .options = o_pw,
		  .noptions = 1},
		 "option \"password\": postgres_fdw takes it in the user mapping"},
		{{.dbname = "d", .user = "u", .options = o_nokey,
		  .noptions = 1},
		 "option \"nokey\": give KEY=VALUE"},
		{{.dbname = "d", .user = "u", .options = o_bad,
		  .noptions = 1},
		 "a key is lower-case letters and '_'"},
		{{.dbname = "d", .user = "u", .schemas = long_schema, .nschemas = 1},
		 "is longer than 63 bytes (PostgreSQL would cut it)"},
		{{.dbname = "d", .user = "u", .into = "cluster_a"},
		 "the views' schema \"cluster_a\" is also cluster \"a\"'s schema"},
		{{.dbname = "d", .user = "u", .into = ""}, "schema of the views (--into): give a name"},
		{{.dbname = "d", .user = "u",
		  .prefix = "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp"},
		 "server and schema of a cluster (--prefix + cluster name) \"ppp"},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char err[256];
		char *sql = build(&cases[i].o, err, sizeof(err));

		if (sql != NULL)
			fail_msg("case %zu: accepted", i);
		if (strstr(err, cases[i].want) == NULL)
			fail_msg("case %zu: no \"%s\" in \"%s\"", i, cases[i].want, err);
	}
	{
		struct federation_opts o = {.dbname = "d", .user = "u"};
		char err[256];

		assert_null(federation_sql(two, 0, &o, err, sizeof(err)));
		assert_string_equal(err, "the configuration has no cluster");
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_federation_quoting),
		cmocka_unit_test(test_federation_layout),
		cmocka_unit_test(test_federation_options),
		cmocka_unit_test(test_federation_dollar_tag),
		cmocka_unit_test(test_federation_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
