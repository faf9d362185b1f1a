/*
 * splice.h - pooled relay buffers and the write side of a leg.
 *
 * A block is one fixed-size buffer with its uv_write_t embedded. libuv's
 * alloc_cb hands out blocks only when a socket is readable, so an idle
 * session holds no buffer at all. A block written with splice_send() is
 * returned to the pool by the write callback (or at once when uv_try_write
 * took all of it): the splice path allocates nothing beyond the pool.
 *
 * The transport is plain TCP today; the endpoint functions are the only
 * place that touches the stream, so TLS can wrap them later.
 */
#ifndef TR_SPLICE_H
#define TR_SPLICE_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common.h"

#define SPLICE_BLOCK_SIZE (32u * 1024u)
/* Stop reading a source once its peer has this much unsent (resume below low). */
#define SPLICE_HIGH_WATER (256u * 1024u)
#define SPLICE_LOW_WATER  (64u * 1024u)

struct block {
	struct block *next; /* free list */
	uv_write_t req;
	char data[SPLICE_BLOCK_SIZE];
};

/* A block from the pool, or NULL when out of memory. */
struct block *block_get(void) MUSTCHECK;
void block_put(struct block *b);
/* The block a read buffer came from (buf->base must be a block's data). */
struct block *block_of(const uv_buf_t *buf);
/* libuv alloc_cb: a pool block, or an empty buffer (libuv then reports UV_ENOBUFS). */
void splice_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
/* Releases every cached block (at exit, for leak checkers). */
void splice_pool_drain(void);

/*
 * Sends len bytes at b->data + off on stream, taking ownership of b: tries
 * uv_try_write first and queues the rest with uv_write(cb). cb receives the
 * uv_write_t embedded in b (req->data = data) and must block_put() it.
 * Returns 0 or a negative libuv error (b has then been returned to the pool).
 */
int splice_send(uv_stream_t *stream, struct block *b, size_t off, size_t len, void *data,
		uv_write_cb cb) MUSTCHECK;

/* Copies data into blocks and sends them (several blocks if needed). */
int splice_send_copy(uv_stream_t *stream, const void *data, size_t len, void *req_data,
		     uv_write_cb cb) MUSTCHECK;

#endif /* TR_SPLICE_H */
