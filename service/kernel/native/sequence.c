/* The sequence model's values of a session's answers (service/core/sequence.py), read in the
 * request through the serving layout service/kernel/reference_sequence.py describes (its pure
 * reference, whose constants these are: tests/test_scoring.py holds them equal). What a call
 * costs is the cache lines it waits for, so each stage asks for every line it will need
 * before it reads any, and their reads overlap; and the answers' products, which are integer
 * arithmetic in that layout, sixteen lanes at a time. */
#include "kernel.h"

#define DIRECTORY_SHIFT 48
#define STATE_RANGE 32767

typedef struct {
    uint64_t key;
    float scale;
    float bias;
} Record;

/* The record of key (-1: not learned). The directory gives the range of records sharing the
 * key's top bits; indexes are clamped to the table, so a wrong directory gives wrong rows,
 * never a read outside it. The range is searched by halves: ids are chosen by clients, and
 * however many an attacker grinds into one range, a lookup costs no more than a search of
 * the whole table. */
static Py_ssize_t record_of(const Record *table, Py_ssize_t n, const uint32_t *directory,
                            uint64_t key) {
    uint64_t bucket = key >> DIRECTORY_SHIFT;
    Py_ssize_t lo = directory[bucket], hi = directory[bucket + 1];
    if (lo > n) lo = n;
    if (hi > n) hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (table[mid].key < key) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && table[lo].key == key ? lo : -1;
}

static void prefetch_bytes(const void *start, Py_ssize_t size) {
    const char *at = start;
    for (Py_ssize_t offset = 0; offset < size; offset += 64) __builtin_prefetch(at + offset);
    __builtin_prefetch(at + size - 1);
}

PyDoc_STRVAR(sequence_values_doc,
"sequence_values(table, directory u32, codes i8, inputs f32, last f32, positions f32,\n"
"                session u64, answers u64) -> f64 bytes:\n"
"reference_sequence.sequence_values's counterpart.");

int sequence_into(const SequenceModel *model, const uint64_t *s, Py_ssize_t ns,
                  const uint64_t *a, Py_ssize_t m, double *out) {
    Py_ssize_t n = model->table.len / (Py_ssize_t)sizeof(Record);
    Py_ssize_t width = model->positions.len / 4;
    Py_ssize_t d = model->inputs.len / 4 / (n + 1);
    if (model->table.len % (Py_ssize_t)sizeof(Record) || d < 1 ||
        model->inputs.len != (n + 1) * d * 4 || model->last.len != model->inputs.len ||
        model->codes.len != n * d || width < 1 ||
        model->directory.len != ((Py_ssize_t)1 << (64 - DIRECTORY_SHIFT)) * 4 + 4) {
        PyErr_SetString(PyExc_ValueError, "a model's arrays of one size, and its directory");
        return -1;
    }
    for (Py_ssize_t j = 0; j < m; j++) out[j] = 0.0;
    if (!m) return 0;
    int status = -1;
    double *state = NULL;
    int16_t *steps = NULL;
    Py_ssize_t *at = NULL;
    if (!(state = calloc(d, sizeof(double))) || !(steps = malloc(sizeof(int16_t) * d)) ||
        !(at = malloc(sizeof(Py_ssize_t) * m))) {
        PyErr_NoMemory();
        goto done;
    }
    status = 0;
    const Record *records = model->table.buf;
    const uint32_t *dir = model->directory.buf;
    const float *in = model->inputs.buf, *lst = model->last.buf, *p = model->positions.buf;
    const int8_t *coded = model->codes.buf;
    Py_ssize_t recent = ns < width ? ns : width;
    /* the lookups in stages: every key's directory entry, then its first record */
    for (Py_ssize_t j = 0; j < m; j++) __builtin_prefetch(dir + (a[j] >> DIRECTORY_SHIFT));
    for (Py_ssize_t i = 0; i < recent; i++)
        __builtin_prefetch(dir + (s[ns - 1 - i] >> DIRECTORY_SHIFT));
    for (Py_ssize_t j = 0; j < m; j++) {
        uint32_t first = dir[a[j] >> DIRECTORY_SHIFT];
        if (first < n) __builtin_prefetch(records + first);
    }
    int known = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        at[j] = record_of(records, n, dir, a[j]);
        if (at[j] >= 0) {
            known = 1;
            prefetch_bytes(coded + at[j] * d, d);
        }
    }
    /* the state: the newest items' input vectors by position, then the last item's vector */
    Py_ssize_t newest = 0;
    int seen = 0;
    for (Py_ssize_t i = 0; i < recent; i++) {
        Py_ssize_t row = record_of(records, n, dir, s[ns - 1 - i]) + 1;
        if (i == 0) newest = row;
        if (!row) continue;
        seen = 1;
        const float *x = in + row * d;
        for (Py_ssize_t t = 0; t < d; t++) state[t] += (double)p[i] * x[t];
    }
    if (!known || !seen) goto done;
    const float *x = lst + newest * d;
    for (Py_ssize_t t = 0; t < d; t++) state[t] += x[t];
    /* the state in 16-bit steps of its largest component, so that each answer's product is
     * exact integer arithmetic, sixteen lanes at a time */
    double peak = 0.0;
    for (Py_ssize_t t = 0; t < d; t++) peak = fabs(state[t]) > peak ? fabs(state[t]) : peak;
    double step = peak > 0.0 ? peak / STATE_RANGE : 1.0;
    for (Py_ssize_t t = 0; t < d; t++) steps[t] = (int16_t)lrint(state[t] / step);
    double lowest = 0.0, highest = 0.0;
    int any = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        if (at[j] < 0) continue;
        const int8_t *y = coded + at[j] * d;
        int32_t lanes[16] = {0};
        Py_ssize_t t = 0;
        for (; t + 16 <= d; t += 16)
            for (int u = 0; u < 16; u++) lanes[u] += (int32_t)y[t + u] * steps[t + u];
        int32_t dot = 0;
        for (int u = 0; u < 16; u++) dot += lanes[u];
        for (; t < d; t++) dot += (int32_t)y[t] * steps[t];
        const Record *r = records + at[j];
        out[j] = (double)r->scale * step * (double)dot + (double)r->bias;
        if (!any || out[j] < lowest) lowest = out[j];
        if (!any || out[j] > highest) highest = out[j];
        any = 1;
    }
    for (Py_ssize_t j = 0; j < m; j++) out[j] = (at[j] >= 0 ? out[j] : lowest) - highest;
done:
    free(state);
    free(steps);
    free(at);
    return status;
}

void sequence_model_release(SequenceModel *model) {
    PyBuffer_Release(&model->table);
    PyBuffer_Release(&model->directory);
    PyBuffer_Release(&model->codes);
    PyBuffer_Release(&model->inputs);
    PyBuffer_Release(&model->last);
    PyBuffer_Release(&model->positions);
}

static PyObject *sequence_values(PyObject *self, PyObject *args) {
    SequenceModel model;
    Py_buffer session, answers;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*", &model.table, &model.directory,
                          &model.codes, &model.inputs, &model.last, &model.positions, &session,
                          &answers))
        return NULL;
    Py_ssize_t m = answers.len / 8;
    PyObject *result = PyBytes_FromStringAndSize(NULL, m * 8);
    if (result && sequence_into(&model, session.buf, session.len / 8, answers.buf, m,
                                (double *)PyBytes_AS_STRING(result)) < 0)
        Py_CLEAR(result);
    sequence_model_release(&model);
    PyBuffer_Release(&session);
    PyBuffer_Release(&answers);
    return result;
}

PyMethodDef kernel_sequence_methods[] = {
    {"sequence_values", sequence_values, METH_VARARGS, sequence_values_doc},
    {NULL, NULL, 0, NULL},
};
