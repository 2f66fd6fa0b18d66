/*
 * init.c - mproc_init: where a spawned child takes over from main().
 *
 * A parent returns at once. A spawned child reads its request, closes what
 * it must not hold, ties itself to its parent if it is a daemon, resolves
 * its entry, acknowledges (the parent's start returns only then) and runs
 * the entry; the forkserver helper enters its loop. Neither returns.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

int mproc_init(int *argc, char ***argv)
{
    if (argc && argv && *argv && *argc > 0)
        mproc__spawn_set_argv0((*argv)[0]);

    mproc__request_t req;
    void *buf = NULL;
    int sock;
    if (!mproc__spawn_receive(&req, &buf, &sock)) {
        if (argc && argv && *argv)
            mproc__upgrade_record(*argc, *argv); /* for a supervisor's upgrade */
        return 0;
    }

    int keep[MPROC__MAX_FDS + 3];
    size_t nkeep = 0;
    keep[nkeep++] = sock;
    for (uint32_t i = 0; i < req.nfds; i++)
        keep[nkeep++] = req.fds[i];
    if (req.exit_fd >= 0)
        keep[nkeep++] = req.exit_fd;
    if (req.tracker_fd >= 0)
        keep[nkeep++] = req.tracker_fd;
    if (req.flags & MPROC__F_CLOSE_FDS)
        mproc__close_fds_except(keep, nkeep);

    if (req.type == MPROC__REQ_SERVER)
        mproc__forkserver_serve(sock, &req);

    int rc = 0;
    mproc_entry_fn fn = NULL;
    if (req.flags & MPROC__F_DAEMON)
        rc = mproc__child_bind_to_parent(req.ppid);
    if (rc == 0)
        rc =
            (req.flags & MPROC__F_HAS_ENTRY) ? mproc__entry_resolve(&req.entry, &fn) : MPROC_EPROTO;
    if (req.exit_fd >= 0)
        mproc__child_adopt_exit_fd(req.exit_fd);
    if (req.tracker_fd >= 0)
        mproc__tracker_adopt(req.tracker_fd, req.tracker_pid);
    mproc__reply_send(sock, rc, getpid(), NULL, 0);
    close(sock);
    if (rc < 0)
        mproc__child_fail(rc);
    /* Named: that name; else the program's, as a forked copy has it (the
     * exec through /proc/self/exe would otherwise show "exe"). */
    mproc__child_set_name(req.name ? req.name : mproc__program_name());
    mproc__child_run(fn, req.arg, (size_t)req.arglen);
}
