/*
 * fuzz_directory.c - differential libFuzzer target for the tenant
 * directory's pure parts (src/directory.c).
 *
 * The input's first bytes are a cut list, the rest a stream of lines (a
 * cache file, COPY text rows). The stream is fed to one line framer whole
 * and to another cut at the listed points. Checks:
 *   - cut and whole give the same lines (and the same overlong reports);
 *   - no line handed out is longer than DIR_LINE_MAX or holds a '\n';
 *   - every line parses as a row or is refused, and a parsed row's fields
 *     stay within their limits;
 *   - the rows go into a snapshot and a delta over it, and every row's
 *     tenant then looks up to the state of its last row (the delta wins).
 *
 * Build: see tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "directory.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "fuzz_directory: check failed: %s (%s:%d)\n", #cond, \
			        __FILE__, __LINE__);                                         \
			abort();                                                             \
		}                                                                            \
	} while (0)

#define MAX_LINES 512

struct out {
	uint8_t *buf; /* lines joined, each followed by its length (4 bytes) */
	size_t len, cap;
	size_t nlines, overlong;
};

static void put(struct out *o, const void *p, size_t n)
{
	if (n == 0)
		return;
	if (o->len + n > o->cap) {
		o->cap = (o->len + n) * 2 + 64;
		o->buf = realloc(o->buf, o->cap);
		CHECK(o->buf != NULL);
	}
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

static void line_cb(void *arg, const uint8_t *p, size_t n)
{
	struct out *o = arg;
	uint32_t l = (uint32_t)n;

	if (p == NULL) {
		CHECK(n == 0);
		o->overlong++;
		put(o, "\xff\xff\xff\xff", 4);
		return;
	}
	CHECK(n < DIR_LINE_MAX);
	CHECK(memchr(p, '\n', n) == NULL);
	o->nlines++;
	put(o, p, n);
	put(o, &l, 4);
}

static const char *const names[] = {"a", "b", "c"};

struct rows {
	struct dir_row r[MAX_LINES];
	uint8_t buf[MAX_LINES][DIR_ROW_BUF];
	size_t n;
};

static void row_cb(void *arg, const uint8_t *p, size_t n)
{
	struct rows *rs = arg;
	struct dir_row r;

	if (p == NULL || rs->n == MAX_LINES)
		return;
	if (dir_parse_row(p, n, rs->buf[rs->n], DIR_ROW_BUF, &r) != PROTO_OK)
		return;
	CHECK(r.tlen >= 1 && r.tlen <= DIR_MAX_TENANT_LEN);
	CHECK(r.clen >= 1 && r.clen <= 255 && r.slen >= 1 && r.slen <= 255);
	CHECK(r.tenant == rs->buf[rs->n]);
	rs->r[rs->n++] = r;
}

/* The state the newest of rows[0..n) for this tenant gives, or DIR_NONE. */
static enum dir_state expected(const struct rows *rs, size_t n, const struct dir_row *t)
{
	for (size_t i = n; i-- > 0;) {
		const struct dir_row *r = &rs->r[i];
		bool known = false;

		if (r->tlen != t->tlen || memcmp(r->tenant, t->tenant, t->tlen) != 0)
			continue;
		for (size_t k = 0; k < 3; k++)
			known |= r->clen == 1 && r->cluster[0] == names[k][0];
		if (!known)
			return DIR_INVALID;
		if (r->slen == 6 && memcmp(r->state, "active", 6) == 0)
			return DIR_ACTIVE;
		if (r->slen == 6 && memcmp(r->state, "moving", 6) == 0)
			return DIR_MOVING;
		if (r->slen == 7 && memcmp(r->state, "blocked", 7) == 0)
			return DIR_BLOCKED;
		return DIR_INVALID;
	}
	return DIR_NONE;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct rows rs;
	struct out whole = {0}, cut = {0};
	struct dir_lines l1, l2;
	const uint8_t *s;
	size_t ncuts, n, pos = 0, half;
	struct dir_builder *b;
	struct dir *d0, *d1;

	if (size < 1)
		return 0;
	ncuts = data[0] % 16;
	if (size < 1 + ncuts * 2)
		return 0;
	s = data + 1 + ncuts * 2;
	n = size - 1 - ncuts * 2;

	dir_lines_init(&l1);
	dir_lines_feed(&l1, s, n, line_cb, &whole);
	dir_lines_finish(&l1, line_cb, &whole);
	dir_lines_init(&l2);
	for (size_t i = 0; i <= ncuts; i++) {
		size_t at = i < ncuts ? (size_t)(data[1 + 2 * i] | data[2 + 2 * i] << 8) : n;

		if (at > n)
			at = n;
		if (at < pos)
			continue;
		dir_lines_feed(&l2, s + pos, at - pos, line_cb, &cut);
		pos = at;
	}
	dir_lines_finish(&l2, line_cb, &cut);
	CHECK(whole.len == cut.len && whole.nlines == cut.nlines && whole.overlong == cut.overlong);
	CHECK(whole.len == 0 || memcmp(whole.buf, cut.buf, whole.len) == 0);
	free(whole.buf);
	free(cut.buf);

	/* The rows: the first half in a base (one row per tenant: the first wins there, as a
	 * primary key guarantees in the real table), the rest applied as a delta. */
	rs.n = 0;
	dir_lines_init(&l1);
	dir_lines_feed(&l1, s, n, row_cb, &rs);
	dir_lines_finish(&l1, row_cb, &rs);
	half = rs.n / 2;
	b = dir_builder_new(names, 3, 0, NULL, NULL);
	CHECK(b != NULL);
	for (size_t i = 0; i < half; i++) {
		bool dup = false;

		for (size_t k = 0; k < i && !dup; k++)
			dup = rs.r[k].tlen == rs.r[i].tlen &&
			      memcmp(rs.r[k].tenant, rs.r[i].tenant, rs.r[i].tlen) == 0;
		if (dup) {
			rs.r[i].tlen = 0; /* not in the base; expected() skips it too */
			continue;
		}
		CHECK(dir_builder_add(b, &rs.r[i]) >= 0);
	}
	d0 = dir_builder_finish(b, NULL, 0);
	CHECK(d0 != NULL);
	d1 = dir_apply(d0, rs.r + half, rs.n - half, 1, NULL, NULL);
	CHECK(d1 != NULL);
	for (size_t i = 0; i < rs.n; i++) {
		const struct dir_row *t = &rs.r[i];
		const char *cl = NULL;
		enum dir_state st;

		if (t->tlen == 0)
			continue;
		st = dir_lookup(d1, t->tenant, t->tlen, XXH3_64bits(t->tenant, t->tlen), &cl);
		CHECK(st == expected(&rs, rs.n, t));
		CHECK(st == DIR_INVALID || st == DIR_NONE || (cl != NULL && strlen(cl) == 1));
		if (i < half) {
			st = dir_lookup(d0, t->tenant, t->tlen, XXH3_64bits(t->tenant, t->tlen),
			                NULL);
			CHECK(st == expected(&rs, half, t));
		}
	}
	dir_unref(d0);
	dir_unref(d1);
	return 0;
}
