/* The request-time scoring stages of service/core/scoring.py, compiled.
 *
 * Why: a request touches a few thousand (session, item) pairs, and the numpy version spends
 * its time in the overhead of about a hundred small array calls, not in arithmetic. These
 * functions do each stage in one pass over the raw Redis values (the packed blobs as hiredis
 * returned them) and give back bytes that numpy views without copying.
 *
 * Every function is the exact counterpart of a function of service/kernel/reference.py, with
 * the same summation order, so results are equal; tests/test_kernel.py runs both on
 * random cases. Entries: index entries are (time: big-endian i64, session: little-endian u64),
 * history entries (item: little-endian u64, time: big-endian i64), 16 bytes each.
 */
#include "kernel.h"

/* --- an open-addressing map u64 -> dense id (ids in first-seen order) ---------------------- */
typedef struct {
    int32_t *slots;  /* -1: empty, else the dense id */
    uint64_t *keys;  /* by dense id */
    Py_ssize_t mask, size;
} Map;

static int map_init(Map *m, Py_ssize_t capacity) {
    Py_ssize_t n = 16;
    while (n < 2 * capacity) n <<= 1;
    m->slots = malloc(sizeof(int32_t) * n);
    m->keys = malloc(sizeof(uint64_t) * (capacity ? capacity : 1));
    if (!m->slots || !m->keys) {
        free(m->slots);
        free(m->keys);
        m->slots = NULL;  /* callers free a map whose slots are set */
        m->keys = NULL;
        return -1;
    }
    memset(m->slots, 0xff, sizeof(int32_t) * n);
    m->mask = n - 1;
    m->size = 0;
    return 0;
}

static void map_free(Map *m) { free(m->slots); free(m->keys); }

/* The dense id of key, added if new (the caller sized the map for every key it will add). */
static Py_ssize_t map_id(Map *m, uint64_t key) {
    Py_ssize_t at = (Py_ssize_t)mix(key) & m->mask;
    for (;;) {
        int32_t id = m->slots[at];
        if (id < 0) {
            m->slots[at] = (int32_t)m->size;
            m->keys[m->size] = key;
            return m->size++;
        }
        if (m->keys[id] == key) return id;
        at = (at + 1) & m->mask;
    }
}

/* --- argument helpers ---------------------------------------------------------------------- */
typedef struct { const char *data; Py_ssize_t len; } Blob;

/* The values of a list of bytes-or-None (an MGET reply) without copying. *held is the
 * sequence the pointers point into (a new list when seq was another iterable): the caller
 * releases it after the last use of the blobs. */
static Blob *blobs_of(PyObject *seq, Py_ssize_t *count, Py_ssize_t *entries, PyObject **held) {
    PyObject *fast = PySequence_Fast(seq, "blobs must be a sequence of bytes or None");
    *held = fast;
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    Blob *out = malloc(sizeof(Blob) * (n ? n : 1));
    if (!out) { PyErr_NoMemory(); return NULL; }
    *entries = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (item == Py_None) {
            out[i].data = NULL;
            out[i].len = 0;
        } else if (PyBytes_Check(item)) {
            out[i].data = PyBytes_AS_STRING(item);
            out[i].len = PyBytes_GET_SIZE(item) / ENTRY;
        } else {
            free(out);
            PyErr_SetString(PyExc_TypeError, "blobs must hold bytes or None");
            return NULL;
        }
        *entries += out[i].len;
    }
    *count = n;
    return out;
}

/* A tuple of two new bytes objects of n u64 and n f64, for the caller to fill in place. */
static PyObject *pair_new(Py_ssize_t n, uint64_t **ids, double **values) {
    PyObject *a = PyBytes_FromStringAndSize(NULL, n * 8);
    PyObject *b = PyBytes_FromStringAndSize(NULL, n * 8);
    PyObject *out = a && b ? PyTuple_Pack(2, a, b) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    if (out) {
        *ids = (uint64_t *)PyBytes_AS_STRING(a);
        *values = (double *)PyBytes_AS_STRING(b);
    }
    return out;
}

/* --- neighbours ---------------------------------------------------------------------------- */
typedef struct { uint64_t session; double similarity; int64_t latest; } Candidate;

#define MORE_RECENT(a, b) \
    ((a).latest > (b).latest || ((a).latest == (b).latest && (a).session < (b).session))
#define MORE_SIMILAR(a, b) \
    ((a).similarity > (b).similarity || \
     ((a).similarity == (b).similarity && MORE_RECENT(a, b)))
DEFINE_SORT(sort_by_recency, Candidate, MORE_RECENT)
DEFINE_SORT(sort_by_similarity, Candidate, MORE_SIMILAR)
DEFINE_SELECT(select_by_recency, Candidate, sort_by_recency)
DEFINE_SELECT(select_by_similarity, Candidate, sort_by_similarity)

PyDoc_STRVAR(neighbours_doc,
"neighbours(weights, index_blobs, sample_sessions, neighbours, exclude, has_exclude, cap,\n"
"           half_life) -> (sessions u64 bytes, similarities f64 bytes): scoring.neighbours'\n"
"counterpart (each index counts its newest cap entries).");

/* The neighbours of a query over its index blobs: *out (malloc'd, the caller frees it) holds
 * the *n most similar, most similar first. -1 with an exception set on failure. */
static int neighbours_core(const double *w, const Blob *blobs, Py_ssize_t count,
                           Py_ssize_t entries, Py_ssize_t sample, Py_ssize_t keep,
                           uint64_t exclude, int has_exclude, Py_ssize_t cap,
                           double half_life, Candidate **out, Py_ssize_t *n_out) {
    Map map = {0};
    Candidate *cands = NULL;
    if (map_init(&map, entries) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (!(cands = malloc(sizeof(Candidate) * (entries ? entries : 1)))) {
        map_free(&map);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t b = 0; b < count; b++) {
        Py_ssize_t first = blobs[b].len > cap ? blobs[b].len - (cap > 0 ? cap : 0) : 0;
        const unsigned char *p = (const unsigned char *)blobs[b].data + first * ENTRY;
        for (Py_ssize_t e = first; e < blobs[b].len; e++, p += ENTRY) {
            int64_t t = be64(p);
            uint64_t s = le64(p + 8);
            Py_ssize_t before = map.size, id = map_id(&map, s);
            if (id == before) {
                cands[id].session = s;
                cands[id].similarity = 0.0;
                cands[id].latest = t;
            } else if (t > cands[id].latest) {
                cands[id].latest = t;
            }
            cands[id].similarity += w[b];  /* entry order, as np.bincount sums */
        }
    }
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < map.size; i++)
        if (!(has_exclude && cands[i].session == exclude)) cands[n++] = cands[i];
    map_free(&map);
    if (n > sample) {  /* the sample most recent, in no order: the next sort orders them */
        select_by_recency(cands, n, sample);
        n = sample;
    }
    if (half_life > 0 && n > 0) {
        /* similarity halves per half-life of age against the newest candidate (time keys
         * are microseconds) */
        int64_t newest = cands[0].latest;
        for (Py_ssize_t i = 1; i < n; i++)
            if (cands[i].latest > newest) newest = cands[i].latest;
        for (Py_ssize_t i = 0; i < n; i++)
            cands[i].similarity *= exp2(-((double)(newest - cands[i].latest) / 1e6) / half_life);
    }
    if (n > keep) {  /* only the kept are ordered */
        select_by_similarity(cands, n, keep);
        n = keep;
    }
    sort_by_similarity(cands, n);
    *out = cands;
    *n_out = n;
    return 0;
}

static PyObject *neighbours(PyObject *self, PyObject *args) {
    Py_buffer weights;
    PyObject *seq;
    Py_ssize_t sample, keep, cap;
    unsigned long long exclude;
    int has_exclude;
    double half_life;
    if (!PyArg_ParseTuple(args, "y*OnnKpnd", &weights, &seq, &sample, &keep, &exclude,
                          &has_exclude, &cap, &half_life))
        return NULL;
    Py_ssize_t count, entries, n;
    PyObject *held = NULL;
    Blob *blobs = blobs_of(seq, &count, &entries, &held);
    PyObject *result = NULL;
    Candidate *cands = NULL;
    if (!blobs) goto done;
    if ((Py_ssize_t)(weights.len / sizeof(double)) != count) {
        PyErr_SetString(PyExc_ValueError, "one weight per index blob");
        goto done;
    }
    if (neighbours_core(weights.buf, blobs, count, entries, sample, keep, exclude, has_exclude,
                        cap, half_life, &cands, &n) < 0)
        goto done;
    uint64_t *sessions;
    double *sims;
    if (!(result = pair_new(n, &sessions, &sims))) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        sessions[i] = cands[i].session;
        sims[i] = cands[i].similarity;
    }
done:
    PyBuffer_Release(&weights);
    Py_XDECREF(held);
    free(blobs);
    free(cands);
    return result;
}

/* --- score --------------------------------------------------------------------------------- */

PyDoc_STRVAR(score_doc,
"score(query_items, query_weights, history_blobs, similarity, sequence_weight,\n"
"      before_weight) -> (candidates u64 bytes, scores f64 bytes, latest i64 bytes),\n"
"candidates in the order first met: scoring.score's counterpart (which returns them\n"
"ascending); latest: each candidate's newest time key in the histories.");

/* Candidates and their scores over the neighbours' history blobs (sim: one similarity per
 * blob), as a (u64 bytes, f64 bytes) pair; NULL with an exception set on failure. */
static PyObject *score_core(const uint64_t *q, const double *qw, Py_ssize_t nq,
                            const Blob *blobs, Py_ssize_t count, Py_ssize_t entries,
                            const double *sim, double seq_w, double before_w) {
    PyObject *result = NULL;
    Map map = {0};
    double *total = NULL, *best = NULL;
    int64_t *latest = NULL;
    Py_ssize_t *owner = NULL;
    if (map_init(&map, entries) < 0 || !(total = malloc(sizeof(double) * (entries + 1))) ||
        !(best = malloc(sizeof(double) * (entries + 1))) ||
        !(latest = malloc(sizeof(int64_t) * (entries + 1))) ||
        !(owner = malloc(sizeof(Py_ssize_t) * (entries + 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    int anchoring = (seq_w != 0.0 || before_w != 0.0) && nq > 0;
    uint64_t bloom[4] = {0, 0, 0, 0};  /* most entries are no session item: one bit test */
    for (Py_ssize_t j = 0; j < nq; j++) bloom[(q[j] >> 6) & 3] |= 1ULL << (q[j] & 63);
    for (Py_ssize_t b = 0; b < count; b++) {
        const unsigned char *base = (const unsigned char *)blobs[b].data;
        Py_ssize_t len = blobs[b].len, anchor = -1;
        if (anchoring) {
            /* the latest position of the highest-weighted session item */
            double anchor_weight = 0.0;
            for (Py_ssize_t e = 0; e < len; e++) {
                uint64_t item = le64(base + e * ENTRY);
                if (!(bloom[(item >> 6) & 3] >> (item & 63) & 1)) continue;
                for (Py_ssize_t j = 0; j < nq; j++) {
                    if (q[j] == item) {
                        if (anchor < 0 || qw[j] >= anchor_weight) {
                            anchor = e;
                            anchor_weight = qw[j];
                        }
                        break;
                    }
                }
            }
        }
        for (Py_ssize_t e = 0; e < len; e++) {
            uint64_t item = le64(base + e * ENTRY);
            double w = sim[b];
            if (anchoring) {
                double after_term = 0.0, before_term = 0.0;
                if (anchor >= 0 && e != anchor) {
                    Py_ssize_t d = e - anchor;
                    double gap = (double)(d > 0 ? d : -d);
                    if (d > 0) after_term = seq_w / gap;
                    else before_term = before_w / gap;
                }
                w = w * (1.0 + after_term + before_term);
            }
            int64_t t = be64(base + e * ENTRY + 8);
            Py_ssize_t before = map.size, id = map_id(&map, item);
            if (id == before) {
                total[id] = 0.0;
                owner[id] = b;
                best[id] = w;
                latest[id] = t;
                continue;
            }
            if (t > latest[id]) latest[id] = t;
            if (owner[id] != b) {
                /* an item counts once per neighbour: its best occurrence, summed in
                   neighbour order (as np.bincount over the sorted pairs) */
                total[id] += best[id];
                owner[id] = b;
                best[id] = w;
            } else if (w > best[id]) {
                best[id] = w;
            }
        }
    }
    Py_ssize_t n = map.size;
    uint64_t *items;
    double *scores;
    PyObject *pair = pair_new(n, &items, &scores);
    PyObject *times = pair ? PyBytes_FromStringAndSize(NULL, n * 8) : NULL;
    if (!times) {
        Py_XDECREF(pair);
        goto done;
    }
    int64_t *out = (int64_t *)PyBytes_AS_STRING(times);
    for (Py_ssize_t i = 0; i < n; i++) {
        items[i] = map.keys[i];
        scores[i] = total[i] + best[i];
        out[i] = latest[i];
    }
    result = PyTuple_Pack(3, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), times);
    Py_DECREF(pair);
    Py_DECREF(times);
done:
    free(total);
    free(best);
    free(latest);
    free(owner);
    if (map.slots) map_free(&map);
    return result;
}

static PyObject *score(PyObject *self, PyObject *args) {
    Py_buffer qitems, qweights, sims;
    PyObject *seq;
    double seq_w, before_w;
    if (!PyArg_ParseTuple(args, "y*y*Oy*dd", &qitems, &qweights, &seq, &sims, &seq_w,
                          &before_w))
        return NULL;
    Py_ssize_t count, entries;
    PyObject *held = NULL;
    Blob *blobs = blobs_of(seq, &count, &entries, &held);
    PyObject *result = NULL;
    if (!blobs) goto done;
    Py_ssize_t nq = qitems.len / 8;
    if ((Py_ssize_t)(sims.len / sizeof(double)) != count ||
        (Py_ssize_t)(qweights.len / sizeof(double)) != nq) {
        PyErr_SetString(PyExc_ValueError, "one similarity per blob, one weight per query item");
        goto done;
    }
    result = score_core(qitems.buf, qweights.buf, nq, blobs, count, entries, sims.buf, seq_w,
                        before_w);
done:
    PyBuffer_Release(&qitems);
    PyBuffer_Release(&qweights);
    PyBuffer_Release(&sims);
    Py_XDECREF(held);
    free(blobs);
    return result;
}

/* --- rank: idf, repeats, exclusion and the top k ------------------------------------------- */
/* Index of key in the ascending keys[0..n), or -1. */
static Py_ssize_t find(const uint64_t *keys, Py_ssize_t n, uint64_t key) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && keys[lo] == key ? lo : -1;
}

#define U64_BEFORE(a, b) ((a) < (b))
DEFINE_SORT(sort_u64, uint64_t, U64_BEFORE)

/* a before b in the answer: higher score first, then the smaller hash */
static int ahead(const Scored *a, const Scored *b) {
    return a->weight > b->weight || (a->weight == b->weight && a->item < b->item);
}

PyDoc_STRVAR(rank_doc,
"rank(candidates, scores, doc_freq, sessions, idf_weight, query_items, query_weights,\n"
"     repeat_weight, exclude, k) -> (items u64 bytes, scores f64 bytes), best first:\n"
"scoring.rank's counterpart (repeat_weight 0 adds no repeats).");

/* rank's k best into best (k + 1 entries), each with its candidate's index (-1: a session
 * item no candidate equals): how many were kept, or -1 with MemoryError set. */
Py_ssize_t rank_best(const uint64_t *c, const double *s, const double *df, Py_ssize_t nc,
                     double sessions, double idf_w, const uint64_t *q, const double *qw,
                     Py_ssize_t nq, double repeat_w, const uint64_t *ex, Py_ssize_t ne,
                     Py_ssize_t k, Scored *best) {
    Py_ssize_t n = 0, kept = 0;
    if (k < 0) k = 0;
    Scored *all = malloc(sizeof(Scored) * (nc + nq + 1));
    uint64_t *sorted = NULL;  /* a long exclusion list (many hidden items), for bisection */
    if (!all || (ne > 32 && !(sorted = malloc(sizeof(uint64_t) * ne)))) {
        free(all);
        PyErr_NoMemory();
        return -1;
    }
    double top = 0.0, n_sessions = sessions > 1.0 ? sessions : 1.0;
    for (Py_ssize_t i = 0; i < nc; i++) {
        double v = s[i];
        if (idf_w != 0.0) {
            double idf = log_1p(n_sessions / (df[i] > 1.0 ? df[i] : 1.0));
            v = v * (idf_w == 1.0 ? idf : pow(idf, idf_w));  /* pow(x, 1) is x exactly */
        }
        all[n].item = c[i];
        all[n].at = i;
        all[n++].weight = v;
        if (i == 0 || v > top) top = v;
    }
    if (repeat_w != 0.0 && nq > 0) {
        /* scale the neighbourhood to a best of 1, then add each session item's weight */
        if (top > 0)
            for (Py_ssize_t i = 0; i < n; i++) all[i].weight = all[i].weight / top;
        for (Py_ssize_t j = 0; j < nq; j++) {
            Py_ssize_t at = -1;
            for (Py_ssize_t i = 0; i < nc && at < 0; i++) if (c[i] == q[j]) at = i;
            if (at >= 0) {
                all[at].weight = all[at].weight + repeat_w * qw[j];
            } else {
                all[n].item = q[j];
                all[n].at = -1;
                all[n++].weight = repeat_w * qw[j];
            }
        }
    }
    if (sorted) {
        memcpy(sorted, ex, sizeof(uint64_t) * ne);
        sort_u64(sorted, ne);
    }
    /* the k best by insertion into a short sorted list: most candidates fail the first test */
    for (Py_ssize_t i = 0; i < n && k > 0; i++) {
        Scored x = all[i];
        if (!(x.weight > 0) || (kept == k && !ahead(&x, &best[kept - 1]))) continue;
        int excluded = 0;
        if (sorted) excluded = find(sorted, ne, x.item) >= 0;
        else for (Py_ssize_t e = 0; e < ne && !excluded; e++) excluded = ex[e] == x.item;
        if (excluded) continue;
        Py_ssize_t at = kept < k ? kept++ : k - 1;
        while (at > 0 && ahead(&x, &best[at - 1])) {
            best[at] = best[at - 1];
            at--;
        }
        best[at] = x;
    }
    free(all);
    free(sorted);
    return kept;
}

static PyObject *rank(PyObject *self, PyObject *args) {
    Py_buffer cands, scores, dfs, qitems, qweights, excl;
    double sessions, idf_w, repeat_w;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "y*y*y*ddy*y*dy*n", &cands, &scores, &dfs, &sessions, &idf_w,
                          &qitems, &qweights, &repeat_w, &excl, &k))
        return NULL;
    PyObject *result = NULL;
    if (k < 0) k = 0;
    Scored *best = malloc(sizeof(Scored) * (k + 1));
    if (!best) {
        PyErr_NoMemory();
        goto done;
    }
    if (scores.len != cands.len || (idf_w != 0.0 && dfs.len != cands.len)) {
        PyErr_SetString(PyExc_ValueError, "one score and one frequency per candidate");
        goto done;
    }
    Py_ssize_t kept = rank_best(cands.buf, scores.buf, dfs.buf, cands.len / 8, sessions, idf_w,
                                qitems.buf, qweights.buf, qitems.len / 8, repeat_w, excl.buf,
                                excl.len / 8, k, best);
    uint64_t *items;
    double *values;
    if (kept < 0 || !(result = pair_new(kept, &items, &values))) goto done;
    for (Py_ssize_t i = 0; i < kept; i++) {
        items[i] = best[i].item;
        values[i] = best[i].weight;
    }
done:
    release_buffers((Py_buffer *[]){&cands, &scores, &dfs, &qitems, &qweights, &excl}, 6);
    free(best);
    return result;
}

/* --- query ------------------------------------------------------------------------------------ */
typedef struct { double time; Py_ssize_t at; } Moment;
#define EARLIER(a, b) ((a).time < (b).time || ((a).time == (b).time && (a).at < (b).at))
DEFINE_SORT(sort_by_time, Moment, EARLIER)

/* The doubles of a sequence of numbers, or -1 with an exception set. */
static int doubles_of(PyObject *seq, double *out, Py_ssize_t n, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return -1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s: one per item", what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

PyDoc_STRVAR(query_doc,
"query(hashes, timestamps, ratings, query_items, position_decay)\n"
"-> (items u64 bytes, weights f64 bytes, seen u64 bytes): scoring.build_query's counterpart.");

static PyObject *query(PyObject *self, PyObject *args) {
    PyObject *hashes, *times_seq, *ratings_seq, *result = NULL, *fast;
    Py_ssize_t keep;
    double decay;
    if (!PyArg_ParseTuple(args, "OOOnd", &hashes, &times_seq, &ratings_seq, &keep, &decay))
        return NULL;
    if (!(fast = PySequence_Fast(hashes, "hashes must be a sequence of 8-byte hashes")))
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), m = 0;
    uint64_t *seen = malloc(sizeof(uint64_t) * (n + 1));
    uint64_t *items = malloc(sizeof(uint64_t) * (n + 1));
    double *times = malloc(sizeof(double) * (n + 1)), *rates = malloc(sizeof(double) * (n + 1));
    double *weights = malloc(sizeof(double) * (n + 1));
    Moment *order = malloc(sizeof(Moment) * (n + 1));
    if (!seen || !items || !times || !rates || !weights || !order) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(h) || PyBytes_GET_SIZE(h) != 8) {
            PyErr_SetString(PyExc_TypeError, "hashes must be 8-byte bytes");
            goto done;
        }
        seen[i] = le64((const unsigned char *)PyBytes_AS_STRING(h));
    }
    if (doubles_of(times_seq, times, n, "timestamps") < 0 ||
        doubles_of(ratings_seq, rates, n, "ratings") < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        order[i].time = times[i];
        order[i].at = i;
    }
    sort_by_time(order, n);  /* stable: equal times keep their order */
    Py_ssize_t first = keep > 0 && keep < n ? n - keep : 0, count = n - first;
    double top = 0.0;
    for (Py_ssize_t i = 0; i < count; i++) {
        double r = rates[order[first + i].at];
        r = r > 0.0 ? r : 0.0;  /* np.clip(.., 0, None) */
        weights[i] = r;
        if (i == 0 || r > top) top = r;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        double r = top > 0 ? weights[i] / top : weights[i];
        double w = r * pow(1.0 + (double)(count - 1 - i), -decay);
        if (w > 0) {
            items[m] = seen[order[first + i].at];
            weights[m++] = w;
        }
    }
    result = Py_BuildValue("(y#y#y#)", (const char *)items, m * 8, (const char *)weights, m * 8,
                           (const char *)seen, n * 8);
done:
    Py_DECREF(fast);
    free(seen);
    free(items);
    free(times);
    free(rates);
    free(weights);
    free(order);
    return result;
}

/* --- the answer's scores --------------------------------------------------------------------- */
PyDoc_STRVAR(relative_doc,
"relative(scores) -> list[float]: each score over the first, rounded to 6 decimals as\n"
"numpy's round does (rint of the value times 1e6, over 1e6).");

static PyObject *relative(PyObject *self, PyObject *args) {
    Py_buffer scores;
    if (!PyArg_ParseTuple(args, "y*", &scores)) return NULL;
    Py_ssize_t n = scores.len / sizeof(double);
    const double *s = scores.buf;
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *value = PyFloat_FromDouble(nearbyint(s[i] / s[0] * 1e6) / 1e6);
        if (!value) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, value);
    }
    PyBuffer_Release(&scores);
    return out;
}

/* --- neighbours and score over the read cache ---------------------------------------------- */
PyDoc_STRVAR(candidates_doc,
"candidates(query_items, query_weights, index_keys, index_slots, history_keys, history_slots,\n"
"           sample_sessions, neighbours, exclude, has_exclude, cap, half_life,\n"
"           sequence_weight, before_weight) -> (candidates u64 bytes, scores f64 bytes,\n"
"           latest i64 bytes, neighbours found), or\n"
"None when an index or a history is not in its object table: neighbours() then score(),\n"
"reading the blobs straight from the read cache's tables (see objects_get).");

/* The bytes under key in an object table: 1 and *out set, or 0 (absent, or not bytes). */
static int table_blob(const uint64_t *k, Py_ssize_t mask, PyObject *slots, uint64_t key,
                      Blob *out) {
    Py_ssize_t at = objects_at(k, mask, key);
    if (at < 0) return 0;
    PyObject *value = PyList_GET_ITEM(slots, at);
    if (!PyBytes_Check(value)) return 0;
    out->data = PyBytes_AS_STRING(value);
    out->len = PyBytes_GET_SIZE(value) / ENTRY;
    return 1;
}

/* One call instead of four Python steps and their lists and arrays: on a cache that holds
 * every blob a request needs, the steps between the kernels cost more than the kernels
 * (each touching code and objects a busy server has long evicted from the CPU's caches). No
 * Python code runs during the call, so the tables' objects stay alive without references. */
static PyObject *candidates(PyObject *self, PyObject *args) {
    Py_buffer qitems, qweights, ikeys, hkeys;
    PyObject *islots, *hslots;
    Py_ssize_t sample, keep, cap;
    unsigned long long exclude;
    int has_exclude;
    double half_life, seq_w, before_w;
    if (!PyArg_ParseTuple(args, "y*y*y*O!y*O!nnKpnddd", &qitems, &qweights, &ikeys,
                          &PyList_Type, &islots, &hkeys, &PyList_Type, &hslots, &sample, &keep,
                          &exclude, &has_exclude, &cap, &half_life, &seq_w, &before_w))
        return NULL;
    PyObject *result = NULL, *pair = NULL;
    Blob *indexes = NULL, *histories = NULL;
    Candidate *cands = NULL;
    double *sims = NULL;
    Py_ssize_t imask, hmask, n = 0, entries = 0, nq = qitems.len / 8;
    if (objects_args(&ikeys, islots, &imask) < 0 || objects_args(&hkeys, hslots, &hmask) < 0)
        goto done;
    if ((Py_ssize_t)(qweights.len / sizeof(double)) != nq) {
        PyErr_SetString(PyExc_ValueError, "one weight per query item");
        goto done;
    }
    const uint64_t *q = qitems.buf;
    if (!(indexes = malloc(sizeof(Blob) * (nq ? nq : 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nq; i++) {
        if (!table_blob(ikeys.buf, imask, islots, q[i], &indexes[i])) goto missing;
        entries += indexes[i].len;
    }
    if (neighbours_core(qweights.buf, indexes, nq, entries, sample, keep, exclude, has_exclude,
                        cap, half_life, &cands, &n) < 0)
        goto done;
    if (!(histories = malloc(sizeof(Blob) * (n ? n : 1))) ||
        !(sims = malloc(sizeof(double) * (n ? n : 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    entries = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!table_blob(hkeys.buf, hmask, hslots, cands[i].session, &histories[i])) goto missing;
        sims[i] = cands[i].similarity;
        entries += histories[i].len;
    }
    if (!(pair = score_core(q, qweights.buf, nq, histories, n, entries, sims, seq_w, before_w)))
        goto done;
    result = Py_BuildValue("OOOn", PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1),
                           PyTuple_GET_ITEM(pair, 2), n);
    goto done;
missing:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&qitems);
    PyBuffer_Release(&qweights);
    PyBuffer_Release(&ikeys);
    PyBuffer_Release(&hkeys);
    Py_XDECREF(pair);
    free(indexes);
    free(histories);
    free(cands);
    free(sims);
    return result;
}

PyMethodDef kernel_scoring_methods[] = {
    {"query", query, METH_VARARGS, query_doc},
    {"neighbours", neighbours, METH_VARARGS, neighbours_doc},
    {"score", score, METH_VARARGS, score_doc},
    {"candidates", candidates, METH_VARARGS, candidates_doc},
    {"rank", rank, METH_VARARGS, rank_doc},
    {"relative", relative, METH_VARARGS, relative_doc},
    {NULL, NULL, 0, NULL},
};
