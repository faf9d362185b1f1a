/*
 * test_query.c - unit tests for the tenant named by a SQL string
 * (src/query.c): SET, set_config(), sqlcommenter comments, tenant_column,
 * statements answered locally, multi-statement strings and the quoting
 * rules of PostgreSQL's scanner, plus query_mentions().
 *
 * Every input is copied into a heap block of exactly its length, without a
 * terminating NUL, so ASan reports any read past the end, and q is filled
 * with garbage first so every field the contract names must be written.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "query.h"

static const struct query_rule KEY_ONLY = {.key = "app.tenant_id", .column = NULL};
static const struct query_rule WITH_COL = {.key = "app.tenant_id", .column = "tenant_id"};

/* ---- helpers ----------------------------------------------------------- */

static void find_n(const char *sql, size_t n, const struct query_rule *rule, struct query_tenant *q)
{
	char *c = malloc(n ? n : 1);

	assert_non_null(c);
	if (n)
		memcpy(c, sql, n);
	memset(q, 0xA5, sizeof(*q));
	query_find_tenant(c, n, rule, q);
	free(c);
}

static void find(const char *sql, const struct query_rule *rule, struct query_tenant *q)
{
	find_n(sql, strlen(sql), rule, q);
}

static const char *kind_name(enum query_kind k)
{
	static const char *const names[] = {"OTHER",    "TENANT",  "PARAM",  "LOCAL",
	                                    "CONFLICT", "UNKNOWN", "INVALID"};

	return (unsigned)k < ARRAY_SIZE(names) ? names[k] : "?";
}

static void want_kind(const char *sql, const struct query_rule *rule, enum query_kind kind)
{
	struct query_tenant q;

	find(sql, rule, &q);
	if (q.kind != kind)
		fail_msg("%s: kind %s, want %s", sql, kind_name(q.kind), kind_name(kind));
	if (kind != QUERY_LOCAL)
		assert_int_equal(q.nlocal, 0);
	if (kind != QUERY_TENANT) {
		assert_int_equal(q.tenant_len, 0);
		assert_string_equal(q.tenant, "");
	}
	if (kind != QUERY_TENANT && kind != QUERY_PARAM)
		assert_int_equal(q.sources, 0);
}

static void want_tenant_n(const char *sql, const struct query_rule *rule, const char *tenant,
                          size_t tlen, unsigned sources)
{
	struct query_tenant q;

	find(sql, rule, &q);
	if (q.kind != QUERY_TENANT)
		fail_msg("%s: kind %s, want TENANT", sql, kind_name(q.kind));
	assert_int_equal(q.tenant_len, tlen);
	assert_memory_equal(q.tenant, tenant, tlen);
	assert_int_equal(q.tenant[tlen], '\0');
	assert_int_equal(q.sources, sources);
	assert_int_equal(q.nlocal, 0);
}

static void want_tenant(const char *sql, const struct query_rule *rule, const char *tenant,
                        unsigned sources)
{
	want_tenant_n(sql, rule, tenant, strlen(tenant), sources);
}

static void want_param(const char *sql, const struct query_rule *rule, int param, unsigned sources)
{
	struct query_tenant q;

	find(sql, rule, &q);
	if (q.kind != QUERY_PARAM)
		fail_msg("%s: kind %s, want PARAM", sql, kind_name(q.kind));
	assert_int_equal(q.param, param);
	assert_int_equal(q.sources, sources);
	assert_int_equal(q.tenant_len, 0);
}

/* A QUERY_LOCAL string with one statement. */
static void want_local1(const char *sql, const char *tag, char txn, bool is_key)
{
	struct query_tenant q;

	find(sql, &KEY_ONLY, &q);
	if (q.kind != QUERY_LOCAL)
		fail_msg("%s: kind %s, want LOCAL", sql, kind_name(q.kind));
	assert_int_equal(q.nlocal, 1);
	assert_string_equal(q.local[0].tag, tag);
	assert_int_equal(q.local[0].txn, txn);
	assert_int_equal(q.local[0].is_key, is_key);
}

/* ---- SET ---------------------------------------------------------------- */

static void test_query_set_string(void **state)
{
	(void)state;
	want_tenant("SET app.tenant_id = 'acme'", &KEY_ONLY, "acme", QSRC_SET);
	want_tenant("SET app.tenant_id TO 'acme'", &KEY_ONLY, "acme", QSRC_SET);
	want_tenant("  set app.tenant_id='acme' ;  ", &KEY_ONLY, "acme", QSRC_SET);
	want_tenant("SET SESSION app.tenant_id = 'acme'", &KEY_ONLY, "acme", QSRC_SET);
	want_tenant("SET LOCAL app.tenant_id TO 'acme'", &KEY_ONLY, "acme", QSRC_SET);
}

static void test_query_set_value_forms(void **state)
{
	(void)state;
	/* A bare word is an identifier: the parser lowercases it, unless quoted. */
	want_tenant("SET app.tenant_id = abc", &KEY_ONLY, "abc", QSRC_SET);
	want_tenant("SET app.tenant_id = ABC", &KEY_ONLY, "abc", QSRC_SET);
	want_tenant("SET app.tenant_id = \"ABC\"", &KEY_ONLY, "ABC", QSRC_SET);
	want_tenant("SET app.tenant_id TO 'Mixed Case'", &KEY_ONLY, "Mixed Case", QSRC_SET);
	/* Numbers as PostgreSQL stores them for a placeholder setting. */
	want_tenant("SET app.tenant_id = 42", &KEY_ONLY, "42", QSRC_SET);
	want_tenant("SET app.tenant_id = -5", &KEY_ONLY, "-5", QSRC_SET);
	want_tenant("SET app.tenant_id = 1.50", &KEY_ONLY, "1.50", QSRC_SET);
	want_tenant("SET app.tenant_id = 99999999999", &KEY_ONLY, "99999999999", QSRC_SET);
	want_tenant("SET app.tenant_id = 0", &KEY_ONLY, "0", QSRC_SET);
}

static void test_query_set_key_case_insensitive(void **state)
{
	(void)state;
	want_tenant("SET APP.TENANT_ID = 'x'", &KEY_ONLY, "x", QSRC_SET);
	want_tenant("SET \"app\".\"tenant_id\" = 'x'", &KEY_ONLY, "x", QSRC_SET);
	/* Quoting keeps the case, but GUC names still compare case-insensitively. */
	want_tenant("SET \"APP\".\"Tenant_Id\" = 'x'", &KEY_ONLY, "x", QSRC_SET);
	want_tenant("SET \"app.tenant_id\" = 'x'", &KEY_ONLY, "x", QSRC_SET);
}

static void test_query_set_other_setting_is_local(void **state)
{
	(void)state;
	want_local1("SET app.tenant_idx = 'x'", "SET", 0, false);
	want_local1("SET app.tenant = 'x'", "SET", 0, false);
	want_local1("SET search_path = a, b", "SET", 0, false);
	want_local1("SET work_mem TO '64MB'", "SET", 0, false);
	want_local1("SET TIME ZONE 'UTC'", "SET", 0, false);
	want_local1("SET TIME ZONE LOCAL", "SET", 0, false);
	want_local1("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
	            "SET", 0, false);
	want_local1("SET TRANSACTION READ ONLY", "SET", 0, false);
	want_local1("SET NAMES 'UTF8'", "SET", 0, false);
	want_local1("SET ROLE bob", "SET", 0, false);
	want_local1("SET SESSION AUTHORIZATION DEFAULT", "SET", 0, false);
	want_local1("RESET ROLE", "RESET", 0, false);
	want_local1("RESET work_mem", "RESET", 0, false);
}

static void test_query_set_default_and_reset(void **state)
{
	(void)state;
	want_local1("SET app.tenant_id TO DEFAULT", "SET", 0, true);
	want_local1("SET LOCAL app.tenant_id = DEFAULT", "SET", 0, true);
	want_local1("RESET app.tenant_id", "RESET", 0, true);
	want_local1("RESET APP.TENANT_ID", "RESET", 0, true);
	/* RESET ALL resets the key as well (documented in query.h). */
	want_local1("RESET ALL", "RESET", 0, true);
}

static void test_query_set_empty_is_no_tenant(void **state)
{
	(void)state;
	want_local1("SET app.tenant_id = ''", "SET", 0, true);
	want_local1("SET app.tenant_id TO ''", "SET", 0, true);
}

static void test_query_set_list_is_unknown(void **state)
{
	(void)state;
	want_kind("SET app.tenant_id = 'a', 'b'", &KEY_ONLY, QUERY_UNKNOWN);
	want_kind("SET app.tenant_id = a, b", &KEY_ONLY, QUERY_UNKNOWN);
}

static void test_query_set_from_current(void **state)
{
	(void)state;
	want_kind("SET app.tenant_id FROM CURRENT", &KEY_ONLY, QUERY_OTHER);
	want_local1("SET work_mem FROM CURRENT", "SET", 0, false);
}

/* ---- transactions --------------------------------------------------------- */

static void test_query_transaction_tags(void **state)
{
	struct query_tenant q;

	(void)state;
	want_local1("BEGIN", "BEGIN", 'T', false);
	want_local1("begin transaction isolation level repeatable read", "BEGIN", 'T', false);
	want_local1("BEGIN WORK", "BEGIN", 'T', false);
	want_local1("COMMIT", "COMMIT", 'I', false);
	want_local1("END", "COMMIT", 'I', false);
	want_local1("ROLLBACK", "ROLLBACK", 'I', false);
	want_local1("ABORT", "ROLLBACK", 'I', false);
	want_local1("START TRANSACTION", "START TRANSACTION", 'T', false);
	/* Empty and comment-only strings parse to no statement at all. */
	find("-- only a comment\n;", &KEY_ONLY, &q);
	assert_int_equal(q.kind, QUERY_OTHER);
	assert_int_equal(q.nstmts, 0);
	find("SELECT 1; SELECT 2", &KEY_ONLY, &q);
	assert_int_equal(q.nstmts, 2);
}

static void test_query_transaction_others(void **state)
{
	(void)state;
	want_kind("SAVEPOINT a", &KEY_ONLY, QUERY_OTHER);
	want_kind("RELEASE SAVEPOINT a", &KEY_ONLY, QUERY_OTHER);
	want_kind("ROLLBACK TO SAVEPOINT a", &KEY_ONLY, QUERY_OTHER);
	want_kind("PREPARE TRANSACTION 'g1'", &KEY_ONLY, QUERY_OTHER);
	want_kind("COMMIT PREPARED 'g1'", &KEY_ONLY, QUERY_OTHER);
	want_kind("ROLLBACK PREPARED 'g1'", &KEY_ONLY, QUERY_OTHER);
	/* AND CHAIN starts the next transaction at once: not a plain COMMIT. */
	want_kind("COMMIT AND CHAIN", &KEY_ONLY, QUERY_OTHER);
	want_kind("ROLLBACK AND CHAIN", &KEY_ONLY, QUERY_OTHER);
	want_kind("SHOW app.tenant_id", &KEY_ONLY, QUERY_OTHER);
	want_kind("DISCARD ALL", &KEY_ONLY, QUERY_OTHER);
}

static void test_query_local_sequence(void **state)
{
	struct query_tenant q;

	(void)state;
	find("BEGIN; SET LOCAL work_mem = '1MB'; RESET app.tenant_id; COMMIT", &KEY_ONLY, &q);
	assert_int_equal(q.kind, QUERY_LOCAL);
	assert_int_equal(q.nlocal, 4);
	assert_string_equal(q.local[0].tag, "BEGIN");
	assert_int_equal(q.local[0].txn, 'T');
	assert_string_equal(q.local[1].tag, "SET");
	assert_int_equal(q.local[1].txn, 0);
	assert_false(q.local[1].is_key);
	assert_string_equal(q.local[2].tag, "RESET");
	assert_true(q.local[2].is_key);
	assert_string_equal(q.local[3].tag, "COMMIT");
	assert_int_equal(q.local[3].txn, 'I');
	assert_int_equal(q.sources, 0);
}

static void test_query_local_limit(void **state)
{
	char sql[1024] = "";
	struct query_tenant q;

	(void)state;
	for (int i = 0; i < QUERY_MAX_LOCAL; i++)
		strcat(sql, "SET a.b = 1;");
	find(sql, &KEY_ONLY, &q);
	assert_int_equal(q.kind, QUERY_LOCAL);
	assert_int_equal(q.nlocal, QUERY_MAX_LOCAL);
	assert_string_equal(q.local[QUERY_MAX_LOCAL - 1].tag, "SET");
	strcat(sql, "RESET a.b");
	want_kind(sql, &KEY_ONLY, QUERY_OTHER);
}

static void test_query_local_mixed_with_other(void **state)
{
	(void)state;
	want_kind("BEGIN; SELECT 1", &KEY_ONLY, QUERY_OTHER);
	want_kind("SET work_mem = '1MB'; SHOW work_mem", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1; COMMIT", &KEY_ONLY, QUERY_OTHER);
}

/* ---- set_config() ------------------------------------------------------- */

static void test_query_set_config_select(void **state)
{
	(void)state;
	want_tenant("SELECT set_config('app.tenant_id', 'acme', false)", &KEY_ONLY, "acme",
	            QSRC_SET_CONFIG);
	want_tenant("select pg_catalog.set_config('app.tenant_id', 'acme', true)", &KEY_ONLY,
	            "acme", QSRC_SET_CONFIG);
	want_tenant("SELECT SET_CONFIG('APP.Tenant_ID', 'acme', false)", &KEY_ONLY, "acme",
	            QSRC_SET_CONFIG);
	want_tenant("SELECT set_config('app.tenant_id'::text, 'acme'::text, false)", &KEY_ONLY,
	            "acme", QSRC_SET_CONFIG);
	want_tenant("SELECT set_config('app.tenant_id', 42, false)", &KEY_ONLY, "42",
	            QSRC_SET_CONFIG);
}

static void test_query_set_config_anywhere(void **state)
{
	(void)state;
	want_tenant("SELECT * FROM set_config('app.tenant_id', 'a1', false)", &KEY_ONLY, "a1",
	            QSRC_SET_CONFIG);
	want_tenant("SELECT 1 FROM t WHERE set_config('app.tenant_id', 'a1', false) IS NOT NULL",
	            &KEY_ONLY, "a1", QSRC_SET_CONFIG);
	want_tenant("WITH s AS (SELECT set_config('app.tenant_id', 'a1', false)) SELECT * FROM s",
	            &KEY_ONLY, "a1", QSRC_SET_CONFIG);
	want_tenant("SELECT (SELECT set_config('app.tenant_id', 'a1', false))", &KEY_ONLY, "a1",
	            QSRC_SET_CONFIG);
	want_tenant("SELECT length(set_config('app.tenant_id', 'a1', false)) + 1", &KEY_ONLY, "a1",
	            QSRC_SET_CONFIG);
	want_tenant("INSERT INTO log VALUES (set_config('app.tenant_id', 'a1', false))", &KEY_ONLY,
	            "a1", QSRC_SET_CONFIG);
	want_tenant("UPDATE t SET x = set_config('app.tenant_id', 'a1', true) WHERE id = 1",
	            &KEY_ONLY, "a1", QSRC_SET_CONFIG);
	want_tenant("SELECT CASE WHEN true THEN set_config('app.tenant_id', 'a1', false) END",
	            &KEY_ONLY, "a1", QSRC_SET_CONFIG);
}

static void test_query_set_config_param(void **state)
{
	(void)state;
	want_param("SELECT set_config('app.tenant_id', $1, false)", &KEY_ONLY, 1, QSRC_SET_CONFIG);
	want_param("SELECT set_config('app.tenant_id', $2::text, $1)", &KEY_ONLY, 2,
	           QSRC_SET_CONFIG);
}

static void test_query_set_config_expression_unknown(void **state)
{
	(void)state;
	want_kind("SELECT set_config('app.tenant_id', lower('X'), false)", &KEY_ONLY,
	          QUERY_UNKNOWN);
	want_kind("SELECT set_config('app.tenant_id', name, false) FROM tenants", &KEY_ONLY,
	          QUERY_UNKNOWN);
	want_kind("SELECT set_config('app.tenant_id', 'a' || 'b', false)", &KEY_ONLY,
	          QUERY_UNKNOWN);
	want_kind("SELECT set_config('app.tenant_id', (SELECT 'x'), false)", &KEY_ONLY,
	          QUERY_UNKNOWN);
}

static void test_query_set_config_not_the_key(void **state)
{
	(void)state;
	want_kind("SELECT set_config('work_mem', '1MB', false)", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT set_config('app.tenant_id', 'x')", &KEY_ONLY, QUERY_OTHER);
	/* set_config's arguments have no names: PostgreSQL finds no such function. */
	want_kind("SELECT set_config(new_value => 'x', setting_name => 'app.tenant_id', "
	          "is_local => false)",
	          &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT myschema.set_config('app.tenant_id', 'x', false)", &KEY_ONLY,
	          QUERY_OTHER);
	want_kind("SELECT set_config('app.tenant_id', '', false)", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT set_config('app.tenant_id', NULL, false)", &KEY_ONLY, QUERY_OTHER);
	/* A name from a parameter: not a tenant now, but Bind may make it the key. */
	want_kind("SELECT set_config($1, 'x', false)", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT current_setting('app.tenant_id')", &KEY_ONLY, QUERY_OTHER);
}

/* A name the router cannot read may be the key: UNKNOWN; one from a parameter is kept. */
static void test_query_set_config_name_not_constant(void **state)
{
	struct query_tenant q;

	(void)state;
	want_kind("SELECT set_config(k, '42', false) FROM (SELECT 'app.tenant_id' k) s",
	          &KEY_ONLY, QUERY_UNKNOWN);
	want_kind("SELECT set_config('app.tenant_' || 'id', '42', false)", &KEY_ONLY,
	          QUERY_UNKNOWN);
	want_kind("SELECT set_config(E'app.tenant\\x5fid', '42', false)", &KEY_ONLY,
	          QUERY_TENANT);
	want_kind("SELECT set_config($1, $2, false), set_config($3, 'y', false)", &KEY_ONLY,
	          QUERY_UNKNOWN);
	want_kind("DO $$BEGIN PERFORM set_config('app.tenant_' || 'id', '4', false); END$$",
	          &KEY_ONLY, QUERY_UNKNOWN);
	find("SELECT set_config($1, 'x', false)", &KEY_ONLY, &q);
	assert_int_equal(q.key_param, 1);
	assert_int_equal(q.key_value_param, 0);
	assert_string_equal(q.key_value, "x");
	find("SELECT set_config($2, $1, false)", &KEY_ONLY, &q);
	assert_int_equal(q.key_param, 2);
	assert_int_equal(q.key_value_param, 1);
	find("SELECT set_config('work_mem', $1, false)", &KEY_ONLY, &q);
	assert_int_equal(q.key_param, 0);
}

/* ---- tenant_column ------------------------------------------------------- */

static void test_query_column_where(void **state)
{
	(void)state;
	want_tenant("SELECT * FROM t WHERE tenant_id = 'acme'", &WITH_COL, "acme", QSRC_COLUMN);
	want_tenant("SELECT * FROM t WHERE 'acme' = tenant_id", &WITH_COL, "acme", QSRC_COLUMN);
	want_tenant("SELECT * FROM t WHERE t.tenant_id = 'acme'", &WITH_COL, "acme", QSRC_COLUMN);
	want_tenant("SELECT * FROM s.t WHERE s.t.TENANT_ID = 42", &WITH_COL, "42", QSRC_COLUMN);
	want_tenant("UPDATE t SET a = 1 WHERE tenant_id = 'acme'", &WITH_COL, "acme", QSRC_COLUMN);
	want_tenant("DELETE FROM t WHERE tenant_id = 'acme'", &WITH_COL, "acme", QSRC_COLUMN);
	want_tenant("SELECT * FROM t WHERE tenant_id OPERATOR(pg_catalog.=) 'acme'", &WITH_COL,
	            "acme", QSRC_COLUMN);
}

static void test_query_column_and_chain(void **state)
{
	(void)state;
	want_tenant("SELECT * FROM t WHERE t.tenant_id = 'x' AND other = 2", &WITH_COL, "x",
	            QSRC_COLUMN);
	want_tenant("SELECT * FROM t WHERE a = 1 AND tenant_id = 'x' AND b > 2", &WITH_COL, "x",
	            QSRC_COLUMN);
	want_tenant("SELECT * FROM t WHERE (a = 1 OR b = 2) AND (c = 3 AND tenant_id = 'x')",
	            &WITH_COL, "x", QSRC_COLUMN);
	want_kind("SELECT * FROM t WHERE tenant_id = 'x' AND tenant_id = 'y'", &WITH_COL,
	          QUERY_CONFLICT);
}

static void test_query_column_or_not_ignored(void **state)
{
	(void)state;
	want_kind("SELECT * FROM t WHERE tenant_id = 'x' OR a = 1", &WITH_COL, QUERY_OTHER);
	want_kind("SELECT * FROM t WHERE NOT (tenant_id = 'x')", &WITH_COL, QUERY_OTHER);
	want_kind("SELECT * FROM t WHERE tenant_id <> 'x'", &WITH_COL, QUERY_OTHER);
	want_kind("SELECT * FROM t WHERE tenant_id IN ('x')", &WITH_COL, QUERY_OTHER);
	want_kind("SELECT * FROM t WHERE tenant_id = other_col", &WITH_COL, QUERY_OTHER);
	want_kind("SELECT * FROM t WHERE tenant_id = lower('X')", &WITH_COL, QUERY_OTHER);
	want_kind("SELECT * FROM t WHERE tenant_id = NULL", &WITH_COL, QUERY_OTHER);
	want_kind("SELECT tenant_id = 'x' FROM t", &WITH_COL, QUERY_OTHER);
}

static void test_query_column_param_and_cast(void **state)
{
	(void)state;
	want_param("SELECT * FROM t WHERE tenant_id = $1", &WITH_COL, 1, QSRC_COLUMN);
	want_param("SELECT * FROM t WHERE id = $1 AND tenant_id = $2::int", &WITH_COL, 2,
	           QSRC_COLUMN);
	want_param("DELETE FROM t WHERE CAST($3 AS text) = tenant_id", &WITH_COL, 3, QSRC_COLUMN);
	want_tenant("SELECT * FROM t WHERE tenant_id = '42'::text", &WITH_COL, "42", QSRC_COLUMN);
	want_tenant("SELECT * FROM t WHERE tenant_id::text = 'x'", &WITH_COL, "x", QSRC_COLUMN);
}

static void test_query_column_insert(void **state)
{
	(void)state;
	want_tenant("INSERT INTO t (id, tenant_id) VALUES (1, 'x')", &WITH_COL, "x", QSRC_COLUMN);
	want_tenant("INSERT INTO t (id, TENANT_ID, v) VALUES (1, 'x', 'a'), (2, 'x', 'b')",
	            &WITH_COL, "x", QSRC_COLUMN);
	want_kind("INSERT INTO t (id, tenant_id) VALUES (1, 'x'), (2, 'y')", &WITH_COL,
	          QUERY_CONFLICT);
	want_param("INSERT INTO t (tenant_id, v) VALUES ($1, $2), ($1, $3)", &WITH_COL, 1,
	           QSRC_COLUMN);
	/* Two parameters may hold two tenants: one q->param cannot say which. */
	want_kind("INSERT INTO t (tenant_id, v) VALUES ($1, $2), ($3, $4)", &WITH_COL,
	          QUERY_CONFLICT);
	want_kind("INSERT INTO t (tenant_id) VALUES (DEFAULT)", &WITH_COL, QUERY_OTHER);
	want_kind("INSERT INTO t (tenant_id) VALUES (current_setting('app.tenant_id'))", &WITH_COL,
	          QUERY_OTHER);
	want_kind("INSERT INTO t VALUES (1, 'x')", &WITH_COL, QUERY_OTHER);
	want_kind("INSERT INTO t (tenant_id) SELECT 'x'", &WITH_COL, QUERY_OTHER);
	want_kind("INSERT INTO t (id) VALUES (1)", &WITH_COL, QUERY_OTHER);
}

static void test_query_column_top_level_only(void **state)
{
	(void)state;
	want_kind("SELECT * FROM (SELECT * FROM t WHERE tenant_id = 'x') s", &WITH_COL,
	          QUERY_OTHER);
	want_kind("WITH s AS (SELECT * FROM t WHERE tenant_id = 'x') SELECT * FROM s", &WITH_COL,
	          QUERY_OTHER);
	want_kind("SELECT 1 WHERE tenant_id = 'x' UNION SELECT 2", &WITH_COL, QUERY_OTHER);
	want_kind("EXPLAIN SELECT * FROM t WHERE tenant_id = 'x'", &WITH_COL, QUERY_OTHER);
	/* Without tenant_column the WHERE clause is not looked at. */
	want_kind("SELECT * FROM t WHERE tenant_id = 'x'", &KEY_ONLY, QUERY_OTHER);
}

/* ---- comments (sqlcommenter) -------------------------------------------- */

static void test_query_comment_sqlcommenter(void **state)
{
	(void)state;
	want_tenant("SELECT 1 /*app.tenant_id='acme'*/", &KEY_ONLY, "acme", QSRC_COMMENT);
	want_tenant("/*action='list',app.tenant_id='acme',framework='django%3A4.2'*/ SELECT 1",
	            &KEY_ONLY, "acme", QSRC_COMMENT);
	want_tenant("SELECT 1 /* app.tenant_id='acme', route='%2Fx' */", &KEY_ONLY, "acme",
	            QSRC_COMMENT);
	want_tenant("SELECT 1 /*APP.Tenant_Id='acme'*/", &KEY_ONLY, "acme", QSRC_COMMENT);
	want_tenant("SELECT 1 /*\n\tapp.tenant_id='acme'\n*/", &KEY_ONLY, "acme", QSRC_COMMENT);
	want_kind("SELECT 1 /*action='list',route='x'*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /*app.tenant_id=''*/", &KEY_ONLY, QUERY_OTHER);
	/* A comment alone is an empty query, but still names the tenant. */
	want_tenant("/*app.tenant_id='acme'*/", &KEY_ONLY, "acme", QSRC_COMMENT);
}

static void test_query_comment_url_encoding(void **state)
{
	(void)state;
	want_tenant("SELECT 1 /*app.tenant_id='a%20b'*/", &KEY_ONLY, "a b", QSRC_COMMENT);
	/* Keys are decoded too (comments are only read if the key's bytes occur). */
	want_tenant("SELECT 1 /*app.tenant_id='x',app%2Etenant%5Fid='x'*/", &KEY_ONLY, "x",
	            QSRC_COMMENT);
	want_kind("SELECT 1 /*app.tenant_id='x',app%2Etenant%5Fid='y'*/", &KEY_ONLY,
	          QUERY_CONFLICT);
	want_tenant("SELECT 1 /*app.tenant_id='it\\'s'*/", &KEY_ONLY, "it's", QSRC_COMMENT);
	want_tenant("SELECT 1 /*app.tenant_id='it%27s'*/", &KEY_ONLY, "it's", QSRC_COMMENT);
	want_tenant("SELECT 1 /*app.tenant_id='caf%C3%A9'*/", &KEY_ONLY, "caf\xc3\xa9",
	            QSRC_COMMENT);
	want_tenant("SELECT 1 /*app.tenant_id='100%25'*/", &KEY_ONLY, "100%", QSRC_COMMENT);
}

static void test_query_comment_malformed_ignored(void **state)
{
	(void)state;
	want_kind("SELECT 1 /*app.tenant_id=acme*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /*app.tenant_id='acme*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /*app.tenant_id='a%zz'*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /*app.tenant_id='a%2'*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /*app.tenant_id='acme',*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /*app.tenant_id='acme' x='y'*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /*x='%G0',app.tenant_id='acme'*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /* app.tenant_id = 'acme' */", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /*app.tenant_id='%00'*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /*app.tenant_id='%FF'*/", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /**/", &KEY_ONLY, QUERY_OTHER);
}

static void test_query_comments_are_not_statements(void **state)
{
	(void)state;
	want_kind("-- SET app.tenant_id = 'x'\nSELECT 1", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 -- ; SET app.tenant_id = 'x'", &KEY_ONLY, QUERY_OTHER);
	want_kind("/* SET app.tenant_id = 'x' */ SELECT 1", &KEY_ONLY, QUERY_OTHER);
	want_kind("/* outer /* SET app.tenant_id = 'x'; */ still a comment */ SELECT 1", &KEY_ONLY,
	          QUERY_OTHER);
	want_kind("/* a /* b */ SET app.tenant_id = 'x'; */ SELECT 1", &KEY_ONLY, QUERY_OTHER);
	/* sqlcommenter text in a line comment or a string is not a comment. */
	want_kind("-- /*app.tenant_id='x'*/\nSELECT 1", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT '/*app.tenant_id=''x''*/'", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT 1 /* select set_config('app.tenant_id', 'x', false) */", &KEY_ONLY,
	          QUERY_OTHER);
	want_local1("-- comment\nSET work_mem = '1MB' -- SET app.tenant_id = 'x'", "SET", 0, false);
}

static void test_query_comment_nested_sqlcommenter(void **state)
{
	(void)state;
	/* The outer comment's body has an inner comment: not sqlcommenter form. */
	want_kind("SELECT 1 /* /*app.tenant_id='x'*/ */", &KEY_ONLY, QUERY_OTHER);
}

/* ---- quoting ------------------------------------------------------------ */

static void test_query_dollar_quotes(void **state)
{
	(void)state;
	want_kind("SELECT $$SET app.tenant_id = 'x'$$", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT $tag$ SET app.tenant_id = 'x'; $$ $tag$", &KEY_ONLY, QUERY_OTHER);
	want_kind("SELECT $$ select set_config('app.tenant_id', 'x', false) $$", &KEY_ONLY,
	          QUERY_OTHER);
	want_kind("SELECT $$/*app.tenant_id='x'*/$$", &KEY_ONLY, QUERY_OTHER);
	want_tenant("SET app.tenant_id = $$acme$$", &KEY_ONLY, "acme", QSRC_SET);
	want_tenant("SET app.tenant_id = $t$it's$t$", &KEY_ONLY, "it's", QSRC_SET);
}

static void test_query_do_block(void **state)
{
	(void)state;
	/* Code we do not parse that names the key: only the server knows. */
	want_kind("DO $$BEGIN PERFORM set_config('app.tenant_id', 'x', false); END$$", &KEY_ONLY,
	          QUERY_UNKNOWN);
	want_kind("DO $$BEGIN NULL; END$$", &KEY_ONLY, QUERY_OTHER);
}

static void test_query_string_escapes(void **state)
{
	(void)state;
	want_tenant("SET app.tenant_id = E'it\\'s'", &KEY_ONLY, "it's", QSRC_SET);
	want_tenant("SET app.tenant_id = 'it''s'", &KEY_ONLY, "it's", QSRC_SET);
	/* standard_conforming_strings: a backslash in '...' is an ordinary byte. */
	want_tenant("SET app.tenant_id = 'a\\b'", &KEY_ONLY, "a\\b", QSRC_SET);
	want_tenant("SET app.tenant_id = E'a\\\\b'", &KEY_ONLY, "a\\b", QSRC_SET);
	want_tenant("SET app.tenant_id = U&'d\\0061t'", &KEY_ONLY, "dat", QSRC_SET);
	want_tenant("SET app.tenant_id = E'caf\\u00e9'", &KEY_ONLY, "caf\xc3\xa9", QSRC_SET);
	want_tenant("SELECT set_config('app.tenant_id', E'x\\ty', false)", &KEY_ONLY, "x\ty",
	            QSRC_SET_CONFIG);
	/* Adjacent literals join only across a newline. */
	want_tenant("SET app.tenant_id = 'a'\n'b'", &KEY_ONLY, "ab", QSRC_SET);
	want_kind("SET app.tenant_id = 'a' 'b'", &KEY_ONLY, QUERY_INVALID);
	want_kind("SET app.tenant_id = 'it\\'s'", &KEY_ONLY, QUERY_INVALID);
	want_kind("SET app.tenant_id = E'\\xff'", &KEY_ONLY, QUERY_INVALID);
}

/* ---- the whole string ----------------------------------------------------- */

static void test_query_multi_statement(void **state)
{
	(void)state;
	want_tenant("SET a.b = 1; SET app.tenant_id = 't1'; SELECT 1", &KEY_ONLY, "t1", QSRC_SET);
	want_tenant("BEGIN; SET LOCAL app.tenant_id = 't1'; SELECT 1; COMMIT", &KEY_ONLY, "t1",
	            QSRC_SET);
	want_tenant("SELECT 1; SELECT set_config('app.tenant_id', 't1', false)", &KEY_ONLY, "t1",
	            QSRC_SET_CONFIG);
	/* The tenant wins over RESET in the same string: it still names one. */
	want_tenant("SET app.tenant_id = 't1'; RESET app.tenant_id", &KEY_ONLY, "t1", QSRC_SET);
}

static void test_query_agreement_and_conflict(void **state)
{
	(void)state;
	want_kind("SET app.tenant_id='a'; SET app.tenant_id='b'", &KEY_ONLY, QUERY_CONFLICT);
	want_kind("SET app.tenant_id='a'; SELECT set_config('app.tenant_id', 'A', false)",
	          &KEY_ONLY, QUERY_CONFLICT);
	want_kind("SET app.tenant_id='a' /*app.tenant_id='b'*/", &KEY_ONLY, QUERY_CONFLICT);
	want_kind("SELECT * FROM t WHERE tenant_id = 'b'; SET app.tenant_id = 'a'", &WITH_COL,
	          QUERY_CONFLICT);
	want_tenant("SET app.tenant_id='a'; SELECT set_config('app.tenant_id', 'a', false)",
	            &KEY_ONLY, "a", QSRC_SET | QSRC_SET_CONFIG);
	want_tenant("/*app.tenant_id='a'*/ SELECT * FROM t WHERE tenant_id = 'a'", &WITH_COL, "a",
	            QSRC_COMMENT | QSRC_COLUMN);
	/* '' names no tenant, so it cannot conflict. */
	want_tenant("SET app.tenant_id = ''; SET app.tenant_id = 'a'", &KEY_ONLY, "a", QSRC_SET);
}

static void test_query_literal_with_param(void **state)
{
	struct query_tenant q;

	(void)state;
	find("SET app.tenant_id = 'x'; UPDATE t SET a = 1 WHERE tenant_id = $1", &WITH_COL, &q);
	assert_int_equal(q.kind, QUERY_TENANT);
	assert_string_equal(q.tenant, "x");
	assert_int_equal(q.param, 1);
	assert_int_equal(q.sources, QSRC_SET | QSRC_COLUMN);
	find("SET app.tenant_id = 'x'", &KEY_ONLY, &q);
	assert_int_equal(q.param, 0);
	want_kind("SELECT set_config('app.tenant_id', $1, false) WHERE $2 = tenant_id", &WITH_COL,
	          QUERY_CONFLICT);
	want_param("SELECT set_config('app.tenant_id', $1, false) FROM t WHERE tenant_id = $1",
	           &WITH_COL, 1, QSRC_SET_CONFIG | QSRC_COLUMN);
}

static void test_query_precedence(void **state)
{
	(void)state;
	/* UNKNOWN beats a tenant; CONFLICT beats UNKNOWN. */
	want_kind("SET app.tenant_id='a'; SELECT set_config('app.tenant_id', now()::text, false)",
	          &KEY_ONLY, QUERY_UNKNOWN);
	want_kind("SET app.tenant_id='a'; SET app.tenant_id='b'; SET app.tenant_id = 'c', 'd'",
	          &KEY_ONLY, QUERY_CONFLICT);
	want_kind("BEGIN; SET app.tenant_id = 'a', 'b'", &KEY_ONLY, QUERY_UNKNOWN);
}

static void test_query_invalid(void **state)
{
	(void)state;
	want_kind("SELEC 1", &KEY_ONLY, QUERY_INVALID);
	want_kind("SELECT 'unterminated", &KEY_ONLY, QUERY_INVALID);
	want_kind("SET app.tenant_id = 'x'; garbage here", &KEY_ONLY, QUERY_INVALID);
	want_kind("/* unterminated comment app.tenant_id", &KEY_ONLY, QUERY_INVALID);
	/* libpg_query accepts a parameter in SET; PostgreSQL does not. */
	want_kind("SET app.tenant_id = $1", &KEY_ONLY, QUERY_INVALID);
	want_kind("SET TIME ZONE $1", &KEY_ONLY, QUERY_INVALID);
	want_kind("SELECT 1; SET work_mem TO $1, $2", &KEY_ONLY, QUERY_INVALID);
	want_kind("\xff\xfe", &KEY_ONLY, QUERY_INVALID);
	want_kind("SELECT $$", &KEY_ONLY, QUERY_INVALID);
}

static void test_query_empty(void **state)
{
	(void)state;
	want_kind("", &KEY_ONLY, QUERY_OTHER);
	want_kind("   \n\t ", &KEY_ONLY, QUERY_OTHER);
	want_kind("-- only a comment", &KEY_ONLY, QUERY_OTHER);
	want_kind("/* only a comment */", &KEY_ONLY, QUERY_OTHER);
	want_kind(";", &KEY_ONLY, QUERY_OTHER);
	want_kind(" ; ; ", &KEY_ONLY, QUERY_OTHER);
}

static void test_query_embedded_nul(void **state)
{
	static const char a[] = "SET app.tenant_id = 'a'\0; SET app.tenant_id = 'b'";
	static const char b[] = "SELECT 1\0 this is not SQL";
	static const char c[] = "\0SET app.tenant_id = 'a'";
	struct query_tenant q;

	(void)state;
	find_n(a, sizeof(a) - 1, &KEY_ONLY, &q);
	assert_int_equal(q.kind, QUERY_TENANT);
	assert_string_equal(q.tenant, "a");
	find_n(b, sizeof(b) - 1, &KEY_ONLY, &q);
	assert_int_equal(q.kind, QUERY_OTHER);
	find_n(c, sizeof(c) - 1, &KEY_ONLY, &q);
	assert_int_equal(q.kind, QUERY_OTHER);
}

static void test_query_length_is_respected(void **state)
{
	static const char sql[] = "SET app.tenant_id = 'abc'; SET app.tenant_id = 'zzz'";
	struct query_tenant q;

	(void)state;
	find_n(sql, strlen("SET app.tenant_id = 'abc';"), &KEY_ONLY, &q);
	assert_int_equal(q.kind, QUERY_TENANT);
	assert_string_equal(q.tenant, "abc");
	find_n(sql, strlen("SET app.tenant_id = 'ab"), &KEY_ONLY, &q);
	assert_int_equal(q.kind, QUERY_INVALID);
}

static void test_query_tenant_length_limit(void **state)
{
	char name[STARTUP_MAX_TENANT_LEN + 2];
	char sql[1024];

	(void)state;
	memset(name, 'x', sizeof(name));
	name[STARTUP_MAX_TENANT_LEN] = '\0';
	snprintf(sql, sizeof(sql), "SET app.tenant_id = '%s'", name);
	want_tenant(sql, &KEY_ONLY, name, QSRC_SET);
	snprintf(sql, sizeof(sql), "SELECT 1 /*app.tenant_id='%s'*/", name);
	want_tenant(sql, &KEY_ONLY, name, QSRC_COMMENT);

	name[STARTUP_MAX_TENANT_LEN] = 'x';
	name[STARTUP_MAX_TENANT_LEN + 1] = '\0';
	snprintf(sql, sizeof(sql), "SET app.tenant_id = '%s'", name);
	want_kind(sql, &KEY_ONLY, QUERY_UNKNOWN);
	snprintf(sql, sizeof(sql), "SELECT set_config('app.tenant_id', '%s', false)", name);
	want_kind(sql, &KEY_ONLY, QUERY_UNKNOWN);
	snprintf(sql, sizeof(sql), "SELECT * FROM t WHERE tenant_id = '%s'", name);
	want_kind(sql, &WITH_COL, QUERY_UNKNOWN);
	snprintf(sql, sizeof(sql), "SELECT 1 /*app.tenant_id='%s'*/", name);
	want_kind(sql, &KEY_ONLY, QUERY_UNKNOWN);
}

static void test_query_large_statement(void **state)
{
	size_t cap = 64 * 1024, n;
	char *sql = malloc(cap);

	(void)state;
	assert_non_null(sql);
	/* Over 1 KB the nesting estimate runs first; wide statements still pass. */
	n = (size_t)snprintf(sql, cap, "INSERT INTO t (id, tenant_id, v) VALUES (0, 'acme', 'v')");
	for (int i = 1; i < 1000; i++)
		n += (size_t)snprintf(sql + n, cap - n, ", (%d, 'acme', 'v%d')", i, i);
	assert_true(n < cap);
	want_tenant(sql, &WITH_COL, "acme", QSRC_COLUMN);

	n = (size_t)snprintf(sql, cap, "SELECT * FROM t WHERE tenant_id = 'acme'");
	for (int i = 0; i < 1000; i++)
		n += (size_t)snprintf(sql + n, cap - n, " AND c%d = %d", i, i);
	want_tenant(sql, &WITH_COL, "acme", QSRC_COLUMN);

	n = (size_t)snprintf(sql, cap, "SELECT CASE x");
	for (int i = 0; i < 1500; i++)
		n += (size_t)snprintf(sql + n, cap - n, " WHEN %d THEN 'v'", i);
	snprintf(sql + n, cap - n, " END /*app.tenant_id='acme'*/");
	want_tenant(sql, &KEY_ONLY, "acme", QSRC_COMMENT);

	/* Set operations nest one level each: 500 are fine. */
	n = (size_t)snprintf(sql, cap, "SELECT set_config('app.tenant_id', 'acme', false)");
	for (int i = 0; i < 500; i++)
		n += (size_t)snprintf(sql + n, cap - n, " UNION ALL SELECT 'v%d'", i);
	want_tenant(sql, &KEY_ONLY, "acme", QSRC_SET_CONFIG);
	free(sql);
}

/* libpg_query recurses without a limit: deep input must not reach it. */
static void test_query_deep_nesting(void **state)
{
	size_t cap = 400 * 1024, n = 0;
	char *sql = malloc(cap);

	(void)state;
	assert_non_null(sql);
	n = (size_t)snprintf(sql, cap, "SET app.tenant_id = 'a'; SELECT 1");
	while (n + 2 < cap)
		n += (size_t)snprintf(sql + n, cap - n, "+1");
	want_kind(sql, &KEY_ONLY, QUERY_UNKNOWN);

	n = (size_t)snprintf(sql, cap, "SELECT ");
	for (int i = 0; i < 20000; i++)
		n += (size_t)snprintf(sql + n, cap - n, "NOT ");
	snprintf(sql + n, cap - n, "x");
	want_kind(sql, &KEY_ONLY, QUERY_UNKNOWN);

	n = (size_t)snprintf(sql, cap, "SELECT ");
	for (int i = 0; i < 5000; i++)
		n += (size_t)snprintf(sql + n, cap - n, "f(");
	for (int i = 0; i < 5000; i++)
		n += (size_t)snprintf(sql + n, cap - n, ")");
	want_kind(sql, &KEY_ONLY, QUERY_UNKNOWN);

	/* Up to 1 KB even the deepest input is parsed; above, the estimate decides. */
	n = (size_t)snprintf(sql, cap, "SET app.tenant_id = 'a'; SELECT 1");
	while (n < 1000)
		n += (size_t)snprintf(sql + n, cap - n, "+1");
	want_tenant(sql, &KEY_ONLY, "a", QSRC_SET);
	free(sql);
}

/* ---- query_mentions() ------------------------------------------------------ */

static bool mentions(const char *hay, const char *needle)
{
	size_t n = strlen(hay);
	char *c = malloc(n ? n : 1);
	bool r;

	assert_non_null(c);
	if (n)
		memcpy(c, hay, n);
	r = query_mentions(c, n, needle, strlen(needle));
	free(c);
	return r;
}

static void test_query_mentions_cases(void **state)
{
	(void)state;
	assert_false(mentions("", "app.tenant_id"));
	assert_false(mentions("app.tenant_i", "app.tenant_id"));
	assert_true(mentions("app.tenant_id", "app.tenant_id"));
	assert_true(mentions("SET app.tenant_id", "app.tenant_id"));
	assert_true(mentions("SET APP.TENANT_ID = 1", "app.tenant_id"));
	assert_true(mentions("set App.Tenant_Id", "APP.TENANT_ID"));
	assert_true(mentions("aapp.tenant_id", "app.tenant_id"));
	assert_true(mentions("apapp.tenant_idx", "app.tenant_id"));
	assert_false(mentions("app_tenant_id", "app.tenant_id"));
	assert_false(mentions("app.tenant_iD2x", "app.tenant_ix"));
	assert_true(mentions("x", "X"));
	assert_false(mentions("x", "y"));
	assert_true(mentions("select 1 -- .tenant", ".TENANT"));
	/* Only ASCII letters fold: no locale. */
	assert_false(mentions("CAF\xc3\x89", "caf\xc3\xa9"));
	assert_true(mentions("CAF\xc3\xa9", "caf\xc3\xa9"));
	/* Folding is not a general bit trick: '@' is not '`', '[' is not '{'. */
	assert_false(mentions("@", "`"));
	assert_false(mentions("[", "{"));
	assert_true(query_mentions("abc", 3, "", 0));
	assert_true(query_mentions("a\0b", 3, "\0B", 2));
}

static void test_query_mentions_bounds(void **state)
{
	static const char text[] = "select app.tenant_id";
	size_t n = strlen(text);

	(void)state;
	/* The last byte is outside the given length. */
	assert_false(query_mentions(text, n - 1, "app.tenant_id", 13));
	assert_true(query_mentions(text, n, "app.tenant_id", 13));
	assert_false(query_mentions(text, 0, "s", 1));
	assert_false(query_mentions(NULL, 0, "s", 1));
}

static bool naive_mentions(const char *h, size_t n, const char *k, size_t kn)
{
	for (size_t i = 0; i + kn <= n; i++) {
		size_t j = 0;

		while (j < kn) {
			char a = h[i + j], b = k[j];

			if (a >= 'A' && a <= 'Z')
				a = (char)(a + 32);
			if (b >= 'A' && b <= 'Z')
				b = (char)(b + 32);
			if (a != b)
				break;
			j++;
		}
		if (j == kn)
			return true;
	}
	return false;
}

static void test_query_mentions_matches_naive(void **state)
{
	static const char alphabet[] = "aAbB.T_";
	uint32_t seed = 12345;
	char hay[64], needle[8];

	(void)state;
	/* A small alphabet makes many near-misses; a fixed seed keeps it repeatable. */
	for (int round = 0; round < 20000; round++) {
		size_t n, k;

		seed = seed * 1103515245u + 12345u;
		n = (seed >> 16) % sizeof(hay);
		seed = seed * 1103515245u + 12345u;
		k = 1 + (seed >> 16) % sizeof(needle);
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			hay[i] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
		}
		for (size_t i = 0; i < k; i++) {
			seed = seed * 1103515245u + 12345u;
			needle[i] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
		}
		if (query_mentions(hay, n, needle, k) != naive_mentions(hay, n, needle, k))
			fail_msg("round %d: hay %.*s needle %.*s", round, (int)n, hay, (int)k,
			         needle);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_query_set_string),
	        cmocka_unit_test(test_query_set_value_forms),
	        cmocka_unit_test(test_query_set_key_case_insensitive),
	        cmocka_unit_test(test_query_set_other_setting_is_local),
	        cmocka_unit_test(test_query_set_default_and_reset),
	        cmocka_unit_test(test_query_set_empty_is_no_tenant),
	        cmocka_unit_test(test_query_set_list_is_unknown),
	        cmocka_unit_test(test_query_set_from_current),
	        cmocka_unit_test(test_query_transaction_tags),
	        cmocka_unit_test(test_query_transaction_others),
	        cmocka_unit_test(test_query_local_sequence),
	        cmocka_unit_test(test_query_local_limit),
	        cmocka_unit_test(test_query_local_mixed_with_other),
	        cmocka_unit_test(test_query_set_config_select),
	        cmocka_unit_test(test_query_set_config_anywhere),
	        cmocka_unit_test(test_query_set_config_param),
	        cmocka_unit_test(test_query_set_config_expression_unknown),
	        cmocka_unit_test(test_query_set_config_not_the_key),
	        cmocka_unit_test(test_query_set_config_name_not_constant),
	        cmocka_unit_test(test_query_column_where),
	        cmocka_unit_test(test_query_column_and_chain),
	        cmocka_unit_test(test_query_column_or_not_ignored),
	        cmocka_unit_test(test_query_column_param_and_cast),
	        cmocka_unit_test(test_query_column_insert),
	        cmocka_unit_test(test_query_column_top_level_only),
	        cmocka_unit_test(test_query_comment_sqlcommenter),
	        cmocka_unit_test(test_query_comment_url_encoding),
	        cmocka_unit_test(test_query_comment_malformed_ignored),
	        cmocka_unit_test(test_query_comments_are_not_statements),
	        cmocka_unit_test(test_query_comment_nested_sqlcommenter),
	        cmocka_unit_test(test_query_dollar_quotes),
	        cmocka_unit_test(test_query_do_block),
	        cmocka_unit_test(test_query_string_escapes),
	        cmocka_unit_test(test_query_multi_statement),
	        cmocka_unit_test(test_query_agreement_and_conflict),
	        cmocka_unit_test(test_query_literal_with_param),
	        cmocka_unit_test(test_query_precedence),
	        cmocka_unit_test(test_query_invalid),
	        cmocka_unit_test(test_query_empty),
	        cmocka_unit_test(test_query_embedded_nul),
	        cmocka_unit_test(test_query_length_is_respected),
	        cmocka_unit_test(test_query_tenant_length_limit),
	        cmocka_unit_test(test_query_large_statement),
	        cmocka_unit_test(test_query_deep_nesting),
	        cmocka_unit_test(test_query_mentions_cases),
	        cmocka_unit_test(test_query_mentions_bounds),
	        cmocka_unit_test(test_query_mentions_matches_naive),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
