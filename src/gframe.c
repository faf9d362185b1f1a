/*
 * gframe.c - the stickiness guard's framer over both directions of a
 * spliced session. Pure: no I/O, every effect goes through the callbacks in
 * struct gframe_ops.
 *
 * Client side. Each message is framed by its 5-byte header. A type the
 * owner does not want passes untouched. A wanted one (Query, Parse, a Bind
 * of a flagged statement, FunctionCall) is judged whole: in place when the
 * read holds it all, else gathered in f->hold. A wanted message longer than
 * max_hold, or one the router-wide budget has no room for, is not held: a
 * Query or Parse is streamed while the pre-filter (struct gscan) scans it,
 * and if the pre-filter fires, the rest of the message goes out as zero
 * bytes. The server then reads the statement text only up to the first
 * zero and finds bytes left over in the message, which PostgreSQL answers
 * with an ERROR ("invalid message format") before parsing anything: nothing
 * of the statement runs.
 *
 * A refused message never reaches the server. In its place goes a marker
 * that the server fails right there (see send_marker), so PostgreSQL's own
 * rules decide what the failure means: the implicit transaction rolls back,
 * a transaction block is aborted, the rest of an extended batch is skipped
 * up to its Sync. The framer needs no model of that.
 *
 * Server side. Only headers are read, until errors wait: then each
 * ErrorResponse is held whole, and one that names a marker (or answers a
 * spoiled statement) is replaced by the owner's error. An error whose marker
 * the server skipped (an earlier message of the batch had failed) is
 * dropped at the ReadyForQuery that ends its batch; ReadyForQuery is counted
 * for that alone, so a count that runs ahead (the server skips a Query after
 * an extended-protocol error) only keeps a dead error longer.
 *
 * Invariants: bytes come out in the order they went in; with no refusal and
 * no overlong wanted message, the output is the input, byte for byte,
 * however it was cut; nothing is held beyond max_hold per framer.
 */
#include "gframe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "query.h"

enum { PAT_WORD, PAT_SET, PAT_COMMENT, PAT_KEY, PAT_SET_CONFIG, PAT_BACKSLASH, PAT_UNICODE, NPAT };

static const uint8_t zeros[4096];

void gscan_init(struct gscan *sc, const char *key)
{
	size_t klen = strnlen(key, sizeof(sc->key) - 1);
	const char *word;

	memcpy(sc->key, key, klen);
	sc->key[klen] = '\0';
	word = strrchr(sc->key, '.');
	word = word ? word + 1 : sc->key;
	sc->pat[PAT_WORD] = word;
	sc->len[PAT_WORD] = (uint8_t)strlen(word);
	sc->pat[PAT_SET] = "set";
	sc->len[PAT_SET] = 3;
	sc->pat[PAT_COMMENT] = "/*";
	sc->len[PAT_COMMENT] = 2;
	sc->pat[PAT_KEY] = sc->key;
	sc->len[PAT_KEY] = (uint8_t)klen;
	/* Ways to spell the key without its bytes: set_config(expr), E'\x5f', U&"\005f". */
	sc->pat[PAT_SET_CONFIG] = "set_config";
	sc->len[PAT_SET_CONFIG] = 10;
	sc->pat[PAT_BACKSLASH] = "\\";
	sc->len[PAT_BACKSLASH] = 1;
	sc->pat[PAT_UNICODE] = "u&";
	sc->len[PAT_UNICODE] = 2;
	sc->word_only = false;
	gscan_reset(sc);
}

void gscan_reset(struct gscan *sc)
{
	sc->seen = 0;
	sc->taillen = 0;
}

static inline uint8_t lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

/* Where the first case-insensitive match of pat[0, plen) in h[0, n) ends (its last byte), or -1. */
static long first_end(const uint8_t *h, size_t n, const char *pat, size_t plen)
{
	for (size_t i = 0; i + plen <= n; i++) {
		size_t k = 0;

		while (k < plen && lower(h[i + k]) == lower((uint8_t)pat[k]))
			k++;
		if (k == plen)
			return (long)(i + plen - 1);
	}
	return -1;
}

#define SEEN(s, k) (((s) >> (k)) & 1u)

/*
 * The pre-filter's condition over what was seen: the key's word and "set"
 * or a comment with the whole key; or set_config; or "set" with an escape
 * (a backslash, U&) that could spell the key. word_only (a FunctionCall):
 * the key's word alone, since its arguments are raw bytes.
 */
static inline bool hit_of(const struct gscan *sc, unsigned s)
{
	if (sc->word_only)
		return SEEN(s, PAT_WORD);
	return (SEEN(s, PAT_WORD) &&
		(SEEN(s, PAT_SET) || (SEEN(s, PAT_COMMENT) && SEEN(s, PAT_KEY)))) ||
	       SEEN(s, PAT_SET_CONFIG) ||
	       (SEEN(s, PAT_SET) && (SEEN(s, PAT_BACKSLASH) || SEEN(s, PAT_UNICODE)));
}

static inline long max2(long a, long b)
{
	return a > b ? a : b;
}

static inline long min2(long a, long b)
{
	return a < b ? a : b;
}

/*
 * The offset in p of the byte with which the pre-filter fired, p having
 * made it fire (before: what was seen until p). It is where the last
 * pattern it needed ends, so the answer does not depend on how the text was
 * cut. The search is byte by byte, but it runs once per text at most.
 */
static size_t hit_offset(const struct gscan *sc, unsigned before, const uint8_t *p, size_t n)
{
	long end[ARRAY_SIZE(sc->pat)], a;
	uint8_t win[2 * (GSCAN_MAX_PAT - 1)];

	for (unsigned k = 0; k < ARRAY_SIZE(sc->pat); k++) {
		size_t plen = sc->len[k], head = n < plen - 1 ? n : plen - 1;
		long e;

		end[k] = (before & (1u << k)) ? -1 : (long)n; /* n: not here */
		if ((before & (1u << k)) || !(sc->seen & (1u << k)))
			continue;
		if (sc->taillen > 0 && plen > 1) {
			memcpy(win, sc->tail, sc->taillen);
			memcpy(win + sc->taillen, p, head);
			e = first_end(win, sc->taillen + head, sc->pat[k], plen);
			if (e >= (long)sc->taillen) {
				end[k] = e - (long)sc->taillen;
				continue;
			}
		}
		e = first_end(p, n, sc->pat[k], plen);
		if (e >= 0)
			end[k] = e;
	}
	/* Where each way to fire completes; the earliest one is where it fired (as in hit_of). */
	if (sc->word_only) {
		a = end[PAT_WORD];
	} else {
		a = max2(end[PAT_WORD], end[PAT_SET]);
		a = min2(a, max2(end[PAT_WORD], max2(end[PAT_COMMENT], end[PAT_KEY])));
		a = min2(a, end[PAT_SET_CONFIG]);
		a = min2(a, max2(end[PAT_SET], end[PAT_BACKSLASH]));
		a = min2(a, max2(end[PAT_SET], end[PAT_UNICODE]));
	}
	return a < 0 ? 0 : (size_t)a;
}

/* gscan_feed; the offset (a byte-by-byte search) only when want_at, else 0 for a hit. */
static size_t scan_feed(struct gscan *sc, const uint8_t *p, size_t n, bool want_at)
{
	uint8_t win[2 * (GSCAN_MAX_PAT - 1)];
	unsigned before = sc->seen;
	size_t keep, at = SIZE_MAX;

	if (n == 0)
		return hit_of(sc, before) ? 0 : SIZE_MAX;
	for (unsigned k = 0; k < ARRAY_SIZE(sc->pat); k++) {
		size_t plen = sc->len[k];

		if (sc->seen & (1u << k))
			continue;
		/* A match across the cut starts in the tail and ends in p's first plen-1 bytes. */
		if (sc->taillen > 0 && plen > 1) {
			size_t head = n < plen - 1 ? n : plen - 1;

			memcpy(win, sc->tail, sc->taillen);
			memcpy(win + sc->taillen, p, head);
			if (query_mentions((const char *)win, sc->taillen + head, sc->pat[k], plen))
				sc->seen |= 1u << k;
		}
		if (query_mentions((const char *)p, n, sc->pat[k], plen))
			sc->seen |= 1u << k;
	}
	if (hit_of(sc, before))
		at = 0;
	else if (hit_of(sc, sc->seen))
		at = want_at ? hit_offset(sc, before, p, n) : 0;
	/* Keep the last bytes of tail + p for the next cut. */
	if (n >= sizeof(sc->tail)) {
		memcpy(sc->tail, p + n - sizeof(sc->tail), sizeof(sc->tail));
		sc->taillen = sizeof(sc->tail);
		return at;
	}
	keep = sc->taillen + n <= sizeof(sc->tail) ? sc->taillen : sizeof(sc->tail) - n;
	memmove(sc->tail, sc->tail + sc->taillen - keep, keep);
	memcpy(sc->tail + keep, p, n);
	sc->taillen = (uint8_t)(keep + n);
	return at;
}

size_t gscan_feed(struct gscan *sc, const uint8_t *p, size_t n)
{
	return scan_feed(sc, p, n, true);
}

bool gscan_text(struct gscan *sc, const char *p, size_t n)
{
	gscan_reset(sc);
	sc->word_only = false;
	/*
	 * Every way to fire needs the key's word or "set" (set_config holds it):
	 * most statements have neither, and two searches tell.
	 */
	if (!query_mentions(p, n, sc->pat[PAT_WORD], sc->len[PAT_WORD]) &&
	    !query_mentions(p, n, "set", 3))
		return false;
	return scan_feed(sc, (const uint8_t *)p, n, false) != SIZE_MAX;
}

struct gframe_error *gframe_error_new(const uint8_t *msg, size_t len)
{
	struct gframe_error *e = malloc(sizeof(*e) + len);

	if (e == NULL)
		return NULL;
	memset(e, 0, sizeof(*e));
	memcpy(e->msg, msg, len);
	e->len = len;
	return e;
}

void gframe_init(struct gframe *f, const struct gframe_ops *ops, void *ctx, const char *key,
                 size_t max_hold, atomic_size_t *held, size_t held_cap)
{
	memset(f, 0, sizeof(*f));
	f->ops = ops;
	f->ctx = ctx;
	f->max_hold = max_hold;
	f->held = held;
	f->held_cap = held_cap;
	gscan_init(&f->scan, key);
}

static void hold_release(struct gframe *f)
{
	if (f->hold && f->held)
		atomic_fetch_sub(f->held, f->holdcap);
	free(f->hold);
	f->hold = NULL;
	f->holdlen = f->holdcap = 0;
}

void gframe_free(struct gframe *f)
{
	struct gframe_error *e;

	hold_release(f);
	free(f->ebuf);
	f->ebuf = NULL;
	while ((e = f->errors) != NULL) {
		f->errors = e->next;
		free(e);
	}
}

bool gframe_busy(const struct gframe *f)
{
	return f->errors != NULL || f->sheld > 0 || f->ehold;
}

/* Room for a message of n bytes in this framer and in the router's budget? Takes it if so. */
static bool hold_reserve(struct gframe *f, size_t n)
{
	size_t was;

	if (n > f->max_hold)
		return false;
	if (f->held) {
		was = atomic_fetch_add(f->held, n);
		if (was + n > f->held_cap) {
			atomic_fetch_sub(f->held, n);
			return false;
		}
	}
	f->hold = malloc(n);
	if (f->hold == NULL) {
		if (f->held)
			atomic_fetch_sub(f->held, n);
		return false;
	}
	f->holdcap = n;
	f->holdlen = 0;
	return true;
}

static inline bool to_server(struct gframe *f, const uint8_t *p, size_t n)
{
	return n == 0 || f->ops->to_server(f->ctx, p, n);
}

static inline bool to_client(struct gframe *f, const uint8_t *p, size_t n)
{
	return n == 0 || f->ops->to_client(f->ctx, p, n);
}

static bool send_zeros(struct gframe *f, size_t n)
{
	while (n > 0) {
		size_t take = n < sizeof(zeros) ? n : sizeof(zeros);

		if (!to_server(f, zeros, take))
			return false;
		n -= take;
	}
	return true;
}

/*
 * Adds to a message header the bytes of p[i, n) it still lacks (a header
 * may be cut across reads). Returns how many it took; whole when *hlen is 5.
 */
static size_t header_take(uint8_t hdr[5], uint8_t *hlen, const uint8_t *p, size_t n, size_t i)
{
	size_t take = 5u - *hlen < n - i ? 5u - *hlen : n - i;

	memcpy(hdr + *hlen, p + i, take);
	*hlen += (uint8_t)take;
	return take;
}

/* Counts what the server answers with a ReadyForQuery. */
static inline void count(struct gframe *f, uint8_t type)
{
	if (type == 'Q' || type == 'S' || type == 'F')
		f->syncs++;
}

/* Queues e; it stays until its marker's error comes, or its batch's ReadyForQuery. */
static void queue_error(struct gframe *f, struct gframe_error *e, uint64_t sync, uint64_t marker)
{
	struct gframe_error **pp;
	unsigned n = 0;

	e->sync = sync;
	e->marker = marker;
	e->next = NULL;
	for (pp = &f->errors; *pp; pp = &(*pp)->next)
		n++;
	*pp = e;
	/* Entries whose marker the server skipped go at their ReadyForQuery; cap them anyway. */
	if (n >= GFRAME_MAX_ERRORS) {
		e = f->errors;
		f->errors = e->next;
		free(e);
	}
}

/*
 * Sends, in place of a refused message, one the server fails in that very
 * place, so that PostgreSQL's own rules apply: the implicit transaction or
 * the block fails, the rest of an extended batch is skipped up to Sync. Its
 * error names the marker, and gframe_server puts e in its stead. A Query or
 * FunctionCall becomes a Query of an unknown column (its own ReadyForQuery
 * follows); an extended-protocol message becomes a Describe of a portal that
 * does not exist (the batch's Sync follows).
 */
static bool send_marker(struct gframe *f, uint8_t type, struct gframe_error *e)
{
	uint8_t m[5 + 64];
	uint64_t id = ++f->markers;
	int n;

	if (type == 'Q' || type == 'F') {
		n = snprintf((char *)m + 5, sizeof(m) - 5, "SELECT " GFRAME_MARKER "%llu",
			     (unsigned long long)id);
		m[0] = 'Q';
	} else {
		n = snprintf((char *)m + 6, sizeof(m) - 6, GFRAME_MARKER "%llu",
			     (unsigned long long)id);
		m[5] = 'P';
		n++;
		m[0] = 'D';
	}
	n++; /* the NUL */
	proto_put_u32(m + 1, (uint32_t)(4 + n));
	if (type == 'Q' || type == 'F') {
		f->syncs++;
		queue_error(f, e, f->syncs, id);
	} else {
		queue_error(f, e, f->syncs + 1, id);
	}
	return to_server(f, m, 5 + (size_t)n);
}

/* Asks the owner about a whole wanted message; forwards it, or refuses it. */
static bool judge(struct gframe *f, const uint8_t *m, size_t len, bool *passed)
{
	struct gframe_error *e = NULL;

	switch (f->ops->inspect(f->ctx, m, len, &e)) {
	case GFRAME_PASS:
		*passed = true;
		return true;
	case GFRAME_REFUSE:
		*passed = false;
		if (e == NULL)
			return false;
		return send_marker(f, m[0], e);
	case GFRAME_FAIL:
	default:
		free(e);
		return false;
	}
}

/* A wanted message that cannot be held: stream a statement, drop anything else. */
static bool overlong(struct gframe *f, uint8_t type, size_t len)
{
	struct gframe_error *e;

	if (type == 'Q' || type == 'P' || type == 'F') {
		/* A FunctionCall's arguments are raw bytes: the key's word alone spoils it. */
		gscan_reset(&f->scan);
		f->scan.word_only = type == 'F';
		f->body = GFRAME_BODY_STREAM;
		count(f, type);
		return true;
	}
	e = f->ops->overlong(f->ctx, type, len);
	if (e == NULL)
		return false;
	f->body = GFRAME_BODY_DROP;
	return send_marker(f, type, e);
}

/* The streamed statement turned out to need reading: spoil the rest of it. */
static bool poison(struct gframe *f)
{
	uint8_t type = f->chdr[0];
	/* The Query itself was counted when its header went; a Parse waits for the next Sync. */
	uint64_t sync = type == 'Q' ? f->syncs : f->syncs + 1;
	struct gframe_error *e =
	        f->ops->overlong(f->ctx, type, (size_t)proto_get_u32(f->chdr + 1) + 1);

	if (e == NULL)
		return false;
	queue_error(f, e, sync, 0);
	f->body = GFRAME_BODY_POISON;
	return true;
}

/* The current message's body is complete. */
static bool end_message(struct gframe *f)
{
	bool passed, ok = true;

	if (f->body == GFRAME_BODY_HOLD) {
		ok = judge(f, f->hold, f->holdlen, &passed);
		if (ok && passed) {
			ok = to_server(f, f->hold, f->holdlen);
			count(f, f->hold[0]);
		}
		hold_release(f);
	}
	f->body = GFRAME_BODY_PASS;
	return ok;
}

/*
 * The body bytes p[*i, *i + take) of the current message. p[*emit, *i) is
 * passed but not yet sent; anything that does not pass sends it first.
 */
static bool body_bytes(struct gframe *f, const uint8_t *p, size_t take, size_t *i, size_t *emit)
{
	size_t at;

	switch (f->body) {
	case GFRAME_BODY_PASS:
		break;
	case GFRAME_BODY_STREAM:
		at = gscan_feed(&f->scan, p + *i, take);
		if (at == SIZE_MAX)
			break;
		/* From the byte that completed a pattern on, nothing may reach the server. */
		if (!poison(f) || !to_server(f, p + *emit, *i + at - *emit) ||
		    !send_zeros(f, take - at))
			return false;
		*emit = *i + take;
		break;
	case GFRAME_BODY_POISON:
		if (!to_server(f, p + *emit, *i - *emit) || !send_zeros(f, take))
			return false;
		*emit = *i + take;
		break;
	case GFRAME_BODY_DROP:
		if (!to_server(f, p + *emit, *i - *emit))
			return false;
		*emit = *i + take;
		break;
	case GFRAME_BODY_HOLD:
		memcpy(f->hold + f->holdlen, p + *i, take);
		f->holdlen += take;
		*emit = *i + take;
		break;
	}
	f->cleft -= (uint32_t)take;
	*i += take;
	return f->cleft > 0 || end_message(f);
}

/*
 * A header completed at p[start, *i) (its first 5 - from_here bytes came in
 * earlier reads and wait in chdr). Decides what happens to the message.
 */
static bool header(struct gframe *f, const uint8_t *p, size_t n, size_t start, size_t *i,
                   size_t *emit, size_t from_here)
{
	uint8_t type = f->chdr[0];
	uint32_t mlen = proto_get_u32(f->chdr + 1);
	size_t earlier = 5 - from_here;
	bool passed;

	if (mlen < 4) {
		/* Not the protocol: let the server say so, and stop looking. */
		f->blind = true;
		if (!to_server(f, p + *emit, start - *emit) || !to_server(f, f->chdr, earlier))
			return false;
		*emit = start;
		*i = n;
		return true;
	}
	f->cleft = mlen - 4;
	f->body = GFRAME_BODY_PASS;
	if (f->cforwarded) {
		/* Part of this header went out before the framer saw it: it can only pass. */
		f->cforwarded = false;
		count(f, type);
		return f->cleft > 0 || end_message(f);
	}
	if (!f->ops->wants(f->ctx, type)) {
		/* The part of the header kept back from the last read goes first. */
		if (!to_server(f, p + *emit, start - *emit))
			return false;
		*emit = start;
		if (!to_server(f, f->chdr, earlier))
			return false;
		count(f, type);
		return f->cleft > 0 || end_message(f);
	}
	if (from_here == 5 && f->cleft <= n - *i && 5 + (size_t)f->cleft <= f->max_hold) {
		/* Whole in this read: judge it in place (what went before goes first). */
		if (!to_server(f, p + *emit, start - *emit))
			return false;
		*emit = start;
		if (!judge(f, p + start, 5 + f->cleft, &passed))
			return false;
		if (passed)
			count(f, type);
		else
			*emit = *i + f->cleft;
		*i += f->cleft;
		f->cleft = 0;
		return true;
	}
	if (!hold_reserve(f, (size_t)mlen + 1)) {
		/* Not held: the header goes now if the message streams. */
		if (!to_server(f, p + *emit, start - *emit))
			return false;
		*emit = start;
		if (!overlong(f, type, (size_t)mlen + 1))
			return false;
		if (f->body == GFRAME_BODY_DROP)
			*emit = *i;
		else if (!to_server(f, f->chdr, earlier))
			return false;
		return f->cleft > 0 || end_message(f);
	}
	/* Held until whole (mlen + 1 = the header and body). */
	if (!to_server(f, p + *emit, start - *emit))
		return false;
	memcpy(f->hold, f->chdr, 5);
	f->holdlen = 5;
	f->body = GFRAME_BODY_HOLD;
	*emit = *i;
	return f->cleft > 0 || end_message(f);
}

bool gframe_client(struct gframe *f, const uint8_t *p, size_t n)
{
	size_t i = 0, emit = 0;

	if (f->blind)
		return to_server(f, p, n);
	while (i < n) {
		size_t take, start;

		if (f->cleft > 0) {
			take = f->cleft < n - i ? f->cleft : n - i;
			if (!body_bytes(f, p, take, &i, &emit))
				return false;
			continue;
		}
		/* A header, perhaps cut across reads: keep back the part we have. */
		start = i;
		take = header_take(f->chdr, &f->chlen, p, n, i);
		i += take;
		if (f->chlen < 5) {
			if (f->cforwarded) /* its first bytes went around us: these pass too */
				break;
			if (!to_server(f, p + emit, start - emit))
				return false;
			emit = n;
			break;
		}
		f->chlen = 0;
		if (!header(f, p, n, start, &i, &emit, take))
			return false;
	}
	return to_server(f, p + emit, n - emit);
}

void gframe_skip(struct gframe *f, const uint8_t *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		if (f->cleft > 0) {
			size_t take = f->cleft < n - i ? f->cleft : n - i;

			f->cleft -= (uint32_t)take;
			i += take;
			continue;
		}
		i += header_take(f->chdr, &f->chlen, p, n, i);
		if (f->chlen == 5) {
			uint32_t mlen = proto_get_u32(f->chdr + 1);

			f->chlen = 0;
			f->cleft = mlen >= 4 ? mlen - 4 : 0;
			count(f, f->chdr[0]);
		}
	}
	/* A header cut here already went out: the framer cannot hold that message. */
	f->cforwarded = f->chlen > 0;
}

/* A ReadyForQuery: the errors of the batches it answers are dead (their markers were skipped). */
static void server_ready(struct gframe *f)
{
	struct gframe_error *e;

	f->zs++;
	while ((e = f->errors) != NULL && e->sync <= f->zs) {
		f->errors = e->next;
		free(e);
	}
}

/* Server headers only: the fast path when no error waits. */
static void server_scan(struct gframe *f, const uint8_t *p, size_t n)
{
	size_t i = 0;

	while (i < n && !f->sblind) {
		if (f->sleft > 0) {
			size_t take = f->sleft < n - i ? f->sleft : n - i;

			f->sleft -= (uint32_t)take;
			i += take;
			continue;
		}
		if (f->shlen == 0 && n - i >= 5) {
			/* A whole header in this read (the usual case): read it where it is. */
			uint32_t mlen = proto_get_u32(p + i + 1);
			bool ready = p[i] == 'Z';

			i += 5;
			f->scut = false;
			if (mlen < 4)
				f->sblind = true;
			f->sleft = mlen >= 4 ? mlen - 4 : 0;
			if (f->sleft <= n - i) {
				/* And its body too. */
				i += f->sleft;
				f->sleft = 0;
			}
			if (ready)
				server_ready(f);
			continue;
		}
		i += header_take(f->shdr, &f->shlen, p, n, i);
		if (f->shlen == 5) {
			uint32_t mlen = proto_get_u32(f->shdr + 1);

			f->shlen = 0;
			f->scut = false;
			if (mlen < 4)
				f->sblind = true;
			f->sleft = mlen >= 4 ? mlen - 4 : 0;
			if (f->shdr[0] == 'Z')
				server_ready(f);
		}
	}
	/* The start of this header went out: nothing can be held from it any more. */
	if (f->shlen > 0)
		f->scut = true;
}

/* Does the ErrorResponse body b name a marker, or is it the server's word on a spoiled message? */
static bool error_marker(const uint8_t *b, size_t n, uint64_t *id)
{
	static const char mk[] = GFRAME_MARKER;
	const uint8_t *at = memmem(b, n, mk, sizeof(mk) - 1);
	uint64_t v = 0;
	size_t i;

	if (at == NULL) {
		/*
		 * A protocol violation: PostgreSQL's word on a message we spoiled
		 * ("invalid message format" for bytes left over, or a FunctionCall
		 * whose arguments no longer add up).
		 */
		*id = 0;
		return memmem(b, n, "C08P01", 7) != NULL;
	}
	i = (size_t)(at - b) + sizeof(mk) - 1;
	if (i >= n || b[i] < '0' || b[i] > '9')
		return false;
	for (; i < n && b[i] >= '0' && b[i] <= '9' && v < UINT64_MAX / 10; i++)
		v = v * 10 + (uint64_t)(b[i] - '0');
	*id = v;
	return v != 0;
}

/*
 * A whole server ErrorResponse was held: if it answers one of our markers
 * (or a spoiled statement), our error goes in its place, and a marker's
 * older errors are dead (the server skipped their markers); else it goes as
 * it came.
 */
static bool server_error(struct gframe *f)
{
	struct gframe_error *e, *rest, *old;
	uint64_t id;
	bool ok;

	if (!error_marker(f->ebuf + 5, f->elen - 5, &id))
		return to_client(f, f->ebuf, f->elen);
	for (e = f->errors; e && e->marker != id; e = e->next)
		;
	if (e == NULL) /* a marker we no longer know, or a client's own 08P01 */
		return to_client(f, f->ebuf, f->elen);
	ok = to_client(f, e->msg, e->len);
	if (id == 0) {
		/* A protocol violation names no marker: take only the oldest spoiled statement. */
		struct gframe_error **pp = &f->errors;

		while (*pp != e)
			pp = &(*pp)->next;
		*pp = e->next;
		free(e);
		return ok;
	}
	/* The server answers in order: the older markers were skipped. */
	rest = e->next;
	while ((old = f->errors) != rest) {
		f->errors = old->next;
		free(old);
	}
	return ok;
}

/* The held ErrorResponse is whole: judge it, then let it go. */
static bool server_error_done(struct gframe *f)
{
	bool ok = server_error(f);

	f->ehold = false;
	free(f->ebuf);
	f->ebuf = NULL;
	f->elen = 0;
	return ok;
}

bool gframe_server(struct gframe *f, const uint8_t *p, size_t n)
{
	size_t i = 0, emit = 0;

	if (!gframe_busy(f) || f->sblind) {
		server_scan(f, p, n);
		return to_client(f, p, n);
	}
	while (i < n) {
		size_t take, start;
		uint32_t mlen;

		if (f->sleft > 0) {
			take = f->sleft < n - i ? f->sleft : n - i;
			if (f->ehold) {
				memcpy(f->ebuf + f->elen, p + i, take);
				f->elen += take;
				emit = i + take;
			}
			f->sleft -= (uint32_t)take;
			i += take;
			if (f->sleft == 0 && f->ehold && !server_error_done(f))
				return false;
			continue;
		}
		/* A header. Only an ErrorResponse may be held (and replaced); the rest passes. */
		start = i;
		take = header_take(f->shdr, &f->shlen, p, n, i);
		i += take;
		if (f->scut || f->shdr[0] != 'E' || f->errors == NULL) {
			if (f->shlen < 5) {
				f->scut = true; /* its first bytes go now */
				break;
			}
			f->shlen = 0;
			f->scut = false;
			mlen = proto_get_u32(f->shdr + 1);
			if (mlen < 4) {
				f->sblind = true;
				server_scan(f, p + i, n - i);
				break;
			}
			f->sleft = mlen - 4;
			if (f->shdr[0] == 'Z')
				server_ready(f);
			if (!gframe_busy(f)) {
				/* Nothing waits any more: the rest of this read needs no holding. */
				server_scan(f, p + i, n - i);
				break;
			}
			continue;
		}
		/* An ErrorResponse while errors wait: hold it whole (or as much of its header as came). */
		if (!to_client(f, p + emit, start - emit))
			return false;
		emit = i;
		if (f->shlen < 5) {
			f->sheld = f->shlen;
			break;
		}
		f->shlen = 0;
		f->sheld = 0;
		mlen = proto_get_u32(f->shdr + 1);
		if (mlen < 4 || mlen - 4 > GFRAME_ERR_MAX) {
			/* Not ours (ours are small): let it go as it is. */
			if (!to_client(f, f->shdr, 5))
				return false;
			f->sblind = mlen < 4;
			f->sleft = mlen >= 4 ? mlen - 4 : 0;
			if (f->sblind) {
				server_scan(f, p + i, n - i);
				break;
			}
			continue;
		}
		f->ebuf = malloc(5 + (size_t)mlen - 4);
		if (f->ebuf == NULL)
			return false;
		memcpy(f->ebuf, f->shdr, 5);
		f->elen = 5;
		f->sleft = mlen - 4;
		f->ehold = true;
		if (f->sleft == 0 && !server_error_done(f))
			return false;
	}
	return to_client(f, p + emit, n - emit);
}
