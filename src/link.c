/*
 * link.c - a client attached to its server connection: the splice.
 *
 * Once a session splices, bytes in, bytes out: a block read from one leg
 * is forwarded whole to the other (no copy), unless the guard is on, which
 * frames both directions (client_guard.c). Back-pressure pairs the two
 * conns: a leg whose write queue passes the high-water mark stops reading
 * its peer, and a write completing under the low-water mark reads it again.
 *
 * This file parses nothing and calls only down: conn.c and the guard.
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
	if (s->g.on)
		guard_client(s, b, n);
	else
		conn_forward(&s->sv->c, b, n);
}

void link_server_data(struct session *s, struct block *b, size_t n)
{
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
