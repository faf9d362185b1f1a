/*
 * test_auth.c - unit tests for stored secrets, userlist.txt, passfiles, md5
 * and SCRAM-SHA-256 (src/auth.c).
 *
 * Known answers come from outside this code: the RFC 7677 section 3 exchange
 * (user "user", password "pencil"); StoredKey and ServerKey for its salt
 * computed with Python's hashlib/hmac; md5 values from md5sum; and a SCRAM
 * and an md5 verifier that PostgreSQL 15 stored in pg_authid for password
 * "pencil" (CREATE ROLE ... PASSWORD 'pencil', read back in single-user mode).
 * Every message handed to a parser is copied into a heap block of exactly
 * its length, so ASan reports a read past the end. Files are written to
 * mkstemp() names and removed by each test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "auth.h"

/* RFC 7677 section 3. */
#define RFC_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SALT  "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC_SERVER_FIRST \
	"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=" RFC_SALT ",i=4096"
#define RFC_CLIENT_FINAL                                               \
	"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0," \
	"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
/* Its keys (hashlib.pbkdf2_hmac + hmac), base64. */
#define RFC_STORED_B64 "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
#define RFC_SERVER_B64 "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
#define RFC_VERIFIER   "SCRAM-SHA-256$4096:" RFC_SALT "$" RFC_STORED_B64 ":" RFC_SERVER_B64

static const uint8_t rfc_client_key[SCRAM_KEY_LEN] = {
        0xa6, 0x0f, 0xc9, 0x23, 0xd6, 0x7e, 0x86, 0x44, 0xa9, 0x2d, 0x16,
        0xb9, 0x6e, 0xda, 0x5e, 0xf4, 0x65, 0x6b, 0x0c, 0x72, 0x5c, 0x48,
        0x43, 0x74, 0xbe, 0x25, 0x53, 0x55, 0x76, 0x99, 0x6e, 0x8b};
static const uint8_t rfc_stored_key[SCRAM_KEY_LEN] = {
        0x58, 0x6e, 0x5d, 0xf2, 0x83, 0xe6, 0xdc, 0xeb, 0x5c, 0x3e, 0x79,
        0x1d, 0x8b, 0x85, 0x28, 0xec, 0x19, 0x1e, 0x66, 0x40, 0x45, 0xce,
        0x97, 0x17, 0x92, 0xe2, 0xe6, 0xb5, 0xbb, 0x13, 0xe2, 0xa6};
static const uint8_t rfc_server_key[SCRAM_KEY_LEN] = {
        0xc1, 0xf3, 0xcb, 0xc1, 0xc1, 0x3a, 0x9d, 0x35, 0xa1, 0x4c, 0x09,
        0x90, 0xee, 0xd9, 0x76, 0x29, 0xea, 0x22, 0x58, 0x63, 0xe5, 0x66,
        0xa4, 0x31, 0x4a, 0xb9, 0x9f, 0x3f, 0x00, 0xe5, 0xd9, 0xd5};
static const uint8_t rfc_salt[16] = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
                                     0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};

/* What PostgreSQL 15 stored for CREATE ROLE u / alice PASSWORD 'pencil'. */
#define PG_VERIFIER                                                                     \
	"SCRAM-SHA-256$4096:/Oe21RPbt6tS++nRzfJvSA==$KWIS87OLMvFX8gvly4b7fN4m2LLflqzP/" \
	"izIKsyZd6A=:"                                                                  \
	"Ls4zR2z3b9MBtMfNibx8Hv866gY4stuCpCILJw8060o="
#define PG_MD5_ALICE "md5ee69efad287c7423caf0b3229d71f567"

/* ---- helpers ----------------------------------------------------------- */

static uint8_t *dup_exact(const void *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);

	assert_non_null(d);
	if (n)
		memcpy(d, p, n);
	return d;
}

static int srv_first(struct scram_server *st, const struct secret *sec, const char *m, size_t n,
                     char *out, size_t cap, size_t *outlen, const char **why)
{
	uint8_t *d = dup_exact(m, n);
	int rc = scram_server_first(st, sec, d, n, out, cap, outlen, why);

	free(d);
	return rc;
}

static int srv_final(struct scram_server *st, const char *m, size_t n, char *out, size_t cap,
                     size_t *outlen, const char **why)
{
	uint8_t *d = dup_exact(m, n);
	int rc = scram_server_final(st, d, n, out, cap, outlen, why);

	free(d);
	return rc;
}

static int cli_final(struct scram_client *c, const char *m, size_t n, char *out, size_t cap,
                     size_t *outlen, const char **why)
{
	uint8_t *d = dup_exact(m, n);
	int rc = scram_client_final(c, d, n, out, cap, outlen, why);

	free(d);
	return rc;
}

static int cli_verify(struct scram_client *c, const char *m, size_t n, const char **why)
{
	uint8_t *d = dup_exact(m, n);
	int rc = scram_client_verify(c, d, n, why);

	free(d);
	return rc;
}

static void parse_ok(const char *text, struct secret *s)
{
	if (!secret_parse(text, s))
		fail_msg("secret_parse refused \"%s\"", text);
}

static bool all_zero(const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++) {
		if (b[i] != 0)
			return false;
	}
	return true;
}

/* Messages of one exchange, kept for tests that tamper with them. */
struct run {
	char m1[256], m2[512], m3[512], m4[128];
	size_t n1, n2, n3, n4;
	const char *why;
	int first, final, verify; /* scram_client_final, scram_server_final, scram_client_verify */
};

/* A whole exchange between c and st (server holding sec); verify runs only after a 1. */
static void exchange(struct scram_client *c, struct scram_server *st, const struct secret *sec,
                     struct run *r)
{
	memset(r, 0, sizeof(*r));
	r->verify = -9;
	r->final = -9;
	r->n1 = scram_client_first(c, r->m1, sizeof(r->m1));
	assert_true(r->n1 > 0);
	if (srv_first(st, sec, r->m1, r->n1, r->m2, sizeof(r->m2), &r->n2, &r->why) != 0)
		fail_msg("scram_server_first: %s", r->why);
	r->first = cli_final(c, r->m2, r->n2, r->m3, sizeof(r->m3), &r->n3, &r->why);
	if (r->first != 0)
		return;
	r->final = srv_final(st, r->m3, r->n3, r->m4, sizeof(r->m4), &r->n4, &r->why);
	if (r->final == 1)
		r->verify = cli_verify(c, r->m4, r->n4, &r->why);
}

static void write_file(char path[64], const char *content)
{
	size_t n = strlen(content);
	int fd;

	strcpy(path, "/tmp/test_auth_XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, n), (ssize_t)n);
	assert_int_equal(close(fd), 0);
}

/* ---- secret_parse ------------------------------------------------------- */

static void test_auth_secret_parse_kinds(void **state)
{
	struct secret s;
	char big[AUTH_MAX_SECRET + 1];

	parse_ok("", &s);
	assert_int_equal(s.kind, SECRET_NONE);
	parse_ok("pencil", &s);
	assert_int_equal(s.kind, SECRET_PLAIN);
	assert_string_equal(s.plain, "pencil");
	parse_ok(PG_MD5_ALICE, &s);
	assert_int_equal(s.kind, SECRET_MD5);
	assert_string_equal(s.md5, PG_MD5_ALICE);
	/* PostgreSQL: only lower-case hex of exactly 32 digits is md5; the rest is a password. */
	parse_ok("md5EE69EFAD287C7423CAF0B3229D71F567", &s);
	assert_int_equal(s.kind, SECRET_PLAIN);
	parse_ok("md5ee69efad287c7423caf0b3229d71f56", &s);
	assert_int_equal(s.kind, SECRET_PLAIN);
	parse_ok("md5ee69efad287c7423caf0b3229d71f5670", &s);
	assert_int_equal(s.kind, SECRET_PLAIN);
	/* Only the exact prefix makes SCRAM. */
	parse_ok("scram-sha-256$4096:x$y:z", &s);
	assert_int_equal(s.kind, SECRET_PLAIN);

	memset(big, 'x', sizeof(big));
	big[AUTH_MAX_SECRET - 1] = '\0';
	parse_ok(big, &s);
	assert_int_equal(s.kind, SECRET_PLAIN);
	big[AUTH_MAX_SECRET - 1] = 'x';
	big[AUTH_MAX_SECRET] = '\0';
	assert_false(secret_parse(big, &s));
	assert_int_equal(s.kind, SECRET_NONE);
}

static void test_auth_secret_parse_scram_rfc(void **state)
{
	struct secret s;

	parse_ok(RFC_VERIFIER, &s);
	assert_int_equal(s.kind, SECRET_SCRAM);
	assert_int_equal(s.iterations, 4096);
	assert_int_equal(s.saltlen, sizeof(rfc_salt));
	assert_memory_equal(s.salt, rfc_salt, sizeof(rfc_salt));
	assert_memory_equal(s.stored_key, rfc_stored_key, SCRAM_KEY_LEN);
	assert_memory_equal(s.server_key, rfc_server_key, SCRAM_KEY_LEN);
}

static void test_auth_secret_parse_scram_malformed(void **state)
{
#define K32 RFC_STORED_B64
	static const char *const bad[] = {
	        "SCRAM-SHA-256$",
	        "SCRAM-SHA-256$4096",
	        "SCRAM-SHA-256$4096:" RFC_SALT,
	        "SCRAM-SHA-256$4096:" RFC_SALT "$" K32,
	        "SCRAM-SHA-256$0:" RFC_SALT "$" K32 ":" K32,
	        "SCRAM-SHA-256$-1:" RFC_SALT "$" K32 ":" K32,
	        "SCRAM-SHA-256$+4096:" RFC_SALT "$" K32 ":" K32,
	        "SCRAM-SHA-256$ 4096:" RFC_SALT "$" K32 ":" K32,
	        "SCRAM-SHA-256$4096x:" RFC_SALT "$" K32 ":" K32,
	        "SCRAM-SHA-256$:" RFC_SALT "$" K32 ":" K32,
	        "SCRAM-SHA-256$99999999999:" RFC_SALT "$" K32 ":" K32,
	        "SCRAM-SHA-256$4096:$" K32 ":" K32,
	        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=$" K32 ":" K32,
	        "SCRAM-SHA-256$4096:W22ZaJ0SNY7so EsUEjb6gQ==$" K32 ":" K32,
	        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6g=Q=$" K32 ":" K32,
	        /* 65-byte salt: over SCRAM_MAX_SALT. */
	        "SCRAM-SHA-256$4096:"
	        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEy"
	        "MzQ1Njc4OTo7PD0+P0A=$" K32 ":" K32,
	        /* 31- and 33-byte keys. */
	        "SCRAM-SHA-256$4096:" RFC_SALT "$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==:" K32,
	        "SCRAM-SHA-256$4096:" RFC_SALT "$" K32
	        ":AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g",
	        "SCRAM-SHA-256$4096:" RFC_SALT "$" K32 ":" K32 ":" K32,
	        "SCRAM-SHA-256$4096:" RFC_SALT "$" K32 ":" K32 " ",
	        "SCRAM-SHA-256$4096:" RFC_SALT "$" K32 ":",
	        "SCRAM-SHA-256$4096:" RFC_SALT "$:" K32,
	};
#undef K32
	struct secret s;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (secret_parse(bad[i], &s))
			fail_msg("secret_parse accepted case %zu: %s", i, bad[i]);
		assert_int_equal(s.kind, SECRET_NONE);
	}
}

/* Salts of 1, 2, 3 and 64 bytes: two, one and no '=' of padding. */
static void test_auth_secret_parse_b64_padding(void **state)
{
	static const struct {
		const char *b64;
		size_t len;
	} cases[] = {
	        {"AQ==", 1},
	        {"AQI=", 2},
	        {"AQID", 3},
	        {"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7P"
	         "D0+"
	         "Pw==",
	         64},
	};
	char text[256];
	struct secret s;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "SCRAM-SHA-256$1:%s$%s:%s", cases[i].b64,
		         RFC_STORED_B64, RFC_SERVER_B64);
		parse_ok(text, &s);
		assert_int_equal(s.saltlen, cases[i].len);
		for (size_t j = 0; j < cases[i].len; j++)
			assert_int_equal(s.salt[j], cases[i].len == 64 ? j : j + 1);
	}
	/* Misplaced or excess padding. */
	snprintf(text, sizeof(text), "SCRAM-SHA-256$1:A===$%s:%s", RFC_STORED_B64, RFC_SERVER_B64);
	assert_false(secret_parse(text, &s));
	snprintf(text, sizeof(text), "SCRAM-SHA-256$1:====$%s:%s", RFC_STORED_B64, RFC_SERVER_B64);
	assert_false(secret_parse(text, &s));
	snprintf(text, sizeof(text), "SCRAM-SHA-256$1:AQ=A$%s:%s", RFC_STORED_B64, RFC_SERVER_B64);
	assert_false(secret_parse(text, &s));
	snprintf(text, sizeof(text), "SCRAM-SHA-256$1:AQ$%s:%s", RFC_STORED_B64, RFC_SERVER_B64);
	assert_false(secret_parse(text, &s));
}

static void test_auth_secret_clear(void **state)
{
	struct secret s;

	parse_ok(RFC_VERIFIER, &s);
	secret_clear(&s);
	assert_int_equal(s.kind, SECRET_NONE);
	assert_true(all_zero(&s, sizeof(s)));
}

/* ---- md5 ----------------------------------------------------------------- */

static void test_auth_md5_hash(void **state)
{
	char out[36];

	/* printf '%s' penciluser | md5sum */
	auth_md5_hash("pencil", "user", out);
	assert_string_equal(out, "md520c46e3762c864548e296b33c3406aa9");
	/* PostgreSQL's own md5 verifier for alice / pencil. */
	auth_md5_hash("pencil", "alice", out);
	assert_string_equal(out, PG_MD5_ALICE);
}

static void test_auth_md5_salted(void **state)
{
	static const uint8_t salt1[4] = {1, 2, 3, 4}, salt2[4] = {0xde, 0xad, 0xbe, 0xef};
	char out[36];

	auth_md5_salted("md520c46e3762c864548e296b33c3406aa9", salt1, out);
	assert_string_equal(out, "md54376eb6913b38f9aaff38dc7cf19ca76");
	auth_md5_salted(PG_MD5_ALICE, salt2, out);
	assert_string_equal(out, "md589ac9dabb63a4f0b959fff1b8cff5d71");
	auth_md5_salted("md5short", salt1, out);
	assert_string_equal(out, "");
}

static void test_auth_md5_check_md5_secret(void **state)
{
	static const uint8_t salt[4] = {0xde, 0xad, 0xbe, 0xef},
	                     other[4] = {0xde, 0xad, 0xbe, 0xee};
	const char *right = "md589ac9dabb63a4f0b959fff1b8cff5d71";
	struct secret s;

	parse_ok(PG_MD5_ALICE, &s);
	assert_true(auth_md5_check(&s, "alice", salt, right));
	assert_false(auth_md5_check(&s, "alice", other, right));
	assert_false(auth_md5_check(&s, "alice", salt, "md589ac9dabb63a4f0b959fff1b8cff5d70"));
	assert_false(auth_md5_check(&s, "alice", salt, "md589ac9dabb63a4f0b959fff1b8cff5d7"));
	assert_false(auth_md5_check(&s, "alice", salt, "md589ac9dabb63a4f0b959fff1b8cff5d711"));
	assert_false(auth_md5_check(&s, "alice", salt, ""));
}

static void test_auth_md5_check_plain_secret(void **state)
{
	static const uint8_t salt[4] = {0xde, 0xad, 0xbe, 0xef};
	const char *right = "md589ac9dabb63a4f0b959fff1b8cff5d71";
	struct secret s;

	parse_ok("pencil", &s);
	assert_true(auth_md5_check(&s, "alice", salt, right));
	/* The user name salts the stored hash. */
	assert_false(auth_md5_check(&s, "bob", salt, right));
	parse_ok("pencil2", &s);
	assert_false(auth_md5_check(&s, "alice", salt, right));
}

static void test_auth_md5_check_other_kinds(void **state)
{
	static const uint8_t salt[4] = {0xde, 0xad, 0xbe, 0xef};
	const char *right = "md589ac9dabb63a4f0b959fff1b8cff5d71";
	struct secret s;

	parse_ok(RFC_VERIFIER, &s);
	assert_false(auth_md5_check(&s, "alice", salt, right));
	parse_ok("", &s);
	assert_false(auth_md5_check(&s, "alice", salt, right));
}

static void test_auth_random(void **state)
{
	uint8_t a[32] = {0}, b[32] = {0};

	assert_true(auth_random(a, sizeof(a)));
	assert_true(auth_random(b, sizeof(b)));
	assert_memory_not_equal(a, b, sizeof(a));
	assert_true(auth_random(a, 0));
}

/* ---- SCRAM client ----------------------------------------------------------- */

/* The RFC's client sends "n=user"; ours sends "n=" (as libpq), so the test puts the RFC's bare. */
static void rfc_client_first(struct scram_client *c)
{
	char m1[128];
	size_t n1;

	strcpy(c->nonce, RFC_NONCE);
	n1 = scram_client_first(c, m1, sizeof(m1));
	assert_int_equal(n1, strlen("n,,n=,r=" RFC_NONCE));
	assert_memory_equal(m1, "n,,n=,r=" RFC_NONCE, n1);
	strcpy(c->client_first_bare, "n=user,r=" RFC_NONCE);
}

static void test_auth_scram_client_rfc7677(void **state)
{
	struct scram_client c;
	char out[512];
	size_t n;
	const char *why = NULL;

	scram_client_init_password(&c, "pencil");
	rfc_client_first(&c);
	assert_int_equal(cli_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out, sizeof(out),
	                           &n, &why),
	                 0);
	assert_int_equal(n, strlen(RFC_CLIENT_FINAL));
	assert_memory_equal(out, RFC_CLIENT_FINAL, n);
	assert_int_equal(cli_verify(&c, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL), &why), 0);
}

/* The same proof from the RFC's keys instead of its password. */
static void test_auth_scram_client_keys_rfc7677(void **state)
{
	struct scram_client c;
	char out[512];
	size_t n;
	const char *why = NULL;

	scram_client_init_keys(&c, rfc_client_key, rfc_server_key, rfc_salt, sizeof(rfc_salt),
	                       4096);
	rfc_client_first(&c);
	assert_int_equal(cli_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out, sizeof(out),
	                           &n, &why),
	                 0);
	assert_memory_equal(out, RFC_CLIENT_FINAL, n);
	assert_int_equal(cli_verify(&c, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL), &why), 0);
}

static void test_auth_scram_client_first_random_nonce(void **state)
{
	struct scram_client c;
	char a[128], b[128];
	size_t na, nb;

	scram_client_init_password(&c, "pencil");
	na = scram_client_first(&c, a, sizeof(a));
	/* "n,,n=,r=" and 18 random bytes in base64, as libpq sends. */
	assert_int_equal(na, 8 + 24);
	assert_memory_equal(a, "n,,n=,r=", 8);
	assert_int_equal(strlen(c.nonce), 24);
	assert_int_equal(strlen(c.client_first_bare), na - 3);
	assert_memory_equal(c.client_first_bare, a + 3, na - 3);
	scram_client_init_password(&c, "pencil");
	nb = scram_client_first(&c, b, sizeof(b));
	assert_int_equal(nb, na);
	assert_memory_not_equal(a, b, na);
	/* Too small a buffer, or a preset nonce that is not printable. */
	scram_client_init_password(&c, "pencil");
	assert_int_equal(scram_client_first(&c, a, 31), 0);
	scram_client_init_password(&c, "pencil");
	strcpy(c.nonce, "a,b");
	assert_int_equal(scram_client_first(&c, a, sizeof(a)), 0);
}

static void test_auth_scram_client_bad_server_first(void **state)
{
	static const char *const bad[] = {
	        "",
	        "r=" RFC_NONCE ",s=" RFC_SALT ",i=4096", /* no server part in the nonce */
	        "r=xOprNGfwEbeRWgbNEkqOabc,s=" RFC_SALT ",i=4096",
	        "r=" RFC_NONCE "ab c,s=" RFC_SALT ",i=4096",
	        "m=ext,r=" RFC_NONCE "abc,s=" RFC_SALT ",i=4096",
	        "r=" RFC_NONCE "abc,s=" RFC_SALT,
	        "r=" RFC_NONCE "abc,i=4096",
	        "r=" RFC_NONCE "abc,s=,i=4096",
	        "r=" RFC_NONCE "abc,s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096",
	        "r=" RFC_NONCE "abc,s=" RFC_SALT ",i=0",
	        "r=" RFC_NONCE "abc,s=" RFC_SALT ",i=-1",
	        "r=" RFC_NONCE "abc,s=" RFC_SALT ",i=40x6",
	        "r=" RFC_NONCE "abc,s=" RFC_SALT ",i=99999999999",
	        "r=" RFC_NONCE "abc,s=" RFC_SALT ",i=4096,x=extension",
	        "s=" RFC_SALT ",r=" RFC_NONCE "abc,i=4096",
	};
	struct scram_client c;
	char out[512];
	size_t n;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *why = NULL;

		scram_client_init_password(&c, "pencil");
		rfc_client_first(&c);
		if (cli_final(&c, bad[i], strlen(bad[i]), out, sizeof(out), &n, &why) != -1)
			fail_msg("scram_client_final accepted case %zu: %s", i, bad[i]);
		assert_non_null(why);
		assert_int_equal(n, 0);
	}
}

static void test_auth_scram_client_verify_errors(void **state)
{
	static const char *const bad[] = {
	        "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", /* one bit off */
	        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4",
	        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,x=y",
	        "v=",
	        "x=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
	        "e=other-error",
	};
	struct scram_client c;
	char out[512];
	size_t n;
	const char *why = NULL;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		scram_client_init_password(&c, "pencil");
		rfc_client_first(&c);
		assert_int_equal(cli_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out,
		                           sizeof(out), &n, &why),
		                 0);
		if (cli_verify(&c, bad[i], strlen(bad[i]), &why) != -1)
			fail_msg("scram_client_verify accepted case %zu: %s", i, bad[i]);
	}
	scram_client_init_password(&c, "pencil");
	rfc_client_first(&c);
	assert_int_equal(cli_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out, sizeof(out),
	                           &n, &why),
	                 0);
	assert_int_equal(cli_verify(&c, "e=invalid-proof", 15, &why), -1);
	assert_string_equal(why, "the server rejected the SCRAM proof (invalid-proof)");
	/* A verify without a final, even with a signature of zeros, is out of order. */
	scram_client_init_password(&c, "pencil");
	assert_int_equal(cli_verify(&c, "v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 46, &why),
	                 -1);
}

/* ---- SCRAM server ----------------------------------------------------------- */

static void test_auth_scram_roundtrip_rfc_verifier(void **state)
{
	struct scram_client c;
	struct scram_server st;
	struct secret s;
	struct run r;

	parse_ok(RFC_VERIFIER, &s);
	scram_client_init_password(&c, "pencil");
	exchange(&c, &st, &s, &r);
	assert_int_equal(r.first, 0);
	assert_int_equal(r.final, 1);
	assert_int_equal(r.verify, 0);
	assert_false(st.mock);
	assert_true(st.have_client_key);
	assert_memory_equal(st.client_key, rfc_client_key, SCRAM_KEY_LEN);
	/* server-first: our nonce is the client's plus 24 characters; the verifier's salt. */
	assert_int_equal(strlen(st.nonce), 24 + 24);
	assert_memory_equal(st.nonce, c.nonce, 24);
	assert_memory_equal(r.m2 + r.n2 - strlen(",s=" RFC_SALT ",i=4096"),
	                    ",s=" RFC_SALT ",i=4096", strlen(",s=" RFC_SALT ",i=4096"));
}

static void test_auth_scram_roundtrip_postgres_verifier(void **state)
{
	struct scram_client c;
	struct scram_server st;
	struct secret s;
	struct run r;

	parse_ok(PG_VERIFIER, &s);
	assert_int_equal(s.kind, SECRET_SCRAM);
	assert_int_equal(s.iterations, 4096);
	assert_int_equal(s.saltlen, 16);
	scram_client_init_password(&c, "pencil");
	exchange(&c, &st, &s, &r);
	assert_int_equal(r.final, 1);
	assert_int_equal(r.verify, 0);
}

static void test_auth_scram_wrong_password(void **state)
{
	struct scram_client c;
	struct scram_server st;
	struct secret s;
	struct run r;

	parse_ok(PG_VERIFIER, &s);
	scram_client_init_password(&c, "pencil!");
	exchange(&c, &st, &s, &r);
	assert_int_equal(r.first, 0);
	assert_int_equal(r.final, 0);
	/* A failed exchange leaves nothing behind, and cannot be tried again. */
	assert_true(all_zero(&st, sizeof(st)));
	assert_int_equal(srv_final(&st, r.m3, r.n3, r.m4, sizeof(r.m4), &r.n4, &r.why), -1);
}

static void test_auth_scram_plain_secret(void **state)
{
	struct scram_client c;
	struct scram_server st;
	struct secret s;
	struct run r;

	parse_ok("pencil", &s);
	scram_client_init_password(&c, "pencil");
	exchange(&c, &st, &s, &r);
	assert_int_equal(r.final, 1);
	assert_int_equal(r.verify, 0);
	/* The plaintext became a verifier with a fresh 16-byte salt and SCRAM_ITERATIONS. */
	assert_int_equal(st.secret.kind, SECRET_SCRAM);
	assert_int_equal(st.secret.iterations, SCRAM_ITERATIONS);
	assert_int_equal(st.secret.saltlen, 16);
	assert_true(all_zero(st.secret.plain, sizeof(st.secret.plain)));

	scram_client_init_password(&c, "Pencil");
	exchange(&c, &st, &s, &r);
	assert_int_equal(r.final, 0);
}

/* Unknown users (NULL, SECRET_NONE) and md5 secrets: a normal-looking exchange that fails. */
/* The salt an unknown user is shown is the same at every try, and differs between users. */
static void test_auth_mock_salt_is_stable(void **state)
{
	static const char first[] = "n,,n=,r=abcdefghijkl";
	struct secret a1 = {0}, a2 = {0}, b = {0}, md5 = {0};
	struct scram_server st;
	char out1[512], out2[512];
	size_t n1, n2;
	const char *why;

	auth_mock_salt("alice", &a1);
	auth_mock_salt("alice", &a2);
	auth_mock_salt("bob", &b);
	assert_int_equal(a1.saltlen, 16);
	assert_memory_equal(a1.salt, a2.salt, 16);
	assert_memory_not_equal(a1.salt, b.salt, 16);
	assert_true(secret_parse(PG_MD5_ALICE, &md5));
	auth_mock_salt("alice", &md5);
	assert_memory_equal(md5.salt, a1.salt, 16);
	/* The server-first messages carry the same s= (nonces differ). */
	assert_int_equal(srv_first(&st, &a1, first, strlen(first), out1, sizeof(out1), &n1, &why), 0);
	assert_true(st.mock);
	assert_int_equal(srv_first(&st, &a2, first, strlen(first), out2, sizeof(out2), &n2, &why), 0);
	out1[n1] = out2[n2] = '\0';
	assert_string_equal(strstr(out1, ",s="), strstr(out2, ",s="));
}

static void test_auth_scram_mock(void **state)
{
	struct scram_client c;
	struct scram_server st;
	struct secret none, md5;
	const struct secret *secrets[] = {NULL, &none, &md5};
	struct run r;

	parse_ok("", &none);
	parse_ok(PG_MD5_ALICE, &md5);
	for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
		scram_client_init_password(&c, "pencil");
		exchange(&c, &st, secrets[i], &r);
		assert_int_equal(r.first, 0);
		assert_memory_equal(r.m2 + r.n2 - 7, ",i=4096", 7);
		assert_int_equal(r.final, 0);
		assert_false(st.have_client_key);
	}
}

/* PgBouncer-style: keys recovered from one login open another server with the same verifier. */
static void test_auth_scram_key_passthrough(void **state)
{
	struct scram_client c;
	struct scram_server front, back;
	struct secret v, other;
	struct run r;

	parse_ok(PG_VERIFIER, &v);
	scram_client_init_password(&c, "pencil");
	exchange(&c, &front, &v, &r);
	assert_int_equal(r.final, 1);
	assert_true(front.have_client_key);

	scram_client_init_keys(&c, front.client_key, front.secret.server_key, front.secret.salt,
	                       front.secret.saltlen, front.secret.iterations);
	exchange(&c, &back, &v, &r);
	assert_int_equal(r.first, 0);
	assert_int_equal(r.final, 1);
	assert_int_equal(r.verify, 0);
	assert_memory_equal(back.client_key, front.client_key, SCRAM_KEY_LEN);

	/* The same password under another salt: the keys cannot open it. */
	parse_ok(RFC_VERIFIER, &other);
	scram_client_init_keys(&c, front.client_key, front.secret.server_key, front.secret.salt,
	                       front.secret.saltlen, front.secret.iterations);
	exchange(&c, &back, &other, &r);
	assert_int_equal(r.first, -1);
	assert_string_equal(r.why, "the server's SCRAM verifier differs from the router's "
	                           "(different salt or iterations)");
	/* Same salt, other iteration count. */
	scram_client_init_keys(&c, rfc_client_key, rfc_server_key, rfc_salt, sizeof(rfc_salt),
	                       4095);
	exchange(&c, &back, &other, &r);
	assert_int_equal(r.first, -1);
}

static void test_auth_scram_server_gs2_header(void **state)
{
	static const char *const bad[] = {
	        "p=tls-server-end-point,,n=,r=abc",
	        "n,a=alice,n=,r=abc",
	        "x,,n=,r=abc",
	        "n,n=,r=abc",
	        "n,,m=ext,n=,r=abc",
	        "",
	};
	struct scram_server st;
	struct secret s;
	char out[512];
	size_t n;
	const char *why = NULL;

	parse_ok(RFC_VERIFIER, &s);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (srv_first(&st, &s, bad[i], strlen(bad[i]), out, sizeof(out), &n, &why) != -1)
			fail_msg("scram_server_first accepted case %zu: %s", i, bad[i]);
		assert_non_null(why);
	}
	assert_int_equal(srv_first(&st, &s, bad[0], strlen(bad[0]), out, sizeof(out), &n, &why),
	                 -1);
	assert_string_equal(why, "SCRAM channel binding is not supported by the router");
	assert_int_equal(srv_first(&st, &s, bad[1], strlen(bad[1]), out, sizeof(out), &n, &why),
	                 -1);
	assert_string_equal(why, "client uses authorization identity, but it is not supported");
}

/* "y,," (client could bind, server did not offer it): c= must then be base64("y,,"). */
static void test_auth_scram_server_gs2_y(void **state)
{
	struct scram_client c;
	struct scram_server st;
	struct secret s;
	char m2[512], m3[512], m4[128], hacked[512], first[128];
	size_t n1, n2, n3, n4;
	const char *why = NULL;

	parse_ok(RFC_VERIFIER, &s);
	scram_client_init_password(&c, "pencil");
	n1 = scram_client_first(&c, first, sizeof(first));
	first[0] = 'y';
	assert_int_equal(srv_first(&st, &s, first, n1, m2, sizeof(m2), &n2, &why), 0);
	assert_int_equal(cli_final(&c, m2, n2, m3, sizeof(m3), &n3, &why), 0);
	/* Our client says c=biws: wrong for a "y,," header. */
	assert_int_equal(srv_final(&st, m3, n3, m4, sizeof(m4), &n4, &why), -1);
	assert_string_equal(why, "unexpected SCRAM channel-binding attribute");

	/* With c=eSws the header matches (the proof then fails: the client signed "biws"). */
	assert_int_equal(srv_first(&st, &s, first, n1, m2, sizeof(m2), &n2, &why), 0);
	assert_int_equal(cli_final(&c, m2, n2, m3, sizeof(m3), &n3, &why), 0);
	memcpy(hacked, m3, n3);
	memcpy(hacked, "c=eSws", 6);
	assert_int_equal(srv_final(&st, hacked, n3, m4, sizeof(m4), &n4, &why), 0);
}

static void test_auth_scram_server_client_first_malformed(void **state)
{
	static const char *const bad[] = {
	        "n,,",
	        "n,,n=",
	        "n,,n=user",
	        "n,,n=user,r=",
	        "n,,r=abc",
	        "n,,n=user,r=ab c",
	        "n,,n=user,r=ab\x7f",
	        "n,,n=user,r=abc,=x",
	        "n,,n=user,r=abc,1=x",
	};
	struct scram_server st;
	struct secret s;
	char out[512], longer[256];
	size_t n;
	const char *why = NULL;

	parse_ok(RFC_VERIFIER, &s);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (srv_first(&st, &s, bad[i], strlen(bad[i]), out, sizeof(out), &n, &why) != -1)
			fail_msg("scram_server_first accepted case %zu: %s", i, bad[i]);
	}
	/* A NUL byte inside the message. */
	assert_int_equal(srv_first(&st, &s, "n,,n=,r=ab\0c", 12, out, sizeof(out), &n, &why), -1);
	/* Extensions after the nonce are ignored, and 103 nonce characters still fit. */
	assert_int_equal(srv_first(&st, &s, "n,,n=x,r=abc,x=1,y=2", 20, out, sizeof(out), &n, &why),
	                 0);
	assert_string_equal(st.client_first_bare, "n=x,r=abc,x=1,y=2");
	/* A client nonce of 103 characters leaves room for ours in st->nonce; 104 does not. */
	memcpy(longer, "n,,n=,r=", 8);
	memset(longer + 8, 'a', 104);
	assert_int_equal(srv_first(&st, &s, longer, 8 + 103, out, sizeof(out), &n, &why), 0);
	assert_int_equal(strlen(st.nonce), 103 + 24);
	assert_int_equal(srv_first(&st, &s, longer, 8 + 104, out, sizeof(out), &n, &why), -1);
	assert_string_equal(why, "SCRAM nonce is too long");
	/* Output buffer too small for the server-first-message. */
	assert_int_equal(srv_first(&st, &s, "n,,n=,r=abc", 11, out, 20, &n, &why), -1);
}

/* A server after its first message, and the valid client-final-message in m3 (NUL-ended). */
static void server_awaiting_final(struct scram_server *st, const struct secret *s, char *m3,
                                  size_t cap)
{
	struct scram_client c;
	char m1[128], m2[512];
	size_t n1, n2, n3;
	const char *why = NULL;

	scram_client_init_password(&c, "pencil");
	n1 = scram_client_first(&c, m1, sizeof(m1));
	assert_int_equal(srv_first(st, s, m1, n1, m2, sizeof(m2), &n2, &why), 0);
	assert_int_equal(cli_final(&c, m2, n2, m3, cap - 1, &n3, &why), 0);
	m3[n3] = '\0';
}

static void test_auth_scram_server_final_malformed(void **state)
{
	struct scram_server st;
	struct secret s;
	char m3[512], m[600], out[128];
	const char *proof, *why = NULL;
	size_t n;

	parse_ok(RFC_VERIFIER, &s);
	for (int i = 0; i < 8; i++) {
		server_awaiting_final(&st, &s, m3, sizeof(m3));
		proof = strstr(m3, ",p=");
		assert_non_null(proof);
		switch (i) {
		case 0: /* channel-binding data for "y,," after "n,," */
			snprintf(m, sizeof(m), "c=eSws%s", m3 + 6);
			break;
		case 1: /* a nonce that is not ours */
			snprintf(m, sizeof(m), "c=biws,r=%sX%s", st.nonce, proof);
			break;
		case 2: /* our nonce cut short */
			snprintf(m, sizeof(m), "c=biws,r=%.*s%s", (int)strlen(st.nonce) - 1,
			         st.nonce, proof);
			break;
		case 3: /* no r= */
			snprintf(m, sizeof(m), "c=biws%s", proof);
			break;
		case 4: /* a proof of 3 bytes */
			snprintf(m, sizeof(m), "%.*s,p=AAAA", (int)(proof - m3), m3);
			break;
		case 5: /* no proof */
			snprintf(m, sizeof(m), "%.*s", (int)(proof - m3), m3);
			break;
		case 6: /* garbage after the proof */
			snprintf(m, sizeof(m), "%s,x=1", m3);
			break;
		default: /* no c= */
			snprintf(m, sizeof(m), "%s", m3 + 7);
			break;
		}
		if (srv_final(&st, m, strlen(m), out, sizeof(out), &n, &why) != -1)
			fail_msg("scram_server_final accepted case %d: %s", i, m);
		assert_true(all_zero(&st, sizeof(st)));
	}
	/* The unmangled message passes, an extension before the proof is skipped but signed. */
	server_awaiting_final(&st, &s, m3, sizeof(m3));
	assert_int_equal(srv_final(&st, m3, strlen(m3), out, sizeof(out), &n, &why), 1);
	server_awaiting_final(&st, &s, m3, sizeof(m3));
	proof = strstr(m3, ",p=");
	snprintf(m, sizeof(m), "%.*s,x=1%s", (int)(proof - m3), m3, proof);
	assert_int_equal(srv_final(&st, m, strlen(m), out, sizeof(out), &n, &why), 0);
	/* Too small a buffer for the server-final-message. */
	server_awaiting_final(&st, &s, m3, sizeof(m3));
	assert_int_equal(srv_final(&st, m3, strlen(m3), out, 45, &n, &why), -1);
	/* A final before any first. */
	memset(&st, 0, sizeof(st));
	assert_int_equal(srv_final(&st, m3, strlen(m3), out, sizeof(out), &n, &why), -1);
	assert_string_equal(why, "SCRAM exchange out of order");
}

/* ---- userlist.txt ----------------------------------------------------------- */

static void test_auth_userlist_parse(void **state)
{
	char path[64], err[256] = "x";
	struct userlist *ul;
	struct secret s;

	write_file(path, "; PgBouncer comment\n"
	                 "# hash comment\n"
	                 "   ; indented comment\n"
	                 "\n"
	                 "   \t \n"
	                 "\"alice\" \"pencil\"\n"
	                 "\"bob \"\"the builder\"\"\" \"pa\"\"ss\" everything here is ignored\n"
	                 "\t\"carol\"\t\"" PG_MD5_ALICE "\"\r\n"
	                 "\"dave\" \"" RFC_VERIFIER "\"\n"
	                 "\"erin\" \"\"\n"
	                 "\"with space\"\"\"   \"x\"");
	ul = userlist_load(path, err, sizeof(err));
	unlink(path);
	if (ul == NULL)
		fail_msg("userlist_load: %s", err);
	assert_string_equal(err, "");
	assert_int_equal(userlist_count(ul), 6);

	assert_true(userlist_get(ul, "alice", &s));
	assert_int_equal(s.kind, SECRET_PLAIN);
	assert_string_equal(s.plain, "pencil");
	assert_true(userlist_get(ul, "bob \"the builder\"", &s));
	assert_string_equal(s.plain, "pa\"ss");
	assert_true(userlist_get(ul, "carol", &s));
	assert_int_equal(s.kind, SECRET_MD5);
	assert_string_equal(s.md5, PG_MD5_ALICE);
	assert_true(userlist_get(ul, "dave", &s));
	assert_int_equal(s.kind, SECRET_SCRAM);
	assert_memory_equal(s.stored_key, rfc_stored_key, SCRAM_KEY_LEN);
	assert_true(userlist_get(ul, "erin", &s));
	assert_int_equal(s.kind, SECRET_NONE);
	assert_true(userlist_get(ul, "with space\"", &s));
	assert_string_equal(s.plain, "x");

	s.kind = SECRET_PLAIN;
	assert_false(userlist_get(ul, "mallory", &s));
	assert_int_equal(s.kind, SECRET_NONE);
	assert_false(userlist_get(ul, "Alice", &s));
	assert_false(userlist_get(ul, "", &s));
	userlist_free(ul);
}

static void test_auth_userlist_duplicate_last_wins(void **state)
{
	char path[64], err[256];
	struct userlist *ul;
	struct secret s;

	write_file(path,
	           "\"a\" \"one\"\n\"b\" \"b\"\n\"a\" \"two\"\n\"c\" \"c\"\n\"a\" \"three\"\n");
	ul = userlist_load(path, err, sizeof(err));
	unlink(path);
	assert_non_null(ul);
	assert_int_equal(userlist_count(ul), 3);
	assert_true(userlist_get(ul, "a", &s));
	assert_string_equal(s.plain, "three");
	assert_true(userlist_get(ul, "b", &s));
	assert_true(userlist_get(ul, "c", &s));
	userlist_free(ul);
}

static void test_auth_userlist_malformed_lines(void **state)
{
	char path[64], err[1024], expect[1024];
	struct userlist *ul;

	write_file(path, "\"alice\" \"pencil\"\n"
	                 "bob \"x\"\n"
	                 "\"carol \"x\"\n"
	                 "\"dave\" \"unterminated\n"
	                 "\"\" \"x\"\n"
	                 "\"eve\" \"SCRAM-SHA-256$4096:bad$x:y\"\n"
	                 "\"frank\"\n"
	                 "\"gina\" pencil\n");
	ul = userlist_load(path, err, sizeof(err));
	assert_null(ul);
	snprintf(expect, sizeof(expect),
	         "%s:2: expected a double-quoted user name\n"
	         "%s:3: expected a double-quoted secret after the user name\n"
	         "%s:4: unterminated quoted string\n"
	         "%s:5: empty user name\n"
	         "%s:6: malformed SCRAM-SHA-256 secret\n"
	         "%s:7: expected a double-quoted secret after the user name\n"
	         "%s:8: expected a double-quoted secret after the user name",
	         path, path, path, path, path, path, path);
	assert_string_equal(err, expect);
	/* A short buffer still gets a terminated prefix. */
	ul = userlist_load(path, err, 10);
	assert_null(ul);
	assert_int_equal(strlen(err), 9);
	unlink(path);
}

static void test_auth_userlist_limits(void **state)
{
	char path[64], err[256], text[512], user63[64], secret511[AUTH_MAX_SECRET];
	struct userlist *ul;
	struct secret s;

	memset(user63, 'u', 63);
	user63[63] = '\0';
	memset(secret511, 's', sizeof(secret511) - 1);
	secret511[sizeof(secret511) - 1] = '\0';

	snprintf(text, sizeof(text), "\"%s\" \"x\"\n", user63);
	write_file(path, text);
	ul = userlist_load(path, err, sizeof(err));
	unlink(path);
	assert_non_null(ul);
	assert_true(userlist_get(ul, user63, &s));
	userlist_free(ul);

	snprintf(text, sizeof(text), "\n\"%su\" \"x\"\n", user63);
	write_file(path, text);
	ul = userlist_load(path, err, sizeof(err));
	assert_null(ul);
	assert_non_null(strstr(err, ":2: user name too long"));
	unlink(path);

	{
		char big[AUTH_MAX_SECRET + 32];

		snprintf(big, sizeof(big), "\"a\" \"%s\"\n", secret511);
		write_file(path, big);
		ul = userlist_load(path, err, sizeof(err));
		unlink(path);
		assert_non_null(ul);
		assert_true(userlist_get(ul, "a", &s));
		assert_string_equal(s.plain, secret511);
		userlist_free(ul);
		snprintf(big, sizeof(big), "\"a\" \"%sx\"\n", secret511);
		write_file(path, big);
		ul = userlist_load(path, err, sizeof(err));
		unlink(path);
		assert_null(ul);
		assert_non_null(strstr(err, ":1: secret too long"));
	}
}

static void test_auth_userlist_empty_and_missing(void **state)
{
	char path[64], err[256], expect[300];
	struct userlist *ul;
	struct secret s;

	write_file(path, "; nothing here\n");
	ul = userlist_load(path, err, sizeof(err));
	assert_non_null(ul);
	assert_int_equal(userlist_count(ul), 0);
	assert_false(userlist_get(ul, "alice", &s));
	userlist_free(ul);
	unlink(path);

	ul = userlist_load(path, err, sizeof(err));
	assert_null(ul);
	snprintf(expect, sizeof(expect), "%s: cannot open: No such file or directory", path);
	assert_string_equal(err, expect);
	assert_int_equal(userlist_count(NULL), 0);
	userlist_free(NULL);
}

/* ---- passfile --------------------------------------------------------------- */

static const char passfile_text[] = "# comment line\n"
                                    "#h0:5432:db:u:commented\n"
                                    "h1:5432:db1:u1:first\n"
                                    "h1:5432:db1:u1:second\n"
                                    "*:5432:*:u2:wild\n"
                                    "h\\:x:6000:d:u:colon host\n"
                                    "h3:6000:d:u:pa\\:ss\\\\word:ignored\n"
                                    "h4:*:*:*:any\r\n"
                                    "h*:1:d:u:star\n"
                                    "h5:05432:d:u:zero-padded\n"
                                    "\n"
                                    "h6:1:d:u:\n";

static void expect_pass(const char *path, const char *host, unsigned port, const char *db,
                        const char *user, const char *want)
{
	char out[64] = "unset";
	bool found = passfile_lookup(path, host, port, db, user, out, sizeof(out));

	if (want == NULL) {
		if (found)
			fail_msg("passfile_lookup(%s,%u,%s,%s) found \"%s\"", host, port, db, user,
			         out);
		return;
	}
	if (!found)
		fail_msg("passfile_lookup(%s,%u,%s,%s) found nothing", host, port, db, user);
	assert_string_equal(out, want);
}

static void test_auth_passfile_lookup(void **state)
{
	char path[64];

	write_file(path, passfile_text);
	expect_pass(path, "h1", 5432, "db1", "u1", "first");
	expect_pass(path, "anyhost", 5432, "anydb", "u2", "wild");
	expect_pass(path, "anyhost", 5433, "anydb", "u2", NULL);
	expect_pass(path, "h:x", 6000, "d", "u", "colon host");
	expect_pass(path, "h3", 6000, "d", "u", "pa:ss\\word");
	expect_pass(path, "h4", 1, "x", "y", "any");
	expect_pass(path, "h6", 1, "d", "u", "");
	/* Comments, partial fields and '*' inside a field do not match. */
	expect_pass(path, "#h0", 5432, "db", "u", NULL);
	expect_pass(path, "h1", 5432, "db", "u1", NULL);
	expect_pass(path, "h1", 5432, "db1", "u", NULL);
	expect_pass(path, "hx", 1, "d", "u", NULL);
	/* The port is compared as the decimal string. */
	expect_pass(path, "h5", 5432, "d", "u", NULL);
	unlink(path);
}

static void test_auth_passfile_limits(void **state)
{
	char path[64], out[8];

	write_file(path, "h:1:d:u:12345678\nh:1:d:u:1234567\n");
	/* The first matching line wins even when it does not fit. */
	memset(out, 'x', sizeof(out));
	assert_false(passfile_lookup(path, "h", 1, "d", "u", out, sizeof(out)));
	assert_string_equal(out, "");
	assert_false(passfile_lookup(path, "h", 1, "d", "u", out, 0));
	unlink(path);
	write_file(path, "h:1:d:u:1234567\n");
	assert_true(passfile_lookup(path, "h", 1, "d", "u", out, sizeof(out)));
	assert_string_equal(out, "1234567");
	unlink(path);
	assert_false(passfile_lookup(path, "h", 1, "d", "u", out, sizeof(out)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_auth_secret_parse_kinds),
	        cmocka_unit_test(test_auth_secret_parse_scram_rfc),
	        cmocka_unit_test(test_auth_secret_parse_scram_malformed),
	        cmocka_unit_test(test_auth_secret_parse_b64_padding),
	        cmocka_unit_test(test_auth_secret_clear),
	        cmocka_unit_test(test_auth_md5_hash),
	        cmocka_unit_test(test_auth_md5_salted),
	        cmocka_unit_test(test_auth_md5_check_md5_secret),
	        cmocka_unit_test(test_auth_md5_check_plain_secret),
	        cmocka_unit_test(test_auth_md5_check_other_kinds),
	        cmocka_unit_test(test_auth_random),
	        cmocka_unit_test(test_auth_scram_client_rfc7677),
	        cmocka_unit_test(test_auth_scram_client_keys_rfc7677),
	        cmocka_unit_test(test_auth_scram_client_first_random_nonce),
	        cmocka_unit_test(test_auth_scram_client_bad_server_first),
	        cmocka_unit_test(test_auth_scram_client_verify_errors),
	        cmocka_unit_test(test_auth_scram_roundtrip_rfc_verifier),
	        cmocka_unit_test(test_auth_scram_roundtrip_postgres_verifier),
	        cmocka_unit_test(test_auth_scram_wrong_password),
	        cmocka_unit_test(test_auth_scram_plain_secret),
	        cmocka_unit_test(test_auth_scram_mock),
	        cmocka_unit_test(test_auth_scram_key_passthrough),
	        cmocka_unit_test(test_auth_scram_server_gs2_header),
	        cmocka_unit_test(test_auth_scram_server_gs2_y),
	        cmocka_unit_test(test_auth_scram_server_client_first_malformed),
	        cmocka_unit_test(test_auth_scram_server_final_malformed),
	        cmocka_unit_test(test_auth_userlist_parse),
	        cmocka_unit_test(test_auth_userlist_duplicate_last_wins),
	        cmocka_unit_test(test_auth_userlist_malformed_lines),
	        cmocka_unit_test(test_auth_userlist_limits),
	        cmocka_unit_test(test_auth_userlist_empty_and_missing),
	        cmocka_unit_test(test_auth_passfile_lookup),
	        cmocka_unit_test(test_auth_passfile_limits),
	        cmocka_unit_test(test_auth_mock_salt_is_stable),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
