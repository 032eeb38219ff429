/* The native ingest core (see sg_core.h for the contract). Every rule here mirrors one of
 * protocol.py's or aggregator.py's; where the order of checks decides which reason a line is
 * counted under, the order is theirs. */
#define _GNU_SOURCE
#include <stdatomic.h>

#include "sg_core.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VALUE_ABS_MAX 1e300
#define SAMPLE_RATE_MIN 1e-9
#define DEFAULT_MAX_KEYS (1u << 20)
/* Well below 4 GiB: a key's offset into the arena is 32-bit. */
#define DEFAULT_MAX_ARENA ((size_t)1 << 28)

typedef struct {
    int type, has_ts, delta;
    uint32_t key;
    double value, rate, ts;
    const char *member;
    size_t member_len;
} sg_staged;

/* ---- memory: an allocation failure is fatal (as CPython's own is: abort, never corrupt) */

void *sg_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fputs("statsd-gateway native core: out of memory\n", stderr);
        abort();
    }
    return q;
}

void *sg_xcalloc(size_t n, size_t size) {
    void *q = calloc(n ? n : 1, size);
    if (!q) {
        fputs("statsd-gateway native core: out of memory\n", stderr);
        abort();
    }
    return q;
}

#define xrealloc sg_xrealloc
#define xcalloc sg_xcalloc

/* ---- hashing: word at a time, seeded per process so a client cannot aim at collisions */

static uint64_t hash_seed = 0x243f6a8885a308d3ull;

static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 32;
    return h;
}

static uint64_t hash_bytes(uint64_t h, const char *p, size_t n) {
    h ^= n * 0x9e3779b97f4a7c15ull;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    return mix64(h ^ w);
}

/* ---- numbers: Python's float() grammar, ASCII only, no spaces or underscores (which
 * protocol.py refuses after float() took them: the same reason either way). */

static locale_t c_locale;

static int ieq(const char *s, const char *lit, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch >= 'A' && ch <= 'Z') ch = (char)(ch - 'A' + 'a');
        if (ch != lit[i]) return 0;
    }
    return 1;
}

static int float_syntax(const char *s, size_t n) {
    size_t i = 0;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    size_t r = n - i;
    if ((r == 3 && (ieq(s + i, "inf", 3) || ieq(s + i, "nan", 3))) ||
        (r == 8 && ieq(s + i, "infinity", 8)))
        return 1;
    size_t digits = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++, digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++, digits++;
    }
    if (!digits) return 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        size_t e = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++, e++;
        if (!e) return 0;
    }
    return i == n;
}

static int int_syntax(const char *s, size_t n) {
    size_t i = 0;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    if (i == n) return 0;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

/* strtod of a validated number (correctly rounded, as Python's float() and float(int())). */
static double to_double(const char *s, size_t n) {
    char buf[64];
    char *p = n < sizeof buf ? buf : xrealloc(NULL, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    double v = strtod_l(p, NULL, c_locale);
    if (p != buf) free(p);
    return v;
}

static _Atomic uint64_t last_seq_counter;

uint64_t sg_next_last_seq(void) { return atomic_fetch_add(&last_seq_counter, 1) + 1; }

double sg_bucket_of(double t, double interval) {
    /* aggregator.bucket_of: floor(t / i) * i, then round(b, 6) (correctly rounded, ties to
     * even: glibc's %.6f is, on the exact binary value, as Python's round is). */
    double b = floor(t / interval) * interval;
    if (b == floor(b) && fabs(b) < 9007199254740992.0) return b;
    char buf[400];
    snprintf(buf, sizeof buf, "%.6f", b);
    return strtod_l(buf, NULL, c_locale);
}

/* ---- UTF-8, as strictly as Python's decoder (no overlongs, surrogates or > U+10FFFF) */

static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII runs eight bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned char lo = 0x80, hi = 0xbf;
        if (b >= 0xc2 && b <= 0xdf) need = 1;
        else if (b == 0xe0) need = 2, lo = 0xa0;
        else if (b >= 0xe1 && b <= 0xec) need = 2;
        else if (b == 0xed) need = 2, hi = 0x9f;
        else if (b >= 0xee && b <= 0xef) need = 2;
        else if (b == 0xf0) need = 3, lo = 0x90;
        else if (b >= 0xf1 && b <= 0xf3) need = 3;
        else if (b == 0xf4) need = 3, hi = 0x8f;
        else return 0;
        if (i + need >= n) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf) return 0;
        i += need + 1;
    }
    return 1;
}

/* ---- tables */

sg_table *sg_table_new(void) {
    sg_table *t = xcalloc(1, sizeof *t);
    t->nslots = 64;
    t->slots = xcalloc(t->nslots, sizeof *t->slots);
    return t;
}

static void members_free(sg_members *m) {
    if (!m) return;
    free(m->bytes);
    free(m->offsets);
    free(m->slots);
    free(m);
}

void sg_table_free(sg_table *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->accs[i].values);
        free(t->accs[i].weights);
        members_free(t->accs[i].members);
    }
    free(t->accs);
    free(t->slots);
    free(t);
}

static size_t acc_value_bytes(const sg_acc *a) {
    return a->cap * sizeof(double) * (a->weights ? 2 : 1);
}

/* Doubles the room for a series-bucket's values (and weights), kept in the table's count. */
static void acc_grow(sg_table *t, sg_acc *a) {
    t->value_bytes -= acc_value_bytes(a);
    a->cap = a->cap ? a->cap * 2 : 4;
    a->values = xrealloc(a->values, a->cap * sizeof(double));
    if (a->weights) a->weights = xrealloc(a->weights, a->cap * sizeof(double));
    t->value_bytes += acc_value_bytes(a);
}

size_t sg_table_memory(const sg_table *t) {
    /* O(1): an HTTP write asks before every body, so a walk of the table would cost a
     * back-fill's interval quadratic time. */
    return t->cap * sizeof(sg_acc) + t->nslots * sizeof(uint32_t) + t->value_bytes +
           t->member_bytes;
}

static inline uint64_t acc_hash(double bucket, int64_t sid) {
    uint64_t bits;
    memcpy(&bits, &bucket, 8);
    return mix64(bits * 0x9e3779b97f4a7c15ull ^ (uint64_t)sid ^ hash_seed);
}

static void table_rehash(sg_table *t, size_t nslots) {
    free(t->slots);
    t->nslots = nslots;
    t->slots = xcalloc(nslots, sizeof *t->slots);
    size_t mask = nslots - 1;
    for (size_t i = 0; i < t->n; i++) {
        size_t s = acc_hash(t->accs[i].bucket, t->accs[i].sid) & mask;
        while (t->slots[s]) s = (s + 1) & mask;
        t->slots[s] = (uint32_t)(i + 1);
    }
}

static sg_acc *table_get(sg_table *t, double bucket, int64_t sid, int type) {
    size_t mask = t->nslots - 1;
    size_t s = acc_hash(bucket, sid) & mask;
    for (;;) {
        uint32_t at = t->slots[s];
        if (!at) break;
        sg_acc *a = &t->accs[at - 1];
        if (a->sid == sid && a->bucket == bucket) return a;
        s = (s + 1) & mask;
    }
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->accs = xrealloc(t->accs, t->cap * sizeof *t->accs);
    }
    sg_acc *a = &t->accs[t->n];
    memset(a, 0, sizeof *a);
    a->bucket = bucket;
    a->sid = sid;
    a->type = type;
    a->min = INFINITY;
    a->max = -INFINITY;
    a->last_ts = -INFINITY;
    t->slots[s] = (uint32_t)(++t->n);
    if (t->n * 2 > t->nslots) {
        table_rehash(t, t->nslots * 2);
        a = &t->accs[t->n - 1];
    }
    return a;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int sid_in(int64_t sid, const int64_t *sids, size_t n) {
    return bsearch(&sid, sids, n, sizeof *sids, cmp_i64) != NULL;
}

long sg_table_find(const sg_table *t, double bucket, int64_t sid) {
    if (!t->nslots) return -1;
    size_t mask = t->nslots - 1;
    for (size_t s = acc_hash(bucket, sid) & mask; t->slots[s]; s = (s + 1) & mask) {
        const sg_acc *a = &t->accs[t->slots[s] - 1];
        if (a->sid == sid && a->bucket == bucket) return (long)(t->slots[s] - 1);
    }
    return -1;
}

void sg_table_drop(sg_table *t, const unsigned char *gone) {
    size_t kept = 0;
    for (size_t i = 0; i < t->n; i++) {
        sg_acc *a = &t->accs[i];
        if (gone[i]) {
            t->values -= a->n;
            t->value_bytes -= acc_value_bytes(a);
            if (a->members) t->member_bytes -= a->members->cap;
            free(a->values);
            free(a->weights);
            members_free(a->members);
        } else {
            t->accs[kept++] = *a;
        }
    }
    t->n = kept;
    table_rehash(t, t->nslots);
}

size_t sg_table_discard(sg_table *t, const int64_t *sids, size_t n) {
    unsigned char *gone = xcalloc(t->n ? t->n : 1, 1);
    size_t dropped = 0;
    for (size_t i = 0; i < t->n; i++) dropped += gone[i] = sid_in(t->accs[i].sid, sids, n);
    sg_table_drop(t, gone);
    free(gone);
    return dropped;
}

/* ---- set members */

static void members_add(sg_table *t, sg_acc *a, const char *s, size_t n) {
    sg_members *m = a->members;
    if (!m) {
        m = a->members = xcalloc(1, sizeof *m);
        m->nslots = 8;
        m->slots = xcalloc(m->nslots, sizeof *m->slots);
    }
    size_t mask = m->nslots - 1;
    size_t slot = hash_bytes(hash_seed, s, n) & mask;
    for (;;) {
        uint32_t at = m->slots[slot];
        if (!at) break;
        const char *have = m->bytes + m->offsets[at - 1];
        uint32_t len;
        memcpy(&len, have, 4);
        if (len == n && memcmp(have + 4, s, n) == 0) return;
        slot = (slot + 1) & mask;
    }
    if (m->len + 4 + n > m->cap) {
        size_t cap = m->cap ? m->cap : 64;
        while (cap < m->len + 4 + n) cap *= 2;
        t->member_bytes += cap - m->cap;
        m->bytes = xrealloc(m->bytes, cap);
        m->cap = cap;
    }
    uint32_t len = (uint32_t)n;
    memcpy(m->bytes + m->len, &len, 4);
    memcpy(m->bytes + m->len + 4, s, n);
    m->offsets = xrealloc(m->offsets, (m->n + 1) * sizeof *m->offsets);
    m->offsets[m->n] = (uint32_t)m->len;
    m->len += 4 + n;
    m->slots[slot] = (uint32_t)(++m->n);
    if (m->n * 2 > m->nslots) {
        free(m->slots);
        m->nslots *= 2;
        m->slots = xcalloc(m->nslots, sizeof *m->slots);
        mask = m->nslots - 1;
        for (size_t i = 0; i < m->n; i++) {
            const char *have = m->bytes + m->offsets[i];
            memcpy(&len, have, 4);
            size_t k = hash_bytes(hash_seed, have + 4, len) & mask;
            while (m->slots[k]) k = (k + 1) & mask;
            m->slots[k] = (uint32_t)(i + 1);
        }
    }
}

/* ---- gauges' current values */

sg_gauges *sg_gauges_new(void) {
    sg_gauges *g = xcalloc(1, sizeof *g);
    pthread_mutex_init(&g->lock, NULL);
    g->nslots = 64;
    g->sids = xcalloc(g->nslots, sizeof *g->sids);
    g->v = xcalloc(g->nslots, sizeof *g->v);
    g->t = xcalloc(g->nslots, sizeof *g->t);
    g->changed = xcalloc(g->nslots, 1);
    return g;
}

void sg_gauges_free(sg_gauges *g) {
    if (!g) return;
    pthread_mutex_destroy(&g->lock);
    free(g->sids);
    free(g->v);
    free(g->t);
    free(g->changed);
    free(g);
}

/* The slot of `sid` (g->sids[slot] == sid), inserting it with (v, t) if absent. Locked. */
static size_t gauge_slot(sg_gauges *g, int64_t sid, double v, double t);

static void gauges_rebuild(sg_gauges *g, size_t nslots, const int64_t *drop, size_t ndrop) {
    int64_t *sids = g->sids;
    double *v = g->v, *t = g->t;
    uint8_t *changed = g->changed;
    size_t old = g->nslots;
    g->nslots = nslots;
    g->n = 0;
    g->sids = xcalloc(nslots, sizeof *g->sids);
    g->v = xcalloc(nslots, sizeof *g->v);
    g->t = xcalloc(nslots, sizeof *g->t);
    g->changed = xcalloc(nslots, 1);
    for (size_t i = 0; i < old; i++) {
        if (!sids[i] || (ndrop && sid_in(sids[i], drop, ndrop))) continue;
        size_t s = gauge_slot(g, sids[i], v[i], t[i]);
        g->changed[s] = changed[i];
    }
    free(sids);
    free(v);
    free(t);
    free(changed);
}

static size_t gauge_slot(sg_gauges *g, int64_t sid, double v, double t) {
    size_t mask = g->nslots - 1;
    size_t s = mix64((uint64_t)sid ^ hash_seed) & mask;
    while (g->sids[s]) {
        if (g->sids[s] == sid) return s;
        s = (s + 1) & mask;
    }
    g->sids[s] = sid;
    g->v[s] = v;
    g->t[s] = t;
    g->changed[s] = 0;
    if (++g->n * 2 > g->nslots) {
        gauges_rebuild(g, g->nslots * 2, NULL, 0);
        return gauge_slot(g, sid, v, t);
    }
    return s;
}

void sg_gauges_seed(sg_gauges *g, int64_t sid, double v, double t) {
    pthread_mutex_lock(&g->lock);
    gauge_slot(g, sid, v, t);
    pthread_mutex_unlock(&g->lock);
}

void sg_gauges_forget(sg_gauges *g, const int64_t *sids, size_t n) {
    pthread_mutex_lock(&g->lock);
    gauges_rebuild(g, g->nslots, sids, n);
    pthread_mutex_unlock(&g->lock);
}

/* ---- the core and its key cache */

sg_core *sg_core_new(sg_gauges *gauges, sg_resolve_fn resolve, void *ctx) {
    static int once;
    if (!once) {
        once = 1;
        c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
        hash_seed ^= (uint64_t)(uintptr_t)&once * 0x9e3779b97f4a7c15ull;
        hash_seed = mix64(hash_seed ^ (uint64_t)rand());
    }
    sg_core *c = xcalloc(1, sizeof *c);
    c->live = sg_table_new();
    c->gauges = gauges;
    c->resolve = resolve;
    c->resolve_ctx = ctx;
    c->gauge_delta = 1;
    c->interval = 10.0;
    c->max_backdate = 3600.0;
    c->future_max = 600.0;
    c->max_keys = DEFAULT_MAX_KEYS;
    c->max_arena = DEFAULT_MAX_ARENA;
    c->nkey_slots = 1024;
    c->key_slots = xcalloc(c->nkey_slots, sizeof *c->key_slots);
    return c;
}

void sg_core_free(sg_core *c) {
    if (!c) return;
    sg_table_free(c->live);
    free(c->keys);
    free(c->key_slots);
    free(c->arena);
    free(c->staged);
    free(c->scratch);
    free(c);
}

void sg_core_forget(sg_core *c) {
    c->nkeys = 0;
    c->arena_len = 0;
    memset(c->key_slots, 0, c->nkey_slots * sizeof *c->key_slots);
}

sg_table *sg_core_swap(sg_core *c) {
    sg_table *t = c->live;
    c->live = sg_table_new();
    return t;
}

static void keys_rehash(sg_core *c) {
    free(c->key_slots);
    c->nkey_slots *= 2;
    c->key_slots = xcalloc(c->nkey_slots, sizeof *c->key_slots);
    size_t mask = c->nkey_slots - 1;
    for (size_t i = 0; i < c->nkeys; i++) {
        size_t s = c->keys[i].hash & mask;
        while (c->key_slots[s]) s = (s + 1) & mask;
        c->key_slots[s] = (uint32_t)(i + 1);
    }
}

/* The key entry of (type, head, tags): its index, or -1 if the resolver failed. A new one is
 * asked of the resolver whether its name and tags are valid (not admitted yet). */
static long key_lookup(sg_core *c, int type, const char *head, size_t hlen, const char *tags,
                       size_t tlen) {
    uint64_t h = hash_bytes(hash_seed ^ (uint64_t)type, head, hlen);
    h = hash_bytes(h, tags, tlen);
    size_t len = 1 + 4 + hlen + tlen;
    size_t mask = c->nkey_slots - 1;
    size_t s = h & mask;
    uint32_t hl = (uint32_t)hlen;
    for (;;) {
        uint32_t at = c->key_slots[s];
        if (!at) break;
        sg_key *k = &c->keys[at - 1];
        if (k->hash == h && k->len == len) {
            const char *p = c->arena + k->off;
            if (p[0] == (char)type && memcmp(p + 1, &hl, 4) == 0 && memcmp(p + 5, head, hlen) == 0 &&
                memcmp(p + 5 + hlen, tags, tlen) == 0)
                return (long)(at - 1);
        }
        s = (s + 1) & mask;
    }
    int64_t sid = 0;
    double gv = 0, gt = 0;
    int r = c->resolve(c->resolve_ctx, type, head, hlen, tags, tlen, 0, &sid, &gv, &gt);
    if (r < 0) return -1;
    if (c->arena_len + len > c->arena_cap) {
        size_t cap = c->arena_cap ? c->arena_cap : 4096;
        while (cap < c->arena_len + len) cap *= 2;
        c->arena = xrealloc(c->arena, cap);
        c->arena_cap = cap;
    }
    char *p = c->arena + c->arena_len;
    p[0] = (char)type;
    memcpy(p + 1, &hl, 4);
    memcpy(p + 5, head, hlen);
    memcpy(p + 5 + hlen, tags, tlen);
    if (c->nkeys == c->capkeys) {
        c->capkeys = c->capkeys ? c->capkeys * 2 : 256;
        c->keys = xrealloc(c->keys, c->capkeys * sizeof *c->keys);
    }
    sg_key *k = &c->keys[c->nkeys];
    k->hash = h;
    k->off = (uint32_t)c->arena_len;
    k->len = (uint32_t)len;
    k->state = r ? SG_KEY_NAME_BAD : SG_KEY_NAME_OK;
    k->reason = (uint8_t)r;
    k->sid = 0;
    c->arena_len += len;
    c->key_slots[s] = (uint32_t)(++c->nkeys);
    if (c->nkeys * 2 > c->nkey_slots) keys_rehash(c);
    return (long)(c->nkeys - 1);
}

/* ---- parsing */

static int type_of(const char *s, size_t n) {
    if (n == 1) {
        switch (s[0]) {
        case 'c': return SG_COUNTER;
        case 'g': return SG_GAUGE;
        case 'h': return SG_HISTOGRAM;
        case 'd': return SG_DISTRIBUTION;
        case 's': return SG_SET;
        }
    } else if (n == 2 && s[0] == 'm' && s[1] == 's') {
        return SG_TIMING;
    }
    return -1;
}

static sg_staged *stage(sg_core *c) {
    if (c->nstaged == c->capstaged) {
        c->capstaged = c->capstaged ? c->capstaged * 2 : 64;
        c->staged = xrealloc(c->staged, c->capstaged * sizeof(sg_staged));
    }
    return &((sg_staged *)c->staged)[c->nstaged++];
}

/* Plain decimals (`[+-]digits[.digits]`, at most 15 significant digits, at most 22 after the
 * point) as the quotient of two doubles that are exact: IEEE division rounds correctly, so this
 * is the value strtod gives, without its cost. Returns 0 for anything else. */
static int fast_decimal(const char *s, size_t n, double *out) {
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    size_t i = 0;
    int neg = 0;
    if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    uint64_t m = 0;
    int digits = 0, frac = 0, seen = 0, point = 0;
    for (; i < n; i++) {
        char ch = s[i];
        if (ch >= '0' && ch <= '9') {
            seen = 1;
            if (m || ch != '0') digits++;
            if (digits > 15) return 0;
            m = m * 10 + (uint64_t)(ch - '0');
            if (point) frac++;
        } else if (ch == '.' && !point) {
            point = 1;
        } else {
            return 0;
        }
    }
    if (!seen || frac > 22) return 0;
    double v = (double)m / pow10[frac];
    *out = neg ? -v : v;
    return 1;
}

static int parse_value(const char *s, size_t n, double *out) {
    if (fast_decimal(s, n, out)) return SG_OK; /* always within VALUE_ABS_MAX */
    if (!float_syntax(s, n)) return SG_INVALID_VALUE;
    double v = to_double(s, n);
    if (!(v >= -VALUE_ABS_MAX && v <= VALUE_ABS_MAX)) return SG_NON_FINITE_VALUE;
    *out = v;
    return SG_OK;
}

/* One `value[:value…]|type[|section…]` of a line whose name section is `head`: stages its
 * samples, or returns the reason it is refused (protocol.py's _parse_metric, in its order). */
static int parse_part(sg_core *c, const char *head, size_t hlen, const char *rest, size_t rlen,
                      size_t *unknown) {
    const char *end = rest + rlen;
    const char *pipe = memchr(rest, '|', rlen);
    if (!pipe) return SG_MALFORMED_LINE;
    const char *raw = rest;
    size_t rawlen = (size_t)(pipe - rest);
    const char *tstart = pipe + 1;
    const char *next = memchr(tstart, '|', (size_t)(end - tstart));
    const char *tend = next ? next : end;
    int type = type_of(tstart, (size_t)(tend - tstart));
    if (type < 0) return tend > tstart ? SG_UNKNOWN_TYPE : SG_MALFORMED_LINE;
    double rate = 1.0, ts = 0.0;
    int has_ts = 0;
    size_t unk = 0, ntags = 0, scratch_len = 0;
    const char *tags = "";
    size_t tlen = 0;
    for (const char *s = next ? next + 1 : NULL; s;) {
        const char *e = memchr(s, '|', (size_t)(end - s));
        const char *se = e ? e : end;
        size_t sl = (size_t)(se - s);
        if (sl) {
            if (s[0] == '#') {
                if (ntags == 0) {
                    tags = s + 1;
                    tlen = sl - 1;
                } else {
                    if (ntags == 1) {
                        memcpy(c->scratch, tags, tlen);
                        scratch_len = tlen;
                    }
                    c->scratch[scratch_len++] = ',';
                    memcpy(c->scratch + scratch_len, s + 1, sl - 1);
                    scratch_len += sl - 1;
                    tags = c->scratch;
                    tlen = scratch_len;
                }
                ntags++;
            } else if (s[0] == '@') {
                if (!float_syntax(s + 1, sl - 1)) return SG_INVALID_SAMPLE_RATE;
                rate = to_double(s + 1, sl - 1);
                if (!(rate >= SAMPLE_RATE_MIN && rate <= 1.0)) return SG_INVALID_SAMPLE_RATE;
            } else if (s[0] == 'T') {
                if (!int_syntax(s + 1, sl - 1)) return SG_INVALID_TIMESTAMP;
                ts = to_double(s + 1, sl - 1);
                if (isinf(ts) || !(ts > 0)) return SG_INVALID_TIMESTAMP;
                has_ts = 1;
            } else if (!((sl >= 2 && (s[0] == 'c' || s[0] == 'e') && s[1] == ':') ||
                         (sl >= 5 && memcmp(s, "card:", 5) == 0))) {
                unk++;
            }
        }
        s = e ? e + 1 : NULL;
    }
    long key = key_lookup(c, type, head, hlen, tags, tlen);
    if (key < 0) return SG_INTERNAL_ERROR;
    if (c->keys[key].state == SG_KEY_NAME_BAD) return c->keys[key].reason;
    size_t first = c->nstaged;
    if (type == SG_SET) {
        if (!rawlen) return SG_EMPTY_VALUE;
        sg_staged *st = stage(c);
        st->type = type;
        st->has_ts = has_ts;
        st->ts = ts;
        st->rate = 1.0;
        st->delta = 0;
        st->key = (uint32_t)key;
        st->member = raw;
        st->member_len = rawlen;
    } else {
        const char *v = raw, *vend = raw + rawlen;
        while (v <= vend) {
            const char *colon = memchr(v, ':', (size_t)(vend - v));
            const char *ve = colon ? colon : vend;
            if (ve > v) {
                double value;
                int r = parse_value(v, (size_t)(ve - v), &value);
                if (r) {
                    c->nstaged = first;
                    return r;
                }
                sg_staged *st = stage(c);
                st->type = type;
                st->has_ts = has_ts;
                st->ts = ts;
                st->key = (uint32_t)key;
                st->value = value;
                st->member = NULL;
                if (type == SG_GAUGE) {
                    st->rate = 1.0;
                    st->delta = c->gauge_delta && (v[0] == '+' || v[0] == '-');
                } else {
                    st->rate = rate;
                    st->delta = 0;
                }
            }
            if (!colon) break;
            v = colon + 1;
        }
        if (c->nstaged == first) return SG_EMPTY_VALUE;
    }
    *unknown += unk;
    return SG_OK;
}

/* Etsy's `name:v|t[|@r]:v|t…`: every colon-separated segment is `value|type…` with no `#`. */
static int is_multi(const char *rest, size_t rlen) {
    const char *end = rest + rlen;
    for (const char *s = rest;;) {
        const char *e = memchr(s, ':', (size_t)(end - s));
        const char *se = e ? e : end;
        const char *p = memchr(s, '|', (size_t)(se - s));
        if (!p || memchr(s, '#', (size_t)(se - s))) return 0;
        const char *t = p + 1;
        const char *p2 = memchr(t, '|', (size_t)(se - t));
        if (type_of(t, (size_t)((p2 ? p2 : se) - t)) < 0) return 0;
        if (!e) return 1;
        s = e + 1;
    }
}

static int parse_metric(sg_core *c, const char *line, size_t n, size_t *unknown) {
    const char *colon = memchr(line, ':', n);
    if (!colon) return SG_MALFORMED_LINE;
    const char *head = line, *rest = colon + 1;
    size_t hlen = (size_t)(colon - line), rlen = n - hlen - 1;
    const char *c2 = memchr(rest, ':', rlen);
    if (c2) {
        const char *p = memchr(rest, '|', rlen);
        if (p && c2 > p && !memchr(rest, '#', (size_t)(c2 - rest)) && is_multi(rest, rlen)) {
            const char *end = rest + rlen;
            for (const char *s = rest;;) {
                const char *e = memchr(s, ':', (size_t)(end - s));
                const char *se = e ? e : end;
                int r = parse_part(c, head, hlen, s, (size_t)(se - s), unknown);
                if (r) return r;
                if (!e) return SG_OK;
                s = e + 1;
            }
        }
    }
    return parse_part(c, head, hlen, rest, rlen, unknown);
}

/* One admitted sample of series `sid` at time t into bucket b (aggregator.add_samples' loop
 * body, after its checks). */
static void add_value(sg_core *c, int64_t sid, int type, double b, double t, double value,
                      const char *member, size_t member_len, double rate, int has_ts, int delta) {
    sg_table *tab = c->live;
    sg_acc *a = table_get(tab, b, sid, type);
    if (type == SG_SET) {
        members_add(tab, a, member, member_len);
        a->count += 1.0;
        return;
    }
    double v = value;
    if (type == SG_GAUGE) {
        sg_gauges *g = c->gauges;
        pthread_mutex_lock(&g->lock);
        size_t s = gauge_slot(g, sid, 0.0, -INFINITY);
        double cur_v = g->v[s], cur_t = g->t[s];
        if (delta) v = cur_v + v;
        if (delta || !has_ts || t >= cur_t) {
            g->v[s] = v;
            g->t[s] = !has_ts ? t : (t > cur_t ? t : cur_t);
            g->changed[s] = 1;
        }
        pthread_mutex_unlock(&g->lock);
        if (t >= a->last_ts) {
            a->last = v;
            a->last_ts = t;
            a->last_seq = sg_next_last_seq();
            a->has_last = 1;
        }
    }
    int sketched = type != SG_COUNTER;
    if (rate == 1.0) {
        a->count += 1.0;
        a->sum += v;
        if (sketched) {
            if (a->n == a->cap) acc_grow(tab, a);
            a->values[a->n] = v;
            if (a->weights) a->weights[a->n] = 1.0;
            a->n++;
            tab->values++;
        }
    } else {
        double w = 1.0 / rate;
        a->count += w;
        a->sum += v * w;
        if (sketched) {
            if (a->n == a->cap) acc_grow(tab, a);
            if (!a->weights) {
                a->weights = xrealloc(NULL, a->cap * sizeof(double));
                tab->value_bytes += a->cap * sizeof(double);
                for (size_t i = 0; i < a->n; i++) a->weights[i] = 1.0;
            }
            a->values[a->n] = v;
            a->weights[a->n] = w;
            a->n++;
            tab->values++;
        }
    }
    if (v < a->min) a->min = v;
    if (v > a->max) a->max = v;
}

/* aggregator.add_samples for one staged sample. */
static void apply(sg_core *c, sg_staged *st, double now, double bucket_now, sg_counts *counts) {
    double t = now, b = bucket_now;
    if (st->has_ts) {
        if (st->ts > now + c->future_max) {
            counts->rejects[SG_TIMESTAMP_IN_FUTURE]++;
            return;
        }
        if (st->ts < now - c->max_backdate) {
            counts->rejects[SG_TIMESTAMP_TOO_OLD]++;
            return;
        }
        t = st->ts;
        b = sg_bucket_of(t, c->interval);
    }
    sg_key *k = &c->keys[st->key];
    if (k->state == SG_KEY_NAME_OK) {
        const char *p = c->arena + k->off;
        uint32_t hl;
        memcpy(&hl, p + 1, 4);
        int64_t sid = 0;
        double gv = 0.0, gt = -INFINITY;
        int r = c->resolve(c->resolve_ctx, st->type, p + 5, hl, p + 5 + hl, k->len - 5 - hl, 1,
                           &sid, &gv, &gt);
        k = &c->keys[st->key];
        if (r < 0) {
            counts->rejects[SG_INTERNAL_ERROR]++;
            return;
        }
        if (r) {
            k->state = SG_KEY_REFUSED;
            k->reason = (uint8_t)r;
        } else {
            k->state = SG_KEY_ADMITTED;
            k->sid = sid;
            if (st->type == SG_GAUGE) {
                pthread_mutex_lock(&c->gauges->lock);
                gauge_slot(c->gauges, sid, gv, gt);
                pthread_mutex_unlock(&c->gauges->lock);
            }
        }
    }
    if (k->state == SG_KEY_REFUSED) {
        counts->rejects[k->reason]++;
        return;
    }
    counts->accepted++;
    add_value(c, k->sid, st->type, b, t, st->value, st->member, st->member_len, st->rate,
              st->has_ts, st->delta);
}

static void parse_line(sg_core *c, const char *line, size_t n, double now, double bucket_now,
                       sg_counts *counts) {
    if (!n) return;
    if (!valid_utf8((const unsigned char *)line, n)) {
        counts->lines++;
        counts->rejects[SG_INVALID_UTF8]++;
        return;
    }
    if (line[n - 1] == '\r') {
        n--;
        if (!n) return;
    }
    counts->lines++;
    if (n > SG_MAX_LINE) {
        counts->rejects[SG_LINE_TOO_LONG]++;
        return;
    }
    if (line[0] == '_') {
        if (n >= 3 && memcmp(line, "_e{", 3) == 0) {
            counts->events++;
            return;
        }
        if (n >= 4 && memcmp(line, "_sc|", 4) == 0) {
            counts->service_checks++;
            return;
        }
    }
    /* Checked per line, not per datagram: a TCP batch may be long, and between lines no staged
     * sample holds a key index, so the cache may go. Without it a flood of long unique names
     * (lines of up to 8 KiB, a million keys) would grow the arena past the 32-bit offsets. */
    if (c->arena_len >= c->max_arena) sg_core_forget(c);
    c->nstaged = 0;
    size_t unknown = 0;
    int r = parse_metric(c, line, n, &unknown);
    if (r) {
        counts->rejects[r]++;
        return;
    }
    counts->unknown_sections += unknown;
    sg_staged *staged = c->staged;
    for (size_t i = 0; i < c->nstaged; i++) apply(c, &staged[i], now, bucket_now, counts);
}

void sg_parse(sg_core *c, const char *data, size_t len, double now, int transport) {
    sg_counts *counts = &c->counts[transport];
    counts->packets++;
    counts->bytes += len;
    if (c->nkeys >= c->max_keys) sg_core_forget(c);
    if (c->scratch_cap < SG_MAX_LINE + 2) {
        c->scratch_cap = SG_MAX_LINE + 2;
        c->scratch = xrealloc(c->scratch, c->scratch_cap);
    }
    double bucket_now = sg_bucket_of(now, c->interval);
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        parse_line(c, p, (size_t)(le - p), now, bucket_now, counts);
        if (!nl) break;
        p = nl + 1;
    }
}

void sg_add(sg_core *c, int64_t sid, int type, double value, const char *member,
            size_t member_len, double rate, int has_ts, double ts, int delta, double now) {
    double t = has_ts ? ts : now;
    add_value(c, sid, type, sg_bucket_of(t, c->interval), t, value, member, member_len,
              type == SG_GAUGE ? 1.0 : rate, has_ts, delta);
}
