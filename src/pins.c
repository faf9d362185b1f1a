/*
 * pins.c - pinned-tenant override table (pure: no I/O beyond stdio reads).
 *
 * A pin maps a tenant (opaque bytes, exact match) to a cluster index. The
 * table must hold millions of pins, so it allocates nothing per pin: tenant
 * bytes live in one growing arena as [length byte][bytes], and the index is
 * an open-addressing table (linear probing, power-of-two size, load <= 3/4)
 * of 64-bit slots packing the arena offset, the cluster and an 8-bit hash
 * tag that spares most key comparisons. That is 8 bytes per slot, so about
 * 11-22 bytes per pin plus the tenant and its length byte.
 *
 * pins_load_file() streams the file through a fixed 1 MiB buffer, sizes the
 * table once from a sample of the file, and prefetches each pin's slot a few
 * lines before inserting it: a random slot is a cache miss, and that, not
 * parsing, is what bounds the load of millions of lines. It reports every bad
 * line (up to PINS_MAX_REPORTS) as "PATH:LINE: reason", in line order. It
 * does not decide whether a partly bad file is usable: callers discard the
 * table when it returns problems.
 *
 * Invariants: byte 0 of the arena is never a record, so a packed slot of 0
 * means "empty"; the load stays <= 3/4, so every probe meets an empty slot;
 * after pins_seal() nothing changes and concurrent lookups are safe.
 */
#include "pins.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "common.h"

#define PINS_INITIAL_SLOTS 64u
#define PINS_INITIAL_ARENA 4096u
#define PINS_MAX_REPORTS   20u
#define PINS_READ_BUF      (1u << 20) /* also the longest line accepted */
#define PINS_SHOW_BYTES    64u        /* longest token quoted in a report */
#define PINS_PIPELINE      16u        /* lines parsed ahead of their insert */

/* Slot layout: offset (40 bits) | cluster (16 bits) | hash tag (8 bits). */
#define SLOT_OFF_SHIFT     24
#define SLOT_CLUSTER_SHIFT 8
#define SLOT_MAX_OFF       ((UINT64_C(1) << 40) - 1)

struct pins {
	uint64_t *slots;  /* owned: 0 = empty */
	size_t mask;      /* number of slots - 1 */
	size_t count;     /* pins held */
	uint8_t *arena;   /* owned: [len][tenant bytes]..., byte 0 unused */
	size_t arena_len; /* bytes used, >= 1 */
	size_t arena_cap; /* bytes allocated */
	bool sealed;      /* read-only from now on */
};

static inline uint64_t slot_off(uint64_t s)
{
	return s >> SLOT_OFF_SHIFT;
}

static inline uint16_t slot_cluster(uint64_t s)
{
	return (uint16_t)(s >> SLOT_CLUSTER_SHIFT);
}

static inline uint8_t hash_tag(uint64_t h)
{
	return (uint8_t)(h >> 56); /* the index uses the low bits */
}

struct pins *pins_new(void)
{
	struct pins *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	p->slots = calloc(PINS_INITIAL_SLOTS, sizeof(*p->slots));
	if (p->slots == NULL)
		goto fail_slots;
	p->arena = malloc(PINS_INITIAL_ARENA);
	if (p->arena == NULL)
		goto fail_arena;
	p->mask = PINS_INITIAL_SLOTS - 1;
	p->arena_cap = PINS_INITIAL_ARENA;
	p->arena[0] = 0;
	p->arena_len = 1;
	return p;

fail_arena:
	free(p->slots);
fail_slots:
	free(p);
	return NULL;
}

void pins_free(struct pins *p)
{
	if (p == NULL)
		return;
	free(p->slots);
	free(p->arena);
	free(p);
}

/*
 * Returns the slot holding the tenant, or the empty slot where it would go.
 * The caller checks which with p->slots[i] != 0.
 */
static size_t find_slot(const struct pins *p, const uint8_t *t, size_t len, uint64_t h)
{
	size_t i = (size_t)h & p->mask;
	uint8_t tag = hash_tag(h);

	for (;;) {
		uint64_t s = p->slots[i];

		if (s == 0)
			return i;
		if ((uint8_t)s == tag) {
			const uint8_t *rec = p->arena + slot_off(s);

			if (rec[0] == len && memcmp(rec + 1, t, len) == 0)
				return i;
		}
		i = (i + 1) & p->mask;
	}
}

/*
 * Asks for transparent huge pages on a large, freshly allocated block: a
 * lookup in a table of millions of pins is two random memory accesses, and
 * with 4 KiB pages each also misses the TLB. Advice only: errors are ignored.
 */
static void want_huge_pages(void *p, size_t n)
{
	uintptr_t start = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
	uintptr_t end = ((uintptr_t)p + n) & ~(uintptr_t)4095;

	if (n >= (4u << 20) && end > start)
		(void)madvise((void *)start, end - start, MADV_HUGEPAGE);
}

/* Moves every pin into a table of nslots; each tenant is hashed again. */
static int resize_slots(struct pins *p, size_t nslots)
{
	uint64_t *slots = calloc(nslots, sizeof(*slots));
	size_t i;

	if (slots == NULL)
		return -ENOMEM;
	want_huge_pages(slots, nslots * sizeof(*slots));
	for (i = 0; i <= p->mask; i++) {
		uint64_t s = p->slots[i];
		const uint8_t *rec;
		size_t j;

		if (s == 0)
			continue;
		rec = p->arena + slot_off(s);
		j = (size_t)XXH3_64bits(rec + 1, rec[0]) & (nslots - 1);
		while (slots[j] != 0)
			j = (j + 1) & (nslots - 1);
		slots[j] = s;
	}
	free(p->slots);
	p->slots = slots;
	p->mask = nslots - 1;
	return 0;
}

/* Makes room for n more pins at a load of at most 3/4 (before any add). */
static int reserve_slots(struct pins *p, size_t n)
{
	size_t nslots = p->mask + 1;

	if (n > SIZE_MAX / 8 - p->count)
		return -ENOMEM;
	while ((p->count + n) * 4 > nslots * 3)
		nslots *= 2;
	return nslots > p->mask + 1 ? resize_slots(p, nslots) : 0;
}

static int reserve_arena(struct pins *p, size_t need)
{
	size_t cap = p->arena_cap;
	uint8_t *arena;

	if (need <= cap - p->arena_len)
		return 0;
	if (p->arena_len + need > SLOT_MAX_OFF)
		return -ENOMEM; /* offsets no longer fit a slot */
	while (need > cap - p->arena_len)
		cap *= 2;
	arena = realloc(p->arena, cap);
	if (arena == NULL)
		return -ENOMEM;
	want_huge_pages(arena, cap);
	p->arena = arena;
	p->arena_cap = cap;
	return 0;
}

/*
 * pins_add() with the tenant validated and hashed (h); on -EEXIST, *old is
 * the cluster the tenant is pinned to.
 */
static int add_pin(struct pins *p, const uint8_t *t, size_t len, uint64_t h, uint16_t cluster,
                   uint16_t *old)
{
	size_t i = find_slot(p, t, len, h);
	int rc;

	TR_ASSERT(!p->sealed);
	if (p->slots[i] != 0) {
		*old = slot_cluster(p->slots[i]);
		return *old == cluster ? 0 : -EEXIST;
	}
	/* Keep the load at or below 3/4, so probes stay short. */
	if ((p->count + 1) * 4 > (p->mask + 1) * 3) {
		rc = resize_slots(p, (p->mask + 1) * 2);
		if (rc < 0)
			return rc;
		i = find_slot(p, t, len, h);
	}
	rc = reserve_arena(p, 1 + len);
	if (rc < 0)
		return rc;
	p->slots[i] = ((uint64_t)p->arena_len << SLOT_OFF_SHIFT) |
	              ((uint64_t)cluster << SLOT_CLUSTER_SHIFT) | hash_tag(h);
	p->arena[p->arena_len] = (uint8_t)len;
	memcpy(p->arena + p->arena_len + 1, t, len);
	p->arena_len += 1 + len;
	p->count++;
	return 0;
}

int pins_add(struct pins *p, const void *tenant, size_t len, uint16_t cluster)
{
	uint16_t old;

	if (len == 0 || len > PINS_MAX_TENANT_LEN)
		return -EINVAL;
	return add_pin(p, tenant, len, XXH3_64bits(tenant, len), cluster, &old);
}

int pins_lookup(const struct pins *p, const void *tenant, size_t len)
{
	return pins_lookup_hashed(p, tenant, len, XXH3_64bits(tenant, len));
}

int pins_lookup_hashed(const struct pins *p, const void *tenant, size_t len, uint64_t hash)
{
	size_t i;

	if (p == NULL || len == 0 || len > PINS_MAX_TENANT_LEN || p->count == 0)
		return -1;
	i = find_slot(p, tenant, len, hash);
	return p->slots[i] != 0 ? slot_cluster(p->slots[i]) : -1;
}

size_t pins_count(const struct pins *p)
{
	return p->count;
}

size_t pins_memory(const struct pins *p)
{
	return sizeof(*p) + (p->mask + 1) * sizeof(*p->slots) + p->arena_cap;
}

void pins_seal(struct pins *p)
{
	uint8_t *arena = realloc(p->arena, p->arena_len);

	/* Shrinking may fail; the larger block is still correct. */
	if (arena != NULL) {
		p->arena = arena;
		p->arena_cap = p->arena_len;
	}
	p->sealed = true;
}

/* ---- loading a file ---------------------------------------------------- */

/* Appends to err, which the caller initialised; always NUL terminated. */
PRINTF_LIKE(3, 4)
static void append_err(char *err, size_t errlen, const char *fmt, ...)
{
	size_t used;
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	used = strnlen(err, errlen);
	if (used == errlen)
		used = 0; /* not a string: start over rather than overrun */
	if (used == errlen - 1)
		return;
	va_start(ap, fmt);
	vsnprintf(err + used, errlen - used, fmt, ap);
	va_end(ap);
}

/*
 * Quotes a token for a report: printable ASCII as is, '"' and '\' escaped,
 * other bytes as \xHH, and at most PINS_SHOW_BYTES of it followed by "...".
 * dst must hold PINS_SHOW_BYTES * 4 + 6 bytes.
 */
#define QUOTED_SIZE (PINS_SHOW_BYTES * 4 + 6)
static const char *quote(char *dst, const uint8_t *s, size_t len)
{
	size_t n = len > PINS_SHOW_BYTES ? PINS_SHOW_BYTES : len, i;
	char *o = dst;

	*o++ = '"';
	for (i = 0; i < n; i++) {
		uint8_t c = s[i];

		if (c == '"' || c == '\\') {
			*o++ = '\\';
			*o++ = (char)c;
		} else if (c >= 0x20 && c < 0x7f) {
			*o++ = (char)c;
		} else {
			o += sprintf(o, "\\x%02x", c);
		}
	}
	if (n < len) {
		memcpy(o, "...", 3);
		o += 3;
	}
	*o++ = '"';
	*o = '\0';
	return dst;
}

/* Reads a file line by line through one fixed buffer (no allocation per line). */
struct line_reader {
	FILE *f;              /* borrowed */
	uint8_t *buf;         /* owned: PINS_READ_BUF bytes */
	size_t start, end;    /* unread bytes are buf[start, end) */
	unsigned long lineno; /* of the line last returned */
	bool eof;
	bool skipping; /* discarding the rest of an overlong line */
};

enum read_status { READ_LINE, READ_TOO_LONG, READ_EOF, READ_ERROR };

/*
 * Returns the next line without its '\n' (a last line without one counts).
 * A line that does not fit the buffer is returned as READ_TOO_LONG and the
 * rest of it is skipped.
 */
static enum read_status next_line(struct line_reader *rd, const uint8_t **line, size_t *len)
{
	for (;;) {
		uint8_t *nl = NULL;
		size_t got;

		if (rd->end > rd->start)
			nl = memchr(rd->buf + rd->start, '\n', rd->end - rd->start);
		if (rd->skipping) {
			if (nl != NULL) {
				rd->start = (size_t)(nl - rd->buf) + 1;
				rd->skipping = false;
				continue;
			}
			rd->start = rd->end = 0;
		} else if (nl != NULL) {
			*line = rd->buf + rd->start;
			*len = (size_t)(nl - *line);
			rd->start += *len + 1;
			rd->lineno++;
			return READ_LINE;
		} else if (rd->eof) {
			if (rd->start == rd->end)
				return READ_EOF;
			*line = rd->buf + rd->start;
			*len = rd->end - rd->start;
			rd->start = rd->end;
			rd->lineno++;
			return READ_LINE;
		} else if (rd->end - rd->start == PINS_READ_BUF) {
			rd->start = rd->end = 0;
			rd->skipping = true;
			rd->lineno++;
			return READ_TOO_LONG;
		}
		if (rd->eof)
			return READ_EOF;

		/* Keep the partial line, move it to the front, and read more. */
		if (rd->start > 0) {
			memmove(rd->buf, rd->buf + rd->start, rd->end - rd->start);
			rd->end -= rd->start;
			rd->start = 0;
		}
		got = fread(rd->buf + rd->end, 1, PINS_READ_BUF - rd->end, rd->f);
		rd->end += got;
		if (got == 0) {
			if (ferror(rd->f))
				return READ_ERROR;
			rd->eof = true;
		}
	}
}

static inline bool is_blank(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* One line cut into fields: comment dropped, blanks trimmed. */
struct fields {
	const uint8_t *f[3]; /* tenant, cluster, first extra field */
	size_t len[3];
	size_t n; /* fields seen, counting at most 3 */
	bool has_nul;
};

static void split_fields(const uint8_t *s, size_t len, struct fields *fl)
{
	const uint8_t *hash = memchr(s, '#', len);
	const uint8_t *end = hash != NULL ? hash : s + len;

	fl->n = 0;
	fl->has_nul = memchr(s, '\0', (size_t)(end - s)) != NULL;
	while (fl->n < 3) {
		const uint8_t *tok;

		while (s < end && is_blank(*s))
			s++;
		if (s == end)
			break;
		tok = s;
		while (s < end && !is_blank(*s))
			s++;
		fl->f[fl->n] = tok;
		fl->len[fl->n] = (size_t)(s - tok);
		fl->n++;
	}
}

/* Cluster names hashed once per load, so each line costs one probe. */
struct name_index {
	uint32_t *slots; /* owned: cluster index + 1, 0 = empty */
	size_t *lens;    /* owned: strlen of each name */
	size_t mask;
	const struct pins_clusters *c; /* borrowed */
};

static int name_index_init(struct name_index *ni, const struct pins_clusters *c)
{
	size_t nslots = 8, i;

	while (nslots < c->n * 2)
		nslots *= 2;
	ni->c = c;
	ni->mask = nslots - 1;
	ni->slots = calloc(nslots, sizeof(*ni->slots));
	ni->lens = calloc(c->n + 1, sizeof(*ni->lens));
	if (ni->slots == NULL || ni->lens == NULL)
		return -ENOMEM;
	for (i = 0; i < c->n; i++) {
		size_t j;

		if (c->names[i] == NULL)
			continue;
		ni->lens[i] = strlen(c->names[i]);
		j = (size_t)XXH3_64bits(c->names[i], ni->lens[i]) & ni->mask;
		while (ni->slots[j] != 0) {
			if (strcmp(c->names[ni->slots[j] - 1], c->names[i]) == 0)
				break; /* a repeated name: the first index wins */
			j = (j + 1) & ni->mask;
		}
		if (ni->slots[j] == 0)
			ni->slots[j] = (uint32_t)i + 1;
	}
	return 0;
}

static void name_index_reset(struct name_index *ni)
{
	free(ni->slots);
	free(ni->lens);
	ni->slots = NULL;
	ni->lens = NULL;
}

static long name_index_find(const struct name_index *ni, const uint8_t *s, size_t len)
{
	size_t j = (size_t)XXH3_64bits(s, len) & ni->mask;

	for (; ni->slots[j] != 0; j = (j + 1) & ni->mask) {
		size_t i = ni->slots[j] - 1;

		if (ni->lens[i] == len && memcmp(ni->c->names[i], s, len) == 0)
			return (long)i;
	}
	return -1;
}

/*
 * Sizes the table for the whole file up front, from the share of pin lines
 * in its first buffer, so that millions of pins are not rehashed several
 * times while they load. Only a hint: a wrong guess costs time, not pins.
 */
static void presize(struct pins *p, struct line_reader *rd)
{
	const uint8_t *s, *nl;
	struct stat st;
	size_t got, off = 0, sample = 0;
	uint64_t estimate;

	if (fstat(fileno(rd->f), &st) == -1 || !S_ISREG(st.st_mode) || st.st_size > (1LL << 40))
		return;
	got = fread(rd->buf, 1, PINS_READ_BUF, rd->f);
	rd->end = got; /* next_line() goes on from here (and sees any error) */
	while (off < got) {
		struct fields fl;

		s = rd->buf + off;
		nl = memchr(s, '\n', got - off);
		if (nl == NULL)
			nl = rd->buf + got;
		split_fields(s, (size_t)(nl - s), &fl);
		sample += fl.n >= 2;
		off = (size_t)(nl - rd->buf) + 1;
	}
	if (got == 0 || sample == 0)
		return;
	/* st_size < 2^40 and sample < 2^20: no overflow. A 1/16 margin, as
	 * falling just short would cost one more full rehash at the end. */
	estimate = got < PINS_READ_BUF ? sample : (uint64_t)st.st_size * sample / got;
	estimate += estimate / 16;
	if (estimate <= SIZE_MAX / 8)
		(void)reserve_slots(p, (size_t)estimate); /* on failure, grow as we go */
}

/*
 * One kept report. Conflicts are formatted at the end, once a second pass
 * has found the line of the first pin.
 */
struct report {
	unsigned long line;
	char msg[2 * QUOTED_SIZE + 64];
	bool conflict;
	uint16_t old_cluster, new_cluster;
	unsigned long first_line; /* 0: not in this file (an inline pin) */
	uint8_t tlen;
	uint8_t tenant[PINS_MAX_TENANT_LEN];
};

/* A good line waiting for its insert, its slot already prefetched. */
struct pending {
	uint64_t hash;
	unsigned long line;
	uint16_t cluster;
	uint8_t len;
	uint8_t tenant[PINS_MAX_TENANT_LEN]; /* a copy: the read buffer moves */
};

struct load {
	struct pins *p;          /* borrowed */
	const char *path;        /* borrowed */
	struct name_index names; /* owned */
	struct report reports[PINS_MAX_REPORTS];
	size_t nreports;                     /* kept, <= PINS_MAX_REPORTS */
	unsigned long problems;              /* all of them */
	bool unresolved;                     /* a conflict still needs its first line */
	int error;                           /* sticky: -ENOMEM ends the load */
	struct pending queue[PINS_PIPELINE]; /* a ring, oldest at head */
	size_t head, queued;
};

static void report_conflict(struct load *ld, const struct pending *pd, uint16_t old_cluster);

/* Inserts the oldest queued pin. */
static void insert_oldest(struct load *ld)
{
	struct pending *pd = &ld->queue[ld->head];
	uint16_t old = 0;
	int rc;

	ld->head = (ld->head + 1) % PINS_PIPELINE;
	ld->queued--;
	if (ld->error != 0)
		return;
	rc = add_pin(ld->p, pd->tenant, pd->len, pd->hash, pd->cluster, &old);
	if (rc == -EEXIST)
		report_conflict(ld, pd, old);
	else if (rc < 0)
		ld->error = rc;
}

/* Inserts every queued pin, so reports stay in line order. */
static void drain(struct load *ld)
{
	while (ld->queued > 0)
		insert_oldest(ld);
}

/*
 * Queues a good line. A random slot costs a cache miss (hundreds of
 * nanoseconds on a large table), so the slot is prefetched here and the pin
 * inserted PINS_PIPELINE lines later, when the slot is most likely cached.
 */
static void enqueue(struct load *ld, unsigned long line, const uint8_t *t, size_t len,
                    uint16_t cluster)
{
	struct pending *pd;

	if (ld->queued == PINS_PIPELINE)
		insert_oldest(ld);
	pd = &ld->queue[(ld->head + ld->queued) % PINS_PIPELINE];
	ld->queued++;
	pd->hash = XXH3_64bits(t, len);
	pd->line = line;
	pd->cluster = cluster;
	pd->len = (uint8_t)len;
	memcpy(pd->tenant, t, len);
	__builtin_prefetch(&ld->p->slots[(size_t)pd->hash & ld->p->mask]);
}

PRINTF_LIKE(3, 4)
static void report(struct load *ld, unsigned long line, const char *fmt, ...)
{
	struct report *r;
	va_list ap;

	drain(ld);
	ld->problems++;
	if (ld->nreports == PINS_MAX_REPORTS)
		return;
	r = &ld->reports[ld->nreports++];
	r->line = line;
	r->conflict = false;
	va_start(ap, fmt);
	vsnprintf(r->msg, sizeof(r->msg), fmt, ap);
	va_end(ap);
}

static void report_conflict(struct load *ld, const struct pending *pd, uint16_t old_cluster)
{
	struct report *r;

	ld->problems++;
	if (ld->nreports == PINS_MAX_REPORTS)
		return;
	r = &ld->reports[ld->nreports++];
	r->line = pd->line;
	r->conflict = true;
	r->old_cluster = old_cluster;
	r->new_cluster = pd->cluster;
	r->first_line = 0;
	r->tlen = pd->len;
	memcpy(r->tenant, pd->tenant, pd->len);
	ld->unresolved = true;
}

/* Checks one line and queues its pin; problems go to the reports. */
static void load_line(struct load *ld, unsigned long line, const uint8_t *s, size_t len)
{
	char q1[QUOTED_SIZE], q2[QUOTED_SIZE];
	struct fields fl;
	long cluster;

	split_fields(s, len, &fl);
	if (fl.n == 0)
		return;
	if (fl.has_nul) {
		report(ld, line, "line contains a NUL byte");
		return;
	}
	if (fl.n == 1) {
		report(ld, line, "missing cluster after tenant %s", quote(q1, fl.f[0], fl.len[0]));
		return;
	}
	if (fl.n > 2) {
		report(ld, line, "unexpected field %s after cluster (expected TENANT CLUSTER)",
		       quote(q1, fl.f[2], fl.len[2]));
		return;
	}
	if (fl.len[0] > PINS_MAX_TENANT_LEN) {
		report(ld, line, "tenant %s is longer than %u bytes", quote(q1, fl.f[0], fl.len[0]),
		       PINS_MAX_TENANT_LEN);
		return;
	}
	cluster = name_index_find(&ld->names, fl.f[1], fl.len[1]);
	if (cluster < 0) {
		report(ld, line, "unknown cluster %s for tenant %s", quote(q1, fl.f[1], fl.len[1]),
		       quote(q2, fl.f[0], fl.len[0]));
		return;
	}
	enqueue(ld, line, fl.f[0], fl.len[0], (uint16_t)cluster);
}

/*
 * Second pass, only when conflicts were found: the first line that pinned
 * each conflicting tenant to its first cluster. The pass is cheap next to
 * keeping a line number for each of millions of pins.
 */
static void find_first_lines(struct load *ld, uint8_t *buf)
{
	struct line_reader rd = {.buf = buf};
	unsigned long last = 0;
	const uint8_t *s;
	size_t len, i;
	enum read_status st;

	for (i = 0; i < ld->nreports; i++)
		if (ld->reports[i].conflict && ld->reports[i].line > last)
			last = ld->reports[i].line;
	rd.f = fopen(ld->path, "r");
	if (rd.f == NULL)
		return; /* the reports just lack the first line */
	while ((st = next_line(&rd, &s, &len)) != READ_EOF && st != READ_ERROR &&
	       rd.lineno < last) {
		struct fields fl;
		long cluster;

		if (st != READ_LINE)
			continue;
		split_fields(s, len, &fl);
		if (fl.n != 2 || fl.has_nul || fl.len[0] > PINS_MAX_TENANT_LEN)
			continue;
		cluster = name_index_find(&ld->names, fl.f[1], fl.len[1]);
		for (i = 0; cluster >= 0 && i < ld->nreports; i++) {
			struct report *r = &ld->reports[i];

			if (r->conflict && r->first_line == 0 && rd.lineno < r->line &&
			    r->old_cluster == cluster && r->tlen == fl.len[0] &&
			    memcmp(r->tenant, fl.f[0], r->tlen) == 0)
				r->first_line = rd.lineno;
		}
	}
	fclose(rd.f);
}

static const char *cluster_name(const struct pins_clusters *c, uint16_t i, char *buf, size_t len)
{
	if (i < c->n && c->names[i] != NULL)
		return c->names[i];
	snprintf(buf, len, "#%u", (unsigned)i);
	return buf;
}

static void flush_reports(struct load *ld, char *err, size_t errlen)
{
	const struct pins_clusters *c = ld->names.c;
	size_t i;

	for (i = 0; i < ld->nreports; i++) {
		struct report *r = &ld->reports[i];
		char q[QUOTED_SIZE], b1[8], b2[8], at[32] = "";

		if (!r->conflict) {
			append_err(err, errlen, "%s:%lu: %s\n", ld->path, r->line, r->msg);
			continue;
		}
		if (r->first_line != 0)
			snprintf(at, sizeof(at), " at line %lu", r->first_line);
		append_err(err, errlen,
		           "%s:%lu: tenant %s is pinned to \"%s\" here but to \"%s\"%s\n", ld->path,
		           r->line, quote(q, r->tenant, r->tlen),
		           cluster_name(c, r->new_cluster, b1, sizeof(b1)),
		           cluster_name(c, r->old_cluster, b2, sizeof(b2)), at);
	}
	if (ld->problems > ld->nreports)
		append_err(err, errlen, "... and %lu more\n", ld->problems - ld->nreports);
}

int pins_load_file(struct pins *p, const char *path, const struct pins_clusters *clusters,
                   char *err, size_t errlen)
{
	static const struct pins_clusters none = {.names = NULL, .n = 0};
	struct line_reader rd = {0};
	struct load *ld;
	const uint8_t *s;
	size_t len;
	enum read_status st;
	int rc = -ENOMEM;

	TR_ASSERT(!p->sealed);
	if (clusters == NULL)
		clusters = &none;
	if (clusters->n > (size_t)UINT16_MAX + 1) {
		append_err(err, errlen, "%s: too many clusters (%zu)\n", path, clusters->n);
		return -EINVAL;
	}
	ld = calloc(1, sizeof(*ld));
	if (ld == NULL) {
		append_err(err, errlen, "%s: out of memory\n", path);
		return -ENOMEM;
	}
	ld->p = p;
	ld->path = path;
	rd.buf = malloc(PINS_READ_BUF);
	if (rd.buf == NULL || name_index_init(&ld->names, clusters) < 0) {
		append_err(err, errlen, "%s: out of memory\n", path);
		goto out;
	}
	rd.f = fopen(path, "r");
	if (rd.f == NULL) {
		rc = -errno;
		append_err(err, errlen, "%s: %s\n", path, strerror(errno));
		goto out;
	}
	presize(p, &rd);

	while ((st = next_line(&rd, &s, &len)) != READ_EOF) {
		if (st == READ_ERROR) {
			rc = errno != 0 ? -errno : -EIO;
			append_err(err, errlen, "%s:%lu: read error: %s\n", path, rd.lineno + 1,
			           strerror(-rc));
			goto out_close;
		}
		if (st == READ_TOO_LONG) {
			report(ld, rd.lineno, "line is too long (more than %u bytes)",
			       PINS_READ_BUF - 1);
			continue;
		}
		load_line(ld, rd.lineno, s, len);
		if (ld->error != 0)
			break;
	}
	drain(ld);
	if (ld->error != 0) {
		rc = ld->error;
		append_err(err, errlen, "%s:%lu: out of memory\n", path, rd.lineno);
		goto out_close;
	}
	if (ld->unresolved)
		find_first_lines(ld, rd.buf);
	flush_reports(ld, err, errlen);
	rc = ld->problems > INT32_MAX ? INT32_MAX : (int)ld->problems;

out_close:
	fclose(rd.f);
out:
	free(rd.buf);
	name_index_reset(&ld->names);
	free(ld);
	return rc;
}

uint64_t pins_digest(const struct pins *p, const char *const *names, size_t n,
		     size_t *per_cluster)
{
	uint64_t sum = 0;

	if (per_cluster)
		memset(per_cluster, 0, n * sizeof(*per_cluster));
	for (size_t i = 0; i <= p->mask; i++) {
		uint64_t s = p->slots[i];
		const uint8_t *rec;
		uint16_t cl;
		uint64_t seed;

		if (s == 0)
			continue;
		rec = p->arena + slot_off(s);
		cl = slot_cluster(s);
		/* Seeded by the cluster's name, not its index: the order of sections may differ. */
		seed = cl < n ? XXH3_64bits(names[cl], strlen(names[cl])) : cl;
		/* A sum of per-pin hashes: the slot order (insertion history) does not matter. */
		sum += XXH3_64bits_withSeed(rec + 1, rec[0], seed);
		if (per_cluster && cl < n)
			per_cluster[cl]++;
	}
	return sum;
}

/*
 * --- Changing the file (the admin console's PIN and UNPIN) ---
 *
 * The file is rewritten whole into a temporary file next to it, flushed to
 * disk, then renamed over it and the directory flushed, so a crash leaves
 * either the old file or the new one, never half of one. Comments, blank
 * lines and every other pin are kept as they are, in order.
 */

/* The tenant of a pins file line (its first field), or NULL for a blank or comment line. */
static const char *line_tenant(const char *s, size_t len, size_t *tlen)
{
	struct fields fl;

	split_fields((const uint8_t *)s, len, &fl);
	if (fl.n == 0)
		return NULL;
	*tlen = fl.len[0];
	return (const char *)fl.f[0];
}

static int fail_errno(char *err, size_t errlen, const char *what, const char *path)
{
	int e = errno ? errno : EIO;

	snprintf(err, errlen, "%s %s: %s", what, path, strerror(e));
	return -e;
}

int pins_file_rewrite(const char *path, const void *tenant, size_t len, const char *cluster,
		      char *tmp, size_t tmpcap, bool *found, char *err, size_t errlen)
{
	FILE *in, *out = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int fd, rc = 0;
	bool ends_nl = true;

	*found = false;
	if ((size_t)snprintf(tmp, tmpcap, "%s.tmp.XXXXXX", path) >= tmpcap) {
		snprintf(err, errlen, "pins file path too long: %s", path);
		return -ENAMETOOLONG;
	}
	in = fopen(path, "r");
	if (in == NULL && errno != ENOENT)
		return fail_errno(err, errlen, "cannot read", path);
	fd = mkstemp(tmp);
	if (fd == -1) {
		rc = fail_errno(err, errlen, "cannot create a file next to", path);
		goto out;
	}
	/* mkstemp makes it 0600; a pins file is configuration, readable like the rest. */
	(void)fchmod(fd, 0644);
	out = fdopen(fd, "w");
	if (out == NULL) {
		close(fd);
		unlink(tmp);
		rc = fail_errno(err, errlen, "cannot write", tmp);
		goto out;
	}
	while (in && (n = getline(&line, &cap, in)) != -1) {
		size_t tl;
		const char *t = line_tenant(line, (size_t)n, &tl);

		if (t && tl == len && memcmp(t, tenant, len) == 0) {
			*found = true;
			continue;
		}
		fwrite(line, 1, (size_t)n, out);
		ends_nl = n > 0 && line[n - 1] == '\n';
	}
	if (in && ferror(in)) {
		rc = fail_errno(err, errlen, "cannot read", path);
		goto fail;
	}
	if (cluster) {
		if (!ends_nl)
			fputc('\n', out);
		fwrite(tenant, 1, len, out);
		fprintf(out, " %s\n", cluster);
	}
	if (fflush(out) != 0 || fsync(fileno(out)) == -1) {
		rc = fail_errno(err, errlen, "cannot write", tmp);
		goto fail;
	}
	if (fclose(out) != 0) {
		out = NULL;
		rc = fail_errno(err, errlen, "cannot write", tmp);
		goto fail;
	}
	out = NULL;
	goto out;
fail:
	if (out)
		fclose(out);
	unlink(tmp);
out:
	free(line);
	if (in)
		fclose(in);
	return rc;
}

int pins_file_commit(const char *tmp, const char *path, char *err, size_t errlen)
{
	const char *slash = strrchr(path, '/');
	char dir[4096];
	int fd;

	if (rename(tmp, path) == -1) {
		int rc = fail_errno(err, errlen, "cannot replace", path);

		unlink(tmp);
		return rc;
	}
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	/* The rename is durable only once the directory is on disk too. */
	fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd == -1 || fsync(fd) == -1) {
		int rc = fail_errno(err, errlen, "cannot flush the directory", dir);

		if (fd != -1)
			close(fd);
		return rc;
	}
	close(fd);
	return 0;
}
