/*
 * test_admin.c - unit tests for the admin console's parser and reply
 * builder (src/admin.c) and the roster of sessions and held tenants
 * (src/roster.c).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "admin.h"
#include "proto.h"
#include "roster.h"

static bool parse(const char *s, struct admin_stmt *st, struct admin_error *e)
{
	return admin_parse(s, strlen(s), st, e);
}

static void test_admin_commands_parse(void **state)
{
	static const struct {
		const char *sql;
		enum admin_cmd cmd;
	} ok[] = {
	        {"SHOW CLUSTERS", ADMIN_SHOW_CLUSTERS},
	        {"show clusters;", ADMIN_SHOW_CLUSTERS},
	        {"  Show\tHosts ;  ", ADMIN_SHOW_HOSTS},
	        {"SHOW CLIENTS", ADMIN_SHOW_CLIENTS},
	        {"show tenants", ADMIN_SHOW_TENANTS},
	        {"SHOW STATS", ADMIN_SHOW_STATS},
	        {"SHOW config", ADMIN_SHOW_CONFIG},
	        {"SHOW VERSION", ADMIN_SHOW_VERSION},
	        {"show help;", ADMIN_SHOW_HELP},
	        {"RELOAD", ADMIN_RELOAD},
	        {"reload;", ADMIN_RELOAD},
	        {"SHUTDOWN", ADMIN_SHUTDOWN},
	        {"", ADMIN_EMPTY},
	        {" ; ", ADMIN_EMPTY},
	        {";;", ADMIN_EMPTY},
	};
	struct admin_stmt st;
	struct admin_error e;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		bool r = parse(ok[i].sql, &st, &e);

		if (!r)
			fail_msg("\"%s\": %s", ok[i].sql, e.message);
		assert_int_equal(st.cmd, ok[i].cmd);
	}
}

static void test_admin_arguments(void **state)
{
	struct admin_stmt st;
	struct admin_error e;

	assert_true(parse("ROUTE '42'", &st, &e));
	assert_int_equal(st.cmd, ADMIN_ROUTE);
	assert_string_equal(st.tenant, "42");
	assert_int_equal(st.tlen, 2);

	assert_true(parse("route 'it''s';", &st, &e));
	assert_string_equal(st.tenant, "it's");

	assert_true(parse("PIN 'acme' TO beta", &st, &e));
	assert_int_equal(st.cmd, ADMIN_PIN);
	assert_string_equal(st.tenant, "acme");
	assert_string_equal(st.cluster, "beta");
	assert_false(st.force);

	assert_true(parse("pin 'acme' to \"Beta-2\" force;", &st, &e));
	assert_string_equal(st.cluster, "Beta-2");
	assert_true(st.force);

	assert_true(parse("UNPIN '7' FORCE", &st, &e));
	assert_int_equal(st.cmd, ADMIN_UNPIN);
	assert_true(st.force);

	assert_true(parse("PAUSE TENANT 't1'", &st, &e));
	assert_int_equal(st.cmd, ADMIN_PAUSE);
	assert_true(parse("resume tenant 't1';", &st, &e));
	assert_int_equal(st.cmd, ADMIN_RESUME);
	assert_string_equal(st.tenant, "t1");

	assert_true(parse("KILL TENANT 'x y'", &st, &e));
	assert_int_equal(st.cmd, ADMIN_KILL_TENANT);
	assert_string_equal(st.tenant, "x y");
	assert_true(parse("kill client 12345", &st, &e));
	assert_int_equal(st.cmd, ADMIN_KILL_CLIENT);
	assert_int_equal(st.id, 12345);
}

static void test_admin_errors_have_hints(void **state)
{
	static const char *const bad[] = {
	        "SELECT 1",
	        "SHOW",
	        "SHOW POOLS",
	        "SHOW CLUSTERS extra",
	        "SHOW CLUSTERS; SHOW HOSTS",
	        "ROUTE 42",
	        "ROUTE ''",
	        "ROUTE 'unterminated",
	        "PIN 'a'",
	        "PIN 'a' beta",
	        "PIN 'a' TO",
	        "PIN 'a' TO beta FORCE FORCE",
	        "UNPIN",
	        "PAUSE 'a'",
	        "KILL CLIENT abc",
	        "KILL CLIENT 99999999999999999999",
	        "KILL",
	        "KILL 'x'",
	        "RELOAD now",
	        "SHOW CLUSTERS;;",
	        "\x01\x02",
	        "ROUTE 'a' ;x",
	        "set client_encoding = 'UTF8'",
	};
	struct admin_stmt st;
	struct admin_error e;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (parse(bad[i], &st, &e))
			fail_msg("\"%s\" parsed", bad[i]);
		assert_true(e.message[0] != '\0');
		assert_true(e.hint[0] != '\0');
	}
	assert_false(parse("FROB", &st, &e));
	assert_string_equal(e.message, "unknown command \"FROB\"");
	assert_false(parse("SHOW POOLS", &st, &e));
	assert_string_equal(e.message, "unknown SHOW item \"POOLS\"");
}

static void test_admin_limits(void **state)
{
	char buf[ADMIN_MAX_STATEMENT + 64];
	struct admin_stmt st;
	struct admin_error e;
	size_t n;

	/* A tenant of 255 bytes is fine, 256 is not. */
	n = (size_t)snprintf(buf, sizeof(buf), "ROUTE '");
	memset(buf + n, 'a', ADMIN_MAX_TENANT);
	strcpy(buf + n + ADMIN_MAX_TENANT, "'");
	assert_true(parse(buf, &st, &e));
	assert_int_equal(st.tlen, ADMIN_MAX_TENANT);
	memset(buf + n, 'a', ADMIN_MAX_TENANT + 1);
	strcpy(buf + n + ADMIN_MAX_TENANT + 1, "'");
	assert_false(parse(buf, &st, &e));
	/* Quotes doubled count once. */
	n = (size_t)snprintf(buf, sizeof(buf), "ROUTE '");
	for (size_t i = 0; i < ADMIN_MAX_TENANT; i++) {
		buf[n++] = '\'';
		buf[n++] = '\'';
	}
	strcpy(buf + n, "'");
	assert_true(parse(buf, &st, &e));
	assert_int_equal(st.tlen, ADMIN_MAX_TENANT);
	/* Too long a statement. */
	memset(buf, ' ', sizeof(buf));
	assert_false(admin_parse(buf, ADMIN_MAX_STATEMENT + 1, &st, &e));
	/* A cluster name past 63 characters. */
	n = (size_t)snprintf(buf, sizeof(buf), "PIN 'a' TO ");
	memset(buf + n, 'c', 64);
	buf[n + 64] = '\0';
	assert_false(parse(buf, &st, &e));
}

/* Every prefix of a good statement, and random bytes: no crash, no read past len. */
static void test_admin_truncation_and_random(void **state)
{
	static const char *const good[] = {"PIN 'it''s' TO \"b\" FORCE;", "KILL CLIENT 17;",
	                                   "RESUME TENANT 'x';", "SHOW CLIENTS;"};
	struct admin_stmt st;
	struct admin_error e;
	unsigned seed = 12345;

	for (size_t g = 0; g < sizeof(good) / sizeof(good[0]); g++) {
		size_t len = strlen(good[g]);

		for (size_t cut = 0; cut <= len; cut++) {
			char *p = malloc(cut ? cut : 1);

			assert_non_null(p);
			memcpy(p, good[g], cut);
			if (admin_parse(p, cut, &st, &e))
				assert_true(st.tlen <= ADMIN_MAX_TENANT);
			free(p);
		}
	}
	for (int i = 0; i < 20000; i++) {
		static const char alphabet[] =
		        "SHOWPINTOKILLCLIENT 'x\";\t0123456789forceRESUME\x00\xff";
		size_t len = (seed = seed * 1103515245u + 12345u) >> 16 & 63;
		char *p = malloc(len ? len : 1);

		assert_non_null(p);
		for (size_t k = 0; k < len; k++) {
			seed = seed * 1103515245u + 12345u;
			p[k] = (seed >> 24) & 1 ? alphabet[(seed >> 16) % (sizeof(alphabet) - 1)]
			                        : (char)(seed >> 8);
		}
		if (admin_parse(p, len, &st, &e)) {
			assert_true(st.tlen <= ADMIN_MAX_TENANT);
		} else {
			assert_true(strlen(e.message) < sizeof(e.message));
			assert_true(e.hint[0] != '\0');
		}
		free(p);
	}
}

/* Reads one typed message from r: type, body. */
static bool next_msg(struct rd *r, uint8_t *type, struct rd *body)
{
	uint32_t len;

	if (!rd_u8(r, type) || !rd_u32(r, &len) || len < 4)
		return false;
	return rd_sub(r, len - 4, body);
}

static void test_admin_result_messages(void **state)
{
	static const char *const cols[] = {"name", "state"};
	const char *row1[] = {"alpha", "up"}, *row2[] = {"beta", NULL};
	struct admin_result r;
	struct rd rd, body;
	uint8_t type;
	uint16_t n;
	uint32_t v;
	const char *s;
	size_t sl;

	admin_result_init(&r);
	admin_result_columns(&r, cols, 2);
	admin_result_row(&r, row1);
	admin_result_row(&r, row2);
	admin_result_complete(&r, "SHOW");
	admin_result_ready(&r);
	assert_false(r.failed);

	rd_init(&rd, r.p, r.len);
	assert_true(next_msg(&rd, &type, &body));
	assert_int_equal(type, 'T');
	assert_true(rd_u16(&body, &n));
	assert_int_equal(n, 2);
	assert_true(rd_cstr(&body, &s, &sl));
	assert_string_equal(s, "name");
	assert_true(rd_u32(&body, &v) && rd_u16(&body, &n) && rd_u32(&body, &v));
	assert_int_equal(v, 25);

	assert_true(next_msg(&rd, &type, &body));
	assert_int_equal(type, 'D');
	assert_true(rd_u16(&body, &n));
	assert_int_equal(n, 2);
	assert_true(rd_u32(&body, &v));
	assert_int_equal(v, 5);

	assert_true(next_msg(&rd, &type, &body));
	assert_int_equal(type, 'D');
	assert_true(rd_u16(&body, &n) && rd_u32(&body, &v) &&
	            rd_bytes(&body, v, &(const uint8_t *){0}));
	assert_true(rd_u32(&body, &v));
	assert_int_equal(v, 0xffffffffu); /* NULL */

	assert_true(next_msg(&rd, &type, &body));
	assert_int_equal(type, 'C');
	assert_true(rd_cstr(&body, &s, &sl));
	assert_string_equal(s, "SHOW 2");

	assert_true(next_msg(&rd, &type, &body));
	assert_int_equal(type, 'Z');
	assert_int_equal(rd_left(&body), 1);
	assert_int_equal(rd_left(&rd), 0);

	admin_result_reset(&r);
	admin_result_error(&r, "42601", "syntax error", "SHOW HELP lists the commands.");
	{
		struct proto_error_fields f;

		rd_init(&rd, r.p, r.len);
		assert_true(next_msg(&rd, &type, &body));
		assert_int_equal(type, 'E');
		assert_int_equal(proto_parse_error(body.p, rd_left(&body), &f), PROTO_OK);
		assert_string_equal(f.sqlstate, "42601");
		assert_string_equal(f.severity, "ERROR");
		assert_string_equal(f.message, "tenant-router: syntax error");
		assert_string_equal(f.hint, "SHOW HELP lists the commands.");
	}
	admin_result_free(&r);
}

static void test_admin_result_is_bounded(void **state)
{
	static const char *const cols[] = {"v"};
	char *big = malloc(1u << 20);
	const char *row[] = {big};
	struct admin_result r;

	assert_non_null(big);
	memset(big, 'x', (1u << 20) - 1);
	big[(1u << 20) - 1] = '\0';
	admin_result_init(&r);
	admin_result_columns(&r, cols, 1);
	for (int i = 0; i < 80 && !r.failed; i++)
		admin_result_row(&r, row);
	assert_true(r.failed);
	assert_true(r.cap <= ADMIN_RESULT_MAX);
	admin_result_free(&r);
	free(big);
}

static void test_admin_pinnable(void **state)
{
	assert_true(admin_tenant_is_pinnable("acme", 4));
	assert_false(admin_tenant_is_pinnable("a b", 3));
	assert_false(admin_tenant_is_pinnable("a#b", 3));
	assert_false(admin_tenant_is_pinnable("a\tb", 3));
	assert_false(admin_tenant_is_pinnable("", 0));
}

static void test_roster_hold_and_move(void **state)
{
	struct roster_entry a = {.id = 1}, b = {.id = 2}, adm = {.id = 3, .admin = true};

	roster_add(&a);
	roster_add(&b);
	roster_add(&adm);
	assert_int_equal(roster_tenant_held(&a, "t", 1, 1), ROSTER_GO);
	assert_int_equal(roster_tenant_sessions("t", 1), 1);
	(void)roster_tenant_held(&adm, "t", 1, 1);
	assert_int_equal(roster_tenant_sessions("t", 1), 1);

	assert_int_equal(roster_pause("t", 1), 0);
	assert_int_equal(roster_pause("t", 1), -EALREADY);
	assert_int_equal(roster_tenant_held(&b, "t", 1, 1), ROSTER_PAUSED);
	/* b waits: it is not live. */
	assert_int_equal(roster_tenant_sessions("t", 1), 1);
	assert_int_equal(roster_resume("t", 1), 0);
	assert_int_equal(roster_resume("t", 1), -ENOENT);
	assert_int_equal(roster_tenant_held(&b, "t", 1, 1), ROSTER_GO);
	assert_int_equal(roster_tenant_sessions("t", 1), 2);

	/* A move counts live sessions and holds new ones until every loop has generation 5. */
	assert_int_equal(roster_move_begin("u", 1), 0);
	assert_int_equal(roster_move_begin("u", 1), -EBUSY);
	assert_int_equal(roster_tenant_held(&a, "u", 1, 99), ROSTER_MOVING);
	roster_move_end("u", 1, 5);
	assert_int_equal(roster_tenant_held(&a, "u", 1, 4), ROSTER_MOVING);
	assert_int_equal(roster_tenant_held(&a, "u", 1, 5), ROSTER_GO);
	roster_sweep(4);
	assert_int_equal(roster_tenant_held(&a, "u", 1, 4), ROSTER_MOVING);
	roster_sweep(5);
	assert_int_equal(roster_tenant_held(&a, "u", 1, 4), ROSTER_GO);
	assert_int_equal(roster_held_list(NULL, 0), 0);
	/* A dropped move ends the hold at once. */
	assert_int_equal(roster_tenant_held(&b, "u", 1, 1), ROSTER_GO);
	assert_int_equal(roster_move_begin("u", 1), 2);
	roster_move_end("u", 1, 0);
	assert_int_equal(roster_tenant_held(&b, "u", 1, 1), ROSTER_GO);

	roster_remove(&a);
	roster_remove(&b);
	roster_remove(&adm);
}

static int wakes;
static void wake_cb(void *arg)
{
	wakes++;
}

static void test_roster_kill_and_snapshot(void **state)
{
	struct roster_entry a = {.id = 10, .wake = wake_cb}, b = {.id = 11, .wake = wake_cb};
	struct roster_row *rows;
	long n;

	strcpy(a.peer, "127.0.0.1:5000");
	roster_add(&a);
	roster_add(&b);
	(void)roster_tenant_held(&a, "k", 1, 1);
	(void)roster_tenant_held(&b, "k", 1, 1);
	roster_set_route(&a, "alpha", "127.0.0.1:5432", ROSTER_SRC_PIN);
	roster_bytes(&a.bytes_in, 100);
	wakes = 0;
	assert_int_equal(roster_kill_tenant("k", 1), 2);
	assert_int_equal(wakes, 2);
	assert_int_equal(roster_kill_reason(&a), ROSTER_KILL_TENANT);
	assert_true(roster_kill_client(10));
	assert_false(roster_kill_client(12));
	assert_int_equal(roster_kill_reason(&a), ROSTER_KILL_CLIENT);

	n = roster_snapshot(&rows);
	assert_int_equal(n, 2);
	assert_int_equal(rows[0].id, 10);
	assert_string_equal(rows[0].cluster, "alpha");
	assert_string_equal(rows[0].peer, "127.0.0.1:5000");
	assert_int_equal(rows[0].bytes_in, 100);
	assert_int_equal(rows[0].source, ROSTER_SRC_PIN);
	assert_int_equal(rows[1].id, 11);
	free(rows);
	roster_remove(&b);
	roster_remove(&a);
	n = roster_snapshot(&rows);
	assert_int_equal(n, 0);
	free(rows);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_admin_commands_parse),
	        cmocka_unit_test(test_admin_arguments),
	        cmocka_unit_test(test_admin_errors_have_hints),
	        cmocka_unit_test(test_admin_limits),
	        cmocka_unit_test(test_admin_truncation_and_random),
	        cmocka_unit_test(test_admin_result_messages),
	        cmocka_unit_test(test_admin_result_is_bounded),
	        cmocka_unit_test(test_admin_pinnable),
	        cmocka_unit_test(test_roster_hold_and_move),
	        cmocka_unit_test(test_roster_kill_and_snapshot),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
