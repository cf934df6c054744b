/* tests/tools/mallocount.c: LD_PRELOAD shim proving that the broker does
 * not allocate once its loop runs. It arms itself at the first poll() and
 * reports every malloc/calloc/realloc after that on stderr as
 * "mallocount: FN(SIZE) after the loop started". Test tool only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static int armed;
static unsigned long reports;

static void
note(const char *fn, size_t n)
{
    char line[96];
    int k;

    if (!armed || reports > 50) return;
    reports++;
    k = snprintf(line, sizeof line,
                 "mallocount: %s(%zu) after the loop started\n", fn, n);
    if (k > 0) (void)!write(2, line, (size_t)k);
}

void *
malloc(size_t n)
{
    note("malloc", n);
    return __libc_malloc(n);
}

void *
calloc(size_t a, size_t b)
{
    note("calloc", a * b);
    return __libc_calloc(a, b);
}

void *
realloc(void *p, size_t n)
{
    note("realloc", n);
    return __libc_realloc(p, n);
}

void
free(void *p)
{
    __libc_free(p);
}

int
poll(struct pollfd *f, nfds_t n, int t)
{
    static int (*real)(struct pollfd *, nfds_t, int);

    if (!real) {
        real = (int (*)(struct pollfd *, nfds_t, int))dlsym(RTLD_NEXT, "poll");
        (void)!write(2, "mallocount: armed\n", 18);
        armed = 1;
    }
    return real(f, n, t);
}
