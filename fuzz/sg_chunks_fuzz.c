/* A libFuzzer target for the native chunk decoder's entry point, sg_chunks_decode()
 * (sg_chunks.h).
 *
 * Built and run by `SG_FUZZ_TARGET=chunks fuzz/run.sh` (clang, -fsanitize=fuzzer,address,
 * undefined; sg_chunks.c without its mappings, SG_CH_NO_MMAP, so that ASan sees every array).
 * An input is three option bytes, then blobs, each a 2-byte little-endian length and its bytes
 * (the last one whatever is left):
 * - byte 0: the value columns wanted (bits 0-5), sketches (bit 6), HyperLogLogs (bit 7);
 * - byte 1: since (high nibble) and until (low nibble), from RANGE;
 * - byte 2: bit 0 "plain": each blob is a chunk whose groups are given uncompressed (each a
 *   varint length and its bytes, a sketch block's after its 8-byte time), which the harness
 *   compresses before decoding, so that mutations reach the columns behind zlib's checksum
 *   (what does not parse as such is kept as it is); bits 1-2 the cap, from CAPS.
 * What it checks, besides the sanitizers:
 * - the status is one of SG_CH_*, with a reason exactly when SG_CH_BAD;
 * - an answer is whole: every array as long as it must be, `chunk` non-decreasing and within
 *   the blobs, the sketches' rows increasing and within the rows, their bounds from 0 to every
 *   bin and non-decreasing, counts > 0, zero counts >= 0, keys increasing within each store;
 *   the HyperLogLogs' rows increasing and within the rows, their ends increasing to the bytes;
 *   a sketch only for a row in [since, until); each sketch's `integral` flag as
 *   flat_from_arrays computes it;
 * - the cap only ever adds SG_CH_DEFER: decoded again with the largest cap, the status is the
 *   same (or the first was SG_CH_DEFER), and two answers are equal byte for byte.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "sg_chunks.h"

#define MAX_BLOBS 16
#define SKETCH_BLOCK 60

#define FUZZ_NAME "sg_chunks_fuzz"
#include "fuzz_check.h"

static const double RANGE[16] = {
    -1.0 / 0.0, 1.0 / 0.0, 0.0 / 0.0, 0.0, 1700006400.0, 1700010000.0, 1700013600.0,
    1700006400.5, 1700020800.0, 1700028000.0, -1.0, 1e300, 1700007000.0, 1700009999.0,
    1700006460.0, 1700010060.0};
/* The caps (max_cells) an input picks: the first is the largest, within the fuzzer's memory
 * limit (the module's is 2**32: NaN columns of a billion rows cost what the reference's do). */
static const size_t CAPS[4] = {(size_t)1 << 22, 64, 4096, (size_t)1 << 16};

typedef struct {
    uint8_t *p;
    size_t n, cap;
} out_buf;

static void put(out_buf *o, const void *p, size_t n) {
    if (!n) return;
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2 + 64;
        o->p = realloc(o->p, o->cap);
        CHECK(o->p, "out of memory");
    }
    memcpy(o->p + o->n, p, n);
    o->n += n;
}

static void put_varint(out_buf *o, uint64_t x) {
    while (x >= 0x80) {
        uint8_t b = (uint8_t)(x | 0x80);
        put(o, &b, 1);
        x >>= 7;
    }
    uint8_t b = (uint8_t)x;
    put(o, &b, 1);
}

/* A varint of the template; -1 where it does not parse (the rest is then copied raw). */
static int get_varint(const uint8_t *p, size_t n, size_t *at, uint64_t *x) {
    *x = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*at >= n) return -1;
        uint8_t b = p[(*at)++];
        *x |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) return 0;
    }
    return -1;
}

/* One plain group (a varint length and its bytes) of the template, compressed: 0 where its
 * length is 0, -1 where it does not fit (nothing written). */
static int group(out_buf *o, const uint8_t *p, size_t n, size_t *at) {
    size_t start = *at;
    uint64_t len;
    if (get_varint(p, n, at, &len) || len > n - *at) {
        *at = start;
        return -1;
    }
    if (!len) {
        put_varint(o, 0);
        return 0;
    }
    uLongf clen = compressBound((uLong)len);
    uint8_t *c = malloc(clen);
    CHECK(c && compress2(c, &clen, p + *at, (uLong)len, 1) == Z_OK, "compress2");
    put_varint(o, clen);
    put(o, c, clen);
    free(c);
    *at += (size_t)len;
    return 0;
}

/* A plain template as the chunk it describes: version and rows as they are, the groups
 * compressed, anything that does not parse copied raw. */
static void from_plain(out_buf *o, const uint8_t *p, size_t n) {
    size_t at = 0, mark;
    uint64_t x, k;
    if (n) { /* the version byte */
        put(o, p, 1);
        at = 1;
    }
    mark = at;
    if (get_varint(p, n, &at, &x)) goto rest;
    put(o, p + mark, at - mark);
    if (group(o, p, n, &at) || group(o, p, n, &at)) goto rest;
    mark = at;
    if (get_varint(p, n, &at, &k)) goto rest;
    put(o, p + mark, at - mark);
    for (uint64_t i = 0; i < k; i++) {
        if (n - at < 8) goto rest;
        put(o, p + at, 8);
        at += 8;
        if (group(o, p, n, &at)) goto rest;
    }
    group(o, p, n, &at);
rest:
    put(o, p + at, n - at);
}

static void check_answer(const sg_chunks *d, size_t nblobs) {
    size_t rows = d->rows;
    CHECK(d->ts.n == rows && d->chunk.n == rows, "ts %zu chunk %zu rows %zu", d->ts.n,
          d->chunk.n, rows);
    for (int i = 0; i < SG_CH_NVALUES; i++)
        CHECK(!(d->want & (1u << i)) || d->values[i].n == rows, "column %d: %zu of %zu", i,
              d->values[i].n, rows);
    const int64_t *chunk = d->chunk.p;
    for (size_t i = 0; i < rows; i++)
        CHECK(chunk[i] >= 0 && (size_t)chunk[i] < nblobs && (!i || chunk[i] >= chunk[i - 1]),
              "row %zu of blob %lld", i, (long long)chunk[i]);
    if (d->sketches) {
        size_t s = d->sketch_rows.n, nb = d->keys.n;
        const int64_t *r = d->sketch_rows.p, *b = d->bounds.p, *k = d->keys.p;
        const double *counts = d->counts.p, *zero = d->zero.p;
        CHECK(d->zero.n == s && d->bounds.n == 2 * s + 1 && d->counts.n == nb,
              "sketches %zu zero %zu bounds %zu bins %zu counts %zu", s, d->zero.n, d->bounds.n,
              nb, d->counts.n);
        const double *ts = d->ts.p;
        for (size_t i = 0; i < s; i++) {
            CHECK(r[i] >= 0 && (size_t)r[i] < rows && (!i || r[i] > r[i - 1]) && zero[i] >= 0,
                  "sketch %zu at row %lld", i, (long long)r[i]);
            CHECK(ts[r[i]] >= d->since && ts[r[i]] < d->until, "sketch %zu of a row outside", i);
        }
        CHECK(b[0] == 0 && (size_t)b[2 * s] == nb, "bounds 0..%lld of %zu", (long long)b[2 * s],
              nb);
        for (size_t st = 0; st < 2 * s; st++) {
            CHECK(b[st + 1] >= b[st], "store %zu", st);
            for (int64_t j = b[st]; j < b[st + 1]; j++)
                CHECK(counts[j] > 0 && (j == b[st] || k[j] > k[j - 1]), "bin %lld", (long long)j);
        }
        /* integral: the zero count and every count of the sketch whole, below 2**53 */
        const uint8_t *whole = d->integral.p;
        CHECK(d->integral.n == s, "integral %zu of %zu", d->integral.n, s);
        for (size_t i = 0; i < s; i++) {
            int ok = zero[i] == floor(zero[i]) && zero[i] < 9007199254740992.0;
            for (int64_t j = b[2 * i]; ok && j < b[2 * i + 2]; j++)
                ok = counts[j] == floor(counts[j]) && counts[j] < 9007199254740992.0;
            CHECK(whole[i] == ok, "integral of sketch %zu", i);
        }
    }
    if (d->hll) {
        size_t h = d->hll_rows.n;
        const int64_t *r = d->hll_rows.p, *e = d->hll_ends.p;
        CHECK(d->hll_ends.n == h, "hll ends %zu of %zu", d->hll_ends.n, h);
        for (size_t i = 0; i < h; i++)
            CHECK(r[i] >= 0 && (size_t)r[i] < rows && (!i || r[i] > r[i - 1]) &&
                      e[i] > (i ? e[i - 1] : 0),
                  "hll %zu", i);
        CHECK((h ? (size_t)e[h - 1] : 0) == d->hll_data.n, "hll bytes %zu", d->hll_data.n);
    }
}

static int same_vec(const sg_ch_vec *a, const sg_ch_vec *b, size_t size) {
    return a->n == b->n && (!a->n || !memcmp(a->p, b->p, a->n * size));
}

static void check_same(const sg_chunks *a, const sg_chunks *b) {
    CHECK(a->rows == b->rows && same_vec(&a->ts, &b->ts, 8) && same_vec(&a->chunk, &b->chunk, 8),
          "rows differ");
    for (int i = 0; i < SG_CH_NVALUES; i++)
        CHECK(same_vec(&a->values[i], &b->values[i], 8), "column %d differs", i);
    CHECK(same_vec(&a->sketch_rows, &b->sketch_rows, 8) && same_vec(&a->keys, &b->keys, 8) &&
              same_vec(&a->counts, &b->counts, 8) && same_vec(&a->bounds, &b->bounds, 8) &&
              same_vec(&a->zero, &b->zero, 8) && same_vec(&a->integral, &b->integral, 1),
          "sketches differ");
    CHECK(same_vec(&a->hll_rows, &b->hll_rows, 8) && same_vec(&a->hll_ends, &b->hll_ends, 8) &&
              same_vec(&a->hll_data, &b->hll_data, 1),
          "HyperLogLogs differ");
}

static int decode(sg_chunks *d, const uint8_t *opt, size_t cap, const sg_ch_blob *blobs,
                  size_t n) {
    memset(d, 0, sizeof *d);
    d->want = opt[0] & 0x3f;
    d->sketches = (opt[0] >> 6) & 1;
    d->hll = opt[0] >> 7;
    d->since = RANGE[opt[1] >> 4];
    d->until = RANGE[opt[1] & 15];
    d->max_cells = cap;
    int r = sg_chunks_decode(d, blobs, n);
    CHECK(r == SG_CH_OK || r == SG_CH_BAD || r == SG_CH_DEFER, "status %d", r);
    CHECK((r == SG_CH_BAD) == (d->error != NULL), "status %d, reason %s", r,
          d->error ? d->error : "none");
    if (r == SG_CH_OK) check_answer(d, n);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    const uint8_t *opt = data;
    int plain = data[2] & 1;
    size_t cap = CAPS[(data[2] >> 1) & 3], at = 3, n = 0;
    sg_ch_blob blobs[MAX_BLOBS];
    out_buf made[MAX_BLOBS];
    memset(made, 0, sizeof made);
    while (at < size && n < MAX_BLOBS) {
        size_t len = size - at < 2 ? size - at : (size_t)(data[at] | data[at + 1] << 8);
        at += size - at < 2 ? 0 : 2;
        if (len > size - at) len = size - at;
        if (plain) {
            from_plain(&made[n], data + at, len);
            blobs[n] = (sg_ch_blob){made[n].p, made[n].n};
        } else {
            blobs[n] = (sg_ch_blob){data + at, len};
        }
        at += len;
        n++;
    }
    sg_chunks first, again;
    int r = decode(&first, opt, cap, blobs, n);
    if (cap != CAPS[0] || r == SG_CH_OK) { /* the cap only adds SG_CH_DEFER; the same answer */
        int r2 = decode(&again, opt, CAPS[0], blobs, n);
        CHECK(r == r2 || r == SG_CH_DEFER, "status %d with cap %zu, %d without", r, cap, r2);
        if (r == SG_CH_OK) check_same(&first, &again);
        sg_chunks_free(&again);
    }
    sg_chunks_free(&first);
    for (size_t i = 0; i < n; i++) free(made[i].p);
    return 0;
}
