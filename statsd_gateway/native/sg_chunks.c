/* SGC1 chunks decoded in C (see sg_chunks.h for the contract). Pure C and zlib: the fuzz
 * harness links it alone. The steps follow store/chunks_decode.py, the reference, in its order;
 * the comments name the checks of it that each repeats. */
#define _GNU_SOURCE /* mremap */
#include "sg_chunks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* Arrays past MAP_MIN bytes are mapped (SG_CH_NO_MMAP: never, for the sanitizers' sake). */
#if defined(__linux__) && !defined(SG_CH_NO_MMAP)
#include <sys/mman.h>
#define MAP_MIN ((size_t)1 << 20)
#endif

#define VERSION 1
#define SKETCH_BLOCK 60
#define TWO53 9007199254740992.0
#define TWO63 9223372036854775808.0
#define NAN_BITS 0x7ff8000000000000ull /* np.nan's */
#define BIT(i) (1u << (i))

static const char CUT_VARINT[] = "cut short in a varint";

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

typedef struct {
    double first;
    const uint8_t *p;
    size_t n;
} block;

typedef struct {
    uint8_t tag, width;
    const uint8_t *p; /* the payload (tags 1 to 3) */
    uint64_t m;       /* the number of values */
} column;

typedef struct {
    sg_chunks *d;
    z_stream z;
    int z_ready;
    buf a, b, dd, cg; /* groups A, B, D and a sketch block, inflated */
    block *blocks;
    size_t cap_blocks;
    int last_a, need_b;
    sg_ch_vec has, lens;  /* every row's sketch flag; the stores' lengths (float64) */
    sg_ch_vec hll_len;    /* one blob's HyperLogLog lengths */
    uint64_t sk_rows, n_bins; /* the sketch blocks' counts, added (saturating) */
    int hll_bad;          /* a HyperLogLog part does not add up (reported after the sketches) */
    int misaligned;       /* a sketch block whose flags or lengths do not add up on its own */
} ctx;

#define BAD(msg)                                                                                 \
    do {                                                                                         \
        c->d->error = (msg);                                                                     \
        return SG_CH_BAD;                                                                        \
    } while (0)
#define TRY(x)                                                                                   \
    do {                                                                                         \
        int r_ = (x);                                                                            \
        if (r_) return r_;                                                                       \
    } while (0)

static uint64_t sat_add(uint64_t a, uint64_t b) { return a + b < a ? UINT64_MAX : a + b; }

/* _read_varint: at most 10 bytes (shifts 0 to 63); a value past 64 bits saturates, which every
 * use below treats as the reference treats any value that large. -1: cut short. */
static int varint(const uint8_t *p, size_t n, size_t *at, uint64_t *out) {
    uint64_t x = 0;
    int over = 0;
    for (unsigned shift = 0;; shift += 7) {
        if (*at >= n || shift > 63) return -1;
        uint8_t byte = p[(*at)++];
        uint64_t bits = byte & 0x7f;
        if (shift < 63)
            x |= bits << shift;
        else if (bits > 1)
            over = 1;
        else
            x |= bits << 63;
        if (byte < 0x80) {
            *out = over ? UINT64_MAX : x;
            return 0;
        }
    }
}

void sg_ch_release(void *p, size_t mapped) {
#ifdef MAP_MIN
    if (mapped) {
        munmap(p, mapped);
        return;
    }
#else
    (void)mapped;
#endif
    free(p);
}

/* Room for `more` elements of `size` bytes past v->n, within max_cells: doubling, by realloc
 * while small, then by mremap (the decoded sketches' arrays grow to tens of MB: a copy at
 * each doubling, into fresh pages, was a quarter of their decoding). */
static int vgrow(ctx *c, sg_ch_vec *v, uint64_t more, size_t size) {
    size_t max = c->d->max_cells;
    if (more > max || v->n > max - more) return SG_CH_DEFER;
    size_t need = v->n + (size_t)more;
    if (v->p && need <= v->cap) return 0;
    size_t cap = v->cap ? v->cap : 64;
    while (cap < need) cap *= 2;
    if (cap > max) cap = need > max ? need : max;
    size_t bytes = cap * size + 1; /* + 1: never an allocation of 0 */
#ifdef MAP_MIN
    if (bytes >= MAP_MIN) {
        bytes = (bytes + 4095) & ~(size_t)4095;
        void *q = v->mapped ? mremap(v->p, v->mapped, bytes, MREMAP_MAYMOVE)
                            : mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q == MAP_FAILED) return SG_CH_DEFER;
        if (!v->mapped && v->p) {
            memcpy(q, v->p, v->n * size);
            free(v->p);
        }
        v->p = q;
        v->cap = cap;
        v->mapped = bytes;
        return 0;
    }
#endif
    void *q = realloc(v->p, bytes);
    if (!q) return SG_CH_DEFER;
    v->p = q;
    v->cap = cap;
    return 0;
}

static void vfree(sg_ch_vec *v) {
    if (v->p) sg_ch_release(v->p, v->mapped);
    *v = (sg_ch_vec){NULL, 0, 0, 0};
}

/* zlib.decompress: the whole stream to its end (bytes after it ignored, as zlib.decompress
 * ignores them), into out. */
static int inflate_into(ctx *c, const uint8_t *p, size_t n, buf *out) {
    size_t max = c->d->max_cells;
    out->n = 0;
    if (n > UINT32_MAX) return SG_CH_DEFER;
    if (!c->z_ready) {
        memset(&c->z, 0, sizeof c->z);
        if (inflateInit(&c->z) != Z_OK) return SG_CH_DEFER;
        c->z_ready = 1;
    } else if (inflateReset(&c->z) != Z_OK) {
        return SG_CH_DEFER;
    }
    c->z.next_in = (Bytef *)p;
    c->z.avail_in = (uInt)n;
    for (;;) {
        if (out->n == out->cap) {
            if (out->cap >= max) return SG_CH_DEFER; /* past the cap: the reference decides */
            size_t cap = out->cap ? 2 * out->cap : 1 << 16;
            if (cap > max) cap = max;
            uint8_t *q = realloc(out->p, cap);
            if (!q) return SG_CH_DEFER;
            out->p = q;
            out->cap = cap;
        }
        size_t room = out->cap - out->n;
        c->z.next_out = out->p + out->n;
        c->z.avail_out = room > UINT32_MAX ? UINT32_MAX : (uInt)room;
        int r = inflate(&c->z, Z_FINISH);
        out->n = (size_t)(c->z.next_out - out->p);
        if (r == Z_STREAM_END) return 0;
        if (r == Z_MEM_ERROR) return SG_CH_DEFER;
        if ((r == Z_OK || r == Z_BUF_ERROR) && c->z.avail_out == 0) continue;
        BAD("damaged: a group does not inflate");
    }
}

/* _read_column: the column of m values at *at (tag, width, payload), checked. */
static int read_column(ctx *c, const uint8_t *p, size_t n, size_t *at, uint64_t m,
                       column *col) {
    if (*at >= n) BAD("cut short before a column");
    uint8_t tag = p[*at], w = 8;
    size_t start = *at + 1;
    if (tag == 0) {
        *col = (column){0, 0, NULL, m};
        *at = start;
        return 0;
    }
    if (tag == 1 || tag == 3) {
        w = start < n ? p[start] : 0;
        if (w != 1 && w != 2 && w != 4 && w != 8) BAD("bad integer width");
        start++;
    } else if (tag != 2) {
        BAD("unknown column tag");
    }
    if (m > (n - start) / w) BAD("cut short in a column");
    *col = (column){tag, w, p + start, m};
    *at = start + (size_t)m * w;
    return 0;
}

static inline uint64_t ld1(const uint8_t *q) { return q[0]; }
static inline uint64_t ld2(const uint8_t *q) { return (uint64_t)q[0] | (uint64_t)q[1] << 8; }
static inline uint64_t ld4(const uint8_t *q) { return ld2(q) | ld2(q + 2) << 16; }
static inline uint64_t ld8(const uint8_t *q) { return ld4(q) | ld4(q + 4) << 32; }
/* zigzag, undone: (z >> 1) ^ -(z & 1), as int64 */
static inline int64_t unzz(uint64_t z) { return (int64_t)((z >> 1) ^ (0 - (z & 1))); }

static double from_bits(uint64_t bits) {
    double x;
    memcpy(&x, &bits, 8);
    return x;
}

static void fill_nan(double *out, uint64_t m) {
    double nan = from_bits(NAN_BITS);
    for (uint64_t i = 0; i < m; i++) out[i] = nan;
}

/* Tag 1: the running sum (wrapping int64, as numpy's) of the zigzag deltas, restarting per
 * column; tag 3: the zigzag values; either converted to float64 as numpy's astype rounds. */
#define INT_CASE(W, LD)                                                                          \
    case W:                                                                                      \
        if (col->tag == 1) {                                                                     \
            uint64_t acc = 0;                                                                    \
            for (size_t i = 0; i < m; i++) {                                                     \
                acc += (uint64_t)unzz(LD(q + W * i));                                            \
                out[i] = (double)(int64_t)acc;                                                   \
            }                                                                                    \
        } else {                                                                                 \
            for (size_t i = 0; i < m; i++) out[i] = (double)unzz(LD(q + W * i));                 \
        }                                                                                        \
        break;

/* _decode_segments for one column: its values into out (NaN for tag 0). */
static void decode_column(const column *col, double *out) {
    const uint8_t *q = col->p;
    size_t m = (size_t)col->m;
    if (col->tag == 0) {
        fill_nan(out, col->m);
        return;
    }
    if (col->tag == 2) { /* byte-shuffled planes of XORs: plane b holds every value's byte b */
        uint64_t acc = 0;
        for (size_t i = 0; i < m; i++) {
            uint64_t u = 0;
            for (unsigned b = 0; b < 8; b++) u |= (uint64_t)q[b * m + i] << (8 * b);
            acc ^= u;
            out[i] = from_bits(acc);
        }
        return;
    }
    switch (col->width) {
        INT_CASE(1, ld1)
        INT_CASE(2, ld2)
        INT_CASE(4, ld4)
        INT_CASE(8, ld8)
    }
}

/* A column appended to an array of float64 (the sketches' columns are laid end to end). */
static int append_column(ctx *c, sg_ch_vec *v, const column *col) {
    TRY(vgrow(c, v, col->m, 8));
    decode_column(col, (double *)v->p + v->n);
    v->n += (size_t)col->m;
    return 0;
}

/* _groups, one group: its size and bytes, inflated into out if wanted (else out->n = 0). */
static int group(ctx *c, const uint8_t *p, size_t len, size_t *at, int want, buf *out) {
    uint64_t size;
    out->n = 0;
    if (varint(p, len, at, &size)) BAD(CUT_VARINT);
    if (size > len - *at) BAD("cut short in a group");
    if (size && want) TRY(inflate_into(c, p + *at, (size_t)size, out));
    *at += (size_t)size;
    return 0;
}

/* The sketches just appended for one block (s of them, nb bins) less those of rows outside
 * [since, until), which lose their sketch as the rows of a block outside it do: their flag
 * NaN, their zero count, lengths and bins taken out in place. The reference drops the same
 * before it checks the bins (chunks_decode._flat_sketches), so a bin only a dropped sketch
 * holds is never judged. The reference pairs the n-th flagged row of the whole batch with its
 * n-th sketch and bins: a block's own sketches are its own only while every block so far
 * adds up on its own (its flags to s, its lengths to nb). After one that does not, a block
 * with a sketch to drop is left to the reference (SG_CH_DEFER); one with none, to
 * finish_sketches, as before. */
static int drop_outside(ctx *c, const double *ts, double *has, uint64_t m, uint64_t s,
                        uint64_t nb) {
    sg_chunks *d = c->d;
    double lo = d->since, hi = d->until;
    int some = 0;
    uint64_t flagged = 0, total = 0;
    for (uint64_t r = 0; r < m; r++) {
        flagged += has[r] == 1.0;
        some |= has[r] == 1.0 && !(ts[r] >= lo && ts[r] < hi);
    }
    double *lens = (double *)c->lens.p + (c->lens.n - 2 * s);
    int whole = flagged == s; /* then s <= m: the lengths are few */
    for (uint64_t j = 0; whole && j < 2 * s; j++) {
        if (!(lens[j] >= 0 && lens[j] < TWO53) || lens[j] != floor(lens[j]))
            whole = 0;
        else
            total += (uint64_t)lens[j];
    }
    if (!whole || total != nb) c->misaligned = 1;
    if (!some) return 0;
    if (c->misaligned) return SG_CH_DEFER;
    double *zero = (double *)d->zero.p + (d->zero.n - s);
    double *keys = (double *)d->keys.p + (d->keys.n - nb);
    double *counts = (double *)d->counts.p + (d->counts.n - nb);
    uint64_t k = 0, kept = 0, read = 0, written = 0;
    for (uint64_t r = 0; r < m; r++) {
        if (has[r] != 1.0) continue;
        uint64_t bins = (uint64_t)lens[2 * k] + (uint64_t)lens[2 * k + 1];
        if (ts[r] >= lo && ts[r] < hi) {
            zero[kept] = zero[k];
            lens[2 * kept] = lens[2 * k];
            lens[2 * kept + 1] = lens[2 * k + 1];
            memmove(keys + written, keys + read, bins * 8);
            memmove(counts + written, counts + read, bins * 8);
            written += bins;
            kept++;
        } else {
            has[r] = NAN;
        }
        read += bins;
        k++;
    }
    d->zero.n -= s - kept;
    c->lens.n -= 2 * (s - kept);
    d->keys.n -= nb - written;
    d->counts.n -= nb - written;
    c->sk_rows -= s - kept;
    c->n_bins -= nb - written;
    return 0;
}

/* One decoded sketch block of m rows (their times ts): its flags into has, the rest appended,
 * but the sketches of rows outside [since, until) (drop_outside). */
static int sketch_block(ctx *c, const block *bl, uint64_t m, const double *ts, double *has) {
    sg_chunks *d = c->d;
    TRY(inflate_into(c, bl->p, bl->n, &c->cg));
    const uint8_t *q = c->cg.p;
    size_t len = c->cg.n, at = 0;
    uint64_t s, nb;
    column col;
    if (varint(q, len, &at, &s) || varint(q, len, &at, &nb)) BAD(CUT_VARINT);
    TRY(read_column(c, q, len, &at, m, &col));
    decode_column(&col, has);
    TRY(read_column(c, q, len, &at, s, &col));
    TRY(append_column(c, &d->zero, &col));
    TRY(read_column(c, q, len, &at, s > UINT64_MAX / 2 ? UINT64_MAX : 2 * s, &col));
    TRY(append_column(c, &c->lens, &col));
    TRY(read_column(c, q, len, &at, nb, &col));
    TRY(append_column(c, &d->keys, &col)); /* float64 until finish_sketches */
    TRY(read_column(c, q, len, &at, nb, &col));
    TRY(append_column(c, &d->counts, &col));
    c->sk_rows = sat_add(c->sk_rows, s);
    c->n_bins = sat_add(c->n_bins, nb);
    if (c->sk_rows == UINT64_MAX || c->n_bins == UINT64_MAX) { /* finish_sketches: BAD */
        c->misaligned = 1;
        return 0;
    }
    return drop_outside(c, ts, has, m, s, nb);
}

/* _hlls for one blob's group D (its lengths column `col`, registers from `at`): the
 * registers copied out. A length that is infinite (int() raises OverflowError) or negative
 * (Python's slices of negative bounds) is left to the reference. */
static int hll_part(ctx *c, const column *col, const buf *g, size_t at, size_t row) {
    sg_chunks *d = c->d;
    size_t n = (size_t)col->m;
    c->hll_len.n = 0;
    TRY(vgrow(c, &c->hll_len, n, 8));
    double *lengths = c->hll_len.p;
    decode_column(col, lengths);
    int over = 0;
    for (size_t i = 0; i < n; i++) {
        double x = lengths[i];
        if (x != x) continue; /* NaN: no HyperLogLog */
        if (isinf(x)) return SG_CH_DEFER;
        double k = trunc(x);
        if (k == 0) continue;
        if (k < 0) return SG_CH_DEFER;
        if (over || k > (double)(g->n - at)) { /* past the group: the part cannot add up */
            over = 1;
            continue;
        }
        size_t len = (size_t)k;
        TRY(vgrow(c, &d->hll_data, len, 1));
        TRY(vgrow(c, &d->hll_rows, 1, 8));
        TRY(vgrow(c, &d->hll_ends, 1, 8));
        memcpy((uint8_t *)d->hll_data.p + d->hll_data.n, g->p + at, len);
        d->hll_data.n += len;
        ((int64_t *)d->hll_rows.p)[d->hll_rows.n++] = (int64_t)(row + i);
        ((int64_t *)d->hll_ends.p)[d->hll_ends.n++] = (int64_t)d->hll_data.n;
        at += len;
    }
    if (over || at != g->n) c->hll_bad = 1;
    return 0;
}

/* The loop body of decode_chunks for blob `index`, whose rows start at `row`; *n_out: its
 * row count. */
static int decode_blob(ctx *c, const sg_ch_blob *blob, size_t index, size_t row,
                       size_t *n_out) {
    sg_chunks *d = c->d;
    const uint8_t *p = blob->p;
    size_t len = blob->n, at = 1, k;
    uint64_t n64, count;
    if (!len || p[0] != VERSION) BAD("not an SGC1 chunk of version 1");
    if (varint(p, len, &at, &n64)) BAD(CUT_VARINT);
    /* _groups: A, B (if a column of it is wanted), the sketch blocks, D (if wanted) */
    TRY(group(c, p, len, &at, 1, &c->a));
    TRY(group(c, p, len, &at, c->need_b, &c->b));
    if (varint(p, len, &at, &count)) BAD(CUT_VARINT);
    if (count > (len - at) / 9) BAD("cut short in a sketch block"); /* 9 bytes a block at least */
    k = (size_t)count;
    if (k > c->cap_blocks) {
        block *q = realloc(c->blocks, k * sizeof *q);
        if (!q) return SG_CH_DEFER;
        c->blocks = q;
        c->cap_blocks = k;
    }
    for (size_t i = 0; i < k; i++) {
        uint64_t size, bits = 0;
        if (len - at < 8) BAD("cut short in a sketch block");
        for (unsigned b = 0; b < 8; b++) bits |= (uint64_t)p[at + b] << (8 * b);
        c->blocks[i].first = from_bits(bits);
        at += 8;
        if (varint(p, len, &at, &size)) BAD(CUT_VARINT);
        if (size > len - at) BAD("cut short in a sketch block");
        c->blocks[i].p = p + at;
        c->blocks[i].n = (size_t)size;
        at += (size_t)size;
    }
    TRY(group(c, p, len, &at, d->hll, &c->dd));
    if (at != len) BAD("bytes after the last group");
    if (!c->a.n && n64) BAD("no timestamps");
    /* else a few bytes could claim rows enough to fill the memory (chunks.BUCKETS_PER_CHUNK) */
    if (n64 > SG_CH_MAX_ROWS) BAD("more rows than a chunk window holds");
    /* sizes[c] = n: the reference raises OverflowError past int64 */
    if (n64 >= (uint64_t)1 << 63) return SG_CH_DEFER;
    size_t n = (size_t)n64;
    /* groups A (up to its last column wanted, the others unread) and B (both columns, if one
     * is wanted and B is there): checked before the rows get room, then decoded */
    column cols[7];
    at = 0;
    for (int i = 0; i <= c->last_a; i++) TRY(read_column(c, c->a.p, c->a.n, &at, n, &cols[i]));
    at = 0;
    for (int j = 5; c->need_b && c->b.n && j < 7; j++)
        TRY(read_column(c, c->b.p, c->b.n, &at, n, &cols[j]));
    TRY(vgrow(c, &d->ts, n, 8));
    TRY(vgrow(c, &d->chunk, n, 8));
    for (int i = 0; i < SG_CH_NVALUES; i++)
        if (d->want & BIT(i)) TRY(vgrow(c, &d->values[i], n, 8));
    if (d->sketches) TRY(vgrow(c, &c->has, n, 8));
    for (int i = 0; i < 7; i++) { /* ts, count … max, last, last_ts */
        sg_ch_vec *v = i == 0 ? &d->ts : d->want & BIT(i - 1) ? &d->values[i - 1] : NULL;
        if (!v || (i > c->last_a && i < 5)) continue;
        if (i < 5 || c->b.n)
            decode_column(&cols[i], (double *)v->p + row);
        else
            fill_nan((double *)v->p + row, n); /* B absent */
    }
    if (d->sketches) {
        double *has = (double *)c->has.p + row;
        const double *ts = (const double *)d->ts.p + row;
        if (k && k != n / SKETCH_BLOCK + (n % SKETCH_BLOCK != 0))
            BAD("the sketch blocks do not cover the rows");
        size_t covered = 0;
        for (size_t i = 0; i < k; i++) {
            const block *bl = &c->blocks[i];
            size_t m = n - covered < SKETCH_BLOCK ? n - covered : SKETCH_BLOCK;
            double after = i + 1 < k ? c->blocks[i + 1].first : INFINITY;
            if (!bl->n || bl->first >= d->until || after <= d->since)
                fill_nan(has + covered, m); /* not decoded: no sketch */
            else
                TRY(sketch_block(c, bl, m, ts + covered, has + covered));
            covered += m;
        }
        if (!k) fill_nan(has, n);
    }
    if (d->hll && c->dd.n) {
        column col;
        at = 0;
        TRY(read_column(c, c->dd.p, c->dd.n, &at, n, &col));
        if (!c->hll_bad) TRY(hll_part(c, &col, &c->dd, at, row));
    }
    int64_t *chunk = (int64_t *)d->chunk.p + row;
    for (size_t i = 0; i < n; i++) chunk[i] = (int64_t)index;
    *n_out = n;
    return 0;
}

/* _flat_sketches (and what sketch.flat_from_arrays refuses): the rows with a sketch must be as
 * many as the blocks said, the stores' lengths must add up to the bins, every key be there. */
static int finish_sketches(ctx *c) {
    sg_chunks *d = c->d;
    const double *has = c->has.p;
    uint64_t s = 0, total = 0;
    for (size_t i = 0; i < d->rows; i++) s += has[i] == 1.0;
    if (s != c->sk_rows) BAD("the sketch rows do not match their count");
    const double *lens = c->lens.p;
    for (size_t j = 0; j < 2 * s; j++)
        if (lens[j] != lens[j] || lens[j] < 0) BAD("the sketch bins do not match their lengths");
    for (size_t j = 0; j < 2 * s; j++) { /* int(lens.sum()): exact while integers below 2**53 */
        if (!(lens[j] < TWO53) || lens[j] != floor(lens[j])) return SG_CH_DEFER;
        total += (uint64_t)lens[j];
        if (total >= (uint64_t)1 << 53) return SG_CH_DEFER;
    }
    if (total != c->n_bins) BAD("the sketch bins do not match their lengths");
    TRY(vgrow(c, &d->bounds, 2 * s + 1, 8));
    int64_t *bounds = d->bounds.p;
    bounds[0] = 0;
    for (size_t j = 0; j < 2 * s; j++) bounds[j + 1] = bounds[j] + (int64_t)lens[j];
    d->bounds.n = 2 * s + 1;
    /* keys.astype(np.int64) where exact, and flat_from_arrays' checks, in one pass: a key missing
     * (NaN) first, then one outside int64 (the reference's cast), then the bins' order */
    uint8_t *keys = d->keys.p;
    const double *counts = d->counts.p, *zero = d->zero.p;
    int missing = 0, outside = 0, bad = 0;
    for (size_t st = 0; st < 2 * s; st++) {
        int64_t prev = 0;
        for (int64_t j = bounds[st]; j < bounds[st + 1]; j++) {
            double x;
            memcpy(&x, keys + 8 * j, 8);
            int64_t v = 0;
            if (x != x)
                missing = 1;
            else if (!(x >= -TWO63 && x < TWO63))
                outside = 1;
            else
                v = (int64_t)x;
            memcpy(keys + 8 * j, &v, 8);
            bad |= (j > bounds[st] && v <= prev) || !(counts[j] > 0);
            prev = v;
        }
    }
    if (missing) BAD("a sketch key is missing");
    if (outside) return SG_CH_DEFER;
    for (size_t j = 0; j < s; j++) bad |= !(zero[j] >= 0);
    if (bad) BAD("bad sketch bins: a count is not positive, or keys not increasing in a store");
    /* flat_from_arrays' `integral`: the zero count and every bin's count whole, below 2**53 */
    TRY(vgrow(c, &d->integral, s, 1));
    uint8_t *whole = d->integral.p;
    for (size_t i = 0; i < s; i++) {
        int ok = zero[i] == floor(zero[i]) && zero[i] < TWO53;
        for (int64_t j = bounds[2 * i]; ok && j < bounds[2 * i + 2]; j++)
            ok = counts[j] == floor(counts[j]) && counts[j] < TWO53;
        whole[i] = (uint8_t)ok;
    }
    d->integral.n = s;
    TRY(vgrow(c, &d->sketch_rows, s, 8));
    int64_t *rows = d->sketch_rows.p;
    for (size_t i = 0; i < d->rows; i++)
        if (has[i] == 1.0) rows[d->sketch_rows.n++] = (int64_t)i;
    return 0;
}

static int decode(ctx *c, const sg_ch_blob *blobs, size_t nblobs) {
    sg_chunks *d = c->d;
    TRY(vgrow(c, &d->ts, 0, 8));
    TRY(vgrow(c, &d->chunk, 0, 8));
    for (int i = 0; i < SG_CH_NVALUES; i++)
        if (d->want & BIT(i)) TRY(vgrow(c, &d->values[i], 0, 8));
    if (d->sketches) {
        TRY(vgrow(c, &c->has, 0, 8));
        TRY(vgrow(c, &d->zero, 0, 8));
        TRY(vgrow(c, &d->keys, 0, 8));
        TRY(vgrow(c, &d->counts, 0, 8));
        TRY(vgrow(c, &c->lens, 0, 8));
    }
    if (d->hll) {
        TRY(vgrow(c, &d->hll_rows, 0, 8));
        TRY(vgrow(c, &d->hll_ends, 0, 8));
        TRY(vgrow(c, &d->hll_data, 0, 1));
    }
    for (int i = 0; i < 4; i++)
        if (d->want & BIT(i)) c->last_a = i + 1;
    c->need_b = (d->want & (BIT(SG_CH_LAST) | BIT(SG_CH_LAST_TS))) != 0;
    size_t row = 0;
    for (size_t i = 0; i < nblobs; i++) {
        size_t n = 0;
        TRY(decode_blob(c, &blobs[i], i, row, &n));
        row += n;
        d->ts.n = d->chunk.n = row;
        if (d->sketches) c->has.n = row;
        for (int j = 0; j < SG_CH_NVALUES; j++)
            if (d->want & BIT(j)) d->values[j].n = row;
    }
    d->rows = row;
    if (d->sketches) TRY(finish_sketches(c));
    if (c->hll_bad) BAD("the HyperLogLogs do not match their lengths");
    return SG_CH_OK;
}

int sg_chunks_decode(sg_chunks *d, const sg_ch_blob *blobs, size_t nblobs) {
    ctx c;
    memset(&c, 0, sizeof c);
    c.d = d;
    d->error = NULL;
    int r = decode(&c, blobs, nblobs);
    if (c.z_ready) inflateEnd(&c.z);
    free(c.a.p);
    free(c.b.p);
    free(c.dd.p);
    free(c.cg.p);
    free(c.blocks);
    vfree(&c.has);
    vfree(&c.lens);
    vfree(&c.hll_len);
    return r;
}

void sg_chunks_free(sg_chunks *d) {
    sg_ch_vec *all[] = {&d->ts,          &d->chunk,       &d->sketch_rows, &d->keys,
                        &d->integral,
                        &d->counts,      &d->bounds,      &d->zero,        &d->hll_rows,
                        &d->hll_ends,    &d->hll_data,    &d->values[0],   &d->values[1],
                        &d->values[2],   &d->values[3],   &d->values[4],   &d->values[5]};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) vfree(all[i]);
}
