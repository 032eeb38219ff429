/* _native.decode_chunks: sg_chunks.c for Python (store/chunks_native.py is its only user).
 *
 * decode_chunks(blobs, want, sketches, hll, since, until): blobs a list or tuple; want the
 * value columns as sg_chunks.h's bits. The blobs' buffers are taken with the GIL, decoded
 * without it, and the arrays C filled handed over as Buffer objects (no copy; numpy.frombuffer
 * views them), so no Python object is made per row. Returns None where the reference must
 * decide (a blob that is not bytes or bytearray, or SG_CH_DEFER), raises ValueError where the
 * blobs are not whole chunks (SG_CH_BAD), else
 * (ts, chunk, (count, sum, min, max, last, last_ts: a Buffer or None each),
 *  None or (sketch_rows, keys, counts, bounds, zero, integral), None or ([HyperLogLog bytes],
 *  hll_rows)).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "sg_chunks.h"

/* The most elements of any array (and bytes of an inflated group) decoded here; past it the
 * reference decodes (and most likely runs out of memory). */
#define MAX_CELLS ((size_t)1 << 32)

typedef struct {
    PyObject_HEAD
    void *p; /* sg_chunks.c's array */
    size_t mapped;
    Py_ssize_t len;
} BufferObject;

static int Buffer_getbuffer(BufferObject *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->p, self->len, 0, flags);
}

static void Buffer_dealloc(BufferObject *self) {
    sg_ch_release(self->p, self->mapped);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyBufferProcs Buffer_as_buffer = {(getbufferproc)Buffer_getbuffer, NULL};

static PyTypeObject BufferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "statsd_gateway._native.Buffer",
    .tp_basicsize = sizeof(BufferObject),
    .tp_dealloc = (destructor)Buffer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Memory the chunk decoder filled (numpy.frombuffer reads it).",
    .tp_as_buffer = &Buffer_as_buffer,
};

int sg_chunks_ready(PyObject *m) {
    if (PyType_Ready(&BufferType) < 0) return -1;
    Py_INCREF(&BufferType);
    if (PyModule_AddObject(m, "Buffer", (PyObject *)&BufferType) < 0) {
        Py_DECREF(&BufferType);
        return -1;
    }
    return 0;
}

/* The array v (elements of `size` bytes) as a Buffer that owns it. */
static PyObject *take(sg_ch_vec *v, size_t size) {
    if (!v->p && !(v->p = malloc(1))) return PyErr_NoMemory();
    BufferObject *b = PyObject_New(BufferObject, &BufferType);
    if (!b) return NULL;
    b->p = v->p;
    b->mapped = v->mapped;
    b->len = (Py_ssize_t)(v->n * size);
    *v = (sg_ch_vec){NULL, 0, 0, 0};
    return (PyObject *)b;
}

static PyObject *result(sg_chunks *d) {
    PyObject *ts = take(&d->ts, 8), *chunk = take(&d->chunk, 8);
    PyObject *values = PyTuple_New(SG_CH_NVALUES), *sk = NULL, *hl = NULL, *out = NULL;
    if (!ts || !chunk || !values) goto done;
    for (int i = 0; i < SG_CH_NVALUES; i++) {
        PyObject *v = d->want & (1u << i) ? take(&d->values[i], 8) : Py_NewRef(Py_None);
        if (!v) goto done;
        PyTuple_SET_ITEM(values, i, v);
    }
    if (!d->sketches) {
        sk = Py_NewRef(Py_None);
    } else {
        sk = Py_BuildValue("(NNNNNN)", take(&d->sketch_rows, 8), take(&d->keys, 8),
                           take(&d->counts, 8), take(&d->bounds, 8), take(&d->zero, 8),
                           take(&d->integral, 1));
        if (!sk) goto done;
    }
    if (!d->hll) {
        hl = Py_NewRef(Py_None);
    } else {
        size_t n = d->hll_rows.n;
        const int64_t *ends = d->hll_ends.p;
        const char *data = d->hll_data.p;
        PyObject *list = PyList_New((Py_ssize_t)n);
        if (!list) goto done;
        for (size_t i = 0; i < n; i++) {
            int64_t start = i ? ends[i - 1] : 0;
            PyObject *b = PyBytes_FromStringAndSize(data + start, (Py_ssize_t)(ends[i] - start));
            if (!b) {
                Py_DECREF(list);
                goto done;
            }
            PyList_SET_ITEM(list, (Py_ssize_t)i, b);
        }
        hl = Py_BuildValue("(NN)", list, take(&d->hll_rows, 8));
        if (!hl) goto done;
    }
    out = PyTuple_Pack(5, ts, chunk, values, sk, hl);
done:
    Py_XDECREF(ts);
    Py_XDECREF(chunk);
    Py_XDECREF(values);
    Py_XDECREF(sk);
    Py_XDECREF(hl);
    return out;
}

PyObject *sg_py_decode_chunks(PyObject *m, PyObject *args) {
    PyObject *blobs;
    unsigned int want;
    int sketches, hll;
    double since, until;
    if (!PyArg_ParseTuple(args, "OIppdd", &blobs, &want, &sketches, &hll, &since, &until))
        return NULL;
    if (!PyList_CheckExact(blobs) && !PyTuple_CheckExact(blobs)) Py_RETURN_NONE;
    PyObject *seq = PySequence_Fast(blobs, "blobs: a list or tuple"), *out = NULL;
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), got = 0;
    Py_buffer *views = PyMem_Calloc((size_t)n + 1, sizeof *views);
    sg_ch_blob *parts = PyMem_Calloc((size_t)n + 1, sizeof *parts);
    if (!views || !parts) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < n; got++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, got);
        if (!PyBytes_CheckExact(item) && !PyByteArray_CheckExact(item)) {
            out = Py_NewRef(Py_None); /* the reference reads anything else its own way */
            goto done;
        }
        if (PyObject_GetBuffer(item, &views[got], PyBUF_SIMPLE) < 0) goto done;
        parts[got] = (sg_ch_blob){views[got].buf, (size_t)views[got].len};
    }
    sg_chunks d = {0};
    d.want = want & ((1u << SG_CH_NVALUES) - 1);
    d.sketches = sketches;
    d.hll = hll;
    d.since = since;
    d.until = until;
    d.max_cells = MAX_CELLS;
    int r;
    Py_BEGIN_ALLOW_THREADS;
    r = sg_chunks_decode(&d, parts, (size_t)n);
    Py_END_ALLOW_THREADS;
    if (r == SG_CH_OK)
        out = result(&d);
    else if (r == SG_CH_BAD)
        PyErr_SetString(PyExc_ValueError, d.error);
    else
        out = Py_NewRef(Py_None);
    sg_chunks_free(&d);
done:
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(parts);
    Py_DECREF(seq);
    return out;
}
