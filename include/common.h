/*
 * common.h - small macros shared by every module.
 *
 * Nothing here allocates or does I/O. TR_ASSERT is for our own bugs only:
 * it is on in every build, logs file:line and aborts (systemd restarts us).
 */
#ifndef TR_COMMON_H
#define TR_COMMON_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#define MUSTCHECK	       __attribute__((warn_unused_result))
#define PRINTF_LIKE(f, a)      __attribute__((format(printf, f, a)))
#define ARRAY_SIZE(a)	       (sizeof(a) / sizeof((a)[0]))
#define container_of(p, T, m) ((T *)(void *)((char *)(p)-offsetof(T, m)))
#define UNUSED(x)	       ((void)(x))

#define TR_ASSERT(cond)                                                                    \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "assertion failed: %s at %s:%d\n", #cond, __FILE__, \
				__LINE__);                                                 \
			abort();                                                           \
		}                                                                          \
	} while (0)

#endif /* TR_COMMON_H */
