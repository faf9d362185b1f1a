/*
 * cancel.h - backend key -> coordinator map, and CancelRequest forwarding.
 *
 * Each live session registers the BackendKeyData its server sent (process
 * id and secret: 4 bytes in protocol 3.0, up to 256 in 3.2) together with
 * the address of the host it came from. A CancelRequest reaching the router
 * is looked up here and sent, unchanged, to that host on a new connection.
 * Unknown keys are dropped silently, as PostgreSQL does. The map takes a
 * mutex so that a request arriving on any event-loop thread finds its
 * session.
 */
#ifndef TR_CANCEL_H
#define TR_CANCEL_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common.h"

union cancel_addr {
	struct sockaddr sa;
	struct sockaddr_in in4;
	struct sockaddr_in6 in6;
};

/* Embedded in a session; zero-initialised means "not registered". */
struct cancel_entry {
	struct cancel_entry *next; /* bucket chain */
	uint64_t hash;
	uint32_t pid;
	uint16_t keylen;
	bool linked;
	uint8_t *key; /* owned */
	union cancel_addr addr;
	/* Mapped entries: the key we gave the client stands for this server key. */
	uint32_t spid;
	uint16_t skeylen; /* 0: not mapped, the client holds the server's own key */
	uint8_t *skey;	  /* owned */
};

struct cancel_map;

struct cancel_map *cancel_map_new(void) MUSTCHECK;
void cancel_map_free(struct cancel_map *m);

/* Registers e (re-registering replaces). Returns 0 or UV_ENOMEM / UV_EINVAL. */
int cancel_register(struct cancel_map *m, struct cancel_entry *e, uint32_t pid,
		    const uint8_t *key, size_t keylen, const struct sockaddr *addr) MUSTCHECK;
/*
 * Registers e under the key (pid, key) that the router gave its client,
 * standing for the server's (spid, skey): a router that answers a client's
 * login itself hands out its own BackendKeyData before it has a server.
 */
int cancel_register_mapped(struct cancel_map *m, struct cancel_entry *e, uint32_t pid,
			   const uint8_t *key, size_t keylen, uint32_t spid, const uint8_t *skey,
			   size_t skeylen, const struct sockaddr *addr) MUSTCHECK;
/*
 * For a CancelRequest packet (pid, key) received: the server address and
 * the packet to send it (the same packet, or one with the server's key for
 * a mapped entry) in out (cap >= 12 + PROTO_MAX_CANCEL_KEY). False if unknown.
 */
bool cancel_lookup_packet(struct cancel_map *m, uint32_t pid, const uint8_t *key, size_t keylen,
			  const uint8_t *packet, size_t len, union cancel_addr *addr, uint8_t *out,
			  size_t *outlen);
/* Removes e if registered and frees its key copy. */
void cancel_unregister(struct cancel_map *m, struct cancel_entry *e);

/* Copies the server address for (pid, key) into *out; false if unknown. */
bool cancel_lookup(struct cancel_map *m, uint32_t pid, const uint8_t *key, size_t keylen,
		   union cancel_addr *out);

/* Sends packet (a whole CancelRequest) to addr on a new connection; fire and forget. */
void cancel_forward(uv_loop_t *loop, const union cancel_addr *addr, const uint8_t *packet,
		    size_t len);

size_t cancel_count(struct cancel_map *m);

#endif /* TR_CANCEL_H */
