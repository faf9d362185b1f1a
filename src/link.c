/*
 * link.c - a client attached to its server connection: the splice.
 *
 * Once a session splices, bytes in, bytes out: a block read from one leg
 * is forwarded whole to the other (no copy), unless the guard is on, which
 * frames both directions (client_guard.c). Back-pressure pairs the two
 * conns: a leg whose write queue passes the high-water mark stops reading
 * its peer, and a write completing under the low-water mark reads it again.
 *
 * On a pooled connection (pool_mode = session) pframe.c reads the message
 * headers both ways, without a copy: the client's Terminate is not passed
 * on (the connection outlives the client), and at logout the pool learns
 * whether the connection is clean. With pool_mode = none nothing is framed.
 *
 * This file calls only down (conn.c, pframe.c, the guard), and up through
 * s->up.
 */
#include "session.h"

#include <uv.h>

void link_attach(struct session *s)
{
	s->cl.peer = &s->sv->c;
	s->sv->c.peer = &s->cl;
}

void link_detach(struct session *s)
{
	s->cl.peer = NULL;
	if (s->sv)
		s->sv->c.peer = NULL;
}

void link_client_data(struct session *s, struct block *b, size_t n)
{
	if (s->pooled) {
		size_t k = pframe_client(&s->pf, (const uint8_t *)b->data, n);

		/* The client's Terminate ends its session, not the pooled connection. */
		if (s->pf.terminated) {
			if (k == 0) {
				block_put(b);
			} else if (s->g.on) {
				guard_client(s, b, k);
			} else {
				conn_forward(&s->sv->c, b, k);
			}
			if (!s->closed && s->state == CLIENT_SPLICING)
				s->up->logout(s);
			return;
		}
	}
	if (s->g.on)
		guard_client(s, b, n);
	else
		conn_forward(&s->sv->c, b, n);
}

void link_client_bytes(struct session *s, const uint8_t *p, size_t n)
{
	size_t k = s->pooled ? pframe_client(&s->pf, p, n) : n;

	if (s->g.on) {
		guard_client_bytes(s, p, k);
	} else if (k && conn_send_copy(&s->sv->c, p, k) < 0) {
		conn_send_failed(&s->sv->c, UV_EPIPE);
		return;
	}
	if (s->pooled && s->pf.terminated && !s->closed && s->state != CLIENT_CLOSING)
		s->up->logout(s);
}

void link_server_data(struct session *s, struct block *b, size_t n)
{
	if (s->pooled)
		pframe_server(&s->pf, (const uint8_t *)b->data, n);
	if (s->g.on)
		guard_server(s, b, n);
	else
		conn_forward(&s->cl, b, n);
}

bool link_server_at_boundary(const struct session *s)
{
	const struct gframe *f = &s->g.f;

	return s->g.on && !f->sblind && !f->blind && f->shlen == 0 && f->sleft == 0 && !f->ehold;
}

/* Only a relayed login and a splice read under back-pressure; other states read on their own. */
void link_writable(struct session *s, struct conn *dst)
{
	struct conn *src = dst->peer;

	if (src->paused && (s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_SPLICING)) {
		src->paused = false;
		conn_start_reading(src);
	}
}
