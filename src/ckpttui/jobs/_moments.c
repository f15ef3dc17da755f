/* One pass of statistics over the raw bytes of a floating tensor (ckpttui verify).
 *
 * moments(buffer, kind, shift) -> (nan, inf, finite, min, max, sum, sumsq)
 *
 *   buffer  little-endian elements (any object with the buffer protocol: a memoryview of the
 *           mmap, bytes); whole elements, any alignment
 *   kind    "f" float32, "e" float16, "b" bfloat16, "d" float64
 *   shift   the reference subtracted before summing (see jobs/tensorstats.py); for the 32- and
 *           16-bit kinds it is first rounded to float32, and the shift used is what Python's
 *           `Stats` passes (already rounded)
 *
 * NaN and Inf are counted; min, max, sum and sum of squares are those of the finite values
 * (sum and sumsq of value - shift, float64). The GIL is released while reading.
 *
 * How: elements are widened to float32 a block at a time (BLOCK, in L1; this also takes care
 * of alignment), then LANES independent accumulators per statistic walk the block, which gcc
 * vectorises at -O3 without any -ffast-math: each lane is its own chain, in order. Lane sums of
 * one block (BLOCK / LANES = 64 values each) are float32 and are added to float64 totals per
 * block, so the rounding stays near that of a 64-term float32 sum. A block whose float32 results
 * are not all finite (a NaN or Inf in it, or squares too large for float32) is read again one
 * element at a time in float64, counting NaN and Inf (`block_exact`): rare, and always right.
 *
 * float64 tensors are summed in float64 one element at a time (rare in checkpoints).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 1024
#define LANES 16
/* Below this magnitude squares approach float32's smallest normal (1.2e-38) and lose digits. */
#define TINY 1e-18f

typedef struct {
    Py_ssize_t nan, inf, finite;
    double min, max, sum, sq;
} Moments;

/* float32 from its bits, and back. */
static inline float f32_of(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint32_t bits_of(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return bits;
}

/* A float16's bits as float32, exactly (subnormals, Inf and NaN too): the exponent and
 * mantissa move 13 bits up and the product with 2**112 rebiases the exponent; an all-ones
 * exponent (Inf, NaN) becomes float32's all-ones instead. Branch-free, so it vectorises. */
static inline float f32_of_f16(uint16_t h)
{
    uint32_t magnitude = (uint32_t)(h & 0x7FFF) << 13;
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    float scaled = f32_of(magnitude) * 0x1p112f;
    uint32_t special = magnitude | 0x7F800000u;
    uint32_t keep = (h & 0x7C00) == 0x7C00 ? 0xFFFFFFFFu : 0u; /* a mask, not a branch */
    return f32_of((special & keep) | (bits_of(scaled) & ~keep) | sign);
}

/* Element i of the buffer as float32, one function per kind (memcpy: any alignment). */
static inline float load_f32(const unsigned char *src, Py_ssize_t i)
{
    float v;
    memcpy(&v, src + 4 * i, 4);
    return v;
}

static inline float load_bf16(const unsigned char *src, Py_ssize_t i)
{
    uint16_t h;
    memcpy(&h, src + 2 * i, 2);
    return f32_of((uint32_t)h << 16);
}

static inline float load_f16_exact(const unsigned char *src, Py_ssize_t i)
{
    uint16_t h;
    memcpy(&h, src + 2 * i, 2);
    return f32_of_f16(h);
}

/* A float16 that is neither Inf nor NaN, in three vector operations: sign-extended to 32 bits
 * and shifted 13 up, the sign lands on bit 31 and exponent and mantissa on bits 13-27 (the
 * mask clears the sign's copies between); * 2**112 rebiases, as in `f32_of_f16`. Inf and NaN
 * come out finite but >= 65536 in magnitude, beyond any finite float16 (65504): a block where
 * min or max gets there is read again with `load_f16_exact`. */
static inline float load_f16(const unsigned char *src, Py_ssize_t i)
{
    int16_t h;
    memcpy(&h, src + 2 * i, 2);
    return f32_of(((uint32_t)(int32_t)h << 13) & 0x8FFFE000u) * 0x1p112f;
}

/* One block, one element at a time in float64: NaN and Inf counted, the rest summed. */
static void block_exact(const float *x, Py_ssize_t n, float shift, Moments *m)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = x[i];
        if (isnan(v)) {
            m->nan++;
        } else if (isinf(v)) {
            m->inf++;
        } else {
            double d = (double)v - (double)shift;
            m->finite++;
            m->min = v < m->min ? v : m->min;
            m->max = v > m->max ? v : m->max;
            m->sum += d;
            m->sq += d * d;
        }
    }
}

/* Where the CPU has them (x86-64 Linux), gcc also compiles the blocks for AVX2 + FMA and picks
 * the version at load time; elsewhere the baseline (SSE2 on x86-64) only. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* One block of up to BLOCK elements: LANES accumulators each for min, max, sum and sum of
 * squares; a block with a NaN, an Inf or a float32 overflow is read again by `block_exact`. */
#define BLOCK_FAST(NAME, LOAD, EXACT, BOUND)                                                                 \
    CLONES static void NAME(const unsigned char *src, Py_ssize_t n, float shift, Moments *m)  \
    {                                                                                          \
        float lo[LANES], hi[LANES], s[LANES], q[LANES];                                        \
        Py_ssize_t whole = n - n % LANES;                                                      \
        for (int j = 0; j < LANES; j++) {                                                      \
            lo[j] = INFINITY;                                                                  \
            hi[j] = -INFINITY;                                                                 \
            s[j] = 0.0f;                                                                       \
            q[j] = 0.0f;                                                                       \
        }                                                                                      \
        for (Py_ssize_t i = 0; i < whole; i += LANES) {                                        \
            for (int j = 0; j < LANES; j++) {                                                  \
                float v = LOAD(src, i + j);                                                    \
                float d = v - shift;                                                           \
                lo[j] = v < lo[j] ? v : lo[j];                                                 \
                hi[j] = v > hi[j] ? v : hi[j];                                                 \
                s[j] += d;                                                                     \
                q[j] += d * d;                                                                 \
            }                                                                                  \
        }                                                                                      \
        float bl = INFINITY, bh = -INFINITY;                                                   \
        double bs = 0.0, bq = 0.0;                                                             \
        for (int j = 0; j < LANES; j++) {                                                      \
            bl = lo[j] < bl ? lo[j] : bl;                                                      \
            bh = hi[j] > bh ? hi[j] : bh;                                                      \
            bs += s[j];                                                                        \
            bq += q[j];                                                                        \
        }                                                                                      \
        for (Py_ssize_t i = whole; i < n; i++) {                                               \
            float v = LOAD(src, i);                                                            \
            double d = (double)v - (double)shift;                                              \
            bl = v < bl ? v : bl;                                                              \
            bh = v > bh ? v : bh;                                                              \
            bs += d;                                                                           \
            bq += d * d;                                                                       \
        }                                                                                      \
        /* A NaN leaves min and max alone (comparisons with it are false) but makes the sums \
         * NaN; an Inf shows in min or max; float32 overflow of a square in an infinite sum;  \
         * values all below TINY would lose their squares to float32 underflow. */           \
        float top = -bl > bh ? -bl : bh;                                                       \
        if (!(isfinite(bs) && isfinite(bq) && bl > -(BOUND) && bh < (BOUND)) ||                 \
            (top > 0.0f && top < TINY)) {                                                      \
            float x[BLOCK];                                                                    \
            for (Py_ssize_t i = 0; i < n; i++)                                                 \
                x[i] = EXACT(src, i);                                                          \
            block_exact(x, n, shift, m);                                                       \
            return;                                                                            \
        }                                                                                      \
        m->finite += n;                                                                        \
        m->min = bl < m->min ? bl : m->min;                                                    \
        m->max = bh > m->max ? bh : m->max;                                                    \
        m->sum += bs;                                                                          \
        m->sq += bq;                                                                           \
    }

/* BOUND: the magnitude from which the fast values are not to be trusted. */
BLOCK_FAST(block_f32, load_f32, load_f32, INFINITY)
BLOCK_FAST(block_bf16, load_bf16, load_bf16, INFINITY)
BLOCK_FAST(block_f16, load_f16, load_f16_exact, 65536.0f)

static void moments_f64(const unsigned char *src, Py_ssize_t n, double shift, Moments *m)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, src + i * 8, 8);
        if (isnan(v)) {
            m->nan++;
        } else if (isinf(v)) {
            m->inf++;
        } else {
            double d = v - shift;
            m->finite++;
            m->min = v < m->min ? v : m->min;
            m->max = v > m->max ? v : m->max;
            m->sum += d;
            m->sq += d * d;
        }
    }
}

static PyObject *moments(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    int kind;
    double shift;
    if (!PyArg_ParseTuple(args, "y*Cd", &buf, &kind, &shift))
        return NULL;
    Py_ssize_t size = kind == 'd' ? 8 : kind == 'f' ? 4 : (kind == 'e' || kind == 'b') ? 2 : 0;
    if (size == 0 || buf.len % size) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, size ? "not whole elements" : "unknown kind");
        return NULL;
    }
    Moments m = {0, 0, 0, INFINITY, -INFINITY, 0.0, 0.0};
    const unsigned char *src = buf.buf;
    Py_ssize_t n = buf.len / size;
    Py_BEGIN_ALLOW_THREADS;
    if (kind == 'd') {
        moments_f64(src, n, shift, &m);
    } else {
        void (*block)(const unsigned char *, Py_ssize_t, float, Moments *) =
            kind == 'f' ? block_f32 : kind == 'b' ? block_bf16 : block_f16;
        float shift32 = (float)shift;
        for (Py_ssize_t at = 0; at < n; at += BLOCK) {
            Py_ssize_t k = n - at < BLOCK ? n - at : BLOCK;
            /* Ask for the block after next while this one is summed (no CRC pass has brought
             * safetensors bytes into cache first): one request per 64-byte line. */
            for (Py_ssize_t b = (at + 2 * BLOCK) * size; b < (at + 3 * BLOCK) * size && b < buf.len; b += 64)
                __builtin_prefetch(src + b);
            block(src + at * size, k, shift32, &m);
        }
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&buf);
    return Py_BuildValue("nnndddd", m.nan, m.inf, m.finite, m.min, m.max, m.sum, m.sq);
}

static PyMethodDef methods[] = {
    {"moments", moments, METH_VARARGS,
     "moments(buffer, kind, shift) -> (nan, inf, finite, min, max, sum, sumsq)\n\n"
     "NaN and Inf counts of little-endian floats (kind 'f', 'e', 'b' or 'd'), and min, max,\n"
     "sum and sum of squares of (value - shift) over the finite ones."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_moments", "Fused one-pass statistics of float tensors (verify).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__moments(void)
{
    return PyModule_Create(&module);
}
