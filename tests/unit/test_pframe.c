/*
 * test_pframe.c - the pooled session's framer (src/pframe.c): when a server
 * connection is clean, where a Terminate begins, each case fed whole, one
 * byte at a time, and cut at every offset.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pframe.h"

struct buf {
	uint8_t p[4096];
	size_t len;
};

static void msg(struct buf *b, char type, const char *body, size_t n)
{
	uint32_t len = (uint32_t)n + 4;

	b->p[b->len++] = (uint8_t)type;
	b->p[b->len++] = (uint8_t)(len >> 24);
	b->p[b->len++] = (uint8_t)(len >> 16);
	b->p[b->len++] = (uint8_t)(len >> 8);
	b->p[b->len++] = (uint8_t)len;
	memcpy(b->p + b->len, body, n);
	b->len += n;
}

static void query(struct buf *b, const char *sql)
{
	msg(b, 'Q', sql, strlen(sql) + 1);
}

static void ready(struct buf *b, char txn)
{
	msg(b, 'Z', &txn, 1);
}

struct result {
	size_t sent;
	bool terminated, clean;
	char txn;
};

/* Feeds client then server bytes, in pieces of step bytes (0: whole). */
static struct result run(const struct buf *c, const struct buf *s, size_t step)
{
	struct pframe f;
	struct result r = {0};

	pframe_init(&f);
	for (size_t off = 0; off < c->len;) {
		size_t k = step && step < c->len - off ? step : c->len - off;

		r.sent += pframe_client(&f, c->p + off, k);
		off += k;
	}
	for (size_t off = 0; off < s->len;) {
		size_t k = step && step < s->len - off ? step : s->len - off;

		pframe_server(&f, s->p + off, k);
		off += k;
	}
	r.terminated = f.terminated;
	r.clean = pframe_clean(&f, &r.txn);
	return r;
}

/* The same result whole, one byte at a time, and in every step size. */
static struct result run_all(const struct buf *c, const struct buf *s)
{
	struct result w = run(c, s, 0);
	size_t max = c->len > s->len ? c->len : s->len;

	for (size_t step = 1; step <= max; step++) {
		struct result r = run(c, s, step);

		assert_int_equal(r.sent, w.sent);
		assert_int_equal(r.terminated, w.terminated);
		assert_int_equal(r.clean, w.clean);
		assert_int_equal(r.txn, w.txn);
	}
	return w;
}

static void test_pframe_answered_query_is_clean(void **state)
{
	struct buf c = {0}, s = {0};
	struct result r;

	query(&c, "select 1");
	msg(&s, 'T', "\0\0", 2);
	msg(&s, 'C', "SELECT 1", 9);
	ready(&s, 'I');
	r = run_all(&c, &s);
	assert_true(r.clean);
	assert_int_equal(r.txn, 'I');
	assert_int_equal(r.sent, c.len);
	assert_false(r.terminated);
}

static void test_pframe_unanswered_query_is_dirty(void **state)
{
	struct buf c = {0}, s = {0};

	query(&c, "select 1");
	query(&c, "select pg_sleep(10)");
	ready(&s, 'I');
	assert_false(run_all(&c, &s).clean);
}

static void test_pframe_open_transaction_is_clean_with_its_status(void **state)
{
	struct buf c = {0}, s = {0};
	struct result r;

	query(&c, "begin");
	msg(&s, 'C', "BEGIN", 6);
	ready(&s, 'T');
	r = run_all(&c, &s);
	assert_true(r.clean);
	assert_int_equal(r.txn, 'T');
}

static void test_pframe_unsynced_extended_protocol_is_dirty(void **state)
{
	struct buf c = {0}, s = {0};

	msg(&c, 'P', "\0select 1\0\0\0", 12);
	msg(&c, 'B', "\0\0\0\0\0\0\0\0", 8);
	assert_false(run_all(&c, &s).clean);
	msg(&c, 'S', "", 0);
	msg(&s, '1', "", 0);
	msg(&s, '2', "", 0);
	ready(&s, 'I');
	assert_true(run_all(&c, &s).clean);
}

static void test_pframe_terminate_is_cut_off(void **state)
{
	struct buf c = {0}, s = {0};
	struct result r;
	size_t before;

	query(&c, "select 1");
	before = c.len;
	msg(&c, 'X', "", 0);
	query(&c, "select 2");
	ready(&s, 'I');
	r = run_all(&c, &s);
	assert_true(r.terminated);
	assert_int_equal(r.sent, before);
	assert_true(r.clean);
}

static void test_pframe_mid_message_is_dirty(void **state)
{
	struct buf c = {0}, s = {0};

	query(&c, "select 1");
	ready(&s, 'I');
	c.len -= 3;
	assert_false(run_all(&c, &s).clean);
	c.len += 3;
	s.len -= 1;
	assert_false(run_all(&c, &s).clean);
}

static void test_pframe_copy_in_progress_is_dirty(void **state)
{
	struct buf c = {0}, s = {0};

	query(&c, "copy t from stdin");
	msg(&s, 'G', "\0\0\0", 3);
	msg(&c, 'd', "1\n2\n", 4);
	assert_false(run_all(&c, &s).clean);
	msg(&c, 'c', "", 0);
	msg(&s, 'C', "COPY 2", 7);
	ready(&s, 'I');
	assert_true(run_all(&c, &s).clean);
}

static void test_pframe_broken_length_is_never_clean(void **state)
{
	struct buf c = {0}, s = {0};
	static const uint8_t bad[5] = {'Q', 0, 0, 0, 2};
	struct pframe f;
	char txn;

	memcpy(c.p, bad, sizeof(bad));
	c.len = sizeof(bad);
	pframe_init(&f);
	assert_int_equal(pframe_client(&f, c.p, c.len), c.len);
	assert_false(pframe_clean(&f, &txn));
	(void)s;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_pframe_answered_query_is_clean),
	        cmocka_unit_test(test_pframe_unanswered_query_is_dirty),
	        cmocka_unit_test(test_pframe_open_transaction_is_clean_with_its_status),
	        cmocka_unit_test(test_pframe_unsynced_extended_protocol_is_dirty),
	        cmocka_unit_test(test_pframe_terminate_is_cut_off),
	        cmocka_unit_test(test_pframe_mid_message_is_dirty),
	        cmocka_unit_test(test_pframe_copy_in_progress_is_dirty),
	        cmocka_unit_test(test_pframe_broken_length_is_never_clean),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
