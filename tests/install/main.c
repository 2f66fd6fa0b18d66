/*
 * An outside program built against an installed mproc (see check.sh): the
 * header and the library it finds must agree on the version.
 */
#include <stdio.h>
#include <string.h>

#include <mproc.h>

int main(int argc, char **argv)
{
    if (mproc_init(&argc, &argv) < 0)
        return 1;

    char header[32];
    snprintf(header, sizeof header, "%d.%d.%d", MPROC_VERSION_MAJOR, MPROC_VERSION_MINOR,
             MPROC_VERSION_PATCH);
    const char *lib = mproc_version();
    printf("mproc %s\n", lib);
    if (strcmp(lib, header) != 0) {
        fprintf(stderr, "version mismatch: header %s, library %s\n", header, lib);
        return 1;
    }
    return 0;
}
