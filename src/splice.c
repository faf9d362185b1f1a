/*
 * splice.c - the block pool and the write half of the byte pump.
 *
 * Blocks are recycled through a free list capped at POOL_MAX_FREE, so a burst
 * of traffic does not pin its peak memory forever. The pool is per thread
 * (thread-local), like each event loop's sessions.
 */
#include "splice.h"

#include <stdlib.h>
#include <string.h>

#include <uv.h>

#define POOL_MAX_FREE 256

static _Thread_local struct block *free_list;
static _Thread_local size_t free_count;

struct block *block_get(void)
{
	struct block *b = free_list;

	if (b) {
		free_list = b->next;
		free_count--;
		return b;
	}
	return malloc(sizeof(struct block));
}

void block_put(struct block *b)
{
	if (free_count >= POOL_MAX_FREE) {
		free(b);
		return;
	}
	b->next = free_list;
	free_list = b;
	free_count++;
}

struct block *block_of(const uv_buf_t *buf)
{
	return container_of(buf->base, struct block, data);
}

void splice_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct block *b = block_get();

	if (b == NULL) {
		*buf = uv_buf_init(NULL, 0);
		return;
	}
	*buf = uv_buf_init(b->data, SPLICE_BLOCK_SIZE);
}

void splice_pool_drain(void)
{
	while (free_list) {
		struct block *b = free_list;

		free_list = b->next;
		free(b);
	}
	free_count = 0;
}

int splice_send(uv_stream_t *stream, struct block *b, size_t off, size_t len, void *data,
		uv_write_cb cb)
{
	uv_buf_t buf = uv_buf_init(b->data + off, (unsigned)len);
	int rc;

	/* Writing directly is only in order when nothing is queued before us. */
	if (uv_stream_get_write_queue_size(stream) == 0) {
		rc = uv_try_write(stream, &buf, 1);
		if (rc == (int)len) {
			block_put(b);
			return 0;
		}
		if (rc < 0 && rc != UV_EAGAIN) {
			block_put(b);
			return rc;
		}
		if (rc > 0) {
			buf.base += rc;
			buf.len -= (size_t)rc;
		}
	}
	b->req.data = data;
	rc = uv_write(&b->req, stream, &buf, 1, cb);
	if (rc < 0)
		block_put(b);
	return rc;
}

int splice_send_copy(uv_stream_t *stream, const void *data, size_t len, void *req_data,
		     uv_write_cb cb)
{
	const char *p = data;

	while (len > 0) {
		size_t n = len < SPLICE_BLOCK_SIZE ? len : SPLICE_BLOCK_SIZE;
		struct block *b = block_get();
		int rc;

		if (b == NULL)
			return UV_ENOMEM;
		memcpy(b->data, p, n);
		rc = splice_send(stream, b, 0, n, req_data, cb);
		if (rc < 0)
			return rc;
		p += n;
		len -= n;
	}
	return 0;
}
