/*
 * test_startup.c - unit tests for the startup packet, the `options` string,
 * tenant extraction and the forwarded packet (src/startup.c).
 *
 * Packets are built by a small independent builder (not wbuf), and every
 * parser input is copied into a heap block of exactly its length so ASan
 * reports a read past the end. The parser is tested four ways (STYLE.md
 * section 6.10): the table below, the same packets fed one byte at a time,
 * truncation at every offset, and tests/fuzz/fuzz_startup.c.
 *
 * Where PostgreSQL's behaviour is the reference (how `options` is split by
 * pg_split_opts() and read by getopt() in process_postgres_switches()), the
 * expected values were checked against a PostgreSQL 15 server with PGOPTIONS
 * and `select current_setting('app.tenant_id', true)`.
 * Tests named *_bug assert the correct behaviour for a known defect in
 * src/startup.c and fail until it is fixed; each says so above it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "startup.h"

#define V30    0x00030000u
#define V32    0x00030002u
#define LIT(s) (const uint8_t *)(s), (sizeof(s) - 1)

/* The request codes as they appear on the wire, for literal packets. */
#define W_V30    "\x00\x03\x00\x00"
#define W_V32    "\x00\x03\x00\x02"
#define W_SSL    "\x04\xd2\x16\x2f"
#define W_GSS    "\x04\xd2\x16\x30"
#define W_CANCEL "\x04\xd2\x16\x2e"

static const char KEY[] = "app.tenant_id";

/* ---- helpers ----------------------------------------------------------- */

static uint8_t *dup_exact(const void *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);

	assert_non_null(d);
	if (n)
		memcpy(d, p, n);
	return d;
}

/* A growing packet; the length field is patched by pk_end(). */
struct pkt {
	uint8_t b[16384];
	size_t n;
};

static void pk_raw(struct pkt *p, const void *s, size_t n)
{
	assert_true(n <= sizeof(p->b) - p->n);
	memcpy(p->b + p->n, s, n);
	p->n += n;
}

static void pk_u32(struct pkt *p, uint32_t v)
{
	uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};

	pk_raw(p, b, 4);
}

static void pk_str(struct pkt *p, const char *s)
{
	pk_raw(p, s, strlen(s) + 1);
}

static void pk_begin(struct pkt *p, uint32_t code)
{
	p->n = 0;
	pk_u32(p, 0);
	pk_u32(p, code);
}

static void put_len(uint8_t *b, uint32_t v)
{
	b[0] = (uint8_t)(v >> 24);
	b[1] = (uint8_t)(v >> 16);
	b[2] = (uint8_t)(v >> 8);
	b[3] = (uint8_t)v;
}

static void pk_end(struct pkt *p)
{
	put_len(p->b, (uint32_t)p->n);
}

struct kv {
	const char *k, *v;
};

/* A StartupMessage from key/value pairs (up to a NULL key) and a version. */
static void build_startup(struct pkt *p, uint32_t version, const struct kv *kv)
{
	pk_begin(p, version);
	for (; kv && kv->k; kv++) {
		pk_str(p, kv->k);
		pk_str(p, kv->v);
	}
	pk_raw(p, "", 1);
	pk_end(p);
}

/* Parses a copy of exactly len bytes; st and why are the caller's. */
static enum proto_status parse_copy(const uint8_t *b, size_t len, struct startup *st,
                                    const char **why)
{
	uint8_t *c = dup_exact(b, len);
	enum proto_status s = startup_parse(c, len, st, why);

	/* st points into c: callers only look at the status and why. */
	free(c);
	return s;
}

/* Parses the packet in place (st borrows from p). Asserts PROTO_OK. */
static void parse_ok(const struct pkt *p, struct startup *st)
{
	const char *why = "unset";
	enum proto_status s = startup_parse(p->b, p->n, st, &why);

	if (s != PROTO_OK)
		fail_msg("startup_parse: status %d, why %s", s, why);
}

/* ---- startup_parse: the table ------------------------------------------ */

struct parse_case {
	const char *name;
	const uint8_t *body; /* everything after the length field */
	size_t blen;
	uint32_t plen; /* 0: the real length (4 + blen) */
	enum proto_status want;
	const char *why_has; /* for PROTO_BAD: a substring of why */
	enum startup_kind kind;
	size_t nparams;
};

static const struct parse_case parse_cases[] = {
        {"3.0 user/database/options",
         LIT(W_V30 "user\0alice\0"
                   "database\0db1\0"
                   "options\0-c app.tenant_id=42\0"
                   "\0"),
         0, PROTO_OK, NULL, STARTUP_V3, 3},
        {"3.0 no parameters at all", LIT(W_V30 "\0"), 0, PROTO_OK, NULL, STARTUP_V3, 0},
        {"3.0 empty value", LIT(W_V30 "user\0\0application_name\0\0\0"), 0, PROTO_OK, NULL,
         STARTUP_V3, 2},
        {"3.2 accepted", LIT(W_V32 "user\0u\0\0"), 0, PROTO_OK, NULL, STARTUP_V3, 1},
        {"3.0 UTF-8 text", LIT(W_V30 "application_name\0caf\xc3\xa9 \xf0\x9f\x98\x80\0\0"), 0,
         PROTO_OK, NULL, STARTUP_V3, 1},
        {"SSLRequest", LIT(W_SSL), 0, PROTO_OK, NULL, STARTUP_SSL, 0},
        {"GSSENCRequest", LIT(W_GSS), 0, PROTO_OK, NULL, STARTUP_GSSENC, 0},
        {"SSLRequest with 4 more bytes", LIT(W_SSL "\0\0\0\0"), 0, PROTO_BAD, "encryption",
         STARTUP_SSL, 0},
        {"GSSENCRequest with 1 more byte", LIT(W_GSS "\0"), 0, PROTO_BAD, "encryption",
         STARTUP_GSSENC, 0},
        {"CancelRequest 4-byte key",
         LIT(W_CANCEL "\0\0\x30\x39"
                      "\x01\x02\x03\x04"),
         0, PROTO_OK, NULL, STARTUP_CANCEL, 0},
        {"CancelRequest 3-byte key",
         LIT(W_CANCEL "\0\0\x30\x39"
                      "\x01\x02\x03"),
         0, PROTO_BAD, "cancel", STARTUP_CANCEL, 0},
        {"CancelRequest no key", LIT(W_CANCEL "\0\0\x30\x39"), 0, PROTO_BAD, "cancel",
         STARTUP_CANCEL, 0},
        {"CancelRequest no pid", LIT(W_CANCEL "\0\0"), 0, PROTO_BAD, "cancel", STARTUP_CANCEL, 0},
        {"protocol 2.0",
         LIT("\x00\x02\x00\x00"
             "user\0u\0\0"),
         0, PROTO_BAD, "unsupported", STARTUP_V3, 0},
        {"protocol 4.0",
         LIT("\x00\x04\x00\x00"
             "user\0u\0\0"),
         0, PROTO_BAD, "unsupported", STARTUP_V3, 0},
        {"protocol 1234.5681 (unknown code)", LIT("\x04\xd2\x16\x31"), 0, PROTO_BAD, "unsupported",
         STARTUP_V3, 0},
        {"missing final terminator", LIT(W_V30 "user\0alice\0"), 0, PROTO_BAD, "not terminated",
         STARTUP_V3, 0},
        {"key without NUL", LIT(W_V30 "user\0alice\0datab"), 0, PROTO_BAD, "not terminated",
         STARTUP_V3, 0},
        {"missing value NUL", LIT(W_V30 "user\0alice"), 0, PROTO_BAD, "no value", STARTUP_V3, 0},
        {"missing value", LIT(W_V30 "user\0"), 0, PROTO_BAD, "no value", STARTUP_V3, 0},
        {"trailing bytes after terminator", LIT(W_V30 "user\0u\0\0x"), 0, PROTO_BAD, "after",
         STARTUP_V3, 0},
        {"trailing NUL after terminator", LIT(W_V30 "user\0u\0\0\0"), 0, PROTO_BAD, "after",
         STARTUP_V3, 0},
        {"empty key in the middle", LIT(W_V30 "user\0u\0\0database\0d\0\0"), 0, PROTO_BAD, "after",
         STARTUP_V3, 0},
        {"duplicate key", LIT(W_V30 "user\0a\0database\0d\0user\0b\0\0"), 0, PROTO_BAD, "repeats",
         STARTUP_V3, 0},
        {"duplicate key, same value", LIT(W_V30 "user\0a\0user\0a\0\0"), 0, PROTO_BAD, "repeats",
         STARTUP_V3, 0},
        {"invalid UTF-8 in key",
         LIT(W_V30 "us\xff"
                   "er\0a\0\0"),
         0, PROTO_BAD, "UTF-8", STARTUP_V3, 0},
        {"invalid UTF-8 in value",
         LIT(W_V30 "user\0a\xc0\x80"
                   "b\0\0"),
         0, PROTO_BAD, "UTF-8", STARTUP_V3, 0},
        {"surrogate in value", LIT(W_V30 "options\0\xed\xa0\x80\0\0"), 0, PROTO_BAD, "UTF-8",
         STARTUP_V3, 0},
        {"truncated UTF-8 at end of value", LIT(W_V30 "user\0a\xe2\x82\0\0"), 0, PROTO_BAD, "UTF-8",
         STARTUP_V3, 0},
        {"declared length 7", LIT(W_SSL), 7, PROTO_BAD, "length", STARTUP_SSL, 0},
        {"declared length 10001", LIT(W_V30), 10001, PROTO_BAD, "length", STARTUP_V3, 0},
        {"declared length 2^32-1", LIT(W_V30), 0xFFFFFFFFu, PROTO_BAD, "length", STARTUP_V3, 0},
};

/* The packet of a table case: length field plus body (plen as declared). */
static void case_packet(const struct parse_case *c, struct pkt *p)
{
	p->n = 0;
	pk_u32(p, 0);
	pk_raw(p, c->body, c->blen);
	put_len(p->b, c->plen ? c->plen : (uint32_t)p->n);
}

static bool length_field_valid(const struct pkt *p)
{
	uint32_t plen = (uint32_t)p->b[0] << 24 | (uint32_t)p->b[1] << 16 | (uint32_t)p->b[2] << 8 |
	                p->b[3];

	return plen >= 8 && plen <= PROTO_MAX_STARTUP_LEN;
}

static void check_parse_case(const struct parse_case *c, const struct pkt *p)
{
	uint8_t *buf = dup_exact(p->b, p->n);
	struct startup st;
	const char *why = NULL;
	enum proto_status got = startup_parse(buf, p->n, &st, &why);

	if (got != c->want)
		fail_msg("%s: status %d, want %d (why: %s)", c->name, got, c->want,
		         why ? why : "-");
	if (got == PROTO_OK) {
		assert_int_equal(st.kind, c->kind);
		if (c->kind == STARTUP_V3)
			assert_int_equal(st.nparams, c->nparams);
	}
	if (got == PROTO_BAD) {
		if (why == NULL || strstr(why, c->why_has) == NULL)
			fail_msg("%s: why \"%s\" lacks \"%s\"", c->name, why ? why : "(null)",
			         c->why_has);
	}
	free(buf);
}

static void test_startup_parse_table(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(parse_cases); i++) {
		struct pkt p;

		case_packet(&parse_cases[i], &p);
		check_parse_case(&parse_cases[i], &p);
	}
}

/*
 * How a session reads a startup packet: bytes arrive one at a time; frame
 * with proto_frame_startup() and parse once the whole packet is in. Returns
 * the status and the number of bytes it needed.
 */
static enum proto_status feed_bytewise(const uint8_t *b, size_t n, struct startup *st,
                                       const char **why, size_t *used)
{
	for (size_t k = 0; k <= n; k++) {
		uint8_t *c = dup_exact(b, k);
		size_t total = 0;
		uint32_t code = 0;
		enum proto_status s = proto_frame_startup(c, k, &total, &code);

		if (s == PROTO_OK && k >= total) {
			/* Only the framed packet is parsed; st borrows from c. */
			s = startup_parse(c, total, st, why);
			*used = k;
			free(c);
			return s;
		}
		free(c);
		if (s == PROTO_BAD) {
			*used = k;
			return s;
		}
	}
	*used = n;
	return PROTO_NEED_MORE;
}

static void test_startup_parse_byte_at_a_time(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(parse_cases); i++) {
		const struct parse_case *c = &parse_cases[i];
		struct pkt p;
		struct startup st;
		const char *why_whole = NULL, *why_inc = NULL;
		enum proto_status whole, inc;
		size_t used = 0;

		case_packet(c, &p);
		whole = parse_copy(p.b, p.n, &st, &why_whole);
		inc = feed_bytewise(p.b, p.n, &st, &why_inc, &used);
		if (inc != whole)
			fail_msg("%s: byte-wise %d, whole %d", c->name, inc, whole);
		/* A valid length: the whole packet is needed before any verdict. */
		if (length_field_valid(&p)) {
			assert_int_equal(used, p.n);
			assert_ptr_equal(why_inc, why_whole);
		} else {
			/* A bad length is refused as soon as its 4 bytes arrive. */
			assert_int_equal(used, 4);
		}
		/* Every strict prefix handed straight to the parser: never OK. */
		for (size_t k = 0; k < p.n; k++) {
			const char *why = NULL;
			enum proto_status s = parse_copy(p.b, k, &st, &why);

			if (s == PROTO_OK)
				fail_msg("%s: prefix %zu/%zu parsed OK", c->name, k, p.n);
			if (length_field_valid(&p) && s != PROTO_NEED_MORE)
				fail_msg("%s: prefix %zu/%zu: status %d, want NEED_MORE", c->name,
				         k, p.n, s);
		}
	}
}

/*
 * Truncation with the length field rewritten to match: a self-consistent
 * packet that lost its tail. For StartupMessages no strict prefix is valid
 * (the list must end with an empty key exactly at the end).
 */
static void test_startup_parse_truncated_at_every_offset(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(parse_cases); i++) {
		const struct parse_case *c = &parse_cases[i];
		struct pkt p;

		case_packet(c, &p);
		/* Failing cases may have valid prefixes ("...\0\0" + junk). */
		if (c->want != PROTO_OK || c->kind != STARTUP_V3)
			continue;
		for (size_t k = 8; k < p.n; k++) {
			uint8_t *b = dup_exact(p.b, k);
			struct startup st;
			const char *why = NULL;
			enum proto_status s;

			put_len(b, (uint32_t)k);
			s = startup_parse(b, k, &st, &why);
			if (s != PROTO_BAD)
				fail_msg("%s: truncated to %zu/%zu: status %d, want BAD", c->name,
				         k, p.n, s);
			assert_non_null(why);
			free(b);
		}
	}
}

static void test_startup_parse_v3_fields(void **state)
{
	static const struct kv kv[] = {
	        {"user", "alice"},        {"database", "db1"}, {"options", "-c app.tenant_id=42"},
	        {"application_name", ""}, {NULL, NULL},
	};
	struct pkt p;
	struct startup st;
	const struct startup_param *sp;

	build_startup(&p, V30, kv);
	parse_ok(&p, &st);
	assert_int_equal(st.kind, STARTUP_V3);
	assert_int_equal(st.code, V30);
	assert_int_equal(st.major, 3);
	assert_int_equal(st.minor, 0);
	assert_int_equal(st.nparams, 4);
	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(st.params[i].klen, strlen(kv[i].k));
		assert_memory_equal(st.params[i].key, kv[i].k, st.params[i].klen + 1);
		assert_int_equal(st.params[i].vlen, strlen(kv[i].v));
		assert_memory_equal(st.params[i].val, kv[i].v, st.params[i].vlen + 1);
		/* Pointers borrow from the packet. */
		assert_true((const uint8_t *)st.params[i].key > p.b &&
		            (const uint8_t *)st.params[i].key < p.b + p.n);
	}
	sp = startup_get(&st, "options");
	assert_non_null(sp);
	assert_string_equal(sp->val, "-c app.tenant_id=42");
	assert_non_null(startup_get(&st, "application_name"));
	/* startup_get is an exact match. */
	assert_null(startup_get(&st, "USER"));
	assert_null(startup_get(&st, "use"));
	assert_null(startup_get(&st, "users"));
	assert_null(startup_get(&st, ""));
}

static void test_startup_parse_v32_version(void **state)
{
	static const struct kv kv[] = {{"user", "u"}, {NULL, NULL}};
	struct pkt p;
	struct startup st;

	build_startup(&p, V32, kv);
	parse_ok(&p, &st);
	assert_int_equal(st.kind, STARTUP_V3);
	assert_int_equal(st.major, 3);
	assert_int_equal(st.minor, 2);
	assert_int_equal(st.code, V32);
}

static void test_startup_parse_unsupported_versions(void **state)
{
	static const uint32_t codes[] = {0x00020000u, 0x00040000u, 0x00000000u,
	                                 0x0002FFFFu, 0xFFFF0000u, 0x04D21631u};
	static const struct kv kv[] = {{"user", "u"}, {NULL, NULL}};

	for (size_t i = 0; i < ARRAY_SIZE(codes); i++) {
		struct pkt p;
		struct startup st;
		const char *why = NULL;

		build_startup(&p, codes[i], kv);
		assert_int_equal(parse_copy(p.b, p.n, &st, &why), PROTO_BAD);
		assert_non_null(why);
		assert_non_null(strstr(why, "unsupported"));
	}
}

static void build_cancel(struct pkt *p, uint32_t pid, size_t keylen)
{
	pk_begin(p, PROTO_CODE_CANCEL);
	pk_u32(p, pid);
	for (size_t i = 0; i < keylen; i++) {
		uint8_t b = (uint8_t)(i * 7 + 1);

		pk_raw(p, &b, 1);
	}
	pk_end(p);
}

static void test_startup_parse_cancel_keys(void **state)
{
	static const struct {
		size_t keylen;
		enum proto_status want;
	} cases[] = {
	        {0, PROTO_BAD},   {1, PROTO_BAD},    {3, PROTO_BAD},  {4, PROTO_OK},
	        {5, PROTO_OK},    {32, PROTO_OK},    {255, PROTO_OK}, {256, PROTO_OK},
	        {257, PROTO_BAD}, {1000, PROTO_BAD},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct pkt p;
		struct startup st;
		const char *why = NULL;
		enum proto_status s;
		uint8_t *buf;

		build_cancel(&p, 0x12345678u, cases[i].keylen);
		buf = dup_exact(p.b, p.n);
		s = startup_parse(buf, p.n, &st, &why);
		if (s != cases[i].want)
			fail_msg("key of %zu bytes: status %d, want %d", cases[i].keylen, s,
			         cases[i].want);
		if (s == PROTO_OK) {
			assert_int_equal(st.kind, STARTUP_CANCEL);
			assert_int_equal(st.cancel_pid, 0x12345678u);
			assert_int_equal(st.cancel_key_len, cases[i].keylen);
			assert_ptr_equal(st.cancel_key, buf + 12);
			assert_memory_equal(st.cancel_key, p.b + 12, cases[i].keylen);
		} else {
			assert_non_null(strstr(why, "cancel"));
		}
		free(buf);
	}
}

static void build_nparams(struct pkt *p, size_t n)
{
	char k[32];

	pk_begin(p, V30);
	for (size_t i = 0; i < n; i++) {
		snprintf(k, sizeof(k), "k%03zu", i);
		pk_str(p, k);
		pk_str(p, "v");
	}
	pk_raw(p, "", 1);
	pk_end(p);
}

static void test_startup_parse_param_limit(void **state)
{
	struct pkt p;
	struct startup st;
	const char *why = NULL;

	build_nparams(&p, STARTUP_MAX_PARAMS);
	assert_int_equal(parse_copy(p.b, p.n, &st, &why), PROTO_OK);
	assert_int_equal(st.nparams, STARTUP_MAX_PARAMS);
	build_nparams(&p, STARTUP_MAX_PARAMS + 1);
	assert_int_equal(parse_copy(p.b, p.n, &st, &why), PROTO_BAD);
	assert_non_null(strstr(why, "too many"));
}

static void test_startup_parse_length_vs_buffer(void **state)
{
	static const struct kv kv[] = {{"user", "u"}, {NULL, NULL}};
	struct pkt p;
	struct startup st;
	const char *why = NULL;

	build_startup(&p, V30, kv);
	/* More bytes than the packet declares: refused (nothing may follow). */
	pk_raw(&p, "Q", 1);
	assert_int_equal(parse_copy(p.b, p.n, &st, &why), PROTO_BAD);
	assert_non_null(strstr(why, "after"));
	/* An SSLRequest followed by plaintext is refused the same way. */
	p.n = 0;
	pk_u32(&p, 8);
	pk_u32(&p, PROTO_CODE_SSL);
	pk_raw(&p, "\x16\x03\x01", 3);
	assert_int_equal(parse_copy(p.b, p.n, &st, &why), PROTO_BAD);
	/* Fewer bytes than declared: wait. */
	build_startup(&p, V30, kv);
	assert_int_equal(parse_copy(p.b, p.n - 1, &st, &why), PROTO_NEED_MORE);
}

static void test_startup_parse_max_length_packet(void **state)
{
	struct pkt p;
	struct startup st;
	char big[PROTO_MAX_STARTUP_LEN];
	size_t fill;

	/* 8 header + "application_name\0" (17) + value + NUL + final NUL = 10000. */
	fill = PROTO_MAX_STARTUP_LEN - 8 - 17 - 1 - 1;
	memset(big, 'x', fill);
	big[fill] = '\0';
	pk_begin(&p, V30);
	pk_str(&p, "application_name");
	pk_str(&p, big);
	pk_raw(&p, "", 1);
	pk_end(&p);
	assert_int_equal(p.n, PROTO_MAX_STARTUP_LEN);
	parse_ok(&p, &st);
	assert_int_equal(st.params[0].vlen, fill);
	/* One byte more is refused on its length. */
	pk_begin(&p, V30);
	pk_str(&p, "application_name");
	big[fill] = 'x';
	big[fill + 1] = '\0';
	pk_str(&p, big);
	pk_raw(&p, "", 1);
	pk_end(&p);
	assert_int_equal(p.n, PROTO_MAX_STARTUP_LEN + 1);
	{
		const char *why = NULL;

		assert_int_equal(parse_copy(p.b, p.n, &st, &why), PROTO_BAD);
		assert_non_null(strstr(why, "length"));
	}
}

/* ---- options ------------------------------------------------------------ */

struct collect {
	char out[1024];
	size_t n;
	int calls;
	int stop_after; /* 0: never stop */
};

static bool collect_cb(void *arg, const char *name, size_t nlen, const char *val, size_t vlen)
{
	struct collect *c = arg;
	int w = snprintf(c->out + c->n, sizeof(c->out) - c->n, "%.*s=%.*s;", (int)nlen, name,
	                 (int)vlen, val);

	assert_true(w > 0 && (size_t)w < sizeof(c->out) - c->n);
	c->n += (size_t)w;
	c->calls++;
	return c->stop_after == 0 || c->calls < c->stop_after;
}

/* Runs startup_each_option over an exact-size copy of s. */
static void each_option(const char *s, struct collect *c)
{
	size_t n = strlen(s);
	char *copy = (char *)dup_exact(s, n);

	c->out[0] = '\0';
	c->n = 0;
	c->calls = 0;
	startup_each_option(copy, n, collect_cb, c);
	free(copy);
}

struct opt_case {
	const char *options;
	const char *want; /* "name=value;" per setting, names as written */
};

static void test_startup_options_table(void **state)
{
	static const struct opt_case cases[] = {
	        {"", ""},
	        {"   \t ", ""},
	        {"-c app.tenant_id=42", "app.tenant_id=42;"},
	        {"-capp.tenant_id=42", "app.tenant_id=42;"},
	        {"--app.tenant_id=42", "app.tenant_id=42;"},
	        {"--APP.TENANT-ID=7", "APP.TENANT-ID=7;"},
	        {"-c app.tenant_id=a\\ b", "app.tenant_id=a b;"},
	        {"-c app.tenant_id=a\\\\b", "app.tenant_id=a\\b;"},
	        {"-c app.tenant_id=\\a\\b", "app.tenant_id=ab;"},
	        {"-c\\ a=1", " a=1;"}, /* one word "-c a=1": getopt's optarg is " a=1" */
	        {"-c a\\=b=c", "a=b=c;"},
	        {"-c app.tenant_id=a=b", "app.tenant_id=a=b;"},
	        {"  -c\t app.tenant_id=9 \t ", "app.tenant_id=9;"},
	        {"\t-c\ta=1  \n --b=2\r\f\v-cc=3", "a=1;b=2;c=3;"},
	        {"-c statement_timeout=5 -c app.tenant_id=9 -B 100",
	         "statement_timeout=5;app.tenant_id=9;"},
	        {"-B 100 -c app.tenant_id=9 -e", "app.tenant_id=9;"},
	        {"-c app.tenant_id=9 -c", "app.tenant_id=9;"},
	        {"-c", ""},
	        {"-c app.tenant_id", ""},
	        {"--app.tenant_id", ""},
	        {"-capp.tenant_id", ""},
	        {"-c app.tenant_id=", "app.tenant_id=;"},
	        {"-c =v", "=v;"},
	        {"app.tenant_id=5", ""},
	        {"-C app.tenant_id=5", ""},
	        {"-x app.tenant_id=5", ""},
	        {"-c -ca=1", "-ca=1;"}, /* -c takes the next word whatever it is */
	        {"---a=1", "-a=1;"},
	        {"-c a=1 -c a=2", "a=1;a=2;"},
	        /* getopt(3) over "B:bC:c:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:". */
	        {"-ecapp.tenant_id=2", "app.tenant_id=2;"},
	        {"-Ec app.tenant_id=2", "app.tenant_id=2;"},
	        {"-e-app.tenant_id=2", "app.tenant_id=2;"},
	        {"-e- app.tenant_id=2", "app.tenant_id=2;"},
	        {"-nTjcapp.tenant_id=2", "app.tenant_id=2;"},
	        {"-C -capp.tenant_id=1", ""}, /* -C eats the next word */
	        {"-D --app.tenant_id=1", ""}, /* so does -D */
	        {"-B -c a=1", ""},            /* -B's argument is "-c" */
	        {"-B100 -c a=1", "a=1;"},     /* -B's argument is "100" */
	        {"-Bc a=1", ""},              /* -B's argument is "c" */
	        {"-c a=1 -- -c b=2", "a=1;"}, /* "--" ends the switches */
	        {"-- -c a=1", ""},
	        {"-c --", ""}, /* -c's argument is "--" */
	        {"-e", ""},
	        {"-c a=42\\", "a=42;"}, /* pg_split_opts drops a final backslash */
	        {"-c a=x\\ ", "a=x ;"},
	};
	struct collect c = {.stop_after = 0};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		each_option(cases[i].options, &c);
		if (strcmp(c.out, cases[i].want) != 0)
			fail_msg("options \"%s\": got \"%s\", want \"%s\"", cases[i].options, c.out,
			         cases[i].want);
	}
}

static void test_startup_options_stop_early(void **state)
{
	struct collect c = {.stop_after = 2};

	each_option("-c a=1 -c b=2 -c c=3", &c);
	assert_string_equal(c.out, "a=1;b=2;");
	assert_int_equal(c.calls, 2);
}

static void test_startup_options_length_bounds_input(void **state)
{
	/* Only len bytes are read: the rest of the string is not options. */
	struct collect c = {.stop_after = 0};
	const char *s = "-c a=1 -c b=2";
	char *copy = (char *)dup_exact(s, 6);

	c.out[0] = '\0';
	startup_each_option(copy, 6, collect_cb, &c);
	assert_string_equal(c.out, "a=1;");
	startup_each_option(copy, 0, collect_cb, &c);
	assert_string_equal(c.out, "a=1;");
	free(copy);
}

/*
 * Regression (fixed in e54eda5): a backslash that ends the options string.
 * PostgreSQL's pg_split_opts() drops it (`-c app.tenant_id=42\` sets
 * app.tenant_id to "42" on a PostgreSQL 15 server); next_arg() used to keep
 * it, so the router routed by "42\" while the server ran as tenant 42.
 */
static void test_startup_options_trailing_backslash(void **state)
{
	struct collect c = {.stop_after = 0};

	each_option("-c app.tenant_id=42\\", &c);
	assert_string_equal(c.out, "app.tenant_id=42;");
	each_option("-c a=1 --b=\\", &c);
	assert_string_equal(c.out, "a=1;b=;");
}

/*
 * BUG (src/startup.c switch_kind): startup_each_option() takes (ptr, len)
 * and so may see a NUL byte. For the word "-\0", switch_kind('\0') calls
 * strchr(pg_switches, '\0'), which returns the array's terminator, and then
 * reads p[1], one byte past pg_switches: an ASan global-buffer-overflow
 * (startup.c:179). Values from startup_parse() never hold a NUL, so the
 * router cannot reach it today; any other caller (and fuzz_startup) can.
 * Correct behaviour: a NUL is not a switch. Under ASan this test aborts
 * the binary until fixed, so it runs last.
 */
static void test_startup_options_nul_byte_bug(void **state)
{
	/* What is reported around the NUL is not specified: only the bounds are. */
	static const struct {
		const uint8_t *s;
		size_t n;
		const char *want; /* NULL: any */
	} cases[] = {
	        {LIT("-\0"), ""},
	        {LIT("-c a=1 -\0"), "a=1;"},
	        {LIT("-e\0c a=1"), NULL},
	        {LIT("\0-\0\0"), NULL},
	};
	struct collect c = {.stop_after = 0};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char *copy = (char *)dup_exact(cases[i].s, cases[i].n);

		c.out[0] = '\0';
		c.n = 0;
		c.calls = 0;
		startup_each_option(copy, cases[i].n, collect_cb, &c);
		free(copy);
		if (cases[i].want)
			assert_string_equal(c.out, cases[i].want);
	}
}

struct guc_case {
	const char *name;
	size_t nlen; /* 0: strlen(name) */
	const char *key;
	bool want;
};

static void test_startup_guc_name_eq_table(void **state)
{
	static const struct guc_case cases[] = {
	        {"app.tenant_id", 0, "app.tenant_id", true},
	        {"APP.TENANT_ID", 0, "app.tenant_id", true},
	        {"App.Tenant_Id", 0, "app.tenant_id", true},
	        {"app.tenant-id", 0, "app.tenant_id", true},
	        {"APP.TENANT-ID", 0, "app.tenant_id", true},
	        {"app.tenant_id", 0, "app.tenant-id", true},
	        {"app-tenant_id", 0, "app.tenant_id", false},
	        {"app.tenant_i", 0, "app.tenant_id", false},
	        {"app.tenant_idx", 0, "app.tenant_id", false},
	        {"app.tenant_idXYZ", 13, "app.tenant_id", true},
	        {"app.tenant_id", 12, "app.tenant_id", false},
	        {"", 0, "", true},
	        {"", 0, "a", false},
	        {"app.tenant id", 0, "app.tenant_id", false},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct guc_case *c = &cases[i];
		size_t n = c->nlen ? c->nlen : strlen(c->name);
		char *copy = (char *)dup_exact(c->name, n);

		if (startup_guc_name_eq(copy, n, c->key) != c->want)
			fail_msg("\"%.*s\" vs \"%s\": want %d", (int)n, c->name, c->key, c->want);
		free(copy);
	}
}

/* ---- tenant ------------------------------------------------------------- */

#define SRC_ALL (TENANT_SRC_OPTIONS | TENANT_SRC_PARAMETER | TENANT_SRC_USER | TENANT_SRC_DATABASE)
#define SRC_DEF (TENANT_SRC_OPTIONS | TENANT_SRC_PARAMETER)

struct tenant_case {
	const char *name;
	struct kv kv[6];
	unsigned sources;
	char sep;
	enum tenant_result want;
	const char *tenant; /* for TENANT_FOUND */
	unsigned source;    /* for TENANT_FOUND */
	bool strip_user, strip_database;
};

/* clang-format off */
static const struct tenant_case tenant_cases[] = {
	{"options -c", {{"user", "u"}, {"options", "-c app.tenant_id=42"}},
	 SRC_DEF, 0, TENANT_FOUND, "42", TENANT_SRC_OPTIONS, false, false},
	{"options -cname", {{"options", "-capp.tenant_id=42"}},
	 SRC_DEF, 0, TENANT_FOUND, "42", TENANT_SRC_OPTIONS, false, false},
	{"options --name", {{"options", "--app.tenant_id=42"}},
	 SRC_DEF, 0, TENANT_FOUND, "42", TENANT_SRC_OPTIONS, false, false},
	{"options --NAME-WITH-DASHES", {{"options", "--APP.TENANT-ID=7"}},
	 SRC_DEF, 0, TENANT_FOUND, "7", TENANT_SRC_OPTIONS, false, false},
	{"options -c mixed case", {{"options", "-c App.Tenant_Id=5"}},
	 SRC_DEF, 0, TENANT_FOUND, "5", TENANT_SRC_OPTIONS, false, false},
	{"options escaped space", {{"options", "-c app.tenant_id=a\\ b"}},
	 SRC_DEF, 0, TENANT_FOUND, "a b", TENANT_SRC_OPTIONS, false, false},
	{"options escaped backslash", {{"options", "-c app.tenant_id=a\\\\b"}},
	 SRC_DEF, 0, TENANT_FOUND, "a\\b", TENANT_SRC_OPTIONS, false, false},
	{"options spaces and tabs", {{"options", " \t-c \t app.tenant_id=9\t "}},
	 SRC_DEF, 0, TENANT_FOUND, "9", TENANT_SRC_OPTIONS, false, false},
	{"options among others", {{"options", "-c statement_timeout=5 -c app.tenant_id=9 -B 100"}},
	 SRC_DEF, 0, TENANT_FOUND, "9", TENANT_SRC_OPTIONS, false, false},
	{"options -c last", {{"options", "-c app.tenant_id=9 -c"}},
	 SRC_DEF, 0, TENANT_FOUND, "9", TENANT_SRC_OPTIONS, false, false},
	{"options -c only", {{"options", "-c"}}, SRC_DEF, 0, TENANT_NONE, NULL, 0, false, false},
	{"options no '='", {{"options", "-c app.tenant_id"}},
	 SRC_DEF, 0, TENANT_NONE, NULL, 0, false, false},
	{"options empty value", {{"options", "-c app.tenant_id="}},
	 SRC_DEF, 0, TENANT_NONE, NULL, 0, false, false},
	{"options other name", {{"options", "-c app.tenant_idx=5 -c xapp.tenant_id=6"}},
	 SRC_DEF, 0, TENANT_NONE, NULL, 0, false, false},
	{"options value with '='", {{"options", "-c app.tenant_id=a=b"}},
	 SRC_DEF, 0, TENANT_FOUND, "a=b", TENANT_SRC_OPTIONS, false, false},
	{"options same twice", {{"options", "-c app.tenant_id=3 --app.tenant-id=3"}},
	 SRC_DEF, 0, TENANT_FOUND, "3", TENANT_SRC_OPTIONS, false, false},
	{"options two different", {{"options", "-c app.tenant_id=3 -capp.tenant_id=4"}},
	 SRC_DEF, 0, TENANT_CONFLICT, NULL, 0, false, false},
	{"parameter", {{"user", "u"}, {"app.tenant_id", "42"}},
	 SRC_DEF, 0, TENANT_FOUND, "42", TENANT_SRC_PARAMETER, false, false},
	{"parameter key in other case", {{"APP.Tenant_ID", "42"}},
	 SRC_DEF, 0, TENANT_FOUND, "42", TENANT_SRC_PARAMETER, false, false},
	{"parameter in two cases, different", {{"app.tenant_id", "1"}, {"APP.TENANT_ID", "2"}},
	 SRC_DEF, 0, TENANT_CONFLICT, NULL, 0, false, false},
	{"parameter in two cases, same", {{"app.tenant_id", "1"}, {"APP.TENANT_ID", "1"}},
	 SRC_DEF, 0, TENANT_FOUND, "1", TENANT_SRC_PARAMETER, false, false},
	{"parameter empty", {{"app.tenant_id", ""}},
	 SRC_DEF, 0, TENANT_NONE, NULL, 0, false, false},
	{"parameter with dash is another name", {{"app.tenant-id", "1"}},
	 SRC_DEF, 0, TENANT_NONE, NULL, 0, false, false},
	{"options and parameter equal",
	 {{"options", "-c app.tenant_id=42"}, {"app.tenant_id", "42"}},
	 SRC_DEF, 0, TENANT_FOUND, "42", TENANT_SRC_OPTIONS, false, false},
	{"options and parameter differ",
	 {{"options", "-c app.tenant_id=42"}, {"app.tenant_id", "43"}},
	 SRC_DEF, 0, TENANT_CONFLICT, NULL, 0, false, false},
	{"42 and 042 are distinct", {{"options", "-c app.tenant_id=42"}, {"app.tenant_id", "042"}},
	 SRC_DEF, 0, TENANT_CONFLICT, NULL, 0, false, false},
	/* An empty value is still a value: it differs from "42", so refuse. */
	{"empty options value then parameter",
	 {{"options", "-c app.tenant_id="}, {"app.tenant_id", "42"}},
	 SRC_DEF, 0, TENANT_CONFLICT, NULL, 0, false, false},
	{"options source disabled", {{"options", "-c app.tenant_id=1"}},
	 TENANT_SRC_PARAMETER, 0, TENANT_NONE, NULL, 0, false, false},
	/* A disabled source cannot supply the tenant, but the server still applies
	 * it, so disagreement is refused as when both are enabled. */
	{"options disabled, parameter used",
	 {{"options", "-c app.tenant_id=1"}, {"app.tenant_id", "2"}},
	 TENANT_SRC_PARAMETER, 0, TENANT_CONFLICT, NULL, 0, false, false},
	{"options disabled and agreeing, parameter used",
	 {{"options", "-c app.tenant_id=2"}, {"app.tenant_id", "2"}},
	 TENANT_SRC_PARAMETER, 0, TENANT_FOUND, "2", TENANT_SRC_PARAMETER, false, false},
	{"parameter disabled and disagreeing, options used",
	 {{"options", "-c app.tenant_id=1"}, {"app.tenant_id", "2"}},
	 TENANT_SRC_OPTIONS, 0, TENANT_CONFLICT, NULL, 0, false, false},
	{"parameter source disabled", {{"app.tenant_id", "2"}},
	 TENANT_SRC_OPTIONS, 0, TENANT_NONE, NULL, 0, false, false},
	{"no sources", {{"options", "-c app.tenant_id=1"}, {"app.tenant_id", "1"}},
	 0, '+', TENANT_NONE, NULL, 0, false, false},
	{"nothing at all", {{"user", "u"}, {"database", "d"}},
	 SRC_ALL, '+', TENANT_NONE, NULL, 0, false, false},
	{"user suffix", {{"user", "app+t7"}, {"database", "db"}},
	 TENANT_SRC_USER, '+', TENANT_FOUND, "t7", TENANT_SRC_USER, true, false},
	{"user suffix, last separator", {{"user", "a+b+c"}},
	 TENANT_SRC_USER, '+', TENANT_FOUND, "c", TENANT_SRC_USER, true, false},
	{"user suffix, other separator", {{"user", "app@t7"}},
	 TENANT_SRC_USER, '@', TENANT_FOUND, "t7", TENANT_SRC_USER, true, false},
	{"user without separator", {{"user", "app"}},
	 TENANT_SRC_USER, '+', TENANT_NONE, NULL, 0, false, false},
	{"user separator at position 0", {{"user", "+x"}},
	 TENANT_SRC_USER, '+', TENANT_NONE, NULL, 0, false, false},
	{"user source disabled", {{"user", "app+t7"}},
	 TENANT_SRC_DATABASE, '+', TENANT_NONE, NULL, 0, false, false},
	{"user source, no separator set", {{"user", "app+t7"}},
	 TENANT_SRC_USER, '\0', TENANT_NONE, NULL, 0, false, false},
	{"database suffix", {{"user", "app"}, {"database", "db+t9"}},
	 TENANT_SRC_DATABASE, '+', TENANT_FOUND, "t9", TENANT_SRC_DATABASE, false, true},
	{"user and database suffix equal", {{"user", "app+t9"}, {"database", "db+t9"}},
	 SRC_ALL, '+', TENANT_FOUND, "t9", TENANT_SRC_USER, true, true},
	{"user and database suffix differ", {{"user", "app+t1"}, {"database", "db+t9"}},
	 SRC_ALL, '+', TENANT_CONFLICT, NULL, 0, false, false},
	{"user suffix and options equal", {{"user", "app+7"}, {"options", "-c app.tenant_id=7"}},
	 SRC_ALL, '+', TENANT_FOUND, "7", TENANT_SRC_OPTIONS, true, false},
	{"user suffix and options differ", {{"user", "app+7"}, {"options", "-c app.tenant_id=8"}},
	 SRC_ALL, '+', TENANT_CONFLICT, NULL, 0, false, false},
	{"user suffix and parameter equal", {{"user", "app+7"}, {"app.tenant_id", "7"}},
	 SRC_ALL, '+', TENANT_FOUND, "7", TENANT_SRC_PARAMETER, true, false},
	{"user suffix and parameter differ", {{"user", "app+7"}, {"app.tenant_id", "70"}},
	 SRC_ALL, '+', TENANT_CONFLICT, NULL, 0, false, false},
	{"user suffix, user source disabled, options used",
	 {{"user", "app+7"}, {"options", "-c app.tenant_id=8"}},
	 SRC_DEF, '+', TENANT_FOUND, "8", TENANT_SRC_OPTIONS, false, false},
};
/* clang-format on */

static enum tenant_result find_tenant_kv(const struct kv *kv, const struct tenant_rule *rule,
                                         struct tenant *t, struct pkt *p, struct startup *st)
{
	build_startup(p, V30, kv);
	parse_ok(p, st);
	return startup_find_tenant(st, rule, t);
}

static void test_startup_tenant_table(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(tenant_cases); i++) {
		const struct tenant_case *c = &tenant_cases[i];
		struct tenant_rule rule = {.key = KEY, .sources = c->sources, .separator = c->sep};
		struct tenant t;
		struct pkt p;
		struct startup st;
		enum tenant_result r = find_tenant_kv(c->kv, &rule, &t, &p, &st);

		if (r != c->want)
			fail_msg("%s: result %d, want %d", c->name, r, c->want);
		if (r != TENANT_FOUND)
			continue;
		if (strcmp(t.name, c->tenant) != 0)
			fail_msg("%s: tenant \"%s\", want \"%s\"", c->name, t.name, c->tenant);
		assert_int_equal(t.len, strlen(c->tenant));
		if (t.source != c->source)
			fail_msg("%s: source %u, want %u", c->name, t.source, c->source);
		if (t.strip_user != c->strip_user || t.strip_database != c->strip_database)
			fail_msg("%s: strip user %d database %d, want %d %d", c->name, t.strip_user,
			         t.strip_database, c->strip_user, c->strip_database);
	}
}

static void test_startup_tenant_length_limit(void **state)
{
	/* 255 bytes is the longest tenant; 256 is TOO_LONG from every source. */
	char v255[STARTUP_MAX_TENANT_LEN + 1], v256[STARTUP_MAX_TENANT_LEN + 2];
	char opt[400], usr[400];
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct tenant t;
	struct pkt p;
	struct startup st;

	memset(v255, '7', sizeof(v255) - 1);
	v255[sizeof(v255) - 1] = '\0';
	memset(v256, '7', sizeof(v256) - 1);
	v256[sizeof(v256) - 1] = '\0';

	snprintf(opt, sizeof(opt), "-c app.tenant_id=%s", v255);
	assert_int_equal(
	        find_tenant_kv((struct kv[]){{"options", opt}, {NULL, NULL}}, &rule, &t, &p, &st),
	        TENANT_FOUND);
	assert_int_equal(t.len, 255);
	assert_string_equal(t.name, v255);
	snprintf(opt, sizeof(opt), "-c app.tenant_id=%s", v256);
	assert_int_equal(
	        find_tenant_kv((struct kv[]){{"options", opt}, {NULL, NULL}}, &rule, &t, &p, &st),
	        TENANT_TOO_LONG);

	assert_int_equal(
	        find_tenant_kv((struct kv[]){{KEY, v255}, {NULL, NULL}}, &rule, &t, &p, &st),
	        TENANT_FOUND);
	assert_int_equal(t.len, 255);
	assert_int_equal(
	        find_tenant_kv((struct kv[]){{KEY, v256}, {NULL, NULL}}, &rule, &t, &p, &st),
	        TENANT_TOO_LONG);

	snprintf(usr, sizeof(usr), "app+%s", v255);
	assert_int_equal(
	        find_tenant_kv((struct kv[]){{"user", usr}, {NULL, NULL}}, &rule, &t, &p, &st),
	        TENANT_FOUND);
	assert_string_equal(t.name, v255);
	snprintf(usr, sizeof(usr), "app+%s", v256);
	assert_int_equal(
	        find_tenant_kv((struct kv[]){{"user", usr}, {NULL, NULL}}, &rule, &t, &p, &st),
	        TENANT_TOO_LONG);

	/* Too long wins over a later valid source. */
	assert_int_equal(find_tenant_kv((struct kv[]){{KEY, v256}, {"user", "app+1"}, {NULL, NULL}},
	                                &rule, &t, &p, &st),
	                 TENANT_TOO_LONG);
}

static void test_startup_tenant_non_v3_has_none(void **state)
{
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct pkt p;
	struct startup st;
	struct tenant t;

	p.n = 0;
	pk_u32(&p, 8);
	pk_u32(&p, PROTO_CODE_SSL);
	parse_ok(&p, &st);
	assert_int_equal(startup_find_tenant(&st, &rule, &t), TENANT_NONE);
}

/*
 * True when the router's verdict is safe given what PostgreSQL will set
 * (server_value NULL: the server sets nothing): either it refuses, or it
 * routes by exactly the server's value.
 */
static bool router_agrees(enum tenant_result r, const struct tenant *t, const char *server_value)
{
	if (r != TENANT_FOUND)
		return true;
	return server_value != NULL && strcmp(t->name, server_value) == 0;
}

/*
 * Regression (fixed in e54eda5): `options` is read by PostgreSQL's getopt()
 * over "B:bC:c:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:", which accepts bundled
 * switches: `-ecNAME=V`, `-Ec NAME=V` and `-e-NAME=V` all set NAME. With
 *   options=-c app.tenant_id=1 -ecapp.tenant_id=2
 * the router used to find tenant "1" and route there, while the server
 * session had app.tenant_id = '2' (PostgreSQL 15; the last setting wins).
 * The router must refuse (CONFLICT) or route by "2".
 */
static void test_startup_tenant_bundled_switches(void **state)
{
	static const struct {
		const char *options;
		const char *server; /* current_setting('app.tenant_id') on PostgreSQL 15 */
	} cases[] = {
	        {"-c app.tenant_id=1 -ecapp.tenant_id=2", "2"},
	        {"-c app.tenant_id=1 -Ec app.tenant_id=2", "2"},
	        {"-c app.tenant_id=1 -e-app.tenant_id=2", "2"},
	        {"-c app.tenant_id=1 -nTjcapp.tenant_id=2", "2"},
	};
	struct tenant_rule rule = {.key = KEY, .sources = SRC_DEF, .separator = '+'};
	int bad = 0;

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct tenant t;
		struct pkt p;
		struct startup st;
		enum tenant_result r =
		        find_tenant_kv((struct kv[]){{"options", cases[i].options}, {NULL, NULL}},
		                       &rule, &t, &p, &st);

		if (!router_agrees(r, &t, cases[i].server)) {
			print_error("options \"%s\": router routes by \"%s\", server sets \"%s\"\n",
			            cases[i].options, t.name, cases[i].server);
			bad++;
		}
	}
	assert_int_equal(bad, 0);
}

/*
 * Regression (fixed in e54eda5, same cause): switches that take an argument
 * swallow the next word. `-C -capp.tenant_id=1` sets nothing on the server
 * (-C and its argument are ignored); the router used to find tenant "1".
 */
static void test_startup_tenant_switch_argument(void **state)
{
	static const struct {
		const char *options;
		const char *server;
	} cases[] = {
	        {"-C -capp.tenant_id=1", NULL},
	        {"-D --app.tenant_id=1", NULL},
	};
	struct tenant_rule rule = {.key = KEY, .sources = SRC_DEF, .separator = '+'};
	int bad = 0;

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct tenant t;
		struct pkt p;
		struct startup st;
		enum tenant_result r =
		        find_tenant_kv((struct kv[]){{"options", cases[i].options}, {NULL, NULL}},
		                       &rule, &t, &p, &st);

		if (!router_agrees(r, &t, cases[i].server)) {
			print_error(
			        "options \"%s\": router routes by \"%s\", server sets nothing\n",
			        cases[i].options, t.name);
			bad++;
		}
	}
	assert_int_equal(bad, 0);
}

/* The trailing-backslash regression seen from the tenant's side. */
static void test_startup_tenant_trailing_backslash(void **state)
{
	struct tenant_rule rule = {.key = KEY, .sources = SRC_DEF, .separator = '+'};
	struct tenant t;
	struct pkt p;
	struct startup st;
	enum tenant_result r =
	        find_tenant_kv((struct kv[]){{"options", "-c app.tenant_id=42\\"}, {NULL, NULL}},
	                       &rule, &t, &p, &st);

	if (!router_agrees(r, &t, "42"))
		fail_msg("router routes by \"%s\", server sets \"42\"", t.name);
}

/* ---- startup_build_forward ---------------------------------------------- */

/* Finds the tenant (asserting FOUND) and builds the forward packet. */
static size_t forward(const struct kv *kv, uint32_t version, const struct tenant_rule *rule,
                      struct tenant *t, struct pkt *in, struct startup *st, uint8_t *out,
                      size_t cap)
{
	build_startup(in, version, kv);
	parse_ok(in, st);
	assert_int_equal(startup_find_tenant(st, rule, t), TENANT_FOUND);
	return startup_build_forward(st, rule, t, out, cap);
}

static void test_startup_forward_strips_user_suffix(void **state)
{
	static const struct kv kv[] = {
	        {"user", "app+t7"},           {"database", "db"},
	        {"application_name", "psql"}, {"options", "-c geqo=off"},
	        {"client_encoding", "UTF8"},  {NULL, NULL},
	};
	static const struct kv want_kv[] = {
	        {"user", "app"},
	        {"database", "db"},
	        {"application_name", "psql"},
	        {"options", "-c geqo=off"},
	        {"client_encoding", "UTF8"},
	        {"app.tenant_id", "t7"},
	        {NULL, NULL},
	};
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct tenant t;
	struct pkt in, want;
	struct startup st;
	uint8_t out[1024];
	size_t n = forward(kv, V30, &rule, &t, &in, &st, out, sizeof(out));

	assert_string_equal(t.name, "t7");
	assert_true(t.strip_user);
	build_startup(&want, V30, want_kv);
	assert_int_equal(n, want.n);
	assert_memory_equal(out, want.b, n);
}

static void test_startup_forward_strips_database_suffix(void **state)
{
	static const struct kv kv[] = {{"database", "db+t9"}, {"user", "app"}, {NULL, NULL}};
	static const struct kv want_kv[] = {
	        {"database", "db"}, {"user", "app"}, {"app.tenant_id", "t9"}, {NULL, NULL}};
	struct tenant_rule rule = {.key = KEY, .sources = TENANT_SRC_DATABASE, .separator = '+'};
	struct tenant t;
	struct pkt in, want;
	struct startup st;
	uint8_t out[1024];
	size_t n = forward(kv, V30, &rule, &t, &in, &st, out, sizeof(out));

	build_startup(&want, V30, want_kv);
	assert_int_equal(n, want.n);
	assert_memory_equal(out, want.b, n);
}

static void test_startup_forward_strips_both_adds_once(void **state)
{
	static const struct kv kv[] = {{"user", "a+b+t9"}, {"database", "db+t9"}, {NULL, NULL}};
	static const struct kv want_kv[] = {
	        {"user", "a+b"}, {"database", "db"}, {"app.tenant_id", "t9"}, {NULL, NULL}};
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct tenant t;
	struct pkt in, want;
	struct startup st;
	uint8_t out[1024];
	size_t n = forward(kv, V32, &rule, &t, &in, &st, out, sizeof(out));

	build_startup(&want, V32, want_kv);
	assert_int_equal(n, want.n);
	assert_memory_equal(out, want.b, n);
}

static void test_startup_forward_from_options_unchanged(void **state)
{
	static const struct kv kv[] = {
	        {"user", "app"},    {"options", "-c app.tenant_id=42 -c x.y=\\ z"},
	        {"database", "db"}, {"replication", "false"},
	        {NULL, NULL},
	};
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct tenant t;
	struct pkt in;
	struct startup st;
	uint8_t out[1024];
	size_t n = forward(kv, V32, &rule, &t, &in, &st, out, sizeof(out));

	/* Nothing to strip, nothing to add: byte for byte what the client sent. */
	assert_int_equal(t.source, TENANT_SRC_OPTIONS);
	assert_int_equal(n, in.n);
	assert_memory_equal(out, in.b, n);
}

static void test_startup_forward_from_parameter_unchanged(void **state)
{
	static const struct kv kv[] = {{"App.Tenant_Id", "42"}, {"user", "app"}, {NULL, NULL}};
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct tenant t;
	struct pkt in;
	struct startup st;
	uint8_t out[1024];
	size_t n = forward(kv, V30, &rule, &t, &in, &st, out, sizeof(out));

	assert_int_equal(n, in.n);
	assert_memory_equal(out, in.b, n);
}

static void test_startup_forward_options_with_user_suffix(void **state)
{
	/* Tenant from options; the user suffix is still stripped, no key added. */
	static const struct kv kv[] = {
	        {"user", "app+7"}, {"options", "-c app.tenant_id=7"}, {NULL, NULL}};
	static const struct kv want_kv[] = {
	        {"user", "app"}, {"options", "-c app.tenant_id=7"}, {NULL, NULL}};
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct tenant t;
	struct pkt in, want;
	struct startup st;
	uint8_t out[1024];
	size_t n = forward(kv, V30, &rule, &t, &in, &st, out, sizeof(out));

	assert_int_equal(t.source, TENANT_SRC_OPTIONS);
	build_startup(&want, V30, want_kv);
	assert_int_equal(n, want.n);
	assert_memory_equal(out, want.b, n);
}

static void test_startup_forward_cap_too_small(void **state)
{
	static const struct kv kv[] = {{"user", "app+t7"}, {"database", "db"}, {NULL, NULL}};
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct tenant t;
	struct pkt in;
	struct startup st;
	uint8_t big[1024];
	size_t need = forward(kv, V30, &rule, &t, &in, &st, big, sizeof(big));

	assert_true(need > 0);
	/* Exact-size heap buffers: a write past cap is an ASan error. */
	for (size_t cap = 0; cap <= need; cap++) {
		uint8_t *out = malloc(cap ? cap : 1);
		size_t n;

		assert_non_null(out);
		n = startup_build_forward(&st, &rule, &t, out, cap);
		if (cap < need)
			assert_int_equal(n, 0);
		else {
			assert_int_equal(n, need);
			assert_memory_equal(out, big, need);
		}
		free(out);
	}
}

/*
 * Adding the tenant can push a packet that was within the limit past it.
 * PostgreSQL 15 drops such a packet without a reply (it logs "invalid length
 * of startup packet" and resets the connection), so a caller must pass
 * cap <= PROTO_MAX_STARTUP_LEN to get 0 here and refuse the client itself.
 */
static void test_startup_forward_over_max_startup_len(void **state)
{
	static char app[PROTO_MAX_STARTUP_LEN];
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct tenant t;
	struct pkt in;
	struct startup st;
	uint8_t *out = malloc(PROTO_MAX_STARTUP_LEN);
	size_t fill;

	/* 8 + "user\0app+7\0" (11) + "application_name\0" (17) + value + 2 NULs. */
	fill = PROTO_MAX_STARTUP_LEN - 8 - 11 - 17 - 2;
	memset(app, 'x', fill);
	app[fill] = '\0';
	assert_non_null(out);
	build_startup(&in, V30,
	              (struct kv[]){{"user", "app+7"}, {"application_name", app}, {NULL, NULL}});
	assert_int_equal(in.n, PROTO_MAX_STARTUP_LEN);
	parse_ok(&in, &st);
	assert_int_equal(startup_find_tenant(&st, &rule, &t), TENANT_FOUND);
	/* "+7" goes, "app.tenant_id\0" "7\0" comes: 14 bytes more than allowed. */
	assert_int_equal(startup_build_forward(&st, &rule, &t, out, PROTO_MAX_STARTUP_LEN), 0);
	free(out);
}

static void test_startup_forward_reparses(void **state)
{
	static const struct kv kv[] = {{"user", "app+t7"},
	                               {"database", "db+t7"},
	                               {"application_name", "caf\xc3\xa9"},
	                               {NULL, NULL}};
	struct tenant_rule rule = {.key = KEY, .sources = SRC_ALL, .separator = '+'};
	struct tenant t, t2;
	struct pkt in;
	struct startup st, st2;
	uint8_t out[1024];
	const char *why = NULL;
	size_t n = forward(kv, V32, &rule, &t, &in, &st, out, sizeof(out));

	assert_true(n > 0);
	assert_int_equal(startup_parse(out, n, &st2, &why), PROTO_OK);
	assert_int_equal(st2.kind, STARTUP_V3);
	assert_int_equal(st2.code, V32);
	assert_int_equal(st2.nparams, 4);
	assert_string_equal(startup_get(&st2, "user")->val, "app");
	assert_string_equal(startup_get(&st2, "database")->val, "db");
	assert_string_equal(startup_get(&st2, KEY)->val, "t7");
	/* The server-side view carries the same tenant, now as a parameter. */
	assert_int_equal(startup_find_tenant(&st2, &rule, &t2), TENANT_FOUND);
	assert_string_equal(t2.name, "t7");
	assert_int_equal(t2.source, TENANT_SRC_PARAMETER);
	assert_false(t2.strip_user);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_startup_parse_table),
	        cmocka_unit_test(test_startup_parse_byte_at_a_time),
	        cmocka_unit_test(test_startup_parse_truncated_at_every_offset),
	        cmocka_unit_test(test_startup_parse_v3_fields),
	        cmocka_unit_test(test_startup_parse_v32_version),
	        cmocka_unit_test(test_startup_parse_unsupported_versions),
	        cmocka_unit_test(test_startup_parse_cancel_keys),
	        cmocka_unit_test(test_startup_parse_param_limit),
	        cmocka_unit_test(test_startup_parse_length_vs_buffer),
	        cmocka_unit_test(test_startup_parse_max_length_packet),
	        cmocka_unit_test(test_startup_options_table),
	        cmocka_unit_test(test_startup_options_stop_early),
	        cmocka_unit_test(test_startup_options_length_bounds_input),
	        cmocka_unit_test(test_startup_options_trailing_backslash),
	        cmocka_unit_test(test_startup_guc_name_eq_table),
	        cmocka_unit_test(test_startup_tenant_table),
	        cmocka_unit_test(test_startup_tenant_length_limit),
	        cmocka_unit_test(test_startup_tenant_non_v3_has_none),
	        cmocka_unit_test(test_startup_tenant_bundled_switches),
	        cmocka_unit_test(test_startup_tenant_switch_argument),
	        cmocka_unit_test(test_startup_tenant_trailing_backslash),
	        cmocka_unit_test(test_startup_forward_strips_user_suffix),
	        cmocka_unit_test(test_startup_forward_strips_database_suffix),
	        cmocka_unit_test(test_startup_forward_strips_both_adds_once),
	        cmocka_unit_test(test_startup_forward_from_options_unchanged),
	        cmocka_unit_test(test_startup_forward_from_parameter_unchanged),
	        cmocka_unit_test(test_startup_forward_options_with_user_suffix),
	        cmocka_unit_test(test_startup_forward_cap_too_small),
	        cmocka_unit_test(test_startup_forward_over_max_startup_len),
	        cmocka_unit_test(test_startup_forward_reparses),
	        /* Last: aborts under ASan until the bug it describes is fixed. */
	        cmocka_unit_test(test_startup_options_nul_byte_bug),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
