/*
 * test_gframe.c - the guard's framer (src/gframe.c): pass-through, refusals,
 * streaming past the hold limit, the router-wide budget, and the server side,
 * each fed whole, one byte at a time and cut at every offset.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gframe.h"
#include "proto.h"

#define KEY "app.tenant_id"

struct buf {
	uint8_t *p;
	size_t len;
};

static void put(struct buf *b, const void *p, size_t n)
{
	b->p = realloc(b->p, b->len + n + 1);
	assert_non_null(b->p);
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void put_msg(struct buf *b, uint8_t type, const void *body, size_t n)
{
	uint8_t h[5] = {type, (uint8_t)((n + 4) >> 24), (uint8_t)((n + 4) >> 16),
	                (uint8_t)((n + 4) >> 8), (uint8_t)(n + 4)};

	put(b, h, 5);
	put(b, body, n);
}

static void put_query(struct buf *b, const char *sql)
{
	put_msg(b, 'Q', sql, strlen(sql) + 1);
}

/* A Query of total bytes whose text ends with tail. */
static void put_long_query(struct buf *b, size_t total, const char *tail)
{
	size_t tl = strlen(tail), n = total - 5 - 1;
	char *sql = malloc(n + 1);

	assert_non_null(sql);
	memset(sql, ' ', n - tl);
	memcpy(sql, "select 1", 8);
	memcpy(sql + n - tl, tail, tl);
	sql[n] = '\0';
	put_query(b, sql);
	free(sql);
}

struct owner {
	struct buf sv, cl;
	unsigned inspected, refused, overlong;
	bool refuse_all;
};

static bool o_server(void *ctx, const uint8_t *p, size_t n)
{
	put(&((struct owner *)ctx)->sv, p, n);
	return true;
}

static bool o_client(void *ctx, const uint8_t *p, size_t n)
{
	put(&((struct owner *)ctx)->cl, p, n);
	return true;
}

static bool o_wants(void *ctx, uint8_t type)
{
	return type == 'Q' || type == 'P';
}

static struct gframe_error *err(const char *code)
{
	struct buf b = {0};
	struct gframe_error *e;

	put_msg(&b, 'E', code, strlen(code) + 1);
	e = gframe_error_new(b.p, b.len);
	free(b.p);
	return e;
}

static enum gframe_verdict o_inspect(void *ctx, const uint8_t *m, size_t len,
                                     struct gframe_error **e)
{
	struct owner *o = ctx;

	o->inspected++;
	if (!o->refuse_all && !memmem(m, len, "'42'", 4))
		return GFRAME_PASS;
	o->refused++;
	*e = err("42501");
	return GFRAME_REFUSE;
}

static struct gframe_error *o_overlong(void *ctx, uint8_t type, size_t len)
{
	((struct owner *)ctx)->overlong++;
	return err("54000");
}

static const struct gframe_ops ops = {o_server, o_client, o_wants, o_inspect, o_overlong};

static const uint8_t SYNC[5] = {'S', 0, 0, 0, 4};

/* Feeds in cut at the given points (cuts[k] = bytes of read k; 0 ends the list: rest whole). */
static void feed_cuts(struct gframe *f, bool server, const struct buf *in, const size_t *cuts)
{
	size_t at = 0;

	while (at < in->len) {
		size_t n = *cuts ? *cuts++ : in->len - at;

		n = n < in->len - at ? n : in->len - at;
		assert_true(server ? gframe_server(f, in->p + at, n)
		                   : gframe_client(f, in->p + at, n));
		at += n;
	}
}

static void run(struct owner *o, size_t max_hold, const struct buf *in, const size_t *cuts)
{
	struct gframe f;

	memset(o, 0, sizeof(*o));
	gframe_init(&f, &ops, o, KEY, max_hold, NULL, 0);
	feed_cuts(&f, false, in, cuts);
	gframe_free(&f);
}

static void test_gframe_pass_through_any_cut(void **state)
{
	struct buf in = {0};
	struct owner o;

	put_query(&in, "select 1");
	put_query(&in, "select current_setting('app.tenant_id')");
	put_msg(&in, 'P', "s\0select set_config('app.tenant_id', '7', false)\0\0", 50);
	put_msg(&in, 'B', "\0s\0\0\0\0\0\0\0", 10);
	put_msg(&in, 'd', "set app.tenant_id = '42'", 24);
	put(&in, SYNC, 5);
	put_long_query(&in, 3000, "and tenant_id = 3");
	for (size_t cut = 1; cut <= in.len; cut++) {
		size_t cuts[] = {cut, cut, cut, cut, cut, cut, cut, cut, 0};

		run(&o, 1000, &in, cuts);
		assert_int_equal(o.sv.len, in.len);
		assert_memory_equal(o.sv.p, in.p, in.len);
		assert_int_equal(o.refused + o.overlong, 0);
		free(o.sv.p);
	}
	/* One byte at a time. */
	{
		size_t *ones = calloc(in.len + 1, sizeof(size_t));

		for (size_t i = 0; i < in.len; i++)
			ones[i] = 1;
		run(&o, 1000, &in, ones);
		assert_memory_equal(o.sv.p, in.p, in.len);
		free(o.sv.p);
		free(ones);
	}
	free(in.p);
}

/* The server's ErrorResponse with this SQLSTATE and message. */
static void put_server_error(struct buf *b, const char *code, const char *msg)
{
	struct buf body = {0};

	put(&body, "SERROR", 7);
	put(&body, "C", 1);
	put(&body, code, strlen(code) + 1);
	put(&body, "M", 1);
	put(&body, msg, strlen(msg) + 1);
	put(&body, "", 1);
	put_msg(b, 'E', body.p, body.len);
	free(body.p);
}

static void test_gframe_refused_query_becomes_marker(void **state)
{
	struct buf in = {0}, want = {0};
	struct owner o;

	put_query(&in, "select 1");
	put_query(&in, "set app.tenant_id = '42'");
	put_query(&in, "select 2");
	put_query(&want, "select 1");
	put_query(&want, "SELECT " GFRAME_MARKER "1");
	put_query(&want, "select 2");
	for (size_t cut = 1; cut <= in.len; cut++) {
		size_t cuts[] = {cut, 0};

		run(&o, 1000, &in, cuts);
		assert_int_equal(o.refused, 1);
		assert_int_equal(o.sv.len, want.len);
		assert_memory_equal(o.sv.p, want.p, want.len);
		free(o.sv.p);
	}
	free(in.p);
	free(want.p);
}

/* A refused Parse becomes a Describe of a portal that does not exist; the server skips the rest. */
static void test_gframe_refused_parse_becomes_marker(void **state)
{
	struct buf in = {0}, want = {0};
	struct owner o;
	size_t cuts[] = {0};

	put_msg(&in, 'P', "\0set app.tenant_id = '42'\0\0", 28);
	put_msg(&in, 'B', "\0\0\0\0\0\0\0\0", 8);
	put_msg(&in, 'E', "\0\0\0\0\0", 5);
	put(&in, SYNC, 5);
	put_query(&in, "select 3");
	put_msg(&want, 'D', "P" GFRAME_MARKER "1", 2 + strlen(GFRAME_MARKER "1"));
	put_msg(&want, 'B', "\0\0\0\0\0\0\0\0", 8);
	put_msg(&want, 'E', "\0\0\0\0\0", 5);
	put(&want, SYNC, 5);
	put_query(&want, "select 3");
	run(&o, 1000, &in, cuts);
	assert_int_equal(o.sv.len, want.len);
	assert_memory_equal(o.sv.p, want.p, want.len);
	free(o.sv.p);
	free(in.p);
	free(want.p);
}

/* A switch at the end of a statement longer than the hold limit, cut anywhere near it. */
static void test_gframe_long_statement_spoiled(void **state)
{
	struct buf in = {0};
	struct owner o;
	const char *sw = "; select set_config('app.tenant_id', '42', false)";
	size_t total = 5000;

	put_long_query(&in, total, sw);
	put_query(&in, "select 9");
	for (size_t cut = total - 80; cut < total; cut++) {
		size_t cuts[] = {cut, 0};
		size_t sl;

		run(&o, 1000, &in, cuts);
		assert_int_equal(o.overlong, 1);
		assert_int_equal(o.inspected, 1); /* only "select 9" */
		assert_int_equal(o.sv.len, in.len);
		/* The statement's text ends before the switch is whole: the server rejects it. */
		sl = strnlen((const char *)o.sv.p + 5, total - 5);
		assert_true(sl + 1 < total - 5);
		assert_null(memmem(o.sv.p, sl + 5, "'42'", 4));
		assert_memory_equal(o.sv.p + total, in.p + total, in.len - total);
		free(o.sv.p);
	}
	free(in.p);
}

/* A long statement that cannot switch the tenant streams through untouched. */
static void test_gframe_long_statement_streams(void **state)
{
	struct buf in = {0};
	struct owner o;
	size_t cuts[] = {700, 700, 700, 0};

	put_long_query(&in, 100000, "where tenant_id = 4");
	run(&o, 1000, &in, cuts);
	assert_int_equal(o.overlong + o.inspected, 0);
	assert_memory_equal(o.sv.p, in.p, in.len);
	free(o.sv.p);
	free(in.p);
}

/* The router-wide budget: no room means streaming, not holding. */
static void test_gframe_budget(void **state)
{
	struct buf in = {0};
	struct owner o = {0};
	struct gframe f;
	atomic_size_t held = 0;
	size_t cuts[] = {100, 0};

	put_long_query(&in, 800, "set app.tenant_id = '1'");
	gframe_init(&f, &ops, &o, KEY, 1000, &held, 500);
	feed_cuts(&f, false, &in, cuts);
	assert_int_equal(o.overlong, 1);
	assert_int_equal(atomic_load(&held), 0);
	gframe_free(&f);
	free(o.sv.p);
	/* With room it is held (and counted while held), then judged. */
	memset(&o, 0, sizeof(o));
	gframe_init(&f, &ops, &o, KEY, 1000, &held, 5000);
	assert_true(gframe_client(&f, in.p, 100));
	assert_int_equal(atomic_load(&held), 800);
	assert_true(gframe_client(&f, in.p + 100, in.len - 100));
	assert_int_equal(atomic_load(&held), 0);
	assert_int_equal(o.inspected, 1);
	assert_memory_equal(o.sv.p, in.p, in.len);
	gframe_free(&f);
	free(o.sv.p);
	free(in.p);
}

/* Server side: the server's error for a marker or a spoiled statement is replaced by ours. */
static void test_gframe_server_replaces_marker_errors(void **state)
{
	struct buf in = {0}, ans = {0}, want = {0};
	struct owner o;
	struct gframe f;
	struct gframe_error *e42 = err("42501"), *e54 = err("54000");

	put_query(&in, "select 1");
	put_query(&in, "set app.tenant_id = '42'");
	put_long_query(&in, 3000, "; set app.tenant_id = '5'");
	put_msg(&ans, 'C', "SELECT 1", 9);
	put_msg(&ans, 'Z', "I", 1);
	put_server_error(&ans, "42703", "column \"" GFRAME_MARKER "1\" does not exist");
	put_msg(&ans, 'Z', "I", 1);
	put_server_error(&ans, "08P01", "invalid message format");
	put_msg(&ans, 'Z', "I", 1);
	put_msg(&want, 'C', "SELECT 1", 9);
	put_msg(&want, 'Z', "I", 1);
	put(&want, e42->msg, e42->len);
	put_msg(&want, 'Z', "I", 1);
	put(&want, e54->msg, e54->len);
	put_msg(&want, 'Z', "I", 1);
	for (size_t cut = 1; cut <= ans.len; cut++) {
		size_t cuts[] = {cut, cut, cut, cut, cut, cut, cut, cut, cut, cut, cut, cut, 0};

		memset(&o, 0, sizeof(o));
		gframe_init(&f, &ops, &o, KEY, 1000, NULL, 0);
		assert_true(gframe_client(&f, in.p, in.len));
		feed_cuts(&f, true, &ans, cuts);
		assert_int_equal(o.cl.len, want.len);
		assert_memory_equal(o.cl.p, want.p, want.len);
		assert_false(gframe_busy(&f));
		gframe_free(&f);
		free(o.sv.p);
		free(o.cl.p);
	}
	free(e42);
	free(e54);
	free(in.p);
	free(ans.p);
	free(want.p);
}

/* An earlier error in the batch: the server skips the marker; its error is dropped, theirs shows. */
static void test_gframe_server_skipped_marker(void **state)
{
	struct buf in = {0}, ans = {0};
	struct owner o = {0};
	struct gframe f;

	put_msg(&in, 'P', "\0selec bad\0\0", 13);
	put_msg(&in, 'P', "\0set app.tenant_id = '42'\0\0", 28);
	put(&in, SYNC, 5);
	put_query(&in, "set app.tenant_id = '42'");
	put_server_error(&ans, "42601", "syntax error at or near \"selec\"");
	put_msg(&ans, 'Z', "I", 1);
	put_server_error(&ans, "42703", "column \"" GFRAME_MARKER "2\" does not exist");
	put_msg(&ans, 'Z', "I", 1);
	gframe_init(&f, &ops, &o, KEY, 1000, NULL, 0);
	assert_true(gframe_client(&f, in.p, in.len));
	assert_true(gframe_server(&f, ans.p, ans.len));
	/* The syntax error as it came, then our error for the Query's marker. */
	assert_non_null(memmem(o.cl.p, o.cl.len, "42601", 5));
	assert_null(memmem(o.cl.p, o.cl.len, GFRAME_MARKER, strlen(GFRAME_MARKER)));
	assert_non_null(memmem(o.cl.p, o.cl.len, "42501", 5));
	assert_false(gframe_busy(&f));
	gframe_free(&f);
	free(o.sv.p);
	free(o.cl.p);
	free(in.p);
	free(ans.p);
}

/* The pre-filter finds its patterns however the text is cut, at the same byte. */
static void test_gframe_scan_cuts(void **state)
{
	const char *text = "select 1; SeT app.Tenant_Id = 3";
	size_t n = strlen(text), whole;
	struct gscan sc;

	gscan_init(&sc, KEY);
	whole = gscan_feed(&sc, (const uint8_t *)text, n);
	assert_int_equal(whole, n - 5); /* the 'd' of Tenant_Id */
	for (size_t cut = 1; cut < n; cut++) {
		size_t a, b;

		gscan_reset(&sc);
		a = gscan_feed(&sc, (const uint8_t *)text, cut);
		b = gscan_feed(&sc, (const uint8_t *)text + cut, n - cut);
		if (a != SIZE_MAX)
			assert_int_equal(a, whole);
		else
			assert_int_equal(cut + b, whole);
	}
	assert_false(gscan_text(&sc, "select tenant_id from t", 23));
	assert_true(gscan_text(&sc, "/* app.tenant_id='1' */ select tenant_id", 40));
	assert_false(gscan_text(&sc, "/* x */ select tenant_id", 24));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_gframe_pass_through_any_cut),
		cmocka_unit_test(test_gframe_refused_query_becomes_marker),
		cmocka_unit_test(test_gframe_refused_parse_becomes_marker),
		cmocka_unit_test(test_gframe_long_statement_spoiled),
		cmocka_unit_test(test_gframe_long_statement_streams),
		cmocka_unit_test(test_gframe_budget),
		cmocka_unit_test(test_gframe_server_replaces_marker_errors),
		cmocka_unit_test(test_gframe_server_skipped_marker),
		cmocka_unit_test(test_gframe_scan_cuts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
