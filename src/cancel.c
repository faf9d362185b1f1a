/*
 * cancel.c - backend key map and CancelRequest forwarding.
 *
 * The map is a chained hash table of entries embedded in sessions (no
 * allocation per entry beyond the key copy), doubling when the load passes
 * one entry per bucket. Forwarding opens a connection to the server that
 * issued the key, writes the client's packet unchanged and closes; a timer
 * bounds the whole exchange, so a dead host costs nothing but a log line.
 */
#include "cancel.h"

#include <stdlib.h>
#include <string.h>

#include <uv.h>
#include <xxhash.h>

#include "log.h"
#include "proto.h"

#define CANCEL_FORWARD_TIMEOUT_MS 5000

struct cancel_map {
	uv_mutex_t lock;
	struct cancel_entry **buckets; /* owned array; entries borrowed */
	size_t nbuckets;	       /* power of two */
	size_t count;
};

static uint64_t key_hash(uint32_t pid, const uint8_t *key, size_t len)
{
	return XXH3_64bits_withSeed(key, len, pid);
}

struct cancel_map *cancel_map_new(void)
{
	struct cancel_map *m = calloc(1, sizeof(*m));

	if (m == NULL)
		return NULL;
	m->nbuckets = 1024;
	m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
	if (m->buckets == NULL || uv_mutex_init(&m->lock) != 0) {
		free(m->buckets);
		free(m);
		return NULL;
	}
	return m;
}

void cancel_map_free(struct cancel_map *m)
{
	if (m == NULL)
		return;
	uv_mutex_destroy(&m->lock);
	free(m->buckets);
	free(m);
}

static void grow(struct cancel_map *m)
{
	size_t n = m->nbuckets * 2;
	struct cancel_entry **b = calloc(n, sizeof(*b));

	/* Without memory we keep the old table: longer chains, still correct. */
	if (b == NULL)
		return;
	for (size_t i = 0; i < m->nbuckets; i++) {
		struct cancel_entry *e = m->buckets[i], *next;

		for (; e; e = next) {
			next = e->next;
			e->next = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(m->buckets);
	m->buckets = b;
	m->nbuckets = n;
}

static void unlink_locked(struct cancel_map *m, struct cancel_entry *e)
{
	struct cancel_entry **pp = &m->buckets[e->hash & (m->nbuckets - 1)];

	for (; *pp; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			m->count--;
			break;
		}
	}
	e->linked = false;
	e->next = NULL;
}

int cancel_register(struct cancel_map *m, struct cancel_entry *e, uint32_t pid,
		    const uint8_t *key, size_t keylen, const struct sockaddr *addr)
{
	uint8_t *copy;
	size_t alen = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						   : sizeof(struct sockaddr_in);

	if (keylen == 0 || keylen > PROTO_MAX_CANCEL_KEY)
		return UV_EINVAL;
	copy = malloc(keylen);
	if (copy == NULL)
		return UV_ENOMEM;
	memcpy(copy, key, keylen);
	cancel_unregister(m, e);
	e->pid = pid;
	e->key = copy;
	e->keylen = (uint16_t)keylen;
	e->hash = key_hash(pid, key, keylen);
	memset(&e->addr, 0, sizeof(e->addr));
	memcpy(&e->addr, addr, alen);
	uv_mutex_lock(&m->lock);
	if (m->count >= m->nbuckets)
		grow(m);
	e->next = m->buckets[e->hash & (m->nbuckets - 1)];
	m->buckets[e->hash & (m->nbuckets - 1)] = e;
	m->count++;
	e->linked = true;
	uv_mutex_unlock(&m->lock);
	return 0;
}

void cancel_unregister(struct cancel_map *m, struct cancel_entry *e)
{
	if (e->linked) {
		uv_mutex_lock(&m->lock);
		unlink_locked(m, e);
		uv_mutex_unlock(&m->lock);
	}
	free(e->key);
	e->key = NULL;
	e->keylen = 0;
	free(e->skey);
	e->skey = NULL;
	e->skeylen = 0;
}

int cancel_register_mapped(struct cancel_map *m, struct cancel_entry *e, uint32_t pid,
			   const uint8_t *key, size_t keylen, uint32_t spid, const uint8_t *skey,
			   size_t skeylen, const struct sockaddr *addr)
{
	uint8_t *copy;
	int rc;

	if (skeylen == 0 || skeylen > PROTO_MAX_CANCEL_KEY)
		return UV_EINVAL;
	copy = malloc(skeylen);
	if (copy == NULL)
		return UV_ENOMEM;
	memcpy(copy, skey, skeylen);
	rc = cancel_register(m, e, pid, key, keylen, addr);
	if (rc < 0) {
		free(copy);
		return rc;
	}
	/* Under the lock: a lookup on another loop may read the entry now. */
	uv_mutex_lock(&m->lock);
	e->spid = spid;
	e->skey = copy;
	e->skeylen = (uint16_t)skeylen;
	uv_mutex_unlock(&m->lock);
	return 0;
}

bool cancel_lookup_packet(struct cancel_map *m, uint32_t pid, const uint8_t *key, size_t keylen,
			  const uint8_t *packet, size_t len, union cancel_addr *addr, uint8_t *out,
			  size_t *outlen)
{
	uint64_t h = key_hash(pid, key, keylen);
	bool found = false;

	uv_mutex_lock(&m->lock);
	for (struct cancel_entry *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->next) {
		if (e->hash != h || e->pid != pid || e->keylen != keylen ||
		    memcmp(e->key, key, keylen) != 0)
			continue;
		*addr = e->addr;
		found = true;
		if (e->skeylen == 0) {
			memcpy(out, packet, len);
			*outlen = len;
		} else {
			struct wbuf w;

			wb_init(&w, out, 12 + PROTO_MAX_CANCEL_KEY);
			wb_begin(&w, 0);
			wb_u32(&w, PROTO_CODE_CANCEL);
			wb_u32(&w, e->spid);
			wb_bytes(&w, e->skey, e->skeylen);
			wb_end(&w);
			*outlen = w.len;
		}
		break;
	}
	uv_mutex_unlock(&m->lock);
	return found;
}

bool cancel_lookup(struct cancel_map *m, uint32_t pid, const uint8_t *key, size_t keylen,
		   union cancel_addr *out)
{
	uint64_t h = key_hash(pid, key, keylen);
	bool found = false;

	uv_mutex_lock(&m->lock);
	for (struct cancel_entry *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->next) {
		if (e->hash == h && e->pid == pid && e->keylen == keylen &&
		    memcmp(e->key, key, keylen) == 0) {
			*out = e->addr;
			found = true;
			break;
		}
	}
	uv_mutex_unlock(&m->lock);
	return found;
}

size_t cancel_count(struct cancel_map *m)
{
	size_t n;

	uv_mutex_lock(&m->lock);
	n = m->count;
	uv_mutex_unlock(&m->lock);
	return n;
}

struct forward {
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_connect_t connect;
	uv_write_t write;
	int open_handles;
	size_t len;
	uint8_t packet[8 + 4 + PROTO_MAX_CANCEL_KEY];
};

static void fwd_close_cb(uv_handle_t *h)
{
	struct forward *f = h->data;

	if (--f->open_handles == 0)
		free(f);
}

static void fwd_finish(struct forward *f)
{
	if (!uv_is_closing((uv_handle_t *)&f->tcp))
		uv_close((uv_handle_t *)&f->tcp, fwd_close_cb);
	if (!uv_is_closing((uv_handle_t *)&f->timer))
		uv_close((uv_handle_t *)&f->timer, fwd_close_cb);
}

static void fwd_write_cb(uv_write_t *req, int status)
{
	struct forward *f = req->data;

	if (status < 0 && status != UV_ECANCELED)
		log_warn("cancel: could not send cancel request: %s", uv_strerror(status));
	fwd_finish(f);
}

static void fwd_connect_cb(uv_connect_t *req, int status)
{
	struct forward *f = req->data;
	uv_buf_t buf = uv_buf_init((char *)f->packet, (unsigned)f->len);

	if (status < 0) {
		if (status != UV_ECANCELED)
			log_warn("cancel: could not connect to forward a cancel request: %s",
				 uv_strerror(status));
		fwd_finish(f);
		return;
	}
	f->write.data = f;
	if (uv_write(&f->write, (uv_stream_t *)&f->tcp, &buf, 1, fwd_write_cb) < 0)
		fwd_finish(f);
}

static void fwd_timer_cb(uv_timer_t *t)
{
	log_warn("cancel: forwarding timed out");
	fwd_finish(t->data);
}

void cancel_forward(uv_loop_t *loop, const union cancel_addr *addr, const uint8_t *packet,
		    size_t len)
{
	struct forward *f;

	if (len > sizeof(f->packet))
		return;
	f = calloc(1, sizeof(*f));
	if (f == NULL) {
		log_warn("cancel: out of memory, cancel request dropped");
		return;
	}
	memcpy(f->packet, packet, len);
	f->len = len;
	f->tcp.data = f;
	f->timer.data = f;
	f->connect.data = f;
	uv_tcp_init(loop, &f->tcp);
	uv_timer_init(loop, &f->timer);
	f->open_handles = 2;
	uv_timer_start(&f->timer, fwd_timer_cb, CANCEL_FORWARD_TIMEOUT_MS, 0);
	if (uv_tcp_connect(&f->connect, &f->tcp, &addr->sa, fwd_connect_cb) < 0)
		fwd_finish(f);
}
