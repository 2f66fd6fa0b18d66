/*
 * test_errors.c - mproc_strerror() and mproc_version().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "mproc.h"
#include "testutil.h"

static const int mproc_codes[] = {
    MPROC_ESTATE,  MPROC_ETHREADS, MPROC_EBOOTSTRAP, MPROC_EENTRY, MPROC_ESERVER, MPROC_EPROTO,
    MPROC_ESTATUS, MPROC_ENOINIT,  MPROC_EBROKEN,    MPROC_ETYPE,  MPROC_EWORKER, MPROC_ETASK,
};
#define N_MPROC_CODES ((int)(sizeof mproc_codes / sizeof mproc_codes[0]))

static const int errno_codes[] = {
    EPERM,  ENOENT, ESRCH,  EINTR,  EIO,    EBADF, ECHILD,    EAGAIN, ENOMEM,
    EACCES, EBUSY,  EEXIST, EINVAL, EMFILE, EPIPE, ETIMEDOUT, ENOSYS, EPROTO,
};
#define N_ERRNO_CODES ((int)(sizeof errno_codes / sizeof errno_codes[0]))

static int sane(const char *s)
{
    if (!s || !s[0])
        return 0;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\t')
            return 0; /* no control characters, no newline */
    return strlen(s) < 512;
}

static void test_version(void)
{
    const char *v = mproc_version();
    TU_REQUIRE(v != NULL);
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", MPROC_VERSION_MAJOR, MPROC_VERSION_MINOR,
             MPROC_VERSION_PATCH);
    TU_CHECK_EQ_STR(v, want);
    TU_CHECK_EQ_STR(v, "0.1.0");
    /* stable: the same string every time */
    TU_CHECK_EQ_STR(mproc_version(), v);
}

static void test_strerror_errno_codes(void)
{
    for (int i = 0; i < N_ERRNO_CODES; i++) {
        tu_context("code=-%d", errno_codes[i]);
        const char *m = mproc_strerror(-errno_codes[i]);
        TU_CHECK(sane(m));
    }
    tu_context(NULL);
    /* different errno codes get different messages */
    for (int i = 0; i < N_ERRNO_CODES; i++)
        for (int j = i + 1; j < N_ERRNO_CODES; j++) {
            if (errno_codes[i] == errno_codes[j])
                continue; /* EAGAIN == EWOULDBLOCK style aliases */
            const char *a = mproc_strerror(-errno_codes[i]);
            const char *b = mproc_strerror(-errno_codes[j]);
            if (a && b && strcmp(a, b) == 0)
                tu_fail(__FILE__, __LINE__, "codes -%d and -%d share the message \"%s\"",
                        errno_codes[i], errno_codes[j], a);
        }
    /* the message of an errno code is about that errno: it mentions what
     * strerror() says (case-insensitively), or at least differs from the
     * message for an unknown code */
    const char *unknown = mproc_strerror(-99999);
    TU_CHECK(sane(unknown));
    const char *inval = mproc_strerror(-EINVAL);
    const char *tmo = mproc_strerror(-ETIMEDOUT);
    if (unknown && inval && tmo) {
        TU_CHECK(strcmp(inval, unknown) != 0);
        TU_CHECK(strcmp(tmo, unknown) != 0);
        TU_CHECK(strcasestr(inval, strerror(EINVAL)) != NULL ||
                 strcasestr(inval, "invalid") != NULL);
        TU_CHECK(strcasestr(tmo, "time") != NULL);
    }
}

static void test_strerror_mproc_codes(void)
{
    const char *unknown = mproc_strerror(-10999);
    TU_REQUIRE(sane(unknown));
    char copies[N_MPROC_CODES][512];
    for (int i = 0; i < N_MPROC_CODES; i++) {
        tu_context("code=%d", mproc_codes[i]);
        const char *m = mproc_strerror(mproc_codes[i]);
        if (!TU_CHECK(sane(m))) {
            copies[i][0] = '\0';
            continue;
        }
        snprintf(copies[i], sizeof copies[i], "%s", m);
        /* a known code never gets the generic message */
        if (strcmp(m, unknown) == 0)
            tu_fail(__FILE__, __LINE__, "code %d gets the generic unknown-code message \"%s\"",
                    mproc_codes[i], m);
        /* nor an errno message: these codes are beyond the errno range */
        for (int j = 0; j < N_ERRNO_CODES; j++)
            if (strcmp(m, mproc_strerror(-errno_codes[j])) == 0)
                tu_fail(__FILE__, __LINE__, "code %d has the same message as -%d: \"%s\"",
                        mproc_codes[i], errno_codes[j], m);
    }
    tu_context(NULL);
    for (int i = 0; i < N_MPROC_CODES; i++)
        for (int j = i + 1; j < N_MPROC_CODES; j++)
            if (copies[i][0] && strcmp(copies[i], copies[j]) == 0)
                tu_fail(__FILE__, __LINE__, "codes %d and %d share the message \"%s\"",
                        mproc_codes[i], mproc_codes[j], copies[i]);
    /* The strings are static: a later call does not change an earlier one. */
    const char *first = mproc_strerror(MPROC_ESTATE);
    for (int i = 0; i < N_MPROC_CODES; i++)
        (void)mproc_strerror(mproc_codes[i]);
    (void)mproc_strerror(-EINVAL);
    (void)mproc_strerror(-10999);
    (void)mproc_strerror(123456);
    TU_CHECK_EQ_STR(first, copies[0]);
    TU_CHECK(mproc_strerror(MPROC_ESTATE) == first ||
             strcmp(mproc_strerror(MPROC_ESTATE), first) == 0);
}

static void test_strerror_unknown_and_zero(void)
{
    static const int odd[] = {
        0,      1,      22,     4095,   9999,      -4096,   -9999,   -10000,      -10010,
        -10999, -11000, -20000, -99999, 123456789, INT_MAX, INT_MIN, INT_MIN + 1,
    };
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        tu_context("code=%d", odd[i]);
        const char *m = mproc_strerror(odd[i]);
        TU_CHECK(sane(m));
    }
    tu_context(NULL);
    /* 0 is success, not an error message borrowed from some code */
    const char *zero = mproc_strerror(0);
    if (zero) {
        TU_CHECK(strcmp(zero, mproc_strerror(-EINVAL)) != 0);
        TU_CHECK(strcmp(zero, mproc_strerror(MPROC_ESTATE)) != 0);
    }
    /* codes just outside mproc's range (MPROC_ESTATE down to MPROC_ETASK)
     * are unknown, not mislabelled */
    const char *below = mproc_strerror(MPROC_ETASK - 1);
    const char *above = mproc_strerror(MPROC_ESTATE + 1);
    if (below && above) {
        for (int i = 0; i < N_MPROC_CODES; i++) {
            TU_CHECK(strcmp(below, mproc_strerror(mproc_codes[i])) != 0);
            TU_CHECK(strcmp(above, mproc_strerror(mproc_codes[i])) != 0);
        }
    }
}

static const tu_case_t cases[] = {
    TU_CASE(test_version),
    TU_CASE(test_strerror_errno_codes),
    TU_CASE(test_strerror_mproc_codes),
    TU_CASE(test_strerror_unknown_and_zero),
    TU_END,
};

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    return tu_main(argc, argv, cases);
}
