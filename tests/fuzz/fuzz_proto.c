/*
 * fuzz_proto.c - libFuzzer target for the wire-format module (src/proto.c).
 *
 * The input is read as a stream of typed messages, as a session reads a
 * server's replies: each framed body is copied into a block of exactly its
 * size (so ASan catches a read into the next message), parsed as an
 * ErrorResponse and checked as UTF-8. Parsed errors are rebuilt with
 * proto_error_response() and must parse back to the same fields.
 * proto_is_utf8() is compared with an independent validator written from
 * the Unicode standard's table of well-formed byte sequences (Table 3-7),
 * and the bounded reader is driven by the input as a tiny op-code program.
 *
 * Build: see tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_proto: check failed: %s (%s:%d)\n", #cond, __FILE__, \
			        __LINE__);                                                         \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* Unicode 15, Table 3-7: the well-formed UTF-8 byte sequences. */
static bool ref_utf8(const uint8_t *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t b = p[i];
		uint8_t lo = 0x80, hi = 0xBF;
		size_t k;

		if (b <= 0x7F) {
			i++;
			continue;
		}
		if (b >= 0xC2 && b <= 0xDF) {
			k = 1;
		} else if (b == 0xE0) {
			k = 2;
			lo = 0xA0;
		} else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
			k = 2;
		} else if (b == 0xED) {
			k = 2;
			hi = 0x9F;
		} else if (b == 0xF0) {
			k = 3;
			lo = 0x90;
		} else if (b >= 0xF1 && b <= 0xF3) {
			k = 3;
		} else if (b == 0xF4) {
			k = 3;
			hi = 0x8F;
		} else {
			return false;
		}
		if (n - i <= k)
			return false;
		/* Only the second byte has a narrowed range. */
		if (p[i + 1] < lo || p[i + 1] > hi)
			return false;
		for (size_t j = 2; j <= k; j++) {
			if (p[i + j] < 0x80 || p[i + j] > 0xBF)
				return false;
		}
		i += k + 1;
	}
	return true;
}

static void check_utf8(const uint8_t *p, size_t n)
{
	bool got = proto_is_utf8(p, n), want = ref_utf8(p, n);

	if (got != want)
		fprintf(stderr, "fuzz_proto: proto_is_utf8 says %d, reference says %d\n", got,
		        want);
	CHECK(got == want);
}

/* A field pointer lies inside [body, body+len) and its NUL does too. */
static void check_field(const char *s, const uint8_t *body, size_t len)
{
	if (s == NULL)
		return;
	CHECK((const uint8_t *)s >= body && (const uint8_t *)s < body + len);
	CHECK(memchr(s, 0, len - (size_t)((const uint8_t *)s - body)) != NULL);
}

/* Rebuilds a parsed error and checks it parses back to the same fields. */
static void round_trip(const struct proto_error_fields *f)
{
	static uint8_t buf[70000];
	struct wbuf w;
	struct proto_error_fields g;
	uint8_t type;
	size_t total;

	if (!f->severity || !f->sqlstate || !f->message)
		return;
	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, f->severity, f->sqlstate, f->message, NULL, f->hint);
	CHECK(!w.failed);
	CHECK(proto_frame_msg(buf, w.len, sizeof(buf), &type, &total) == PROTO_OK);
	CHECK(type == 'E' && total == w.len);
	CHECK(proto_parse_error(buf + 5, w.len - 5, &g) == PROTO_OK);
	CHECK(strcmp(g.severity, f->severity) == 0 && strcmp(g.sqlstate, f->sqlstate) == 0 &&
	      strcmp(g.message, f->message) == 0);
	CHECK((g.hint == NULL) == (f->hint == NULL));
	if (g.hint)
		CHECK(strcmp(g.hint, f->hint) == 0);
	/* Any smaller buffer fails cleanly, and never writes past its cap. */
	if (w.len < 4096) {
		size_t cap = w.len - 1;
		uint8_t *small = malloc(cap ? cap : 1);

		CHECK(small != NULL);
		wb_init(&w, small, cap);
		proto_error_response(&w, f->severity, f->sqlstate, f->message, NULL, f->hint);
		CHECK(w.failed && w.len <= cap);
		free(small);
	}
}

static void messages(const uint8_t *data, size_t size, uint32_t max)
{
	size_t off = 0;

	while (off < size) {
		uint8_t type;
		size_t total;
		enum proto_status st = proto_frame_msg(data + off, size - off, max, &type, &total);
		size_t blen;
		uint8_t *body;
		struct proto_error_fields f;

		if (st == PROTO_NEED_MORE) {
			CHECK(size - off < 5);
			return;
		}
		if (st == PROTO_BAD)
			return;
		CHECK(type == data[off]);
		CHECK(total >= 5 && total - 1 <= max && total - 1 <= INT32_MAX);
		if (total > size - off)
			return; /* the body has not all arrived */
		blen = total - 5;
		body = malloc(blen ? blen : 1);
		CHECK(body != NULL);
		if (blen)
			memcpy(body, data + off + 5, blen);
		if (proto_parse_error(body, blen, &f) == PROTO_OK) {
			CHECK(blen >= 1 && body[blen - 1] == 0);
			check_field(f.severity, body, blen);
			check_field(f.sqlstate, body, blen);
			check_field(f.message, body, blen);
			check_field(f.hint, body, blen);
			round_trip(&f);
		}
		check_utf8(body, blen);
		free(body);
		off += total;
	}
}

/* The reader as a machine: each op byte picks a getter; invariants hold. */
static void reader_ops(const uint8_t *ops, size_t nops, const uint8_t *buf, size_t len)
{
	struct rd r, stack[4];
	size_t depth = 0;

	rd_init(&r, buf, len);
	for (size_t i = 0; i < nops; i++) {
		const uint8_t *before = r.p, *end = r.end;
		size_t left = rd_left(&r);
		size_t arg = ops[i] >> 3;
		bool ok = false;

		switch (ops[i] & 7) {
		case 0: {
			uint8_t v;

			ok = rd_u8(&r, &v);
			CHECK(ok == (left >= 1));
			break;
		}
		case 1: {
			uint16_t v;

			ok = rd_u16(&r, &v);
			CHECK(ok == (left >= 2));
			break;
		}
		case 2: {
			uint32_t v;

			ok = rd_u32(&r, &v);
			CHECK(ok == (left >= 4));
			break;
		}
		case 3: {
			const uint8_t *v;

			ok = rd_bytes(&r, arg, &v);
			CHECK(ok == (left >= arg));
			if (ok)
				CHECK(v == before);
			break;
		}
		case 4: {
			const char *s;
			size_t n;

			ok = rd_cstr(&r, &s, &n);
			if (ok)
				CHECK((const uint8_t *)s == before && n < left && s[n] == 0 &&
				      memchr(s, 0, n) == NULL);
			break;
		}
		case 5:
			if (depth < ARRAY_SIZE(stack)) {
				struct rd child;

				ok = rd_sub(&r, arg, &child);
				CHECK(ok == (left >= arg));
				if (ok) {
					CHECK(child.p == before && rd_left(&child) == arg);
					stack[depth++] = r;
					r = child;
					end = r.end;
				}
			}
			break;
		default:
			/* Leave a child reader: the parent resumes after it. */
			if (depth > 0) {
				r = stack[--depth];
				before = r.p;
				end = r.end;
				left = rd_left(&r);
			}
			break;
		}
		/* A failed getter moves nothing; nothing ever leaves the buffer. */
		if (!ok)
			CHECK(r.p == before);
		CHECK(r.end == end && r.p <= r.end && r.p >= buf && r.end <= buf + len);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The same stream under a generous and a tight per-message maximum. */
	messages(data, size, 30000);
	messages(data, size, 64);
	/* The whole input as one ErrorResponse body. */
	{
		struct proto_error_fields f;

		if (proto_parse_error(data, size, &f) == PROTO_OK)
			round_trip(&f);
	}
	check_utf8(data, size);
	/* First half: ops; second half: the buffer they read (exact size). */
	if (size >= 2) {
		size_t half = size / 2;
		uint8_t *buf = malloc(size - half);

		CHECK(buf != NULL);
		memcpy(buf, data + half, size - half);
		reader_ops(data, half, buf, size - half);
		free(buf);
	}
	return 0;
}
