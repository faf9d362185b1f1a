/*
 * sdnotify.h - systemd's notify protocol without libsystemd: one datagram to
 * $NOTIFY_SOCKET. Does nothing when the variable is not set.
 */
#ifndef TR_SDNOTIFY_H
#define TR_SDNOTIFY_H

void sdnotify(const char *state);

#endif /* TR_SDNOTIFY_H */
