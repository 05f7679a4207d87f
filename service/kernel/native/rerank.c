/* A POST /rerank's order and rows: where each given item stands (the session's ranked items,
 * then those other sessions hold, then the rest) and the answer's rows, in one pass each
 * instead of a dozen array operations and a row loop per request. Pure reference:
 * service/kernel/reference_rerank.py. */
#include "kernel.h"

typedef struct {
    double held;
    int64_t at;
} held_at;

/* most held first; ties in their given order (the reference's stable argsort): a total order
 * on distinct places, so the unstable sort gives the stable one's result */
#define HELD_BEFORE(x, y) ((x).held > (y).held || ((x).held == (y).held && (x).at < (y).at))
DEFINE_SORT(sort_by_held, held_at, HELD_BEFORE)

PyDoc_STRVAR(arrange_doc,
"arrange(positions, scores, keep, held, popular_share) -> (index i64 bytes, scores f64 bytes,\n"
"scored, popular): the order of a given list; see service/kernel/reference_rerank.py.");

static PyObject *arrange(PyObject *self, PyObject *args) {
    Py_buffer positions, scores, keep, held;
    double share;
    if (!PyArg_ParseTuple(args, "y*y*y*y*d", &positions, &scores, &keep, &held, &share))
        return NULL;
    PyObject *result = NULL, *index_bytes = NULL, *score_bytes = NULL;
    Py_ssize_t ranked = positions.len / 8, n = held.len / 8;
    unsigned char *taken = NULL;
    held_at *rest = NULL;
    if (keep.len != n + 1 || scores.len / 8 != ranked) {
        PyErr_SetString(PyExc_ValueError,
                        "keep has one entry per item and one more; a score per position");
        goto done;
    }
    const int64_t *at = positions.buf;
    const double *best = scores.buf, *holds = held.buf;
    const unsigned char *keeps = keep.buf;
    for (Py_ssize_t i = 0; i < ranked; i++) {
        if (at[i] < 0 || at[i] > n) {
            PyErr_SetString(PyExc_ValueError, "a position outside the list");
            goto done;
        }
    }
    if (!(index_bytes = PyBytes_FromStringAndSize(NULL, 8 * n)) ||
        !(score_bytes = PyBytes_FromStringAndSize(NULL, 8 * n)))
        goto done;
    int64_t *index = (int64_t *)PyBytes_AS_STRING(index_bytes);
    double *values = (double *)PyBytes_AS_STRING(score_bytes);
    taken = calloc((size_t)n + 1, 1);
    rest = malloc(sizeof(held_at) * (size_t)(n > 0 ? n : 1));
    if (!taken || !rest) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t m = 0, scored = 0, popular = 0, others = 0, unknown = 0;
    double first = 0.0, last = 0.0;
    for (Py_ssize_t i = 0; i < ranked; i++) {
        if (!keeps[at[i]]) continue;
        if (!scored) first = best[i];
        last = best[i];
        index[m] = at[i] - 1;
        values[m++] = best[i] / first;
        taken[at[i]] = 1;
        scored++;
    }
    double floor = scored ? last / first : 1.0, top = 0.0;
    for (Py_ssize_t p = 1; p <= n; p++) {
        if (!keeps[p] || taken[p]) continue;
        if (!others || holds[p - 1] > top) top = holds[p - 1];
        others++;
        if (holds[p - 1] > 0) rest[popular++] = (held_at){holds[p - 1], p - 1};
    }
    sort_by_held(rest, popular);
    for (Py_ssize_t i = 0; i < popular; i++) {
        index[m] = rest[i].at;
        values[m++] = top ? floor * share * rest[i].held / top : 0.0;
    }
    for (Py_ssize_t p = 1; p <= n; p++) {
        if (!keeps[p] || taken[p] || holds[p - 1] > 0) continue;
        index[m] = p - 1;
        values[m++] = 0.0;
        unknown++;
    }
    if (_PyBytes_Resize(&index_bytes, 8 * m) < 0 || _PyBytes_Resize(&score_bytes, 8 * m) < 0)
        goto done;
    result = Py_BuildValue("(OOnn)", index_bytes, score_bytes, scored, popular);
done:
    Py_XDECREF(index_bytes);
    Py_XDECREF(score_bytes);
    free(taken);
    free(rest);
    PyBuffer_Release(&positions);
    PyBuffer_Release(&scores);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&held);
    return result;
}

/* The first k of an order (n of them), checked against ids (as a fast sequence, *seq, which
 * the caller releases): -1 with an exception set when they do not fit. */
static int first_k(PyObject *ids, const Py_buffer *index, const Py_buffer *scores,
                   Py_ssize_t k, PyObject **seq, Py_ssize_t *n) {
    if (index->len != scores->len) {
        PyErr_SetString(PyExc_ValueError, "one score per index");
        return -1;
    }
    if (!(*seq = PySequence_Fast(ids, "ids must be a sequence of str"))) return -1;
    Py_ssize_t size = PySequence_Fast_GET_SIZE(*seq);
    *n = index->len / 8;
    if (k < *n) *n = k < 0 ? 0 : k;
    const int64_t *at = index->buf;
    for (Py_ssize_t i = 0; i < *n; i++) {
        if (at[i] < 0 || at[i] >= size) {
            PyErr_SetString(PyExc_IndexError, "an index outside ids");
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(rows_doc,
"rows(ids, index, scores, k) -> list of {\"id\": ids[index[n]], \"score\": scores[n]} for the\n"
"first k, each score rounded to 6 decimals (half to even).");

static PyObject *id_key, *score_key;

static PyObject *rows(PyObject *self, PyObject *args) {
    PyObject *ids;
    Py_buffer index, scores;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "Oy*y*n", &ids, &index, &scores, &k)) return NULL;
    PyObject *result = NULL, *seq = NULL;
    Py_ssize_t n;
    if (!id_key && !(id_key = PyUnicode_InternFromString("id"))) goto done;
    if (!score_key && !(score_key = PyUnicode_InternFromString("score"))) goto done;
    if (first_k(ids, &index, &scores, k, &seq, &n) < 0) goto done;
    const int64_t *at = index.buf;
    const double *values = scores.buf;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    if (!(result = PyList_New(n))) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyDict_New(), *score = PyFloat_FromDouble(rint(values[i] * 1e6) / 1e6);
        if (!row || !score || PyDict_SetItem(row, id_key, items[at[i]]) < 0 ||
            PyDict_SetItem(row, score_key, score) < 0) {
            Py_XDECREF(row);
            Py_XDECREF(score);
            Py_CLEAR(result);
            goto done;
        }
        Py_DECREF(score);
        PyList_SET_ITEM(result, i, row);
    }
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&index);
    PyBuffer_Release(&scores);
    return result;
}

/* a score rounded to 6 decimals, as the integer count of millionths, written "12.345" (at least
 * one digit after the point): the text parses to the very double rint(x * 1e6) / 1e6 is, the
 * nearest to that decimal. 0 when the count is out of exact range (the caller's slow path). */
static int write_score(char *out, double value) {
    double millionths = rint(value * 1e6);
    if (!(fabs(millionths) < 9e15)) return 0;
    int64_t q = (int64_t)millionths;
    char digits[24];
    int n = 0, m = 0;
    uint64_t magnitude = (uint64_t)(q < 0 ? -q : q);
    uint64_t whole = magnitude / 1000000, part = magnitude % 1000000;
    if (q < 0) out[m++] = '-';
    do {
        digits[n++] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole);
    while (n) out[m++] = digits[--n];
    out[m++] = '.';
    char frac[6];
    for (int d = 5; d >= 0; d--) {
        frac[d] = (char)('0' + part % 10);
        part /= 10;
    }
    int last = 5;
    while (last > 0 && frac[last] == '0') last--;
    for (int d = 0; d <= last; d++) out[m++] = frac[d];
    return m;
}

PyDoc_STRVAR(rows_json_doc,
"rows_json(ids, index, scores, k) -> bytes or None: rows(ids, index, scores, k) written as a\n"
"JSON array ('[{\"id\":...,\"score\":...},...]'), or None when an id is not valid UTF-8 (a lone\n"
"surrogate) or a score is too large or not finite (the caller writes those another way).");

static PyObject *rows_json(PyObject *self, PyObject *args) {
    PyObject *ids;
    Py_buffer index, scores;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "Oy*y*n", &ids, &index, &scores, &k)) return NULL;
    PyObject *result = NULL, *seq = NULL;
    char *out = NULL;
    Py_ssize_t n;
    if (first_k(ids, &index, &scores, k, &seq, &n) < 0) goto done;
    const int64_t *at = index.buf;
    const double *values = scores.buf;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    size_t capacity = 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_Check(items[at[i]])) {
            PyErr_SetString(PyExc_TypeError, "ids must be str");
            goto done;
        }
        Py_ssize_t len;
        if (!PyUnicode_AsUTF8AndSize(items[at[i]], &len)) { /* a lone surrogate */
            PyErr_Clear();
            goto refused;
        }
        capacity += 6 * (size_t)len + 48; /* the worst escape is 6 bytes a byte */
    }
    if (!(out = malloc(capacity))) {
        PyErr_NoMemory();
        goto done;
    }
    size_t m = 0;
    out[m++] = '[';
    static const char hex[] = "0123456789abcdef";
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const unsigned char *id =
            (const unsigned char *)PyUnicode_AsUTF8AndSize(items[at[i]], &len);
        if (i) out[m++] = ',';
        memcpy(out + m, "{\"id\":\"", 7);
        m += 7;
        for (Py_ssize_t b = 0; b < len; b++) {
            unsigned char c = id[b];
            if (c == '"' || c == '\\') {
                out[m++] = '\\';
                out[m++] = (char)c;
            } else if (c < 0x20) {
                memcpy(out + m, "\\u00", 4);
                out[m + 4] = hex[c >> 4];
                out[m + 5] = hex[c & 15];
                m += 6;
            } else {
                out[m++] = (char)c;
            }
        }
        memcpy(out + m, "\",\"score\":", 10);
        m += 10;
        int written = write_score(out + m, values[i]);
        if (!written) goto refused;
        m += (size_t)written;
        out[m++] = '}';
    }
    out[m++] = ']';
    result = PyBytes_FromStringAndSize(out, (Py_ssize_t)m);
    goto done;
refused:
    Py_INCREF(Py_None);
    result = Py_None;
done:
    free(out);
    Py_XDECREF(seq);
    PyBuffer_Release(&index);
    PyBuffer_Release(&scores);
    return result;
}

PyMethodDef kernel_rerank_methods[] = {
    {"rows_json", rows_json, METH_VARARGS, rows_json_doc},
    {"arrange", arrange, METH_VARARGS, arrange_doc},
    {"rows", rows, METH_VARARGS, rows_doc},
    {NULL, NULL, 0, NULL},
};
