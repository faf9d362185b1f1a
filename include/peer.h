/*
 * peer.h - routers on one machine that serve the same addresses: a new
 * process takes over the old one's listening sockets, and a CancelRequest
 * for a session of another process is passed on to it.
 *
 * Each process binds a datagram socket `tenant-router-<pid>.sock` in
 * `[router] peer_socket_dir`. Only processes of the same user are answered
 * (SCM_CREDENTIALS). The module is one per process; its functions run on
 * the main loop except peer_forward_cancel, which any loop may call.
 */
#ifndef TR_PEER_H
#define TR_PEER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common.h"

struct cancel_map;

/*
 * Fills fds with the process's listening sockets (borrowed: the caller
 * duplicates nothing, the descriptors are only sent) and returns how many;
 * 0 while draining. Called on the main loop.
 */
typedef size_t (*peer_listeners_fn)(int *fds, size_t cap);

/*
 * Binds this process's socket in dir and starts answering peers on loop.
 * cancels is borrowed for the process's life. Returns 0 or a negative errno.
 */
int peer_start(uv_loop_t *loop, const char *dir, struct cancel_map *cancels,
               peer_listeners_fn listeners) MUSTCHECK;

/*
 * Asks every peer for its listening sockets and waits up to timeout_ms for
 * the answers (blocking: for start-up, before this process listens). Fills
 * fds with what arrived, each socket once, owned by the caller; returns the
 * count (0 without peers).
 */
size_t peer_take_listeners(int *fds, size_t cap, unsigned timeout_ms);

/*
 * Passes a CancelRequest packet whose key is not ours to every peer, which
 * forwards it if the key is one of its sessions'. Fire and forget; safe
 * from any thread once peer_start has returned.
 */
void peer_forward_cancel(const uint8_t *packet, size_t len);

/* Stops answering and removes this process's socket. */
void peer_stop(void);

#endif /* TR_PEER_H */
