/*
 * test_pins.c - unit tests for the pinned-tenant table (src/pins.c) and the
 * routing decision built on it (src/route.c).
 *
 * Pins files are written to /tmp with mkstemp from the tables below (so CRLF
 * and a missing final newline survive editors and git) and removed after
 * each test. The reports of a bad file are compared byte for byte, because
 * they are what an operator reads from --check and reload.
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "pins.h"
#include "ring.h"
#include "route.h"

static const char *const cluster_names[] = {"a", "b", "c"};
static const struct pins_clusters clusters = {cluster_names, 3};

/* Writes len bytes to a new file under /tmp; returns its path (free it). */
static char *write_temp(const void *data, size_t len)
{
	char *path = strdup("/tmp/test_pins.XXXXXX");
	FILE *f;
	int fd;

	assert_non_null(path);
	fd = mkstemp(path);
	assert_true(fd != -1);
	f = fdopen(fd, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	return path;
}

static void remove_temp(char *path)
{
	unlink(path);
	free(path);
}

static struct pins *new_pins(void)
{
	struct pins *p = pins_new();

	assert_non_null(p);
	return p;
}

/* ---- pins_add / pins_lookup ---------------------------------------------- */

static void test_pins_lookup_exact_bytes(void **state)
{
	struct pins *p = new_pins();

	assert_int_equal(pins_add(p, "42", 2, 1), 0);
	assert_int_equal(pins_lookup(p, "42", 2), 1);
	assert_int_equal(pins_lookup(p, "042", 3), -1);
	assert_int_equal(pins_lookup(p, "4", 1), -1);
	assert_int_equal(pins_lookup(p, "420", 3), -1);
	assert_int_equal(pins_add(p, "042", 3, 0), 0);
	assert_int_equal(pins_lookup(p, "042", 3), 0);
	assert_int_equal(pins_lookup(p, "42", 2), 1);

	/* Opaque bytes: an embedded NUL is part of the tenant. */
	assert_int_equal(pins_add(p, "a\0b", 3, 2), 0);
	assert_int_equal(pins_lookup(p, "a\0b", 3), 2);
	assert_int_equal(pins_lookup(p, "a", 1), -1);
	assert_int_equal(pins_count(p), 3);
	pins_free(p);
}

static void test_pins_conflicting_add_returns_eexist(void **state)
{
	struct pins *p = new_pins();

	assert_int_equal(pins_add(p, "42", 2, 1), 0);
	assert_int_equal(pins_add(p, "42", 2, 0), -EEXIST);
	assert_int_equal(pins_add(p, "42", 2, 1), 0); /* same cluster again: fine */
	assert_int_equal(pins_lookup(p, "42", 2), 1);
	assert_int_equal(pins_count(p), 1);
	pins_free(p);
}

static void test_pins_add_rejects_bad_tenant(void **state)
{
	struct pins *p = new_pins();
	char longest[PINS_MAX_TENANT_LEN + 1];

	memset(longest, 'x', sizeof(longest));
	assert_int_equal(pins_add(p, "", 0, 0), -EINVAL);
	assert_int_equal(pins_add(p, longest, PINS_MAX_TENANT_LEN + 1, 0), -EINVAL);
	assert_int_equal(pins_add(p, longest, PINS_MAX_TENANT_LEN, 2), 0);
	assert_int_equal(pins_lookup(p, longest, PINS_MAX_TENANT_LEN), 2);
	assert_int_equal(pins_lookup(p, longest, PINS_MAX_TENANT_LEN + 1), -1);
	assert_int_equal(pins_lookup(p, "", 0), -1);
	assert_int_equal(pins_count(p), 1);
	pins_free(p);
}

/* Many adds through several table growths; the full cluster range survives. */
static void test_pins_grow_keeps_every_pin(void **state)
{
	struct pins *p = new_pins();
	unsigned i;

	for (i = 0; i < 200000; i++) {
		char key[16];
		int len = snprintf(key, sizeof(key), "%u", i);

		assert_int_equal(pins_add(p, key, (size_t)len, (uint16_t)(i * 7919u)), 0);
	}
	pins_seal(p);
	assert_int_equal(pins_count(p), 200000);
	for (i = 0; i < 200000; i++) {
		char key[16];
		int len = snprintf(key, sizeof(key), "%u", i);

		assert_int_equal(pins_lookup(p, key, (size_t)len), (uint16_t)(i * 7919u));
		len = snprintf(key, sizeof(key), "0%u", i); /* never added */
		assert_int_equal(pins_lookup(p, key, (size_t)len), -1);
	}
	pins_free(p);
}

/* ---- pins_load_file ------------------------------------------------------ */

static void test_pins_load_good_file(void **state)
{
	static const char text[] = "# pins for the demo\r\n"
	                           "\r\n"
	                           "42 b\r\n"
	                           "  042\ta   # leading zeros: another tenant\n"
	                           "\t \n"
	                           "acme\t\tc\t\n"
	                           "   # an indented comment\n"
	                           "caf\xc3\xa9 a#comment right after the cluster\n"
	                           "42   b\n" /* the same pin twice is fine */
	                           "last c";  /* no final newline */
	char *path = write_temp(text, sizeof(text) - 1);
	struct pins *p = new_pins();
	char err[1024] = "";

	assert_int_equal(pins_load_file(p, path, &clusters, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	assert_int_equal(pins_count(p), 5);
	assert_int_equal(pins_lookup(p, "42", 2), 1);
	assert_int_equal(pins_lookup(p, "042", 3), 0);
	assert_int_equal(pins_lookup(p, "acme", 4), 2);
	assert_int_equal(pins_lookup(p, "caf\xc3\xa9", 5), 0);
	assert_int_equal(pins_lookup(p, "last", 4), 2);
	assert_int_equal(pins_lookup(p, "#", 1), -1);
	pins_free(p);
	remove_temp(path);
}

static void test_pins_load_empty_file(void **state)
{
	char *path = write_temp("", 0);
	struct pins *p = new_pins();
	char err[64] = "";

	assert_int_equal(pins_load_file(p, path, &clusters, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	assert_int_equal(pins_count(p), 0);
	pins_free(p);
	remove_temp(path);
}

/* A file image built piece by piece, so it may hold NUL bytes. */
struct text {
	char buf[2048];
	size_t len;
};

static void put(struct text *t, const char *s, size_t len)
{
	assert_true(len <= sizeof(t->buf) - t->len);
	memcpy(t->buf + t->len, s, len);
	t->len += len;
}

#define PUT(t, lit) put((t), (lit), sizeof(lit) - 1)

static void test_pins_load_bad_file_reports_each_line(void **state)
{
	char longest[PINS_MAX_TENANT_LEN + 1], err[4096] = "before\n", *want, *path;
	struct pins *p = new_pins();
	struct text t = {.len = 0};

	memset(longest, 'x', sizeof(longest));
	PUT(&t, "ok1 a\n");                /* 1 */
	PUT(&t, "lonely\n");               /* 2 */
	PUT(&t, "t1 nosuch\n");            /* 3 */
	PUT(&t, "t2 a extra fields\n");    /* 4 */
	put(&t, longest, sizeof(longest)); /* 5: 256 bytes */
	PUT(&t, " a\n");
	PUT(&t, "ok1 b\n");                /* 6 */
	PUT(&t, "t3 b # fine\n");          /* 7 */
	PUT(&t, "nul\0x a\n");             /* 8 */
	PUT(&t, "t3 c\r\n");               /* 9 */
	PUT(&t, "\x01\xff\"q\" nosuch\n"); /* 10 */
	PUT(&t, "inline b\n");             /* 11 */
	PUT(&t, "ok2 c");                  /* 12 */
	path = write_temp(t.buf, t.len);

	/* An inline pin from the config, which the file then contradicts. */
	assert_int_equal(pins_add(p, "inline", 6, 0), 0);
	assert_int_equal(pins_load_file(p, path, &clusters, err, sizeof(err)), 9);
	assert_true(
	        asprintf(&want,
	                 "before\n"
	                 "%1$s:2: missing cluster after tenant \"lonely\"\n"
	                 "%1$s:3: unknown cluster \"nosuch\" for tenant \"t1\"\n"
	                 "%1$s:4: unexpected field \"extra\" after cluster (expected TENANT "
	                 "CLUSTER)\n"
	                 "%1$s:5: tenant \"%2$.64s...\" is longer than 255 bytes\n"
	                 "%1$s:6: tenant \"ok1\" is pinned to \"b\" here but to \"a\" at line 1\n"
	                 "%1$s:8: line contains a NUL byte\n"
	                 "%1$s:9: tenant \"t3\" is pinned to \"c\" here but to \"b\" at line 7\n"
	                 "%1$s:10: unknown cluster \"nosuch\" for tenant \"\\x01\\xff\\\"q\\\"\"\n"
	                 "%1$s:11: tenant \"inline\" is pinned to \"b\" here but to \"a\"\n",
	                 path, longest) > 0);
	assert_string_equal(err, want);
	/* The good lines were still added; the caller decides to drop the table. */
	assert_int_equal(pins_lookup(p, "ok1", 3), 0);
	assert_int_equal(pins_lookup(p, "t3", 2), 1);
	assert_int_equal(pins_lookup(p, "ok2", 3), 2);
	assert_int_equal(pins_lookup(p, "inline", 6), 0);
	free(want);
	pins_free(p);
	remove_temp(path);
}

static void test_pins_load_caps_reports(void **state)
{
	char text[25 * 16], err[8192] = "", *path, *want;
	struct pins *p = new_pins();
	size_t off = 0, used = 0;
	unsigned i;
	int lines = 0;

	for (i = 0; i < 25; i++)
		off += (size_t)snprintf(text + off, sizeof(text) - off, "t%u zz\n", i);
	path = write_temp(text, off);
	assert_int_equal(pins_load_file(p, path, &clusters, err, sizeof(err)), 25);
	for (i = 0; err[used] != '\0'; i++) {
		char line[256];
		size_t n = strcspn(err + used, "\n");

		snprintf(line, sizeof(line), "%s:%u: unknown cluster \"zz\" for tenant \"t%u\"",
		         path, i + 1, i);
		if (i == 20)
			snprintf(line, sizeof(line), "... and 5 more");
		assert_true(asprintf(&want, "%.*s", (int)n, err + used) > 0);
		assert_string_equal(want, line);
		free(want);
		used += n + 1;
		lines++;
	}
	assert_int_equal(lines, 21);
	pins_free(p);
	remove_temp(path);
}

/* A short err buffer is truncated and terminated, never overrun. */
static void test_pins_load_truncates_err(void **state)
{
	char *path = write_temp("x zz\ny zz\n", 10);
	struct pins *p = new_pins();
	char err[16];

	memset(err, 0, sizeof(err));
	assert_int_equal(pins_load_file(p, path, &clusters, err, sizeof(err)), 2);
	assert_int_equal(strlen(err), sizeof(err) - 1);
	assert_int_equal(strncmp(err, path, sizeof(err) - 1), 0);
	assert_int_equal(pins_load_file(p, path, &clusters, NULL, 0), 2);
	pins_free(p);
	remove_temp(path);
}

static void test_pins_load_missing_file(void **state)
{
	struct pins *p = new_pins();
	char err[256] = "";

	assert_int_equal(pins_load_file(p, "/nonexistent/pins.txt", &clusters, err, sizeof(err)),
	                 -ENOENT);
	assert_string_equal(err, "/nonexistent/pins.txt: No such file or directory\n");
	assert_int_equal(pins_load_file(p, "/tmp", &clusters, err, sizeof(err)) < 0, true);
	pins_free(p);
}

/* A line beyond the read buffer is one problem; the next line still counts. */
static void test_pins_load_overlong_line(void **state)
{
	size_t big = 3u << 20, n = 0;
	char *text = malloc(big + 64), *path, *want;
	char err[1024] = "";
	struct pins *p = new_pins();

	assert_non_null(text);
	n += (size_t)sprintf(text, "first a\n");
	memset(text + n, 'y', big);
	n += big;
	n += (size_t)sprintf(text + n, " a\nafter b\nlast c\n");
	path = write_temp(text, n);
	assert_int_equal(pins_load_file(p, path, &clusters, err, sizeof(err)), 1);
	assert_true(asprintf(&want, "%s:2: line is too long (more than 1048575 bytes)\n", path) >
	            0);
	assert_string_equal(err, want);
	assert_int_equal(pins_lookup(p, "first", 5), 0);
	assert_int_equal(pins_lookup(p, "after", 5), 1);
	assert_int_equal(pins_lookup(p, "last", 4), 2);
	assert_int_equal(pins_count(p), 3);
	free(want);
	free(text);
	pins_free(p);
	remove_temp(path);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define MANY_PINS 1000000u

static void test_pins_load_million(void **state)
{
	static const char *const names[] = {"alpha", "beta", "gamma", "delta"};
	static const struct pins_clusters four = {names, 4};
	size_t cap = (size_t)MANY_PINS * 24, off = 0;
	char *text = malloc(cap), *path, err[256] = "";
	struct pins *p = new_pins();
	double t0, t1;
	unsigned i;

	assert_non_null(text);
	for (i = 0; i < MANY_PINS; i++)
		off += (size_t)snprintf(text + off, cap - off, "%s%u\t%s\n", i % 5 ? "" : "t", i,
		                        names[i % 4]);
	path = write_temp(text, off);
	free(text);

	t0 = now();
	assert_int_equal(pins_load_file(p, path, &four, err, sizeof(err)), 0);
	pins_seal(p);
	t1 = now();
	assert_string_equal(err, "");
	assert_int_equal(pins_count(p), MANY_PINS);
	print_message("loaded %u pins in %.3f s, %.1f bytes per pin\n", MANY_PINS, t1 - t0,
	              (double)pins_memory(p) / MANY_PINS);
	for (i = 0; i < MANY_PINS; i++) {
		char key[16];
		int len = snprintf(key, sizeof(key), "%s%u", i % 5 ? "" : "t", i);

		assert_int_equal(pins_lookup(p, key, (size_t)len), (int)(i % 4));
	}
	/* Slots plus arena: under 40 bytes a pin besides the tenant's own bytes. */
	assert_true(pins_memory(p) < (size_t)MANY_PINS * (40 + 7));
	pins_free(p);
	remove_temp(path);
}

/* ---- route ----------------------------------------------------------------- */

static void test_route_pinned_beats_ring(void **state)
{
	static const struct ring_member m[] = {{"a", 1}, {"b", 1}, {"c", 1}};
	char err[256] = "";
	struct ring *r = ring_build(m, 3, 256, err, sizeof(err));
	struct pins *p = new_pins();
	size_t ring_says, other;
	bool pinned = true;

	assert_non_null(r);
	ring_says = ring_lookup(r, "42", 2);
	other = (ring_says + 1) % 3;
	assert_int_equal(pins_add(p, "42", 2, (uint16_t)other), 0);
	pins_seal(p);

	assert_int_equal(route_lookup(p, r, "42", 2, &pinned), other);
	assert_true(pinned);
	/* "042" is another tenant: not pinned, so the ring decides. */
	assert_int_equal(route_lookup(p, r, "042", 3, &pinned), ring_lookup(r, "042", 3));
	assert_false(pinned);
	/* No pins table at all, and a caller that does not ask why. */
	pinned = true;
	assert_int_equal(route_lookup(NULL, r, "42", 2, &pinned), ring_says);
	assert_false(pinned);
	assert_int_equal(route_lookup(p, r, "42", 2, NULL), other);
	pins_free(p);
	ring_free(r);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = calloc(1, 4096);

	assert_non_null(f);
	assert_non_null(buf);
	assert_true(fread(buf, 1, 4095, f) < 4095);
	fclose(f);
	return buf;
}

/* PIN and UNPIN rewrite the file: other lines stay, the tenant's lines go, a new pin is last. */
static void test_pins_file_rewrite_and_commit(void **state)
{
	static const char body[] = "# pins\nacme alpha\n\nfoo beta # note\nacme alpha\nbar beta";
	char *path = write_temp(body, sizeof(body) - 1), tmp[4200], err[256], *got;
	bool found;

	assert_int_equal(pins_file_rewrite(path, "acme", 4, "beta", tmp, sizeof(tmp), &found, err,
					   sizeof(err)),
			 0);
	assert_true(found);
	assert_int_equal(pins_file_commit(tmp, path, err, sizeof(err)), 0);
	got = slurp(path);
	assert_string_equal(got, "# pins\n\nfoo beta # note\nbar beta\nacme beta\n");
	free(got);
	assert_int_equal(pins_file_rewrite(path, "zzz", 3, NULL, tmp, sizeof(tmp), &found, err,
					   sizeof(err)),
			 0);
	assert_false(found);
	unlink(tmp);
	assert_int_equal(pins_file_rewrite(path, "foo", 3, NULL, tmp, sizeof(tmp), &found, err,
					   sizeof(err)),
			 0);
	assert_true(found);
	assert_int_equal(pins_file_commit(tmp, path, err, sizeof(err)), 0);
	got = slurp(path);
	assert_string_equal(got, "# pins\n\nbar beta\nacme beta\n");
	free(got);
	unlink(path);
	/* A missing file reads as empty. */
	assert_int_equal(pins_file_rewrite(path, "n", 1, "alpha", tmp, sizeof(tmp), &found, err,
					   sizeof(err)),
			 0);
	assert_int_equal(pins_file_commit(tmp, path, err, sizeof(err)), 0);
	got = slurp(path);
	assert_string_equal(got, "n alpha\n");
	free(got);
	unlink(path);
	/* No directory: an error, no file left. */
	assert_true(pins_file_rewrite("/nonexistent/dir/pins", "n", 1, "alpha", tmp, sizeof(tmp),
				      &found, err, sizeof(err)) < 0);
	assert_true(strstr(err, "/nonexistent/dir/pins") != NULL);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_pins_lookup_exact_bytes),
	        cmocka_unit_test(test_pins_file_rewrite_and_commit),
	        cmocka_unit_test(test_pins_conflicting_add_returns_eexist),
	        cmocka_unit_test(test_pins_add_rejects_bad_tenant),
	        cmocka_unit_test(test_pins_grow_keeps_every_pin),
	        cmocka_unit_test(test_pins_load_good_file),
	        cmocka_unit_test(test_pins_load_empty_file),
	        cmocka_unit_test(test_pins_load_bad_file_reports_each_line),
	        cmocka_unit_test(test_pins_load_caps_reports),
	        cmocka_unit_test(test_pins_load_truncates_err),
	        cmocka_unit_test(test_pins_load_missing_file),
	        cmocka_unit_test(test_pins_load_overlong_line),
	        cmocka_unit_test(test_pins_load_million),
	        cmocka_unit_test(test_route_pinned_beats_ring),
	};

	return cmocka_run_group_tests_name("pins", tests, NULL, NULL);
}
