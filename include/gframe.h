/*
 * gframe.h - the stickiness guard's framer (pure: bytes in, decisions out).
 *
 * A spliced session with the guard on sends its client's bytes through
 * gframe_client() and its server's bytes through gframe_server(), cut
 * wherever the reads fell. The framer finds message boundaries, asks its
 * owner about each message that may switch the tenant, and emits what may
 * go on through callbacks it was given. It never calls its owner by name, so
 * it can be unit-tested and fuzzed without a socket.
 *
 * Memory: a message is held whole only while it is at most max_hold bytes
 * and the router-wide budget (held, held_cap) has room; a longer Query or
 * Parse is streamed and scanned for the switch patterns as it goes, so the
 * framer needs O(max_hold) bytes per session whatever the client sends.
 */
#ifndef TR_GFRAME_H
#define TR_GFRAME_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* A key of up to 63 bytes (config caps tenant_key there); the scan keeps 63 bytes across reads. */
#define GSCAN_MAX_PAT 64

/*
 * The byte pre-filter: could this text switch the tenant? It fires on the
 * key's last word (however the name is quoted) with either "set" (SET,
 * RESET, set_config) or a comment holding the whole key (sqlcommenter); on
 * set_config anywhere (its key may be an expression); on "set" with a
 * backslash or U& (escapes can spell the key without its bytes).
 * The search is case-insensitive and carries over from one chunk to the
 * next, so it answers the same however the text was cut.
 */
struct gscan {
	char key[GSCAN_MAX_PAT]; /* a copy: sessions outlive config snapshots */
	const char *pat[7]; /* into key, or literals */
	uint8_t len[7];
	bool word_only; /* fire on the key's last word alone (FunctionCall arguments) */
	unsigned seen; /* bit i: pat[i] was found */
	uint8_t tail[GSCAN_MAX_PAT - 1];
	uint8_t taillen;
};

/* key: at most 63 bytes (truncated beyond). */
void gscan_init(struct gscan *sc, const char *key);
/* Forgets what was seen: a new text begins. */
void gscan_reset(struct gscan *sc);
/* The next chunk of the text. Returns the offset in p of the byte with which the pre-filter
 * fired (the same however the text was cut), 0 if it had fired already, SIZE_MAX if not. */
size_t gscan_feed(struct gscan *sc, const uint8_t *p, size_t n);
/* One whole text, from a fresh start: does it make the pre-filter fire? */
bool gscan_text(struct gscan *sc, const char *p, size_t n);

/*
 * A refused message goes to the server as a marker that the server fails in
 * its place; the marker's name is in the server's ErrorResponse, which the
 * framer replaces with the owner's error.
 */
#define GFRAME_MARKER "__tenant_router_refused_"
/* The largest server ErrorResponse body the framer holds to look for a marker. */
#define GFRAME_ERR_MAX (16u << 10)
/* Errors waiting at once (each waits for its marker or its batch's ReadyForQuery). */
#define GFRAME_MAX_ERRORS 256

/* An ErrorResponse the framer delivers in place of the server's answer to a marker. */
struct gframe_error {
	struct gframe_error *next;
	uint64_t sync;	 /* set by the framer: gone at the ReadyForQuery of this batch */
	uint64_t marker; /* set by the framer: the marker's number; 0 for a spoiled statement */
	size_t len;
	uint8_t msg[];
};

/* A new error holding a copy of msg (len bytes), or NULL when out of memory. */
struct gframe_error *gframe_error_new(const uint8_t *msg, size_t len);

enum gframe_verdict { GFRAME_PASS, GFRAME_REFUSE, GFRAME_FAIL };

/*
 * What the framer calls. Every callback runs inside gframe_client() or
 * gframe_server() and must not call back into the same framer.
 */
struct gframe_ops {
	/* Bytes for the server / the client, in order. p may point into the fed buffer, into
	 * the framer's own memory or at static bytes: copy them. false: stop (cannot send). */
	bool (*to_server)(void *ctx, const uint8_t *p, size_t n);
	bool (*to_client)(void *ctx, const uint8_t *p, size_t n);
	/* Must a message of this type be seen whole before it may go? */
	bool (*wants)(void *ctx, uint8_t type);
	/* A whole wanted message, header included. PASS: forward it. REFUSE: drop it, and *err
	 * (owned by the framer from then on) is shown to the client in its place. FAIL: out of
	 * memory; the framer stops. */
	enum gframe_verdict (*inspect)(void *ctx, const uint8_t *msg, size_t len,
	                               struct gframe_error **err);
	/* A wanted message of len bytes that the framer could not hold, and that needs
	 * reading (it may switch the tenant): the error the client gets for it (NULL: out of
	 * memory, the framer stops). */
	struct gframe_error *(*overlong)(void *ctx, uint8_t type, size_t len);
};

/* What the framer does with the body of the current client message. */
enum gframe_body {
	GFRAME_BODY_PASS,   /* forwarded untouched */
	GFRAME_BODY_HOLD,   /* gathered in hold, judged when whole */
	GFRAME_BODY_STREAM, /* forwarded while the pre-filter scans it */
	GFRAME_BODY_POISON, /* the pre-filter fired mid-stream: the rest goes out as zeros */
	GFRAME_BODY_DROP    /* refused or in a refused batch: dropped */
};

struct gframe {
	const struct gframe_ops *ops; /* borrowed */
	void *ctx;                    /* borrowed: passed to every callback */
	size_t max_hold;              /* the largest message held whole (guard_max_statement) */
	atomic_size_t *held;          /* borrowed: bytes held by every framer of the router */
	size_t held_cap;              /* ... and their limit */
	bool blind; /* the client broke the framing: pass all, the server ends it */

	/* Client to server. */
	bool cforwarded; /* part of the current header went out around the framer */
	uint8_t chdr[5];
	uint8_t chlen;
	uint32_t cleft; /* body bytes of the current message still to come */
	enum gframe_body body;
	uint8_t *hold; /* owned: the message being held, header included */
	size_t holdlen, holdcap;
	struct gscan scan;
	uint64_t syncs; /* Query, Sync and FunctionCall sent: each gets one ReadyForQuery */
	uint64_t markers; /* markers sent */

	/* Server to client. */
	uint8_t shdr[5];
	uint8_t shlen, sheld; /* header bytes seen / of those, kept back from earlier reads */
	uint32_t sleft;
	bool ehold;    /* holding the server's ErrorResponse in ebuf */
	uint8_t *ebuf; /* owned: that ErrorResponse, header included */
	size_t elen;
	bool sblind; /* the server broke the framing: pass all */
	bool scut;   /* the current header's first bytes went out unframed */
	uint64_t zs; /* ReadyForQuery received */
	struct gframe_error *errors; /* owned: waiting for their marker's error, oldest first */
};

/* key: tenant_key (copied). max_hold > 5. held may be NULL (no router-wide limit). */
void gframe_init(struct gframe *f, const struct gframe_ops *ops, void *ctx, const char *key,
                 size_t max_hold, atomic_size_t *held, size_t held_cap);
/* Frees what the framer holds and returns its share of the budget. */
void gframe_free(struct gframe *f);

/*
 * Client bytes for the server. Emits through to_server what may go on, and
 * in place of a refused Query a Sync (the server's ReadyForQuery to it gets
 * the error in front). false: a callback failed or memory ran out; the
 * owner ends the session.
 */
bool gframe_client(struct gframe *f, const uint8_t *p, size_t n) MUSTCHECK;
/* Server bytes for the client, with each waiting error put in its place. false as above. */
bool gframe_server(struct gframe *f, const uint8_t *p, size_t n) MUSTCHECK;
/* Client bytes that went to the server around the framer (during login): keeps the framing. */
void gframe_skip(struct gframe *f, const uint8_t *p, size_t n);
/* Errors wait for a ReadyForQuery, or a server header is cut: server bytes need framing. */
bool gframe_busy(const struct gframe *f);

#endif /* TR_GFRAME_H */
