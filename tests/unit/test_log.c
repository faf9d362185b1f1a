/*
 * test_log.c - unit tests for the log rate limit (struct log_limit in
 * src/log.c): one line per interval, and every event counted in exactly one
 * line, whether the line comes with the next event or is asked for later.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "log.h"

static void test_log_limit_first_event_logs_at_once(void **state)
{
	struct log_limit l = {0};

	assert_int_equal(log_limit_hit(&l, 5000, 1000), 1);
	assert_int_equal(log_limit_due(&l, 5000, 1000), 0);
}

static void test_log_limit_holds_a_burst_and_counts_it_in_the_next_line(void **state)
{
	struct log_limit l = {0};

	assert_int_equal(log_limit_hit(&l, 1000, 1000), 1);
	for (uint64_t t = 1001; t < 2000; t += 10)
		assert_int_equal(log_limit_hit(&l, t, 1000), 0);
	/* 100 held back, and this one. */
	assert_int_equal(log_limit_hit(&l, 2000, 1000), 101);
	assert_int_equal(log_limit_hit(&l, 2500, 1000), 0);
}

static void test_log_limit_due_tells_the_tail_once(void **state)
{
	struct log_limit l = {0};

	assert_int_equal(log_limit_hit(&l, 0, 1000), 1);
	assert_int_equal(log_limit_hit(&l, 10, 1000), 0);
	assert_int_equal(log_limit_hit(&l, 20, 1000), 0);
	assert_int_equal(log_limit_due(&l, 999, 1000), 0);
	assert_int_equal(log_limit_due(&l, 1000, 1000), 2);
	assert_int_equal(log_limit_due(&l, 5000, 1000), 0);
	/* The tail's line starts a new interval. */
	assert_int_equal(log_limit_hit(&l, 1500, 1000), 0);
	assert_int_equal(log_limit_hit(&l, 2000, 1000), 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_log_limit_first_event_logs_at_once),
	        cmocka_unit_test(test_log_limit_holds_a_burst_and_counts_it_in_the_next_line),
	        cmocka_unit_test(test_log_limit_due_tells_the_tail_once),
	};

	return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
