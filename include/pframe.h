/*
 * pframe.h - where a pooled session stands (pure: bytes in, state out).
 *
 * A session on a pooled server connection sends its client's bytes through
 * pframe_client() and its server's through pframe_server(), cut wherever
 * the reads fell. The framer only reads message headers (and the status
 * byte of ReadyForQuery); it copies nothing and changes nothing. It tells
 * the owner two things: where the client's Terminate begins (that message
 * must not reach a server connection that outlives the client), and
 * whether the server connection is clean at this moment: at a message
 * boundary both ways, every Query, Sync and FunctionCall answered by its
 * ReadyForQuery, no extended-protocol message waiting for a Sync, and the
 * last ReadyForQuery said idle ('I'), in a transaction ('T') or failed
 * ('E').
 */
#ifndef TR_PFRAME_H
#define TR_PFRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pframe_dir {
	uint8_t hdr[5];
	uint8_t hlen;  /* header bytes seen of the current message */
	uint32_t left; /* body bytes of the current message still to come */
	bool broken;   /* a length that makes no sense: never clean again */
};

struct pframe {
	struct pframe_dir c, s;
	uint64_t syncs;  /* Query, Sync and FunctionCall sent: each gets one ReadyForQuery */
	uint64_t zs;     /* ReadyForQuery received */
	bool unsynced;   /* extended-protocol messages since the last Sync */
	bool zbody;      /* the next server body byte is a ReadyForQuery status */
	char txn;        /* the last ReadyForQuery's status */
	bool terminated; /* the client sent Terminate */
};

/* A fresh framer: both directions at a message boundary, the server idle. */
void pframe_init(struct pframe *f);
/*
 * Client bytes for the server. Returns how many of the n bytes at p go to
 * the server: all of them, or those before a Terminate (f->terminated is
 * then set, and the rest must be dropped). After a Terminate it returns 0.
 */
size_t pframe_client(struct pframe *f, const uint8_t *p, size_t n);
/* Server bytes for the client. */
void pframe_server(struct pframe *f, const uint8_t *p, size_t n);
/*
 * May the server connection be reset and reused now? *txn gets the
 * transaction status ('I', 'T' or 'E'; not 'I' means a ROLLBACK first).
 */
bool pframe_clean(const struct pframe *f, char *txn);

#endif /* TR_PFRAME_H */
