/*
 * session.c - the bottom of the client module: a session's log lines, its
 * refusals, and a Bind parameter reader the local login and the guard
 * share. It calls the state machine only through s->up, so every file of
 * the module can use it without calling back into client.c by name.
 */
#include "session.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void session_log(struct session *s, enum log_level level, const char *fmt, ...)
{
	char prefix[512];
	va_list ap;

	if (!log_enabled(level))
		return;
	snprintf(prefix, sizeof(prefix), "c=%llu peer=%s tenant=%s cluster=%s",
	         (unsigned long long)s->id, s->peer, s->tenant ? s->tenant : "-",
	         s->cluster[0] ? s->cluster : "-");
	va_start(ap, fmt);
	log_vmsg(level, prefix, fmt, ap);
	va_end(ap);
}

void session_refuse(struct session *s, const char *sqlstate, const char *hint, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	s->up->refuse(s, sqlstate, hint, msg);
}

struct conn *session_server_conn(struct session *s)
{
	return s->sv ? &s->sv->c : NULL;
}

/*
 * The text of parameter $param of a Bind body. Text format as is; binary
 * integers (int2/int4/int8, by the Parse's type) as decimal.
 */
bool session_bind_param(const uint8_t *body, size_t len, const struct xstmt *st, char *out,
                        size_t cap, size_t *outlen)
{
	uint16_t fmt;
	const uint8_t *v;
	uint32_t vlen;
	int param = st->q.param;

	if (!proto_bind_param(body, len, param, &fmt, &v, &vlen) || v == NULL)
		return false; /* malformed, or NULL: no tenant */
	if (fmt == 0) {
		if (vlen == 0 || vlen >= cap || memchr(v, 0, vlen))
			return false;
		memcpy(out, v, vlen);
		out[vlen] = '\0';
		*outlen = vlen;
		return true;
	}
	/* Binary: only integers whose type the Parse named. */
	if (param <= st->ntypes && param <= (int)ARRAY_SIZE(st->types)) {
		uint32_t oid = st->types[param - 1];
		long long x;
		int n;

		if (oid == 21 && vlen == 2)
			x = (int16_t)((uint16_t)v[0] << 8 | v[1]);
		else if (oid == 23 && vlen == 4)
			x = (int32_t)proto_get_u32(v);
		else if (oid == 20 && vlen == 8)
			x = (long long)((uint64_t)proto_get_u32(v) << 32 | proto_get_u32(v + 4));
		else
			return false;
		n = snprintf(out, cap, "%lld", x);
		*outlen = (size_t)n;
		return n > 0 && (size_t)n < cap;
	}
	return false;
}
