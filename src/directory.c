/*
 * directory.c - the tenant directory's rows and snapshots (pure).
 *
 * A snapshot is a shared base plus a private delta. The base is a pins
 * table (src/pins.c: open addressing, 8-byte slots, the tenant bytes in one
 * arena) whose 16-bit value packs state << 12 | cluster index; it is built
 * once by a full load and never changes. The delta holds the rows applied
 * since, as an append-only arena of records [len][tenant][value: 2 bytes]
 * and a small pins index over it built newest-first, so the newest row of a
 * tenant wins. dir_apply() copies the delta (small) and shares the base
 * (refcounted), which is how an incremental change avoids copying ten
 * million rows. The caller replaces the whole snapshot by a full load when
 * the delta grows.
 *
 * This module does no I/O and takes no locks: snapshots are immutable once
 * returned, and lookups on them may run on any number of threads.
 */
#include "directory.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "common.h"
#include "pins.h"

#define STATE_SHIFT  12
#define CLUSTER_MASK 0x0fffu
#define MAX_FIELD    255 /* cluster and state names */
#define MAX_VERSION  20  /* digits and sign of an int64 */

struct moving {
	uint64_t since_ms;
	uint8_t len;
	uint8_t tenant[DIR_MAX_TENANT_LEN];
};

struct dir_base {
	atomic_int refs;
	struct pins *pins; /* owned; sealed */
	char **names;      /* owned: cluster names, index = value & CLUSTER_MASK */
	size_t nnames;
	size_t ignored;
	int64_t version;
};

struct dir {
	atomic_int refs;
	struct dir_base *base; /* owned reference */
	uint8_t *darena;       /* owned: delta records, oldest first */
	size_t dlen;
	struct pins *dindex; /* owned; NULL: no delta */
	size_t dignored;
	int64_t version;
	struct moving *moving; /* owned */
	size_t nmoving;
};

/* Rows parsed ahead of their insert, their slots prefetched (see dir_builder_add). */
#define PIPELINE 16
struct pending {
	uint64_t hash;
	uint16_t value;
	uint8_t len;
	uint8_t tenant[DIR_MAX_TENANT_LEN];
};

struct dir_builder {
	struct dir_base *base;          /* owned until finish */
	struct pending queue[PIPELINE]; /* a ring, oldest at head */
	size_t head, queued;
	size_t *lens; /* owned: strlen of each name */
	dir_bad_fn bad;
	void *arg;
	struct moving *moving; /* owned */
	size_t nmoving, capmoving;
};

const char *dir_state_name(enum dir_state s)
{
	switch (s) {
	case DIR_NONE:
		return "none";
	case DIR_ACTIVE:
		return "active";
	case DIR_MOVING:
		return "moving";
	case DIR_BLOCKED:
		return "blocked";
	case DIR_INVALID:
		return "invalid";
	}
	return "?";
}

/* ---- parsing ------------------------------------------------------------ */

static int hexval(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Undoes COPY text escapes of field [p, end) into out (at most max bytes).
 * Returns the length, or -1 for \N (NULL) or a field over max.
 */
static long unescape(const uint8_t *p, const uint8_t *end, uint8_t *out, size_t max)
{
	size_t n = 0;

	if (end - p == 2 && p[0] == '\\' && p[1] == 'N')
		return -1;
	while (p < end) {
		uint8_t c = *p++;

		if (c == '\\' && p < end) {
			c = *p++;
			switch (c) {
			case 'b':
				c = '\b';
				break;
			case 'f':
				c = '\f';
				break;
			case 'n':
				c = '\n';
				break;
			case 'r':
				c = '\r';
				break;
			case 't':
				c = '\t';
				break;
			case 'v':
				c = '\v';
				break;
			case 'x':
				if (p < end && hexval(*p) >= 0) {
					int v = hexval(*p++);

					if (p < end && hexval(*p) >= 0)
						v = v * 16 + hexval(*p++);
					c = (uint8_t)v;
				}
				break;
			default:
				if (c >= '0' && c <= '7') {
					int v = c - '0';

					for (int k = 0; k < 2 && p < end && *p >= '0' && *p <= '7';
					     k++)
						v = v * 8 + (*p++ - '0');
					c = (uint8_t)v;
				}
				break;
			}
		}
		if (n == max)
			return -1;
		out[n++] = c;
	}
	return (long)n;
}

static bool parse_version(const uint8_t *p, size_t n, int64_t *v)
{
	bool neg = false;
	uint64_t x = 0;

	if (n > 0 && p[0] == '-') {
		neg = true;
		p++;
		n--;
	}
	if (n == 0 || n > MAX_VERSION - 1)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		x = x * 10 + (uint64_t)(p[i] - '0');
		if (x > (uint64_t)INT64_MAX)
			return false;
	}
	*v = neg ? -(int64_t)x : (int64_t)x;
	return true;
}

enum proto_status dir_parse_row(const uint8_t *p, size_t n, uint8_t *buf, size_t cap,
                                struct dir_row *out)
{
	static const size_t max[3] = {DIR_MAX_TENANT_LEN, MAX_FIELD, MAX_FIELD};
	const uint8_t *end = p + n, *f[4], *fe[4];
	size_t nf = 0, used = 0;
	long len[3];

	/* Raw tabs separate fields; escaped ones are "\t", so this split is exact. */
	f[0] = p;
	for (const uint8_t *q = p; q < end; q++) {
		if (*q != '\t')
			continue;
		if (nf == 3)
			return PROTO_BAD;
		fe[nf++] = q;
		f[nf] = q + 1;
	}
	if (nf != 3)
		return PROTO_BAD;
	fe[3] = end;
	for (size_t i = 0; i < 3; i++) {
		if (cap - used < max[i])
			return PROTO_BAD;
		len[i] = unescape(f[i], fe[i], buf + used, max[i]);
		if (len[i] <= 0)
			return PROTO_BAD;
		used += (size_t)len[i];
	}
	if (!parse_version(f[3], (size_t)(fe[3] - f[3]), &out->version))
		return PROTO_BAD;
	out->tenant = buf;
	out->tlen = (size_t)len[0];
	out->cluster = (const char *)buf + len[0];
	out->clen = (size_t)len[1];
	out->state = (const char *)buf + len[0] + len[1];
	out->slen = (size_t)len[2];
	return PROTO_OK;
}

/* ---- line framing ------------------------------------------------------- */

void dir_lines_init(struct dir_lines *l)
{
	l->len = 0;
	l->skipping = false;
}

void dir_lines_feed(struct dir_lines *l, const uint8_t *p, size_t n, dir_line_fn fn, void *arg)
{
	const uint8_t *end = p + n;

	while (p < end) {
		const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
		size_t take = (size_t)((nl ? nl : end) - p);

		if (l->skipping) {
			if (nl == NULL)
				return;
			l->skipping = false;
			p = nl + 1;
			continue;
		}
		if (l->len == 0 && nl != NULL && take < DIR_LINE_MAX) {
			fn(arg, p, take); /* the common case: a whole line in the chunk */
			p = nl + 1;
			continue;
		}
		if (take >= DIR_LINE_MAX - l->len) {
			fn(arg, NULL, 0);
			l->len = 0;
			l->skipping = nl == NULL;
			p = nl ? nl + 1 : end;
			continue;
		}
		memcpy(l->buf + l->len, p, take);
		l->len += take;
		if (nl == NULL)
			return;
		fn(arg, l->buf, l->len);
		l->len = 0;
		p = nl + 1;
	}
}

void dir_lines_finish(struct dir_lines *l, dir_line_fn fn, void *arg)
{
	if (!l->skipping && l->len > 0)
		fn(arg, l->buf, l->len);
	dir_lines_init(l);
}

/* ---- snapshots ---------------------------------------------------------- */

static void base_free(struct dir_base *b)
{
	if (b == NULL)
		return;
	pins_free(b->pins);
	for (size_t i = 0; i < b->nnames; i++)
		free(b->names[i]);
	free(b->names);
	free(b);
}

static void base_unref(struct dir_base *b)
{
	if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1)
		base_free(b);
}

/* The value a row is kept with; *why says why it is DIR_INVALID. */
static uint16_t row_value(const char *const *names, const size_t *lens, size_t n,
                          const struct dir_row *r, const char **why)
{
	static const struct {
		const char *name;
		enum dir_state st;
	} states[] = {{"active", DIR_ACTIVE}, {"moving", DIR_MOVING}, {"blocked", DIR_BLOCKED}};
	enum dir_state st = DIR_INVALID;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(states); i++) {
		if (r->slen == strlen(states[i].name) &&
		    memcmp(r->state, states[i].name, r->slen) == 0)
			st = states[i].st;
	}
	if (st == DIR_INVALID) {
		*why = "unknown state";
		return DIR_INVALID << STATE_SHIFT;
	}
	for (i = 0; i < n; i++) {
		if (lens[i] == r->clen && memcmp(names[i], r->cluster, r->clen) == 0)
			return (uint16_t)((unsigned)st << STATE_SHIFT | i);
	}
	*why = "unknown cluster";
	return DIR_INVALID << STATE_SHIFT;
}

static int moving_add(struct moving **v, size_t *n, size_t *cap, const uint8_t *t, size_t len,
                      uint64_t since)
{
	struct moving *m;

	if (*n == DIR_MAX_MOVING)
		return 0; /* the fence sees the first ones; the rest wait their turn */
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 8;

		m = realloc(*v, nc * sizeof(*m));
		if (m == NULL)
			return -ENOMEM;
		*v = m;
		*cap = nc;
	}
	m = &(*v)[(*n)++];
	m->since_ms = since;
	m->len = (uint8_t)len;
	memcpy(m->tenant, t, len);
	return 0;
}

/* When prev already knew the tenant moving, since then; otherwise now. */
static uint64_t moving_since(const struct dir *prev, const uint8_t *t, size_t len, uint64_t now)
{
	for (size_t i = 0; prev && i < prev->nmoving; i++) {
		const struct moving *m = &prev->moving[i];

		if (m->len == len && memcmp(m->tenant, t, len) == 0)
			return m->since_ms;
	}
	return now;
}

struct dir_builder *dir_builder_new(const char *const *clusters, size_t nclusters, size_t expect,
                                    dir_bad_fn bad, void *arg)
{
	struct dir_builder *b;

	if (nclusters > DIR_MAX_CLUSTERS)
		return NULL;
	b = calloc(1, sizeof(*b));
	if (b == NULL)
		return NULL;
	b->bad = bad;
	b->arg = arg;
	b->base = calloc(1, sizeof(*b->base));
	if (b->base == NULL)
		goto fail;
	atomic_init(&b->base->refs, 1);
	b->base->pins = pins_new();
	b->base->names = calloc(nclusters + 1, sizeof(char *));
	b->lens = calloc(nclusters + 1, sizeof(size_t));
	if (b->base->pins == NULL || b->base->names == NULL || b->lens == NULL)
		goto fail;
	for (size_t i = 0; i < nclusters; i++) {
		b->base->names[i] = strdup(clusters[i]);
		if (b->base->names[i] == NULL)
			goto fail;
		b->base->nnames++;
		b->lens[i] = strlen(clusters[i]);
	}
	if (expect > 0 && pins_reserve(b->base->pins, expect) < 0)
		goto fail;
	return b;
fail:
	dir_builder_free(b);
	return NULL;
}

void dir_builder_free(struct dir_builder *b)
{
	if (b == NULL)
		return;
	base_free(b->base);
	free(b->lens);
	free(b->moving);
	free(b);
}

/* Inserts the oldest queued row. */
static int insert_oldest(struct dir_builder *b)
{
	struct pending *pd = &b->queue[b->head];

	b->head = (b->head + 1) % PIPELINE;
	b->queued--;
	/* -EEXIST: the table's primary key makes it impossible; the first row stays. */
	return pins_add_hashed(b->base->pins, pd->tenant, pd->len, pd->hash, pd->value) == -ENOMEM
	               ? -ENOMEM
	               : 0;
}

/*
 * A random slot is a cache miss (hundreds of nanoseconds in a table of
 * millions), so a row's slot is prefetched here and the row inserted
 * PIPELINE rows later, when the slot is most likely cached: what bounds a
 * load of ten million rows is those misses, not parsing.
 */
int dir_builder_add(struct dir_builder *b, const struct dir_row *r)
{
	struct dir_base *base = b->base;
	const char *why = NULL;
	struct pending *pd;
	uint16_t v;

	if (r->tlen == 0 || r->tlen > DIR_MAX_TENANT_LEN)
		return 1; /* dir_parse_row never gives these */
	v = row_value((const char *const *)base->names, b->lens, base->nnames, r, &why);
	if (b->queued == PIPELINE && insert_oldest(b) < 0)
		return -ENOMEM;
	pd = &b->queue[(b->head + b->queued) % PIPELINE];
	b->queued++;
	pd->hash = XXH3_64bits(r->tenant, r->tlen);
	pd->value = v;
	pd->len = (uint8_t)r->tlen;
	memcpy(pd->tenant, r->tenant, r->tlen);
	pins_prefetch(base->pins, pd->hash);
	if (r->version > base->version)
		base->version = r->version;
	if (v >> STATE_SHIFT == DIR_MOVING &&
	    moving_add(&b->moving, &b->nmoving, &b->capmoving, r->tenant, r->tlen, 0) < 0)
		return -ENOMEM;
	if (why != NULL) {
		base->ignored++;
		if (b->bad)
			b->bad(b->arg, r, why);
		return 1;
	}
	return 0;
}

struct dir *dir_builder_finish(struct dir_builder *b, const struct dir *prev, uint64_t now_ms)
{
	struct dir *d = calloc(1, sizeof(*d));

	while (d != NULL && b->queued > 0) {
		if (insert_oldest(b) < 0) {
			free(d);
			d = NULL;
		}
	}
	if (d == NULL) {
		dir_builder_free(b);
		return NULL;
	}
	atomic_init(&d->refs, 1);
	pins_seal(b->base->pins);
	d->base = b->base;
	d->version = b->base->version;
	d->moving = b->moving;
	d->nmoving = b->nmoving;
	for (size_t i = 0; i < d->nmoving; i++)
		d->moving[i].since_ms =
		        moving_since(prev, d->moving[i].tenant, d->moving[i].len, now_ms);
	b->base = NULL;
	b->moving = NULL;
	dir_builder_free(b);
	return d;
}

struct dir *dir_ref(struct dir *d)
{
	if (d != NULL)
		atomic_fetch_add(&d->refs, 1);
	return d;
}

void dir_unref(struct dir *d)
{
	if (d == NULL || atomic_fetch_sub(&d->refs, 1) != 1)
		return;
	base_unref(d->base);
	free(d->darena);
	pins_free(d->dindex);
	free(d->moving);
	free(d);
}

/* Appends one delta record: [len][tenant][value, little-endian]. */
static void put_record(uint8_t *a, size_t *off, const uint8_t *t, size_t len, uint16_t v)
{
	a[*off] = (uint8_t)len;
	memcpy(a + *off + 1, t, len);
	a[*off + 1 + len] = (uint8_t)v;
	a[*off + 2 + len] = (uint8_t)(v >> 8);
	*off += 3 + len;
}

struct dir *dir_apply(const struct dir *old, const struct dir_row *rows, size_t n, uint64_t now_ms,
                      dir_bad_fn bad, void *arg)
{
	const struct dir_base *base = old->base;
	size_t add = 0, nrec = 0, cap = 0, off, *offs = NULL;
	struct dir *d = calloc(1, sizeof(*d));

	if (d == NULL)
		return NULL;
	atomic_init(&d->refs, 1);
	d->version = old->version;
	for (size_t i = 0; i < n; i++)
		add += 3 + rows[i].tlen;
	d->darena = malloc(old->dlen + add + 1);
	d->dindex = pins_new();
	if (d->darena == NULL || d->dindex == NULL)
		goto fail;
	memcpy(d->darena, old->darena ? old->darena : (const uint8_t *)"", old->dlen);
	off = old->dlen;
	{
		size_t *lens = calloc(base->nnames + 1, sizeof(*lens));

		if (lens == NULL)
			goto fail;
		for (size_t i = 0; i < base->nnames; i++)
			lens[i] = strlen(base->names[i]);
		for (size_t i = 0; i < n; i++) {
			const char *why = NULL;
			uint16_t v;

			if (rows[i].tlen == 0 || rows[i].tlen > DIR_MAX_TENANT_LEN)
				continue;
			v = row_value((const char *const *)base->names, lens, base->nnames,
			              &rows[i], &why);
			if (why != NULL && bad)
				bad(arg, &rows[i], why);
			put_record(d->darena, &off, rows[i].tenant, rows[i].tlen, v);
			if (rows[i].version > d->version)
				d->version = rows[i].version;
		}
		free(lens);
	}
	d->dlen = off;
	/* Record offsets, to walk newest first. */
	for (size_t o = 0; o < d->dlen; o += 3 + d->darena[o])
		nrec++;
	offs = malloc((nrec + 1) * sizeof(*offs));
	if (offs == NULL || pins_reserve(d->dindex, nrec) < 0)
		goto fail;
	nrec = 0;
	for (size_t o = 0; o < d->dlen; o += 3 + d->darena[o])
		offs[nrec++] = o;
	cap = 0;
	for (size_t k = nrec; k-- > 0;) {
		const uint8_t *r = d->darena + offs[k];
		uint16_t v = (uint16_t)(r[1 + r[0]] | r[2 + r[0]] << 8);
		size_t before = pins_count(d->dindex);

		if (pins_add(d->dindex, r + 1, r[0], v) == -ENOMEM)
			goto fail;
		if (pins_count(d->dindex) == before)
			continue; /* an older row of a tenant seen already */
		if (v >> STATE_SHIFT == DIR_INVALID)
			d->dignored++;
		if (v >> STATE_SHIFT == DIR_MOVING &&
		    moving_add(&d->moving, &d->nmoving, &cap, r + 1, r[0],
		               moving_since(old, r + 1, r[0], now_ms)) < 0)
			goto fail;
	}
	/* The other moving tenants (base or older delta) that the new delta does not override. */
	for (size_t i = 0; i < old->nmoving; i++) {
		const struct moving *m = &old->moving[i];
		uint64_t h = XXH3_64bits(m->tenant, m->len);

		if (pins_lookup_hashed(d->dindex, m->tenant, m->len, h) >= 0)
			continue;
		if (moving_add(&d->moving, &d->nmoving, &cap, m->tenant, m->len, m->since_ms) < 0)
			goto fail;
	}
	pins_seal(d->dindex);
	free(offs);
	atomic_fetch_add(&old->base->refs, 1);
	d->base = old->base;
	return d;
fail:
	free(offs);
	free(d->darena);
	pins_free(d->dindex);
	free(d->moving);
	free(d);
	return NULL;
}

enum dir_state dir_lookup(const struct dir *d, const void *tenant, size_t len, uint64_t hash,
                          const char **cluster)
{
	int v = -1;
	enum dir_state st;

	if (d == NULL)
		return DIR_NONE;
	if (d->dindex != NULL)
		v = pins_lookup_hashed(d->dindex, tenant, len, hash);
	if (v < 0)
		v = pins_lookup_hashed(d->base->pins, tenant, len, hash);
	if (v < 0)
		return DIR_NONE;
	st = (enum dir_state)((unsigned)v >> STATE_SHIFT);
	if (st != DIR_INVALID && cluster != NULL)
		*cluster = d->base->names[(unsigned)v & CLUSTER_MASK];
	return st;
}

int64_t dir_version(const struct dir *d)
{
	return d ? d->version : 0;
}

size_t dir_rows(const struct dir *d)
{
	return d ? pins_count(d->base->pins) + (d->dindex ? pins_count(d->dindex) : 0) : 0;
}

size_t dir_ignored(const struct dir *d)
{
	return d ? d->base->ignored + d->dignored : 0;
}

size_t dir_delta_rows(const struct dir *d)
{
	return d && d->dindex ? pins_count(d->dindex) : 0;
}

size_t dir_memory(const struct dir *d)
{
	if (d == NULL)
		return 0;
	return sizeof(*d) + pins_memory(d->base->pins) + d->dlen +
	       (d->dindex ? pins_memory(d->dindex) : 0) + d->nmoving * sizeof(*d->moving);
}

size_t dir_nmoving(const struct dir *d)
{
	return d ? d->nmoving : 0;
}

const uint8_t *dir_moving(const struct dir *d, size_t i, size_t *len, uint64_t *since_ms)
{
	if (d == NULL || i >= d->nmoving)
		return NULL;
	*len = d->moving[i].len;
	if (since_ms)
		*since_ms = d->moving[i].since_ms;
	return d->moving[i].tenant;
}

size_t dir_nclusters(const struct dir *d)
{
	return d ? d->base->nnames : 0;
}

const char *dir_cluster_name(const struct dir *d, size_t i)
{
	return d && i < d->base->nnames ? d->base->names[i] : NULL;
}
