/*
 * conn.c - the connection I/O layer: one side's reading, writing, TLS,
 * back-pressure, gathered output and close.
 *
 * All bytes from a leg go through read_cb -> tls_in -> on_data, and all
 * bytes to a leg through conn_send, so the owner does not care which legs
 * are encrypted. What the bytes mean, and what an error or the end of
 * input means, is the owner's business: this file calls it only through
 * c->ops, never by name, and keeps no state of the owner's.
 *
 * The splice path costs what it did before the split: a block read is
 * passed up as is and forwarded without a copy; the only indirect calls
 * are the owner's callbacks.
 */
#include "conn.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <uv.h>

#include "log.h"
#include "proto.h"
#include "splice.h"
#include "stats.h"
#include "tls.h"

int conn_init(struct conn *c, uv_loop_t *loop, const struct conn_ops *ops, void *owner, bool client)
{
	int rc;

	c->ops = ops;
	c->owner = owner;
	c->client = client;
	rc = uv_tcp_init(loop, &c->tcp);
	if (rc < 0)
		return rc;
	c->inited = true;
	c->tcp.data = c;
	return 0;
}

void conn_stop_reading(struct conn *c)
{
	if (c->inited && c->reading && !uv_is_closing((uv_handle_t *)&c->tcp)) {
		uv_read_stop((uv_stream_t *)&c->tcp);
		c->reading = false;
	}
}

size_t conn_queued(const struct conn *c)
{
	return uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

static void write_cb(uv_write_t *req, int status)
{
	struct conn *c = req->data;

	block_put(container_of(req, struct block, req));
	if (status == UV_ECANCELED || c->closed)
		return;
	if (status < 0) {
		c->ops->on_send_failed(c, status);
		return;
	}
	if (c->peer && c->peer->paused && conn_queued(c) < SPLICE_LOW_WATER)
		c->ops->on_writable(c);
}

/* Bytes written to a leg, for metrics. */
static void count_sent(struct conn *c, size_t n)
{
	stats_bytes(c->client ? STATS_TO_CLIENT : STATS_TO_SERVER, n);
	if (c->tx)
		atomic_fetch_add_explicit(c->tx, n, memory_order_relaxed);
}

/* Moves the ciphertext TLS produced for c onto its socket. */
int conn_flush_tls(struct conn *c)
{
	for (;;) {
		struct block *b = block_get();
		size_t n;
		int rc;

		if (b == NULL)
			return UV_ENOMEM;
		n = tls_take_out(c->tls, b->data, SPLICE_BLOCK_SIZE);
		if (n == 0) {
			block_put(b);
			return 0;
		}
		count_sent(c, n);
		rc = splice_send((uv_stream_t *)&c->tcp, b, 0, n, c, write_cb);
		if (rc < 0)
			return rc;
	}
}

/* Sends n bytes of b to c (encrypting on a TLS leg); takes b. */
int conn_send(struct conn *c, struct block *b, size_t n)
{
	bool ok;

	if (c->tls == NULL) {
		count_sent(c, n);
		return splice_send((uv_stream_t *)&c->tcp, b, 0, n, c, write_cb);
	}
	ok = tls_write(c->tls, b->data, n);
	block_put(b);
	return ok ? conn_flush_tls(c) : UV_EPROTO;
}

int conn_send_copy(struct conn *c, const void *p, size_t n)
{
	if (c->tls == NULL) {
		count_sent(c, n);
		return splice_send_copy((uv_stream_t *)&c->tcp, p, n, c, write_cb);
	}
	return tls_write(c->tls, p, n) ? conn_flush_tls(c) : UV_EPROTO;
}

/* After queueing for c: pause its peer while c has too much unsent. */
void conn_apply_pressure(struct conn *c)
{
	struct conn *src = c->peer;

	if (src && conn_queued(c) > SPLICE_HIGH_WATER && !src->paused && src->reading) {
		src->paused = true;
		conn_stop_reading(src);
	}
}

void conn_send_failed(struct conn *c, int rc)
{
	c->ops->on_send_failed(c, rc);
}

/* Passes b (n bytes) to c, pausing the source if c has too much unsent. */
void conn_forward(struct conn *c, struct block *b, size_t n)
{
	int rc = conn_send(c, b, n);

	if (rc < 0)
		c->ops->on_send_failed(c, rc);
	else
		conn_apply_pressure(c);
}

/* Sends what conn_out_put() gathered; false if c is closing. */
bool conn_out_flush(struct conn *c)
{
	struct block *b = c->out;
	int rc;

	c->out = NULL;
	if (b == NULL)
		return true;
	if (c->outlen == 0 || c->closed || c->halted) {
		block_put(b);
		return !c->closed && !c->halted;
	}
	rc = conn_send(c, b, c->outlen);
	c->outlen = 0;
	if (rc < 0) {
		c->ops->on_send_failed(c, rc);
		return false;
	}
	conn_apply_pressure(c);
	return true;
}

/*
 * Gathers bytes for the peer. During login a server sends many small
 * messages in one segment; one write for all of them, not one per message,
 * halves the router's syscalls per connection and wakes the client once.
 */
bool conn_out_put(struct conn *c, const void *p, size_t n)
{
	const uint8_t *src = p;

	while (n > 0) {
		size_t k;

		if (c->out == NULL) {
			c->out = block_get();
			c->outlen = 0;
			if (c->out == NULL) {
				c->ops->on_fatal(c, UV_ENOMEM);
				return false;
			}
		}
		k = SPLICE_BLOCK_SIZE - c->outlen < n ? SPLICE_BLOCK_SIZE - c->outlen : n;
		memcpy(c->out->data + c->outlen, src, k);
		c->outlen += k;
		src += k;
		n -= k;
		if (c->outlen == SPLICE_BLOCK_SIZE && !conn_out_flush(c))
			return false;
	}
	return true;
}

/* Queues one whole message (type, body). */
bool conn_send_msg(struct conn *c, uint8_t type, const uint8_t *body, size_t len)
{
	uint8_t hdr[5];

	proto_msg_header(hdr, type, len);
	return conn_out_put(c, hdr, sizeof(hdr)) && conn_out_put(c, body, len);
}

bool conn_tls_start(struct conn *c, SSL_CTX *ctx, bool accept, const char *host, bool verify_host)
{
	c->tls = tls_new(ctx, accept, host, verify_host);
	return c->tls != NULL;
}

/* Ciphertext from a TLS leg: handshake, then decrypt and pass up. Takes b. */
static void tls_in(struct conn *c, struct block *b, size_t n)
{
	bool ok = tls_feed(c->tls, b->data, n);

	block_put(b);
	if (!ok) {
		c->ops->on_fatal(c, UV_ENOMEM);
		return;
	}
	if (!c->tls_ready) {
		int rc = tls_handshake(c->tls);

		if (conn_flush_tls(c) < 0) {
			c->ops->on_fatal(c, UV_EPROTO);
			return;
		}
		if (rc == TLS_AGAIN)
			return;
		if (rc != 1) {
			c->ops->on_tls_fail(c);
			return;
		}
		c->tls_ready = true;
		c->ops->on_tls_up(c);
	}
	while (!c->closed && !c->halted) {
		struct block *pb = block_get();
		int r;

		if (pb == NULL) {
			c->ops->on_fatal(c, UV_ENOMEM);
			return;
		}
		r = tls_read(c->tls, pb->data, SPLICE_BLOCK_SIZE);
		if (r > 0) {
			c->ops->on_data(c, pb, (size_t)r);
			continue;
		}
		block_put(pb);
		if (r == TLS_EOF) {
			c->ops->on_end(c, UV_EOF);
			return;
		}
		if (r == TLS_ERROR) {
			/* The owner logs it with its prefix (tls_error() says why). */
			c->tls_failed = true;
			c->ops->on_end(c, UV_EPROTO);
			return;
		}
		break;
	}
	/* Reading may have produced records to send (alerts, session tickets). */
	if (!c->closed && conn_flush_tls(c) < 0)
		c->ops->on_fatal(c, UV_EPROTO);
}

void conn_tls_in(struct conn *c, struct block *b, size_t n)
{
	tls_in(c, b, n);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = stream->data;
	struct block *b = buf->base ? block_of(buf) : NULL;

	if (nread <= 0) {
		if (b)
			block_put(b);
		if (nread == UV_ENOBUFS) {
			c->ops->on_end(c, UV_ENOBUFS);
		} else if (nread < 0) {
			c->reading = false;
			c->ops->on_end(c, (int)nread);
		}
		return;
	}
	stats_bytes(c->client ? STATS_FROM_CLIENT : STATS_FROM_SERVER, (size_t)nread);
	if (c->rx)
		atomic_fetch_add_explicit(c->rx, (size_t)nread, memory_order_relaxed);
	if (c->tls) {
		tls_in(c, b, (size_t)nread);
		return;
	}
	c->ops->on_data(c, b, (size_t)nread);
}

void conn_start_reading(struct conn *c)
{
	int rc;

	if (c->reading || c->closed)
		return;
	rc = uv_read_start((uv_stream_t *)&c->tcp, splice_alloc_cb, read_cb);
	if (rc < 0) {
		log_warn("read_start failed: %s", uv_strerror(rc));
		c->ops->on_fatal(c, rc);
		return;
	}
	c->reading = true;
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
	struct conn *c = req->data;

	c->ops->on_shutdown(c);
}

int conn_shutdown(struct conn *c)
{
	if (!c->inited || c->closed)
		return UV_EINVAL;
	c->shut.data = c;
	return uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, shutdown_cb);
}

static void close_cb(uv_handle_t *h)
{
	struct conn *c = h->data;

	c->ops->on_closed(c);
}

void conn_close(struct conn *c)
{
	c->halted = true;
	if (c->closed || !c->inited)
		return;
	c->closed = true;
	c->peer = NULL;
	if (!uv_is_closing((uv_handle_t *)&c->tcp))
		uv_close((uv_handle_t *)&c->tcp, close_cb);
}

void conn_release(struct conn *c)
{
	tls_free(c->tls);
	c->tls = NULL;
	if (c->out)
		block_put(c->out);
	c->out = NULL;
}

void conn_write_now(struct conn *c, const void *p, size_t len)
{
	uv_buf_t buf = uv_buf_init((char *)p, (unsigned)len);
	uv_os_fd_t fd;
	char sink[512];

	if (uv_try_write((uv_stream_t *)&c->tcp, &buf, 1) == (int)len &&
	    uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
		(void)shutdown(fd, SHUT_WR);
		for (int i = 0; i < 4 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
			;
	}
}

const char *conn_vformat(char *msg, size_t cap, const char *fmt, va_list ap)
{
	int n = snprintf(msg, cap, "tenant-router: ");

	vsnprintf(msg + n, cap - (size_t)n, fmt, ap);
	return msg + n;
}

struct block *conn_error_block(const char *severity, const char *sqlstate, const char *msg,
                               const char *hint, size_t *len)
{
	struct block *b = block_get();
	struct wbuf w;

	if (b == NULL)
		return NULL;
	wb_init(&w, b->data, SPLICE_BLOCK_SIZE);
	proto_error_response(&w, severity, sqlstate, msg, NULL, hint);
	TR_ASSERT(!w.failed);
	*len = w.len;
	return b;
}
