/*
 * proto.c - PostgreSQL wire format: bounded readers, framing, builders.
 *
 * Pure: no I/O, no allocation. Every read checks what remains before it
 * touches memory (compare, never subtract), lengths from the network are
 * distrusted (they count themselves, must be >= 4, have a per-type maximum),
 * and builders carry a sticky failure flag so callers check once at the end.
 * This module does not know about sessions; it never closes anything.
 */
#include "proto.h"

#include <string.h>

bool rd_u8(struct rd *r, uint8_t *v)
{
	if (rd_left(r) < 1)
		return false;
	*v = r->p[0];
	r->p += 1;
	return true;
}

bool rd_u16(struct rd *r, uint16_t *v)
{
	if (rd_left(r) < 2)
		return false;
	*v = (uint16_t)((uint16_t)r->p[0] << 8 | r->p[1]);
	r->p += 2;
	return true;
}

bool rd_u32(struct rd *r, uint32_t *v)
{
	if (rd_left(r) < 4)
		return false;
	*v = proto_get_u32(r->p);
	r->p += 4;
	return true;
}

bool rd_bytes(struct rd *r, size_t n, const uint8_t **v)
{
	if (n > rd_left(r))
		return false;
	*v = r->p;
	r->p += n;
	return true;
}

bool rd_cstr(struct rd *r, const char **s, size_t *len)
{
	const uint8_t *nul;

	if (rd_left(r) == 0)
		return false;
	nul = memchr(r->p, 0, rd_left(r));

	if (nul == NULL)
		return false;
	*s = (const char *)r->p;
	*len = (size_t)(nul - r->p);
	r->p = nul + 1;
	return true;
}

bool rd_sub(struct rd *r, size_t n, struct rd *child)
{
	if (n > rd_left(r))
		return false;
	child->p = r->p;
	child->end = r->p + n;
	r->p += n;
	return true;
}

enum proto_status proto_frame_msg(const uint8_t *buf, size_t len, uint32_t max, uint8_t *type,
				  size_t *total)
{
	uint32_t mlen;

	if (len < 5)
		return PROTO_NEED_MORE;
	mlen = proto_get_u32(buf + 1);
	/* The length counts itself, and it is a signed int32 on the wire. */
	if (mlen < 4 || mlen > max || mlen > INT32_MAX)
		return PROTO_BAD;
	*type = buf[0];
	*total = (size_t)mlen + 1;
	return PROTO_OK;
}

enum proto_status proto_frame_startup(const uint8_t *buf, size_t len, size_t *total,
				      uint32_t *code)
{
	uint32_t plen;

	/*
	 * The length arrives first: judge it as soon as we have it, so an
	 * oversized packet is refused before we wait for its body.
	 */
	if (len < 4)
		return PROTO_NEED_MORE;
	plen = proto_get_u32(buf);
	if (plen < 8 || plen > PROTO_MAX_STARTUP_LEN)
		return PROTO_BAD;
	if (len < 8)
		return PROTO_NEED_MORE;
	*code = proto_get_u32(buf + 4);
	*total = plen;
	return PROTO_OK;
}

void wb_init(struct wbuf *w, void *buf, size_t cap)
{
	w->buf = buf;
	w->cap = cap;
	w->len = 0;
	w->msg_start = 0;
	w->failed = false;
}

void wb_bytes(struct wbuf *w, const void *p, size_t n)
{
	if (w->failed)
		return;
	if (n > w->cap - w->len) {
		w->failed = true;
		return;
	}
	if (n)
		memcpy(w->buf + w->len, p, n);
	w->len += n;
}

void wb_u8(struct wbuf *w, uint8_t v)
{
	wb_bytes(w, &v, 1);
}

void wb_u32(struct wbuf *w, uint32_t v)
{
	uint8_t b[4];

	proto_put_u32(b, v);
	wb_bytes(w, b, 4);
}

void wb_cstr(struct wbuf *w, const char *s)
{
	wb_bytes(w, s, strlen(s) + 1);
}

void wb_begin(struct wbuf *w, uint8_t type)
{
	if (type)
		wb_u8(w, type);
	w->msg_start = w->len;
	wb_u32(w, 0);
}

void wb_end(struct wbuf *w)
{
	if (w->failed)
		return;
	proto_put_u32(w->buf + w->msg_start, (uint32_t)(w->len - w->msg_start));
}

void proto_error_response(struct wbuf *w, const char *severity, const char *sqlstate,
			  const char *message, const char *detail, const char *hint)
{
	wb_begin(w, 'E');
	wb_u8(w, 'S');
	wb_cstr(w, severity);
	/* 'V' is the non-localised severity (protocol 3.0, PostgreSQL 9.6+). */
	wb_u8(w, 'V');
	wb_cstr(w, severity);
	wb_u8(w, 'C');
	wb_cstr(w, sqlstate);
	wb_u8(w, 'M');
	wb_cstr(w, message);
	if (detail) {
		wb_u8(w, 'D');
		wb_cstr(w, detail);
	}
	if (hint) {
		wb_u8(w, 'H');
		wb_cstr(w, hint);
	}
	wb_u8(w, 0);
	wb_end(w);
}

enum proto_status proto_parse_error(const uint8_t *body, size_t len, struct proto_error_fields *f)
{
	struct rd r;

	memset(f, 0, sizeof(*f));
	rd_init(&r, body, len);
	for (;;) {
		uint8_t code;
		const char *s;
		size_t n;

		if (!rd_u8(&r, &code))
			return PROTO_BAD;
		if (code == 0)
			return rd_left(&r) == 0 ? PROTO_OK : PROTO_BAD;
		if (!rd_cstr(&r, &s, &n))
			return PROTO_BAD;
		switch (code) {
		case 'V':
			f->severity = s;
			break;
		case 'S':
			if (!f->severity)
				f->severity = s;
			break;
		case 'C':
			f->sqlstate = s;
			break;
		case 'M':
			f->message = s;
			break;
		case 'H':
			f->hint = s;
			break;
		default:
			break;
		}
	}
}

bool proto_is_utf8(const uint8_t *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t c = p[i];
		uint32_t cp;
		size_t k;

		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xE0) == 0xC0) {
			k = 1;
			cp = c & 0x1F;
		} else if ((c & 0xF0) == 0xE0) {
			k = 2;
			cp = c & 0x0F;
		} else if ((c & 0xF8) == 0xF0) {
			k = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (k > n - i - 1)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((p[i + j] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + j] & 0x3F);
		}
		/* Overlong forms, UTF-16 surrogates and values past U+10FFFF. */
		if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
		    (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
			return false;
		i += k + 1;
	}
	return true;
}

bool proto_bind_param(const uint8_t *body, size_t len, int param, uint16_t *fmt,
		      const uint8_t **v, uint32_t *vlen)
{
	struct rd r;
	const char *portal, *stmt;
	size_t pl, sl;
	uint16_t nfmt, nparams;

	rd_init(&r, body, len);
	*fmt = 0;
	if (!rd_cstr(&r, &portal, &pl) || !rd_cstr(&r, &stmt, &sl) || !rd_u16(&r, &nfmt))
		return false;
	for (uint16_t i = 0; i < nfmt; i++) {
		uint16_t f;

		if (!rd_u16(&r, &f))
			return false;
		/* One format code applies to every parameter; else one each. */
		if (nfmt == 1 || i + 1 == param)
			*fmt = f;
	}
	if (!rd_u16(&r, &nparams) || param < 1 || param > nparams)
		return false;
	for (int i = 1; i <= param; i++) {
		if (!rd_u32(&r, vlen))
			return false;
		*v = NULL;
		if (*vlen == 0xffffffffu)
			continue;
		if (!rd_bytes(&r, *vlen, v))
			return false;
	}
	return true;
}
