/*
 * dir_bench.c - the tenant directory at ten million rows (issue 12).
 *
 * Links the router's pure modules (src/directory.c, src/pins.c, src/ring.c,
 * src/route.c) and measures, for N rows (default 10 million):
 *   - parse + build: N COPY text rows (as PostgreSQL sends them) parsed with
 *     dir_parse_row() and added with dir_builder_add(), then sealed; the time
 *     and the bytes per row (dir_memory, and the RSS growth);
 *   - ns per route_place() (directory first, then pins and ring) over random
 *     tenants with a row, and without one; "lat" chains each lookup to the
 *     previous answer (one decision on a cold table, as a connect sees it),
 *     "thr" runs them back to back;
 *   - dir_apply() of 1, 100 and 10000 changed rows over the N-row base: the
 *     work an incremental change costs (done on the directory thread; the
 *     event loops only wait for a pointer swap under a write lock);
 *   - the time to free a snapshot (done on the directory thread too).
 *
 *   dir_bench [-n ROWS] [-q LOOKUPS]
 *
 * Output: "key<TAB>value" lines. Exit 1 when a lookup disagrees with its row.
 * The load from a real PostgreSQL (COPY over a socket into the router's own
 * thread) is measured by tests/bench/dir_load.sh.
 *
 * Build:
 *   cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude tests/bench/dir_bench.c src/directory.c \
 *      src/pins.c src/ring.c src/route.c -lxxhash -o build/bench/dir_bench
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "directory.h"
#include "ring.h"
#include "route.h"

#define MAX_TENANT 32

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "VmRSS:", 6) == 0) {
			kib = strtol(line + 6, NULL, 10);
			break;
		}
	}
	fclose(f);
	return kib;
}

static int row_name(char *buf, uint64_t i)
{
	return snprintf(buf, MAX_TENANT, "t%08" PRIx32 "-%" PRIu64,
	                (uint32_t)(i * UINT64_C(2654435761)), i);
}

static int miss_name(char *buf, uint64_t i)
{
	return snprintf(buf, MAX_TENANT, "u%08" PRIx32 "-%" PRIu64,
	                (uint32_t)(i * UINT64_C(2246822519)), i);
}

static const char *const names[] = {"a", "b", "c"};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Query tenants, made before the clock starts (as a connect has its tenant already). */
struct queries {
	char (*name)[MAX_TENANT];
	uint8_t *len;
	uint8_t *want; /* cluster index for a hit */
	uint64_t n;
};

static int make_queries(struct queries *qs, uint64_t rows, uint64_t q, bool hits)
{
	uint64_t s = 88172645463325252ull;

	qs->name = malloc(q * MAX_TENANT);
	qs->len = malloc(q);
	qs->want = malloc(q);
	qs->n = q;
	if (qs->name == NULL || qs->len == NULL || qs->want == NULL)
		return -1;
	for (uint64_t k = 0; k < q; k++) {
		uint64_t i = rnd(&s) % rows;

		qs->len[k] = (uint8_t)(hits ? row_name(qs->name[k], i) : miss_name(qs->name[k], i));
		qs->want[k] = (uint8_t)(i % 3);
	}
	return 0;
}

static void free_queries(struct queries *qs)
{
	free(qs->name);
	free(qs->len);
	free(qs->want);
}

/* ns per lookup; chained makes each lookup's index depend on the previous answer. */
static double lookups(const struct dir *d, const struct ring *ring, const struct queries *qs,
                      bool hits, bool chained, int *bad)
{
	struct route_place pl;
	uint64_t dep = 0;
	double t0 = now_s();

	for (uint64_t k = 0; k < qs->n; k++) {
		uint64_t i = chained ? (k + dep) % qs->n : k;

		route_place(d, NULL, ring, names, 3, qs->name[i], qs->len[i], &pl);
		if (hits && (pl.source != ROUTE_DIRECTORY || pl.cluster != qs->want[i]))
			(*bad)++;
		dep = (uint64_t)pl.cluster & 1; /* a data dependency: the next lookup waits */
	}
	return (now_s() - t0) * 1e9 / (double)qs->n;
}

int main(int argc, char **argv)
{
	uint64_t n = 10000000, q = 2000000;
	struct ring_member mem[] = {{"a", 1}, {"b", 1}, {"c", 1}};
	struct ring *ring;
	struct dir_builder *b;
	struct dir *d;
	char *copy, *p;
	size_t copylen = 0;
	long rss0, rss1;
	double t0, t_parse;
	int opt, bad = 0;
	uint8_t buf[DIR_ROW_BUF];

	while ((opt = getopt(argc, argv, "n:q:")) != -1) {
		if (opt == 'n')
			n = strtoull(optarg, NULL, 10);
		else if (opt == 'q')
			q = strtoull(optarg, NULL, 10);
		else
			return 2;
	}
	ring = ring_build(mem, 3, 256, NULL, 0);
	/* The COPY text PostgreSQL would send, in one buffer (as rows arrive, one by one). */
	copy = malloc(n * 48 + 1);
	if (ring == NULL || copy == NULL)
		return 1;
	p = copy;
	for (uint64_t i = 0; i < n; i++) {
		p += row_name(p, i);
		p += sprintf(p, "\t%s\tactive\t%" PRIu64 "\n", names[i % 3], i + 1);
	}
	copylen = (size_t)(p - copy);
	printf("rows\t%" PRIu64 "\n", n);
	printf("copy_text_mb\t%.1f\n", (double)copylen / 1e6);

	rss0 = rss_kib();
	t0 = now_s();
	b = dir_builder_new(names, 3, n + n / 16, NULL, NULL);
	if (b == NULL)
		return 1;
	for (char *row = copy; row < copy + copylen;) {
		char *nl = memchr(row, '\n', (size_t)(copy + copylen - row));
		struct dir_row r;

		if (dir_parse_row((const uint8_t *)row, (size_t)(nl - row), buf, sizeof(buf), &r) !=
		            PROTO_OK ||
		    dir_builder_add(b, &r) != 0)
			return 1;
		row = nl + 1;
	}
	d = dir_builder_finish(b, NULL, 0);
	t_parse = now_s() - t0;
	rss1 = rss_kib();
	if (d == NULL)
		return 1;
	free(copy);
	printf("parse_build_s\t%.2f\n", t_parse);
	printf("dir_memory_mb\t%.1f\n", (double)dir_memory(d) / 1e6);
	printf("bytes_per_row\t%.1f\n", (double)dir_memory(d) / (double)n);
	printf("rss_growth_mb\t%.1f\n", (double)(rss1 - rss0) / 1024.0);

	{
		struct queries hit, miss;

		if (make_queries(&hit, n, q, true) < 0 || make_queries(&miss, n, q, false) < 0)
			return 1;
		printf("lookup_hit_lat_ns\t%.0f\n", lookups(d, ring, &hit, true, true, &bad));
		printf("lookup_hit_thr_ns\t%.0f\n", lookups(d, ring, &hit, true, false, &bad));
		printf("lookup_miss_lat_ns\t%.0f\n", lookups(d, ring, &miss, false, true, &bad));
		printf("lookup_miss_thr_ns\t%.0f\n", lookups(d, ring, &miss, false, false, &bad));
		free_queries(&hit);
		free_queries(&miss);
	}

	{
		static const uint64_t sizes[] = {1, 100, 10000};
		struct dir *cur = dir_ref(d);

		for (size_t k = 0; k < 3; k++) {
			uint64_t m = sizes[k];
			struct dir_row *rows = calloc(m, sizeof(*rows));
			char(*tn)[MAX_TENANT] = calloc(m, MAX_TENANT);
			struct dir *nd;
			double t1;

			if (rows == NULL || tn == NULL)
				return 1;
			for (uint64_t i = 0; i < m; i++) {
				uint64_t j = (i * 7919) % n;

				rows[i].tlen = (size_t)row_name(tn[i], j);
				rows[i].tenant = (const uint8_t *)tn[i];
				rows[i].cluster = names[(j + 1) % 3];
				rows[i].clen = 1;
				rows[i].state = "active";
				rows[i].slen = 6;
				rows[i].version = (int64_t)(n + i + 1);
			}
			t1 = now_s();
			nd = dir_apply(cur, rows, m, 0, NULL, NULL);
			printf("apply_%" PRIu64 "_rows_us\t%.0f\n", m, (now_s() - t1) * 1e6);
			if (nd == NULL)
				return 1;
			for (uint64_t i = 0; i < m; i++) {
				const char *cl = NULL;

				if (dir_lookup(nd, tn[i], rows[i].tlen,
				               XXH3_64bits(tn[i], rows[i].tlen),
				               &cl) != DIR_ACTIVE ||
				    strcmp(cl, rows[i].cluster) != 0)
					bad++;
			}
			dir_unref(nd); /* each size over the plain base */
			free(rows);
			free(tn);
		}
		dir_unref(cur);
	}
	t0 = now_s();
	dir_unref(d);
	printf("free_s\t%.3f\n", now_s() - t0);
	ring_free(ring);
	printf("lookup_errors\t%d\n", bad);
	return bad != 0;
}
