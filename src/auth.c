/*
 * auth.c - stored secrets, userlist.txt, passfiles, md5 and SCRAM-SHA-256.
 *
 * Pure: OpenSSL's libcrypto does every digest, HMAC, PBKDF2, random byte and
 * base64 conversion; nothing here hand-rolls a hash. The only I/O is reading
 * the userlist and passfile the caller names.
 *
 * The SCRAM server mirrors PostgreSQL's src/backend/libpq/auth-scram.c (the
 * user name in "n=" is ignored, an unknown user gets a mock exchange that
 * fails only at the end) and the client mirrors libpq's fe-auth-scram.c.
 * There is no channel binding and no SASLprep: passwords are used as bytes.
 *
 * Invariants: a SCRAM message is copied into a bounded NUL-terminated buffer
 * before it is parsed, and one holding a NUL byte is refused; proofs,
 * signatures and md5 responses are compared in constant time; keys on the
 * stack are wiped with OPENSSL_cleanse before a function returns, and a
 * failed SCRAM exchange wipes its whole state.
 */
#include "auth.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define SCRAM_PREFIX        "SCRAM-SHA-256$"
#define SCRAM_RAW_NONCE_LEN 18 /* PostgreSQL's SCRAM_RAW_NONCE_LEN */
#define SCRAM_SALT_LEN      16 /* PostgreSQL's SCRAM_DEFAULT_SALT_LEN */
#define SCRAM_MAX_MSG       1024
#define B64_LEN(n)          (((n) + 2) / 3 * 4)
#define MD5_HASH_LEN        35 /* "md5" + 32 hex */

/* ---- encodings ---------------------------------------------------------- */

static bool is_b64_char(char ch)
{
	return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
	       ch == '+' || ch == '/';
}

/* Base64 of n bytes into out (cap counts the NUL); the length, or 0 if cap is short. */
static size_t b64_encode(const uint8_t *in, size_t n, char *out, size_t cap)
{
	if (n > INT_MAX / 2 || B64_LEN(n) >= cap)
		return 0;
	return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

/*
 * Strict base64 (padded, no whitespace) into out. EVP_DecodeBlock() skips
 * whitespace and counts '=' padding as decoded zero bytes, so the text is
 * checked first and the padding taken off the length afterwards.
 */
static bool b64_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *outlen)
{
	uint8_t tmp[SCRAM_MAX_SALT + 3];
	size_t pad = 0;
	int got;

	if (n % 4 != 0 || n / 4 * 3 > sizeof(tmp))
		return false;
	if (n > 0 && in[n - 1] == '=')
		pad = in[n - 2] == '=' ? 2 : 1;
	for (size_t i = 0; i < n - pad; i++) {
		if (!is_b64_char(in[i]))
			return false;
	}
	if (n / 4 * 3 - pad > cap)
		return false;
	*outlen = 0;
	if (n == 0)
		return true;
	got = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n);
	if (got < 0 || (size_t)got != n / 4 * 3)
		return false;
	*outlen = (size_t)got - pad;
	memcpy(out, tmp, *outlen);
	OPENSSL_cleanse(tmp, sizeof(tmp));
	return true;
}

static void to_hex(const uint8_t *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 0xF];
	}
	out[2 * n] = '\0';
}

/* ---- primitives ----------------------------------------------------------- */

static bool sha256(const void *data, size_t n, uint8_t out[SCRAM_KEY_LEN])
{
	unsigned int len = 0;

	return EVP_Digest(data, n, out, &len, EVP_sha256(), NULL) == 1 && len == SCRAM_KEY_LEN;
}

static bool hmac_sha256(const uint8_t *key, size_t klen, const void *data, size_t n,
                        uint8_t out[SCRAM_KEY_LEN])
{
	unsigned int len = 0;

	if (klen > INT_MAX)
		return false;
	return HMAC(EVP_sha256(), key, (int)klen, data, n, out, &len) != NULL &&
	       len == SCRAM_KEY_LEN;
}

/* "md5" + hex(md5(a || b)); "" if libcrypto refuses MD5 (FIPS), which matches nothing. */
static void md5_hex(const void *a, size_t alen, const void *b, size_t blen, char out[36])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t md[16];
	unsigned int len = 0;

	out[0] = '\0';
	if (ctx != NULL && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 &&
	    EVP_DigestUpdate(ctx, a, alen) == 1 && EVP_DigestUpdate(ctx, b, blen) == 1 &&
	    EVP_DigestFinal_ex(ctx, md, &len) == 1 && len == sizeof(md)) {
		memcpy(out, "md5", 3);
		to_hex(md, sizeof(md), out + 3);
	}
	EVP_MD_CTX_free(ctx);
}

bool auth_random(void *buf, size_t n)
{
	if (n == 0)
		return true;
	return n <= INT_MAX && RAND_bytes(buf, (int)n) == 1;
}

/* SaltedPassword, then ClientKey and ServerKey from it (RFC 5802 section 3). */
static bool salted_keys(const char *password, const uint8_t *salt, size_t saltlen,
                        uint32_t iterations, uint8_t client_key[SCRAM_KEY_LEN],
                        uint8_t server_key[SCRAM_KEY_LEN])
{
	uint8_t salted[SCRAM_KEY_LEN];
	size_t pwlen = strlen(password);
	bool ok;

	ok = pwlen <= INT_MAX && saltlen <= INT_MAX && iterations >= 1 && iterations <= INT_MAX &&
	     PKCS5_PBKDF2_HMAC(password, (int)pwlen, salt, (int)saltlen, (int)iterations,
	                       EVP_sha256(), SCRAM_KEY_LEN, salted) == 1 &&
	     hmac_sha256(salted, sizeof(salted), "Client Key", 10, client_key) &&
	     hmac_sha256(salted, sizeof(salted), "Server Key", 10, server_key);
	OPENSSL_cleanse(salted, sizeof(salted));
	return ok;
}

/* A verifier for a plaintext password, with a fresh salt (PostgreSQL's scram_build_secret()). */
static bool verifier_from_password(const char *password, struct secret *out)
{
	uint8_t client_key[SCRAM_KEY_LEN];
	bool ok;

	secret_clear(out);
	out->iterations = SCRAM_ITERATIONS;
	out->saltlen = SCRAM_SALT_LEN;
	ok = auth_random(out->salt, out->saltlen) &&
	     salted_keys(password, out->salt, out->saltlen, out->iterations, client_key,
	                 out->server_key) &&
	     sha256(client_key, sizeof(client_key), out->stored_key);
	OPENSSL_cleanse(client_key, sizeof(client_key));
	if (!ok) {
		secret_clear(out);
		return false;
	}
	out->kind = SECRET_SCRAM;
	return true;
}

/* ---- stored secrets ------------------------------------------------------- */

/* PostgreSQL's get_password_type(): "md5" and exactly 32 lower-case hex digits. */
static bool is_md5_secret(const char *t, size_t n)
{
	if (n != MD5_HASH_LEN || memcmp(t, "md5", 3) != 0)
		return false;
	for (size_t i = 3; i < n; i++) {
		if (!((t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'f')))
			return false;
	}
	return true;
}

/* "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>" (PostgreSQL's parse_scram_secret()). */
static bool parse_scram(const char *t, struct secret *out)
{
	const char *p = t + strlen(SCRAM_PREFIX), *colon, *dollar, *colon2;
	unsigned long iter;
	size_t klen;
	char *end;

	colon = strchr(p, ':');
	/* strtoul() would also take spaces and a sign. */
	if (colon == NULL || *p < '0' || *p > '9')
		return false;
	errno = 0;
	iter = strtoul(p, &end, 10);
	if (end != colon || errno != 0 || iter == 0 || iter > INT_MAX)
		return false;
	dollar = strchr(colon + 1, '$');
	if (dollar == NULL ||
	    !b64_decode(colon + 1, (size_t)(dollar - colon - 1), out->salt, sizeof(out->salt),
	                &out->saltlen) ||
	    out->saltlen == 0)
		return false;
	colon2 = strchr(dollar + 1, ':');
	if (colon2 == NULL ||
	    !b64_decode(dollar + 1, (size_t)(colon2 - dollar - 1), out->stored_key,
	                sizeof(out->stored_key), &klen) ||
	    klen != SCRAM_KEY_LEN)
		return false;
	if (!b64_decode(colon2 + 1, strlen(colon2 + 1), out->server_key, sizeof(out->server_key),
	                &klen) ||
	    klen != SCRAM_KEY_LEN)
		return false;
	out->iterations = (uint32_t)iter;
	return true;
}

bool secret_parse(const char *text, struct secret *out)
{
	size_t n = strnlen(text, AUTH_MAX_SECRET);

	secret_clear(out);
	if (n >= AUTH_MAX_SECRET)
		return false;
	if (n == 0)
		return true;
	if (strncmp(text, SCRAM_PREFIX, strlen(SCRAM_PREFIX)) == 0) {
		if (!parse_scram(text, out)) {
			secret_clear(out);
			return false;
		}
		out->kind = SECRET_SCRAM;
	} else if (is_md5_secret(text, n)) {
		memcpy(out->md5, text, n + 1);
		out->kind = SECRET_MD5;
	} else {
		memcpy(out->plain, text, n + 1);
		out->kind = SECRET_PLAIN;
	}
	return true;
}

void secret_clear(struct secret *s)
{
	OPENSSL_cleanse(s, sizeof(*s));
	s->kind = SECRET_NONE;
}

/* ---- userlist.txt --------------------------------------------------------- */

struct ul_entry {
	char user[AUTH_MAX_USER];
	char *secret; /* owned: the secret as the file spells it */
	size_t line;
};

struct userlist {
	struct ul_entry *v; /* owned: sorted by user, one entry per user */
	size_t n;
};

/* Problems joined by newlines into the caller's buffer, truncated to fit. */
struct errbuf {
	char *p;
	size_t cap, len;
	unsigned count;
};

static void err_add(struct errbuf *e, const char *fmt, ...) PRINTF_LIKE(2, 3);

static void err_add(struct errbuf *e, const char *fmt, ...)
{
	va_list ap;
	int n;

	e->count++;
	if (e->p == NULL || e->len + 2 >= e->cap)
		return;
	if (e->len > 0)
		e->p[e->len++] = '\n';
	va_start(ap, fmt);
	n = vsnprintf(e->p + e->len, e->cap - e->len, fmt, ap);
	va_end(ap);
	if (n < 0)
		e->p[e->len] = '\0';
	else
		e->len = (size_t)n < e->cap - e->len ? e->len + (size_t)n : e->cap - 1;
}

/*
 * The double-quoted string at p (p[0] == '"') into buf, where "" stands for
 * one '"', as PgBouncer reads userlist.txt. Returns the position after the
 * closing quote, or NULL with *why.
 */
static const char *read_quoted(const char *p, char *buf, size_t cap, const char *too_long,
                               const char **why)
{
	size_t n = 0;

	for (p++;; p++) {
		if (*p == '\0') {
			*why = "unterminated quoted string";
			return NULL;
		}
		if (*p == '"') {
			if (p[1] != '"')
				break;
			p++;
		}
		if (n + 1 >= cap) {
			*why = too_long;
			return NULL;
		}
		buf[n++] = *p;
	}
	buf[n] = '\0';
	return p + 1;
}

static const char *skip_blanks(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/*
 * One line: NULL when it is blank, a comment or a valid entry (user and text
 * filled, *entry set), else the reason it is malformed.
 */
static const char *parse_userlist_line(const char *line, char *user, char *text, bool *entry)
{
	const char *p = skip_blanks(line), *why = NULL;
	struct secret sec;
	bool ok;

	*entry = false;
	if (*p == '\0' || *p == ';' || *p == '#')
		return NULL;
	if (*p != '"')
		return "expected a double-quoted user name";
	p = read_quoted(p, user, AUTH_MAX_USER, "user name too long", &why);
	if (p == NULL)
		return why;
	p = skip_blanks(p);
	if (*p != '"')
		return "expected a double-quoted secret after the user name";
	/* Whatever follows the secret is ignored, as PgBouncer does. */
	if (read_quoted(p, text, AUTH_MAX_SECRET, "secret too long", &why) == NULL)
		return why;
	if (user[0] == '\0')
		return "empty user name";
	ok = secret_parse(text, &sec);
	secret_clear(&sec);
	if (!ok)
		return "malformed SCRAM-SHA-256 secret";
	*entry = true;
	return NULL;
}

static void entry_free(struct ul_entry *e)
{
	OPENSSL_cleanse(e->secret, strlen(e->secret));
	free(e->secret);
	e->secret = NULL;
}

static int entry_cmp(const void *a, const void *b)
{
	const struct ul_entry *x = a, *y = b;
	int c = strcmp(x->user, y->user);

	if (c != 0)
		return c;
	return x->line < y->line ? -1 : x->line > y->line;
}

static int entry_key_cmp(const void *key, const void *elem)
{
	const struct ul_entry *e = elem;

	return strcmp(key, e->user);
}

static bool userlist_add(struct userlist *ul, size_t *cap, const char *user, const char *text,
                         size_t line)
{
	struct ul_entry *e;

	if (ul->n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 16;
		struct ul_entry *v = reallocarray(ul->v, ncap, sizeof(*v));

		if (v == NULL)
			return false;
		ul->v = v;
		*cap = ncap;
	}
	e = &ul->v[ul->n];
	e->secret = strdup(text);
	if (e->secret == NULL)
		return false;
	memcpy(e->user, user, strlen(user) + 1);
	e->line = line;
	ul->n++;
	return true;
}

/* Sorts by user and keeps each user's last line, as PgBouncer lets a later line win. */
static void userlist_index(struct userlist *ul)
{
	size_t w = 0;

	if (ul->n == 0)
		return;
	qsort(ul->v, ul->n, sizeof(ul->v[0]), entry_cmp);
	for (size_t i = 0; i < ul->n; i++) {
		if (i + 1 < ul->n && strcmp(ul->v[i].user, ul->v[i + 1].user) == 0) {
			entry_free(&ul->v[i]);
			continue;
		}
		ul->v[w++] = ul->v[i];
	}
	ul->n = w;
}

struct userlist *userlist_load(const char *path, char *err, size_t errlen)
{
	struct errbuf eb = {.p = err, .cap = errlen};
	struct userlist *ul = NULL;
	char user[AUTH_MAX_USER], text[AUTH_MAX_SECRET];
	char *line = NULL;
	size_t linecap = 0, lineno = 0, cap = 0;
	ssize_t got;
	FILE *f;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	f = fopen(path, "re");
	if (f == NULL) {
		err_add(&eb, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	ul = calloc(1, sizeof(*ul));
	if (ul == NULL) {
		err_add(&eb, "%s: out of memory", path);
		goto fail;
	}
	while ((got = getline(&line, &linecap, f)) != -1) {
		size_t len = (size_t)got;
		const char *why;
		bool entry;

		lineno++;
		if (memchr(line, '\0', len) != NULL) {
			err_add(&eb, "%s:%zu: line contains a NUL byte", path, lineno);
			continue;
		}
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		why = parse_userlist_line(line, user, text, &entry);
		if (why != NULL) {
			err_add(&eb, "%s:%zu: %s", path, lineno, why);
			continue;
		}
		if (entry && !userlist_add(ul, &cap, user, text, lineno)) {
			err_add(&eb, "%s: out of memory", path);
			goto fail;
		}
	}
	if (ferror(f))
		err_add(&eb, "%s: read error: %s", path, strerror(errno));
	if (eb.count > 0)
		goto fail;
	userlist_index(ul);
	goto out;
fail:
	userlist_free(ul);
	ul = NULL;
out:
	if (line != NULL)
		OPENSSL_cleanse(line, linecap);
	free(line);
	OPENSSL_cleanse(text, sizeof(text));
	fclose(f);
	return ul;
}

bool userlist_get(const struct userlist *ul, const char *user, struct secret *out)
{
	const struct ul_entry *e;

	secret_clear(out);
	if (ul == NULL || ul->n == 0)
		return false;
	e = bsearch(user, ul->v, ul->n, sizeof(ul->v[0]), entry_key_cmp);
	/* The text was checked when the file was loaded. */
	return e != NULL && secret_parse(e->secret, out);
}

size_t userlist_count(const struct userlist *ul)
{
	return ul != NULL ? ul->n : 0;
}

void userlist_free(struct userlist *ul)
{
	if (ul == NULL)
		return;
	for (size_t i = 0; i < ul->n; i++)
		entry_free(&ul->v[i]);
	free(ul->v);
	free(ul);
}

/* ---- libpq passfile ------------------------------------------------------- */

/*
 * libpq's pwdfMatchesString(): does the field at p match tok? A field that is
 * exactly '*' matches anything; '\' makes the next character literal. The
 * start of the next field, or NULL.
 */
static const char *passfile_field(const char *p, const char *tok)
{
	bool escaped = false;

	if (p[0] == '*' && p[1] == ':')
		return p + 2;
	while (*p != '\0') {
		if (*p == '\\' && !escaped) {
			p++;
			escaped = true;
		}
		if (*p == ':' && *tok == '\0' && !escaped)
			return p + 1;
		escaped = false;
		if (*tok == '\0' || *p != *tok)
			return NULL;
		p++;
		tok++;
	}
	return NULL;
}

/* The password field, unescaped up to the next unescaped ':'; false if it does not fit. */
static bool passfile_password(const char *p, char *out, size_t cap)
{
	size_t n = 0;

	for (; *p != ':' && *p != '\0'; p++) {
		if (*p == '\\' && p[1] != '\0')
			p++;
		if (n + 1 >= cap) {
			OPENSSL_cleanse(out, cap);
			return false;
		}
		out[n++] = *p;
	}
	out[n] = '\0';
	return true;
}

bool passfile_lookup(const char *path, const char *host, unsigned port, const char *db,
                     const char *user, char *out, size_t cap)
{
	char portstr[16], *line = NULL;
	size_t linecap = 0;
	ssize_t got;
	bool found = false;
	FILE *f;

	if (cap == 0)
		return false;
	out[0] = '\0';
	snprintf(portstr, sizeof(portstr), "%u", port);
	f = fopen(path, "re");
	if (f == NULL)
		return false;
	while ((got = getline(&line, &linecap, f)) != -1) {
		size_t len = (size_t)got;
		const char *p = line;

		/* libpq: only a '#' in the very first column starts a comment. */
		if (line[0] == '#')
			continue;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0)
			continue;
		if ((p = passfile_field(p, host)) == NULL ||
		    (p = passfile_field(p, portstr)) == NULL ||
		    (p = passfile_field(p, db)) == NULL || (p = passfile_field(p, user)) == NULL)
			continue;
		/* The first matching line wins, even when its password does not fit. */
		found = passfile_password(p, out, cap);
		break;
	}
	if (line != NULL)
		OPENSSL_cleanse(line, linecap);
	free(line);
	fclose(f);
	return found;
}

/* ---- md5 ------------------------------------------------------------------- */

void auth_md5_hash(const char *password, const char *user, char out[36])
{
	md5_hex(password, strlen(password), user, strlen(user), out);
}

void auth_md5_salted(const char *md5hash, const uint8_t salt[4], char out[36])
{
	if (strnlen(md5hash, MD5_HASH_LEN + 1) != MD5_HASH_LEN || memcmp(md5hash, "md5", 3) != 0) {
		out[0] = '\0';
		return;
	}
	md5_hex(md5hash + 3, MD5_HASH_LEN - 3, salt, 4, out);
}

bool auth_md5_check(const struct secret *s, const char *user, const uint8_t salt[4],
                    const char *response)
{
	char hash[36], expect[36];
	bool ok;

	switch (s->kind) {
	case SECRET_MD5:
		memcpy(hash, s->md5, sizeof(hash));
		break;
	case SECRET_PLAIN:
		auth_md5_hash(s->plain, user, hash);
		break;
	default:
		return false;
	}
	auth_md5_salted(hash, salt, expect);
	ok = expect[0] != '\0' && strnlen(response, MD5_HASH_LEN + 1) == MD5_HASH_LEN &&
	     CRYPTO_memcmp(expect, response, MD5_HASH_LEN) == 0;
	OPENSSL_cleanse(hash, sizeof(hash));
	OPENSSL_cleanse(expect, sizeof(expect));
	return ok;
}

/* ---- SCRAM message parsing ---------------------------------------------- */

static int fail(const char **why, const char *reason)
{
	*why = reason;
	return -1;
}

/* A message as a NUL-terminated string; false if it is empty, too long or holds a NUL. */
static bool copy_msg(const uint8_t *data, size_t len, char *buf, size_t cap)
{
	if (len == 0 || len >= cap || memchr(data, '\0', len) != NULL)
		return false;
	memcpy(buf, data, len);
	buf[len] = '\0';
	return true;
}

/* RFC 5802 "printable": 0x21-0x7E except ','. PostgreSQL's is_scram_printable(). */
static bool is_printable(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] < 0x21 || s[i] > 0x7E || s[i] == ',')
			return false;
	}
	return true;
}

/* One "x=value" attribute; the value runs to the next ',' or the end. */
struct attr {
	char name;
	const char *val;
	size_t len;
};

/* Reads the attribute at *pp and steps past it and its ','. */
static bool next_attr(const char **pp, struct attr *a)
{
	const char *p = *pp, *comma;

	if (!((p[0] >= 'a' && p[0] <= 'z') || (p[0] >= 'A' && p[0] <= 'Z')) || p[1] != '=')
		return false;
	a->name = p[0];
	a->val = p + 2;
	comma = strchr(a->val, ',');
	a->len = comma != NULL ? (size_t)(comma - a->val) : strlen(a->val);
	*pp = comma != NULL ? comma + 1 : a->val + a->len;
	return true;
}

static bool expect_attr(const char **pp, char name, struct attr *a)
{
	return next_attr(pp, a) && a->name == name;
}

/* A decimal count of 1..INT_MAX (PBKDF2 takes an int), digits only. */
static bool parse_iterations(const char *s, size_t n, uint32_t *out)
{
	uint64_t v = 0;

	if (n == 0 || n > 10)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v == 0 || v > INT_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool emit(const char *msg, size_t n, char *out, size_t cap, size_t *outlen)
{
	if (n > cap)
		return false;
	memcpy(out, msg, n);
	*outlen = n;
	return true;
}

/* ---- SCRAM, the router as server ------------------------------------------ */

/* Ends a server exchange: nothing of it, the copied secret included, stays behind. */
static int server_refuse(struct scram_server *st, const char **why, const char *reason)
{
	OPENSSL_cleanse(st, sizeof(*st));
	return fail(why, reason);
}

/* The secret to check proofs against, or a mock one (st->mock) with a random salt. */
static bool server_secret(struct scram_server *st, const struct secret *sec)
{
	if (sec != NULL && sec->kind == SECRET_SCRAM) {
		st->secret = *sec;
		return true;
	}
	if (sec != NULL && sec->kind == SECRET_PLAIN)
		return verifier_from_password(sec->plain, &st->secret);
	st->mock = true;
	st->secret.iterations = SCRAM_ITERATIONS;
	st->secret.saltlen = SCRAM_SALT_LEN;
	/* A salt from auth_mock_salt(): the same for a user at every try. */
	if (sec != NULL && sec->saltlen == SCRAM_SALT_LEN) {
		memcpy(st->secret.salt, sec->salt, SCRAM_SALT_LEN);
		return true;
	}
	return auth_random(st->secret.salt, st->secret.saltlen);
}

static uint8_t mock_key[32];
static pthread_once_t mock_once = PTHREAD_ONCE_INIT;
static bool mock_ok;

static void mock_init(void)
{
	mock_ok = auth_random(mock_key, sizeof(mock_key));
}

void auth_mock_salt(const char *user, struct secret *sec)
{
	uint8_t buf[sizeof(mock_key) + AUTH_MAX_USER], h[SCRAM_KEY_LEN];
	size_t n = strnlen(user, AUTH_MAX_USER);

	pthread_once(&mock_once, mock_init);
	if (!mock_ok || sec->kind == SECRET_SCRAM || sec->kind == SECRET_PLAIN)
		return;
	memcpy(buf, mock_key, sizeof(mock_key));
	memcpy(buf + sizeof(mock_key), user, n);
	if (!sha256(buf, sizeof(mock_key) + n, h))
		return;
	memcpy(sec->salt, h, SCRAM_SALT_LEN);
	sec->saltlen = SCRAM_SALT_LEN;
}

int scram_server_first(struct scram_server *st, const struct secret *sec, const uint8_t *data,
                       size_t len, char *out, size_t cap, size_t *outlen, const char **why)
{
	char msg[SCRAM_MAX_MSG], salt64[B64_LEN(SCRAM_MAX_SALT) + 1];
	uint8_t raw[SCRAM_RAW_NONCE_LEN];
	const char *p = msg, *bare;
	struct attr a;
	size_t cn;
	int n;

	OPENSSL_cleanse(st, sizeof(*st));
	*outlen = 0;
	if (!copy_msg(data, len, msg, sizeof(msg)))
		return fail(why, "malformed SCRAM message (empty, too long or with a NUL byte)");
	/* gs2-header: "n" or "y" (we offer no channel binding), then an empty authzid. */
	switch (p[0]) {
	case 'n':
	case 'y':
		st->gs2_flag = p[0];
		break;
	case 'p':
		return fail(why, "SCRAM channel binding is not supported by the router");
	default:
		return fail(why, "malformed SCRAM message (unexpected channel-binding flag)");
	}
	if (p[1] != ',')
		return fail(why, "malformed SCRAM message (comma expected after the flag)");
	p += 2;
	if (p[0] == 'a')
		return fail(why, "client uses authorization identity, but it is not supported");
	if (p[0] != ',')
		return fail(why, "malformed SCRAM message (unexpected attribute in gs2 header)");
	bare = ++p;
	if (strlen(bare) >= sizeof(st->client_first_bare))
		return fail(why, "malformed SCRAM message (client-first-message too long)");
	if (p[0] == 'm')
		return fail(why, "client requires an unsupported SCRAM extension");
	/* The user name is ignored: the startup packet's user is the one that counts. */
	if (!expect_attr(&p, 'n', &a))
		return fail(why, "malformed SCRAM message (expected attribute \"n\")");
	if (!expect_attr(&p, 'r', &a) || a.len == 0)
		return fail(why, "malformed SCRAM message (expected attribute \"r\")");
	if (!is_printable(a.val, a.len))
		return fail(why, "non-printable characters in SCRAM nonce");
	cn = a.len;
	if (cn + B64_LEN(SCRAM_RAW_NONCE_LEN) >= sizeof(st->nonce))
		return fail(why, "SCRAM nonce is too long");
	memcpy(st->nonce, a.val, cn);
	/* Optional extensions follow; like PostgreSQL we support none and ignore them. */
	while (*p != '\0') {
		if (!next_attr(&p, &a))
			return fail(why, "malformed SCRAM message (bad attribute)");
	}
	memcpy(st->client_first_bare, bare, strlen(bare) + 1);

	if (!server_secret(st, sec) || !auth_random(raw, sizeof(raw)) ||
	    b64_encode(raw, sizeof(raw), st->nonce + cn, sizeof(st->nonce) - cn) == 0 ||
	    b64_encode(st->secret.salt, st->secret.saltlen, salt64, sizeof(salt64)) == 0)
		return server_refuse(st, why, "internal error in SCRAM (libcrypto)");
	n = snprintf(st->server_first, sizeof(st->server_first), "r=%s,s=%s,i=%u", st->nonce,
	             salt64, (unsigned)st->secret.iterations);
	if (n < 0 || (size_t)n >= sizeof(st->server_first) ||
	    !emit(st->server_first, (size_t)n, out, cap, outlen))
		return server_refuse(st, why, "internal error in SCRAM (output buffer too small)");
	return 0;
}

/*
 * Checks the proof (RFC 5802 section 3): ClientKey = proof XOR
 * HMAC(StoredKey, AuthMessage) must hash to StoredKey. Fills the ServerSignature.
 */
static bool server_check_proof(struct scram_server *st, const uint8_t proof[SCRAM_KEY_LEN],
                               const char *am, size_t amlen, uint8_t signature[SCRAM_KEY_LEN])
{
	uint8_t sig[SCRAM_KEY_LEN], key[SCRAM_KEY_LEN], stored[SCRAM_KEY_LEN];
	bool ok;

	ok = hmac_sha256(st->secret.stored_key, SCRAM_KEY_LEN, am, amlen, sig);
	for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
		key[i] = proof[i] ^ sig[i];
	ok = ok && sha256(key, sizeof(key), stored) &&
	     CRYPTO_memcmp(stored, st->secret.stored_key, SCRAM_KEY_LEN) == 0 &&
	     hmac_sha256(st->secret.server_key, SCRAM_KEY_LEN, am, amlen, signature);
	if (ok)
		memcpy(st->client_key, key, sizeof(key));
	OPENSSL_cleanse(sig, sizeof(sig));
	OPENSSL_cleanse(key, sizeof(key));
	return ok;
}

int scram_server_final(struct scram_server *st, const uint8_t *data, size_t len, char *out,
                       size_t cap, size_t *outlen, const char **why)
{
	char msg[SCRAM_MAX_MSG];
	char am[sizeof(st->client_first_bare) + sizeof(st->server_first) + SCRAM_MAX_MSG];
	char final[3 + B64_LEN(SCRAM_KEY_LEN) + 1];
	uint8_t proof[SCRAM_KEY_LEN], signature[SCRAM_KEY_LEN];
	const char *p = msg, *proof_at;
	struct attr a;
	size_t plen;
	int n;

	*outlen = 0;
	st->have_client_key = false;
	if (st->server_first[0] == '\0')
		return server_refuse(st, why, "SCRAM exchange out of order");
	if (!copy_msg(data, len, msg, sizeof(msg)))
		return server_refuse(st, why, "malformed SCRAM message (too long or NUL byte)");
	/* Without channel binding c= is base64("n,,") = "biws" or base64("y,,") = "eSws". */
	if (!expect_attr(&p, 'c', &a))
		return server_refuse(st, why, "malformed SCRAM message (expected attribute \"c\")");
	if (a.len != 4 || memcmp(a.val, st->gs2_flag == 'y' ? "eSws" : "biws", 4) != 0)
		return server_refuse(st, why, "unexpected SCRAM channel-binding attribute");
	if (!expect_attr(&p, 'r', &a))
		return server_refuse(st, why, "malformed SCRAM message (expected attribute \"r\")");
	if (a.len != strlen(st->nonce) || memcmp(a.val, st->nonce, a.len) != 0)
		return server_refuse(st, why, "SCRAM nonce mismatch");
	/* Extensions before the proof are skipped, as PostgreSQL does; p= comes last. */
	do {
		proof_at = p;
		if (!next_attr(&p, &a))
			return server_refuse(st, why, "malformed SCRAM message (no proof)");
	} while (a.name != 'p');
	if (*p != '\0')
		return server_refuse(st, why, "malformed SCRAM message (garbage after the proof)");
	if (!b64_decode(a.val, a.len, proof, sizeof(proof), &plen) || plen != SCRAM_KEY_LEN)
		return server_refuse(st, why, "malformed SCRAM message (malformed proof)");
	/* AuthMessage: client-first-bare, server-first, client-final without ",p=...". */
	n = snprintf(am, sizeof(am), "%s,%s,%.*s", st->client_first_bare, st->server_first,
	             (int)(proof_at - msg - 1), msg);
	if (n < 0 || (size_t)n >= sizeof(am))
		return server_refuse(st, why, "internal error in SCRAM (AuthMessage too long)");
	if (st->mock || !server_check_proof(st, proof, am, (size_t)n, signature)) {
		OPENSSL_cleanse(st, sizeof(*st));
		return 0;
	}
	memcpy(final, "v=", 2);
	if (b64_encode(signature, sizeof(signature), final + 2, sizeof(final) - 2) == 0 ||
	    !emit(final, strlen(final), out, cap, outlen))
		return server_refuse(st, why, "internal error in SCRAM (output buffer too small)");
	st->have_client_key = true;
	return 1;
}

/* ---- SCRAM, the router as client ------------------------------------------ */

void scram_client_init_password(struct scram_client *c, const char *password)
{
	size_t n = strnlen(password, sizeof(c->password) - 1);

	OPENSSL_cleanse(c, sizeof(*c));
	memcpy(c->password, password, n);
	c->password[n] = '\0';
}

void scram_client_init_keys(struct scram_client *c, const uint8_t client_key[SCRAM_KEY_LEN],
                            const uint8_t server_key[SCRAM_KEY_LEN], const uint8_t *salt,
                            size_t saltlen, uint32_t iterations)
{
	TR_ASSERT(saltlen <= sizeof(c->salt));
	OPENSSL_cleanse(c, sizeof(*c));
	c->have_keys = true;
	memcpy(c->client_key, client_key, SCRAM_KEY_LEN);
	memcpy(c->server_key, server_key, SCRAM_KEY_LEN);
	memcpy(c->salt, salt, saltlen);
	c->saltlen = saltlen;
	c->iterations = iterations;
}

size_t scram_client_first(struct scram_client *c, char *out, size_t cap)
{
	uint8_t raw[SCRAM_RAW_NONCE_LEN];
	size_t nl;
	int n;

	c->final_sent = false;
	if (c->nonce[0] == '\0' && (!auth_random(raw, sizeof(raw)) ||
	                            b64_encode(raw, sizeof(raw), c->nonce, sizeof(c->nonce)) == 0))
		return 0;
	nl = strnlen(c->nonce, sizeof(c->nonce));
	if (nl == sizeof(c->nonce) || !is_printable(c->nonce, nl))
		return 0;
	/* An empty user name, as libpq sends: the server takes it from the startup packet. */
	n = snprintf(c->client_first_bare, sizeof(c->client_first_bare), "n=,r=%s", c->nonce);
	if (n < 0 || (size_t)n >= sizeof(c->client_first_bare) || (size_t)n + 3 > cap)
		return 0;
	memcpy(out, "n,,", 3);
	memcpy(out + 3, c->client_first_bare, (size_t)n);
	return (size_t)n + 3;
}

/* The server-first-message's nonce, salt and iterations, checked as libpq does. */
static int client_read_first(const struct scram_client *c, const char *msg, struct attr *nonce,
                             uint8_t *salt, size_t *saltlen, uint32_t *iterations, const char **why)
{
	const char *p = msg;
	size_t nl = strlen(c->nonce);
	struct attr a;

	if (p[0] == 'm')
		return fail(why, "the server requires an unsupported SCRAM extension");
	if (!expect_attr(&p, 'r', nonce))
		return fail(why, "malformed SCRAM message (expected attribute \"r\")");
	if (nonce->len <= nl || memcmp(nonce->val, c->nonce, nl) != 0 ||
	    !is_printable(nonce->val, nonce->len))
		return fail(why, "SCRAM nonce mismatch");
	if (!expect_attr(&p, 's', &a) || !b64_decode(a.val, a.len, salt, SCRAM_MAX_SALT, saltlen) ||
	    *saltlen == 0)
		return fail(why, "malformed SCRAM message (bad salt)");
	if (!expect_attr(&p, 'i', &a) || !parse_iterations(a.val, a.len, iterations))
		return fail(why, "malformed SCRAM message (bad iteration count)");
	if (*p != '\0')
		return fail(why, "malformed SCRAM message (garbage after server-first-message)");
	return 0;
}

int scram_client_final(struct scram_client *c, const uint8_t *data, size_t len, char *out,
                       size_t cap, size_t *outlen, const char **why)
{
	char msg[SCRAM_MAX_MSG], final[SCRAM_MAX_MSG + 64];
	char am[sizeof(c->client_first_bare) + sizeof(msg) + sizeof(final)];
	uint8_t salt[SCRAM_MAX_SALT], ck[SCRAM_KEY_LEN], sk[SCRAM_KEY_LEN];
	uint8_t stored[SCRAM_KEY_LEN], proof[SCRAM_KEY_LEN];
	struct attr nonce;
	size_t saltlen, flen;
	uint32_t iterations;
	int n, rc = -1;

	*outlen = 0;
	c->final_sent = false;
	if (c->client_first_bare[0] == '\0')
		return fail(why, "SCRAM exchange out of order");
	if (!copy_msg(data, len, msg, sizeof(msg)))
		return fail(why, "malformed SCRAM message (too long or NUL byte)");
	if (client_read_first(c, msg, &nonce, salt, &saltlen, &iterations, why) != 0)
		return -1;
	if (c->have_keys) {
		/* Keys from a client's proof open only a verifier with the same salt. */
		if (saltlen != c->saltlen || memcmp(salt, c->salt, saltlen) != 0 ||
		    iterations != c->iterations)
			return fail(why, "the server's SCRAM verifier differs from the router's "
			                 "(different salt or iterations)");
		memcpy(ck, c->client_key, sizeof(ck));
		memcpy(sk, c->server_key, sizeof(sk));
	} else if (!salted_keys(c->password, salt, saltlen, iterations, ck, sk)) {
		*why = "internal error in SCRAM (libcrypto)";
		goto out;
	}
	/* client-final-message-without-proof; "biws" is base64("n,,"). */
	n = snprintf(final, sizeof(final), "c=biws,r=%.*s", (int)nonce.len, nonce.val);
	if (n < 0 || (size_t)n + 3 + B64_LEN(SCRAM_KEY_LEN) >= sizeof(final)) {
		*why = "internal error in SCRAM (message too long)";
		goto out;
	}
	flen = (size_t)n;
	n = snprintf(am, sizeof(am), "%s,%s,%s", c->client_first_bare, msg, final);
	if (n < 0 || (size_t)n >= sizeof(am) || !sha256(ck, sizeof(ck), stored) ||
	    !hmac_sha256(stored, sizeof(stored), am, (size_t)n, proof) ||
	    !hmac_sha256(sk, sizeof(sk), am, (size_t)n, c->server_signature)) {
		*why = "internal error in SCRAM (libcrypto)";
		goto out;
	}
	/* ClientProof = ClientKey XOR ClientSignature. */
	for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
		proof[i] ^= ck[i];
	memcpy(final + flen, ",p=", 3);
	flen += 3;
	flen += b64_encode(proof, sizeof(proof), final + flen, sizeof(final) - flen);
	if (!emit(final, flen, out, cap, outlen)) {
		*why = "internal error in SCRAM (output buffer too small)";
		goto out;
	}
	c->final_sent = true;
	rc = 0;
out:
	OPENSSL_cleanse(ck, sizeof(ck));
	OPENSSL_cleanse(sk, sizeof(sk));
	OPENSSL_cleanse(stored, sizeof(stored));
	OPENSSL_cleanse(proof, sizeof(proof));
	return rc;
}

int scram_client_verify(struct scram_client *c, const uint8_t *data, size_t len, const char **why)
{
	char msg[SCRAM_MAX_MSG];
	uint8_t sig[SCRAM_KEY_LEN];
	const char *p = msg;
	struct attr a;
	size_t n;

	if (!c->final_sent)
		return fail(why, "SCRAM exchange out of order");
	c->final_sent = false;
	if (!copy_msg(data, len, msg, sizeof(msg)) || !next_attr(&p, &a))
		return fail(why, "malformed SCRAM server-final-message");
	if (a.name == 'e') {
		if (a.len == 13 && memcmp(a.val, "invalid-proof", 13) == 0)
			return fail(why, "the server rejected the SCRAM proof (invalid-proof)");
		return fail(why, "the server reported a SCRAM error");
	}
	if (a.name != 'v' || !b64_decode(a.val, a.len, sig, sizeof(sig), &n) ||
	    n != SCRAM_KEY_LEN || *p != '\0')
		return fail(why, "malformed SCRAM server-final-message");
	if (CRYPTO_memcmp(sig, c->server_signature, SCRAM_KEY_LEN) != 0)
		return fail(why, "the server's SCRAM signature is wrong");
	return 0;
}
