/* RESP packing: commands as bytes without a Python string per argument. Pure reference:
 * service/kernel/reference.py. */
#include "kernel.h"

/* --- MGET of keys named by hash, packed ------------------------------------------------------ */
/* Writes n in decimal at w; returns the end (sprintf's format parsing cost more than a key). */
static char *decimal(char *w, Py_ssize_t n) {
    char digits[24];
    int len = 0;
    do {
        digits[len++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (len) *w++ = digits[--len];
    return w;
}

PyDoc_STRVAR(mget_doc,
"mget(hashes, prefixes) -> bytes: MGET of prefixes[h % len(prefixes)] + hex(h) for each\n"
"hash h (little-endian u64), packed as RESP: Keys.histories and Keys.indexes without a\n"
"Python string per key.");

static PyObject *mget(PyObject *self, PyObject *args) {
    static const char hex[] = "0123456789abcdef";
    Py_buffer sessions;
    PyObject *prefixes;
    if (!PyArg_ParseTuple(args, "y*O!", &sessions, &PyList_Type, &prefixes)) return NULL;
    Py_ssize_t n = sessions.len / 8, parts = PyList_GET_SIZE(prefixes), longest = 0;
    PyObject *result = NULL;
    char *buf = NULL;
    for (Py_ssize_t p = 0; p < parts; p++) {
        PyObject *prefix = PyList_GET_ITEM(prefixes, p);
        if (!PyBytes_Check(prefix)) {
            PyErr_SetString(PyExc_TypeError, "prefixes must be bytes");
            goto done;
        }
        if (PyBytes_GET_SIZE(prefix) > longest) longest = PyBytes_GET_SIZE(prefix);
    }
    if (parts == 0) {
        PyErr_SetString(PyExc_ValueError, "no prefixes");
        goto done;
    }
    Py_ssize_t cap = 64 + n * (longest + 16 + 32);
    if (!(buf = malloc(cap))) {
        PyErr_NoMemory();
        goto done;
    }
    char *w = buf;
    *w++ = '*';
    w = decimal(w, n + 1);
    static const char command[] = "\r\n$4\r\nMGET\r\n";
    memcpy(w, command, sizeof command - 1);
    w += sizeof command - 1;
    const unsigned char *raw = sessions.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t s = le64(raw + 8 * i);
        PyObject *prefix = PyList_GET_ITEM(prefixes, (Py_ssize_t)(s % (uint64_t)parts));
        Py_ssize_t plen = PyBytes_GET_SIZE(prefix);
        *w++ = '$';
        w = decimal(w, plen + 16);
        *w++ = '\r';
        *w++ = '\n';
        memcpy(w, PyBytes_AS_STRING(prefix), plen);
        w += plen;
        for (int b = 0; b < 8; b++) {  /* bytes.hex() of the little-endian hash */
            unsigned char byte = raw[8 * i + b];
            *w++ = hex[byte >> 4];
            *w++ = hex[byte & 15];
        }
        *w++ = '\r';
        *w++ = '\n';
    }
    result = PyBytes_FromStringAndSize(buf, w - buf);
done:
    free(buf);
    PyBuffer_Release(&sessions);
    return result;
}

/* --- RESP commands -------------------------------------------------------------------------- */
static Py_ssize_t digits_of(Py_ssize_t n) {
    Py_ssize_t d = 1;
    while (n >= 10) { n /= 10; d++; }
    return d;
}

PyDoc_STRVAR(pack_doc,
"pack(command, args) -> bytes: the command as a RESP array of bulk strings; arguments are\n"
"bytes as they are, str as UTF-8 (lone surrogates kept), int as str(), float as repr().");

static PyObject *pack(PyObject *self, PyObject *args) {
    const char *command;
    Py_ssize_t command_len;
    PyObject *seq, *fast, *result = NULL;
    if (!PyArg_ParseTuple(args, "y#O", &command, &command_len, &seq)) return NULL;
    if (!(fast = PySequence_Fast(seq, "args must be a sequence"))) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), made = 0;
    const char **data = malloc(sizeof(char *) * (n + 1));
    Py_ssize_t *lens = malloc(sizeof(Py_ssize_t) * (n + 1));
    PyObject **temporaries = malloc(sizeof(PyObject *) * (n + 1));
    if (!data || !lens || !temporaries) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 1 + digits_of(n + 1) + 2 + 1 + digits_of(command_len) + 2 + command_len + 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PySequence_Fast_GET_ITEM(fast, i), *text = NULL;
        if (PyBytes_Check(a)) {
            data[i] = PyBytes_AS_STRING(a);
            lens[i] = PyBytes_GET_SIZE(a);
        } else {
            if (PyUnicode_Check(a)) {
                text = a;
                Py_INCREF(text);
            } else if (PyFloat_Check(a)) {
                text = PyObject_Repr(a);
            } else if (PyLong_Check(a)) {
                text = PyObject_Str(a);
            } else {
                PyErr_Format(PyExc_TypeError, "cannot send a %.100s to Redis",
                             Py_TYPE(a)->tp_name);
                goto done;
            }
            if (!text) goto done;
            data[i] = PyUnicode_AsUTF8AndSize(text, &lens[i]);
            if (!data[i]) {  /* lone surrogates: encoded as Python's surrogatepass does */
                PyErr_Clear();
                PyObject *raw = PyUnicode_AsEncodedString(text, "utf-8", "surrogatepass");
                Py_DECREF(text);
                if (!raw) goto done;
                text = raw;
                data[i] = PyBytes_AS_STRING(raw);
                lens[i] = PyBytes_GET_SIZE(raw);
            }
            temporaries[made++] = text;
        }
        total += 1 + digits_of(lens[i]) + 2 + lens[i] + 2;
    }
    if (!(result = PyBytes_FromStringAndSize(NULL, total))) goto done;
    char *w = PyBytes_AS_STRING(result);
    *w++ = '*';
    w = decimal(w, n + 1);
    *w++ = '\r'; *w++ = '\n'; *w++ = '$';
    w = decimal(w, command_len);
    *w++ = '\r'; *w++ = '\n';
    memcpy(w, command, command_len);
    w += command_len;
    *w++ = '\r'; *w++ = '\n';
    for (Py_ssize_t i = 0; i < n; i++) {
        *w++ = '$';
        w = decimal(w, lens[i]);
        *w++ = '\r'; *w++ = '\n';
        memcpy(w, data[i], lens[i]);
        w += lens[i];
        *w++ = '\r'; *w++ = '\n';
    }
done:
    for (Py_ssize_t i = 0; i < made; i++) Py_DECREF(temporaries[i]);
    free(data);
    free(lens);
    free(temporaries);
    Py_DECREF(fast);
    return result;
}

PyMethodDef kernel_resp_methods[] = {
    {"mget", mget, METH_VARARGS, mget_doc},
    {"pack", pack, METH_VARARGS, pack_doc},
    {NULL, NULL, 0, NULL},
};
