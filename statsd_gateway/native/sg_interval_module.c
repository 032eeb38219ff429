/* _native.Interval: a live interval swapped out of a core, held in native memory until its
 * snapshot is finished into columns (the flush) or released.
 *
 * Every method runs with the GIL held, so they never overlap, but for columns(), which bins
 * the values with the GIL released: while it does, the methods that change or free the table
 * refuse (RuntimeError) instead of pulling memory from under it. The aggregator never calls
 * them then (nothing adds to or discards from a snapshot while the flusher finishes it); the
 * refusal is the guard that keeps a mistake from becoming a crash. */

#include "sg_bins.h"
#include "sg_interval.h"

typedef struct {
    PyObject_HEAD
    sg_table *t;
    /* Each series-bucket's place in the table as it was swapped out (pop() and discard()
     * close the gaps they leave): the order the interval's accumulators would have been made
     * in, which the rows keep (sums over rows add in row order). */
    int64_t *origin;
    int busy; /* how many columns() calls are binning without the GIL */
} IntervalObject;

static PyTypeObject IntervalType;

PyObject *sg_interval_new(sg_table *t) {
    IntervalObject *self = PyObject_New(IntervalObject, &IntervalType);
    int64_t *origin = PyMem_Malloc((t->n ? t->n : 1) * sizeof *origin);
    if (!self || !origin) {
        PyMem_Free(origin);
        if (self) PyObject_Free(self);
        sg_table_free(t);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < t->n; i++) origin[i] = (int64_t)i;
    self->t = t;
    self->origin = origin;
    self->busy = 0;
    return (PyObject *)self;
}

static void Interval_dealloc(IntervalObject *self) {
    sg_table_free(self->t); /* never busy here: columns() holds a reference while it bins */
    PyMem_Free(self->origin);
    PyObject_Free(self);
}

/* Removes the series-buckets i with gone[i], keeping the others' order and origins. */
static void interval_drop(IntervalObject *self, const unsigned char *gone) {
    size_t kept = 0;
    for (size_t i = 0; i < self->t->n; i++)
        if (!gone[i]) self->origin[kept++] = self->origin[i];
    sg_table_drop(self->t, gone);
}

/* (entries, origins) of the series-buckets i with take[i] (all of them if take is NULL). */
static PyObject *entries_and_origins(IntervalObject *self, const unsigned char *take) {
    PyObject *entries = PyList_New(0), *origins = PyList_New(0);
    for (size_t i = 0; entries && origins && i < self->t->n; i++) {
        if (take && !take[i]) continue;
        PyObject *e = sg_entry_of(&self->t->accs[i]);
        PyObject *o = e ? PyLong_FromLongLong(self->origin[i]) : NULL;
        if (!o || PyList_Append(entries, e) < 0 || PyList_Append(origins, o) < 0) Py_CLEAR(entries);
        Py_XDECREF(e);
        Py_XDECREF(o);
    }
    if (!entries || !origins) {
        Py_XDECREF(entries);
        Py_XDECREF(origins);
        return NULL;
    }
    return Py_BuildValue("(NN)", entries, origins);
}

static int refuse_if_busy(IntervalObject *self) {
    if (!self->busy) return 0;
    PyErr_SetString(PyExc_RuntimeError, "the interval is being finished into columns");
    return -1;
}

static Py_ssize_t Interval_len(IntervalObject *self) { return (Py_ssize_t)self->t->n; }

static PyObject *Interval_memory(IntervalObject *self, PyObject *unused) {
    return Py_BuildValue("(nn)", (Py_ssize_t)self->t->n, (Py_ssize_t)self->t->values);
}

static PyObject *Interval_sids(IntervalObject *self, PyObject *unused) {
    return sg_table_sids(self->t);
}

static int cmp_sid(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* A mask of the series-buckets whose series is in `iterable` (caller frees), their number in
 * *n, or NULL with an exception. */
static unsigned char *series_mask(IntervalObject *self, PyObject *iterable, size_t *n) {
    size_t nsids;
    int64_t *sids = sg_sorted_sids(iterable, &nsids);
    if (!sids) return NULL;
    unsigned char *mask = PyMem_Calloc(self->t->n ? self->t->n : 1, 1);
    if (!mask) {
        PyMem_Free(sids);
        PyErr_NoMemory();
        return NULL;
    }
    *n = 0;
    for (size_t i = 0; i < self->t->n; i++)
        if (bsearch(&self->t->accs[i].sid, sids, nsids, sizeof *sids, cmp_sid)) {
            mask[i] = 1;
            ++*n;
        }
    PyMem_Free(sids);
    return mask;
}

static PyObject *Interval_copy(IntervalObject *self, PyObject *iterable) {
    size_t n;
    unsigned char *mask = series_mask(self, iterable, &n);
    if (!mask) return NULL;
    PyObject *out = entries_and_origins(self, mask);
    PyMem_Free(mask);
    return out;
}

static PyObject *Interval_discard(IntervalObject *self, PyObject *iterable) {
    if (refuse_if_busy(self) < 0) return NULL;
    size_t n;
    unsigned char *mask = series_mask(self, iterable, &n);
    if (!mask) return NULL;
    if (n) interval_drop(self, mask);
    PyMem_Free(mask);
    return PyLong_FromSize_t(n);
}

/* pop(pairs): (entries, origins) of the (bucket, series id) pairs held, removed from the
 * interval. */
static PyObject *Interval_pop(IntervalObject *self, PyObject *pairs) {
    if (refuse_if_busy(self) < 0) return NULL;
    PyObject *seq = PySequence_Fast(pairs, "pairs: a sequence of (bucket, series id)");
    if (!seq) return NULL;
    sg_table *t = self->t;
    unsigned char *gone = PyMem_Calloc(t->n ? t->n : 1, 1);
    PyObject *out = NULL;
    size_t found = 0;
    if (!gone) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *pair = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, i), "a pair");
        if (!pair) goto done;
        double bucket = -1.0;
        long long sid = -1;
        if (PySequence_Fast_GET_SIZE(pair) == 2) {
            bucket = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(pair, 0));
            sid = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(pair, 1));
        } else {
            PyErr_SetString(PyExc_ValueError, "a pair is (bucket, series id)");
        }
        Py_DECREF(pair);
        if (PyErr_Occurred()) goto done;
        long at = sg_table_find(t, bucket, (int64_t)sid);
        if (at >= 0 && !gone[at]) {
            gone[at] = 1;
            found++;
        }
    }
    out = entries_and_origins(self, gone);
    if (out && found) interval_drop(self, gone);
done:
    PyMem_Free(gone);
    Py_DECREF(seq);
    return out;
}

/* entries(): (entries, origins) of every series-bucket, and the interval is left empty. The
 * entries are copies: a failure part way leaves the interval as it was. */
static PyObject *Interval_entries(IntervalObject *self, PyObject *unused) {
    if (refuse_if_busy(self) < 0) return NULL;
    PyObject *out = entries_and_origins(self, NULL);
    if (!out) return NULL;
    sg_table_free(self->t);
    self->t = sg_table_new();
    return out;
}

static PyObject *new_bytes(size_t n, void **at) {
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n ? n : 1));
    if (b) *at = PyBytes_AS_STRING(b);
    return b;
}

enum { C_TS, C_SID, C_COUNT, C_SUM, C_MIN, C_MAX, C_LAST, C_LAST_TS, C_TYPE, C_VALUES, C_KEYS,
       C_COUNTS, C_BOUNDS, C_ZERO, C_ORIGIN, C_N };

/* columns(): the interval's rows as the buffers of a RowBatch, in the table's order:
 * (ts, sid, count, sum, min, max, last, last_ts, type, has_values, keys, counts, bounds, zero,
 * origin, sets) — float64 but sid and origin (int64), type and has_values (uint8), keys and
 * bounds (int64) as sketch.FlatBins holds them; min/max NaN where no value was seen, last and
 * last_ts NaN where no gauge value; sets: (row, [member, ...]) of each set's row. None if a
 * value or weight cannot be binned (the reference's bin_flat then says which). */
static PyObject *Interval_columns(IntervalObject *self, PyObject *unused) {
    /* Busy from the start: nothing that runs Python below (an allocation that collects, a
     * finalizer) may change the table under the pointers taken here. */
    self->busy++;
    Py_INCREF(self);
    const sg_table *t = self->t;
    size_t n = t->n, total = t->values;
    PyObject *cols[C_N] = {0};
    void *p[C_N] = {0};
    size_t sizes[C_N] = {n * 8, n * 8, n * 8, n * 8, n * 8, n * 8, n * 8, n * 8, n, n,
                         total * 8, total * 8, (2 * n + 1) * 8, n * 8, n * 8};
    PyObject *out = NULL, *sets = PyList_New(0);
    if (!sets) goto done;
    for (int c = 0; c < C_N; c++)
        if (!(cols[c] = new_bytes(sizes[c], &p[c]))) goto done;
    double *ts = p[C_TS], *count = p[C_COUNT], *sum = p[C_SUM], *mn = p[C_MIN], *mx = p[C_MAX],
           *last = p[C_LAST], *last_ts = p[C_LAST_TS], *zero = p[C_ZERO], *counts = p[C_COUNTS];
    int64_t *sid = p[C_SID], *keys = p[C_KEYS], *bounds = p[C_BOUNDS];
    uint8_t *type = p[C_TYPE], *has_values = p[C_VALUES];
    memcpy(p[C_ORIGIN], self->origin, n * 8);
    for (size_t i = 0; i < n; i++) {
        const sg_acc *a = &t->accs[i];
        ts[i] = a->bucket;
        sid[i] = a->sid;
        count[i] = a->count;
        sum[i] = a->sum;
        mn[i] = isinf(a->min) ? NAN : a->min;
        mx[i] = isinf(a->max) ? NAN : a->max;
        last[i] = a->has_last ? a->last : NAN;
        last_ts[i] = a->has_last ? a->last_ts : NAN;
        type[i] = (uint8_t)a->type;
        has_values[i] = a->n > 0;
        if (a->type != SG_SET) continue;
        const sg_members *m = a->members;
        PyObject *members = PyList_New(m ? (Py_ssize_t)m->n : 0);
        if (!members) goto done;
        for (size_t k = 0; m && k < m->n; k++) {
            const char *at = m->bytes + m->offsets[k];
            uint32_t len;
            memcpy(&len, at, 4);
            PyObject *s = PyUnicode_DecodeUTF8(at + 4, len, "replace");
            if (!s) {
                Py_DECREF(members);
                goto done;
            }
            PyList_SET_ITEM(members, (Py_ssize_t)k, s);
        }
        PyObject *item = Py_BuildValue("(nN)", (Py_ssize_t)i, members);
        if (!item || PyList_Append(sets, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    int finite = 1;
    size_t at = 0;
    sg_binner binner = {0};
    Py_BEGIN_ALLOW_THREADS;
    bounds[0] = 0;
    for (size_t i = 0; finite && i < n; i++) {
        const sg_acc *a = &t->accs[i];
        finite = sg_bin_run(&binner, a->values, a->weights, a->n, i, keys, counts, bounds, zero,
                            &at) == 0;
    }
    sg_binner_free(&binner);
    Py_END_ALLOW_THREADS;
    if (!finite) {
        out = Py_None;
        Py_INCREF(out);
        goto done;
    }
    if (_PyBytes_Resize(&cols[C_KEYS], (Py_ssize_t)(at ? at * 8 : 1)) < 0 ||
        _PyBytes_Resize(&cols[C_COUNTS], (Py_ssize_t)(at ? at * 8 : 1)) < 0)
        goto done;
    out = PyTuple_New(C_N + 1);
    if (!out) goto done;
    for (int c = 0; c < C_N; c++) {
        PyTuple_SET_ITEM(out, c, cols[c]);
        cols[c] = NULL;
    }
    PyTuple_SET_ITEM(out, C_N, sets);
    sets = NULL;
done:
    for (int c = 0; c < C_N; c++) Py_XDECREF(cols[c]);
    Py_XDECREF(sets);
    self->busy--;
    Py_DECREF(self);
    return out;
}

static PyMethodDef Interval_methods[] = {
    {"memory", (PyCFunction)Interval_memory, METH_NOARGS, "(series-buckets, values) held."},
    {"sids", (PyCFunction)Interval_sids, METH_NOARGS, "The set of series ids held."},
    {"copy", (PyCFunction)Interval_copy, METH_O,
     "copy(sids): (entries, origins) of these series, copies."},
    {"discard", (PyCFunction)Interval_discard, METH_O,
     "discard(sids): drops these series; returns how many entries."},
    {"pop", (PyCFunction)Interval_pop, METH_O,
     "pop(pairs): (entries, origins) of these (bucket, series id) pairs, removed."},
    {"entries", (PyCFunction)Interval_entries, METH_NOARGS,
     "(entries, origins) of every series-bucket; the interval is left empty."},
    {"columns", (PyCFunction)Interval_columns, METH_NOARGS,
     "The rows as column buffers and binned sketches (see the C source), or None."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Interval_as_sequence = {
    .sq_length = (lenfunc)Interval_len,
};

static PyTypeObject IntervalType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "statsd_gateway._native.Interval",
    .tp_basicsize = sizeof(IntervalObject),
    .tp_dealloc = (destructor)Interval_dealloc,
    .tp_as_sequence = &Interval_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A swapped-out interval's series-buckets, held in native memory.",
    .tp_methods = Interval_methods,
};

int sg_interval_ready(PyObject *m) {
    if (PyType_Ready(&IntervalType) < 0) return -1;
    Py_INCREF(&IntervalType);
    if (PyModule_AddObject(m, "Interval", (PyObject *)&IntervalType) < 0) {
        Py_DECREF(&IntervalType);
        return -1;
    }
    return 0;
}
