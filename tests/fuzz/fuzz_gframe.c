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
	return type == 'Q' || type == 'P' || type == 'F';
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
	CHECK(m[0] == 'Q' || m[0] == 'P' || m[0] == 'F');
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
/*
 * The client stream; *dirty: something in it holds the key (may be refused
 * or spoiled); *drift: a Query or FunctionCall follows extended messages
 * without a Sync between (the server may skip it, and then the framer's
 * ReadyForQuery count runs ahead: a dead error then waits longer).
 */
static void gen_stream(struct src *s, struct buf *in, bool *dirty, bool *drift)
{
	unsigned nmsgs = 1 + next(s) % 24;
	bool open = false;

	*dirty = *drift = false;
	for (unsigned k = 0; k < nmsgs && s->n > 0; k++) {
		struct buf body = {0};
		bool key = false;
		uint8_t what = next(s) % 9;

		if ((what == 0 || what == 6) && open)
			*drift = true;
		switch (what) {
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
			open = false;
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
			open = true;
			break;
		case 4:
			put_msg(in, 'S', NULL, 0);
			open = false;
			break;
		case 5:
			put_msg(in, 'H', NULL, 0);
			open = true;
			break;
		case 6: /* FunctionCall: its argument bytes may hold the switch */
			put(&body, "\0\0\x08\x1e\0\0\0\x01\0\0\0\x40", 12);
			gen_sql(s, &body, &key);
			put(&body, "\0\0", 2);
			put_msg(in, 'F', body.p, body.len);
			break;
		case 7: /* a Describe of a statement, alone */
			put_msg(in, 'D', "Ss1", 4);
			open = true;
			break;
		default: /* CopyFail and CopyDone outside COPY: ignored by the server, passed by us */
			gen_sql(s, &body, &key);
			key = false;
			put(&body, "", 1);
			put_msg(in, 'f', body.p, body.len);
			put_msg(in, 'c', NULL, 0);
			break;
		}
		*dirty |= key;
		free(body.p);
	}
	/* Every batch ends, as a client's does before it waits for the answers. */
	put_msg(in, 'S', NULL, 0);
}

static void put_error(struct buf *out, const char *code, const char *msg)
{
	struct buf body = {0};

	put(&body, "SERROR\0C", 8);
	put(&body, code, strlen(code) + 1);
	put(&body, "M", 1);
	put(&body, msg, strlen(msg) + 1);
	put(&body, "", 1);
	put_msg(out, 'E', body.p, body.len);
	free(body.p);
}

/* A Parse body PostgreSQL reads to its end: name, text, parameter types, nothing after. */
static bool parse_well_formed(const uint8_t *b, size_t n)
{
	size_t name = strnlen((const char *)b, n), sql, at;

	if (name + 1 > n)
		return false;
	sql = strnlen((const char *)b + name + 1, n - name - 1);
	at = name + 1 + sql + 1;
	if (at + 2 > n)
		return false;
	return at + 2 + 4 * (size_t)((b[at] << 8) | b[at + 1]) == n;
}

/*
 * A server that answers as PostgreSQL does, as far as the framer can tell:
 * after an error in an extended batch it skips every message up to Sync
 * (Query and FunctionCall too); a Query or Parse whose text ends before its
 * message does is "invalid message format"; a marker fails with its name;
 * anything else may fail now and then.
 */
static void gen_answers(struct src *s, const struct buf *in, struct buf *out)
{
	bool skipping = false;
	size_t i = 0;

	while (i + 5 <= in->len) {
		uint8_t t = in->p[i];
		uint32_t len = proto_get_u32(in->p + i + 1);
		const uint8_t *body = in->p + i + 5;
		size_t blen = len - 4;
		bool spoiled = false, marker = memmem(body, blen, GFRAME_MARKER, 24) != NULL;

		i += 1 + (size_t)len;
		if (t == 'Q')
			spoiled = strnlen((const char *)body, blen) + 1 != blen;
		else if (t == 'P')
			spoiled = !parse_well_formed(body, blen);
		if (t == 'S') {
			skipping = false;
			put_msg(out, 'Z', "I", 1);
			continue;
		}
		if (skipping)
			continue;
		if (t == 'F') {
			if (next(s) % 5 == 0)
				put_error(out, "XX000", "some error");
			else
				put_msg(out, 'V', "\xff\xff\xff\xff", 4);
			put_msg(out, 'Z', "I", 1);
			continue;
		}
		if (t == 'Q') {
			if (spoiled)
				put_error(out, "08P01", "invalid message format");
			else if (marker)
				put_error(out, "42703", (const char *)body);
			else if (next(s) % 5 == 0)
				put_error(out, "XX000", "some error");
			else
				put_msg(out, 'C', "SELECT 1", 9);
			put_msg(out, 'Z', "I", 1);
			continue;
		}
		if (t == 'f' || t == 'c') /* outside COPY, PostgreSQL ignores them */
			continue;
		if (t == 'P' || t == 'B' || t == 'D' || t == 'E' || t == 'C') {
			if (t == 'P' && spoiled) {
				put_error(out, "08P01", "invalid message format");
				skipping = true;
			} else if (marker) {
				put_error(out, "34000", (const char *)body + 1);
				skipping = true;
			} else if (next(s) % 7 == 0) {
				put_error(out, "XX000", "some error");
				skipping = true;
			} else {
				put_msg(out, t == 'P' ? '1' : t == 'B' ? '2' : t == 'C' ? '3' : 'n', NULL,
					0);
			}
		}
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
	bool dirty, drift;

	ncuts = next(&s) % sizeof(cuts);
	for (size_t i = 0; i < ncuts; i++)
		cuts[i] = next(&s);
	gen_stream(&s, &in, &dirty, &drift);
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
	/* No marker reaches the client: each was replaced, or skipped by the server. */
	CHECK(cl[0].len == 0 || !holds(cl[0].p, cl[0].len, GFRAME_MARKER));
	/* Every error has met its marker or its batch's ReadyForQuery. */
	if (!drift)
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
