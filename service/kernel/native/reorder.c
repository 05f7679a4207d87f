/* The learned order of the top answers (service/core/reorder.py): each answer's features and
 * the answers ordered by their weights, in one pass instead of thirty-odd array calls, and
 * gather (a value per wanted key). Pure reference: service/kernel/reference_reorder.py, whose
 * constants these are (tests/test_architecture.py holds them equal). */
#include "kernel.h"
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define WIDTH 9
#define WEIGHED 8
#define LENGTH_CAP 10
#define SCORE_FLOOR 1e-9
#define AGE_CAP 365.0
#define DAY_KEYS 86400000000.0

/* --- a table u64 -> i64 (the first value of each key) --------------------------------------- */
typedef struct {
    uint64_t *keys;
    int64_t *values;
    unsigned char *used;
    Py_ssize_t mask;
    int on_heap;
} Table;

/* slots a table may take from its caller's stack: the order's answers (DEPTH, within
 * STACK_ANSWERS) at its spread, so a request's table costs no allocation */
#define STACK_SLOTS 1024
typedef struct {
    uint64_t keys[STACK_SLOTS];
    int64_t values[STACK_SLOTS];
    unsigned char used[STACK_SLOTS];
} TableSpace;

/* space (NULL: none) the table's slots if they fit; owner (NULL: not wanted): each key's
 * value in the table, its first equal's */
static int table_fill(Table *t, TableSpace *space, const uint64_t *keys, const int64_t *values,
                      Py_ssize_t n, Py_ssize_t spread, int64_t *owner) {
    Py_ssize_t size = 16;
    while (size < spread * n) size <<= 1;
    t->mask = size - 1;
    if (space && size <= STACK_SLOTS) {
        t->keys = space->keys;
        t->values = space->values;
        t->used = memset(space->used, 0, size);
    } else {
        t->on_heap = 1;
        t->keys = malloc(sizeof(uint64_t) * size);
        t->values = malloc(sizeof(int64_t) * size);
        t->used = calloc(size, 1);
        if (!t->keys || !t->values || !t->used) return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = (Py_ssize_t)mix(keys[i]) & t->mask;
        while (t->used[at] && t->keys[at] != keys[i]) at = (at + 1) & t->mask;
        if (!t->used[at]) {
            t->used[at] = 1;
            t->keys[at] = keys[i];
            t->values[at] = values[i];
        }
        if (owner) owner[i] = t->values[at];
    }
    return 0;
}

static int64_t table_get(const Table *t, uint64_t key) {
    Py_ssize_t at = (Py_ssize_t)mix(key) & t->mask;
    while (t->used[at]) {
        if (t->keys[at] == key) return t->values[at];
        at = (at + 1) & t->mask;
    }
    return 0;
}

static void table_free(Table *t) {
    if (!t->on_heap) return;
    free(t->keys);
    free(t->values);
    free(t->used);
}

/* how many distinct keys, counting no further than LENGTH_CAP: a table on the stack, at most
 * half full, since at most LENGTH_CAP keys go in */
#define DISTINCT_SLOTS 32
_Static_assert(DISTINCT_SLOTS >= 2 * LENGTH_CAP && (DISTINCT_SLOTS & (DISTINCT_SLOTS - 1)) == 0,
               "a power of two, at most half full");
static Py_ssize_t count_distinct(const uint64_t *keys, Py_ssize_t n) {
    uint64_t slots[DISTINCT_SLOTS];
    unsigned char used[DISTINCT_SLOTS] = {0};
    Py_ssize_t distinct = 0;
    for (Py_ssize_t i = 0; distinct < LENGTH_CAP && i < n; i++) {
        Py_ssize_t at = (Py_ssize_t)mix(keys[i]) & (DISTINCT_SLOTS - 1);
        while (used[at] && slots[at] != keys[i]) at = (at + 1) & (DISTINCT_SLOTS - 1);
        if (!used[at]) {
            used[at] = 1;
            slots[at] = keys[i];
            distinct++;
        }
    }
    return distinct;
}

PyDoc_STRVAR(gather_doc,
"gather(keys u64, values i64, wanted u64) -> i64 bytes: the value of each wanted key (the\n"
"first of its equals in keys), 0 for a key not in keys.");

static PyObject *gather(PyObject *self, PyObject *args) {
    Py_buffer keys, values, wanted;
    if (!PyArg_ParseTuple(args, "y*y*y*", &keys, &values, &wanted)) return NULL;
    PyObject *result = NULL;
    Table table = {0};
    Py_ssize_t n = keys.len / 8, m = wanted.len / 8;
    if (values.len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "one value per key");
        goto done;
    }
    if (table_fill(&table, NULL, keys.buf, values.buf, n, 2, NULL) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if ((result = PyBytes_FromStringAndSize(NULL, m * 8))) {
        int64_t *out = (int64_t *)PyBytes_AS_STRING(result);
        const uint64_t *w = wanted.buf;
        for (Py_ssize_t i = 0; i < m; i++) out[i] = table_get(&table, w[i]);
    }
done:
    table_free(&table);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&values);
    PyBuffer_Release(&wanted);
    return result;
}

/* --- reorder -------------------------------------------------------------------------------- */
typedef struct { double value; Py_ssize_t at; } Valued;

/* higher value first; ties in the given order (the reference's stable argsort) */
#define VALUED_BEFORE(a, b) ((a).value > (b).value || ((a).value == (b).value && (a).at < (b).at))
DEFINE_SORT(sort_valued, Valued, VALUED_BEFORE)

/* The kept first of order[0..n) in VALUED_BEFORE's order, moved to its front: a request keeps
 * twenty of its hundred answers, and placing each answer among the twenty best so far costs
 * less than ordering all hundred (the rest are left in no order). */
static void first_valued(Valued *order, Py_ssize_t n, Py_ssize_t kept) {
    if (kept * 4 >= n) {
        sort_valued(order, n);
        return;
    }
    sort_valued(order, kept);
    for (Py_ssize_t i = kept; i < n; i++) {
        if (!VALUED_BEFORE(order[i], order[kept - 1])) continue;
        Valued x = order[i];
        order[i] = order[kept - 1];
        Py_ssize_t j = kept - 1;
        for (; j > 0 && VALUED_BEFORE(x, order[j - 1]); j--) order[j] = order[j - 1];
        order[j] = x;
    }
}

/* answers whose buffers a call keeps on its stack (the order's DEPTH is within it): a
 * request allocates nothing for them */
#define STACK_ANSWERS 128
/* the answers' table: sparse, since nearly every key looked up in it is not an answer */
#define ANSWERS_SPREAD 8
_Static_assert(STACK_SLOTS >= ANSWERS_SPREAD * STACK_ANSWERS, "the answers' table fits");

/* sums[i] + left[i] * weight (right NULL) or + left[i] * right[i] * weight, for each of n
 * answers: two at a time where the processor has SSE2 (every x86-64 does), which rounds each
 * lane as the scalar operations do, so the sums are the reference's to the last bit. */
static void add_weighed(double *sums, const double *left, const double *right, double weight,
                        Py_ssize_t n) {
    Py_ssize_t i = 0;
#ifdef __SSE2__
    const __m128d w = _mm_set1_pd(weight);
    for (; i + 2 <= n; i += 2) {
        __m128d term = _mm_loadu_pd(left + i);
        if (right) term = _mm_mul_pd(term, _mm_loadu_pd(right + i));
        _mm_storeu_pd(sums + i, _mm_add_pd(_mm_loadu_pd(sums + i), _mm_mul_pd(term, w)));
    }
#endif
    for (; i < n; i++) sums[i] = sums[i] + (right ? left[i] * right[i] : left[i]) * weight;
}

/* One call's arguments, as reorder's docstring names them (pairs: two column indexes each). */
typedef struct {
    const uint64_t *best;
    const double *values, *df;
    Py_ssize_t n;
    double sessions;
    const uint64_t *q;
    const double *qw;
    Py_ssize_t nq;
    const uint64_t *seen;
    Py_ssize_t nseen;
    const uint64_t *found;
    const int64_t *latest;
    Py_ssize_t nf;
    const double *seq;
    Py_ssize_t ns;
    const double *w;
    const int64_t *pairs;
    Py_ssize_t np_;
    Py_ssize_t depth, k;
} Ordering;

/* How many answers an ordering gives: its first min(k, depth) ordered, then the rest up to k
 * in the served order. */
static Py_ssize_t ordering_size(Py_ssize_t n, Py_ssize_t depth, Py_ssize_t k) {
    Py_ssize_t head = n < depth ? n : (depth > 0 ? depth : 0);
    if (head == 0 || k <= 0) return 0;
    Py_ssize_t kept = k < head ? k : head;
    Py_ssize_t tail = head < n && k > head ? (k < n ? k : n) - head : 0;
    return kept + tail;
}

/* The weights' and pairs' sizes, as both entry points check them: 0, or -1 with ValueError. */
static int ordering_checks(Py_ssize_t weights_len, const Py_buffer *pairs) {
    Py_ssize_t np_ = pairs->len / 16;
    const int64_t *both = pairs->buf;
    int pairs_ok = pairs->len % 16 == 0;
    for (Py_ssize_t p = 0; pairs_ok && p < 2 * np_; p++)
        pairs_ok = both[p] >= 0 && both[p] < WIDTH;
    if (weights_len / 8 != WEIGHED + np_ || !pairs_ok) {
        PyErr_Format(PyExc_ValueError,
                     "one score and one frequency per answer, %d weights and one per pair "
                     "of features", WEIGHED);
        return -1;
    }
    return 0;
}

/* The ordering's ordering_size answers into items and scores: 0, or -1 with MemoryError. */
static int ordering_into(const Ordering *o, uint64_t *items, double *scores) {
    int status = -1;
    Table table = {0};
    TableSpace space;
    Valued order_on_stack[STACK_ANSWERS], *order = order_on_stack;
    int64_t touched_on_stack[STACK_ANSWERS], first_on_stack[STACK_ANSWERS];
    int64_t owner_on_stack[STACK_ANSWERS], *owner = owner_on_stack;
    int64_t *touched = touched_on_stack, *first = first_on_stack;
    double asked_on_stack[STACK_ANSWERS], *asked = asked_on_stack;
    unsigned char in_session_on_stack[STACK_ANSWERS], *in_session = in_session_on_stack;
    double columns_on_stack[WIDTH * STACK_ANSWERS], *columns = columns_on_stack;
    double sums_on_stack[STACK_ANSWERS], *sums = sums_on_stack;
    Py_ssize_t n = o->n, nq = o->nq, nf = o->nf, nseen = o->nseen, ns = o->ns, np_ = o->np_;
    Py_ssize_t depth = o->depth, k = o->k;
    const int64_t *both = o->pairs;
    Py_ssize_t head = n < depth ? n : (depth > 0 ? depth : 0);
    if (head == 0 || k <= 0) return 0;
    const uint64_t *a = o->best, *q = o->q;
    const double *v = o->values, *d = o->df, *qw = o->qw, *w = o->w;
    const int64_t *latest = o->latest;
    const double *seq = o->seq;
    if (head > STACK_ANSWERS &&
        (!(order = malloc(sizeof(Valued) * head)) ||
         !(touched = malloc(sizeof(int64_t) * head)) ||
         !(first = malloc(sizeof(int64_t) * head)) || !(in_session = malloc(head)) ||
         !(owner = malloc(sizeof(int64_t) * head)) || !(asked = malloc(sizeof(double) * head)) ||
         !(columns = malloc(sizeof(double) * WIDTH * head)) ||
         !(sums = malloc(sizeof(double) * head)))) {
        PyErr_NoMemory();
        goto done;
    }
    /* each answer's time in the candidates (the first of its equals there), by one pass over
     * them against a table of the answers: the answers are a hundred, the candidates often
     * thousands, and a table of those would be filled afresh for every request; a sparse
     * one, since nearly every candidate is not an answer and should see an empty slot first */
    for (Py_ssize_t i = 0; i < head; i++) {
        first[i] = i + 1;
        touched[i] = -1;  /* not among the candidates */
        in_session[i] = 0;
        asked[i] = NAN;  /* not in the query */
    }
    if (table_fill(&table, &space, a, first, head, ANSWERS_SPREAD, owner) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    const uint64_t *found = o->found;
    int64_t newest = 0;
    for (Py_ssize_t i = 0; i < nf; i++) {
        if (i == 0 || latest[i] > newest) newest = latest[i];
        int64_t at = table_get(&table, found[i]);
        if (at && touched[at - 1] < 0) touched[at - 1] = latest[i];
    }
    /* which answers the session holds, by one pass over its items (at most the request's
     * max_interactions) against the same table */
    const uint64_t *session = o->seen;
    for (Py_ssize_t i = 0; i < nseen; i++) {
        int64_t at = table_get(&table, session[i]);
        if (at) in_session[at - 1] = 1;
    }
    /* each answer's weight in the query: its first equal's there, by one pass over the
     * query's items (at most the request's query_items) against the same table */
    for (Py_ssize_t j = 0; j < nq; j++) {
        int64_t at = table_get(&table, q[j]);
        if (at && isnan(asked[at - 1])) asked[at - 1] = qw[j];
    }
    /* the session's length: its distinct items (a holdout's sessions repeat some), at most
     * LENGTH_CAP */
    Py_ssize_t distinct = count_distinct(session, nseen);
    double length = log(distinct > 1 ? (double)distinct : 1.0);
    double top = v[0] > 0 ? v[0] : 1.0, many = o->sessions > 1.0 ? o->sessions : 1.0;
    const double oldest = log_1p(AGE_CAP);  /* an answer no neighbour touched */
    /* each answer's features, one column per feature: the sums over them below run along a
     * column, answer after answer, where the compiler can take two answers at a time (each
     * answer's sum still added left to right) */
    double *f[WIDTH];
    for (int j = 0; j < WIDTH; j++) f[j] = columns + j * head;
    for (Py_ssize_t i = 0; i < head; i++) {
        double ratio = v[i] / top, held = d[i] > 0 ? d[i] : 0.0;
        f[0][i] = log(ratio > SCORE_FLOOR ? ratio : SCORE_FLOOR);
        f[1][i] = log_1p(many / (held > 1.0 ? held : 1.0));
        f[2][i] = log_1p(held);
        int64_t own = owner[i] - 1;  /* an answer's equals share its entry */
        f[3][i] = isnan(asked[own]) ? 0.0 : asked[own];
        f[4][i] = nq && a[i] == q[nq - 1] ? 1.0 : 0.0;
        int64_t t = touched[own];
        if (t > 0) {
            double age = (double)(newest - t) / DAY_KEYS;
            f[5][i] = log_1p(age < 0.0 ? 0.0 : (age > AGE_CAP ? AGE_CAP : age));
        } else {
            f[5][i] = oldest;
        }
        f[6][i] = i < ns ? seq[i] : 0.0;
        f[7][i] = in_session[own] ? 1.0 : 0.0;
        f[8][i] = length;
    }
    /* each answer's value, left to right as the reference sums: the first weight's product,
     * then each weight's, then each pair's (a weight of 0 adds 0 and is skipped) */
    for (Py_ssize_t i = 0; i < head; i++) sums[i] = f[0][i] * w[0];
    for (int j = 1; j < WEIGHED; j++)
        if (w[j] != 0.0) add_weighed(sums, f[j], NULL, w[j], head);
    for (Py_ssize_t p = 0; p < np_; p++)
        if (w[WEIGHED + p] != 0.0)
            add_weighed(sums, f[both[2 * p]], f[both[2 * p + 1]], w[WEIGHED + p], head);
    double lowest = sums[0];
    for (Py_ssize_t i = 0; i < head; i++) {
        order[i].value = sums[i];
        order[i].at = i;
        if (sums[i] < lowest) lowest = sums[i];
    }
    Py_ssize_t kept = k < head ? k : head;
    first_valued(order, head, kept);
    Py_ssize_t tail = head < n && k > head ? (k < n ? k : n) - head : 0;
    for (Py_ssize_t i = 0; i < kept; i++) {
        items[i] = a[order[i].at];
        scores[i] = exp(order[i].value - order[0].value);
    }
    double last = exp(lowest - order[0].value);
    for (Py_ssize_t i = 0; i < tail; i++) {
        items[kept + i] = a[head + i];
        scores[kept + i] = v[head - 1] > 0 ? v[head + i] / v[head - 1] * last : 0.0;
    }
    status = 0;
done:
    table_free(&table);
    if (order != order_on_stack) free(order);
    if (touched != touched_on_stack) free(touched);
    if (first != first_on_stack) free(first);
    if (in_session != in_session_on_stack) free(in_session);
    if (owner != owner_on_stack) free(owner);
    if (asked != asked_on_stack) free(asked);
    if (columns != columns_on_stack) free(columns);
    if (sums != sums_on_stack) free(sums);
    return status;
}

/* The ordering's answers as (items u64 bytes, scores f64 bytes), or NULL with an exception. */
static PyObject *ordering_pair(const Ordering *o) {
    Py_ssize_t out_n = ordering_size(o->n, o->depth, o->k);
    PyObject *ib = PyBytes_FromStringAndSize(NULL, out_n * 8);
    PyObject *sb = PyBytes_FromStringAndSize(NULL, out_n * 8);
    PyObject *result = NULL;
    if (ib && sb && ordering_into(o, (uint64_t *)PyBytes_AS_STRING(ib),
                                  (double *)PyBytes_AS_STRING(sb)) == 0)
        result = PyTuple_Pack(2, ib, sb);
    Py_XDECREF(ib);
    Py_XDECREF(sb);
    return result;
}

PyDoc_STRVAR(reorder_doc,
"reorder(best, values, doc_freq, sessions, query_items, query_weights, seen, found_items,\n"
"        found_latest, sequence, weights, pairs, depth, k) -> (items u64 bytes, scores f64\n"
"        bytes):\n"
"reference_reorder.reorder's counterpart.");

static PyObject *reorder(PyObject *self, PyObject *args) {
    Py_buffer best, values, df, qitems, qweights, seen, fitems, flatest, sequence, weights, pairs;
    double sessions;
    Py_ssize_t depth, k;
    if (!PyArg_ParseTuple(args, "y*y*y*dy*y*y*y*y*y*y*y*nn", &best, &values, &df, &sessions,
                          &qitems, &qweights, &seen, &fitems, &flatest, &sequence, &weights,
                          &pairs, &depth, &k))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = best.len / 8;
    if (ordering_checks(weights.len, &pairs) < 0) goto done;
    if (values.len / 8 != n || df.len / 8 != n || qweights.len / 8 != qitems.len / 8 ||
        flatest.len / 8 != fitems.len / 8) {
        PyErr_Format(PyExc_ValueError,
                     "one score and one frequency per answer, %d weights and one per pair "
                     "of features", WEIGHED);
        goto done;
    }
    Ordering o = {best.buf, values.buf, df.buf, n, sessions, qitems.buf, qweights.buf,
                  qitems.len / 8, seen.buf, seen.len / 8, fitems.buf, flatest.buf,
                  fitems.len / 8, sequence.buf, sequence.len / 8, weights.buf, pairs.buf,
                  pairs.len / 16, depth, k};
    result = ordering_pair(&o);
done:
    release_buffers((Py_buffer *[]){&best, &values, &df, &qitems, &qweights, &seen, &fitems,
                                    &flatest, &sequence, &weights, &pairs}, 11);
    return result;
}

PyDoc_STRVAR(ranked_doc,
"ranked(candidates, scores, doc_freq, sessions, idf_weight, query_items, query_weights,\n"
"       repeat_weight, exclude, table_keys, table_values, seen, found_items, found_latest,\n"
"       model_table, model_directory, model_codes, model_inputs, model_last,\n"
"       model_positions, weights, pairs, depth, k) -> (items u64 bytes, scores f64 bytes)\n"
"       or None: reference.ranked's counterpart.");

/* rank, each answer's frequency, the sequence model's values and reorder in one call: a
 * request's answers and their values stay in C between the steps, where handing them to
 * Python and back cost each step about what its arithmetic did. */
static PyObject *ranked(PyObject *self, PyObject *args) {
    Py_buffer cands, scores, dfs, qitems, qweights, excl, tkeys, tvalues, seen, fitems, flatest;
    Py_buffer weights, pairs;
    SequenceModel model;
    double sessions, idf_w, repeat_w;
    Py_ssize_t depth, k;
    if (!PyArg_ParseTuple(args, "y*y*y*ddy*y*dy*y*y*y*y*y*y*y*y*y*y*y*y*y*nn", &cands, &scores,
                          &dfs, &sessions, &idf_w, &qitems, &qweights, &repeat_w, &excl,
                          &tkeys, &tvalues, &seen, &fitems, &flatest, &model.table,
                          &model.directory, &model.codes, &model.inputs, &model.last,
                          &model.positions, &weights, &pairs, &depth, &k))
        return NULL;
    PyObject *result = NULL;
    Scored *best = NULL;
    uint64_t *items = NULL;
    double *values = NULL, *freq = NULL, *seq = NULL;
    Py_ssize_t nc = cands.len / 8, nt = tkeys.len / 8;
    int has_df = dfs.len == cands.len;
    if (scores.len != cands.len || (idf_w != 0.0 && !has_df) ||
        qweights.len / 8 != qitems.len / 8 || flatest.len / 8 != fitems.len / 8) {
        PyErr_SetString(PyExc_ValueError, "one score and one frequency per candidate");
        goto done;
    }
    if (nt == 0 || (nt & (nt - 1)) || tvalues.len != tkeys.len) {
        PyErr_SetString(PyExc_ValueError, "a table is two arrays of the same power-of-2 size");
        goto done;
    }
    if (ordering_checks(weights.len, &pairs) < 0) goto done;
    if (k < 0) k = 0;
    Py_ssize_t wanted = k > depth ? k : (depth > 0 ? depth : 0);  /* what the order reads, or
                                                                * k past it */
    if (!(best = malloc(sizeof(Scored) * (wanted + 1))) ||
        !(items = malloc(sizeof(uint64_t) * (wanted + 1))) ||
        !(values = malloc(sizeof(double) * (wanted + 1))) ||
        !(freq = malloc(sizeof(double) * (wanted + 1))) ||
        !(seq = malloc(sizeof(double) * (wanted + 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n = rank_best(cands.buf, scores.buf, dfs.buf, nc, sessions, idf_w, qitems.buf,
                             qweights.buf, qitems.len / 8, repeat_w, excl.buf, excl.len / 8,
                             wanted, best);
    if (n < 0) goto done;
    /* each answer's frequency: its candidate's, else the table's; None when the table has
     * none (the caller reads it first) */
    const double *df = dfs.buf;
    const uint64_t *tk = tkeys.buf;
    const double *tv = tvalues.buf;
    int absent = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        items[i] = best[i].item;
        values[i] = best[i].weight;
        freq[i] = has_df && best[i].at >= 0 ? df[best[i].at]
                                            : frequency_of(tk, tv, nt - 1, best[i].item, &absent);
    }
    if (absent) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    Py_ssize_t ns = 0;
    if (model.table.len) {
        ns = n < depth ? n : (depth > 0 ? depth : 0);
        if (sequence_into(&model, qitems.buf, qitems.len / 8, items, ns, seq) < 0) goto done;
    }
    Ordering o = {items, values, freq, n, sessions, qitems.buf, qweights.buf, qitems.len / 8,
                  seen.buf, seen.len / 8, fitems.buf, flatest.buf, fitems.len / 8, seq, ns,
                  weights.buf, pairs.buf, pairs.len / 16, depth, k};
    result = ordering_pair(&o);
done:
    free(best);
    free(items);
    free(values);
    free(freq);
    free(seq);
    release_buffers((Py_buffer *[]){&cands, &scores, &dfs, &qitems, &qweights, &excl, &tkeys,
                                    &tvalues, &seen, &fitems, &flatest, &weights, &pairs}, 13);
    sequence_model_release(&model);
    return result;
}

PyMethodDef kernel_reorder_methods[] = {
    {"gather", gather, METH_VARARGS, gather_doc},
    {"reorder", reorder, METH_VARARGS, reorder_doc},
    {"ranked", ranked, METH_VARARGS, ranked_doc},
    {NULL, NULL, 0, NULL},
};
