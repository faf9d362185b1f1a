/*
 * test_stats.c - unit tests for the metrics counters (src/stats.c), and the
 * two placement summaries metrics show: pins_digest() and ring_shares().
 *
 * The counters are process-wide, so each test uses names of its own and
 * looks at differences, never at absolute values it did not make.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "pins.h"
#include "ring.h"
#include "stats.h"

static void test_stats_cluster_is_found_again(void **state)
{
	struct stats_cluster *a = stats_cluster("alpha"), *b = stats_cluster("beta");

	assert_non_null(a);
	assert_non_null(b);
	assert_ptr_not_equal(a, b);
	assert_ptr_equal(stats_cluster("alpha"), a);
	assert_null(stats_cluster(""));
	assert_null(stats_cluster(NULL));
}

static void test_stats_session_states_move(void **state)
{
	struct stats_cluster *c = stats_cluster("moves");
	struct stats_cluster_view v;
	int64_t before[STATS_MAX_STATES], after[STATS_MAX_STATES];

	stats_states(before);
	stats_session_new(0);
	stats_session_state(NULL, 0, 2);
	stats_session_routed(c, false, 2);
	stats_session_state(c, 2, 5);
	assert_true(stats_cluster_read("moves", &v));
	assert_int_equal(v.sessions[2], 0);
	assert_int_equal(v.sessions[5], 1);
	assert_int_equal(v.routed_ring, 1);
	assert_int_equal(v.routed_pin, 0);
	stats_states(after);
	assert_int_equal(after[0] - before[0], 0);
	assert_int_equal(after[5] - before[5], 1);
	stats_session_end(c, 5);
	assert_true(stats_cluster_read("moves", &v));
	assert_int_equal(v.sessions[5], 0);
	assert_false(stats_cluster_read("never-seen", &v));
}

static void test_stats_refusals_counted_and_recent_newest_first(void **state)
{
	struct stats_refusal r[STATS_RECENT];
	struct stats_count c[STATS_MAX_SQLSTATES];
	char tenant[400];
	size_t n;
	uint64_t got = 0;

	memset(tenant, 'x', sizeof(tenant) - 1);
	tenant[sizeof(tenant) - 1] = '\0';
	for (int i = 0; i < STATS_RECENT + 5; i++)
		stats_refusal("57P03", "b", "t");
	stats_refusal("08004", NULL, tenant);
	n = stats_recent_refusals(r, STATS_RECENT);
	assert_int_equal(n, STATS_RECENT);
	assert_string_equal(r[0].sqlstate, "08004");
	assert_string_equal(r[0].cluster, "");
	assert_int_equal(strlen(r[0].tenant), sizeof(r[0].tenant) - 1); /* cut to fit */
	assert_string_equal(r[1].sqlstate, "57P03");
	assert_true(r[0].unix_ms > 0);
	n = stats_refusal_counts(c, STATS_MAX_SQLSTATES);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(c[i].sqlstate, "57P03") == 0)
			got = c[i].n;
	}
	assert_int_equal(got, STATS_RECENT + 5);
}

static void test_stats_histogram_buckets(void **state)
{
	struct stats_hist_view v0, v1;

	stats_hist_read(STATS_LOGIN, &v0);
	stats_observe(STATS_LOGIN, 300000);         /* 0.3 ms: first bucket */
	stats_observe(STATS_LOGIN, 1000000);        /* 1 ms: le=0.001 (bounds are inclusive) */
	stats_observe(STATS_LOGIN, 60000000000ull); /* 60 s: +Inf */
	stats_hist_read(STATS_LOGIN, &v1);
	assert_int_equal(v1.count - v0.count, 3);
	assert_int_equal(v1.bucket[0] - v0.bucket[0], 1);
	assert_int_equal(v1.bucket[1] - v0.bucket[1], 1);
	assert_int_equal(v1.bucket[STATS_NBUCKETS] - v0.bucket[STATS_NBUCKETS], 1);
	assert_true(v1.sum - v0.sum > 60.0);
	assert_true(stats_bucket_bound(1) == 0.001);
}

static void test_stats_bytes_and_reloads(void **state)
{
	uint64_t b = stats_bytes_total(STATS_TO_CLIENT), ok = stats_reloads(true);

	stats_bytes(STATS_TO_CLIENT, 100);
	stats_bytes(STATS_TO_CLIENT, 23);
	stats_reload(true);
	stats_reload(false);
	assert_int_equal(stats_bytes_total(STATS_TO_CLIENT) - b, 123);
	assert_int_equal(stats_reloads(true) - ok, 1);
}

static void test_stats_ring_shares_sum_to_one(void **state)
{
	struct ring_member m[3] = {{"a", 1}, {"b", 1}, {"c", 2}};
	struct ring *r = ring_build(m, 3, 256, NULL, 0);
	double share[3];

	assert_non_null(r);
	ring_shares(r, share, 3);
	assert_true(share[0] + share[1] + share[2] > 0.999999);
	assert_true(share[0] + share[1] + share[2] < 1.000001);
	/* Weight 2 owns about half the space. */
	assert_true(share[2] > 0.4 && share[2] < 0.6);
	ring_free(r);
	r = ring_build(m, 1, 1, NULL, 0);
	ring_shares(r, share, 1);
	assert_true(share[0] == 1.0);
	ring_free(r);
}

static void test_stats_pins_digest_ignores_order_not_content(void **state)
{
	const char *names1[] = {"a", "b"}, *names2[] = {"b", "a"};
	struct pins *p = pins_new(), *q = pins_new(), *w = pins_new();
	size_t per[2];

	assert_int_equal(pins_add(p, "t1", 2, 0), 0);
	assert_int_equal(pins_add(p, "t2", 2, 1), 0);
	/* The same pins, added the other way round and with the clusters listed the other way. */
	assert_int_equal(pins_add(q, "t2", 2, 0), 0);
	assert_int_equal(pins_add(q, "t1", 2, 1), 0);
	assert_int_equal(pins_add(w, "t1", 2, 1), 0);
	assert_int_equal(pins_add(w, "t2", 2, 1), 0);
	assert_true(pins_digest(p, names1, 2, per) == pins_digest(q, names2, 2, NULL));
	assert_int_equal(per[0], 1);
	assert_int_equal(per[1], 1);
	assert_true(pins_digest(p, names1, 2, NULL) != pins_digest(w, names1, 2, NULL));
	pins_free(p);
	pins_free(q);
	pins_free(w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_stats_cluster_is_found_again),
	        cmocka_unit_test(test_stats_session_states_move),
	        cmocka_unit_test(test_stats_refusals_counted_and_recent_newest_first),
	        cmocka_unit_test(test_stats_histogram_buckets),
	        cmocka_unit_test(test_stats_bytes_and_reloads),
	        cmocka_unit_test(test_stats_ring_shares_sum_to_one),
	        cmocka_unit_test(test_stats_pins_digest_ignores_order_not_content),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
