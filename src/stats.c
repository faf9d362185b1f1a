/*
 * stats.c - the router's counters, updated from every event loop, read at
 * scrape time (pure: atomics only).
 *
 * Clusters and SQLSTATEs live in fixed open-addressing tables that only
 * grow: a slot is claimed once with a compare-and-swap on its state (empty
 * -> claiming -> ready), its name written in between, so a reader that sees
 * "ready" (acquire) sees the whole name. Nothing is removed, so pointers
 * handed out stay valid and the data path never takes a lock to count.
 *
 * Bytes are counted per thread: each thread that counts gets its own
 * cache-line-sized slot on first use, and the scrape sums the slots. That
 * keeps the splice's per-read cost one add on a line no other core writes.
 *
 * The recent refusals are a small ring under a spinlock (atomic_flag): a
 * refusal copies some 300 bytes, and a scrape copies the ring, so the lock
 * is held for microseconds, and only by refusals, never by the splice.
 *
 * All adds are relaxed: a scrape may see one counter a moment ahead of
 * another, which Prometheus tolerates; no counter ever goes backwards.
 */
#include "stats.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include <xxhash.h>

#define CLUSTER_SLOTS  (2 * STATS_MAX_CLUSTERS) /* a power of two, at most half full */
#define SQLSTATE_SLOTS (2 * STATS_MAX_SQLSTATES)
#define BYTE_SLOTS     64

enum slot_state { SLOT_EMPTY, SLOT_CLAIMING, SLOT_READY };

struct stats_cluster {
	atomic_int state; /* enum slot_state */
	char name[64];
	atomic_uint_fast64_t routed_pin, routed_ring;
	atomic_uint_fast64_t refusals;
	atomic_int_fast64_t sessions[STATS_MAX_STATES];
};

struct sqlstate_slot {
	atomic_int state;
	char code[6];
	atomic_uint_fast64_t n;
};

struct hist {
	atomic_uint_fast64_t bucket[STATS_NBUCKETS + 1];
	atomic_uint_fast64_t sum_ns;
};

/* One thread's byte counters, alone on its cache line. */
struct byte_slot {
	_Alignas(64) atomic_uint_fast64_t n[STATS_NDIRS];
};

static struct stats_cluster clusters[CLUSTER_SLOTS];
static struct stats_cluster *_Atomic cluster_order[STATS_MAX_CLUSTERS];
static atomic_size_t ncluster_order;
static atomic_int_fast64_t states[STATS_MAX_STATES];

static struct sqlstate_slot sqlstates[SQLSTATE_SLOTS];
static struct sqlstate_slot *_Atomic sqlstate_order[STATS_MAX_SQLSTATES];
static atomic_size_t nsqlstate_order;

static struct hist hists[STATS_NHISTS];
static atomic_uint_fast64_t reloads[2];

static struct byte_slot byte_slots[BYTE_SLOTS];
static atomic_uint next_byte_slot;
static _Thread_local struct byte_slot *my_bytes;

static atomic_flag recent_lock = ATOMIC_FLAG_INIT;
static struct stats_refusal recent[STATS_RECENT];
static uint64_t nrecent; /* refusals ever put in the ring; under recent_lock */

/* Seconds: 1 ms to 10 s, which covers both a local login and a check near its timeout. */
static const double bounds[STATS_NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                              0.1,    0.25,  0.5,    1,     2.5,  5,     10};

double stats_bucket_bound(size_t i)
{
	return i < STATS_NBUCKETS ? bounds[i] : 0;
}

/*
 * Finds or claims the slot for name in a table of nslots (a power of two)
 * entries of size stride whose first members are the state and the name.
 * Returns NULL when the table is full.
 */
static void *slot_get(void *table, size_t nslots, size_t stride, size_t name_off, size_t name_cap,
                      const char *name, bool *claimed)
{
	size_t len = strnlen(name, name_cap - 1);
	size_t i = (size_t)XXH3_64bits(name, len) & (nslots - 1);

	*claimed = false;
	for (size_t probe = 0; probe < nslots; probe++, i = (i + 1) & (nslots - 1)) {
		char *slot = (char *)table + i * stride;
		atomic_int *st = (atomic_int *)(void *)slot;
		char *sname = slot + name_off;
		int s = atomic_load_explicit(st, memory_order_acquire);

		if (s == SLOT_EMPTY) {
			int want = SLOT_EMPTY;

			if (atomic_compare_exchange_strong(st, &want, SLOT_CLAIMING)) {
				memcpy(sname, name, len);
				sname[len] = '\0';
				atomic_store_explicit(st, SLOT_READY, memory_order_release);
				*claimed = true;
				return slot;
			}
			s = want;
		}
		/* Another thread is writing this slot's name: it takes a few nanoseconds. */
		while (s == SLOT_CLAIMING)
			s = atomic_load_explicit(st, memory_order_acquire);
		if (strncmp(sname, name, len) == 0 && sname[len] == '\0')
			return slot;
	}
	return NULL;
}

struct stats_cluster *stats_cluster(const char *name)
{
	struct stats_cluster *c;
	bool claimed;
	size_t k;

	if (name == NULL || name[0] == '\0')
		return NULL;
	c = slot_get(clusters, CLUSTER_SLOTS, sizeof(clusters[0]),
	             offsetof(struct stats_cluster, name), sizeof(clusters[0].name), name,
	             &claimed);
	if (c && claimed) {
		k = atomic_fetch_add(&ncluster_order, 1);
		if (k < STATS_MAX_CLUSTERS)
			cluster_order[k] = c;
	}
	return c;
}

static void state_add(struct stats_cluster *c, unsigned state, int64_t d)
{
	if (state >= STATS_MAX_STATES)
		return;
	atomic_fetch_add_explicit(&states[state], d, memory_order_relaxed);
	if (c)
		atomic_fetch_add_explicit(&c->sessions[state], d, memory_order_relaxed);
}

void stats_session_new(unsigned state)
{
	state_add(NULL, state, 1);
}

void stats_session_state(struct stats_cluster *c, unsigned from, unsigned to)
{
	state_add(c, from, -1);
	state_add(c, to, 1);
}

void stats_session_routed(struct stats_cluster *c, bool pinned, unsigned state)
{
	if (c == NULL)
		return;
	atomic_fetch_add_explicit(pinned ? &c->routed_pin : &c->routed_ring, 1,
	                          memory_order_relaxed);
	if (state < STATS_MAX_STATES)
		atomic_fetch_add_explicit(&c->sessions[state], 1, memory_order_relaxed);
}

void stats_session_end(struct stats_cluster *c, unsigned state)
{
	state_add(c, state, -1);
}

static void copy_cut(char *dst, size_t cap, const char *src)
{
	size_t n = src ? strnlen(src, cap - 1) : 0;

	if (n)
		memcpy(dst, src, n);
	dst[n] = '\0';
}

void stats_refusal(const char *sqlstate, const char *cluster, const char *tenant)
{
	struct sqlstate_slot *q;
	struct stats_refusal *r;
	struct timespec ts;
	bool claimed;
	size_t k;

	q = slot_get(sqlstates, SQLSTATE_SLOTS, sizeof(sqlstates[0]),
	             offsetof(struct sqlstate_slot, code), sizeof(sqlstates[0].code), sqlstate,
	             &claimed);
	if (q) {
		if (claimed) {
			k = atomic_fetch_add(&nsqlstate_order, 1);
			if (k < STATS_MAX_SQLSTATES)
				sqlstate_order[k] = q;
		}
		atomic_fetch_add_explicit(&q->n, 1, memory_order_relaxed);
	}
	/* Host routes ("route:NAME") are not clusters and get no slot of their own. */
	if (cluster && *cluster && strchr(cluster, ':') == NULL) {
		struct stats_cluster *c = stats_cluster(cluster);

		if (c)
			atomic_fetch_add_explicit(&c->refusals, 1, memory_order_relaxed);
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	while (atomic_flag_test_and_set_explicit(&recent_lock, memory_order_acquire))
		;
	r = &recent[nrecent++ % STATS_RECENT];
	r->unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	copy_cut(r->sqlstate, sizeof(r->sqlstate), sqlstate);
	copy_cut(r->cluster, sizeof(r->cluster), cluster);
	copy_cut(r->tenant, sizeof(r->tenant), tenant);
	atomic_flag_clear_explicit(&recent_lock, memory_order_release);
}

void stats_bytes(enum stats_bytes_dir d, size_t n)
{
	struct byte_slot *b = my_bytes;

	if (b == NULL) {
		unsigned i = atomic_fetch_add(&next_byte_slot, 1);

		/* Past BYTE_SLOTS threads, the last slot is shared: still exact, only slower. */
		b = my_bytes = &byte_slots[i < BYTE_SLOTS ? i : BYTE_SLOTS - 1];
	}
	atomic_fetch_add_explicit(&b->n[d], n, memory_order_relaxed);
}

void stats_observe(enum stats_hist_kind k, uint64_t ns)
{
	struct hist *h = &hists[k];
	double s = (double)ns / 1e9;
	size_t i = 0;

	while (i < STATS_NBUCKETS && s > bounds[i])
		i++;
	atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

void stats_reload(bool ok)
{
	atomic_fetch_add_explicit(&reloads[ok ? 1 : 0], 1, memory_order_relaxed);
}

void stats_hist_read(enum stats_hist_kind k, struct stats_hist_view *out)
{
	struct hist *h = &hists[k];

	out->count = 0;
	for (size_t i = 0; i <= STATS_NBUCKETS; i++) {
		out->bucket[i] = atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
		out->count += out->bucket[i];
	}
	out->sum = (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9;
}

static void cluster_view(struct stats_cluster *c, struct stats_cluster_view *v)
{
	v->name = c->name;
	v->routed_pin = atomic_load_explicit(&c->routed_pin, memory_order_relaxed);
	v->routed_ring = atomic_load_explicit(&c->routed_ring, memory_order_relaxed);
	v->refusals = atomic_load_explicit(&c->refusals, memory_order_relaxed);
	for (size_t i = 0; i < STATS_MAX_STATES; i++)
		v->sessions[i] = atomic_load_explicit(&c->sessions[i], memory_order_relaxed);
}

size_t stats_clusters(struct stats_cluster_view *out, size_t cap)
{
	size_t n = atomic_load(&ncluster_order), k = 0;

	if (n > STATS_MAX_CLUSTERS)
		n = STATS_MAX_CLUSTERS;
	for (size_t i = 0; i < n && k < cap; i++) {
		/* Counted but not stored yet by the thread that claimed it: next scrape. */
		struct stats_cluster *c = cluster_order[i];

		if (c)
			cluster_view(c, &out[k++]);
	}
	return k;
}

bool stats_cluster_read(const char *name, struct stats_cluster_view *out)
{
	size_t n = atomic_load(&ncluster_order);

	if (n > STATS_MAX_CLUSTERS)
		n = STATS_MAX_CLUSTERS;
	for (size_t i = 0; i < n; i++) {
		struct stats_cluster *c = cluster_order[i];

		if (c && strcmp(c->name, name) == 0) {
			cluster_view(c, out);
			return true;
		}
	}
	return false;
}

void stats_states(int64_t out[STATS_MAX_STATES])
{
	for (size_t i = 0; i < STATS_MAX_STATES; i++)
		out[i] = atomic_load_explicit(&states[i], memory_order_relaxed);
}

size_t stats_refusal_counts(struct stats_count *out, size_t cap)
{
	size_t n = atomic_load(&nsqlstate_order), k = 0;

	if (n > STATS_MAX_SQLSTATES)
		n = STATS_MAX_SQLSTATES;
	for (size_t i = 0; i < n && k < cap; i++) {
		struct sqlstate_slot *q = sqlstate_order[i];

		if (q == NULL)
			continue;
		memcpy(out[k].sqlstate, q->code, sizeof(out[k].sqlstate));
		out[k].n = atomic_load_explicit(&q->n, memory_order_relaxed);
		k++;
	}
	return k;
}

size_t stats_recent_refusals(struct stats_refusal *out, size_t cap)
{
	size_t k = 0;

	while (atomic_flag_test_and_set_explicit(&recent_lock, memory_order_acquire))
		;
	for (uint64_t i = 0; i < STATS_RECENT && i < nrecent && k < cap; i++)
		out[k++] = recent[(nrecent - 1 - i) % STATS_RECENT];
	atomic_flag_clear_explicit(&recent_lock, memory_order_release);
	return k;
}

uint64_t stats_bytes_total(enum stats_bytes_dir d)
{
	uint64_t sum = 0;

	for (size_t i = 0; i < BYTE_SLOTS; i++)
		sum += atomic_load_explicit(&byte_slots[i].n[d], memory_order_relaxed);
	return sum;
}

uint64_t stats_reloads(bool ok)
{
	return atomic_load_explicit(&reloads[ok ? 1 : 0], memory_order_relaxed);
}

static atomic_int_fast64_t pool_counts[STATS_POOL_NKINDS];

void stats_pool(enum stats_pool_kind k, int d)
{
	atomic_fetch_add_explicit(&pool_counts[k], d, memory_order_relaxed);
}

int64_t stats_pool_read(enum stats_pool_kind k)
{
	return atomic_load_explicit(&pool_counts[k], memory_order_relaxed);
}
