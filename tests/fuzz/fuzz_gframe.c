/*
 * fuzz_gframe.c - differential libFuzzer target for the guard's framer (src/gframe.c).
 *
 * The input drives a generator: a stream of valid client messages (Query,
 * Parse/Bind/Describe/Execute/Sync, CopyData, Close, FunctionCall), small and
 * larger than the framer's hold limit, some holding the tenant key and some
 * a tenant switch, plus a cut list. The stream is fed to one framer whole
 * and to another cut at the listed points, and a stream of server answers
 * (with ReadyForQuery for every Sync/Query sent) is fed back the same two
 * ways. Checks:
 *   - cut and whole give byte-identical output, both directions;
 *   - with no refusal and no overlong statement, the output is the input;
 *   - no statement that the server would execute holds a switch: every
 *     Query or Parse in the output either lacks the switch text or is
 *     spoiled (its text ends early, so the server rejects the message);
 *   - every error the framer queued reaches the client, before a
 *     ReadyForQuery, when the server reported no error in that batch;
 *   - the output parses as a sequence of whole messages.
 *
 * Build: see tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gframe.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                       \
	do {                                                                              \
		if (!(cond)) {                                                            \
			fprintf(stderr, "fuzz_gframe: check failed: %s (%s:%d)\n", #cond, \
			        __FILE__, __LINE__);                                      \
			abort();                                                          \
		}                                                                         \
	} while (0)

#define KEY      "app.tenant_id"
#define SWITCH   "set app.tenant_id = 'other'"
#define MAX_HOLD 600

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		CHECK(b->p != NULL);
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
	uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};

	put(b, x, 4);
}

static void put_msg(struct buf *b, uint8_t type, const void *body, size_t n)
{
	put(b, &type, 1);
	put_u32(b, (uint32_t)(n + 4));
	put(b, body, n);
}

/* The fuzzer's bytes, read one at a time; zeros once they run out. */
struct src {
	const uint8_t *p;
	size_t n;
};

static uint8_t next(struct src *s)
{
	uint8_t v;

	if (s->n == 0)
		return 0;
	v = *s->p++;
	s->n--;
	return v;
}

/* The owner: counts refusals, refuses any statement whose text holds SWITCH. */
struct owner {
	struct buf *out_sv, *out_cl;
	unsigned refused, overlong;
};

/* a and b hold the same bytes (either may be empty, with a NULL pointer). */
static bool same(const struct buf *a, const uint8_t *b, size_t n)
{
	return a->len == n && (n == 0 || memcmp(a->p, b, n) == 0);
}

static bool holds(const uint8_t *p, size_t n, const char *needle)
{
	return n > 0 && memmem(p, n, needle, strlen(needle)) != NULL;
}

static bool o_server(void *ctx, const uint8_t *p, size_t n)
{
	put(((struct owner *)ctx)->out_sv, p, n);
	return true;
}

static bool o_client(void *ctx, const uint8_t *p, size_t n)
{
	put(((struct owner *)ctx)->out_cl, p, n);
	return true;
}

static bool o_wants(void *ctx, uint8_t type)
{
	return type == 'Q' || type == 'P';
}

static struct gframe_error *err_msg(const char *code)
{
	struct buf b = {0};
	struct gframe_error *e;

	put_msg(&b, 'E', code, strlen(code) + 1);
	e = gframe_error_new(b.p, b.len);
	free(b.p);
	CHECK(e != NULL);
	return e;
}

static enum gframe_verdict o_inspect(void *ctx, const uint8_t *m, size_t len,
                                     struct gframe_error **err)
{
	struct owner *o = ctx;

	CHECK(len >= 5 && proto_get_u32(m + 1) + 1 == len);
	CHECK(m[0] == 'Q' || m[0] == 'P');
	if (!holds(m, len, SWITCH))
		return GFRAME_PASS;
	o->refused++;
	*err = err_msg("42501");
	return GFRAME_REFUSE;
}

static struct gframe_error *o_overlong(void *ctx, uint8_t type, size_t len)
{
	((struct owner *)ctx)->overlong++;
	return err_msg("54000");
}

static const struct gframe_ops ops = {o_server, o_client, o_wants, o_inspect, o_overlong};

/* A statement text: filler, maybe the key, maybe the switch, at a chosen place. */
static void gen_sql(struct src *s, struct buf *sql, bool *has_key)
{
	size_t len = next(s) & 0x80 ? (size_t)next(s) * 8 : next(s) & 0x3f;
	uint8_t what = next(s) % 4;
	size_t at = len ? (next(s) * len) / 256 : 0;
	static const char filler[] = "select 1, 'abc' from t where x = 2 ";

	*has_key = false;
	for (size_t i = 0; i < len; i++) {
		if (i == at && what == 1) {
			put(sql, KEY, strlen(KEY));
			*has_key = true;
		} else if (i == at && what == 2) {
			put(sql, SWITCH, strlen(SWITCH));
			*has_key = true;
		}
		put(sql, &filler[i % (sizeof(filler) - 1)], 1);
	}
	if (len == 0 && what == 2) {
		put(sql, SWITCH, strlen(SWITCH));
		*has_key = true;
	}
}

/* The client stream; *dirty: something in it holds the key (may be refused or spoiled). */
static void gen_stream(struct src *s, struct buf *in, bool *dirty)
{
	unsigned nmsgs = 1 + next(s) % 24;

	*dirty = false;
	for (unsigned k = 0; k < nmsgs && s->n > 0; k++) {
		struct buf body = {0};
		bool key = false;

		switch (next(s) % 6) {
		case 0: /* simple Query */
			gen_sql(s, &body, &key);
			put(&body, "", 1);
			put_msg(in, 'Q', body.p, body.len);
			break;
		case 1: /* an extended batch: Parse, Bind, Describe, Execute, Sync */
			put(&body, "s1", 3);
			gen_sql(s, &body, &key);
			put(&body, "\0\0\0", 3);
			put_msg(in, 'P', body.p, body.len);
			put_msg(in, 'B', "\0s1\0\0\0\0\0\0\0", 10);
			put_msg(in, 'D', "P", 2);
			put_msg(in, 'E', "\0\0\0\0\0", 5);
			put_msg(in, 'S', NULL, 0);
			break;
		case 2: { /* CopyData with anything, even the switch: never looked at */
			size_t n = next(s) & 0x7f;

			gen_sql(s, &body, &key);
			key = false;
			for (size_t i = 0; i < n; i++)
				put(&body, "x", 1);
			put_msg(in, 'd', body.p, body.len);
			break;
		}
		case 3:
			put_msg(in, 'C', "Ss1", 4);
			break;
		case 4:
			put_msg(in, 'S', NULL, 0);
			break;
		default:
			put_msg(in, 'H', NULL, 0);
			break;
		}
		*dirty |= key;
		free(body.p);
	}
}

/* The server's answers: a ReadyForQuery for every Query and Sync, errors now and then. */
static void gen_answers(struct src *s, const struct buf *in, struct buf *out)
{
	size_t i = 0;

	while (i + 5 <= in->len) {
		uint8_t t = in->p[i];
		uint32_t len = proto_get_u32(in->p + i + 1);

		if (t == 'Q' || t == 'S') {
			if (next(s) % 5 == 0)
				put_msg(out, 'E', "SERROR\0\0", 8);
			else
				put_msg(out, 'C', "SELECT 1", 9);
			put_msg(out, 'Z', "I", 1);
		}
		i += 1 + (size_t)len;
	}
}

static void feed(struct gframe *f, bool server, const struct buf *in, const uint8_t *cuts,
                 size_t ncuts)
{
	size_t at = 0, c = 0;

	while (at < in->len) {
		size_t n = in->len - at;

		if (cuts) {
			n = c < ncuts ? (size_t)cuts[c++] + 1 : n;
			n = n < in->len - at ? n : in->len - at;
		}
		CHECK(server ? gframe_server(f, in->p + at, n) : gframe_client(f, in->p + at, n));
		at += n;
	}
}

/* Every Query/Parse the server would run holds no switch. */
static void check_no_switch(const struct buf *sv)
{
	size_t i = 0;

	while (i < sv->len) {
		uint32_t len;
		const uint8_t *body;

		CHECK(i + 5 <= sv->len);
		len = proto_get_u32(sv->p + i + 1);
		CHECK(len >= 4 && i + 1 + len <= sv->len);
		body = sv->p + i + 5;
		if (sv->p[i] == 'Q') {
			size_t sl = strnlen((const char *)body, len - 4);

			/* Whole text, one NUL, nothing after: the server runs it. */
			if (sl + 1 == len - 4)
				CHECK(!holds(body, sl, SWITCH));
		} else if (sv->p[i] == 'P') {
			size_t nl = strnlen((const char *)body, len - 4);
			size_t sl = nl < len - 4
			                    ? strnlen((const char *)body + nl + 1, len - 5 - nl)
			                    : 0;

			if (nl + 1 + sl + 1 + 2 == len - 4)
				CHECK(!holds(body + nl + 1, sl, SWITCH));
		}
		i += 1 + (size_t)len;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct src s = {data, size};
	struct buf in = {0}, ans = {0};
	struct buf sv[2] = {{0}}, cl[2] = {{0}};
	struct owner o[2] = {{&sv[0], &cl[0], 0, 0}, {&sv[1], &cl[1], 0, 0}};
	struct gframe f[2];
	uint8_t cuts[64];
	size_t ncuts;
	bool dirty;

	ncuts = next(&s) % sizeof(cuts);
	for (size_t i = 0; i < ncuts; i++)
		cuts[i] = next(&s);
	gen_stream(&s, &in, &dirty);
	for (int k = 0; k < 2; k++)
		gframe_init(&f[k], &ops, &o[k], KEY, MAX_HOLD, NULL, 0);
	feed(&f[0], false, &in, NULL, 0);
	feed(&f[1], false, &in, cuts, ncuts);

	/* Cut or whole, the server gets the same bytes, and the same refusals were made. */
	CHECK(same(&sv[0], sv[1].p, sv[1].len));
	CHECK(o[0].refused == o[1].refused && o[0].overlong == o[1].overlong);
	if (!dirty) {
		CHECK(o[0].refused == 0 && o[0].overlong == 0);
		CHECK(same(&sv[0], in.p, in.len));
	}
	check_no_switch(&sv[0]);

	/* The server's answers, whole and cut: the same bytes reach the client. */
	gen_answers(&s, &sv[0], &ans);
	feed(&f[0], true, &ans, NULL, 0);
	feed(&f[1], true, &ans, cuts, ncuts);
	CHECK(same(&cl[0], cl[1].p, cl[1].len));
	/* Every error has met its ReadyForQuery. */
	CHECK(f[0].errors == NULL && f[1].errors == NULL);
	if (o[0].refused == 0 && o[0].overlong == 0)
		CHECK(same(&cl[0], ans.p, ans.len));

	for (int k = 0; k < 2; k++) {
		gframe_free(&f[k]);
		free(sv[k].p);
		free(cl[k].p);
	}
	free(in.p);
	free(ans.p);
	return 0;
}
