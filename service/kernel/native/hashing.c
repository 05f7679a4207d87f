/* Id hashing: BLAKE2b (RFC 7693) with an 8-byte digest and a personalisation, as
 * service/core/layout.py defines it with hashlib. A request's ids (a list to rerank, its
 * exclusions, its session items) are hashed by one call: hashlib's per-call object cost more
 * than the hash. (A cache of digests did not pay: under load its entries were as cold as
 * the hash is dear.) Pure reference: service/kernel/reference.py (hashlib). */
#include "kernel.h"

static const uint64_t iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static const uint8_t sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define G(a, b, c, d, x, y)                                                                  \
    do {                                                                                     \
        a = a + b + (x); d = ROTR64(d ^ a, 32); c = c + d; b = ROTR64(b ^ c, 24);            \
        a = a + b + (y); d = ROTR64(d ^ a, 16); c = c + d; b = ROTR64(b ^ c, 63);            \
    } while (0)

/* BLAKE2b's twelve rounds over the work vector v and the message m, scalar words or lanes;
 * unrolled, so each round's message indices become constants and the message words stay in
 * registers (the table-driven loop reloads them through sigma) */
#define ROUNDS(v, m)                                                                         \
    _Pragma("GCC unroll 12")                                                                 \
    for (int r = 0; r < 12; r++) {                                                           \
        const uint8_t *s = sigma[r];                                                         \
        G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);                                        \
        G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);                                        \
        G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);                                       \
        G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);                                       \
        G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);                                       \
        G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);                                     \
        G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);                                      \
        G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);                                      \
    }

static void compress(uint64_t h[8], const unsigned char block[128], uint64_t counter, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = iv[i];
    }
    v[12] ^= counter;  /* inputs here stay far below 2^64 bytes: the high word is 0 */
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) m[i] = le64(block + 8 * i);
    ROUNDS(v, m);
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The first 8 bytes of BLAKE2b-64(data) personalised with person (16 bytes, zero-padded),
 * as a little-endian u64. */
static uint64_t blake2b_64(const unsigned char *data, size_t len, const unsigned char *person) {
    uint64_t h[8];
    unsigned char block[128];
    memcpy(h, iv, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8;  /* digest length 8, no key, fanout 1, depth 1 */
    h[6] ^= le64(person);
    h[7] ^= le64(person + 8);
    uint64_t counter = 0;
    while (len > 128) {
        counter += 128;
        compress(h, data, counter, 0);
        data += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    if (len) memcpy(block, data, len);
    counter += len;
    compress(h, block, counter, 1);
    return h[0];
}

/* --- four ids at once --------------------------------------------------------------------
 * A request's ids are short and many (a list of 200 to rerank): four single-block hashes run
 * in the four 64-bit lanes of AVX2 registers, where the CPU has them, each lane its own id,
 * length and counter. The same rounds as compress(); ids past one block, and CPUs without
 * AVX2, take the one-at-a-time path. */
#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_LANES 1
typedef uint64_t u64x4 __attribute__((vector_size(32)));
/* G and ROTR64 serve the lanes as they are: GCC's vector types take the same operators */

__attribute__((target("avx2"))) static void blake2b_64x4(
        const unsigned char *const data[4], const size_t len[4], const unsigned char *person,
        uint64_t out[4]) {
    unsigned char blocks[4][128];
    u64x4 m[16], v[16];
    for (int l = 0; l < 4; l++) {
        memset(blocks[l], 0, 128);
        memcpy(blocks[l], data[l], len[l]);
    }
    for (int i = 0; i < 16; i++)
        m[i] = (u64x4){le64(blocks[0] + 8 * i), le64(blocks[1] + 8 * i),
                       le64(blocks[2] + 8 * i), le64(blocks[3] + 8 * i)};
    uint64_t h[8];
    memcpy(h, iv, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8;  /* as blake2b_64 */
    h[6] ^= le64(person);
    h[7] ^= le64(person + 8);
    for (int i = 0; i < 8; i++) {
        v[i] = (u64x4){h[i], h[i], h[i], h[i]};
        v[i + 8] = (u64x4){iv[i], iv[i], iv[i], iv[i]};
    }
    v[12] ^= (u64x4){len[0], len[1], len[2], len[3]};
    v[14] = ~v[14];  /* each lane's only block is its last */
    ROUNDS(v, m);
    u64x4 first = v[0] ^ v[8];
    for (int l = 0; l < 4; l++) out[l] = h[0] ^ first[l];
}

static int lanes_available(void) {
    static int available = -1;
    if (available < 0) {
        __builtin_cpu_init();
        available = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return available;
}
#endif

/* Ids to hash, gathered four at a time; digests land in out[at]. */
typedef struct {
    const unsigned char *data[4];
    size_t len[4];
    Py_ssize_t at[4];
    int n;
    int lanes;
    const unsigned char *person;
    uint64_t *out;
} batch;

static void batch_start(batch *b, const unsigned char *person, uint64_t *out) {
    b->n = 0;
    b->person = person;
    b->out = out;
#ifdef HAVE_LANES
    b->lanes = lanes_available();
#else
    b->lanes = 0;
#endif
}

static void batch_flush(batch *b) {
#ifdef HAVE_LANES
    if (b->n == 4) {
        uint64_t got[4];
        blake2b_64x4(b->data, b->len, b->person, got);
        for (int l = 0; l < 4; l++) b->out[b->at[l]] = got[l];
        b->n = 0;
        return;
    }
#endif
    for (int l = 0; l < b->n; l++) b->out[b->at[l]] = blake2b_64(b->data[l], b->len[l], b->person);
    b->n = 0;
}

static void batch_add(batch *b, const unsigned char *data, size_t len, Py_ssize_t at) {
    if (!b->lanes || len > 128) {
        b->out[at] = blake2b_64(data, len, b->person);
        return;
    }
    b->data[b->n] = data;
    b->len[b->n] = len;
    b->at[b->n++] = at;
    if (b->n == 4) batch_flush(b);
}

static void write_le(unsigned char *out, const uint64_t *digests, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        for (int b = 0; b < 8; b++) out[8 * i + b] = (unsigned char)(digests[i] >> (8 * b));
}

PyDoc_STRVAR(hashes_doc,
"hashes(ids, person) -> u64 bytes: each id's BLAKE2b, 8-byte digest personalised with person\n"
"(at most 16 bytes), of its UTF-8 (lone surrogates encoded as they are, 'surrogatepass'),\n"
"concatenated: hashlib.blake2b(id.encode('utf-8', 'surrogatepass'), digest_size=8,\n"
"person=person).digest() for each id.");

/* person, zero-padded to 16 bytes; -1 with an exception set when it is longer */
static int personalisation(const Py_buffer *person, unsigned char out[16]) {
    if (person->len > 16) {
        PyErr_SetString(PyExc_ValueError, "person is at most 16 bytes");
        return -1;
    }
    memset(out, 0, 16);
    memcpy(out, person->buf, (size_t)person->len);
    return 0;
}

/* Each id's digest into digests[i] (the UTF-8 of lone surrogates encoded as they are); -1 with
 * an exception set when an id is not a str. The UTF-8 of an id stays valid while the id does:
 * the caller holds the sequence. */
static int digest_all(PyObject **items, Py_ssize_t n, const unsigned char *personal,
                      uint64_t *digests) {
    batch b;
    batch_start(&b, personal, digests);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *id = items[i];
        if (!PyUnicode_Check(id)) {
            PyErr_Format(PyExc_TypeError, "ids must be str, not %.100s", Py_TYPE(id)->tp_name);
            return -1;
        }
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(id, &len);
        if (utf8) {
            batch_add(&b, (const unsigned char *)utf8, (size_t)len, i);
        } else {  /* a lone surrogate: strict UTF-8 refuses it */
            PyErr_Clear();
            PyObject *encoded = PyUnicode_AsEncodedString(id, "utf-8", "surrogatepass");
            if (!encoded) return -1;
            digests[i] = blake2b_64((const unsigned char *)PyBytes_AS_STRING(encoded),
                                    (size_t)PyBytes_GET_SIZE(encoded), personal);
            Py_DECREF(encoded);
        }
    }
    batch_flush(&b);
    return 0;
}

static PyObject *hashes(PyObject *self, PyObject *args) {
    PyObject *ids;
    Py_buffer person;
    if (!PyArg_ParseTuple(args, "Oy*", &ids, &person)) return NULL;
    PyObject *result = NULL, *seq = NULL;
    uint64_t *digests = NULL;
    unsigned char personal[16];
    if (personalisation(&person, personal) < 0) goto done;
    if (!(seq = PySequence_Fast(ids, "ids must be a sequence of str"))) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (!(digests = malloc(sizeof(uint64_t) * (size_t)(n ? n : 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    if (digest_all(PySequence_Fast_ITEMS(seq), n, personal, digests) < 0) goto done;
    if (!(result = PyBytes_FromStringAndSize(NULL, n * 8))) goto done;
    write_le((unsigned char *)PyBytes_AS_STRING(result), digests, n);
done:
    free(digests);
    Py_XDECREF(seq);
    PyBuffer_Release(&person);
    return result;
}

PyDoc_STRVAR(checked_hashes_doc,
"checked_hashes(ids, person, max_length) -> u64 bytes or None: hashes(ids, person) when every\n"
"id is a str of 1 to max_length characters and no two hash alike (none repeats); None\n"
"otherwise, for the caller's slower path to name the entry.");

/* A client's list in one pass: type, length, digest, and a repeat found by probing a table of
 * the digests (slots by the salted mix, as every table's: digests are computable by anyone). */
static PyObject *checked_hashes(PyObject *self, PyObject *args) {
    PyObject *ids;
    Py_buffer person;
    Py_ssize_t longest;
    if (!PyArg_ParseTuple(args, "Oy*n", &ids, &person, &longest)) return NULL;
    PyObject *result = NULL, *seq = NULL;
    uint64_t *table = NULL, *digests = NULL;
    unsigned char personal[16];
    if (personalisation(&person, personal) < 0) goto done;
    if (!(seq = PySequence_Fast(ids, "ids must be a sequence"))) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), size = 8;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *id = items[i];
        if (!PyUnicode_CheckExact(id) || PyUnicode_GET_LENGTH(id) < 1 ||
            PyUnicode_GET_LENGTH(id) > longest)
            goto refused;
    }
    while (size < 2 * n) size *= 2;
    /* 0 marks an empty slot; a digest of 0 is kept as its own flag */
    if (!(table = calloc((size_t)size, sizeof(uint64_t))) ||
        !(digests = malloc(sizeof(uint64_t) * (size_t)(n ? n : 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    if (digest_all(items, n, personal, digests) < 0) goto done;
    int zero_seen = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t h = digests[i];
        if (h == 0) {
            if (zero_seen++) goto refused;
            continue;
        }
        Py_ssize_t at = (Py_ssize_t)(mix(h) & (uint64_t)(size - 1));
        while (table[at] && table[at] != h) at = (at + 1) & (size - 1);
        if (table[at]) goto refused;
        table[at] = h;
    }
    if (!(result = PyBytes_FromStringAndSize(NULL, n * 8))) goto done;
    write_le((unsigned char *)PyBytes_AS_STRING(result), digests, n);
    goto done;
refused:
    Py_INCREF(Py_None);
    result = Py_None;
done:
    free(table);
    free(digests);
    Py_XDECREF(seq);
    PyBuffer_Release(&person);
    return result;
}

PyMethodDef kernel_hash_methods[] = {
    {"hashes", hashes, METH_VARARGS, hashes_doc},
    {"checked_hashes", checked_hashes, METH_VARARGS, checked_hashes_doc},
    {NULL, NULL, 0, NULL},
};
