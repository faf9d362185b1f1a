/*
 * test_proto.c - unit tests for the wire-format module (src/proto.c).
 *
 * Every parser input is copied into a heap block of exactly its length, so
 * ASan reports any read past the end. The parsers are exercised four ways
 * (STYLE.md section 6.10): table-driven cases, the same stream fed one byte
 * at a time, truncation at every offset, and the libFuzzer target in
 * tests/fuzz/fuzz_proto.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto.h"

/* A heap copy of exactly n bytes: reading one byte more is an ASan error. */
static uint8_t *dup_exact(const void *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);

	assert_non_null(d);
	if (n)
		memcpy(d, p, n);
	return d;
}

/* String literal with embedded NULs: pointer and length without the final NUL. */
#define LIT(s) (const uint8_t *)(s), (sizeof(s) - 1)

/* ---- bounded reader ---------------------------------------------------- */

static void test_proto_rd_u8_bounds(void **state)
{
	static const uint8_t src[] = {0xAB};
	uint8_t *buf = dup_exact(src, sizeof(src));
	struct rd r;
	uint8_t v = 0;

	rd_init(&r, buf, 1);
	assert_true(rd_u8(&r, &v));
	assert_int_equal(v, 0xAB);
	assert_int_equal(rd_left(&r), 0);
	v = 7;
	assert_false(rd_u8(&r, &v));
	assert_int_equal(v, 7); /* untouched on failure */
	assert_ptr_equal(r.p, buf + 1);
	free(buf);
}

static void test_proto_rd_u16_bounds(void **state)
{
	static const uint8_t src[] = {0x12, 0x34, 0x56};
	uint8_t *buf = dup_exact(src, sizeof(src));
	struct rd r;
	uint16_t v = 0;

	/* Exactly two bytes: big-endian. */
	rd_init(&r, buf, 2);
	assert_true(rd_u16(&r, &v));
	assert_int_equal(v, 0x1234);
	assert_int_equal(rd_left(&r), 0);
	/* One byte short: refused and the cursor stays. */
	rd_init(&r, buf + 2, 1);
	v = 9;
	assert_false(rd_u16(&r, &v));
	assert_int_equal(v, 9);
	assert_int_equal(rd_left(&r), 1);
	rd_init(&r, buf, 0);
	assert_false(rd_u16(&r, &v));
	free(buf);
}

static void test_proto_rd_u32_bounds(void **state)
{
	static const uint8_t src[] = {0xDE, 0xAD, 0xBE, 0xEF, 0x01};
	uint8_t *buf = dup_exact(src, sizeof(src));
	struct rd r;
	uint32_t v = 0;

	rd_init(&r, buf, 4);
	assert_true(rd_u32(&r, &v));
	assert_int_equal(v, 0xDEADBEEFu);
	assert_int_equal(rd_left(&r), 0);
	for (size_t n = 0; n < 4; n++) {
		rd_init(&r, buf + 4 - n, n);
		v = 5;
		assert_false(rd_u32(&r, &v));
		assert_int_equal(v, 5);
		assert_int_equal(rd_left(&r), n);
	}
	/* Mixed getters walk the buffer exactly once. */
	rd_init(&r, buf, 5);
	{
		uint8_t a;
		uint16_t b;
		uint16_t c;
		uint8_t d;

		assert_true(rd_u8(&r, &a));
		assert_true(rd_u16(&r, &b));
		assert_true(rd_u16(&r, &c));
		assert_int_equal(a, 0xDE);
		assert_int_equal(b, 0xADBE);
		assert_int_equal(c, 0xEF01);
		assert_false(rd_u8(&r, &d));
	}
	free(buf);
}

static void test_proto_rd_bytes_bounds(void **state)
{
	static const uint8_t src[] = {1, 2, 3};
	uint8_t *buf = dup_exact(src, sizeof(src));
	struct rd r;
	const uint8_t *v = NULL;

	rd_init(&r, buf, 3);
	assert_true(rd_bytes(&r, 0, &v));
	assert_ptr_equal(v, buf);
	assert_false(rd_bytes(&r, 4, &v));
	assert_int_equal(rd_left(&r), 3);
	/* A huge n must not wrap around. */
	assert_false(rd_bytes(&r, SIZE_MAX, &v));
	assert_true(rd_bytes(&r, 3, &v));
	assert_ptr_equal(v, buf);
	assert_int_equal(rd_left(&r), 0);
	assert_false(rd_bytes(&r, 1, &v));
	free(buf);
}

static void test_proto_rd_cstr_needs_nul(void **state)
{
	uint8_t *buf = dup_exact(LIT("abc\0\0xyz"));
	struct rd r;
	const char *s = NULL;
	size_t n = 99;

	rd_init(&r, buf, 8);
	assert_true(rd_cstr(&r, &s, &n));
	assert_string_equal(s, "abc");
	assert_int_equal(n, 3);
	/* The empty string. */
	assert_true(rd_cstr(&r, &s, &n));
	assert_int_equal(n, 0);
	assert_ptr_equal(s, buf + 4);
	/* "xyz" runs to the end without a NUL: refused, cursor unchanged. */
	n = 99;
	assert_false(rd_cstr(&r, &s, &n));
	assert_int_equal(n, 99);
	assert_int_equal(rd_left(&r), 3);
	/* A NUL just past the reader's end does not count. */
	rd_init(&r, buf, 3);
	assert_false(rd_cstr(&r, &s, &n));
	/* The NUL as the very last byte. */
	rd_init(&r, buf, 4);
	assert_true(rd_cstr(&r, &s, &n));
	assert_int_equal(rd_left(&r), 0);
	/* An empty (non-NULL) reader. */
	rd_init(&r, buf, 0);
	assert_false(rd_cstr(&r, &s, &n));
	free(buf);
}

static void test_proto_rd_sub_bounds(void **state)
{
	uint8_t *buf = dup_exact(LIT("ab\0cdef"));
	struct rd r, c;
	const char *s;
	size_t n;
	uint32_t v;

	rd_init(&r, buf, 7);
	assert_false(rd_sub(&r, 8, &c));
	assert_int_equal(rd_left(&r), 7);
	assert_true(rd_sub(&r, 2, &c));
	assert_int_equal(rd_left(&c), 2);
	assert_int_equal(rd_left(&r), 5);
	/* The child ends before the NUL that the parent still holds. */
	assert_false(rd_cstr(&c, &s, &n));
	assert_false(rd_u32(&c, &v));
	assert_true(rd_cstr(&r, &s, &n));
	assert_int_equal(n, 0);
	/* A child of everything that is left, then an empty child. */
	assert_true(rd_sub(&r, 4, &c));
	assert_true(rd_u32(&c, &v));
	assert_int_equal(v, 0x63646566u);
	assert_true(rd_sub(&r, 0, &c));
	assert_int_equal(rd_left(&c), 0);
	assert_false(rd_sub(&r, 1, &c));
	free(buf);
}

/* ---- framing ----------------------------------------------------------- */

struct frame_case {
	const char *name;
	uint8_t hdr[5];
	size_t len; /* bytes available */
	uint32_t max;
	enum proto_status want;
	size_t total;
};

static void test_proto_frame_msg_table(void **state)
{
	static const struct frame_case cases[] = {
	        {"empty", {0}, 0, 100, PROTO_NEED_MORE, 0},
	        {"type only", {'Q'}, 1, 100, PROTO_NEED_MORE, 0},
	        {"4 bytes", {'Q', 0, 0, 0}, 4, 100, PROTO_NEED_MORE, 0},
	        {"length 0", {'Q', 0, 0, 0, 0}, 5, 100, PROTO_BAD, 0},
	        {"length 3", {'Q', 0, 0, 0, 3}, 5, 100, PROTO_BAD, 0},
	        {"length 4 (empty body)", {'S', 0, 0, 0, 4}, 5, 100, PROTO_OK, 5},
	        {"length at max", {'D', 0, 0, 0, 100}, 5, 100, PROTO_OK, 101},
	        {"length max+1", {'D', 0, 0, 0, 101}, 5, 100, PROTO_BAD, 0},
	        {"top bit set", {'D', 0x80, 0, 0, 0}, 5, UINT32_MAX, PROTO_BAD, 0},
	        {"INT32_MAX",
	         {'D', 0x7F, 0xFF, 0xFF, 0xFF},
	         5,
	         UINT32_MAX,
	         PROTO_OK,
	         (size_t)INT32_MAX + 1},
	        {"all ones", {'D', 0xFF, 0xFF, 0xFF, 0xFF}, 5, UINT32_MAX, PROTO_BAD, 0},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct frame_case *c = &cases[i];
		uint8_t *buf = dup_exact(c->hdr, c->len);
		uint8_t type = 0;
		size_t total = 0;
		enum proto_status got = proto_frame_msg(buf, c->len, c->max, &type, &total);

		if (got != c->want)
			fail_msg("%s: status %d, want %d", c->name, got, c->want);
		if (got == PROTO_OK) {
			assert_int_equal(type, c->hdr[0]);
			assert_int_equal(total, c->total);
		}
		free(buf);
	}
}

struct startup_frame_case {
	const char *name;
	uint8_t hdr[8];
	size_t len;
	enum proto_status want;
	size_t total;
	uint32_t code;
};

static void test_proto_frame_startup_table(void **state)
{
	static const struct startup_frame_case cases[] = {
	        {"empty", {0}, 0, PROTO_NEED_MORE, 0, 0},
	        {"3 bytes", {0, 0, 0}, 3, PROTO_NEED_MORE, 0, 0},
	        /* The length is judged as soon as its four bytes are in. */
	        {"length 7 with 4 bytes", {0, 0, 0, 7}, 4, PROTO_BAD, 0, 0},
	        {"length 0 with 4 bytes", {0, 0, 0, 0}, 4, PROTO_BAD, 0, 0},
	        {"length 10001 with 4 bytes", {0, 0, 0x27, 0x11}, 4, PROTO_BAD, 0, 0},
	        {"length 2^32-1 with 4 bytes", {0xFF, 0xFF, 0xFF, 0xFF}, 4, PROTO_BAD, 0, 0},
	        {"length 8 with 4 bytes", {0, 0, 0, 8}, 4, PROTO_NEED_MORE, 0, 0},
	        {"length 8 with 7 bytes", {0, 0, 0, 8, 0x04, 0xD2, 0x16}, 7, PROTO_NEED_MORE, 0, 0},
	        {"SSLRequest",
	         {0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F},
	         8,
	         PROTO_OK,
	         8,
	         PROTO_CODE_SSL},
	        {"length 10000", {0, 0, 0x27, 0x10, 0, 3, 0, 0}, 8, PROTO_OK, 10000, 0x00030000u},
	        {"length 10001", {0, 0, 0x27, 0x11, 0, 3, 0, 0}, 8, PROTO_BAD, 0, 0},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct startup_frame_case *c = &cases[i];
		uint8_t *buf = dup_exact(c->hdr, c->len);
		size_t total = 0;
		uint32_t code = 0;
		enum proto_status got = proto_frame_startup(buf, c->len, &total, &code);

		if (got != c->want)
			fail_msg("%s: status %d, want %d", c->name, got, c->want);
		if (got == PROTO_OK) {
			assert_int_equal(total, c->total);
			assert_int_equal(code, c->code);
		}
		free(buf);
	}
}

/*
 * A consumer that frames typed messages out of a stream as they arrive:
 * returns how many whole messages it framed before the data ran out, or -1
 * on PROTO_BAD. Types and totals are appended to the arrays.
 */
static int frame_stream(const uint8_t *buf, size_t len, uint32_t max, uint8_t *types,
                        size_t *totals, size_t cap)
{
	size_t off = 0;
	int n = 0;

	for (;;) {
		uint8_t type;
		size_t total;
		enum proto_status st = proto_frame_msg(buf + off, len - off, max, &type, &total);

		if (st == PROTO_BAD)
			return -1;
		if (st == PROTO_NEED_MORE || total > len - off)
			return n;
		assert_true((size_t)n < cap);
		types[n] = type;
		totals[n] = total;
		n++;
		off += total;
	}
}

static void test_proto_frame_msg_byte_at_a_time(void **state)
{
	/* ParameterStatus, BackendKeyData, ReadyForQuery, then a bad length. */
	static const uint8_t stream[] = {
	        'S', 0, 0, 0, 12, 'a', 'b', 0,   'c', 'd', 'e', 'f', 0,   'K', 0, 0, 0, 12, 0,
	        0,   0, 1, 0, 0,  0,   2,   'Z', 0,   0,   0,   5,   'I', 'X', 0, 0, 0, 3,
	};
	uint8_t types_all[8], types_inc[8];
	size_t totals_all[8], totals_inc[8];
	int whole, last = 0;

	/* Without the bad tail: 3 messages. */
	whole = frame_stream(stream, sizeof(stream) - 5, 1000, types_all, totals_all, 8);
	assert_int_equal(whole, 3);
	assert_memory_equal(types_all, "SKZ", 3);
	assert_int_equal(totals_all[0], 13);
	assert_int_equal(totals_all[1], 13);
	assert_int_equal(totals_all[2], 6);
	/* Fed one byte at a time: the count only grows, and ends the same. */
	for (size_t k = 0; k <= sizeof(stream) - 5; k++) {
		uint8_t *buf = dup_exact(stream, k);
		int n = frame_stream(buf, k, 1000, types_inc, totals_inc, 8);

		assert_true(n >= last);
		assert_true(n <= whole);
		last = n;
		free(buf);
	}
	assert_int_equal(last, whole);
	assert_memory_equal(types_inc, types_all, 3);
	assert_memory_equal(totals_inc, totals_all, sizeof(size_t) * 3);
	/* With the bad tail: BAD once its length arrives, not before. */
	for (size_t k = sizeof(stream) - 5; k <= sizeof(stream); k++) {
		uint8_t *buf = dup_exact(stream, k);
		int n = frame_stream(buf, k, 1000, types_inc, totals_inc, 8);

		assert_int_equal(n, k == sizeof(stream) ? -1 : 3);
		free(buf);
	}
}

/* ---- builder ----------------------------------------------------------- */

static void test_proto_wbuf_builds_and_backpatches(void **state)
{
	uint8_t buf[32];
	struct wbuf w;
	static const uint8_t want[] = {
	        'Q', 0, 0, 0,  8,    's',  'e',  'l',  0,      /* typed */
	        0,   0, 0, 10, 0x00, 0x03, 0x00, 0x00, 'x', 0, /* untyped */
	};

	wb_init(&w, buf, sizeof(buf));
	wb_begin(&w, 'Q');
	wb_cstr(&w, "sel");
	wb_end(&w);
	wb_begin(&w, 0);
	wb_u32(&w, 0x00030000u);
	wb_bytes(&w, "x", 2);
	wb_end(&w);
	assert_false(w.failed);
	assert_int_equal(w.len, sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));
}

/* The header writer agrees with the framer and with wb_begin/wb_end. */
static void test_proto_msg_header_matches_framer(void **state)
{
	uint8_t hdr[5], built[16];
	struct wbuf w;
	uint8_t type;
	size_t total;

	proto_msg_header(hdr, 'Q', 7);
	assert_memory_equal(hdr, "Q\0\0\0\x0b", 5);
	assert_int_equal(proto_frame_msg(hdr, sizeof(hdr), 1u << 20, &type, &total), PROTO_OK);
	assert_int_equal(type, 'Q');
	assert_int_equal(total, 5 + 7);
	wb_init(&w, built, sizeof(built));
	wb_begin(&w, 'Q');
	wb_bytes(&w, "SELECT", 7);
	wb_end(&w);
	assert_memory_equal(built, hdr, 5);
	proto_put_u32(hdr, 0x01020304u);
	assert_int_equal(proto_get_u32(hdr), 0x01020304u);
}

static void test_proto_wbuf_exact_fit(void **state)
{
	uint8_t *buf = malloc(9);
	struct wbuf w;

	assert_non_null(buf);
	wb_init(&w, buf, 9);
	wb_begin(&w, 'Q');
	wb_cstr(&w, "sel");
	wb_end(&w);
	assert_false(w.failed);
	assert_int_equal(w.len, 9);
	assert_memory_equal(buf, "Q\0\0\0\x08sel", 9);
	free(buf);
}

static void test_proto_wbuf_overflow_is_sticky(void **state)
{
	uint8_t buf[16];
	struct wbuf w;

	memset(buf, 0xEE, sizeof(buf));
	wb_init(&w, buf, 7);
	wb_begin(&w, 'E');
	assert_false(w.failed);
	assert_int_equal(w.len, 5);
	/* Needs 4, 2 remain: failed, nothing written. */
	wb_u32(&w, 0x11223344u);
	assert_true(w.failed);
	assert_int_equal(w.len, 5);
	/* A write that would fit is still refused once failed. */
	wb_u8(&w, 'z');
	wb_bytes(&w, "", 0);
	wb_cstr(&w, "");
	assert_true(w.failed);
	assert_int_equal(w.len, 5);
	/* wb_end neither clears the flag nor backpatches. */
	wb_end(&w);
	assert_true(w.failed);
	assert_memory_equal(buf, "E\0\0\0\0", 5);
	assert_int_equal(buf[5], 0xEE);
	assert_int_equal(buf[7], 0xEE);
	/* A new message after failure stays failed too. */
	wb_begin(&w, 'Z');
	wb_end(&w);
	assert_true(w.failed);
	assert_int_equal(w.len, 5);
}

static void test_proto_wbuf_zero_capacity(void **state)
{
	uint8_t b = 0xEE;
	struct wbuf w;

	wb_init(&w, &b, 0);
	wb_begin(&w, 'Q');
	wb_end(&w);
	assert_true(w.failed);
	assert_int_equal(w.len, 0);
	assert_int_equal(b, 0xEE);
}

/* ---- ErrorResponse ----------------------------------------------------- */

static void test_proto_error_response_exact_bytes(void **state)
{
	static const uint8_t want[] = "E\0\0\0\x25"
	                              "SFATAL\0"
	                              "VFATAL\0"
	                              "C08P01\0"
	                              "Mbad\0"
	                              "Hhint\0"
	                              "";
	uint8_t buf[64];
	struct wbuf w;

	/* sizeof(want) counts the literal's NUL, which is the field terminator. */
	assert_int_equal(sizeof(want), 1 + 0x25);
	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "FATAL", "08P01", "bad", NULL, "hint");
	assert_false(w.failed);
	assert_int_equal(w.len, sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));
}

static void test_proto_error_response_with_detail_bytes(void **state)
{
	static const uint8_t want[] = "E\0\0\0\x23"
	                              "SERROR\0"
	                              "VERROR\0"
	                              "C57P03\0"
	                              "Mm\0"
	                              "Dd\0"
	                              "Hh\0"
	                              "";
	uint8_t buf[64];
	struct wbuf w;

	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "ERROR", "57P03", "m", "d", "h");
	assert_false(w.failed);
	assert_int_equal(sizeof(want), 1 + 0x23);
	assert_int_equal(w.len, sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));
}

static void test_proto_error_response_round_trip(void **state)
{
	uint8_t buf[512];
	struct wbuf w;
	struct proto_error_fields f;
	uint8_t type;
	size_t total;
	uint8_t *body;

	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "FATAL", "08004", "tenant-router: no tenant in the startup packet",
	                     "sources: options, parameter", "set options=-c app.tenant_id=...");
	assert_false(w.failed);
	assert_int_equal(proto_frame_msg(buf, w.len, 1000, &type, &total), PROTO_OK);
	assert_int_equal(type, 'E');
	assert_int_equal(total, w.len);
	body = dup_exact(buf + 5, total - 5);
	assert_int_equal(proto_parse_error(body, total - 5, &f), PROTO_OK);
	assert_string_equal(f.severity, "FATAL");
	assert_string_equal(f.sqlstate, "08004");
	assert_string_equal(f.message, "tenant-router: no tenant in the startup packet");
	assert_string_equal(f.hint, "set options=-c app.tenant_id=...");
	free(body);

	/* Without detail and hint: hint stays NULL. */
	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "ERROR", "53300", "too many", NULL, NULL);
	assert_false(w.failed);
	body = dup_exact(buf + 5, w.len - 5);
	assert_int_equal(proto_parse_error(body, w.len - 5, &f), PROTO_OK);
	assert_string_equal(f.severity, "ERROR");
	assert_string_equal(f.sqlstate, "53300");
	assert_string_equal(f.message, "too many");
	assert_null(f.hint);
	free(body);
}

static void test_proto_error_response_overflow(void **state)
{
	uint8_t buf[64];
	struct wbuf w;

	for (size_t cap = 0; cap < 37 + 1; cap++) {
		wb_init(&w, buf, cap);
		proto_error_response(&w, "FATAL", "08P01", "bad", NULL, "hint");
		assert_true(w.failed);
	}
	wb_init(&w, buf, 38);
	proto_error_response(&w, "FATAL", "08P01", "bad", NULL, "hint");
	assert_false(w.failed);
}

struct perr_case {
	const char *name;
	const uint8_t *body;
	size_t len;
	enum proto_status want;
	const char *severity, *sqlstate, *message, *hint;
};

static void test_proto_parse_error_table(void **state)
{
	static const struct perr_case cases[] = {
	        {"empty body", LIT(""), PROTO_BAD, NULL, NULL, NULL, NULL},
	        {"terminator only", LIT("\0"), PROTO_OK, NULL, NULL, NULL, NULL},
	        {"V wins over S, S first", LIT("SFEHLER\0VERROR\0C42601\0Mx\0\0"), PROTO_OK,
	         "ERROR", "42601", "x", NULL},
	        {"V wins over S, V first", LIT("VERROR\0SFEHLER\0\0"), PROTO_OK, "ERROR", NULL,
	         NULL, NULL},
	        {"S alone (pre-9.6)", LIT("SFATAL\0C28P01\0Mauth\0\0"), PROTO_OK, "FATAL", "28P01",
	         "auth", NULL},
	        {"unknown fields skipped", LIT("Pxx\0Hdo it\0qabc\0\0"), PROTO_OK, NULL, NULL, NULL,
	         "do it"},
	        {"empty value", LIT("M\0\0"), PROTO_OK, NULL, NULL, "", NULL},
	        {"no terminator", LIT("SFATAL\0"), PROTO_BAD, NULL, NULL, NULL, NULL},
	        {"field without NUL", LIT("SFATAL"), PROTO_BAD, NULL, NULL, NULL, NULL},
	        {"code without value", LIT("S"), PROTO_BAD, NULL, NULL, NULL, NULL},
	        {"bytes after terminator", LIT("SFATAL\0\0x"), PROTO_BAD, NULL, NULL, NULL, NULL},
	        {"NUL after terminator", LIT("\0\0"), PROTO_BAD, NULL, NULL, NULL, NULL},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct perr_case *c = &cases[i];
		uint8_t *body = dup_exact(c->body, c->len);
		struct proto_error_fields f;
		enum proto_status got = proto_parse_error(body, c->len, &f);

		if (got != c->want)
			fail_msg("%s: status %d, want %d", c->name, got, c->want);
		if (got == PROTO_OK) {
#define FIELD_EQ(fld)                                       \
	do {                                                \
		if (c->fld == NULL)                         \
			assert_null(f.fld);                 \
		else {                                      \
			assert_non_null(f.fld);             \
			assert_string_equal(f.fld, c->fld); \
		}                                           \
	} while (0)
			FIELD_EQ(severity);
			FIELD_EQ(sqlstate);
			FIELD_EQ(message);
			FIELD_EQ(hint);
#undef FIELD_EQ
		}
		free(body);
	}
}

static void test_proto_parse_error_truncated_at_every_offset(void **state)
{
	uint8_t buf[256];
	struct wbuf w;
	struct proto_error_fields f;
	size_t blen;

	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "FATAL", "57P03", "tenant-router: cluster a has no writer", "d",
	                     "retry later");
	assert_false(w.failed);
	blen = w.len - 5;
	for (size_t k = 0; k <= blen; k++) {
		uint8_t *body = dup_exact(buf + 5, k);
		enum proto_status got = proto_parse_error(body, k, &f);

		if (k == blen)
			assert_int_equal(got, PROTO_OK);
		else if (got != PROTO_BAD)
			fail_msg("prefix of %zu/%zu bytes: status %d, want BAD", k, blen, got);
		free(body);
	}
}

/* ---- UTF-8 ------------------------------------------------------------- */

struct utf8_case {
	const char *name;
	const uint8_t *p;
	size_t n;
	bool ok;
};

static void test_proto_is_utf8_table(void **state)
{
	static const struct utf8_case cases[] = {
	        {"empty", LIT(""), true},
	        {"ascii", LIT("hello, world 42"), true},
	        {"ascii DEL", LIT("\x7f"), true},
	        {"2-byte U+00E9", LIT("caf\xc3\xa9"), true},
	        {"2-byte lowest U+0080", LIT("\xc2\x80"), true},
	        {"2-byte highest U+07FF", LIT("\xdf\xbf"), true},
	        {"3-byte U+20AC", LIT("\xe2\x82\xac"), true},
	        {"3-byte lowest U+0800", LIT("\xe0\xa0\x80"), true},
	        {"3-byte U+D7FF before surrogates", LIT("\xed\x9f\xbf"), true},
	        {"3-byte U+E000 after surrogates", LIT("\xee\x80\x80"), true},
	        {"3-byte U+FFFF", LIT("\xef\xbf\xbf"), true},
	        {"4-byte U+1F600", LIT("\xf0\x9f\x98\x80"), true},
	        {"4-byte lowest U+10000", LIT("\xf0\x90\x80\x80"), true},
	        {"4-byte highest U+10FFFF", LIT("\xf4\x8f\xbf\xbf"), true},
	        {"mixed", LIT("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z"), true},
	        {"overlong C0 80 (NUL)", LIT("\xc0\x80"), false},
	        {"overlong C1 BF", LIT("\xc1\xbf"), false},
	        {"overlong E0 80 80", LIT("\xe0\x80\x80"), false},
	        {"overlong E0 9F BF", LIT("\xe0\x9f\xbf"), false},
	        {"overlong F0 80 80 80", LIT("\xf0\x80\x80\x80"), false},
	        {"overlong F0 8F BF BF", LIT("\xf0\x8f\xbf\xbf"), false},
	        {"surrogate ED A0 80", LIT("\xed\xa0\x80"), false},
	        {"surrogate ED BF BF", LIT("\xed\xbf\xbf"), false},
	        {"F4 90 80 80 > U+10FFFF", LIT("\xf4\x90\x80\x80"), false},
	        {"F5 lead", LIT("\xf5\x80\x80\x80"), false},
	        {"F8 lead", LIT("\xf8\x88\x80\x80\x80"), false},
	        {"FE", LIT("\xfe"), false},
	        {"FF", LIT("\xff"), false},
	        {"lone continuation 80", LIT("\x80"), false},
	        {"lone continuation BF after ascii", LIT("a\xbf"), false},
	        {"truncated 2-byte", LIT("\xc3"), false},
	        {"truncated 3-byte (1 of 2)", LIT("\xe2"), false},
	        {"truncated 3-byte (2 of 2)", LIT("\xe2\x82"), false},
	        {"truncated 4-byte (3 of 3)", LIT("\xf0\x9f\x98"), false},
	        {"truncated then ascii",
	         LIT("\xe2\x82"
	             "a"),
	         false},
	        {"bad continuation", LIT("\xc3\x28"), false},
	        {"bad 3rd byte", LIT("\xe2\x82\x28"), false},
	        {"bad 4th byte", LIT("\xf0\x9f\x98\xc0"), false},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct utf8_case *c = &cases[i];
		uint8_t *p = dup_exact(c->p, c->n);

		if (proto_is_utf8(p, c->n) != c->ok)
			fail_msg("%s: got %d, want %d", c->name, !c->ok, c->ok);
		free(p);
	}
}

static void test_proto_is_utf8_truncated_sequences_at_end(void **state)
{
	/* Every strict prefix of a multi-byte sequence fails; the whole passes. */
	static const char *const seqs[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
	                                   "\xf4\x8f\xbf\xbf"};

	for (size_t i = 0; i < ARRAY_SIZE(seqs); i++) {
		size_t n = strlen(seqs[i]);

		for (size_t k = 1; k <= n; k++) {
			uint8_t *p = dup_exact(seqs[i], k);

			assert_int_equal(proto_is_utf8(p, k), k == n);
			free(p);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_proto_rd_u8_bounds),
	        cmocka_unit_test(test_proto_rd_u16_bounds),
	        cmocka_unit_test(test_proto_rd_u32_bounds),
	        cmocka_unit_test(test_proto_rd_bytes_bounds),
	        cmocka_unit_test(test_proto_rd_cstr_needs_nul),
	        cmocka_unit_test(test_proto_rd_sub_bounds),
	        cmocka_unit_test(test_proto_frame_msg_table),
	        cmocka_unit_test(test_proto_frame_startup_table),
	        cmocka_unit_test(test_proto_frame_msg_byte_at_a_time),
	        cmocka_unit_test(test_proto_wbuf_builds_and_backpatches),
	        cmocka_unit_test(test_proto_wbuf_exact_fit),
	        cmocka_unit_test(test_proto_wbuf_overflow_is_sticky),
	        cmocka_unit_test(test_proto_wbuf_zero_capacity),
	        cmocka_unit_test(test_proto_error_response_exact_bytes),
	        cmocka_unit_test(test_proto_error_response_with_detail_bytes),
	        cmocka_unit_test(test_proto_error_response_round_trip),
	        cmocka_unit_test(test_proto_error_response_overflow),
	        cmocka_unit_test(test_proto_parse_error_table),
	        cmocka_unit_test(test_proto_parse_error_truncated_at_every_offset),
	        cmocka_unit_test(test_proto_is_utf8_table),
	        cmocka_unit_test(test_proto_is_utf8_truncated_sequences_at_end),
	        cmocka_unit_test(test_proto_msg_header_matches_framer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
