/* Decoding SGC1 chunks (the format: store/chunks.py's docstring) in C: what
 * store/chunks_decode.py's decode_chunks does with numpy, for many blobs at once, without the
 * GIL (the Python module takes the blobs' buffers, then lets it go around sg_chunks_decode).
 *
 * Contract (the reference is the Python decoder; tests/test_chunk_native.py holds the two to
 * identical answers, bit for bit, for any bytes):
 * - SG_CH_OK: the blobs' rows, in blob order, as the reference returns them: `ts`, `chunk`, the
 *   value columns asked for (NaN where a column is tag 0 or its group absent), and if asked the
 *   sketches (of the rows in [since, until) only) and HyperLogLogs. Checked
 *   as the reference checks them, including what sketch.flat_from_arrays refuses.
 * - SG_CH_BAD: the reference raises ChunkError for these blobs; `error` says why.
 * - SG_CH_DEFER: the reference decides: a count or inflated group past `max_cells`, an
 *   allocation that failed, or an input where the reference does something this code does not
 *   repeat (raises another error than ChunkError: a row count of 2**63 or more, an infinite
 *   HyperLogLog length; or computes in float where the order of additions could matter: sketch
 *   store lengths that are not integers below 2**53, keys outside int64; or pairs a batch's
 *   flagged rows with its sketches across blocks: a sketch to drop for a row outside [since,
 *   until) in or after a block whose flags or lengths do not add up on their own). Never for
 *   a chunk the encoder wrote.
 * The checks run in the reference's order where that decides the outcome: every blob's header
 * and columns first, then the sketches' consistency, then the HyperLogLogs'.
 */
#ifndef SG_CHUNKS_H
#define SG_CHUNKS_H

#include <stddef.h>
#include <stdint.h>

enum { SG_CH_OK = 0, SG_CH_BAD = 1, SG_CH_DEFER = 2 };

/* The most rows a chunk holds: store/chunks.py's BUCKETS_PER_CHUNK (tests/test_chunk_native.py
 * checks both decoders refuse one row more). */
#define SG_CH_MAX_ROWS 360

/* The value columns, in the format's order (group A after ts, then group B). */
enum { SG_CH_COUNT, SG_CH_SUM, SG_CH_MIN, SG_CH_MAX, SG_CH_LAST, SG_CH_LAST_TS, SG_CH_NVALUES };

typedef struct {
    const uint8_t *p;
    size_t n;
} sg_ch_blob;

/* An output array: `n` elements of 8 bytes (hll_data: bytes), in `cap` allocated: malloc'd, or
 * where it grew large an anonymous mapping of `mapped` bytes (it then grows by mremap, without
 * a copy). Release its memory with sg_ch_release(p, mapped). */
typedef struct {
    void *p;
    size_t n, cap, mapped;
} sg_ch_vec;

void sg_ch_release(void *p, size_t mapped);

typedef struct {
    /* what to decode */
    unsigned want;         /* bit SG_CH_COUNT…SG_CH_LAST_TS: that value column */
    int sketches, hll;     /* decode the sketches (of the rows in [since, until)), HLLs */
    double since, until;
    size_t max_cells;      /* the most elements of any array and bytes of any inflated group */
    /* what came out (SG_CH_OK) */
    size_t rows;
    sg_ch_vec ts, chunk;   /* float64, int64 */
    sg_ch_vec values[SG_CH_NVALUES]; /* float64, the wanted ones */
    /* sketch.FlatBins' arrays and the rows they belong to (sketches) */
    sg_ch_vec sketch_rows, keys, counts, bounds, zero; /* int64, int64, float64, int64, float64 */
    sg_ch_vec integral; /* uint8 per sketch: FlatBins.integral (its counts whole, < 2**53) */
    /* the HyperLogLogs (hll): row, end of its bytes in hll_data */
    sg_ch_vec hll_rows, hll_ends, hll_data; /* int64, int64, bytes */
    const char *error;     /* SG_CH_BAD: why */
} sg_chunks;

/* Decodes the blobs into d (its inputs set, its outputs zero); returns SG_CH_*. Free the
 * outputs with sg_chunks_free whatever it returned. */
int sg_chunks_decode(sg_chunks *d, const sg_ch_blob *blobs, size_t nblobs);
void sg_chunks_free(sg_chunks *d);

#ifdef Py_PYTHON_H
/* sg_chunks_module.c: _native.decode_chunks, and its Buffer type readied (0, or -1 with an
 * exception set), for sg_module.c's method table and module init. */
PyObject *sg_py_decode_chunks(PyObject *m, PyObject *args);
int sg_chunks_ready(PyObject *m);
#endif

#endif
