/* The native ingest core: StatsD text -> per-series state in native memory, with no Python.
 *
 * Contract (the Python reference is protocol.py + aggregator.py; tests/test_native_parity.py
 * holds the two to the same aggregates and the same reject counts):
 * - sg_parse() takes one datagram (or one batch of TCP lines) and adds every valid line into the
 *   core's live table: counter sums, gauge values (and the shared current value that +N/-N
 *   change), timing values, set members, each keyed by (bucket start, series id).
 * - A series is named and admitted by the resolver, a callback into the embedding program, the
 *   first time a (type, name section, tag text) is seen; its answer is cached here until
 *   sg_core_forget(). The resolver is the only way out of this file.
 * - Everything is counted by reason in the core's counters, per transport; nothing a client
 *   sends makes this code read or write out of bounds (fuzz/sg_fuzz.c runs it under ASan).
 * - Not thread-safe by itself: the caller serialises every call on a core (the Python module
 *   holds the core's mutex). sg_gauges is shared between cores and has its own mutex.
 */
#ifndef SG_CORE_H
#define SG_CORE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define SG_MAX_LINE 8192
#define SG_TRANSPORTS 3 /* udp, tcp, unixgram */

enum sg_type { SG_COUNTER, SG_GAUGE, SG_TIMING, SG_HISTOGRAM, SG_DISTRIBUTION, SG_SET, SG_NTYPES };

/* Reject reasons, in the order of model-level names the Python side maps them to. */
enum sg_reason {
    SG_OK = 0,
    SG_MALFORMED_LINE,
    SG_EMPTY_NAME,
    SG_NAME_TOO_LONG,
    SG_NAME_WITHOUT_ALNUM,
    SG_EMPTY_VALUE,
    SG_INVALID_VALUE,
    SG_NON_FINITE_VALUE,
    SG_UNKNOWN_TYPE,
    SG_INVALID_SAMPLE_RATE,
    SG_INVALID_TIMESTAMP,
    SG_INVALID_TAGS,
    SG_INVALID_UTF8,
    SG_LINE_TOO_LONG,
    SG_MIXED_TAG_STYLES,
    SG_TYPE_CONFLICT,
    SG_CARDINALITY_LIMIT,
    SG_TIMESTAMP_TOO_OLD,
    SG_TIMESTAMP_IN_FUTURE,
    SG_INTERNAL_ERROR,
    /* Only the resolver answers these two (the mapping rules, mapping.py). */
    SG_DROPPED_BY_MAPPING,
    SG_INVALID_MAPPED_NAME,
    SG_NREASONS
};

typedef struct {
    uint64_t packets, bytes, lines, accepted, events, service_checks, unknown_sections;
    uint64_t rejects[SG_NREASONS];
} sg_counts;

/* The resolver: names and admits a series. `admit` 0 asks only whether the name section and
 * tags are valid; 1 also admits the series (registers it, checks its type and the cardinality
 * cap) and gives its id in *sid, and for a gauge the current value (*gauge_v, *gauge_t) the
 * program knows of it. Returns 0, a reason (> 0), or -1 if the callback itself failed. */
typedef int (*sg_resolve_fn)(void *ctx, int type, const char *head, size_t head_len,
                             const char *tags, size_t tags_len, int admit, int64_t *sid,
                             double *gauge_v, double *gauge_t);

/* Set members of one series-bucket: distinct byte strings. */
typedef struct {
    char *bytes;        /* each member: uint32 length, then its bytes */
    size_t len, cap;
    uint32_t *offsets;  /* member i starts at bytes + offsets[i] */
    uint32_t *slots;    /* open addressing: member index + 1, 0 empty */
    size_t n, nslots;
} sg_members;

/* One series over one bucket. */
typedef struct {
    double bucket;
    int64_t sid;
    int type;
    int has_last;
    double count, sum, min, max, last, last_ts;
    uint64_t last_seq; /* when `last` arrived, in the order of every core's gauge updates */
    double *values, *weights; /* weights only once a sample rate < 1 arrived */
    size_t n, cap;
    sg_members *members;
} sg_acc;

/* One interval's series-buckets. */
typedef struct {
    sg_acc *accs;
    size_t n, cap;
    uint32_t *slots; /* acc index + 1, 0 empty */
    size_t nslots;
    size_t values;   /* buffered values, all series */
    size_t value_bytes; /* what their buffers (values and weights) take */
    size_t member_bytes;
} sg_table;

/* Current gauge values, by series id, shared by every core of the program. */
typedef struct {
    pthread_mutex_t lock;
    int64_t *sids;    /* 0: empty slot */
    double *v, *t;
    uint8_t *changed;
    size_t n, nslots;
} sg_gauges;

enum sg_key_state { SG_KEY_NAME_OK, SG_KEY_NAME_BAD, SG_KEY_ADMITTED, SG_KEY_REFUSED };

typedef struct {
    uint64_t hash;
    uint32_t off, len; /* into the key arena */
    uint8_t state, reason;
    int64_t sid;
} sg_key;

typedef struct sg_core {
    sg_table *live;
    sg_gauges *gauges;
    sg_resolve_fn resolve;
    void *resolve_ctx;
    int gauge_delta;      /* +N/-N change a gauge (Etsy); 0: a signed value is the value */
    double interval;      /* bucket width, seconds */
    double max_backdate;  /* a client timestamp older than now - this is refused */
    double future_max;    /* ... newer than now + this is refused */
    /* The key cache: (type, name section, tag text) -> the resolver's answer. */
    sg_key *keys;
    size_t nkeys, capkeys;
    uint32_t *key_slots;
    size_t nkey_slots;
    char *arena;
    size_t arena_len, arena_cap;
    size_t max_keys;
    size_t max_arena;     /* the key cache's name bytes: past this it is forgotten too */
    sg_counts counts[SG_TRANSPORTS];
    /* scratch for one line */
    void *staged;
    size_t nstaged, capstaged;
    char *scratch;
    size_t scratch_cap;
} sg_core;

/* Allocation that aborts on failure (as CPython's own does): never a corrupt table. */
void *sg_xrealloc(void *p, size_t n);
void *sg_xcalloc(size_t n, size_t size);

sg_table *sg_table_new(void);
void sg_table_free(sg_table *t);
size_t sg_table_memory(const sg_table *t);
/* Removes the entries of the given series (sorted ascending); returns how many went. */
size_t sg_table_discard(sg_table *t, const int64_t *sids, size_t n);
/* The index of (bucket, sid) in t's accs, or -1. */
long sg_table_find(const sg_table *t, double bucket, int64_t sid);
/* Frees and removes the series-buckets i with gone[i] (the others keep their order). */
void sg_table_drop(sg_table *t, const unsigned char *gone);

sg_gauges *sg_gauges_new(void);
void sg_gauges_free(sg_gauges *g);
void sg_gauges_forget(sg_gauges *g, const int64_t *sids, size_t n);

sg_core *sg_core_new(sg_gauges *gauges, sg_resolve_fn resolve, void *ctx);
void sg_core_free(sg_core *c);
/* Forgets every cached answer of the resolver (series were forgotten, or config changed). */
void sg_core_forget(sg_core *c);
/* Hands out the live table (the caller owns it) and starts a new one. */
sg_table *sg_core_swap(sg_core *c);

/* Parses one datagram received at `now` (seconds since the epoch) on `transport`. */
void sg_parse(sg_core *c, const char *data, size_t len, double now, int transport);

/* One sample already admitted (series `sid`, its checks done: an HTTP point) into the live
 * table, received at `now`; a gauge's current value moves as sg_parse's do. */
void sg_add(sg_core *c, int64_t sid, int type, double value, const char *member,
            size_t member_len, double rate, int has_ts, double ts, int delta, double now);
/* A gauge's current value, if the core has none for it yet. */
void sg_gauges_seed(sg_gauges *g, int64_t sid, double v, double t);

double sg_bucket_of(double t, double interval);

/* The arrival order of gauge values across every core of the program: a series-bucket's `last`
 * from two cores at the same time is the one that arrived later (sg_acc.last_seq). */
uint64_t sg_next_last_seq(void);

#endif
