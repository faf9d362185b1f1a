/*
 * roster.c - the sessions of every event loop and the held tenants, under
 * one mutex (see roster.h).
 *
 * One lock for both on purpose: a pin change counts the tenant's live
 * sessions and holds its new ones in one step, and a new session records
 * its tenant and checks the hold in one step, so either the change sees the
 * session or the session sees the hold. The held list is short (a few
 * paused or moving tenants), and new sessions skip the lock's scan of it
 * when it is empty. The session list is intrusive: adding and removing are
 * O(1); the console's scans are O(sessions), a copy made under the lock.
 */
#include "roster.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct held {
	char tenant[ROSTER_MAX_TENANT + 1];
	size_t tlen;
	bool paused;
	bool moving;  /* a pin change in flight or published */
	uint64_t gen; /* moving: snapshots older than this still hold; UINT64_MAX in flight */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct roster_entry *head, *tail;
static struct held held[ROSTER_MAX_HELD];
static size_t nheld;
static atomic_size_t nheld_pub; /* nheld, read without the lock on the fast path */

uint64_t roster_next_id(void)
{
	static atomic_uint_fast64_t next;

	return atomic_fetch_add(&next, 1) + 1;
}

int64_t roster_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void roster_add(struct roster_entry *e)
{
	pthread_mutex_lock(&lock);
	e->next = NULL;
	e->prev = tail;
	if (tail)
		tail->next = e;
	else
		head = e;
	tail = e;
	pthread_mutex_unlock(&lock);
}

void roster_remove(struct roster_entry *e)
{
	pthread_mutex_lock(&lock);
	if (e->prev)
		e->prev->next = e->next;
	else if (head == e)
		head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else if (tail == e)
		tail = e->prev;
	e->prev = e->next = NULL;
	pthread_mutex_unlock(&lock);
}

static struct held *held_find(const char *t, size_t len)
{
	for (size_t i = 0; i < nheld; i++) {
		if (held[i].tlen == len && memcmp(held[i].tenant, t, len) == 0)
			return &held[i];
	}
	return NULL;
}

static struct held *held_add(const char *t, size_t len)
{
	struct held *h;

	if (nheld == ROSTER_MAX_HELD)
		return NULL;
	h = &held[nheld++];
	memset(h, 0, sizeof(*h));
	memcpy(h->tenant, t, len);
	h->tlen = len;
	atomic_store(&nheld_pub, nheld);
	return h;
}

/* Drops h if nothing holds the tenant any more. */
static void held_maybe_drop(struct held *h)
{
	if (h->paused || h->moving)
		return;
	*h = held[--nheld];
	atomic_store(&nheld_pub, nheld);
}

static enum roster_hold hold_of(const struct held *h, uint64_t cfg_gen)
{
	if (h == NULL)
		return ROSTER_GO;
	if (h->paused)
		return ROSTER_PAUSED;
	if (h->moving && cfg_gen < h->gen)
		return ROSTER_MOVING;
	return ROSTER_GO;
}

enum roster_hold roster_tenant_held(struct roster_entry *e, const char *tenant, size_t len,
                                    uint64_t cfg_gen)
{
	enum roster_hold r;

	if (len > ROSTER_MAX_TENANT)
		len = ROSTER_MAX_TENANT; /* cannot happen: tenants are at most 255 bytes */
	pthread_mutex_lock(&lock);
	memcpy(e->tenant, tenant, len);
	e->tenant[len] = '\0';
	e->tlen = len;
	r = atomic_load(&nheld_pub) ? hold_of(held_find(tenant, len), cfg_gen) : ROSTER_GO;
	e->waiting = r != ROSTER_GO;
	pthread_mutex_unlock(&lock);
	return r;
}

void roster_set_route(struct roster_entry *e, const char *cluster, const char *host,
                      enum roster_source src)
{
	pthread_mutex_lock(&lock);
	snprintf(e->cluster, sizeof(e->cluster), "%s", cluster ? cluster : "");
	snprintf(e->host, sizeof(e->host), "%s", host ? host : "");
	e->source = src;
	pthread_mutex_unlock(&lock);
}

void roster_set_tls(struct roster_entry *e, bool tls)
{
	pthread_mutex_lock(&lock);
	e->tls = tls;
	pthread_mutex_unlock(&lock);
}

int roster_pause(const char *tenant, size_t len)
{
	struct held *h;
	int rc = 0;

	if (len == 0 || len > ROSTER_MAX_TENANT)
		return -EINVAL;
	pthread_mutex_lock(&lock);
	h = held_find(tenant, len);
	if (h == NULL && (h = held_add(tenant, len)) == NULL)
		rc = -ENOSPC;
	else if (h->paused)
		rc = -EALREADY;
	else
		h->paused = true;
	pthread_mutex_unlock(&lock);
	return rc;
}

int roster_resume(const char *tenant, size_t len)
{
	struct held *h;
	int rc = 0;

	pthread_mutex_lock(&lock);
	h = held_find(tenant, len);
	if (h == NULL || !h->paused) {
		rc = -ENOENT;
	} else {
		h->paused = false;
		held_maybe_drop(h);
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

static size_t count_live(const char *tenant, size_t len)
{
	size_t n = 0;

	for (const struct roster_entry *e = head; e; e = e->next) {
		if (!e->admin && !e->waiting && e->tlen == len &&
		    memcmp(e->tenant, tenant, len) == 0)
			n++;
	}
	return n;
}

int roster_move_begin(const char *tenant, size_t len)
{
	struct held *h;
	int rc;

	if (len == 0 || len > ROSTER_MAX_TENANT)
		return -EINVAL;
	pthread_mutex_lock(&lock);
	h = held_find(tenant, len);
	if (h && h->moving && h->gen == UINT64_MAX) {
		rc = -EBUSY;
	} else if (h == NULL && (h = held_add(tenant, len)) == NULL) {
		rc = -ENOSPC;
	} else {
		size_t n = count_live(tenant, len);

		h->moving = true;
		h->gen = UINT64_MAX;
		rc = n > INT32_MAX ? INT32_MAX : (int)n;
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

void roster_move_end(const char *tenant, size_t len, uint64_t gen)
{
	struct held *h;

	pthread_mutex_lock(&lock);
	h = held_find(tenant, len);
	if (h && h->moving) {
		h->gen = gen;
		if (gen == 0) {
			h->moving = false;
			held_maybe_drop(h);
		}
	}
	pthread_mutex_unlock(&lock);
}

void roster_sweep(uint64_t min_gen)
{
	pthread_mutex_lock(&lock);
	for (size_t i = nheld; i-- > 0;) {
		struct held *h = &held[i];

		if (h->moving && h->gen != UINT64_MAX && h->gen <= min_gen) {
			h->moving = false;
			held_maybe_drop(h);
		}
	}
	pthread_mutex_unlock(&lock);
}

size_t roster_tenant_sessions(const char *tenant, size_t len)
{
	size_t n;

	pthread_mutex_lock(&lock);
	n = count_live(tenant, len);
	pthread_mutex_unlock(&lock);
	return n;
}

static void mark(struct roster_entry *e, enum roster_kill why)
{
	atomic_store(&e->kill, (int)why);
	if (e->wake)
		e->wake(e->wake_arg);
}

size_t roster_kill_tenant(const char *tenant, size_t len)
{
	size_t n = 0;

	pthread_mutex_lock(&lock);
	for (struct roster_entry *e = head; e; e = e->next) {
		if (!e->admin && e->tlen == len && memcmp(e->tenant, tenant, len) == 0) {
			mark(e, ROSTER_KILL_TENANT);
			n++;
		}
	}
	pthread_mutex_unlock(&lock);
	return n;
}

bool roster_kill_client(uint64_t id)
{
	bool found = false;

	pthread_mutex_lock(&lock);
	for (struct roster_entry *e = head; e && !found; e = e->next) {
		if (e->id == id) {
			mark(e, ROSTER_KILL_CLIENT);
			found = true;
		}
	}
	pthread_mutex_unlock(&lock);
	return found;
}

long roster_snapshot(struct roster_row **out)
{
	struct roster_row *v;
	size_t n = 0, i = 0;

	pthread_mutex_lock(&lock);
	for (const struct roster_entry *e = head; e; e = e->next)
		n++;
	v = calloc(n ? n : 1, sizeof(*v));
	if (v == NULL) {
		pthread_mutex_unlock(&lock);
		return -ENOMEM;
	}
	for (const struct roster_entry *e = head; e && i < n; e = e->next, i++) {
		struct roster_row *r = &v[i];

		r->id = e->id;
		r->loop = e->loop;
		r->started_ms = e->started_ms;
		memcpy(r->peer, e->peer, sizeof(r->peer));
		memcpy(r->tenant, e->tenant, sizeof(r->tenant));
		r->tlen = e->tlen;
		memcpy(r->cluster, e->cluster, sizeof(r->cluster));
		memcpy(r->host, e->host, sizeof(r->host));
		r->source = e->source;
		r->waiting = e->waiting;
		r->tls = e->tls;
		r->admin = e->admin;
		r->state = atomic_load_explicit(&e->state, memory_order_relaxed);
		r->bytes_in = atomic_load_explicit(&e->bytes_in, memory_order_relaxed);
		r->bytes_out = atomic_load_explicit(&e->bytes_out, memory_order_relaxed);
	}
	pthread_mutex_unlock(&lock);
	*out = v;
	return (long)i;
}

size_t roster_held_list(struct roster_held_row *out, size_t cap)
{
	size_t n;

	pthread_mutex_lock(&lock);
	n = nheld;
	for (size_t i = 0; i < nheld && i < cap; i++) {
		memcpy(out[i].tenant, held[i].tenant, sizeof(out[i].tenant));
		out[i].tlen = held[i].tlen;
		out[i].paused = held[i].paused;
		out[i].moving = held[i].moving;
	}
	pthread_mutex_unlock(&lock);
	return n;
}

const char *roster_source_name(enum roster_source s)
{
	switch (s) {
	case ROSTER_SRC_NONE:
		return "";
	case ROSTER_SRC_PIN:
		return "pin";
	case ROSTER_SRC_RING:
		return "ring";
	case ROSTER_SRC_ROUTE:
		return "route";
	}
	return "";
}
