/*
 * console.h - the admin console: a session that logged in to the virtual
 * database tenant_router as one of admin_users talks to this module
 * instead of a server.
 *
 * The session's code feeds the console the client's messages, one whole
 * message at a time, and the console answers through the session's send
 * function: RowDescription / DataRow / CommandComplete / ReadyForQuery on
 * the simple query protocol. SHOW, ROUTE, PAUSE, RESUME and KILL are
 * answered at once on the session's own loop (brief locks only). RELOAD,
 * SHUTDOWN, PIN and UNPIN go to the main loop (router.h, struct admin_req)
 * and are answered when it is done; messages that arrive meanwhile are
 * queued (bounded) and run in order afterwards. Nothing here blocks the
 * loop.
 *
 * The console calls the session only through struct console_io; it never
 * frees or closes the session itself.
 */
#ifndef TR_CONSOLE_H
#define TR_CONSOLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "roster.h"

struct router;
struct console;

/* What the console may ask of its session. */
struct console_io {
	/* Queues n bytes for the client; false if the session is closing. */
	bool (*send)(void *arg, const uint8_t *p, size_t n);
	/* The console is done (Terminate, or a protocol error it already reported). */
	void (*close)(void *arg);
	void *arg; /* borrowed: the session */
};

/* The most client bytes queued behind a command in flight; past it the session is closed. */
#define CONSOLE_QUEUE_MAX (1u << 20)

/* A console for user on rt's loop; NULL when out of memory. */
struct console *console_new(struct router *rt, const char *user,
                            const struct console_io *io) MUSTCHECK;

/*
 * One client message: type and body (len bytes, without the 5-byte
 * header). May call io->send any number of times, and io->close once
 * (after which the caller must not feed the console again).
 */
void console_message(struct console *c, uint8_t type, const uint8_t *body, size_t len);

/* Frees c; an answer still on its way from the main loop is dropped. On c's loop. */
void console_free(struct console *c);

/*
 * THE check a new session makes before it connects anywhere for a tenant:
 * whether the tenant's new sessions must wait now (PAUSE TENANT, or a pin
 * change in flight or not yet published to this loop), see
 * roster_tenant_held(). Records the tenant on e.
 */
enum roster_hold tenant_held(const struct router *rt, struct roster_entry *e, const char *tenant,
                             size_t len);

#endif /* TR_CONSOLE_H */
