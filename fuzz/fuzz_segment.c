/*
 * fuzz_segment.c - a shared memory segment as another process may have
 * left it (shm.c): any header and any block list must be refused
 * (MPROC_ETYPE) or walked within the mapping. The input is the segment's
 * bytes; the harness gives it the id the reference names and a free arena
 * lock (a lock word is not a length: a process that scribbles over a lock
 * can always hold it for ever), then attaches and uses the arena.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < sizeof(mproc__shm_header_t) || size > (1u << 20))
        return 0;
    int fd = memfd_create("fuzz-seg", MFD_CLOEXEC);
    if (fd < 0)
        abort();
    if (write(fd, data, size) != (ssize_t)size)
        abort();
    mproc__shm_header_t h;
    memcpy(&h, data, sizeof h);
    memset(&h.arena_lock, 0, sizeof h.arena_lock);
    if (pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
        abort();

    mproc_shm_ref_t ref = {0};
    mproc_shm_t *probe = NULL;
    /* A ref as mproc_shm_ref makes one, naming the input's own id. */
    if (mproc_shm_create(&probe, 4096) == 0) {
        mproc_shm_ref(probe, &ref);
        mproc_shm_close(probe);
    }
    ref.fd = fd;
    memcpy(ref.id, h.id, sizeof ref.id);

    mproc_shm_t *shm = NULL;
    if (mproc_shm_attach(&shm, &ref) != 0) {
        close(fd);
        return 0;
    }
    void *p = NULL;
    size_t count = 0;
    mproc_shm_find(shm, "a", MPROC_OBJ_ANY, &p);
    mproc_array_open(shm, "arr", MPROC_INT64, &p, &count);
    if (p) {
        uint64_t o = 0;
        if (mproc_shm_offset(shm, p, &o) != 0 || o + (uint64_t)count * 8 > size)
            abort(); /* an array reaching past the segment */
    }
    for (uint64_t off = MPROC__SHM_HEADER; off < size && off < MPROC__SHM_HEADER + 4096; off += 64)
        if (mproc_shm_at(shm, off, MPROC_OBJ_ANY, &p) == 0) {
            size_t n = mproc_shm_object_size(shm, p);
            uint64_t o = 0;
            if (mproc_shm_offset(shm, p, &o) != 0 || o + n > size)
                abort(); /* an object reaching past the segment */
            mproc_shm_free(shm, p);
            break;
        }
    if (mproc_shm_alloc(shm, 100, "new", &p) == 0)
        memset(p, 0xa5, 100);
    mproc_shm_close(shm); /* closes fd: the handle adopted it */
    return 0;
}
