/* Counts the calls that take memory from the C heap (malloc, calloc,
 * realloc and the aligned ones) in the process it is preloaded into, and
 * writes the count, in decimal, to the file $ALLOC_COUNT_FILE when the
 * process exits. Built and used by tests/allocations.rs. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

static atomic_ulong count;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);

/* dlsym itself may call calloc before the real one is known. */
static _Alignas(16) char bootstrap[8192];
static size_t bootstrap_used;
static int resolving;

static void *from_bootstrap(size_t size)
{
    size_t start = (bootstrap_used + 15) & ~(size_t)15;
    if (start + size > sizeof bootstrap)
        return NULL;
    bootstrap_used = start + size;
    return bootstrap + start;
}

static int in_bootstrap(const void *p)
{
    return (const char *)p >= bootstrap && (const char *)p < bootstrap + sizeof bootstrap;
}

static void resolve(void)
{
    resolving = 1;
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_free = dlsym(RTLD_NEXT, "free");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    resolving = 0;
}

void *malloc(size_t size)
{
    if (!real_malloc) {
        if (resolving)
            return from_bootstrap(size);
        resolve();
    }
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return real_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    if (!real_calloc) {
        if (resolving)
            return n && size > (size_t)-1 / n ? NULL : from_bootstrap(n * size);
        resolve();
    }
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return real_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    if (!real_realloc)
        resolve();
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return real_realloc(p, size);
}

void free(void *p)
{
    if (in_bootstrap(p))
        return;
    if (!real_free)
        resolve();
    real_free(p);
}

int posix_memalign(void **out, size_t align, size_t size)
{
    if (!real_posix_memalign)
        resolve();
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return real_posix_memalign(out, align, size);
}

void *aligned_alloc(size_t align, size_t size)
{
    if (!real_aligned_alloc)
        resolve();
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return real_aligned_alloc(align, size);
}

void *memalign(size_t align, size_t size)
{
    if (!real_memalign)
        resolve();
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return real_memalign(align, size);
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("ALLOC_COUNT_FILE");
    if (!path)
        return;
    char text[32];
    size_t at = sizeof text;
    unsigned long value = atomic_load(&count);
    do {
        text[--at] = (char)('0' + value % 10);
        value /= 10;
    } while (value && at > 0);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t written = write(fd, text + at, sizeof text - at);
    (void)written;
    close(fd);
}
