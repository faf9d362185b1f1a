/*
 * conn.h - one side of a session: a TCP connection, perhaps TLS, and its
 * reading and writing. The connection I/O layer.
 *
 * A conn knows nothing above it. It calls its owner only through the
 * struct conn_ops it was given, the way PgBouncer's sbuf.c calls its
 * owner's protocol handler: plaintext comes up through on_data (decrypted
 * already on a TLS leg), the end of input through on_end, and the owner
 * decides what either means. All bytes to the peer go through conn_send*,
 * which encrypt on a TLS leg, so the owner does not care which legs are
 * encrypted.
 *
 * Back-pressure: a conn may name a peer, the conn whose bytes it is sent.
 * When its write queue passes SPLICE_HIGH_WATER, conn_apply_pressure stops
 * reading the peer; when a write completes below SPLICE_LOW_WATER with the
 * peer paused, on_writable asks the owner whether to read it again.
 *
 * Memory: a conn lives in its owner's memory (conn_init), with its libuv
 * handle embedded; the owner frees that memory only after on_closed.
 * Callbacks may close the owner: after any call that can call back, the
 * owner checks its own state before touching the conn again.
 */
#ifndef TR_CONN_H
#define TR_CONN_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common.h"
#include "splice.h"
#include "tls.h"

struct conn;

struct conn_ops {
	/* Plaintext bytes from the peer (decrypted already on TLS). Takes b. */
	void (*on_data)(struct conn *c, struct block *b, size_t n);
	/* Input ended: UV_EOF, a read error, or UV_EPROTO for a TLS error. */
	void (*on_end)(struct conn *c, int err);
	/* The TLS handshake completed / failed (tls_error(c->tls) says why). */
	void (*on_tls_up)(struct conn *c);
	void (*on_tls_fail)(struct conn *c);
	/* A write to c failed (rc: a libuv error). */
	void (*on_send_failed)(struct conn *c, int rc);
	/* A write to c completed below the low-water mark while c->peer is paused. */
	void (*on_writable)(struct conn *c);
	/* conn_shutdown finished, either way. */
	void (*on_shutdown)(struct conn *c);
	/* Out of memory, or reading could not start: the owner must close. */
	void (*on_fatal)(struct conn *c, int err);
	/* The handle is closed: the memory holding c may go. */
	void (*on_closed)(struct conn *c);
};

struct conn {
	uv_tcp_t tcp;
	uv_shutdown_t shut;
	const struct conn_ops *ops; /* borrowed: static */
	void *owner;                /* borrowed: for the callbacks */
	struct conn *peer;          /* borrowed: the conn back-pressure pauses, or NULL */
	struct tls *tls;            /* owned; NULL for plaintext */
	struct block *out;          /* owned: bytes gathered by conn_out_put */
	size_t outlen;
	bool inited;
	bool reading;
	bool paused;     /* reading stopped by back-pressure */
	bool tls_ready;  /* handshake complete */
	bool halted;     /* the owner is closing: deliver nothing more */
	bool closed;     /* conn_close was called */
	bool client;     /* the client leg (for the byte counters) */
	bool tls_failed; /* input ended on a TLS error (on_end with UV_EPROTO) */

	/* The owner's counters of this connection's bytes read and written, or NULL (relaxed). */
	atomic_uint_fast64_t *rx, *tx; /* borrowed */
};

/* Sets c up on loop (uv_tcp_init). 0 or a libuv error (c is then not inited). */
int conn_init(struct conn *c, uv_loop_t *loop, const struct conn_ops *ops, void *owner,
              bool client) MUSTCHECK;
/* Starts reading; on failure logs it and calls on_fatal. No-op if reading or closed. */
void conn_start_reading(struct conn *c);
void conn_stop_reading(struct conn *c);
/* Sends n bytes of b (taken), encrypted on TLS. 0 or a libuv error. */
int conn_send(struct conn *c, struct block *b, size_t n) MUSTCHECK;
/* Sends a copy of n bytes. 0 or a libuv error. */
int conn_send_copy(struct conn *c, const void *p, size_t n) MUSTCHECK;
/* Passes block b (n bytes; taken) to c, pausing c->peer under back-pressure; on_send_failed on
 * error. */
void conn_forward(struct conn *c, struct block *b, size_t n);
/* After queueing for c: pause c->peer while c has too much unsent. */
void conn_apply_pressure(struct conn *c);
/* Reports a failed write to c through on_send_failed (for owners that wrote around conn_send). */
void conn_send_failed(struct conn *c, int rc);
/* Moves the ciphertext TLS produced onto the socket. 0 or a libuv error. */
int conn_flush_tls(struct conn *c) MUSTCHECK;
/* Gathers bytes / one whole message for one later write (conn_out_flush); false if closing. */
bool conn_out_put(struct conn *c, const void *p, size_t n);
bool conn_send_msg(struct conn *c, uint8_t type, const uint8_t *body, size_t len);
/* Sends what was gathered; false if c is closing or the write failed (on_send_failed ran). */
bool conn_out_flush(struct conn *c);
/* Starts TLS on c (accept: we are the TLS server). False when out of memory. */
bool conn_tls_start(struct conn *c, SSL_CTX *ctx, bool accept, const char *host,
                    bool verify_host) MUSTCHECK;
/* Ciphertext that was read before TLS started on c (a direct TLS ClientHello). Takes b. */
void conn_tls_in(struct conn *c, struct block *b, size_t n);
/* Lets what is queued reach the peer, then FIN; on_shutdown follows. 0 or a libuv error. */
int conn_shutdown(struct conn *c) MUSTCHECK;
/* Closes the handle (pending writes are cancelled); on_closed follows. */
void conn_close(struct conn *c);
/* Frees what c owns besides its handle (after on_closed, or for a conn never inited). */
void conn_release(struct conn *c);
/*
 * For a connection we cannot keep even for a moment: writes len bytes at
 * once if the socket takes them whole, sends FIN and reads away what the
 * peer sent (closing over unread input sends a reset). No callback.
 */
void conn_write_now(struct conn *c, const void *p, size_t len);
/* Bytes queued for the socket and not written yet. */
size_t conn_queued(const struct conn *c);
/* "tenant-router: " and the formatted text in msg; returns the text after that prefix. */
const char *conn_vformat(char *msg, size_t cap, const char *fmt, va_list ap) PRINTF_LIKE(3, 0);
/*
 * An ErrorResponse (severity, SQLSTATE, message "tenant-router: ...", hint)
 * in a new block; its length in *len. NULL when out of memory.
 */
struct block *conn_error_block(const char *severity, const char *sqlstate, const char *msg,
                               const char *hint, size_t *len) MUSTCHECK;

#endif /* TR_CONN_H */
