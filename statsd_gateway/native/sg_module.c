/* statsd_gateway._native: the native ingest core for Python (native.py is its only user).
 *
 * Core: one parser + key cache + live table. `feed()` parses on the calling thread; `start()`
 * runs a reader thread that receives datagrams with recvmmsg() without the GIL and parses them
 * as they come. Lock order, everywhere: the core's mutex, then the GIL (a caller holding the
 * GIL lets it go while it waits for the mutex), so that the reader may take the GIL to call the
 * resolver for a new series while it holds the mutex.
 * Gauges: the current gauge values, shared by every core.
 * A core given a Relay (set_relay) hands it every datagram it parses, as received: the reader
 * thread after each batch, without the GIL (sg_relay.h).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sg_bins.h"
#include "sg_chunks.h"
#include "sg_core.h"
#include "sg_interval.h"
#include "sg_relay.h"
#include "sg_windows.h"

#define READ_BATCH 32
#define READ_BUFFER 65536

static PyObject *array_type; /* array.array */
/* On a reader thread: its own Python thread state, made once when it starts (a thread state
 * made per call, as PyGILState_Ensure does on a thread Python did not start, costs ~15 µs
 * each new series). NULL on every other thread, which holds the GIL already when it calls in. */
static __thread PyThreadState *reader_state;
static PyObject *metric_types; /* MetricType's members, in sg_type's order (set_types()) */

/* ---- Gauges */

typedef struct {
    PyObject_HEAD
    sg_gauges *g;
} GaugesObject;

static void Gauges_dealloc(GaugesObject *self) {
    sg_gauges_free(self->g);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Gauges_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    GaugesObject *self = (GaugesObject *)type->tp_alloc(type, 0);
    if (self) self->g = sg_gauges_new();
    return (PyObject *)self;
}

static void gauges_lock(sg_gauges *g) {
    if (pthread_mutex_trylock(&g->lock) == 0) return;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&g->lock);
    Py_END_ALLOW_THREADS
}

static PyObject *Gauges_take_changed(GaugesObject *self, PyObject *unused) {
    sg_gauges *g = self->g;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    gauges_lock(g);
    for (size_t i = 0; i < g->nslots; i++) {
        if (!g->sids[i] || !g->changed[i]) continue;
        PyObject *item = Py_BuildValue("(Ldd)", (long long)g->sids[i], g->v[i], g->t[i]);
        if (!item || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            pthread_mutex_unlock(&g->lock);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
        g->changed[i] = 0;
    }
    pthread_mutex_unlock(&g->lock);
    return out;
}

static int cmp_sid(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int64_t *sg_sorted_sids(PyObject *iterable, size_t *n) {
    PyObject *seq = PySequence_Fast(iterable, "series ids: an iterable of ints");
    if (!seq) return NULL;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    int64_t *sids = PyMem_Malloc((size_t)(len ? len : 1) * sizeof *sids);
    if (!sids) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_Free(sids);
            Py_DECREF(seq);
            return NULL;
        }
        sids[i] = v;
    }
    Py_DECREF(seq);
    qsort(sids, (size_t)len, sizeof *sids, cmp_sid);
    *n = (size_t)len;
    return sids;
}

static PyObject *Gauges_forget(GaugesObject *self, PyObject *iterable) {
    size_t n;
    int64_t *sids = sg_sorted_sids(iterable, &n);
    if (!sids) return NULL;
    Py_BEGIN_ALLOW_THREADS sg_gauges_forget(self->g, sids, n);
    Py_END_ALLOW_THREADS PyMem_Free(sids);
    Py_RETURN_NONE;
}

static PyObject *Gauges_seed(GaugesObject *self, PyObject *args) {
    long long sid;
    double v, t;
    if (!PyArg_ParseTuple(args, "Ldd", &sid, &v, &t)) return NULL;
    if (pthread_mutex_trylock(&self->g->lock) == 0) {
        pthread_mutex_unlock(&self->g->lock);
        sg_gauges_seed(self->g, sid, v, t);
    } else {
        Py_BEGIN_ALLOW_THREADS sg_gauges_seed(self->g, sid, v, t);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyMethodDef Gauges_methods[] = {
    {"seed", (PyCFunction)Gauges_seed, METH_VARARGS,
     "seed(sid, value, time): the current value of a gauge, unless one is known already."},
    {"take_changed", (PyCFunction)Gauges_take_changed, METH_NOARGS,
     "[(sid, value, time)] of the gauges changed since the last call."},
    {"forget", (PyCFunction)Gauges_forget, METH_O, "Forgets the current values of these series."},
    {NULL}};

static PyTypeObject GaugesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "statsd_gateway._native.Gauges",
    .tp_basicsize = sizeof(GaugesObject),
    .tp_dealloc = (destructor)Gauges_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The current value of every gauge the native cores have seen, by series id.",
    .tp_methods = Gauges_methods,
    .tp_new = Gauges_new,
};

/* ---- Core */

typedef struct {
    PyObject_HEAD
    sg_core *core;
    pthread_mutex_t lock;
    PyObject *gauges; /* GaugesObject, kept alive */
    PyObject *resolve;
    PyObject *clock;  /* None: the system's wall clock */
    PyObject *relay;  /* the Relay every parsed datagram goes to, or NULL */
    sg_relay *relay_c;
    /* the reader thread */
    pthread_t thread;
    int running;
    int joining; /* Core_stop_reader waits for the thread (GIL let go) */
    int fd, notify_fd, stop_fd;
    atomic_int notified;
    atomic_int alive;    /* the reader thread has not returned */
    atomic_int stopping; /* Core_stop_reader was called: read what is queued, then end */
    int holds; /* hold() calls not released yet */
    PyInterpreterState *interp; /* the reader thread's thread state belongs to it */
    PyObject *weakrefs;
    char *buffers;
    struct mmsghdr *msgs;
    struct iovec *iovs;
} CoreObject;

static void core_lock(CoreObject *self) {
    if (pthread_mutex_trylock(&self->lock) == 0) return;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&self->lock);
    Py_END_ALLOW_THREADS
}

static int resolve_trampoline(void *ctx, int type, const char *head, size_t hlen,
                              const char *tags, size_t tlen, int admit, int64_t *sid,
                              double *gauge_v, double *gauge_t) {
    CoreObject *self = ctx;
    PyThreadState *mine = reader_state;
    PyGILState_STATE gil = PyGILState_LOCKED;
    if (mine)
        PyEval_RestoreThread(mine);
    else
        gil = PyGILState_Ensure();
    int status = -1;
    PyObject *r = PyObject_CallFunction(self->resolve, "iy#y#i", type, head, (Py_ssize_t)hlen,
                                        tags, (Py_ssize_t)tlen, admit);
    long long code;
    double v, t;
    if (r && PyArg_ParseTuple(r, "Ldd", &code, &v, &t)) {
        if (code > 0) {
            *sid = code;
            *gauge_v = v;
            *gauge_t = t;
            status = 0;
        } else if (code == 0 && !admit) { /* admitted needs an id: 0 is no series */
            status = 0;
        } else if (code < 0 && code > -SG_NREASONS) {
            status = (int)-code;
        }
    }
    if (status < 0) PyErr_WriteUnraisable(self->resolve);
    Py_XDECREF(r);
    if (mine)
        PyEval_SaveThread();
    else
        PyGILState_Release(gil);
    return status;
}

static void Core_stop_reader(CoreObject *self);

static void Core_dealloc(CoreObject *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    Core_stop_reader(self);
    sg_core_free(self->core);
    pthread_mutex_destroy(&self->lock);
    Py_XDECREF(self->gauges);
    Py_XDECREF(self->resolve);
    Py_XDECREF(self->clock);
    Py_XDECREF(self->relay);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Core_configure_from(CoreObject *self, PyObject *kw);

static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *gauges, *resolve;
    if (!PyArg_ParseTuple(args, "O!O", &GaugesType, &gauges, &resolve)) return NULL;
    if (!PyCallable_Check(resolve)) {
        PyErr_SetString(PyExc_TypeError, "resolve must be callable");
        return NULL;
    }
    CoreObject *self = (CoreObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    /* Recursive: hold() keeps it across calls that take it again. */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&self->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    self->fd = self->notify_fd = self->stop_fd = -1;
    Py_INCREF(gauges);
    self->gauges = gauges;
    Py_INCREF(resolve);
    self->resolve = resolve;
    Py_INCREF(Py_None);
    self->clock = Py_None;
    self->core = sg_core_new(((GaugesObject *)gauges)->g, resolve_trampoline, self);
    if (kw && Core_configure_from(self, kw) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int Core_configure_from(CoreObject *self, PyObject *kw) {
    static char *names[] = {"gauge_delta", "interval", "max_backdate", "future_max",
                            "max_keys",    "clock",    NULL};
    sg_core *c = self->core;
    int delta = c->gauge_delta;
    double interval = c->interval, backdate = c->max_backdate, future = c->future_max;
    Py_ssize_t max_keys = (Py_ssize_t)c->max_keys;
    PyObject *clock = self->clock;
    PyObject *empty = PyTuple_New(0);
    if (!empty) return -1;
    int ok = PyArg_ParseTupleAndKeywords(empty, kw, "|$pdddnO", names, &delta, &interval,
                                         &backdate, &future, &max_keys, &clock);
    Py_DECREF(empty);
    if (!ok) return -1;
    if (!(interval > 0) || max_keys < 1) {
        PyErr_SetString(PyExc_ValueError, "interval must be > 0 and max_keys >= 1");
        return -1;
    }
    if (clock != Py_None && !PyCallable_Check(clock)) {
        PyErr_SetString(PyExc_TypeError, "clock must be callable or None");
        return -1;
    }
    c->gauge_delta = delta;
    c->interval = interval;
    c->max_backdate = backdate;
    c->future_max = future;
    c->max_keys = (size_t)max_keys;
    Py_INCREF(clock);
    Py_SETREF(self->clock, clock);
    return 0;
}

static PyObject *Core_configure(CoreObject *self, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args)) {
        PyErr_SetString(PyExc_TypeError, "configure() takes keyword arguments only");
        return NULL;
    }
    if (!kw) Py_RETURN_NONE;
    core_lock(self);
    int r = Core_configure_from(self, kw);
    pthread_mutex_unlock(&self->lock);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Core_feed(CoreObject *self, PyObject *args) {
    Py_buffer data;
    int transport;
    double now;
    if (!PyArg_ParseTuple(args, "y*id", &data, &transport, &now)) return NULL;
    if (transport < 0 || transport >= SG_TRANSPORTS) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "unknown transport");
        return NULL;
    }
    core_lock(self);
    sg_parse(self->core, data.buf, (size_t)data.len, now, transport);
    pthread_mutex_unlock(&self->lock);
    if (self->relay_c) {
        struct iovec part = {data.buf, (size_t)data.len};
        sg_relay_append(self->relay_c, &part, 1);
    }
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

static PyObject *Core_set_relay(CoreObject *self, PyObject *relay) {
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "set_relay() before start()");
        return NULL;
    }
    sg_relay *r = NULL;
    if (relay != Py_None && !(r = sg_relay_of(relay))) return NULL;
    core_lock(self);
    Py_XSETREF(self->relay, relay == Py_None ? NULL : Py_NewRef(relay));
    self->relay_c = r;
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

/* add(samples, sids, now): Sample tuples already admitted (sids[i] is samples[i]'s series). */
static PyObject *Core_add(CoreObject *self, PyObject *args) {
    PyObject *samples, *sids;
    double now;
    if (!PyArg_ParseTuple(args, "O!O!d", &PyList_Type, &samples, &PyList_Type, &sids, &now))
        return NULL;
    if (!metric_types) {
        PyErr_SetString(PyExc_RuntimeError, "set_types() was not called");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(samples);
    if (PyList_GET_SIZE(sids) != n) {
        PyErr_SetString(PyExc_ValueError, "one series id per sample");
        return NULL;
    }
    core_lock(self);
    PyObject *failed = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *sample = PyList_GET_ITEM(samples, i);
        if (!PyTuple_Check(sample) || PyTuple_GET_SIZE(sample) != 7) {
            PyErr_SetString(PyExc_TypeError, "a sample is a 7-tuple");
            failed = sample;
            break;
        }
        PyObject *type_obj = PyTuple_GET_ITEM(sample, 2);
        int type = -1;
        for (int k = 0; k < SG_NTYPES; k++)
            if (PyTuple_GET_ITEM(metric_types, k) == type_obj) type = k;
        long long sid = PyLong_AsLongLong(PyList_GET_ITEM(sids, i));
        PyObject *value = PyTuple_GET_ITEM(sample, 3), *ts_obj = PyTuple_GET_ITEM(sample, 5);
        double v = 0.0, rate = PyFloat_AsDouble(PyTuple_GET_ITEM(sample, 4));
        double ts = ts_obj == Py_None ? 0.0 : PyFloat_AsDouble(ts_obj);
        const char *member = NULL;
        Py_ssize_t mlen = 0;
        if (type == SG_SET) {
            if (PyUnicode_Check(value)) /* its UTF-8 form is cached on `value` itself */
                member = PyUnicode_AsUTF8AndSize(value, &mlen);
            else
                PyErr_SetString(PyExc_TypeError, "a set member is a str");
        } else {
            v = PyFloat_AsDouble(value);
        }
        int delta = PyObject_IsTrue(PyTuple_GET_ITEM(sample, 6));
        if (type < 0 || PyErr_Occurred() || delta < 0 || (type == SG_SET && !member)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "not a metric type");
            failed = sample;
            break;
        }
        sg_add(self->core, sid, type, v, member, (size_t)mlen, rate, ts_obj != Py_None, ts,
               delta, now);
    }
    pthread_mutex_unlock(&self->lock);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

/* ---- HTTP points: resolve_points() judges a batch's typed points, apply_points() adds them */

/* One point resolve_points() accepted, packed for apply_points(). */
typedef struct {
    int64_t sid;
    int32_t type, has_ts;
    double value, rate, ts;
    int64_t member; /* index into the members list (a set's point), or -1 */
} sg_point;

static PyObject *s_name, *s_value, *s_type, *s_tags, *s_timestamp, *s_sample_rate;
/* MetricPoint (set_point_type()) and its fields' slots, read without an attribute lookup. */
static PyTypeObject *point_type;
static PyMemberDef *point_fields[6];

static PyObject *set_point_type(PyObject *m, PyObject *cls) {
    PyObject **names[6] = {&s_name, &s_value, &s_type, &s_tags, &s_timestamp, &s_sample_rate};
    PyMemberDef *fields[6];
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "set_point_type() takes the MetricPoint class");
        return NULL;
    }
    for (int k = 0; k < 6; k++) {
        PyObject *d = PyDict_GetItemWithError(((PyTypeObject *)cls)->tp_dict, *names[k]);
        if (!d || !PyObject_TypeCheck(d, &PyMemberDescr_Type)) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "%R has no slot %R", cls, *names[k]);
            return NULL;
        }
        fields[k] = ((PyMemberDescrObject *)d)->d_member;
        if (fields[k]->type != T_OBJECT_EX && fields[k]->type != T_OBJECT) {
            PyErr_Format(PyExc_TypeError, "%R's slot %R holds no object", cls, *names[k]);
            return NULL;
        }
    }
    Py_INCREF(cls);
    Py_XSETREF(point_type, (PyTypeObject *)cls);
    memcpy(point_fields, fields, sizeof fields);
    Py_RETURN_NONE;
}

/* Field k of point p, a new reference; NULL with an exception (AttributeError: not a point). */
static PyObject *point_field(PyObject *p, int k) {
    static PyObject **names[6] = {&s_name, &s_value, &s_type, &s_tags, &s_timestamp,
                                  &s_sample_rate};
    if (point_type && Py_TYPE(p) == point_type)
        return PyMember_GetOne((const char *)p, point_fields[k]);
    return PyObject_GetAttr(p, *names[k]);
}

static int type_code(PyObject *type_obj) {
    for (int k = 0; k < SG_NTYPES; k++)
        if (PyTuple_GET_ITEM(metric_types, k) == type_obj) return k;
    return -1;
}

/* The cache key of a point: (type code, name, k1, v1, k2, v2, ...), its tags in the point's order;
 * point_key() in Python builds the same. NULL with an exception set if the point is odd. */
static PyObject *point_key_of(int type, PyObject *name, PyObject *tags) {
    Py_ssize_t ntags = PyDict_GET_SIZE(tags);
    PyObject *key = PyTuple_New(2 + 2 * ntags);
    PyObject *code = PyLong_FromLong(type); /* an int: an Enum member hashes in Python */
    if (!key || !code) {
        Py_XDECREF(key);
        Py_XDECREF(code);
        return NULL;
    }
    PyTuple_SET_ITEM(key, 0, code);
    Py_INCREF(name);
    PyTuple_SET_ITEM(key, 1, name);
    Py_ssize_t pos = 0, j = 2;
    PyObject *k, *v;
    while (j < 2 + 2 * ntags && PyDict_Next(tags, &pos, &k, &v)) {
        Py_INCREF(k);
        PyTuple_SET_ITEM(key, j++, k);
        Py_INCREF(v);
        PyTuple_SET_ITEM(key, j++, v);
    }
    return key;
}

/* The fallback's answer for point i: None (refused; the caller recorded why) or
 * (sid, type code, value, member or None, rate, timestamp or None). 1 packed, 0 refused, -1. */
static int pack_fallback(PyObject *r, sg_point *out, PyObject *members) {
    if (r == Py_None) return 0;
    long long sid;
    int type;
    double value, rate;
    PyObject *member, *ts;
    if (!PyArg_ParseTuple(r, "LidOdO", &sid, &type, &value, &member, &rate, &ts)) return -1;
    if (type < 0 || type >= SG_NTYPES || sid <= 0) {
        PyErr_SetString(PyExc_ValueError, "the fallback gave no series or type");
        return -1;
    }
    out->sid = sid;
    out->type = type;
    out->value = value;
    out->rate = rate;
    out->member = -1;
    out->has_ts = ts != Py_None;
    out->ts = out->has_ts ? PyFloat_AsDouble(ts) : 0.0;
    if (out->has_ts && PyErr_Occurred()) return -1;
    if (type == SG_SET) {
        if (!PyUnicode_Check(member)) {
            PyErr_SetString(PyExc_TypeError, "a set member is a str");
            return -1;
        }
        out->member = PyList_GET_SIZE(members);
        if (PyList_Append(members, member) < 0) return -1;
    }
    return 1;
}

/* resolve_points(points, now, cache, fallback, max_backdate, future_max, value_abs_max):
 * the points (MetricPoint structs) of one batch, judged in order. A point whose key (type, name,
 * tags) `cache` maps to a series id, with a finite number in range and no timestamp or a unix
 * time within the limits around `now`, is packed here; any other point is handed to
 * fallback(i, point), which says what the Python reference does with it. Returns (packed bytes,
 * set members, the gauges' series ids). */
static PyObject *resolve_points(PyObject *m, PyObject *args) {
    PyObject *points, *cache, *fallback;
    double now, max_backdate, future_max, abs_max;
    if (!PyArg_ParseTuple(args, "O!dO!Oddd", &PyList_Type, &points, &now, &PyDict_Type, &cache,
                          &fallback, &max_backdate, &future_max, &abs_max))
        return NULL;
    if (!metric_types) {
        PyErr_SetString(PyExc_RuntimeError, "set_types() was not called");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(points);
    PyObject *packed = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)sizeof(sg_point) * (n ? n : 1));
    PyObject *members = PyList_New(0), *gauges = PySet_New(NULL);
    if (!packed || !members || !gauges) goto fail;
    sg_point *out = (sg_point *)PyBytes_AS_STRING(packed);
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(points, i);
        PyObject *name = NULL, *value = NULL, *type_obj = NULL, *tags = NULL, *ts = NULL,
                 *rate = NULL, *key = NULL, *sid_obj = NULL;
        int fast = 0, status = 0;
        name = point_field(p, 0);
        value = name ? point_field(p, 1) : NULL;
        type_obj = value ? point_field(p, 2) : NULL;
        tags = type_obj ? point_field(p, 3) : NULL;
        ts = tags ? point_field(p, 4) : NULL;
        rate = ts ? point_field(p, 5) : NULL;
        if (!rate) { /* not a MetricPoint (a point msgspec refused): the fallback's */
            if (PyErr_ExceptionMatches(PyExc_AttributeError)) PyErr_Clear();
            else status = -1;
        }
        int type = rate ? type_code(type_obj) : -1;
        sg_point *o = out + kept;
        if (type >= 0 && type != SG_SET && PyFloat_CheckExact(value) && PyFloat_CheckExact(rate) &&
            PyUnicode_CheckExact(name) && PyDict_CheckExact(tags) &&
            (ts == Py_None || PyFloat_CheckExact(ts))) {
            double v = PyFloat_AS_DOUBLE(value), t = ts == Py_None ? 0.0 : PyFloat_AS_DOUBLE(ts);
            /* Written so that NaN fails each test, as the Python checks refuse it. */
            fast = v >= -abs_max && v <= abs_max &&
                   (ts == Py_None || (t <= now + future_max && t >= now - max_backdate));
            if (fast) {
                key = point_key_of(type, name, tags);
                if (!key) status = -1;
                else sid_obj = PyDict_GetItemWithError(cache, key); /* borrowed */
                if (!sid_obj) fast = 0;
                if (PyErr_Occurred()) status = -1;
            }
            if (fast && !status) {
                o->sid = PyLong_AsLongLong(sid_obj);
                o->type = type;
                o->value = v;
                o->rate = PyFloat_AS_DOUBLE(rate);
                o->has_ts = ts != Py_None;
                o->ts = t;
                o->member = -1;
                if (PyErr_Occurred()) status = -1;
            }
        }
        if (!fast && !status) {
            PyObject *r = PyObject_CallFunction(fallback, "nO", i, p);
            status = r ? pack_fallback(r, o, members) : -1;
            Py_XDECREF(r);
            fast = status == 1;
            if (status == 1) status = 0;
        }
        if (fast && !status) {
            if (o->type == SG_GAUGE) {
                PyObject *sid = PyLong_FromLongLong(o->sid);
                if (!sid || PySet_Add(gauges, sid) < 0) status = -1;
                Py_XDECREF(sid);
            }
            kept++;
        }
        Py_XDECREF(name);
        Py_XDECREF(value);
        Py_XDECREF(type_obj);
        Py_XDECREF(tags);
        Py_XDECREF(ts);
        Py_XDECREF(rate);
        Py_XDECREF(key);
        if (status < 0) goto fail;
    }
    if (_PyBytes_Resize(&packed, (Py_ssize_t)sizeof(sg_point) * kept) < 0) goto fail;
    return Py_BuildValue("(NNN)", packed, members, gauges);
fail:
    Py_XDECREF(packed);
    Py_XDECREF(members);
    Py_XDECREF(gauges);
    return NULL;
}

/* apply_points(packed, members, now): what resolve_points() packed, into the live table as
 * received at `now`, in the batch's order. */
static PyObject *Core_apply_points(CoreObject *self, PyObject *args) {
    Py_buffer packed;
    PyObject *members;
    double now;
    if (!PyArg_ParseTuple(args, "y*O!d", &packed, &PyList_Type, &members, &now)) return NULL;
    if (packed.len % (Py_ssize_t)sizeof(sg_point)) {
        PyBuffer_Release(&packed);
        PyErr_SetString(PyExc_ValueError, "not what resolve_points() packed");
        return NULL;
    }
    const sg_point *p = packed.buf;
    size_t n = (size_t)packed.len / sizeof(sg_point);
    Py_ssize_t nmembers = PyList_GET_SIZE(members);
    for (size_t i = 0; i < n; i++) /* checked before any is added: all or nothing */
        if (p[i].type < 0 || p[i].type >= SG_NTYPES ||
            (p[i].type == SG_SET && (p[i].member < 0 || p[i].member >= nmembers ||
                                     !PyUnicode_Check(PyList_GET_ITEM(members, p[i].member))))) {
            PyBuffer_Release(&packed);
            PyErr_SetString(PyExc_ValueError, "not what resolve_points() packed");
            return NULL;
        }
    core_lock(self);
    for (size_t i = 0; i < n; i++) {
        const char *member = NULL;
        Py_ssize_t mlen = 0;
        if (p[i].type == SG_SET) /* its UTF-8 form is cached on the str itself */
            member = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(members, p[i].member), &mlen);
        if (p[i].type == SG_SET && !member) {
            PyErr_Clear(); /* a lone surrogate: the fallback refuses those, so never here */
            continue;
        }
        sg_add(self->core, p[i].sid, p[i].type, p[i].value, member, (size_t)mlen, p[i].rate,
               p[i].has_ts, p[i].ts, 0, now);
    }
    pthread_mutex_unlock(&self->lock);
    PyBuffer_Release(&packed);
    Py_RETURN_NONE;
}

static PyObject *doubles_array(const double *p, size_t n) {
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)(n * sizeof *p));
    if (!bytes) return NULL;
    PyObject *arr = PyObject_CallFunction(array_type, "sO", "d", bytes);
    Py_DECREF(bytes);
    return arr;
}

/* (bucket, sid, count, sum, min, max, last|None, last_ts, values|None, weights|None,
 *  members|None) of one series-bucket */
PyObject *sg_entry_of(const sg_acc *a) {
    PyObject *values = Py_None, *weights = Py_None, *members = Py_None, *last = Py_None;
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    PyObject *out = NULL;
    if (a->type != SG_COUNTER && a->type != SG_SET) {
        Py_SETREF(values, doubles_array(a->values, a->n));
        if (!values) goto done;
        if (a->weights) {
            Py_SETREF(weights, doubles_array(a->weights, a->n));
            if (!weights) goto done;
        }
    }
    if (a->type == SG_SET) {
        const sg_members *m = a->members;
        Py_SETREF(members, PyList_New(m ? (Py_ssize_t)m->n : 0));
        if (!members) goto done;
        for (size_t i = 0; m && i < m->n; i++) {
            const char *p = m->bytes + m->offsets[i];
            uint32_t len;
            memcpy(&len, p, 4);
            PyObject *s = PyUnicode_DecodeUTF8(p + 4, len, "replace");
            if (!s) goto done;
            PyList_SET_ITEM(members, (Py_ssize_t)i, s);
        }
    }
    if (a->has_last) {
        Py_SETREF(last, PyFloat_FromDouble(a->last));
        if (!last) goto done;
    }
    out = Py_BuildValue("(dLddddOdOOOK)", a->bucket, (long long)a->sid, a->count, a->sum, a->min,
                        a->max, last, a->last_ts, values, weights, members,
                        (unsigned long long)a->last_seq);
done:
    Py_XDECREF(values);
    Py_XDECREF(weights);
    Py_XDECREF(members);
    Py_XDECREF(last);
    return out;
}

/* sg_interval.h. With `consume`, the values are never held twice over (the swap's peak memory
 * is about one copy of them, not two). */
PyObject *sg_entries_of(sg_table *t, const int64_t *only, size_t nonly, int consume) {
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (size_t i = 0; i < t->n; i++) {
        sg_acc *a = &t->accs[i];
        if (only && !bsearch(&a->sid, only, nonly, sizeof *only, cmp_sid)) continue;
        PyObject *e = sg_entry_of(a);
        if (!e || PyList_Append(out, e) < 0) {
            Py_XDECREF(e);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(e);
        if (consume) {
            free(a->values);
            free(a->weights);
            a->values = a->weights = NULL;
        }
    }
    return out;
}

static PyObject *Core_swap_interval(CoreObject *self, PyObject *unused) {
    core_lock(self);
    sg_table *t = sg_core_swap(self->core);
    pthread_mutex_unlock(&self->lock);
    return sg_interval_new(t);
}

static PyObject *Core_copy(CoreObject *self, PyObject *iterable) {
    size_t n;
    int64_t *sids = sg_sorted_sids(iterable, &n);
    if (!sids) return NULL;
    core_lock(self);
    PyObject *out = sg_entries_of(self->core->live, sids, n, 0);
    pthread_mutex_unlock(&self->lock);
    PyMem_Free(sids);
    return out;
}

PyObject *sg_table_sids(const sg_table *t) {
    PyObject *out = PySet_New(NULL);
    for (size_t i = 0; out && i < t->n; i++) {
        PyObject *sid = PyLong_FromLongLong(t->accs[i].sid);
        if (!sid || PySet_Add(out, sid) < 0) {
            Py_XDECREF(sid);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(sid);
    }
    return out;
}

static PyObject *Core_sids(CoreObject *self, PyObject *unused) {
    core_lock(self);
    PyObject *out = sg_table_sids(self->core->live);
    pthread_mutex_unlock(&self->lock);
    return out;
}

static PyObject *Core_discard(CoreObject *self, PyObject *iterable) {
    size_t n;
    int64_t *sids = sg_sorted_sids(iterable, &n);
    if (!sids) return NULL;
    core_lock(self);
    size_t gone = sg_table_discard(self->core->live, sids, n);
    pthread_mutex_unlock(&self->lock);
    PyMem_Free(sids);
    return PyLong_FromSize_t(gone);
}

static PyObject *Core_forget(CoreObject *self, PyObject *unused) {
    core_lock(self);
    sg_core_forget(self->core);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *Core_memory(CoreObject *self, PyObject *unused) {
    core_lock(self);
    const sg_table *t = self->core->live;
    PyObject *out = Py_BuildValue("(nnn)", (Py_ssize_t)t->n, (Py_ssize_t)t->values,
                                  (Py_ssize_t)sg_table_memory(t));
    pthread_mutex_unlock(&self->lock);
    return out;
}

static PyObject *Core_counts(CoreObject *self, PyObject *unused) {
    sg_counts counts[SG_TRANSPORTS];
    core_lock(self);
    memcpy(counts, self->core->counts, sizeof counts);
    pthread_mutex_unlock(&self->lock);
    PyObject *out = PyTuple_New(SG_TRANSPORTS);
    for (int i = 0; out && i < SG_TRANSPORTS; i++) {
        const sg_counts *k = &counts[i];
        PyObject *rejects = PyTuple_New(SG_NREASONS);
        for (int r = 0; rejects && r < SG_NREASONS; r++)
            PyTuple_SET_ITEM(rejects, r, PyLong_FromUnsignedLongLong(k->rejects[r]));
        PyObject *item =
            rejects ? Py_BuildValue("(KKKKKKKN)", k->packets, k->bytes, k->lines, k->accepted,
                                    k->events, k->service_checks, k->unknown_sections, rejects)
                    : NULL;
        if (!item) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

/* ---- the reader thread */

static double reader_now(CoreObject *self) {
    if (self->clock == Py_None) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    PyEval_RestoreThread(reader_state); /* only reader threads call this */
    double now = NAN;
    PyObject *r = PyObject_CallNoArgs(self->clock);
    if (r) now = PyFloat_AsDouble(r);
    if (!r || PyErr_Occurred()) {
        PyErr_WriteUnraisable(self->clock);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    Py_XDECREF(r);
    PyEval_SaveThread();
    return now;
}

/* Receives and parses everything queued on the socket; returns 0 once it is empty. */
static int read_batch(CoreObject *self) {
    for (int i = 0; i < READ_BATCH; i++) {
        self->iovs[i].iov_base = self->buffers + (size_t)i * READ_BUFFER;
        self->iovs[i].iov_len = READ_BUFFER;
        memset(&self->msgs[i].msg_hdr, 0, sizeof self->msgs[i].msg_hdr);
        self->msgs[i].msg_hdr.msg_iov = &self->iovs[i];
        self->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(self->fd, self->msgs, READ_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) return 0;
    double now = reader_now(self);
    pthread_mutex_lock(&self->lock);
    for (int i = 0; i < n; i++)
        sg_parse(self->core, self->iovs[i].iov_base, self->msgs[i].msg_len, now, 0);
    pthread_mutex_unlock(&self->lock);
    if (self->relay_c) { /* outside the core's mutex: the two are never held together */
        struct iovec parts[READ_BATCH];
        for (int i = 0; i < n; i++) {
            parts[i].iov_base = self->iovs[i].iov_base;
            parts[i].iov_len = self->msgs[i].msg_len;
        }
        sg_relay_append(self->relay_c, parts, (size_t)n);
    }
    if (!atomic_exchange(&self->notified, 1)) {
        uint64_t one = 1;
        ssize_t w = write(self->notify_fd, &one, sizeof one);
        (void)w;
    }
    return 1;
}

static void *reader_main(void *arg) {
    CoreObject *self = arg;
    reader_state = PyThreadState_New(self->interp); /* made without the GIL: allowed */
    struct pollfd fds[2] = {{self->fd, POLLIN, 0}, {self->stop_fd, POLLIN, 0}};
    for (;;) {
        while (!atomic_load(&self->stopping) && read_batch(self)) {
        }
        if (atomic_load(&self->stopping)) break;
        int r = poll(fds, 2, -1);
        if (r < 0 && errno != EINTR) break;
        if (fds[1].revents) break;
    }
    /* Stopping: what the socket still holds was received, and is parsed before the end. The
     * caller keeps new datagrams out (a socket filter); should the system refuse that, a
     * flood must not keep the reader from ending: at most a full 32 MiB buffer's worth. */
    for (int i = 0; i < 4096 && read_batch(self); i++) {
    }
    atomic_store(&self->alive, 0);
    /* Stopped by Core_stop_reader, which waits without the GIL; native.py stops every reader
     * at exit, before the interpreter frees thread states. */
    PyEval_RestoreThread(reader_state);
    PyThreadState_Clear(reader_state);
    PyThreadState_DeleteCurrent();
    reader_state = NULL;
    return NULL;
}

static PyObject *Core_start(CoreObject *self, PyObject *args) {
    int fd, notify_fd;
    if (!PyArg_ParseTuple(args, "ii", &fd, &notify_fd)) return NULL;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the reader is running already");
        return NULL;
    }
    self->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (self->stop_fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    self->buffers = PyMem_RawMalloc((size_t)READ_BATCH * READ_BUFFER);
    self->msgs = PyMem_RawCalloc(READ_BATCH, sizeof *self->msgs);
    self->iovs = PyMem_RawCalloc(READ_BATCH, sizeof *self->iovs);
    if (!self->buffers || !self->msgs || !self->iovs) {
        Core_stop_reader(self);
        return PyErr_NoMemory();
    }
    self->fd = fd;
    self->notify_fd = notify_fd;
    self->interp = PyInterpreterState_Get();
    atomic_store(&self->notified, 0);
    atomic_store(&self->stopping, 0);
    atomic_store(&self->alive, 1);
    int err = pthread_create(&self->thread, NULL, reader_main, self);
    if (err) {
        atomic_store(&self->alive, 0);
        Core_stop_reader(self);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* So that `top -H` and `ps -L` tell the readers apart (15 characters at most). */
    pthread_setname_np(self->thread, "sgw-udp-reader");
    self->running = 1;
    Py_RETURN_NONE;
}

static void Core_stop_reader(CoreObject *self) {
    if (self->joining) return; /* another caller (with the GIL let go) is stopping it */
    if (self->running) {
        pthread_t thread = self->thread;
        self->running = 0;
        self->joining = 1;
        atomic_store(&self->stopping, 1);
        uint64_t one = 1;
        ssize_t w = write(self->stop_fd, &one, sizeof one);
        (void)w;
        Py_BEGIN_ALLOW_THREADS pthread_join(thread, NULL);
        Py_END_ALLOW_THREADS self->joining = 0;
    }
    if (self->stop_fd >= 0) close(self->stop_fd);
    self->stop_fd = -1;
    self->fd = self->notify_fd = -1;
    PyMem_RawFree(self->buffers);
    PyMem_RawFree(self->msgs);
    PyMem_RawFree(self->iovs);
    self->buffers = NULL;
    self->msgs = NULL;
    self->iovs = NULL;
}

static PyObject *Core_stop(CoreObject *self, PyObject *unused) {
    Core_stop_reader(self);
    Py_RETURN_NONE;
}

static PyObject *Core_acknowledge(CoreObject *self, PyObject *unused) {
    atomic_store(&self->notified, 0);
    Py_RETURN_NONE;
}

static PyObject *Core_hold(CoreObject *self, PyObject *unused) {
    core_lock(self);
    self->holds++;
    Py_RETURN_NONE;
}

static PyObject *Core_release(CoreObject *self, PyObject *unused) {
    if (!self->holds) {
        PyErr_SetString(PyExc_RuntimeError, "release() without hold()");
        return NULL;
    }
    self->holds--;
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *Core_running(CoreObject *self, void *closure) {
    return PyBool_FromLong(self->running && atomic_load(&self->alive));
}

static PyMethodDef Core_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))Core_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(*, gauge_delta, interval, max_backdate, future_max, max_keys, clock)"},
    {"feed", (PyCFunction)Core_feed, METH_VARARGS,
     "feed(data, transport, now): parses one datagram on this thread."},
    {"set_relay", (PyCFunction)Core_set_relay, METH_O,
     "set_relay(relay or None): every datagram parsed from now on also goes to the Relay."},
    {"apply_points", (PyCFunction)Core_apply_points, METH_VARARGS,
     "apply_points(packed, members, now): what resolve_points() accepted, into the live table."},
    {"add", (PyCFunction)Core_add, METH_VARARGS,
     "add(samples, sids, now): admitted samples (HTTP points) into the live interval."},
    {"copy", (PyCFunction)Core_copy, METH_O, "Copies of the live entries of these series."},
    {"sids", (PyCFunction)Core_sids, METH_NOARGS, "The series ids in the live interval."},
    {"discard", (PyCFunction)Core_discard, METH_O,
     "Drops the live entries of these series; returns how many."},
    {"forget", (PyCFunction)Core_forget, METH_NOARGS, "Forgets every cached resolver answer."},
    {"swap_interval", (PyCFunction)Core_swap_interval, METH_NOARGS,
     "Starts a new live interval; returns the old one as an Interval (held in native memory)."},
    {"memory", (PyCFunction)Core_memory, METH_NOARGS,
     "(entries, values, bytes) of the live interval."},
    {"counts", (PyCFunction)Core_counts, METH_NOARGS,
     "Per transport: (packets, bytes, lines, accepted, events, service_checks, "
     "unknown_sections, rejects by reason code)."},
    {"start", (PyCFunction)Core_start, METH_VARARGS,
     "start(fd, notify_fd): a reader thread receives from fd; it writes notify_fd (an eventfd) "
     "when it parsed a batch, once until acknowledge()."},
    {"stop", (PyCFunction)Core_stop, METH_NOARGS,
     "Stops the reader thread after it parsed what the socket holds."},
    {"hold", (PyCFunction)Core_hold, METH_NOARGS,
     "Stops the reader between batches until release() (on the calling thread)."},
    {"release", (PyCFunction)Core_release, METH_NOARGS, "Ends one hold()."},
    {"acknowledge", (PyCFunction)Core_acknowledge, METH_NOARGS,
     "The notification was seen: the next batch notifies again."},
    {NULL}};

static PyGetSetDef Core_getset[] = {
    {"running", (getter)Core_running, NULL, "Whether the reader thread was started and has not ended.", NULL}, {NULL}};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "statsd_gateway._native.Core",
    .tp_basicsize = sizeof(CoreObject),
    .tp_weaklistoffset = offsetof(CoreObject, weakrefs),
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Core(gauges, resolve, **config): the native StatsD parser and live interval.",
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
    .tp_new = Core_new,
};

static PyObject *bucket_of(PyObject *m, PyObject *args) {
    double t, interval;
    if (!PyArg_ParseTuple(args, "dd", &t, &interval)) return NULL;
    return PyFloat_FromDouble(sg_bucket_of(t, interval));
}

static PyObject *set_types(PyObject *m, PyObject *types) {
    if (!PyTuple_Check(types) || PyTuple_GET_SIZE(types) != SG_NTYPES) {
        PyErr_SetString(PyExc_ValueError, "the metric types, in the core's order");
        return NULL;
    }
    Py_INCREF(types);
    Py_XSETREF(metric_types, types);
    Py_RETURN_NONE;
}

/* bin_values(values, weights): sg_bins.h's binning of many series at once, without the GIL.
 * values: a sequence of float64 buffers (array('d')), one per series; weights: None, or a
 * sequence of the same length of float64 buffers or None. Returns (keys, counts, bounds, zero)
 * as bytes of int64, float64, int64 (2 * series + 1) and float64, as sketch.FlatBins holds
 * them, or None if a value is not finite (bin_flat then says which). */
static PyObject *bin_values(PyObject *m, PyObject *args) {
    PyObject *values, *weights;
    if (!PyArg_ParseTuple(args, "OO", &values, &weights)) return NULL;
    PyObject *vs = PySequence_Fast(values, "values: a sequence of buffers");
    if (!vs) return NULL;
    PyObject *ws = NULL;
    Py_ssize_t m_series = PySequence_Fast_GET_SIZE(vs);
    if (weights != Py_None) {
        ws = PySequence_Fast(weights, "weights: None or a sequence");
        if (!ws || PySequence_Fast_GET_SIZE(ws) != m_series) {
            if (ws) PyErr_SetString(PyExc_ValueError, "weights and values differ in length");
            Py_XDECREF(ws);
            Py_DECREF(vs);
            return NULL;
        }
    }
    PyObject *out = NULL, *keys = NULL, *counts = NULL, *bounds = NULL, *zeros = NULL;
    Py_buffer *vb = PyMem_Calloc((size_t)m_series + 1, sizeof *vb);
    Py_buffer *wb = PyMem_Calloc((size_t)m_series + 1, sizeof *wb);
    Py_ssize_t got_v = 0, got_w = 0;
    size_t total = 0;
    if (!vb || !wb) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got_v < m_series; got_v++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(vs, got_v), &vb[got_v], PyBUF_FORMAT) < 0)
            goto done;
        if (vb[got_v].itemsize != 8 || !vb[got_v].format || strcmp(vb[got_v].format, "d")) {
            got_v++;
            PyErr_SetString(PyExc_TypeError, "values: float64 buffers");
            goto done;
        }
        total += (size_t)vb[got_v].len / 8;
    }
    for (; ws && got_w < m_series; got_w++) {
        PyObject *item = PySequence_Fast_GET_ITEM(ws, got_w);
        if (item == Py_None) continue;
        if (PyObject_GetBuffer(item, &wb[got_w], PyBUF_FORMAT) < 0) goto done;
        if (wb[got_w].itemsize != 8 || !wb[got_w].format || strcmp(wb[got_w].format, "d") ||
            wb[got_w].len != vb[got_w].len) {
            got_w++;
            PyErr_SetString(PyExc_ValueError, "weights: float64 buffers as long as the values");
            goto done;
        }
    }
    keys = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * 8));
    counts = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * 8));
    bounds = PyBytes_FromStringAndSize(NULL, (2 * m_series + 1) * 8);
    zeros = PyBytes_FromStringAndSize(NULL, m_series * 8);
    if (!keys || !counts || !bounds || !zeros) goto done;
    int64_t *k = (int64_t *)PyBytes_AS_STRING(keys), *b = (int64_t *)PyBytes_AS_STRING(bounds);
    double *c = (double *)PyBytes_AS_STRING(counts), *z = (double *)PyBytes_AS_STRING(zeros);
    size_t at = 0;
    int finite = 1;
    sg_binner binner = {0};
    Py_BEGIN_ALLOW_THREADS;
    b[0] = 0;
    for (Py_ssize_t i = 0; finite && i < m_series; i++) {
        const double *w = wb[i].buf ? wb[i].buf : NULL;
        finite = sg_bin_run(&binner, vb[i].buf, w, (size_t)vb[i].len / 8, (size_t)i, k, c, b, z,
                            &at) == 0;
    }
    sg_binner_free(&binner);
    Py_END_ALLOW_THREADS;
    if (!finite) {
        out = Py_None;
        Py_INCREF(out);
        goto done;
    }
    if (_PyBytes_Resize(&keys, (Py_ssize_t)(at * 8)) < 0 ||
        _PyBytes_Resize(&counts, (Py_ssize_t)(at * 8)) < 0)
        goto done;
    out = PyTuple_Pack(4, keys, counts, bounds, zeros);
done:
    for (Py_ssize_t i = 0; i < got_v; i++) PyBuffer_Release(&vb[i]);
    for (Py_ssize_t i = 0; i < got_w; i++)
        if (wb[i].obj) PyBuffer_Release(&wb[i]);
    PyMem_Free(vb);
    PyMem_Free(wb);
    Py_XDECREF(keys);
    Py_XDECREF(counts);
    Py_XDECREF(bounds);
    Py_XDECREF(zeros);
    Py_XDECREF(ws);
    Py_DECREF(vs);
    return out;
}

static PyObject *set_mapping(PyObject *m, PyObject *args) {
    double mult, ln2, min_possible;
    if (!PyArg_ParseTuple(args, "ddd", &mult, &ln2, &min_possible)) return NULL;
    sg_set_mapping(mult, ln2, min_possible);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_mapping", set_mapping, METH_VARARGS,
     "set_mapping(mult, ln2, min_possible): the sketch mapping's constants (sketch/_mapping.py)."},
    {"bin_values", bin_values, METH_VARARGS,
     "bin_values(values, weights): DDSketch bins of many series (sketch.bin_flat's)."},
    {"set_types", set_types, METH_O, "set_types(tuple(MetricType)): the type of a sample."},
    {"bucket_of", bucket_of, METH_VARARGS, "bucket_of(t, interval), as the core computes it."},
    {"set_point_type", set_point_type, METH_O,
     "set_point_type(MetricPoint): its fields are read from their slots."},
    {"resolve_points", resolve_points, METH_VARARGS,
     "resolve_points(points, now, cache, fallback, max_backdate, future_max, value_abs_max)."},
    {"relay_pack", sg_py_relay_pack, METH_VARARGS,
     "relay_pack(data, packet_bytes): [(packet, lines)], the relay's packing of data."},
    {"decode_chunks", sg_py_decode_chunks, METH_VARARGS,
     "decode_chunks(blobs, want, sketches, hll, since, until): SGC1 chunks (sg_chunks.c)."},
    {"window_quantiles", sg_py_window_quantiles, METH_VARARGS,
     "window_quantiles(keys, counts, bounds, zero, item_group, item_cell, n_groups, n_cells, lo, "
     "hi, q, max_cost, kind, key): sliding windows' quantiles (sg_windows.c)."},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "The native StatsD ingest core.", -1, module_methods};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *array_mod = PyImport_ImportModule("array");
    if (!array_mod) return NULL;
    array_type = PyObject_GetAttrString(array_mod, "array");
    Py_DECREF(array_mod);
    if (!array_type) return NULL;
    if (PyType_Ready(&GaugesType) < 0 || PyType_Ready(&CoreType) < 0) return NULL;
    if (!(s_name = PyUnicode_InternFromString("name")) ||
        !(s_value = PyUnicode_InternFromString("value")) ||
        !(s_type = PyUnicode_InternFromString("type")) ||
        !(s_tags = PyUnicode_InternFromString("tags")) ||
        !(s_timestamp = PyUnicode_InternFromString("timestamp")) ||
        !(s_sample_rate = PyUnicode_InternFromString("sample_rate")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (sg_chunks_ready(m) < 0 || sg_relay_ready(m) < 0 || sg_interval_ready(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&GaugesType);
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Gauges", (PyObject *)&GaugesType) < 0 ||
        PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddIntConstant(m, "REASONS", SG_NREASONS) < 0 ||
        PyModule_AddIntConstant(m, "TRANSPORTS", SG_TRANSPORTS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_LINE", SG_MAX_LINE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
