/*
 * test_directory.c - unit tests for the tenant directory's pure parts
 * (src/directory.c) and the precedence rule built on it (route_place in
 * src/route.c): COPY text rows, the line framer, full snapshots, deltas
 * over a shared base, states and bad rows.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <xxhash.h>

#include "directory.h"
#include "pins.h"
#include "ring.h"
#include "route.h"

static const char *const names[] = {"a", "b", "c"};

static enum proto_status parse(const char *s, uint8_t *buf, struct dir_row *r)
{
	return dir_parse_row((const uint8_t *)s, strlen(s), buf, DIR_ROW_BUF, r);
}

static void test_directory_parse_rows(void **state)
{
	static const struct {
		const char *in;
		enum proto_status st;
		const char *tenant;
		size_t tlen;
		const char *cluster, *state;
		int64_t version;
	} cases[] = {
	        {"t1\ta\tactive\t7", PROTO_OK, "t1", 2, "a", "active", 7},
	        {"042\tb\tmoving\t9223372036854775807", PROTO_OK, "042", 3, "b", "moving",
	         INT64_MAX},
	        /* COPY text escapes: tab, newline, backslash, octal, hex. */
	        {"a\\tb\\nc\\\\d\tc\tblocked\t1", PROTO_OK, "a\tb\nc\\d", 7, "c", "blocked", 1},
	        {"\\101\\x42\\x4\tc\tx\t-3", PROTO_OK, "AB\x04", 3, "c", "x", -3},
	        {"\\N\ta\tactive\t1", PROTO_BAD, NULL, 0, NULL, NULL, 0},  /* NULL tenant */
	        {"\ta\tactive\t1", PROTO_BAD, NULL, 0, NULL, NULL, 0},     /* empty tenant */
	        {"t\t\\N\tactive\t1", PROTO_BAD, NULL, 0, NULL, NULL, 0},  /* NULL cluster */
	        {"t\ta\tactive", PROTO_BAD, NULL, 0, NULL, NULL, 0},       /* three fields */
	        {"t\ta\tactive\t1\tx", PROTO_BAD, NULL, 0, NULL, NULL, 0}, /* five */
	        {"t\ta\tactive\t1x", PROTO_BAD, NULL, 0, NULL, NULL, 0},   /* version */
	        {"t\ta\tactive\t", PROTO_BAD, NULL, 0, NULL, NULL, 0},
	        {"t\ta\tactive\t99999999999999999999", PROTO_BAD, NULL, 0, NULL, NULL, 0},
	        {"", PROTO_BAD, NULL, 0, NULL, NULL, 0},
	};
	uint8_t buf[DIR_ROW_BUF];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct dir_row r;
		enum proto_status st = parse(cases[i].in, buf, &r);

		assert_int_equal(st, cases[i].st);
		if (st != PROTO_OK)
			continue;
		assert_int_equal(r.tlen, cases[i].tlen);
		assert_memory_equal(r.tenant, cases[i].tenant, r.tlen);
		assert_int_equal(r.clen, strlen(cases[i].cluster));
		assert_memory_equal(r.cluster, cases[i].cluster, r.clen);
		assert_int_equal(r.slen, strlen(cases[i].state));
		assert_memory_equal(r.state, cases[i].state, r.slen);
		assert_true(r.version == cases[i].version);
	}
}

static void test_directory_parse_limits_and_truncation(void **state)
{
	uint8_t buf[DIR_ROW_BUF];
	char row[1200];
	struct dir_row r;
	const char *good = "tenant\\t\\101\tcluster\tactive\t12345";

	/* 255 bytes of tenant pass, 256 do not. */
	memset(row, 'x', 255);
	strcpy(row + 255, "\ta\tactive\t1");
	assert_int_equal(parse(row, buf, &r), PROTO_OK);
	assert_int_equal(r.tlen, 255);
	memset(row, 'x', 256);
	strcpy(row + 256, "\ta\tactive\t1");
	assert_int_equal(parse(row, buf, &r), PROTO_BAD);
	/* A too small buffer is refused, never overrun. */
	assert_int_equal(dir_parse_row((const uint8_t *)good, strlen(good), buf, 10, &r),
	                 PROTO_BAD);
	/* Every prefix of a good row parses or is refused; none reads past its end. */
	for (size_t n = 0; n <= strlen(good); n++) {
		uint8_t *copy = malloc(n + 1);
		enum proto_status st;

		assert_non_null(copy);
		memcpy(copy, good, n);
		st = dir_parse_row(copy, n, buf, sizeof(buf), &r);
		assert_true(st == PROTO_OK || st == PROTO_BAD);
		free(copy);
	}
}

struct lines_out {
	char text[8192];
	size_t len;
	size_t overlong;
};

static void line_cb(void *arg, const uint8_t *p, size_t n)
{
	struct lines_out *o = arg;

	if (p == NULL) {
		o->overlong++;
		memcpy(o->text + o->len, "<long>|", 7);
		o->len += 7;
		return;
	}
	memcpy(o->text + o->len, p, n);
	o->len += n;
	o->text[o->len++] = '|';
}

static void test_directory_lines_same_however_cut(void **state)
{
	static char input[DIR_LINE_MAX * 2 + 200];
	struct lines_out whole = {0}, bytes = {0};
	struct dir_lines l;
	size_t n;

	strcpy(input, "one\ntwo\n\nthree");
	n = strlen(input);
	input[n++] = '\n';
	memset(input + n, 'L', DIR_LINE_MAX + 10); /* an overlong line, skipped */
	n += DIR_LINE_MAX + 10;
	input[n++] = '\n';
	memcpy(input + n, "after\nlast", 10);
	n += 10;

	dir_lines_init(&l);
	dir_lines_feed(&l, (const uint8_t *)input, n, line_cb, &whole);
	dir_lines_finish(&l, line_cb, &whole);
	for (size_t i = 0; i < n; i++)
		dir_lines_feed(&l, (const uint8_t *)input + i, 1, line_cb, &bytes);
	dir_lines_finish(&l, line_cb, &bytes);
	assert_int_equal(whole.len, bytes.len);
	assert_memory_equal(whole.text, bytes.text, whole.len);
	assert_int_equal(whole.overlong, 1);
	whole.text[whole.len] = '\0';
	assert_string_equal(whole.text, "one|two||three|<long>|after|last|");
}

struct bad_seen {
	size_t n;
	char why[64];
};

static void bad_cb(void *arg, const struct dir_row *r, const char *why)
{
	struct bad_seen *b = arg;

	b->n++;
	snprintf(b->why, sizeof(b->why), "%s", why);
}

static void add(struct dir_builder *b, const char *row)
{
	uint8_t buf[DIR_ROW_BUF];
	struct dir_row r;

	assert_int_equal(parse(row, buf, &r), PROTO_OK);
	assert_true(dir_builder_add(b, &r) >= 0);
}

static enum dir_state look(const struct dir *d, const char *t, const char **cl)
{
	return dir_lookup(d, t, strlen(t), XXH3_64bits(t, strlen(t)), cl);
}

static struct dir *small_dir(struct bad_seen *bad)
{
	struct dir_builder *b = dir_builder_new(names, 3, 0, bad_cb, bad);

	assert_non_null(b);
	add(b, "t1\ta\tactive\t1");
	add(b, "t2\tb\tmoving\t2");
	add(b, "t3\tc\tblocked\t3");
	add(b, "t4\tzz\tactive\t4");  /* unknown cluster */
	add(b, "t5\ta\tsideways\t5"); /* unknown state */
	return dir_builder_finish(b, NULL, 1000);
}

static void test_directory_snapshot_states_and_bad_rows(void **state)
{
	struct bad_seen bad = {0};
	struct dir *d = small_dir(&bad);
	const char *cl = NULL;
	size_t len;
	uint64_t since;

	assert_non_null(d);
	assert_int_equal(bad.n, 2);
	assert_int_equal(dir_ignored(d), 2);
	assert_int_equal(dir_rows(d), 5);
	assert_true(dir_version(d) == 5);
	assert_int_equal(look(d, "t1", &cl), DIR_ACTIVE);
	assert_string_equal(cl, "a");
	assert_int_equal(look(d, "t2", &cl), DIR_MOVING);
	assert_string_equal(cl, "b");
	assert_int_equal(look(d, "t3", &cl), DIR_BLOCKED);
	assert_int_equal(look(d, "t4", NULL), DIR_INVALID);
	assert_int_equal(look(d, "t5", NULL), DIR_INVALID);
	assert_int_equal(look(d, "nobody", NULL), DIR_NONE);
	assert_int_equal(look(NULL, "t1", NULL), DIR_NONE);
	assert_int_equal(dir_nmoving(d), 1);
	assert_memory_equal(dir_moving(d, 0, &len, &since), "t2", 2);
	assert_int_equal(len, 2);
	assert_int_equal(since, 1000);
	assert_string_equal(dir_cluster_name(d, 2), "c");
	dir_unref(d);
}

static void test_directory_delta_wins_and_shares_base(void **state)
{
	struct bad_seen bad = {0};
	struct dir *d0 = small_dir(&bad), *d1, *d2;
	uint8_t b1[DIR_ROW_BUF], b2[DIR_ROW_BUF], b3[DIR_ROW_BUF];
	struct dir_row rows[3];
	const char *cl = NULL;
	size_t len;
	uint64_t since;

	assert_int_equal(parse("t1\tb\tmoving\t6", b1, &rows[0]), PROTO_OK);
	assert_int_equal(parse("new\tc\tactive\t7", b2, &rows[1]), PROTO_OK);
	assert_int_equal(parse("t2\tc\tactive\t8", b3, &rows[2]), PROTO_OK);
	d1 = dir_apply(d0, rows, 3, 2000, bad_cb, &bad);
	assert_non_null(d1);
	assert_true(dir_version(d1) == 8);
	assert_int_equal(dir_delta_rows(d1), 3);
	assert_int_equal(look(d1, "t1", &cl), DIR_MOVING);
	assert_string_equal(cl, "b");
	assert_int_equal(look(d1, "new", &cl), DIR_ACTIVE);
	assert_string_equal(cl, "c");
	assert_int_equal(look(d1, "t2", &cl), DIR_ACTIVE);   /* no longer moving */
	assert_int_equal(look(d1, "t3", NULL), DIR_BLOCKED); /* from the base */
	/* The old snapshot is untouched. */
	assert_int_equal(look(d0, "t1", &cl), DIR_ACTIVE);
	assert_int_equal(look(d0, "new", NULL), DIR_NONE);
	assert_int_equal(dir_nmoving(d1), 1);
	assert_memory_equal(dir_moving(d1, 0, &len, &since), "t1", 2);
	assert_int_equal(since, 2000);
	/* A later row of the same tenant wins over an earlier one in the delta. */
	assert_int_equal(parse("t1\ta\tactive\t9", b1, &rows[0]), PROTO_OK);
	assert_int_equal(parse("t2\tqq\tactive\t10", b2, &rows[1]), PROTO_OK);
	bad.n = 0;
	d2 = dir_apply(d1, rows, 2, 3000, bad_cb, &bad);
	assert_non_null(d2);
	assert_int_equal(bad.n, 1);
	assert_string_equal(bad.why, "unknown cluster");
	assert_int_equal(look(d2, "t1", &cl), DIR_ACTIVE);
	assert_string_equal(cl, "a");
	assert_int_equal(look(d2, "t2", NULL), DIR_INVALID);
	assert_int_equal(dir_nmoving(d2), 0);
	/* Dropping the base's first owner keeps the others working (shared, refcounted). */
	dir_unref(d0);
	dir_unref(d1);
	assert_int_equal(look(d2, "t3", NULL), DIR_BLOCKED);
	dir_unref(d2);
}

static void test_directory_moving_since_carries_over(void **state)
{
	struct bad_seen bad = {0};
	struct dir *d0 = small_dir(&bad), *d1;
	struct dir_builder *b = dir_builder_new(names, 3, 10, NULL, NULL);
	size_t len;
	uint64_t since;

	assert_non_null(b);
	add(b, "t2\tb\tmoving\t2");
	add(b, "t9\ta\tmoving\t12");
	d1 = dir_builder_finish(b, d0, 5000);
	assert_int_equal(dir_nmoving(d1), 2);
	for (size_t i = 0; i < 2; i++) {
		const uint8_t *t = dir_moving(d1, i, &len, &since);

		if (len == 2 && memcmp(t, "t2", 2) == 0)
			assert_int_equal(since, 1000); /* known moving since the first load */
		else
			assert_int_equal(since, 5000);
	}
	dir_unref(d0);
	dir_unref(d1);
}

static void test_directory_precedence_directory_pins_ring(void **state)
{
	const char *cfgnames[] = {"c", "b", "a"}; /* a config may order clusters otherwise */
	struct ring_member mr[] = {{"c", 1}, {"b", 1}, {"a", 1}};
	struct ring *ring = ring_build(mr, 3, 64, NULL, 0);
	struct pins *pins = pins_new();
	struct dir_builder *b = dir_builder_new(names, 3, 0, NULL, NULL);
	struct route_place pl;
	struct dir *d;
	char t[16];

	assert_non_null(ring);
	assert_non_null(pins);
	assert_int_equal(pins_add(pins, "both", 4, 0), 0); /* pinned to cfg cluster 0 = "c" */
	assert_int_equal(pins_add(pins, "pinned", 6, 1), 0);
	pins_seal(pins);
	add(b, "both\ta\tactive\t1");
	add(b, "bad\tzz\tactive\t2");
	d = dir_builder_finish(b, NULL, 0);

	route_place(d, pins, ring, cfgnames, 3, "both", 4, &pl);
	assert_int_equal(pl.source, ROUTE_DIRECTORY);
	assert_int_equal(pl.state, DIR_ACTIVE);
	assert_int_equal(pl.cluster, 2); /* "a" in the config's order */
	route_place(d, pins, ring, cfgnames, 3, "pinned", 6, &pl);
	assert_int_equal(pl.source, ROUTE_PIN);
	assert_int_equal(pl.cluster, 1);
	route_place(d, pins, ring, cfgnames, 3, "bad", 3, &pl);
	assert_int_equal(pl.source, ROUTE_DIRECTORY);
	assert_int_equal(pl.state, DIR_INVALID);
	assert_int_equal(pl.cluster, -1);
	/* A cluster the snapshot knows but the config does not: refused too. */
	route_place(d, pins, ring, cfgnames, 2, "both", 4, &pl);
	assert_int_equal(pl.cluster, -1);
	/* Everyone else: the ring, exactly as route_lookup says. */
	for (int i = 0; i < 200; i++) {
		bool pinned;

		snprintf(t, sizeof(t), "r%d", i);
		route_place(d, pins, ring, cfgnames, 3, t, strlen(t), &pl);
		assert_int_equal(pl.source, ROUTE_RING);
		assert_int_equal(pl.cluster, (int)route_lookup(pins, ring, t, strlen(t), &pinned));
		assert_false(pinned);
	}
	/* Without a directory: pins, then ring. */
	route_place(NULL, pins, ring, cfgnames, 3, "both", 4, &pl);
	assert_int_equal(pl.source, ROUTE_PIN);
	assert_int_equal(pl.cluster, 0);
	dir_unref(d);
	pins_free(pins);
	ring_free(ring);
}

static void test_directory_many_rows(void **state)
{
	struct dir_builder *b = dir_builder_new(names, 3, 100000, NULL, NULL);
	struct dir *d;
	char row[64];
	const char *cl;

	assert_non_null(b);
	for (int i = 0; i < 100000; i++) {
		snprintf(row, sizeof(row), "tenant-%d\t%s\tactive\t%d", i, names[i % 3], i + 1);
		add(b, row);
	}
	d = dir_builder_finish(b, NULL, 0);
	assert_int_equal(dir_rows(d), 100000);
	for (int i = 0; i < 100000; i += 997) {
		char t[32];

		snprintf(t, sizeof(t), "tenant-%d", i);
		assert_int_equal(look(d, t, &cl), DIR_ACTIVE);
		assert_string_equal(cl, names[i % 3]);
	}
	assert_int_equal(look(d, "tenant-100000", NULL), DIR_NONE);
	dir_unref(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_directory_parse_rows),
	        cmocka_unit_test(test_directory_parse_limits_and_truncation),
	        cmocka_unit_test(test_directory_lines_same_however_cut),
	        cmocka_unit_test(test_directory_snapshot_states_and_bad_rows),
	        cmocka_unit_test(test_directory_delta_wins_and_shares_base),
	        cmocka_unit_test(test_directory_moving_since_carries_over),
	        cmocka_unit_test(test_directory_precedence_directory_pins_ring),
	        cmocka_unit_test(test_directory_many_rows),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
