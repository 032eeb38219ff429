/* A libFuzzer target for the native ingest core's parse entry point, sg_parse() (sg_core.h).
 *
 * Built and run by fuzz/run.sh (clang, -fsanitize=fuzzer,address,undefined). What it does:
 * - One core, its gauges and a fake resolver (a registry written here, deterministic) live
 *   across inputs, so tables, key caches and registries grow as they do in a daemon. The live
 *   table is swapped out and freed every SWAP_EVERY inputs, and everything is rebuilt every
 *   RESET_EVERY inputs (or before each input with SG_FUZZ_FRESH=1, to replay one input alone),
 *   so memory stays bounded and no leak or out-of-memory report is a false one.
 * - An input is a sequence of datagrams separated by the bytes FF 00 (FF never occurs in valid
 *   UTF-8, so a separator never hides valid text). The first datagram is fed on UDP at NOW0;
 *   each later one starts with a control byte: its transport, its `now`, and an operation done
 *   before it is parsed (swap, forget the key cache, delete series, forget gauges, reconfigure,
 *   or HTTP points: samples of admitted series put by sg_add() into a second core, which shares
 *   the gauges' current values as the daemon's points core does).
 * - The resolver refuses some names with a reason derived from a hash of their bytes, fails
 *   (-1) now and then, admits the others with increasing ids up to CAP_SERIES (then
 *   SG_CARDINALITY_LIMIT), refuses a second type for one name (SG_TYPE_CONFLICT) and gives
 *   each gauge a current value.
 * - After every sg_parse the counters are checked against what the call was given, and after
 *   every input (and before every table is freed) the structures are checked whole: tables,
 *   set members, key cache against the registry, gauges. A broken invariant aborts with a
 *   message, which libFuzzer reports as a crash.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sg_bins.h"
#include "sg_core.h"

#define SWAP_EVERY 64
#define RESET_EVERY 1024
#define CAP_SERIES 3000
#define REG_BUCKETS 4096
#define NOW0 1700000000.0

#define FUZZ_NAME "sg_fuzz"
#include "fuzz_check.h"

/* ---- the fake resolver: a registry of (name section, tag text) -> (series id, type) */

typedef struct reg_entry {
    struct reg_entry *next;
    uint64_t hash;
    int64_t sid;
    int type;
    size_t hlen, tlen;
    char bytes[]; /* head, then tags */
} reg_entry;

typedef struct {
    reg_entry *buckets[REG_BUCKETS];
    reg_entry **by_sid; /* index sid: the entry, NULL once forgotten */
    size_t cap_sid;
    int64_t next_sid;
    size_t live;
    uint64_t calls;
    uint64_t epoch; /* bumped at each forget: what fails once may pass after */
} registry;

static uint64_t fnv(uint64_t h, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t key_hash(const char *head, size_t hlen, const char *tags, size_t tlen) {
    uint64_t h = fnv(0xcbf29ce484222325ull, head, hlen);
    h = fnv(h ^ 0xff, tags, tlen);
    return h ^ (h >> 29);
}

static reg_entry *reg_find(registry *r, uint64_t h, const char *head, size_t hlen,
                           const char *tags, size_t tlen) {
    for (reg_entry *e = r->buckets[h % REG_BUCKETS]; e; e = e->next)
        if (e->hash == h && e->hlen == hlen && e->tlen == tlen &&
            memcmp(e->bytes, head, hlen) == 0 && memcmp(e->bytes + hlen, tags, tlen) == 0)
            return e;
    return NULL;
}

static void reg_remove(registry *r, int64_t sid) {
    reg_entry *e = r->by_sid[sid];
    if (!e) return;
    reg_entry **pp = &r->buckets[e->hash % REG_BUCKETS];
    while (*pp != e) pp = &(*pp)->next;
    *pp = e->next;
    r->by_sid[sid] = NULL;
    r->live--;
    free(e);
}

static void reg_clear(registry *r) {
    for (size_t b = 0; b < REG_BUCKETS; b++)
        for (reg_entry *e = r->buckets[b], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    free(r->by_sid);
    memset(r, 0, sizeof *r);
    r->next_sid = 1;
}

static const int name_reasons[] = {SG_EMPTY_NAME,         SG_NAME_TOO_LONG,
                                   SG_NAME_WITHOUT_ALNUM, SG_INVALID_TAGS,
                                   SG_MIXED_TAG_STYLES,   SG_DROPPED_BY_MAPPING,
                                   SG_INVALID_MAPPED_NAME};

static int resolve(void *ctx, int type, const char *head, size_t hlen, const char *tags,
                   size_t tlen, int admit, int64_t *sid, double *gauge_v, double *gauge_t) {
    registry *r = ctx;
    r->calls++;
    CHECK(type >= 0 && type < SG_NTYPES, "type %d", type);
    CHECK(admit == 0 || admit == 1, "admit %d", admit);
    CHECK(hlen <= SG_MAX_LINE && tlen <= SG_MAX_LINE, "hlen %zu tlen %zu", hlen, tlen);
    CHECK(head && tags, "NULL head or tags");
    /* Reading every byte lets ASan see that both ranges are readable. */
    uint64_t h = key_hash(head, hlen, tags, tlen);
    if (!admit) {
        if (hlen == 0) return SG_EMPTY_NAME;
        if (hlen > 250) return SG_NAME_TOO_LONG;
        if (h % 23 == 0)
            return name_reasons[(h >> 8) % (sizeof name_reasons / sizeof *name_reasons)];
        if ((h ^ (r->epoch * 0x9e3779b97f4a7c15ull)) % 101 == 7) return -1;
        return 0;
    }
    if ((h ^ (r->epoch * 0x9e3779b97f4a7c15ull)) % 211 == 13) return -1;
    reg_entry *e = reg_find(r, h, head, hlen, tags, tlen);
    if (e) {
        if (e->type != type) return SG_TYPE_CONFLICT;
    } else {
        if (r->live >= CAP_SERIES) return SG_CARDINALITY_LIMIT;
        e = malloc(sizeof *e + hlen + tlen + 1);
        CHECK(e, "out of memory");
        e->hash = h;
        e->type = type;
        e->hlen = hlen;
        e->tlen = tlen;
        memcpy(e->bytes, head, hlen);
        memcpy(e->bytes + hlen, tags, tlen);
        e->sid = r->next_sid++;
        if ((size_t)e->sid >= r->cap_sid) {
            size_t cap = r->cap_sid ? r->cap_sid * 2 : 1024;
            r->by_sid = realloc(r->by_sid, cap * sizeof *r->by_sid);
            CHECK(r->by_sid, "out of memory");
            memset(r->by_sid + r->cap_sid, 0, (cap - r->cap_sid) * sizeof *r->by_sid);
            r->cap_sid = cap;
        }
        r->by_sid[e->sid] = e;
        e->next = r->buckets[h % REG_BUCKETS];
        r->buckets[h % REG_BUCKETS] = e;
        r->live++;
    }
    *sid = e->sid;
    if (type == SG_GAUGE) {
        *gauge_v = (double)(int64_t)(h % 2001) - 1000.0; /* the value the program knows */
        *gauge_t = (h & 0x10000) ? -INFINITY : NOW0 - (double)((h >> 20) % 7200);
    } else {
        *gauge_v = 0.0;
        *gauge_t = -INFINITY;
    }
    return 0;
}

/* ---- state kept across inputs */

static sg_gauges *gauges;
static sg_core *core, *points;
static registry reg;
static uint64_t inputs, resets;

static const double intervals[] = {10.0, 1.0, 60.0, 0.25, 0.001, 3600.0, 7.5};
static const size_t max_keys[] = {2048, 64, 1, 100000};
static const size_t max_arenas[] = {(size_t)1 << 28, 65536, 512};

static void setup(void) {
    reg_clear(&reg);
    gauges = sg_gauges_new();
    core = sg_core_new(gauges, resolve, &reg);
    points = sg_core_new(gauges, resolve, &reg);
    core->max_keys = max_keys[resets % 4];
    core->max_arena = max_arenas[resets % 3];
    core->interval = intervals[resets % 7];
    core->gauge_delta = (int)(resets & 1) ^ 1;
    points->interval = core->interval;
    resets++;
}

/* ---- whole-structure checks */

typedef struct {
    double bucket;
    int64_t sid;
} acc_id;

static int cmp_acc_id(const void *a, const void *b) {
    const acc_id *x = a, *y = b;
    if (x->sid != y->sid) return (x->sid > y->sid) - (x->sid < y->sid);
    return (x->bucket > y->bucket) - (x->bucket < y->bucket);
}

static void check_slots(const uint32_t *slots, size_t nslots, size_t n, const char *what) {
    CHECK(nslots && (nslots & (nslots - 1)) == 0, "%s: %zu slots", what, nslots);
    CHECK(n * 2 <= nslots, "%s: %zu entries in %zu slots", what, n, nslots);
    uint8_t *seen = calloc(n + 1, 1);
    CHECK(seen, "out of memory");
    size_t used = 0;
    for (size_t s = 0; s < nslots; s++) {
        if (!slots[s]) continue;
        CHECK(slots[s] <= n, "%s: slot %zu -> %u of %zu", what, s, slots[s], n);
        CHECK(!seen[slots[s]], "%s: entry %u in two slots", what, slots[s]);
        seen[slots[s]] = 1;
        used++;
    }
    CHECK(used == n, "%s: %zu slots used for %zu entries", what, used, n);
    free(seen);
}

static void check_members(const sg_members *m, uint32_t min_len, size_t *cap_total) {
    CHECK(m->len <= m->cap, "members len %zu cap %zu", m->len, m->cap);
    check_slots(m->slots, m->nslots, m->n, "members");
    size_t at = 0;
    for (size_t i = 0; i < m->n; i++) {
        CHECK(m->offsets[i] == at, "member %zu at %u, expected %zu", i, m->offsets[i], at);
        uint32_t len;
        memcpy(&len, m->bytes + at, 4);
        CHECK(len >= min_len && len <= SG_MAX_LINE, "member length %u", len);
        at += 4 + len;
        CHECK(at <= m->len, "member %zu runs past %zu", i, m->len);
    }
    CHECK(at == m->len, "members end at %zu of %zu", at, m->len);
    if (m->n <= 64) { /* members are distinct (pairwise on small sets, as a spot check) */
        for (size_t i = 0; i < m->n; i++)
            for (size_t j = i + 1; j < m->n; j++) {
                uint32_t li, lj;
                memcpy(&li, m->bytes + m->offsets[i], 4);
                memcpy(&lj, m->bytes + m->offsets[j], 4);
                CHECK(li != lj || memcmp(m->bytes + m->offsets[i] + 4,
                                         m->bytes + m->offsets[j] + 4, li) != 0,
                      "members %zu and %zu equal", i, j);
            }
    }
    *cap_total += m->cap;
}

/* Every sum is a sum of finite terms unless a term overflowed: value * weight (<= 1e9) past
 * DBL_MAX, or a gauge whose +N/-N changes ran its value to +-inf. */
static int sum_may_be_nan(const sg_acc *a) {
    if (a->type == SG_GAUGE) return isinf(a->min) || isinf(a->max);
    return fmax(fabs(a->min), fabs(a->max)) * 1e9 > 1.7976931348623157e308 / 2;
}

/* Each bin, recomputed the slow way: its weight is the sum, in arrival order from 0, of the
 * weights of the values of its store whose key is its key (the mapping's formula, as sg_bins.c
 * states it), and the zero bucket likewise. */
static void check_bins_exactly(const sg_acc *a, const int64_t *keys, const double *counts,
                               size_t n, size_t npos, double zero) {
    const double mult = (1 / log1p(2 * 0.01 / (1 - 0.01))) * log(2.0);
    const double min_possible = 2.2250738585072014e-308 * (1 + 2 * 0.01 / (1 - 0.01));
    double z = 0.0;
    size_t counted = 0;
    for (size_t j = 0; j < a->n; j++)
        if (!(fabs(a->values[j]) > min_possible)) z += a->weights ? a->weights[j] : 1.0;
    CHECK(z == zero, "zero bucket %g, values give %g", zero, z);
    for (size_t b = 0; b < n; b++) {
        int neg = b >= npos;
        double sum = 0.0;
        for (size_t j = 0; j < a->n; j++) {
            double x = a->values[j], ax = fabs(x);
            if (!(ax > min_possible) || (x < 0) != neg) continue;
            if ((int64_t)ceil(log(ax) / log(2.0) * mult) != keys[b]) continue;
            sum += a->weights ? a->weights[j] : 1.0;
            counted++;
        }
        CHECK(sum == counts[b], "key %lld of store %d weighs %g, values give %g",
              (long long)keys[b], neg, counts[b], sum);
    }
    size_t nonzero = 0;
    for (size_t j = 0; j < a->n; j++) nonzero += fabs(a->values[j]) > min_possible;
    CHECK(counted == nonzero, "bins hold %zu values of %zu", counted, nonzero);
}

/* A swapped-out table's values binned as the flush bins them (sg_bins.h): keys increasing
 * within each store, every weight counted once, no value that is not finite passed over. */
static void check_binning(const sg_table *t) {
    static sg_binner binner;
    for (size_t i = 0; i < t->n; i++) {
        const sg_acc *a = &t->accs[i];
        if (!a->n) continue;
        int64_t *keys = malloc(a->n * sizeof *keys);
        double *counts = malloc(a->n * sizeof *counts);
        CHECK(keys && counts, "out of memory");
        size_t npos = 0;
        double zero = 0.0;
        long n = sg_bin_series(&binner, a->values, a->weights, a->n, keys, counts, &npos, &zero);
        int finite = 1;
        for (size_t k = 0; k < a->n; k++) finite &= isfinite(a->values[k]) != 0;
        CHECK((n < 0) == !finite, "binning says %ld of %zu values, finite %d", n, a->n, finite);
        if (n >= 0) {
            CHECK((size_t)n <= a->n && npos <= (size_t)n, "%ld keys, %zu positive", n, npos);
            double weight = zero, want = 0.0;
            for (long k = 0; k < n; k++) {
                CHECK(counts[k] > 0, "bin weight %g", counts[k]);
                if (k && (size_t)k != npos) CHECK(keys[k] > keys[k - 1], "keys not increasing");
                weight += counts[k];
            }
            for (size_t k = 0; k < a->n; k++) want += a->weights ? a->weights[k] : 1.0;
            CHECK(fabs(weight - want) <= 1e-9 * want, "bins weigh %g, values %g", weight, want);
            if (a->n <= 256) check_bins_exactly(a, keys, counts, (size_t)n, npos, zero);
        }
        free(keys);
        free(counts);
    }
}

static void check_table(const sg_table *t, uint32_t min_member) {
    CHECK(t->n <= t->cap, "table n %zu cap %zu", t->n, t->cap);
    check_slots(t->slots, t->nslots, t->n, "table");
    size_t values = 0, member_caps = 0, value_bytes = 0;
    acc_id *ids = malloc((t->n + 1) * sizeof *ids);
    CHECK(ids, "out of memory");
    for (size_t i = 0; i < t->n; i++) {
        const sg_acc *a = &t->accs[i];
        ids[i].bucket = a->bucket;
        ids[i].sid = a->sid;
        CHECK(isfinite(a->bucket), "bucket %g", a->bucket);
        CHECK(a->type >= 0 && a->type < SG_NTYPES, "type %d", a->type);
        CHECK(a->sid >= 1 && a->sid < reg.next_sid, "sid %lld of %lld", (long long)a->sid,
              (long long)reg.next_sid);
        if (reg.by_sid[a->sid])
            CHECK(reg.by_sid[a->sid]->type == a->type, "sid %lld: type %d, registered %d",
                  (long long)a->sid, a->type, reg.by_sid[a->sid]->type);
        CHECK(a->count > 0, "count %g", a->count);
        CHECK(a->n <= a->cap, "values n %zu cap %zu", a->n, a->cap);
        CHECK(!a->cap || a->values, "cap %zu without values", a->cap);
        values += a->n;
        value_bytes += a->cap * sizeof(double) * (a->weights ? 2 : 1);
        CHECK(sg_table_find(t, a->bucket, a->sid) == (long)i, "entry %zu not found where it is",
              i);
        if (a->type == SG_SET) {
            CHECK(a->members && a->members->n >= 1, "a set without members");
            CHECK(a->n == 0 && !a->weights, "a set with values");
            CHECK(a->count >= (double)a->members->n, "set count %g < %zu members", a->count,
                  a->members->n);
            check_members(a->members, min_member, &member_caps);
            continue;
        }
        CHECK(!a->members, "members of a type %d", a->type);
        CHECK(!isnan(a->min) && !isnan(a->max) && a->min <= a->max, "min %g max %g", a->min,
              a->max);
        CHECK(!isnan(a->sum) || sum_may_be_nan(a), "sum NaN, min %g max %g", a->min, a->max);
        if (a->min >= 0) CHECK(!(a->sum < 0), "sum %g < 0 with min %g", a->sum, a->min);
        if (a->max <= 0) CHECK(!(a->sum > 0), "sum %g > 0 with max %g", a->sum, a->max);
        if (a->type == SG_COUNTER) {
            CHECK(a->n == 0 && !a->weights, "a counter with values");
        } else {
            CHECK(a->n >= 1, "a sketched series-bucket without values");
            CHECK(a->count >= (double)a->n * 0.999999, "count %g < %zu values", a->count, a->n);
            for (size_t k = 0; k < a->n; k++) {
                double v = a->values[k];
                CHECK(v >= a->min && v <= a->max, "value %g outside [%g, %g]", v, a->min,
                      a->max);
                if (a->type != SG_GAUGE) CHECK(fabs(v) <= 1e300, "value %g", v);
                if (a->weights)
                    CHECK(a->weights[k] >= 1.0 && a->weights[k] <= 1e9 * 1.000001, "weight %g",
                          a->weights[k]);
            }
        }
        if (a->type == SG_GAUGE) {
            CHECK(a->has_last && isfinite(a->last_ts), "gauge without last");
            CHECK(a->last >= a->min && a->last <= a->max, "last %g outside [%g, %g]", a->last,
                  a->min, a->max);
        } else {
            CHECK(!a->has_last, "last of a type %d", a->type);
        }
    }
    CHECK(values == t->values, "table says %zu values, entries hold %zu", t->values, values);
    CHECK(value_bytes == t->value_bytes, "table says %zu value bytes, entries hold %zu",
          t->value_bytes, value_bytes);
    CHECK(member_caps == t->member_bytes, "table says %zu member bytes, sets hold %zu",
          t->member_bytes, member_caps);
    qsort(ids, t->n, sizeof *ids, cmp_acc_id);
    for (size_t i = 1; i < t->n; i++)
        CHECK(cmp_acc_id(&ids[i - 1], &ids[i]) != 0, "two entries for sid %lld bucket %.17g",
              (long long)ids[i].sid, ids[i].bucket);
    free(ids);
}

typedef struct {
    uint64_t h;
    uint32_t i;
} key_ref;

static int cmp_key_ref(const void *a, const void *b) {
    const key_ref *x = a, *y = b;
    if (x->h != y->h) return (x->h > y->h) - (x->h < y->h);
    return (x->i > y->i) - (x->i < y->i);
}

static void check_keys(const sg_core *c) {
    CHECK(c->nkeys <= c->capkeys || c->nkeys == 0, "keys n %zu cap %zu", c->nkeys, c->capkeys);
    check_slots(c->key_slots, c->nkey_slots, c->nkeys, "keys");
    size_t at = 0;
    key_ref *refs = malloc((c->nkeys + 1) * sizeof *refs);
    CHECK(refs, "out of memory");
    for (size_t i = 0; i < c->nkeys; i++) {
        const sg_key *k = &c->keys[i];
        CHECK(k->off == at, "key %zu at %u, expected %zu", i, k->off, at);
        CHECK(k->len >= 5 && at + k->len <= c->arena_len, "key %zu: len %u", i, k->len);
        const char *p = c->arena + k->off;
        int type = (unsigned char)p[0];
        uint32_t hl;
        memcpy(&hl, p + 1, 4);
        CHECK(type < SG_NTYPES && hl <= k->len - 5, "key %zu: type %d head %u", i, type, hl);
        const char *head = p + 5, *tags = p + 5 + hl;
        size_t tl = k->len - 5 - hl;
        at += k->len;
        refs[i].h = key_hash(head, hl, tags, tl) * 31 + (uint64_t)type;
        refs[i].i = (uint32_t)i;
        switch (k->state) {
        case SG_KEY_NAME_OK:
            break;
        case SG_KEY_NAME_BAD:
        case SG_KEY_REFUSED:
            CHECK(k->reason > 0 && k->reason < SG_NREASONS, "key %zu: reason %u", i, k->reason);
            break;
        case SG_KEY_ADMITTED: {
            CHECK(k->sid >= 1 && k->sid < reg.next_sid, "key %zu: sid %lld", i,
                  (long long)k->sid);
            const reg_entry *e = reg.by_sid[k->sid];
            CHECK(e, "key %zu: sid %lld was forgotten but is still cached", i,
                  (long long)k->sid);
            CHECK(e->type == type && e->hlen == hl && e->tlen == tl &&
                      memcmp(e->bytes, head, hl) == 0 && memcmp(e->bytes + hl, tags, tl) == 0,
                  "key %zu: sid %lld names another series", i, (long long)k->sid);
            break;
        }
        default:
            CHECK(0, "key %zu: state %u", i, k->state);
        }
    }
    CHECK(at == c->arena_len, "keys end at %zu, arena %zu", at, c->arena_len);
    /* Forgotten at a line's start once past max_arena; one line adds at most one key per type. */
    CHECK(c->arena_len < c->max_arena + SG_NTYPES * (SG_MAX_LINE + 5), "arena %zu, max %zu",
          c->arena_len, c->max_arena);
    qsort(refs, c->nkeys, sizeof *refs, cmp_key_ref);
    for (size_t i = 1; i < c->nkeys; i++) {
        if (refs[i].h != refs[i - 1].h) continue;
        const sg_key *a = &c->keys[refs[i - 1].i], *b = &c->keys[refs[i].i];
        CHECK(a->len != b->len || memcmp(c->arena + a->off, c->arena + b->off, a->len) != 0,
              "keys %u and %u are the same key", refs[i - 1].i, refs[i].i);
    }
    free(refs);
}

static void check_gauges(const sg_gauges *g) {
    CHECK(g->nslots && (g->nslots & (g->nslots - 1)) == 0, "gauges: %zu slots", g->nslots);
    CHECK(g->n * 2 <= g->nslots, "gauges: %zu in %zu slots", g->n, g->nslots);
    size_t used = 0;
    for (size_t s = 0; s < g->nslots; s++) {
        if (!g->sids[s]) continue;
        used++;
        CHECK(g->sids[s] >= 1 && g->sids[s] < reg.next_sid, "gauge sid %lld",
              (long long)g->sids[s]);
        CHECK(!isnan(g->v[s]) && !isnan(g->t[s]), "gauge %lld: %g at %g",
              (long long)g->sids[s], g->v[s], g->t[s]);
        CHECK(g->changed[s] <= 1, "gauge changed %u", g->changed[s]);
    }
    CHECK(used == g->n, "gauges: %zu used, n %zu", used, g->n);
}

static void check_all(void) {
    check_table(core->live, 1);
    check_table(points->live, 0);
    check_keys(core);
    CHECK(points->nkeys == 0, "sg_add cached a key");
    check_gauges(gauges);
    for (int t = 0; t < SG_TRANSPORTS; t++)
        CHECK(core->counts[t].rejects[SG_OK] == 0, "a reject counted as reason 0");
}

static void teardown(void) {
    check_all();
    sg_table_free(sg_core_swap(core));
    sg_core_free(core);
    sg_core_free(points);
    sg_gauges_free(gauges);
    core = points = NULL;
    gauges = NULL;
}

/* ---- one datagram, and what its counters may say afterwards */

static uint64_t rhs(const sg_counts *k) {
    uint64_t r = k->accepted + k->events + k->service_checks;
    for (int i = 0; i < SG_NREASONS; i++) r += k->rejects[i];
    return r;
}

static long double count_total(const sg_table *t) {
    long double s = 0;
    for (size_t i = 0; i < t->n; i++) s += t->accs[i].count;
    return s;
}

static void feed(const uint8_t *data, size_t len, double now, int transport) {
    sg_counts before[SG_TRANSPORTS];
    memcpy(before, core->counts, sizeof before);
    size_t values_before = core->live->values, entries_before = core->live->n;
    long double counted_before = count_total(core->live);
    /* The datagram in a buffer of its own length, so ASan sees any read past its end. */
    char *buf = malloc(len ? len : 1);
    CHECK(buf, "out of memory");
    if (len) memcpy(buf, data, len);
    sg_parse(core, buf, len, now, transport);
    free(buf);

    size_t newlines = 0;
    for (size_t i = 0; i < len; i++) newlines += data[i] == '\n';
    for (int t = 0; t < SG_TRANSPORTS; t++) {
        const sg_counts *a = &before[t], *b = &core->counts[t];
        if (t != transport) {
            CHECK(memcmp(a, b, sizeof *a) == 0, "transport %d counted a datagram of %d", t,
                  transport);
            continue;
        }
        CHECK(b->packets == a->packets + 1, "packets %llu -> %llu",
              (unsigned long long)a->packets, (unsigned long long)b->packets);
        CHECK(b->bytes == a->bytes + len, "bytes +%llu for %zu",
              (unsigned long long)(b->bytes - a->bytes), len);
        uint64_t lines = b->lines - a->lines, outcomes = rhs(b) - rhs(a);
        CHECK(lines <= newlines + 1, "%llu lines from %zu newlines", (unsigned long long)lines,
              newlines);
        /* Every line counted ends as at least one outcome; a line of n bytes as at most n. */
        CHECK(outcomes >= lines, "%llu lines, %llu outcomes", (unsigned long long)lines,
              (unsigned long long)outcomes);
        CHECK(outcomes <= len, "%llu outcomes from %zu bytes", (unsigned long long)outcomes,
              len);
        CHECK(b->unknown_sections - a->unknown_sections <= len, "unknown sections");
        uint64_t accepted = b->accepted - a->accepted;
        CHECK(core->live->values - values_before <= accepted, "%zu values from %llu samples",
              core->live->values - values_before, (unsigned long long)accepted);
        CHECK(core->live->n - entries_before <= accepted, "%zu entries from %llu samples",
              core->live->n - entries_before, (unsigned long long)accepted);
        long double counted = count_total(core->live) - counted_before;
        CHECK(counted >= (long double)accepted * 0.99L, "count +%Lg for %llu samples",
              counted, (unsigned long long)accepted);
    }
}

/* ---- the operations a control byte asks for */

/* What a held interval's pop() does: every other series-bucket dropped, the rest intact. */
static void check_drop(sg_table *t) {
    unsigned char *gone = calloc(t->n ? t->n : 1, 1);
    CHECK(gone, "out of memory");
    size_t kept = 0;
    for (size_t i = 0; i < t->n; i++) kept += !(gone[i] = i % 2);
    sg_table_drop(t, gone);
    free(gone);
    CHECK(t->n == kept, "drop kept %zu of %zu", t->n, kept);
    check_table(t, 1);
    CHECK(sg_table_find(t, NAN, 1) == -1, "found a bucket that is not a number");
}

static void op_swap(void) {
    sg_table *t = sg_core_swap(core);
    check_table(t, 1);
    check_binning(t);
    check_drop(t);
    sg_table_free(t);
    CHECK(core->live->n == 0 && core->live->values == 0, "a swap left a non-empty table");
    t = sg_core_swap(points);
    check_table(t, 0);
    check_binning(t);
    sg_table_free(t);
}

static int cmp_sid(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The registered sids s with s % 4 == pick, ascending (as sg_table_discard wants them). */
static int64_t *pick_sids(unsigned pick, size_t *n) {
    int64_t *sids = malloc((reg.live + 1) * sizeof *sids);
    CHECK(sids, "out of memory");
    *n = 0;
    for (size_t b = 0; b < REG_BUCKETS; b++)
        for (const reg_entry *e = reg.buckets[b]; e; e = e->next)
            if ((unsigned)(e->sid % 4) == pick) sids[(*n)++] = e->sid;
    qsort(sids, *n, sizeof *sids, cmp_sid);
    return sids;
}

/* As a delete of series does in the daemon: out of the live table and the registry, then the
 * cache and the gauges forget them. */
static void op_delete(unsigned pick) {
    size_t n;
    int64_t *sids = pick_sids(pick, &n);
    size_t had = core->live->n, of_them = 0;
    for (size_t i = 0; i < had; i++) {
        int64_t s = core->live->accs[i].sid;
        of_them += (unsigned)(s % 4) == pick;
    }
    sg_table_discard(points->live, sids, n);
    size_t gone = sg_table_discard(core->live, sids, n);
    CHECK(gone == of_them && core->live->n == had - gone, "discard: %zu gone of %zu, %zu left",
          gone, of_them, core->live->n);
    for (size_t i = 0; i < core->live->n; i++)
        CHECK((unsigned)(core->live->accs[i].sid % 4) != pick, "a discarded sid stayed");
    for (size_t i = 0; i < n; i++) reg_remove(&reg, sids[i]);
    sg_core_forget(core);
    reg.epoch++;
    sg_gauges_forget(gauges, sids, n);
    for (size_t s = 0; s < gauges->nslots; s++)
        CHECK(!gauges->sids[s] || (unsigned)(gauges->sids[s] % 4) != pick,
              "a forgotten gauge stayed");
    free(sids);
}

static void op_gauges_forget(unsigned pick) {
    size_t n;
    int64_t *sids = pick_sids(pick, &n);
    sg_gauges_forget(gauges, sids, n);
    free(sids);
}

/* HTTP points, as the daemon's points core takes them: series already admitted (here: ids
 * the registry holds, of their type), values finite, rates and timestamps checked. Four bytes
 * of `d` a sample: which series, the value, rate/timestamp/delta, the member's length. */
static void op_points(const uint8_t *d, size_t len, double now) {
    static const double rates[] = {1.0, 1.0, 0.5, 0.1, 1e-9, 0.999, 1.0, 0.25};
    static const double offsets[] = {-3599.0, -5.0, 0.0, 599.0};
    if (reg.live == 0) return;
    for (size_t i = 0; i + 4 <= len && i < 64; i += 4) {
        int64_t sid = 1 + (int64_t)(d[i] % (uint64_t)(reg.next_sid - 1));
        const reg_entry *e = reg.by_sid[sid];
        if (!e) continue;
        double v = (double)(int8_t)d[i + 1] * 0.5;
        if (d[i + 1] == 0x7f) v = 1e300;
        if (d[i + 1] == 0x80) v = -1e300;
        unsigned bits = d[i + 2];
        int has_ts = (bits >> 3) & 1;
        double ts = has_ts ? floor(now) + offsets[(bits >> 4) & 3] : 0.0;
        int delta = e->type == SG_GAUGE && (bits >> 6) & 1;
        size_t mlen = (size_t)(d[i + 3] % 17);
        if (mlen > len - i) mlen = len - i;
        if (e->type == SG_GAUGE) sg_gauges_seed(gauges, sid, (double)(d[i] % 7), NOW0 - 60.0);
        sg_add(points, sid, e->type, v, (const char *)d + i, mlen, rates[bits & 7], has_ts, ts,
               delta, now);
    }
}

static const double nows[] = {
    NOW0,         NOW0 + 0.4,    NOW0 + 9.999, NOW0 + 3599, NOW0 - 601,
    1e6 + 0.5,    4.6e15,        1e300,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fresh = -1;
    if (fresh < 0) fresh = getenv("SG_FUZZ_FRESH") != NULL;
    if (core && (fresh || inputs % RESET_EVERY == 0)) teardown();
    if (!core) setup();
    inputs++;

    size_t chunk = 0;
    const uint8_t *p = data, *end = data + size;
    for (;;) {
        const uint8_t *sep = NULL;
        for (const uint8_t *q = p; q + 1 < end; q++)
            if (q[0] == 0xff && q[1] == 0x00) {
                sep = q;
                break;
            }
        const uint8_t *ce = sep ? sep : end;
        if (chunk == 0) {
            feed(p, (size_t)(ce - p), NOW0, 0);
        } else if (ce > p) {
            unsigned ctl = p[0];
            int transport = (int)(ctl & 3) % SG_TRANSPORTS;
            double now = nows[(ctl >> 2) & 7];
            switch (ctl >> 5) {
            case 3:
                op_swap();
                break;
            case 4:
                sg_core_forget(core);
                reg.epoch++;
                break;
            case 5:
                op_delete((unsigned)chunk % 4);
                break;
            case 6:
                op_gauges_forget((unsigned)chunk % 4);
                break;
            case 7:
                core->gauge_delta ^= 1;
                core->interval = intervals[chunk % 7];
                break;
            case 2:
                op_points(p + 1, (size_t)(ce - p - 1), now);
                break;
            default:
                break;
            }
            feed(p + 1, (size_t)(ce - p - 1), now, transport);
        }
        chunk++;
        if (!sep) break;
        p = sep + 2;
    }

    check_all();
    if (inputs % SWAP_EVERY == 0) op_swap();
    return 0;
}
