/*
 * fuzz_startup.c - libFuzzer target for the startup packet (src/startup.c).
 *
 * The input is what a client sends first. We frame it, parse it, look for
 * the tenant with every source enabled, rebuild the packet we would forward
 * and parse that again. Besides memory errors (ASan/UBSan) it checks the
 * invariants the session code relies on: framing and parsing agree, an OK
 * parse yields well-formed parameters, a tenant is 1..255 bytes, and the
 * forwarded packet is one PostgreSQL accepts and carries the same tenant.
 *
 * Build: see tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "startup.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "fuzz_startup: check failed: %s (%s:%d)\n", #cond, \
			        __FILE__, __LINE__);                                       \
			abort();                                                           \
		}                                                                          \
	} while (0)

static const char KEY[] = "app.tenant_id";

/* Every parameter lies inside the packet, is NUL-terminated, keys unique. */
static void check_params(const struct startup *st, const uint8_t *buf, size_t len)
{
	CHECK(st->nparams <= STARTUP_MAX_PARAMS);
	for (size_t i = 0; i < st->nparams; i++) {
		const struct startup_param *p = &st->params[i];
		const uint8_t *k = (const uint8_t *)p->key, *v = (const uint8_t *)p->val;

		CHECK(k >= buf && k + p->klen < buf + len && k[p->klen] == 0);
		CHECK(v >= buf && v + p->vlen < buf + len && v[p->vlen] == 0);
		CHECK(p->klen > 0);
		CHECK(memchr(k, 0, p->klen) == NULL && memchr(v, 0, p->vlen) == NULL);
		CHECK(proto_is_utf8(k, p->klen) && proto_is_utf8(v, p->vlen));
		CHECK(startup_get(st, p->key) == p);
	}
}

static void check_forward(const struct startup *st, const struct tenant_rule *rule,
                          const struct tenant *t)
{
	/* 10 KB, but the packet must fit what PostgreSQL accepts (see report). */
	static uint8_t out[10240];
	struct startup st2;
	struct tenant t2;
	struct tenant_rule server_view = {.key = KEY,
	                                  .sources = TENANT_SRC_OPTIONS | TENANT_SRC_PARAMETER,
	                                  .separator = rule->separator};
	const char *why = NULL;
	size_t n = startup_build_forward(st, rule, t, out, PROTO_MAX_STARTUP_LEN);
	uint8_t *copy;
	enum proto_status ps;

	if (n == 0)
		return;
	CHECK(n >= 9 && n <= PROTO_MAX_STARTUP_LEN);
	copy = malloc(n);
	CHECK(copy != NULL);
	memcpy(copy, out, n);
	ps = startup_parse(copy, n, &st2, &why);
	/*
	 * Appending the tenant to a packet that already has the parser's
	 * maximum number of parameters gives one more than we accept.
	 * PostgreSQL has no such limit, so that packet is still fine to send.
	 */
	if (ps == PROTO_BAD && st->nparams == STARTUP_MAX_PARAMS &&
	    (t->source == TENANT_SRC_USER || t->source == TENANT_SRC_DATABASE)) {
		free(copy);
		return;
	}
	if (ps != PROTO_OK)
		fprintf(stderr, "fuzz_startup: forward packet refused: %s\n", why ? why : "?");
	CHECK(ps == PROTO_OK);
	CHECK(st2.kind == STARTUP_V3 && st2.code == st->code);
	check_params(&st2, copy, n);
	/*
	 * What the server will read as the tenant (options, then parameters) is
	 * exactly what we routed by.
	 */
	CHECK(startup_find_tenant(&st2, &server_view, &t2) == TENANT_FOUND);
	CHECK(t2.len == t->len && memcmp(t2.name, t->name, t->len) == 0);
	free(copy);
}

static void check_tenant(const struct startup *st, char sep)
{
	struct tenant_rule rule = {.key = KEY,
	                           .sources = TENANT_SRC_OPTIONS | TENANT_SRC_PARAMETER |
	                                      TENANT_SRC_USER | TENANT_SRC_DATABASE,
	                           .separator = sep};
	struct tenant t;
	enum tenant_result r = startup_find_tenant(st, &rule, &t);

	CHECK(r == TENANT_FOUND || r == TENANT_NONE || r == TENANT_CONFLICT ||
	      r == TENANT_TOO_LONG);
	if (r != TENANT_FOUND)
		return;
	CHECK(t.len >= 1 && t.len <= STARTUP_MAX_TENANT_LEN);
	CHECK(strlen(t.name) == t.len);
	CHECK(t.source == TENANT_SRC_OPTIONS || t.source == TENANT_SRC_PARAMETER ||
	      t.source == TENANT_SRC_USER || t.source == TENANT_SRC_DATABASE);
	check_forward(st, &rule, &t);
}

static bool count_cb(void *arg, const char *name, size_t nlen, const char *val, size_t vlen)
{
	size_t *n = arg;

	/* Touch every byte so ASan sees any out-of-range pointer. */
	for (size_t i = 0; i < nlen; i++)
		*n += (unsigned char)name[i];
	for (size_t i = 0; i < vlen; i++)
		*n += (unsigned char)val[i];
	(void)startup_guc_name_eq(name, nlen, KEY);
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct startup st;
	const char *why = NULL;
	size_t total = 0;
	uint32_t code = 0;
	enum proto_status fs = proto_frame_startup(data, size, &total, &code);
	enum proto_status ps = startup_parse(data, size, &st, &why);

	/* Framing and parsing agree on the header. */
	if (fs == PROTO_BAD)
		CHECK(ps != PROTO_OK);
	if (ps == PROTO_OK)
		CHECK(fs == PROTO_OK && total == size && code == st.code);
	if (ps == PROTO_BAD)
		CHECK(why != NULL && why[0] != '\0');
	if (fs == PROTO_OK)
		CHECK(total >= 8 && total <= PROTO_MAX_STARTUP_LEN);

	/* What a session does: parse exactly the framed packet. */
	if (fs == PROTO_OK && total <= size) {
		uint8_t *pkt = malloc(total);

		CHECK(pkt != NULL);
		memcpy(pkt, data, total);
		why = NULL;
		ps = startup_parse(pkt, total, &st, &why);
		CHECK(ps != PROTO_NEED_MORE);
		if (ps == PROTO_OK && st.kind == STARTUP_CANCEL)
			CHECK(st.cancel_key_len >= 4 && st.cancel_key_len <= PROTO_MAX_CANCEL_KEY &&
			      st.cancel_key + st.cancel_key_len == pkt + total);
		if (ps == PROTO_OK && (st.kind == STARTUP_SSL || st.kind == STARTUP_GSSENC))
			CHECK(total == 8);
		if (ps == PROTO_OK && st.kind == STARTUP_V3) {
			CHECK(st.major == 3);
			check_params(&st, pkt, total);
			check_tenant(&st, '+');
			/* A separator byte taken from the input reaches other paths. */
			check_tenant(&st, (char)pkt[total - 2]);
		}
		free(pkt);
	}

	/* The options splitter on raw bytes (no NUL guarantee needed). */
	if (size > 0) {
		char *opts = malloc(size);
		size_t sum = 0;

		CHECK(opts != NULL);
		memcpy(opts, data, size);
		startup_each_option(opts, size, count_cb, &sum);
		free(opts);
	}
	return 0;
}
