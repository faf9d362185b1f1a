/*
 * route_bench.c - how fast is one routing decision with millions of pins?
 *
 * Links the router's own pure modules (src/ring.c, src/pins.c, src/route.c)
 * and measures, with a pins table of N pins (default 10 million):
 *   - the time pins_load_file() takes to load an N-line pins file, and the
 *     bytes the table holds per pin (pins_memory / count, and the RSS growth);
 *   - ns per route_lookup() over random tenants: pinned ones (a hit in the
 *     table), unpinned ones (a miss, then the ring), and a 50/50 mix;
 *     "thr" runs independent lookups back to back (the CPU may overlap their
 *     cache misses), "lat" chains each lookup to the previous result so they
 *     cannot overlap: that is the cost of one decision on a cold table, as a
 *     connect sees it.
 *
 *   route_bench [-n PINS] [-q QUERIES] [-f PINSFILE] [-w]
 *     -n  pins (default 10000000)
 *     -q  lookups per measurement (default 2000000)
 *     -f  pins file (default route_bench_pins.txt); written when missing or
 *         when -w is given: line i is "t<i*2654435761 mod 2^32, hex>-<i> a|b"
 *
 * Output: "key<TAB>value" lines (tests/bench/bench.py reads them). Exit 1 on
 * any error, including a lookup that disagrees with the pin it should find.
 *
 * Build (tests/bench/run.sh does this):
 *   cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude tests/bench/route_bench.c \
 *      src/ring.c src/pins.c src/route.c src/directory.c -lxxhash -o build/bench/route_bench
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pins.h"
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

/* The i-th pinned tenant; returns its length. Spread-out names, unique by the -i suffix. */
static int pinned_name(char *buf, uint64_t i)
{
	return snprintf(buf, MAX_TENANT, "t%08" PRIx32 "-%" PRIu64,
			(uint32_t)(i * UINT64_C(2654435761)), i);
}

/* A tenant that is never pinned. */
static int unpinned_name(char *buf, uint64_t i)
{
	return snprintf(buf, MAX_TENANT, "u%08" PRIx32 "-%" PRIu64,
			(uint32_t)(i * UINT64_C(2246822519)), i);
}

static int write_pins(const char *path, uint64_t n)
{
	char tmp[4096];
	char name[MAX_TENANT];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (f == NULL) {
		fprintf(stderr, "route_bench: %s: %s\n", tmp, strerror(errno));
		return -1;
	}
	setvbuf(f, NULL, _IOFBF, 1 << 20);
	fprintf(f, "# route_bench: %" PRIu64 " pins\n", n);
	for (uint64_t i = 0; i < n; i++) {
		pinned_name(name, i);
		fprintf(f, "%s %s\n", name, (i & 1) ? "b" : "a");
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		fprintf(stderr, "route_bench: writing %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* Counts the pin lines of an existing file (lines not starting with '#'). */
static uint64_t count_pins(const char *path)
{
	char line[512];
	uint64_t n = 0;
	FILE *f = fopen(path, "r");

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f))
		n += line[0] != '#' && line[0] != '\n';
	fclose(f);
	return n;
}

/* xorshift64*: reproducible random tenant choice. */
static uint64_t rng_state = UINT64_C(0x9E3779B97F4A7C15);

static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * UINT64_C(2685821657736338717);
}

/* q queries, each a tenant in a flat array of fixed slots (read in order: cache friendly). */
struct queries {
	char (*name)[MAX_TENANT];
	uint8_t *len;
	int8_t *want; /* expected cluster for a pinned tenant, -1 for an unpinned one */
	size_t q;
};

/* pin_share: 0..100 percent of the queries that name a pinned tenant. */
static int make_queries(struct queries *qs, size_t q, uint64_t npins, unsigned pin_share)
{
	qs->name = malloc(q * sizeof(*qs->name));
	qs->len = malloc(q);
	qs->want = malloc(q);
	qs->q = q;
	if (qs->name == NULL || qs->len == NULL || qs->want == NULL)
		return -1;
	for (size_t i = 0; i < q; i++) {
		bool pin = npins > 0 && rnd() % 100 < pin_share;
		uint64_t k = rnd() % (npins > 0 ? npins : 1000000000u);

		qs->len[i] = (uint8_t)(pin ? pinned_name(qs->name[i], k)
					   : unpinned_name(qs->name[i], k));
		qs->want[i] = pin ? (int8_t)(k & 1) : -1;
	}
	return 0;
}

static void free_queries(struct queries *qs)
{
	free(qs->name);
	free(qs->len);
	free(qs->want);
}

static volatile size_t sink;

/* Independent lookups: ns per lookup. Also checks every pinned answer. */
static double run_thr(const struct pins *p, const struct ring *r, const struct queries *qs,
		      size_t *bad)
{
	size_t acc = 0, wrong = 0;
	double t0 = now_s(), t1;

	for (size_t i = 0; i < qs->q; i++) {
		bool pinned;
		size_t c = route_lookup(p, r, qs->name[i], qs->len[i], &pinned);

		acc += c;
		wrong += qs->want[i] >= 0 && (!pinned || c != (size_t)qs->want[i]);
		wrong += qs->want[i] < 0 && pinned;
	}
	t1 = now_s();
	sink = acc;
	*bad += wrong;
	return (t1 - t0) * 1e9 / (double)qs->q;
}

/*
 * Dependent lookups: where the next query is read from depends on the
 * previous answer (c >> 16 is always 0, but the compiler and the CPU cannot
 * know), so the CPU cannot start the next lookup's cache misses early.
 */
static double run_lat(const struct pins *p, const struct ring *r, const struct queries *qs)
{
	size_t j = 0, acc = 0;
	double t0 = now_s(), t1;

	while (j < qs->q) {
		size_t c = route_lookup(p, r, qs->name[j], qs->len[j], NULL);

		acc += c;
		j += 1 + (c >> 16);
	}
	t1 = now_s();
	sink = acc;
	return (t1 - t0) * 1e9 / (double)qs->q;
}

static void usage(void)
{
	fprintf(stderr, "usage: route_bench [-n PINS] [-q QUERIES] [-f PINSFILE] [-w]\n");
}

int main(int argc, char **argv)
{
	static const char *const names[] = {"a", "b"};
	const struct ring_member members[] = {{"a", 1}, {"b", 1}};
	const struct pins_clusters pc = {names, 2};
	const char *path = "route_bench_pins.txt";
	uint64_t npins = 10000000;
	size_t q = 2000000;
	bool rewrite = false;
	char err[8192] = "";
	struct ring *ring;
	struct pins *pins;
	struct stat st;
	struct queries qs;
	size_t bad = 0;
	double t0, load_s, gen_s = 0;
	long rss0, rss1;
	int opt, rc;

	while ((opt = getopt(argc, argv, "n:q:f:wh")) != -1) {
		switch (opt) {
		case 'n':
			npins = strtoull(optarg, NULL, 10);
			break;
		case 'q':
			q = strtoull(optarg, NULL, 10);
			break;
		case 'f':
			path = optarg;
			break;
		case 'w':
			rewrite = true;
			break;
		default:
			usage();
			return 2;
		}
	}
	if (q == 0) {
		usage();
		return 2;
	}
	if (rewrite || stat(path, &st) != 0 || count_pins(path) != npins) {
		t0 = now_s();
		if (write_pins(path, npins) != 0)
			return 1;
		gen_s = now_s() - t0;
	}
	if (stat(path, &st) != 0) {
		fprintf(stderr, "route_bench: %s: %s\n", path, strerror(errno));
		return 1;
	}

	ring = ring_build(members, 2, 256, err, sizeof(err));
	if (ring == NULL) {
		fprintf(stderr, "route_bench: ring_build: %s\n", err);
		return 1;
	}
	rss0 = rss_kib();
	pins = pins_new();
	if (pins == NULL) {
		fprintf(stderr, "route_bench: out of memory\n");
		return 1;
	}
	t0 = now_s();
	rc = pins_load_file(pins, path, &pc, err, sizeof(err));
	pins_seal(pins);
	load_s = now_s() - t0;
	rss1 = rss_kib();
	if (rc != 0) {
		fprintf(stderr, "route_bench: pins_load_file returned %d: %s\n", rc, err);
		return 1;
	}
	if (pins_count(pins) != npins) {
		fprintf(stderr, "route_bench: loaded %zu pins, expected %" PRIu64 "\n",
			pins_count(pins), npins);
		return 1;
	}

	printf("pins\t%" PRIu64 "\n", npins);
	printf("pins_file_bytes\t%lld\n", (long long)st.st_size);
	printf("pins_file_write_s\t%.3f\n", gen_s);
	printf("pins_load_s\t%.3f\n", load_s);
	printf("pins_load_lines_per_s\t%.0f\n", (double)npins / load_s);
	printf("pins_memory_bytes\t%zu\n", pins_memory(pins));
	printf("pins_bytes_per_pin\t%.1f\n", (double)pins_memory(pins) / (double)npins);
	printf("pins_rss_growth_bytes_per_pin\t%.1f\n",
	       (double)(rss1 - rss0) * 1024.0 / (double)npins);
	printf("ring_points\t%zu\n", ring_points(ring));
	printf("queries\t%zu\n", q);

	/* Warm the code paths (not the table: it is far larger than any cache). */
	{
		static const unsigned shares[] = {100, 0, 50};
		static const char *const labels[] = {"hit", "miss", "mix"};

		for (size_t k = 0; k < ARRAY_SIZE(shares); k++) {
			double thr, lat;

			if (make_queries(&qs, q, npins, shares[k]) != 0) {
				fprintf(stderr, "route_bench: out of memory\n");
				return 1;
			}
			(void)run_thr(pins, ring, &qs, &bad);
			thr = run_thr(pins, ring, &qs, &bad);
			lat = run_lat(pins, ring, &qs);
			printf("ns_per_lookup_%s_thr\t%.1f\n", labels[k], thr);
			printf("ns_per_lookup_%s_lat\t%.1f\n", labels[k], lat);
			free_queries(&qs);
		}
	}
	/* For reference: the ring alone, no pins table. */
	if (make_queries(&qs, q, 0, 0) != 0) {
		fprintf(stderr, "route_bench: out of memory\n");
		return 1;
	}
	(void)run_thr(NULL, ring, &qs, &bad);
	printf("ns_per_lookup_ring_only_thr\t%.1f\n", run_thr(NULL, ring, &qs, &bad));
	printf("ns_per_lookup_ring_only_lat\t%.1f\n", run_lat(NULL, ring, &qs));
	free_queries(&qs);

	printf("wrong_answers\t%zu\n", bad);
	pins_free(pins);
	ring_free(ring);
	if (bad != 0) {
		fprintf(stderr, "route_bench: %zu lookups disagreed with their pin\n", bad);
		return 1;
	}
	return 0;
}
