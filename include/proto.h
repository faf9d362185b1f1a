/*
 * proto.h - PostgreSQL wire format: bounded readers, framing, builders (pure).
 *
 * Readers never touch memory past their end: every getter checks what
 * remains and returns false when short. Builders write into a caller's
 * buffer with a sticky "failed" flag checked once at the end.
 */
#ifndef TR_PROTO_H
#define TR_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* PostgreSQL's MAX_STARTUP_PACKET_LENGTH (src/include/libpq/pqcomm.h). */
#define PROTO_MAX_STARTUP_LEN 10000u

/* Startup-family request codes (the int32 after the length). */
#define PROTO_CODE_CANCEL  80877102u /* 1234.5678 */
#define PROTO_CODE_SSL	   80877103u /* 1234.5679 */
#define PROTO_CODE_GSSENC  80877104u /* 1234.5680 */
#define PROTO_V3_MAJOR	   3u
#define PROTO_MAX_CANCEL_KEY 256u    /* protocol 3.2 allows secrets up to 256 bytes */

enum proto_status { PROTO_OK, PROTO_NEED_MORE, PROTO_BAD };

/* A bounded reader over [p, end). */
struct rd {
	const uint8_t *p;
	const uint8_t *end;
};

static inline void rd_init(struct rd *r, const void *buf, size_t len)
{
	r->p = buf;
	/* NULL + 0 is undefined in C: an empty reader just has end == p. */
	r->end = len ? r->p + len : r->p;
}

static inline size_t rd_left(const struct rd *r)
{
	return (size_t)(r->end - r->p);
}

/* The big-endian int32 at p (the caller has checked that 4 bytes are there). */
static inline uint32_t proto_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Writes v big-endian at p (4 bytes). */
static inline void proto_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* The 5-byte header of a typed message whose body is bodylen bytes. */
static inline void proto_msg_header(uint8_t hdr[5], uint8_t type, size_t bodylen)
{
	hdr[0] = type;
	proto_put_u32(hdr + 1, (uint32_t)(bodylen + 4));
}

bool rd_u8(struct rd *r, uint8_t *v) MUSTCHECK;
bool rd_u16(struct rd *r, uint16_t *v) MUSTCHECK;
bool rd_u32(struct rd *r, uint32_t *v) MUSTCHECK;
/* Points *v at the next n bytes and skips them. */
bool rd_bytes(struct rd *r, size_t n, const uint8_t **v) MUSTCHECK;
/* A NUL-terminated string; *len excludes the NUL. False if no NUL is left. */
bool rd_cstr(struct rd *r, const char **s, size_t *len) MUSTCHECK;
/* A child reader over the next n bytes, which the parent skips. */
bool rd_sub(struct rd *r, size_t n, struct rd *child) MUSTCHECK;

/*
 * Frames a typed message (1-byte type, int32 length counting itself) at the
 * start of buf. PROTO_OK sets *type and *total (type byte + length). A length
 * below 4 or above max is PROTO_BAD.
 */
enum proto_status proto_frame_msg(const uint8_t *buf, size_t len, uint32_t max, uint8_t *type,
				  size_t *total);

/*
 * Frames a startup-family packet (int32 length counting itself, int32 code).
 * PROTO_OK sets *total (= the length) and *code. Lengths below 8 or above
 * PROTO_MAX_STARTUP_LEN are PROTO_BAD.
 */
enum proto_status proto_frame_startup(const uint8_t *buf, size_t len, size_t *total,
				      uint32_t *code);

/* A message builder with a sticky error flag (PgBouncer's pktbuf idea). */
struct wbuf {
	uint8_t *buf;
	size_t cap;
	size_t len;
	size_t msg_start; /* offset of the current message's length field */
	bool failed;
};

void wb_init(struct wbuf *w, void *buf, size_t cap);
void wb_u8(struct wbuf *w, uint8_t v);
void wb_u32(struct wbuf *w, uint32_t v);
void wb_bytes(struct wbuf *w, const void *p, size_t n);
void wb_cstr(struct wbuf *w, const char *s);
/* Starts a typed message (type 0: an untyped startup-family packet). */
void wb_begin(struct wbuf *w, uint8_t type);
/* Backpatches the length of the message begun last. */
void wb_end(struct wbuf *w);

/*
 * Appends an ErrorResponse (S, V, C, M, optional D and H) to w. severity is
 * "FATAL" or "ERROR"; sqlstate is five characters.
 */
void proto_error_response(struct wbuf *w, const char *severity, const char *sqlstate,
			  const char *message, const char *detail, const char *hint);

/* Fields of an ErrorResponse/NoticeResponse body, pointers into the body. */
struct proto_error_fields {
	const char *severity, *sqlstate, *message, *hint;
};
enum proto_status proto_parse_error(const uint8_t *body, size_t len, struct proto_error_fields *f);

/*
 * Parameter param (1-based) of a Bind body: its format code (0 text, 1
 * binary) and bytes (*v NULL for a NULL value), pointers into body. false
 * when the body is malformed or has no such parameter.
 */
bool proto_bind_param(const uint8_t *body, size_t len, int param, uint16_t *fmt,
		      const uint8_t **v, uint32_t *vlen) MUSTCHECK;

/* True if [p, p+n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool proto_is_utf8(const uint8_t *p, size_t n);

#endif /* TR_PROTO_H */
