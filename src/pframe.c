/*
 * pframe.c - the pooled session's framer: message headers both ways, to
 * know whether a server connection is clean and where a Terminate begins.
 *
 * It never looks inside a body except for ReadyForQuery's status byte, and
 * it holds no buffer: a header cut by a read is kept in 5 bytes, a body is
 * skipped by its length. A length below 4 or with the top bit set breaks
 * the framing for good (the connection is then never reused); the bytes
 * still flow, the server ends the session.
 */
#include "pframe.h"

#include <string.h>

void pframe_init(struct pframe *f)
{
	memset(f, 0, sizeof(*f));
	f->txn = 'I';
}

static uint32_t hdr_len(const uint8_t *h)
{
	return (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
}

/* A client message's header is whole. */
static void client_message(struct pframe *f, uint8_t type)
{
	switch (type) {
	case 'Q':
	case 'F':
		f->syncs++;
		break;
	case 'S':
		f->syncs++;
		f->unsynced = false;
		break;
	case 'P':
	case 'B':
	case 'D':
	case 'E':
	case 'C':
	case 'H':
		f->unsynced = true;
		break;
	default:
		break;
	}
}

/*
 * Walks n bytes of one direction. For the client, stops at a Terminate's
 * first byte and returns its offset; else returns n.
 */
static size_t walk(struct pframe *f, struct pframe_dir *d, bool client, const uint8_t *p, size_t n)
{
	size_t i = 0;

	while (i < n && !d->broken) {
		if (d->left > 0) {
			size_t take = n - i < d->left ? n - i : d->left;

			if (!client && f->zbody) {
				f->txn = (char)p[i];
				f->zbody = false;
			}
			d->left -= (uint32_t)take;
			i += take;
			continue;
		}
		if (client && d->hlen == 0 && p[i] == 'X') {
			f->terminated = true;
			return i;
		}
		d->hdr[d->hlen++] = p[i++];
		if (d->hlen < 5)
			continue;
		d->hlen = 0;
		{
			uint32_t len = hdr_len(d->hdr);

			if (len < 4 || len > 0x7fffffffu) {
				d->broken = true;
				break;
			}
			d->left = len - 4;
		}
		if (client) {
			client_message(f, d->hdr[0]);
		} else if (d->hdr[0] == 'Z') {
			f->zs++;
			f->zbody = d->left > 0;
		}
	}
	return n;
}

size_t pframe_client(struct pframe *f, const uint8_t *p, size_t n)
{
	if (f->terminated)
		return 0;
	return walk(f, &f->c, true, p, n);
}

void pframe_server(struct pframe *f, const uint8_t *p, size_t n)
{
	walk(f, &f->s, false, p, n);
}

bool pframe_clean(const struct pframe *f, char *txn)
{
	*txn = f->txn;
	return !f->c.broken && !f->s.broken && f->syncs == f->zs && !f->unsynced && !f->zbody &&
	       f->c.hlen == 0 && f->c.left == 0 && f->s.hlen == 0 && f->s.left == 0 &&
	       (f->txn == 'I' || f->txn == 'T' || f->txn == 'E');
}
