/* tests/fuzz_replay.c: a plain main() that feeds every file of the given
 * directories (or the given files) to a fuzz target's
 * LLVMFuzzerTestOneInput(), twice, so that `make test` replays the corpus
 * with gcc + ASan + UBSan and no libFuzzer. Link it with one target:
 *   cc $(SAN) tests/fuzz_replay.c tests/fuzz_proxy.c -o ...
 * Each input is copied into a buffer of exactly its size, so an over-read
 * is caught. Exits 0 after "N inputs replayed"; 2 when a path cannot be
 * read or nothing was found (an empty corpus is a mistake). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole regular file into a malloc'ed buffer of exactly its size
 * (1 byte for an empty file). Returns NULL with errno set on failure. */
static uint8_t *
replay_slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    uint8_t *b;

    if (!f) return NULL;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0) {
        fclose(f);
        return NULL;
    }
    *size = (size_t)st.st_size;
    b = malloc(*size ? *size : 1);
    if (!b || fread(b, 1, *size, f) != *size) {
        free(b);
        fclose(f);
        errno = EIO;
        return NULL;
    }
    fclose(f);
    return b;
}

static int
replay_file(const char *path)
{
    size_t size;
    uint8_t *b = replay_slurp(path, &size);
    int i;

    if (!b) {
        fprintf(stderr, "fuzz_replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (i = 0; i < 2; i++) /* twice: state left by the first run shows */
        LLVMFuzzerTestOneInput(b, size);
    free(b);
    return 0;
}

/* Replays a file, or every regular file of a directory in name order.
 * Returns the number of inputs, or -1. */
static long
replay_path(const char *path)
{
    struct stat st;
    struct dirent **ent;
    static char full[4096]; /* PATH_MAX; static: frame limit */
    long n = 0;
    int k, i;

    if (stat(path, &st) != 0) {
        fprintf(stderr, "fuzz_replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) return replay_file(path) ? -1 : 1;
    k = scandir(path, &ent, NULL, alphasort);
    if (k < 0) {
        fprintf(stderr, "fuzz_replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (i = 0; i < k; i++) {
        int w = snprintf(full, sizeof full, "%s/%s", path, ent[i]->d_name);
        if (w > 0 && (size_t)w < sizeof full && stat(full, &st) == 0 &&
            S_ISREG(st.st_mode)) {
            if (n >= 0 && replay_file(full) == 0)
                n++;
            else
                n = -1;
        }
        free(ent[i]);
    }
    free(ent);
    return n;
}

int
main(int argc, char **argv)
{
    long total = 0;
    int i;

    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
        return 2;
    }
    for (i = 1; i < argc; i++) {
        long n = replay_path(argv[i]);
        if (n < 0) return 2;
        total += n;
    }
    if (total == 0) {
        fprintf(stderr, "fuzz_replay: no input files found\n");
        return 2;
    }
    printf("%s: %ld inputs replayed twice, no crash\n", argv[0], total);
    return 0;
}
