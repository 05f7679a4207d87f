/* What the compiled kernel's files share: the 16-byte entry, byte order, an inlined sort, the
 * salted slot hash and the object tables' probe (used by tables.c and by scoring.c's
 * candidates). The layout itself is defined once in service/core/entries.py; ENTRY here must
 * agree with it (tests/test_kernel.py holds them equal). */
#ifndef SESSIONREC_KERNEL_H
#define SESSIONREC_KERNEL_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __APPLE__
#include <sys/random.h>
#endif

#define ENTRY 16

static inline uint64_t le64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline int64_t be64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return (int64_t)v;
}

/* How many partitions a sort or a selection of n makes before it falls back to an order no
 * input can slow (twice log2 n): a choice of pivots an attacker's ids defeat costs no more. */
static inline int partition_depth(Py_ssize_t n) {
    int depth = 0;
    for (Py_ssize_t m = n; m > 1; m >>= 1) depth += 2;
    return depth;
}

/* --- an inlined introsort: qsort's comparator call per comparison cost more than the
 * scoring arithmetic. DEFINE_SORT(name, T, less) defines name(T *a, Py_ssize_t n) ordering by
 * less(x, y), a strict total order (every caller breaks ties by a unique hash). */
#define DEFINE_SORT(name, T, less)                                                           \
    static void name##_heap(T *a, Py_ssize_t n) {                                            \
        for (Py_ssize_t start = n / 2 - 1; start >= 0; start--) {                           \
            for (Py_ssize_t root = start;;) {                                                \
                Py_ssize_t child = 2 * root + 1;                                             \
                if (child >= n) break;                                                       \
                if (child + 1 < n && less(a[child], a[child + 1])) child++;                  \
                if (!less(a[root], a[child])) break;                                         \
                T t = a[root]; a[root] = a[child]; a[child] = t;                             \
                root = child;                                                                \
            }                                                                                \
        }                                                                                    \
        for (Py_ssize_t end = n - 1; end > 0; end--) {                                       \
            T t = a[0]; a[0] = a[end]; a[end] = t;                                           \
            for (Py_ssize_t root = 0;;) {                                                    \
                Py_ssize_t child = 2 * root + 1;                                             \
                if (child >= end) break;                                                     \
                if (child + 1 < end && less(a[child], a[child + 1])) child++;                \
                if (!less(a[root], a[child])) break;                                         \
                T u = a[root]; a[root] = a[child]; a[child] = u;                             \
                root = child;                                                                \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    /* a[0..j] (j returned) before a[j+1..n), both sides non-empty (n > 16), pivot the    \
     * median of three */                                                                    \
    static Py_ssize_t name##_partition(T *a, Py_ssize_t n) {                                 \
        Py_ssize_t mid = n / 2, last = n - 1;                                                \
        if (less(a[mid], a[0])) { T t = a[mid]; a[mid] = a[0]; a[0] = t; }                   \
        if (less(a[last], a[0])) { T t = a[last]; a[last] = a[0]; a[0] = t; }                \
        if (less(a[last], a[mid])) { T t = a[last]; a[last] = a[mid]; a[mid] = t; }          \
        T pivot = a[mid];                                                                    \
        Py_ssize_t i = 0, j = last;                                                          \
        for (;;) {                                                                           \
            while (less(a[i], pivot)) i++;                                                   \
            while (less(pivot, a[j])) j--;                                                   \
            if (i >= j) return j;                                                            \
            T t = a[i]; a[i] = a[j]; a[j] = t;                                               \
            i++; j--;                                                                        \
        }                                                                                    \
    }                                                                                        \
    static void name##_intro(T *a, Py_ssize_t n, int depth) {                                \
        while (n > 16) {                                                                     \
            if (depth-- == 0) { name##_heap(a, n); return; }                                 \
            Py_ssize_t j = name##_partition(a, n);                                           \
            /* recurse into the smaller side, loop on the larger: O(log n) stack */          \
            if (j + 1 < n - j - 1) { name##_intro(a, j + 1, depth); a += j + 1; n -= j + 1; } \
            else { name##_intro(a + j + 1, n - j - 1, depth); n = j + 1; }                   \
        }                                                                                    \
        for (Py_ssize_t i = 1; i < n; i++) {                                                 \
            T x = a[i];                                                                      \
            Py_ssize_t j = i;                                                                \
            while (j > 0 && less(x, a[j - 1])) { a[j] = a[j - 1]; j--; }                     \
            a[j] = x;                                                                        \
        }                                                                                    \
    }                                                                                        \
    static void name(T *a, Py_ssize_t n) { name##_intro(a, n, partition_depth(n)); }

/* DEFINE_SELECT(name, T, sorter) defines name(T *a, Py_ssize_t n, Py_ssize_t k), which moves
 * the k first of a (in the order of DEFINE_SORT(sorter, T, less)) to its front, in no order: a
 * caller that keeps the first five hundred of thousands, or orders only those it keeps, need
 * not order the rest. It partitions as the sort does; past the same depth, or on a short
 * range, it sorts the range, so no input costs more than a sort. */
#define DEFINE_SELECT(name, T, sorter)                                                       \
    static void name(T *a, Py_ssize_t n, Py_ssize_t k) {                                     \
        int depth = partition_depth(n);                                                      \
        while (k > 0 && k < n) {                                                             \
            if (n <= 16 || depth-- == 0) { sorter(a, n); return; }                           \
            Py_ssize_t j = sorter##_partition(a, n);                                         \
            /* a[0..j] come before a[j+1..n): go on in the side that holds the k-th */       \
            if (k <= j + 1) n = j + 1;                                                       \
            else { a += j + 1; n -= j + 1; k -= j + 1; }                                     \
        }                                                                                    \
    }

/* log(1 + x) for x >= 0, within a few units in the last place of log1p's: the C library's
 * log1p costs several times its log, and rank takes one per candidate, the learned order
 * three per answer. Where 1 + x rounds, x / (u - 1) corrects the rounding (Goldberg's
 * formula); where it rounds to 1, log1p(x) is x to the last bit. */
static inline double log_1p(double x) {
    double u = 1.0 + x;
    return u == 1.0 ? x : log(u) * (x / (u - 1.0));
}

/* --- slot hashing, salted per process -------------------------------------------------------
 * Every table here is keyed by item and session hashes, and those are public: BLAKE2b of ids a
 * client chooses. Unsalted, an attacker could grind ids whose hashes share a home slot and
 * turn each probe into a walk along one long run. Keys are mixed with a random per-process
 * salt through a bijective finaliser (murmur3's fmix64), so no id can be chosen to collide. */
extern uint64_t kernel_salt;

static inline uint64_t mix(uint64_t key) {
    key ^= kernel_salt;
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ULL;
    key ^= key >> 33;
    return key;
}

void kernel_reseed_salt(void);

/* object tables (tables.c) */
int objects_args(Py_buffer *keys, PyObject *slots, Py_ssize_t *mask);
Py_ssize_t objects_at(const uint64_t *k, Py_ssize_t mask, uint64_t key);

/* Release the n buffers a call parsed ("y*" arguments), as its last step. */
static inline void release_buffers(Py_buffer *const *views, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) PyBuffer_Release(views[i]);
}

/* rank's k best (scoring.c), each with the index of its candidate (-1: none), for the
 * learned order's one call (reorder.c) */
typedef struct { uint64_t item; double weight; Py_ssize_t at; } Scored;
Py_ssize_t rank_best(const uint64_t *c, const double *s, const double *df, Py_ssize_t nc,
                     double sessions, double idf_w, const uint64_t *q, const double *qw,
                     Py_ssize_t nq, double repeat_w, const uint64_t *ex, Py_ssize_t ne,
                     Py_ssize_t k, Scored *best);

/* the frequency table's value of key (tables.c): 0 and *absent set when it holds none */
double frequency_of(const uint64_t *keys, const double *values, Py_ssize_t mask, uint64_t key,
                    int *absent);

/* the sequence model's values of the answers (sequence.c), into out (m of them): 0, or -1
 * with an exception set (a model's arrays of different sizes, or no memory) */
typedef struct {
    Py_buffer table, directory, codes, inputs, last, positions;
} SequenceModel;
int sequence_into(const SequenceModel *model, const uint64_t *session, Py_ssize_t ns,
                  const uint64_t *answers, Py_ssize_t m, double *out);
void sequence_model_release(SequenceModel *model);

extern PyMethodDef kernel_scoring_methods[];
extern PyMethodDef kernel_table_methods[];
extern PyMethodDef kernel_resp_methods[];
extern PyMethodDef kernel_hash_methods[];
extern PyMethodDef kernel_rerank_methods[];
extern PyMethodDef kernel_reorder_methods[];
extern PyMethodDef kernel_sequence_methods[];

#endif
