/* aevb's native kernels: one pass over memory where PyTorch's CPU operators make several.
 *
 * Compiled on first use by aevb/native/__init__.py (a C compiler, no PyTorch headers) and
 * called through ctypes; where no compiler is found, or the result fails its check, aevb
 * keeps its PyTorch path. Each kernel treats every row alike, whatever the number of rows
 * or where a row sits, so results do not depend on how the caller batches its rows.
 *
 * Written with GCC/Clang vector extensions (16 floats): lowered to AVX-512, AVX2 or SSE,
 * or to NEON elsewhere. On x86-64 with GCC, one clone per instruction set is compiled and
 * the CPU's is picked when the library is loaded (target_clones), so the compiled library
 * runs on any x86-64 CPU. No -ffast-math: it would set the CPU's flush-to-zero mode for
 * the whole process when the library is loaded.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define LANES 16
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

static inline __attribute__((always_inline)) vf splat(float v) { return (vf){0} + v; }

/* a where mask, else b (mask lanes all ones or all zeros) */
static inline __attribute__((always_inline)) vf pick(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* 16 floats from p, or the last left < 16 of a row and pad in the other lanes */
static inline __attribute__((always_inline)) vf load(const float *p, int64_t left, float pad) {
    vf v;
    if (left >= LANES) {
        memcpy(&v, p, sizeof v); /* a constant size: one vector load, not a call */
    } else {
        v = splat(pad);
        memcpy(&v, p, (size_t)left * sizeof(float));
    }
    return v;
}

static inline __attribute__((always_inline)) void store(float *p, vf v, int64_t left) {
    if (left >= LANES)
        memcpy(p, &v, sizeof v);
    else
        memcpy(p, &v, (size_t)left * sizeof(float));
}

/* e^x for x >= -87 (smaller x gives e^-87), x <= 88: Cody-Waite reduction by ln 2 and the
   degree-7 polynomial of Cephes' expf (~1 ulp) */
static inline __attribute__((always_inline)) vf exp_(vf x) {
    x = pick(x < splat(-87.0f), splat(-87.0f), x);
    const vf round = splat(12582912.0f); /* 1.5 * 2^23: x + round - round rounds to an integer */
    vf n = (x * 1.44269504088896341f + round) - round;
    vf r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    vi two_n = (__builtin_convertvector(n, vi) + 127) << 23; /* 2^n as a float's bits */
    return p * (vf)two_n;
}

/* Bernoulli log-likelihood sums of binary data under logits, row by row:
 *
 *   out[r] = sum_d log sigmoid(u_d) = -sum_d log(1 + e^(a_d)),   a = -u, u = (2 x - 1) l,
 *
 * for logits l = logits[r, :] and data x = the row r % batch of the data (rows are samples
 * of a batch: row r is sample r / batch of example r % batch). ``flip[b, d]`` is the sign
 * bit (0x80000000) where x = 1 and 0 where x = 0, so that a = l with that bit flipped.
 *
 * The factors 1 + e^a >= 1 are multiplied in 16 lanes; after each multiply a lane's
 * exponent moves to an integer and its mantissa stays in [1, 2), so nothing overflows; one
 * log per row. Where some a_d > 80 (a pixel costing over 80 nats: the factor's exponent
 * would leave float range) the row is not computed: out[r] is NaN and it is counted in
 * the return value, for the caller to compute those rows another way; so are rows with a
 * NaN logit. Where a_d < -17 the
 * float32 factor rounds to 1 (log(1 + e^a) < 4e-8 dropped), as PyTorch's float32 sigmoid
 * does.
 */
CLONES int64_t aevb_bernoulli_rows(const float *logits, const int32_t *flip, int64_t rows,
                                   int64_t batch, int64_t d, float *out) {
    int64_t skipped = 0;
    const int64_t full = d / LANES * LANES;
    for (int64_t row = 0; row < rows; row++) {
        const float *l = logits + row * d;
        const int32_t *s = flip + (row % batch) * d;
        vf mant = splat(1.0f);
        vi expo = {0}, beyond = {0};
        for (int64_t i = 0; i < d; i += LANES) {
            vf lv;
            vi sv;
            if (i < full) {
                memcpy(&lv, l + i, sizeof lv);
                memcpy(&sv, s + i, sizeof sv);
            } else { /* the last d % 16: the other lanes get a = -100, a factor of 1 */
                lv = splat(-100.0f);
                sv = (vi){0};
                memcpy(&lv, l + i, (size_t)(d - i) * sizeof(float));
                memcpy(&sv, s + i, (size_t)(d - i) * sizeof(int32_t));
            }
            vf a = (vf)((vi)lv ^ sv);
            beyond |= ~(a <= 80.0f); /* a > 80, or NaN */
            vi bits = (vi)(mant * (1.0f + exp_(a)));
            expo += bits >> 23; /* the biased exponent (the sign bit is 0) */
            mant = (vf)((bits & 0x007fffff) | 0x3f800000);
        }
        double m = 1.0;
        int64_t e = 0;
        int32_t any = 0;
        for (int j = 0; j < LANES; j++) {
            any |= beyond[j];
            m *= (double)mant[j]; /* 16 factors in [1, 2): exact enough, no overflow */
            e += (int64_t)expo[j] - 127 * ((d + LANES - 1) / LANES);
        }
        if (any) {
            out[row] = NAN;
            skipped++;
            continue;
        }
        out[row] = (float)(-(log(m) + (double)e * 0.69314718055994530942));
    }
    return skipped;
}

/* x = scale * sigmoid(x) + shift, in place, for n floats (the evaluator's tanh layers:
 * tanh(x / 2) = 2 sigmoid(x) - 1, and half of it, sigmoid(x) - 1/2, when its scalings are
 * folded into the weights). One pass where PyTorch makes two or three; each element is
 * computed alike wherever it sits (the last n % 16 in a vector padded with zeros).
 * sigmoid(x) = 1 / (1 + e^-x); where -x > 88 it is 0 (PyTorch's float32 sigmoid: 0 from
 * -x > 104, below 1e-38 in between).
 */
CLONES void aevb_sigmoid_affine(float *x, int64_t n, float scale, float shift) {
    const vf big = splat(88.0f);
    for (int64_t i = 0; i < n; i += LANES) {
        vf v = load(x + i, n - i, 0.0f);
        vf e = exp_(pick(-v > big, big, -v));
        store(x + i, scale / (1.0f + e) + shift, n - i);
    }
}

/* The Bernoulli log-likelihood of data x under logits and its gradient, row by row, for
 * any x (the cross-entropy of x in [0, 1]), as training takes it:
 *
 *   out[r] = sum_d x_d l_d - softplus(l_d),   grad[r, d] = x_d - sigmoid(l_d),
 *
 * with l = logits[r, :] and x the row r % batch of x. softplus(l) = max(l, 0) +
 * log(1 + e^-|l|): the linear parts are summed per lane and the factors 1 + e^-|l| in
 * [1, 2] multiplied per lane as in aevb_bernoulli_rows, one log per row. grad may be NULL
 * (the sums only). Any finite logit is fine; a NaN gives a NaN sum.
 */
CLONES void aevb_bernoulli_grad(const float *logits, const float *x, int64_t rows, int64_t batch,
                                int64_t d, float *out, float *grad) {
    for (int64_t row = 0; row < rows; row++) {
        const float *l = logits + row * d;
        const float *xr = x + (row % batch) * d;
        vf mant = splat(1.0f), lin = splat(0.0f);
        vi expo = {0};
        for (int64_t i = 0; i < d; i += LANES) {
            vf lv = load(l + i, d - i, 0.0f), xv = load(xr + i, d - i, 0.0f);
            vi neg = lv < 0.0f;
            vf e = exp_((vf)((vi)lv | (int32_t)0x80000000)); /* e^-|l| in (0, 1] */
            vf one_e = 1.0f + e;
            lin += xv * lv - pick(neg, splat(0.0f), lv);   /* x l - max(l, 0) */
            if (grad) {
                vf r = 1.0f / one_e;
                store(grad + row * d + i, xv - pick(neg, e * r, r), d - i);
            }
            vi bits = (vi)(mant * one_e);
            expo += bits >> 23;
            mant = (vf)((bits & 0x007fffff) | 0x3f800000);
        }
        double m = 1.0, s = 0.0;
        int64_t e = 0;
        for (int j = 0; j < LANES; j++) {
            m *= (double)mant[j];
            s += (double)lin[j];
            e += (int64_t)expo[j] - 127 * ((d + LANES - 1) / LANES);
        }
        /* the padded lanes of the last vector add l = 0, x = 0: 0 and a factor of 2 each */
        e -= (LANES - d % LANES) % LANES;
        out[row] = (float)(s - (log(m) + (double)e * 0.69314718055994530942));
    }
}
