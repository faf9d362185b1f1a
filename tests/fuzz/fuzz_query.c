/*
 * fuzz_query.c - libFuzzer target for the tenant named by a SQL string
 * (src/query.c) and for query_mentions().
 *
 * The input is the text of a Query or Parse message, not NUL-terminated. We
 * classify it with and without tenant_column and check, besides memory
 * errors (ASan/UBSan) and leaks, the invariants the session code relies on:
 * a tenant is 1..255 bytes of UTF-8 with a NUL after it, a parameter number
 * is at least 1, a local list has 1..QUERY_MAX_LOCAL known command tags,
 * fields the kind does not use are cleared, the answer is the same twice
 * and stops at an embedded NUL, and query_mentions() agrees with a naive
 * search.
 *
 * Build: see tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "query.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_query: check failed: %s (%s:%d)\n", #cond, __FILE__, \
			        __LINE__);                                                         \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static const struct query_rule KEY_ONLY = {.key = "app.tenant_id", .column = NULL};
static const struct query_rule WITH_COL = {.key = "app.tenant_id", .column = "tenant_id"};

static const unsigned ALL_SOURCES = QSRC_SET | QSRC_SET_CONFIG | QSRC_COMMENT | QSRC_COLUMN;

static bool known_tag(const struct query_local *l)
{
	static const char *const tags[] = {"SET",    "RESET",    "BEGIN",
	                                   "COMMIT", "ROLLBACK", "START TRANSACTION"};

	if (memchr(l->tag, 0, sizeof(l->tag)) == NULL)
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(tags); i++) {
		if (strcmp(l->tag, tags[i]) == 0)
			return true;
	}
	return false;
}

static void check_result(const struct query_tenant *q)
{
	CHECK(q->kind >= QUERY_OTHER && q->kind <= QUERY_INVALID);
	if (q->kind == QUERY_TENANT) {
		CHECK(q->tenant_len >= 1 && q->tenant_len <= STARTUP_MAX_TENANT_LEN);
		CHECK(q->tenant[q->tenant_len] == '\0');
		CHECK(strlen(q->tenant) == q->tenant_len);
		CHECK(proto_is_utf8((const uint8_t *)q->tenant, q->tenant_len));
		CHECK(q->param >= 0);
	} else {
		CHECK(q->tenant_len == 0 && q->tenant[0] == '\0');
	}
	if (q->kind == QUERY_PARAM)
		CHECK(q->param >= 1);
	else if (q->kind != QUERY_TENANT)
		CHECK(q->param == 0);
	if (q->kind == QUERY_TENANT || q->kind == QUERY_PARAM)
		CHECK(q->sources != 0 && (q->sources & ~ALL_SOURCES) == 0);
	else
		CHECK(q->sources == 0);
	if (q->kind == QUERY_LOCAL) {
		CHECK(q->nlocal >= 1 && q->nlocal <= QUERY_MAX_LOCAL);
		for (size_t i = 0; i < q->nlocal; i++) {
			const struct query_local *l = &q->local[i];

			CHECK(known_tag(l));
			CHECK(l->txn == 0 || l->txn == 'T' || l->txn == 'I');
			CHECK((l->txn == 'T') == (strcmp(l->tag, "BEGIN") == 0 ||
			                          strcmp(l->tag, "START TRANSACTION") == 0));
			CHECK(!l->is_key || strcmp(l->tag, "SET") == 0 ||
			      strcmp(l->tag, "RESET") == 0);
		}
	} else {
		CHECK(q->nlocal == 0);
	}
}

static bool same_result(const struct query_tenant *a, const struct query_tenant *b)
{
	if (a->kind != b->kind || a->sources != b->sources || a->tenant_len != b->tenant_len ||
	    a->param != b->param || a->nlocal != b->nlocal)
		return false;
	if (memcmp(a->tenant, b->tenant, a->tenant_len) != 0)
		return false;
	for (size_t i = 0; i < a->nlocal; i++) {
		if (strcmp(a->local[i].tag, b->local[i].tag) != 0 ||
		    a->local[i].txn != b->local[i].txn || a->local[i].is_key != b->local[i].is_key)
			return false;
	}
	return true;
}

/* A heap copy of exactly n bytes, so ASan sees any read past the end. */
static void classify(const uint8_t *data, size_t n, const struct query_rule *rule,
                     struct query_tenant *q)
{
	char *copy = malloc(n ? n : 1);

	CHECK(copy != NULL);
	if (n)
		memcpy(copy, data, n);
	memset(q, 0xA5, sizeof(*q));
	query_find_tenant(copy, n, rule, q);
	free(copy);
	check_result(q);
}

static bool naive_mentions(const uint8_t *h, size_t n, const char *k, size_t kn)
{
	for (size_t i = 0; i + kn <= n; i++) {
		size_t j = 0;

		while (j < kn) {
			uint8_t a = h[i + j], b = (uint8_t)k[j];

			a = a >= 'A' && a <= 'Z' ? (uint8_t)(a + 32) : a;
			b = b >= 'A' && b <= 'Z' ? (uint8_t)(b + 32) : b;
			if (a != b)
				break;
			j++;
		}
		if (j == kn)
			return true;
	}
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct query_tenant q1, q2, q3;
	const uint8_t *nul = size ? memchr(data, 0, size) : NULL;
	char needle[8];
	size_t nlen;

	classify(data, size, &KEY_ONLY, &q1);
	classify(data, size, &KEY_ONLY, &q2);
	CHECK(same_result(&q1, &q2));
	/* PostgreSQL reads the string up to its NUL; so must we. */
	if (nul) {
		classify(data, (size_t)(nul - data), &KEY_ONLY, &q2);
		CHECK(same_result(&q1, &q2));
	}
	/* tenant_column only looks at SELECT/INSERT/UPDATE/DELETE: never local. */
	classify(data, size, &WITH_COL, &q3);
	if (q1.kind == QUERY_LOCAL || q1.kind == QUERY_INVALID)
		CHECK(same_result(&q1, &q3));

	CHECK(query_mentions((const char *)data, size, KEY_ONLY.key, strlen(KEY_ONLY.key)) ==
	      naive_mentions(data, size, KEY_ONLY.key, strlen(KEY_ONLY.key)));
	/* A needle taken from the input itself finds itself, whatever its case. */
	nlen = size < sizeof(needle) ? size : sizeof(needle);
	if (nlen > 0) {
		memcpy(needle, data + size - nlen, nlen);
		for (size_t i = 0; i < nlen; i++) {
			if (needle[i] >= 'a' && needle[i] <= 'z')
				needle[i] = (char)(needle[i] - 32);
		}
		CHECK(query_mentions((const char *)data, size, needle, nlen));
		needle[0] ^= 0x40;
		CHECK(query_mentions((const char *)data, size, needle, nlen) ==
		      naive_mentions(data, size, needle, nlen));
	}
	return 0;
}
