/* One pass of statistics over the raw bytes of a floating tensor (ckpttui verify).
 *
 * moments(buffer, kind, shift) -> (nan, inf, finite, min, max, sum, sumsq)
 *
 *   buffer  elements in native byte order (anything with the buffer protocol: a memoryview of
 *           the mmap, bytes); whole elements, at any alignment
 *   kind    "f" float32, "e" float16, "b" bfloat16, "d" float64
 *   shift   the reference subtracted before summing (jobs/tensorstats.py centres values far from
 *           zero); rounded to float32 for the 32- and 16-bit kinds
 *
 * NaN and Inf are counted; min and max are those of the finite values, sum and sumsq those of
 * the finite values minus shift, in float64. The GIL is released while reading.
 *
 * How: BLOCK elements at a time, LANES independent accumulators per statistic (min, max, sum,
 * sum of squares), each its own chain in element order, so gcc vectorises them at -O3 without
 * -ffast-math. Elements are widened to float32 as they are loaded (bfloat16: a shift; float16:
 * `load_f16`). A lane's sums over one block (BLOCK / LANES = 64 values) are float32 and go into
 * float64 totals per block, so rounding stays near that of a 64-term float32 sum. A block whose
 * float32 results cannot be trusted (a NaN or Inf in it, squares overflowing or underflowing
 * float32) is read again one element at a time in float64 (`block_exact`), counting NaN and
 * Inf: rare, and exact. float64 tensors are read that way throughout (rare in checkpoints).
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

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch(p)
#define INLINE inline __attribute__((always_inline))
#else
#define PREFETCH(p) ((void)(p))
#define INLINE inline
#endif

/* Where the CPU has them (x86-64 Linux), gcc also compiles the blocks for AVX2 + FMA and picks
 * the version at load time; elsewhere the baseline (SSE2 on x86-64) only. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define F16C 1
#include <immintrin.h>
#else
#define CLONES
#endif

/* Element i as float32 (kind a constant where this is inlined); `exact` for float16 converts
 * Inf and NaN as they are, at a price. */
static INLINE float load(const unsigned char *src, Py_ssize_t i, char kind, int exact)
{
    if (kind == 'f')
        return load_f32(src, i);
    if (kind == 'b')
        return load_bf16(src, i);
    return exact ? load_f16_exact(src, i) : load_f16(src, i);
}

/* One block of up to BLOCK elements: LANES accumulators each for min, max, sum and sum of
 * squares; a block whose float32 results cannot be trusted goes to `block_exact`. */
static INLINE void block(const unsigned char *src, Py_ssize_t n, float shift, Moments *m,
                         char kind)
{
    float lo[LANES], hi[LANES], s[LANES], q[LANES];
    Py_ssize_t whole = n - n % LANES;
    for (int j = 0; j < LANES; j++) {
        lo[j] = INFINITY;
        hi[j] = -INFINITY;
        s[j] = 0.0f;
        q[j] = 0.0f;
    }
    for (Py_ssize_t i = 0; i < whole; i += LANES) {
        for (int j = 0; j < LANES; j++) {
            float v = load(src, i + j, kind, 0);
            float d = v - shift;
            lo[j] = v < lo[j] ? v : lo[j];
            hi[j] = v > hi[j] ? v : hi[j];
            s[j] += d;
            q[j] += d * d;
        }
    }
    float bl = INFINITY, bh = -INFINITY;
    double bs = 0.0, bq = 0.0;
    for (int j = 0; j < LANES; j++) {
        bl = lo[j] < bl ? lo[j] : bl;
        bh = hi[j] > bh ? hi[j] : bh;
        bs += s[j];
        bq += q[j];
    }
    for (Py_ssize_t i = whole; i < n; i++) {
        float v = load(src, i, kind, 0);
        double d = (double)v - (double)shift;
        bl = v < bl ? v : bl;
        bh = v > bh ? v : bh;
        bs += d;
        bq += d * d;
    }
    /* A NaN leaves min and max alone (comparisons with it are false) but makes the sums NaN;
     * an Inf shows in min or max (float16's, read by `load_f16`, as >= 65536); a square
     * overflowing float32 makes a sum infinite; values all below TINY lose their squares. */
    float bound = kind == 'e' ? 65536.0f : INFINITY;
    float top = -bl > bh ? -bl : bh;
    if (!(isfinite(bs) && isfinite(bq) && top < bound) || (top > 0.0f && top < TINY)) {
        float x[BLOCK];
        for (Py_ssize_t i = 0; i < n; i++)
            x[i] = load(src, i, kind, 1);
        block_exact(x, n, shift, m);
        return;
    }
    m->finite += n;
    m->min = bl < m->min ? bl : m->min;
    m->max = bh > m->max ? bh : m->max;
    m->sum += bs;
    m->sq += bq;
}

/* `block` compiled once per kind (and per CPU level, CLONES), and once more without the
 * subtraction of a shift, as most pieces are summed (x - 0.0f is x: gcc drops it). */
CLONES static void block_f32(const unsigned char *src, Py_ssize_t n, float shift, Moments *m)
{
    if (shift == 0.0f)
        block(src, n, 0.0f, m, 'f');
    else
        block(src, n, shift, m, 'f');
}

CLONES static void block_bf16(const unsigned char *src, Py_ssize_t n, float shift, Moments *m)
{
    if (shift == 0.0f)
        block(src, n, 0.0f, m, 'b');
    else
        block(src, n, shift, m, 'b');
}

CLONES static void block_f16(const unsigned char *src, Py_ssize_t n, float shift, Moments *m)
{
    if (shift == 0.0f)
        block(src, n, 0.0f, m, 'e');
    else
        block(src, n, shift, m, 'e');
}

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

typedef void (*Reader)(const unsigned char *, Py_ssize_t, float, Moments *);
static Reader read_f16 = block_f16;

#ifdef F16C
/* float16 where the CPU has F16C: widened 8 at a time by vcvtph2ps into a float32 block that
 * `block` then reads. Exact for every value, and no float32 subnormal is ever multiplied:
 * `load_f16` multiplies one per float16 subnormal (|x| < 6.1e-5, common in weights), which x86
 * CPUs handle in microcode at ~100 times the cost. */
__attribute__((target("arch=x86-64-v3"))) static void block_f16c(const unsigned char *src,
                                                                 Py_ssize_t n, float shift,
                                                                 Moments *m)
{
    float x[BLOCK];
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    for (; i < n; i++)
        x[i] = load_f16_exact(src, i);
    if (shift == 0.0f)
        block((const unsigned char *)x, n, 0.0f, m, 'f');
    else
        block((const unsigned char *)x, n, shift, m, 'f');
}
#endif

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
        Reader read = kind == 'f' ? block_f32 : kind == 'b' ? block_bf16 : read_f16;
        float shift32 = (float)shift;
        for (Py_ssize_t at = 0; at < n; at += BLOCK) {
            Py_ssize_t k = n - at < BLOCK ? n - at : BLOCK;
            /* Ask for the block after next while this one is summed (safetensors bytes have
             * no CRC pass to bring them into cache first): one request per 64-byte line. */
            Py_ssize_t next = (at + 2 * BLOCK) * size, end = next + BLOCK * size;
            for (Py_ssize_t b = next; b < end && b < buf.len; b += 64)
                PREFETCH(src + b);
            read(src + at * size, k, shift32, &m);
        }
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&buf);
    return Py_BuildValue("nnndddd", m.nan, m.inf, m.finite, m.min, m.max, m.sum, m.sq);
}

/* For the tests: read float16 with F16C where the CPU has it (True), or as CPUs without it do
 * (False); returns whether F16C is used. */
static PyObject *use_f16c(PyObject *self, PyObject *flag)
{
    read_f16 = block_f16;
#ifdef F16C
    if (PyObject_IsTrue(flag) && __builtin_cpu_supports("f16c") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        read_f16 = block_f16c;
    return PyBool_FromLong(read_f16 == block_f16c);
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"use_f16c", use_f16c, METH_O,
     "use_f16c(flag) -> bool\n\nRead float16 with the F16C instructions where the CPU has them "
     "(the default), or without; whether they are used."},
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
    Py_XDECREF(use_f16c(NULL, Py_True)); /* F16C where the CPU has it */
    return PyModule_Create(&module);
}
