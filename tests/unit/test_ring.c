/*
 * test_ring.c - unit tests for the consistent-hash ring (src/ring.c).
 *
 * The golden tables in tests/unit/data/ring_vectors_*.tsv were written by an
 * independent Python implementation (ring_vectors_gen.py); any change in
 * placement fails here and lists every tenant that moved. The property tests
 * check what stickiness needs: adding a cluster moves about 1/(n+1) of the
 * tenants and only onto the new cluster, and weights hold.
 *
 * Run from the repository root (the data paths are relative to it).
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
#include <xxhash.h>

#include "ring.h"

#define DATA_DIR         "tests/unit/data/"
#define NUM_TENANTS      100000
#define MIN_GOLDEN_LINES 60

/* Tenant i of the property tests: its decimal digits, like most tenant ids. */
static size_t tenant_key(char *buf, size_t len, unsigned i)
{
	return (size_t)snprintf(buf, len, "%u", i);
}

static struct ring *build_ok(const struct ring_member *m, size_t n, uint32_t vnodes)
{
	char err[256] = "";
	struct ring *r = ring_build(m, n, vnodes, err, sizeof(err));

	if (r == NULL)
		fail_msg("ring_build failed: %s", err);
	return r;
}

/* ---- golden vectors ----------------------------------------------------- */

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes the TENANT field (\\ \t \n \r \xHH) in place; returns its length. */
static size_t unescape(char *s, size_t len, const char *where)
{
	size_t i = 0, o = 0;

	while (i < len) {
		if (s[i] != '\\') {
			s[o++] = s[i++];
			continue;
		}
		if (i + 1 >= len)
			fail_msg("%s: dangling backslash", where);
		switch (s[i + 1]) {
		case '\\':
			s[o++] = '\\';
			i += 2;
			break;
		case 't':
			s[o++] = '\t';
			i += 2;
			break;
		case 'n':
			s[o++] = '\n';
			i += 2;
			break;
		case 'r':
			s[o++] = '\r';
			i += 2;
			break;
		case 'x':
			if (i + 3 >= len || hexval(s[i + 2]) < 0 || hexval(s[i + 3]) < 0)
				fail_msg("%s: bad \\x escape", where);
			s[o++] = (char)(hexval(s[i + 2]) * 16 + hexval(s[i + 3]));
			i += 4;
			break;
		default:
			fail_msg("%s: unknown escape \\%c", where, s[i + 1]);
		}
	}
	return o;
}

/*
 * Checks every line of a golden file against the ring built from the given
 * members, reports each tenant that moved, then fails if any did.
 */
static void check_golden(const char *file, const struct ring_member *m, size_t n, uint32_t vnodes)
{
	struct ring *r = build_ok(m, n, vnodes);
	FILE *f = fopen(file, "r");
	char *line = NULL, where[512];
	size_t cap = 0;
	ssize_t got;
	unsigned lineno = 0, vectors = 0, moved = 0;

	if (f == NULL)
		fail_msg("%s: %s (run the tests from the repository root)", file, strerror(errno));
	while ((got = getline(&line, &cap, f)) != -1) {
		char *tab, *want;
		size_t tlen, wlen, i, have;

		lineno++;
		snprintf(where, sizeof(where), "%s:%u", file, lineno);
		if (got > 0 && line[got - 1] == '\n')
			line[--got] = '\0';
		if (line[0] == '#' || got == 0)
			continue;
		tab = memchr(line, '\t', (size_t)got);
		if (tab == NULL)
			fail_msg("%s: no TAB", where);
		want = tab + 1;
		wlen = (size_t)(line + got - want);
		tlen = unescape(line, (size_t)(tab - line), where);
		have = ring_lookup(r, line, tlen);
		for (i = 0; i < n; i++)
			if (strlen(m[i].name) == wlen && memcmp(m[i].name, want, wlen) == 0)
				break;
		if (i == n)
			fail_msg("%s: unknown cluster \"%.*s\"", where, (int)wlen, want);
		if (have != i) {
			print_error("%s: tenant moved: expected cluster %s, ring says %s\n", where,
			            m[i].name, m[have].name);
			moved++;
		}
		vectors++;
	}
	free(line);
	fclose(f);
	ring_free(r);
	if (moved > 0)
		fail_msg("%s: %u of %u golden tenants changed cluster: placement is part of the "
		         "contract (README \"Ring algorithm\")",
		         file, moved, vectors);
	if (vectors < MIN_GOLDEN_LINES)
		fail_msg("%s: only %u vectors (truncated file?)", file, vectors);
}

static void test_ring_golden_two_clusters(void **state)
{
	static const struct ring_member m[] = {{"a", 1}, {"b", 1}};

	check_golden(DATA_DIR "ring_vectors_ab.tsv", m, ARRAY_SIZE(m), 256);
}

static void test_ring_golden_three_weighted_clusters(void **state)
{
	static const struct ring_member m[] = {{"a", 1}, {"b", 1}, {"c", 2}};

	check_golden(DATA_DIR "ring_vectors_abc.tsv", m, ARRAY_SIZE(m), 256);
}

/* A few vectors in the code too, so a damaged data file cannot hide a move. */
static void test_ring_golden_inline(void **state)
{
	static const struct ring_member m[] = {{"a", 1}, {"b", 1}};
	static const struct {
		const char *tenant;
		size_t len;
		size_t want;
	} v[] = {
	        {"42", 2, 1},   {"042", 3, 1},    {"", 0, 1},
	        {"0", 1, 0},    {"10", 2, 0},     {"acme", 4, 1},
	        {"ACME", 4, 0}, {"\0\1\2", 3, 1}, {"caf\xc3\xa9", 5, 0},
	};
	struct ring *r = build_ok(m, ARRAY_SIZE(m), 256);
	size_t i;

	for (i = 0; i < ARRAY_SIZE(v); i++)
		assert_int_equal(ring_lookup(r, v[i].tenant, v[i].len), v[i].want);
	ring_free(r);
}

/* ---- against a straightforward reference -------------------------------- */

struct ref_point {
	uint64_t hash;
	const char *name;
	size_t member;
};

static int cmp_ref(const void *a, const void *b)
{
	const struct ref_point *pa = a, *pb = b;

	if (pa->hash != pb->hash)
		return pa->hash < pb->hash ? -1 : 1;
	return strcmp(pa->name, pb->name);
}

/* The algorithm of ring.h written the obvious way: linear scan, snprintf keys. */
static void test_ring_matches_reference(void **state)
{
	static const struct ring_member m[] = {{"east", 2}, {"west", 1}, {"c-3", 3}, {"z", 1}};
	static const uint32_t vnodes_list[] = {1, 3, 64};
	size_t vi;

	for (vi = 0; vi < ARRAY_SIZE(vnodes_list); vi++) {
		uint32_t vnodes = vnodes_list[vi];
		struct ring *r = build_ok(m, ARRAY_SIZE(m), vnodes);
		struct ref_point *pts;
		size_t npts = 0, i, k;
		unsigned t, wrapped = 0;

		for (i = 0; i < ARRAY_SIZE(m); i++)
			npts += vnodes * m[i].weight;
		assert_int_equal(ring_points(r), npts);
		pts = calloc(npts, sizeof(*pts));
		assert_non_null(pts);
		k = 0;
		for (i = 0; i < ARRAY_SIZE(m); i++) {
			uint32_t j;

			for (j = 0; j < vnodes * m[i].weight; j++) {
				char key[64];
				int len = snprintf(key, sizeof(key), "%s#%u", m[i].name, j);

				pts[k++] = (struct ref_point){XXH3_64bits(key, (size_t)len),
				                              m[i].name, i};
			}
		}
		qsort(pts, npts, sizeof(*pts), cmp_ref);
		for (t = 0; t < 20000; t++) {
			char key[16];
			size_t len = tenant_key(key, sizeof(key), t), want = pts[0].member;
			uint64_t h = XXH3_64bits(key, len);

			for (k = 0; k < npts; k++) {
				if (pts[k].hash >= h) {
					want = pts[k].member;
					break;
				}
			}
			wrapped += k == npts;
			assert_int_equal(ring_lookup(r, key, len), want);
		}
		/* With a handful of points, the wrap-around path must be hit. */
		if (vnodes == 1)
			assert_true(wrapped > 0);
		free(pts);
		ring_free(r);
	}
}

/* ---- properties --------------------------------------------------------- */

static void count_shares(const struct ring *r, size_t *counts)
{
	unsigned i;

	for (i = 0; i < NUM_TENANTS; i++) {
		char key[16];
		size_t len = tenant_key(key, sizeof(key), i);

		counts[ring_lookup(r, key, len)]++;
	}
}

static void test_ring_adding_cluster_moves_a_third_onto_it(void **state)
{
	static const struct ring_member two[] = {{"a", 1}, {"b", 1}};
	static const struct ring_member three[] = {{"a", 1}, {"b", 1}, {"c", 1}};
	struct ring *r2 = build_ok(two, 2, 256), *r3 = build_ok(three, 3, 256);
	unsigned i, moved = 0, between_old = 0;
	double frac;

	for (i = 0; i < NUM_TENANTS; i++) {
		char key[16];
		size_t len = tenant_key(key, sizeof(key), i);
		size_t before = ring_lookup(r2, key, len), after = ring_lookup(r3, key, len);

		if (before != after) {
			moved++;
			if (after != 2)
				between_old++;
		}
	}
	frac = (double)moved / NUM_TENANTS;
	print_message("adding c moved %.4f of %d tenants\n", frac, NUM_TENANTS);
	assert_int_equal(between_old, 0);
	assert_true(frac >= 0.30 && frac <= 0.37);
	ring_free(r2);
	ring_free(r3);
}

static void test_ring_weights_hold(void **state)
{
	static const struct ring_member m[] = {{"a", 1}, {"b", 3}};
	struct ring *r = build_ok(m, 2, 256);
	size_t counts[2] = {0, 0};
	double a, b;

	count_shares(r, counts);
	a = 100.0 * (double)counts[0] / NUM_TENANTS;
	b = 100.0 * (double)counts[1] / NUM_TENANTS;
	print_message("weights 1:3 -> %.2f%% / %.2f%%\n", a, b);
	assert_true(a >= 22.0 && a <= 28.0);
	assert_true(b >= 72.0 && b <= 78.0);
	assert_int_equal(ring_points(r), 4 * 256);
	ring_free(r);
}

static void test_ring_equal_clusters_balanced(void **state)
{
	static const struct ring_member m[] = {{"a", 1}, {"b", 1}};
	struct ring *r = build_ok(m, 2, 256);
	size_t counts[2] = {0, 0};

	count_shares(r, counts);
	print_message("equal weights -> %zu / %zu\n", counts[0], counts[1]);
	assert_true(counts[0] >= NUM_TENANTS * 45 / 100 && counts[0] <= NUM_TENANTS * 55 / 100);
	assert_true(counts[1] >= NUM_TENANTS * 45 / 100 && counts[1] <= NUM_TENANTS * 55 / 100);
	ring_free(r);
}

/*
 * Two builds agree, and the order of the members does not matter: points
 * depend on names only, so a reordered config places every tenant alike.
 */
static void test_ring_build_is_deterministic(void **state)
{
	static const struct ring_member m[] = {{"a", 1}, {"b", 2}, {"c", 1}};
	static const struct ring_member perm[] = {{"c", 1}, {"a", 1}, {"b", 2}};
	static const size_t perm_to_m[] = {2, 0, 1};
	struct ring *r1 = build_ok(m, 3, 128), *r2 = build_ok(m, 3, 128);
	struct ring *rp = build_ok(perm, 3, 128);
	unsigned i;

	for (i = 0; i < NUM_TENANTS; i++) {
		char key[16];
		size_t len = tenant_key(key, sizeof(key), i);
		size_t c1 = ring_lookup(r1, key, len);

		assert_int_equal(c1, ring_lookup(r2, key, len));
		assert_int_equal(c1, perm_to_m[ring_lookup(rp, key, len)]);
	}
	ring_free(r1);
	ring_free(r2);
	ring_free(rp);
}

static void expect_reject(const struct ring_member *m, size_t n, uint32_t vnodes,
                          const char *reason)
{
	char err[256] = "stale";
	struct ring *r = ring_build(m, n, vnodes, err, sizeof(err));

	if (r != NULL) {
		ring_free(r);
		fail_msg("ring_build accepted a bad ring (expected \"%s\")", reason);
	}
	if (strstr(err, reason) == NULL)
		fail_msg("err \"%s\" does not mention \"%s\"", err, reason);
}

static void test_ring_build_rejects_bad_input(void **state)
{
	static const struct ring_member dup[] = {{"a", 1}, {"b", 1}, {"a", 2}};
	static const struct ring_member zero_w[] = {{"a", 1}, {"b", 0}};
	static const struct ring_member ok[] = {{"a", 1}, {"b", 1}};
	static const struct ring_member empty[] = {{"a", 1}, {"", 1}};
	static const struct ring_member null_name[] = {{NULL, 1}};
	static const struct ring_member heavy[] = {{"a", 257}};
	struct ring_member *many;
	size_t i;

	expect_reject(dup, 3, 256, "duplicate cluster name \"a\"");
	expect_reject(zero_w, 2, 256, "cluster \"b\": weight must be at least 1");
	expect_reject(ok, 2, 0, "vnodes must be at least 1");
	expect_reject(ok, 0, 256, "no clusters");
	expect_reject(NULL, 0, 256, "no clusters");
	expect_reject(empty, 2, 256, "cluster 1 has an empty name");
	expect_reject(null_name, 1, 256, "cluster 0 has an empty name");
	expect_reject(heavy, 1, 256, "cluster \"a\": vnodes * weight = 65792 (at most 65536)");

	/* Every problem is reported, not only the first. */
	expect_reject(zero_w, 2, 0, "vnodes must be at least 1; cluster \"b\": weight must be");

	many = calloc(65536, sizeof(*many));
	assert_non_null(many);
	for (i = 0; i < 65536; i++)
		many[i] = (struct ring_member){"x", 1};
	expect_reject(many, 65536, 1, "too many clusters: 65536 (at most 65535)");
	free(many);
}

static void test_ring_build_accepts_limits(void **state)
{
	static const struct ring_member max[] = {{"a", 256}, {"b", 1}};
	static const struct ring_member one[] = {{"only", 1}};
	struct ring *r = build_ok(max, 2, 256);
	unsigned i;

	assert_int_equal(ring_points(r), 65536 + 256);
	ring_free(r);

	/* One cluster with one point takes every tenant. */
	r = build_ok(one, 1, 1);
	assert_int_equal(ring_points(r), 1);
	for (i = 0; i < 1000; i++) {
		char key[16];
		size_t len = tenant_key(key, sizeof(key), i);

		assert_int_equal(ring_lookup(r, key, len), 0);
	}
	ring_free(r);
}

static void test_ring_err_may_be_null(void **state)
{
	static const struct ring_member dup[] = {{"a", 1}, {"a", 1}};
	static const struct ring_member ok[] = {{"a", 1}};
	char tiny[8] = "xxxxxxx";
	struct ring *r;

	assert_null(ring_build(dup, 2, 1, NULL, 0));
	/* A short buffer is truncated, never overrun, and stays terminated. */
	assert_null(ring_build(dup, 2, 1, tiny, sizeof(tiny)));
	assert_string_equal(tiny, "duplica");
	r = ring_build(ok, 1, 1, NULL, 0);
	assert_non_null(r);
	ring_free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_ring_golden_two_clusters),
	        cmocka_unit_test(test_ring_golden_three_weighted_clusters),
	        cmocka_unit_test(test_ring_golden_inline),
	        cmocka_unit_test(test_ring_matches_reference),
	        cmocka_unit_test(test_ring_adding_cluster_moves_a_third_onto_it),
	        cmocka_unit_test(test_ring_weights_hold),
	        cmocka_unit_test(test_ring_equal_clusters_balanced),
	        cmocka_unit_test(test_ring_build_is_deterministic),
	        cmocka_unit_test(test_ring_build_rejects_bad_input),
	        cmocka_unit_test(test_ring_build_accepts_limits),
	        cmocka_unit_test(test_ring_err_may_be_null),
	};

	return cmocka_run_group_tests_name("ring", tests, NULL, NULL);
}
