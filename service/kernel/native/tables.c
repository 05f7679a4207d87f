/* The two kinds of open-addressing tables over caller-owned arrays: the frequency table
 * (u64 keys, f64 values, NaN marks an empty slot) and the read cache's object tables (u64 keys,
 * 0 marks an empty slot, a list of objects). Pure reference: service/kernel/reference.py. */
#include "kernel.h"

/* --- the frequency table: open addressing over two numpy arrays ---------------------------- */
/* A slot is empty while its value is NaN (frequencies never are). Lookups of a few hundred
 * candidates cost one or two probes each; binary search in sorted arrays cost a branch
 * misprediction per step, which was most of a request's scoring time. */
static Py_ssize_t slot_of(uint64_t key, Py_ssize_t mask) {
    return (Py_ssize_t)mix(key) & mask;
}

static int table_args(Py_buffer *keys, Py_buffer *values, Py_ssize_t *mask) {
    Py_ssize_t n = keys->len / 8;
    if (n == 0 || (n & (n - 1)) || values->len != keys->len) {
        PyErr_SetString(PyExc_ValueError, "a table is two arrays of the same power-of-2 size");
        return -1;
    }
    *mask = n - 1;
    return 0;
}

double frequency_of(const uint64_t *keys, const double *values, Py_ssize_t mask, uint64_t key,
                    int *absent) {
    Py_ssize_t at = slot_of(key, mask);
    while (!isnan(values[at]) && keys[at] != key) at = (at + 1) & mask;
    if (isnan(values[at])) {
        *absent = 1;
        return 0.0;
    }
    return values[at];
}

PyDoc_STRVAR(lookup_doc,
"lookup(table_keys, table_values, items) -> (values f64 bytes, missing u64 bytes):\n"
"each item's value (0 when absent) and the absent items.");

static PyObject *lookup(PyObject *self, PyObject *args) {
    Py_buffer keys, values, items;
    if (!PyArg_ParseTuple(args, "y*y*y*", &keys, &values, &items)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t mask, n = items.len / 8, m = 0;
    double *out = NULL;
    uint64_t *absent = NULL;
    if (table_args(&keys, &values, &mask) < 0) goto done;
    out = malloc(sizeof(double) * (n + 1));
    absent = malloc(sizeof(uint64_t) * (n + 1));
    if (!out || !absent) {
        PyErr_NoMemory();
        goto done;
    }
    const uint64_t *k = keys.buf, *it = items.buf;
    const double *v = values.buf;
    /* every item's home slot asked for before any is read: the table spans megabytes, a
     * request's items are scattered over it, and their reads overlap when asked together */
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = slot_of(it[i], mask);
        __builtin_prefetch(v + at);
        __builtin_prefetch(k + at);
        absent[i] = (uint64_t)at;  /* each home slot, until the absent overwrite it: at most
                                    * one per item, each after its own slot was read */
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = (Py_ssize_t)absent[i];
        while (!isnan(v[at]) && k[at] != it[i]) at = (at + 1) & mask;
        if (isnan(v[at])) {
            out[i] = 0.0;
            absent[m++] = it[i];
        } else {
            out[i] = v[at];
        }
    }
    result = Py_BuildValue("(y#y#)", (const char *)out, n * 8, (const char *)absent, m * 8);
done:
    free(out);
    free(absent);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&values);
    PyBuffer_Release(&items);
    return result;
}

PyDoc_STRVAR(insert_doc,
"insert(table_keys, table_values, items, values) -> int: set each item's value in place;\n"
"returns how many were new. The caller keeps the table at most half full.");

static PyObject *insert(PyObject *self, PyObject *args) {
    Py_buffer keys, values, items, vals;
    if (!PyArg_ParseTuple(args, "w*w*y*y*", &keys, &values, &items, &vals)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t mask, n = items.len / 8, added = 0, used = 0;
    if (table_args(&keys, &values, &mask) < 0) goto done;
    if (vals.len != items.len) {
        PyErr_SetString(PyExc_ValueError, "one value per item");
        goto done;
    }
    uint64_t *k = keys.buf;
    double *v = values.buf;
    const uint64_t *it = items.buf;
    const double *nv = vals.buf;
    for (Py_ssize_t i = 0; i <= mask; i++) used += !isnan(v[i]);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (isnan(nv[i])) {
            PyErr_SetString(PyExc_ValueError, "values must not be NaN");
            goto done;
        }
        Py_ssize_t at = slot_of(it[i], mask);
        while (!isnan(v[at]) && k[at] != it[i]) at = (at + 1) & mask;
        if (isnan(v[at])) {
            if (used + 1 > mask) {  /* keep one slot empty, or probes would never end */
                PyErr_SetString(PyExc_ValueError, "the table is full");
                goto done;
            }
            used++;
            added++;
            k[at] = it[i];
        }
        v[at] = nv[i];
    }
    result = PyLong_FromSsize_t(added);
done:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&values);
    PyBuffer_Release(&items);
    PyBuffer_Release(&vals);
    return result;
}

PyDoc_STRVAR(select_doc,
"select(table_keys, table_values, items, values, inside) -> (items u64 bytes, values f64\n"
"bytes): the items (with their values, one per item) that are in the table when inside is\n"
"true, or that are not when it is false, in their order.");

static PyObject *select_items(PyObject *self, PyObject *args) {
    Py_buffer keys, values, items, vals;
    int inside;
    if (!PyArg_ParseTuple(args, "y*y*y*y*p", &keys, &values, &items, &vals, &inside))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t mask, n = items.len / 8, m = 0;
    uint64_t *kept = NULL;
    double *kept_values = NULL;
    if (table_args(&keys, &values, &mask) < 0) goto done;
    if (vals.len != items.len) {
        PyErr_SetString(PyExc_ValueError, "one value per item");
        goto done;
    }
    kept = malloc(sizeof(uint64_t) * (n + 1));
    kept_values = malloc(sizeof(double) * (n + 1));
    if (!kept || !kept_values) {
        PyErr_NoMemory();
        goto done;
    }
    const uint64_t *k = keys.buf, *it = items.buf;
    const double *v = values.buf, *iv = vals.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = slot_of(it[i], mask);
        while (!isnan(v[at]) && k[at] != it[i]) at = (at + 1) & mask;
        if (!isnan(v[at]) == !!inside) {
            kept[m] = it[i];
            kept_values[m++] = iv[i];
        }
    }
    result = Py_BuildValue("(y#y#)", (const char *)kept, m * 8, (const char *)kept_values,
                           m * 8);
done:
    free(kept);
    free(kept_values);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&values);
    PyBuffer_Release(&items);
    PyBuffer_Release(&vals);
    return result;
}

PyDoc_STRVAR(first_absent_doc,
"first_absent(items, taken, k) -> u32 bytes: the positions of the first k items (fewer when\n"
"the items run out) that are not among taken (u64 hashes).");

static PyObject *first_absent(PyObject *self, PyObject *args) {
    Py_buffer items, taken;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "y*y*n", &items, &taken, &k)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = items.len / 8, nt = taken.len / 8, m = 0, size = 8;
    while (size < 2 * nt + 2) size *= 2;  /* at most half full: short probes */
    Py_ssize_t mask = size - 1;
    uint64_t *table = calloc((size_t)size, sizeof(uint64_t));
    unsigned char *used = calloc((size_t)size, 1);
    uint32_t *out = malloc(sizeof(uint32_t) * (k > 0 ? k : 1));
    if (!table || !used || !out) {
        PyErr_NoMemory();
        goto done;
    }
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many items for u32 positions");
        goto done;
    }
    const uint64_t *it = items.buf, *tk = taken.buf;
    for (Py_ssize_t i = 0; i < nt; i++) {
        Py_ssize_t at = slot_of(tk[i], mask);
        while (used[at] && table[at] != tk[i]) at = (at + 1) & mask;
        used[at] = 1;
        table[at] = tk[i];
    }
    for (Py_ssize_t i = 0; i < n && m < k; i++) {
        Py_ssize_t at = slot_of(it[i], mask);
        while (used[at] && table[at] != it[i]) at = (at + 1) & mask;
        if (!used[at]) out[m++] = (uint32_t)i;
    }
    result = PyBytes_FromStringAndSize((const char *)out, m * 4);
done:
    free(table);
    free(used);
    free(out);
    PyBuffer_Release(&items);
    PyBuffer_Release(&taken);
    return result;
}

/* --- object tables: the read cache's blobs by hash ------------------------------------------
 * Keys in a u64 buffer (0: empty slot), objects in a list of the same power-of-2 length, linear
 * probing from slot_of. A request looks up two hundred blobs: in a dict each lookup chases a
 * key object and an entry across memory, here one probe of a flat array. */
int objects_args(Py_buffer *keys, PyObject *slots, Py_ssize_t *mask) {
    Py_ssize_t n = keys->len / 8;
    if (n == 0 || (n & (n - 1)) || PyList_GET_SIZE(slots) != n) {
        PyErr_SetString(PyExc_ValueError,
                        "an object table is a u64 buffer and a list of the same power-of-2 size");
        return -1;
    }
    *mask = n - 1;
    return 0;
}

/* The slot holding key, else the empty slot ending its probe run; -1 if the table is full and
 * key absent (callers keep tables at most half full: runs stay short). */
static Py_ssize_t objects_find(const uint64_t *k, Py_ssize_t mask, uint64_t key) {
    Py_ssize_t at = slot_of(key, mask);
    for (Py_ssize_t probes = 0; probes <= mask; probes++) {
        if (k[at] == 0 || k[at] == key) return at;
        at = (at + 1) & mask;
    }
    return -1;
}

/* The slot holding key, or -1 when it is absent (hash 0 never is present). */
Py_ssize_t objects_at(const uint64_t *k, Py_ssize_t mask, uint64_t key) {
    if (key == 0) return -1;
    Py_ssize_t at = objects_find(k, mask, key);
    return at >= 0 && k[at] == key ? at : -1;
}

PyDoc_STRVAR(objects_get_doc,
"objects_get(table_keys, table_slots, hashes) -> list: each hash's object, None where absent\n"
"(hash 0 is never present).");

static PyObject *objects_get(PyObject *self, PyObject *args) {
    Py_buffer keys, items;
    PyObject *slots, *result = NULL;
    if (!PyArg_ParseTuple(args, "y*O!y*", &keys, &PyList_Type, &slots, &items)) return NULL;
    Py_ssize_t mask, n = items.len / 8;
    if (objects_args(&keys, slots, &mask) < 0) goto done;
    if (!(result = PyList_New(n))) goto done;
    const uint64_t *k = keys.buf, *it = items.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = objects_at(k, mask, it[i]);
        PyObject *value = at >= 0 ? PyList_GET_ITEM(slots, at) : Py_None;
        Py_INCREF(value);
        PyList_SET_ITEM(result, i, value);
    }
done:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&items);
    return result;
}

PyDoc_STRVAR(objects_put_doc,
"objects_put(table_keys, table_slots, hash, value) -> the value replaced, or None if the hash\n"
"is new. The caller keeps the table at most half full; hash must not be 0.");

static PyObject *objects_put(PyObject *self, PyObject *args) {
    Py_buffer keys;
    PyObject *slots, *value, *result = NULL;
    unsigned long long key;
    if (!PyArg_ParseTuple(args, "w*O!KO", &keys, &PyList_Type, &slots, &key, &value)) return NULL;
    Py_ssize_t mask;
    if (objects_args(&keys, slots, &mask) < 0) goto done;
    if (key == 0) {
        PyErr_SetString(PyExc_ValueError, "hash 0 marks an empty slot");
        goto done;
    }
    uint64_t *k = keys.buf;
    Py_ssize_t at = objects_find(k, mask, key);
    if (at < 0) {
        PyErr_SetString(PyExc_ValueError, "the table is full");
        goto done;
    }
    if (k[at] == 0) {
        k[at] = key;
        result = Py_None;
        Py_INCREF(result);
    } else {
        result = PyList_GET_ITEM(slots, at);
        Py_INCREF(result);
    }
    Py_INCREF(value);
    PyList_SetItem(slots, at, value);
done:
    PyBuffer_Release(&keys);
    return result;
}

PyDoc_STRVAR(objects_pop_doc,
"objects_pop(table_keys, table_slots, hash) -> the value removed, or None if absent.");

static PyObject *objects_pop(PyObject *self, PyObject *args) {
    Py_buffer keys;
    PyObject *slots, *result = NULL;
    unsigned long long key;
    if (!PyArg_ParseTuple(args, "w*O!K", &keys, &PyList_Type, &slots, &key)) return NULL;
    Py_ssize_t mask;
    if (objects_args(&keys, slots, &mask) < 0) goto done;
    uint64_t *k = keys.buf;
    Py_ssize_t at = objects_at(k, mask, key);
    if (at < 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    result = PyList_GET_ITEM(slots, at);
    Py_INCREF(result);
    /* backward-shift deletion: move later entries of the probe run into the hole, so no
     * tombstone is needed */
    Py_ssize_t hole = at, j = at;
    for (;;) {
        j = (j + 1) & mask;
        if (k[j] == 0) break;
        Py_ssize_t home = slot_of(k[j], mask);
        /* the entry at j may move to the hole unless its home lies cyclically in (hole, j] */
        int stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (stays) continue;
        k[hole] = k[j];
        PyObject *moved = PyList_GET_ITEM(slots, j);
        Py_INCREF(moved);
        PyList_SetItem(slots, hole, moved);
        hole = j;
    }
    k[hole] = 0;
    Py_INCREF(Py_None);
    PyList_SetItem(slots, hole, Py_None);
done:
    PyBuffer_Release(&keys);
    return result;
}

PyMethodDef kernel_table_methods[] = {
    {"lookup", lookup, METH_VARARGS, lookup_doc},
    {"insert", insert, METH_VARARGS, insert_doc},
    {"select", select_items, METH_VARARGS, select_doc},
    {"first_absent", first_absent, METH_VARARGS, first_absent_doc},
    {"objects_get", objects_get, METH_VARARGS, objects_get_doc},
    {"objects_put", objects_put, METH_VARARGS, objects_put_doc},
    {"objects_pop", objects_pop, METH_VARARGS, objects_pop_doc},
    {NULL, NULL, 0, NULL},
};
