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

/* y = scale * sigmoid(a x) + shift for n floats, y may be x. With a = 1, in place: the
 * evaluator's tanh layers (tanh(x / 2) = 2 sigmoid(x) - 1, and half of it, sigmoid(x) -
 * 1/2, when their scalings are folded into the weights); with a = 2, scale 2, shift -1:
 * tanh(x) itself, training's tanh layers under autograd (PyTorch's tanh is a 1-ulp
 * transcendental several times slower than one exp; this form is within 2e-7 of tanh).
 * One pass where PyTorch makes two or three; each element is computed alike wherever it
 * sits (the last n % 16 in a vector padded with zeros). sigmoid(u) = 1 / (1 + e^-u); where
 * -u > 88 it is 0 (PyTorch's float32 sigmoid: 0 from -u > 104, below 1e-38 in between).
 */
CLONES void aevb_sigmoid_affine(const float *x, float *y, int64_t n, float a, float scale,
                                float shift) {
    const vf big = splat(88.0f);
    for (int64_t i = 0; i < n; i += LANES) {
        vf v = -a * load(x + i, n - i, 0.0f);
        vf e = exp_(pick(v > big, big, v));
        store(y + i, scale / (1.0f + e) + shift, n - i);
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

/* Standard normal noise, row by row, as PyTorch's CPU generator draws it:
 *
 *   out[r, :] = torch.Generator().manual_seed(seed + r).normal_() of n floats (n >= 16),
 *
 * seed + r taken modulo 2^32 (PyTorch seeds its Mersenne Twister, MT19937, with the low 32
 * bits of a seed). The same draws in the same order: n uniforms (u & 0xffffff) / 2^24 from
 * the generator's 32-bit outputs; the Box-Muller transform on each block of 16 (the first
 * 8 the radii, the last 8 the angles: z_j = sqrt(-2 log(1 - u_j)) cos(2 pi u_{j+8}) and
 * z_{j+8} the same with sin); where n is not a multiple of 16, 16 more uniforms for the
 * last 16 numbers, transformed again. The uniforms are PyTorch's bit for bit; log, sin and
 * cos are this file's polynomials, so a number may differ from PyTorch's in its last bits
 * (aevb/native/__init__.py checks it against PyTorch before use). The Twister's state
 * update and output run 16 words at a time, the transform 16 numbers at a time, where
 * PyTorch draws one word at a time.
 */
#define MT_N 624
#define MT_M 397
typedef uint32_t vu __attribute__((vector_size(4 * LANES)));

static inline __attribute__((always_inline)) vu mt_load(const uint32_t *p) {
    vu v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* one step of the recurrence on 16 words: c ^ twist(a's top bit, b's low 31 bits) */
static inline __attribute__((always_inline)) vu mt_step(vu a, vu b, vu c) {
    vu y = (a & 0x80000000u) | (b & 0x7fffffffu);
    return c ^ (y >> 1) ^ (((vu){0} - (y & 1u)) & 0x9908b0dfu);
}

static inline uint32_t mt_step1(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t y = (a & 0x80000000u) | (b & 0x7fffffffu);
    return c ^ (y >> 1) ^ ((0u - (y & 1u)) & 0x9908b0dfu);
}

/* the next 624 words of state, in place: word i reads i + 1 (not yet updated) and i + 397
 * (old for i < 227, already updated after), so 16 consecutive words update at once */
static inline __attribute__((always_inline)) void mt_twist(uint32_t *s) {
    int i = 0;
    for (; i + LANES <= MT_N - MT_M; i += LANES) {
        vu v = mt_step(mt_load(s + i), mt_load(s + i + 1), mt_load(s + i + MT_M));
        memcpy(s + i, &v, sizeof v);
    }
    for (; i < MT_N - MT_M; i++)
        s[i] = mt_step1(s[i], s[i + 1], s[i + MT_M]);
    for (; i + LANES <= MT_N - 1; i += LANES) {
        vu v = mt_step(mt_load(s + i), mt_load(s + i + 1), mt_load(s + i - (MT_N - MT_M)));
        memcpy(s + i, &v, sizeof v);
    }
    for (; i < MT_N - 1; i++)
        s[i] = mt_step1(s[i], s[i + 1], s[i - (MT_N - MT_M)]);
    s[MT_N - 1] = mt_step1(s[MT_N - 1], s[0], s[MT_M - 1]);
}

/* the 624 words' outputs (tempered) as PyTorch's float uniforms in [0, 1) */
static inline __attribute__((always_inline)) void mt_uniforms(const uint32_t *s, float *u) {
    for (int i = 0; i < MT_N; i += LANES) { /* 624 = 39 * 16 */
        vu y = mt_load(s + i);
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        y ^= y >> 18;
        vf v = __builtin_convertvector((vi)(y & 0xffffffu), vf) * (1.0f / 16777216.0f);
        memcpy(u + i, &v, sizeof v);
    }
}

typedef struct {
    uint32_t s[MT_N];
    float u[MT_N];
    int pos; /* the next of u to hand out; MT_N: none left */
} mt_t;

static inline __attribute__((always_inline)) void mt_seed(mt_t *g, uint32_t seed) {
    g->s[0] = seed;
    for (uint32_t j = 1; j < MT_N; j++)
        g->s[j] = 1812433253u * (g->s[j - 1] ^ (g->s[j - 1] >> 30)) + j;
    g->pos = MT_N;
}

static inline __attribute__((always_inline)) void mt_fill(mt_t *g, float *out, int64_t n) {
    while (n > 0) {
        if (g->pos == MT_N) {
            mt_twist(g->s);
            mt_uniforms(g->s, g->u);
            g->pos = 0;
        }
        int64_t take = MT_N - g->pos < n ? MT_N - g->pos : n;
        memcpy(out, g->u + g->pos, (size_t)take * sizeof(float));
        g->pos += (int)take;
        out += take;
        n -= take;
    }
}

/* log x for x in [2^-24, 1] (normal floats): x = m 2^e with m in [sqrt(1/2), sqrt(2)),
   then log m = f - f^2/2 + f^3 P(f), f = m - 1, with the degree-8 polynomial of Cephes'
   logf (~1 ulp) */
static inline __attribute__((always_inline)) vf log_unit(vf x) {
    vi bits = (vi)x;
    vi e = ((bits >> 23) & 0xff) - 127;
    vf m = (vf)((bits & 0x007fffff) | 0x3f800000); /* [1, 2) */
    vi big = m > 1.41421356f;
    m = pick(big, m * 0.5f, m);
    e = e - big; /* big lanes are -1 */
    vf f = m - 1.0f, f2 = f * f;
    vf p = splat(7.0376836292e-2f);
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    vf ef = __builtin_convertvector(e, vf);
    vf y = f * f2 * p - 0.5f * f2;
    /* e ln 2 in two parts, as Cephes: the large part exact */
    return (f + y + ef * -2.12194440e-4f) + ef * 0.693359375f;
}

/* sin and cos of a in [0, 2 pi]: a = q pi/2 + r with q = round(a 2/pi) (0..4), |r| <= pi/4
   (pi/2 in three parts whose first two have few enough bits that q times them is exact);
   Taylor series to r^11 and r^10 */
static inline __attribute__((always_inline)) void sincos_turn(vf a, vf *s, vf *c) {
    const vf round = splat(12582912.0f);
    vf q = (a * 0.636619772367581343f + round) - round;
    vf r = a - q * 1.5703125f;
    r = r - q * 4.837512969970703125e-4f;
    r = r - q * 7.54978995489188216e-8f;
    vf r2 = r * r;
    vf ps = splat(-1.0f / 39916800.0f);
    ps = ps * r2 + 1.0f / 362880.0f;
    ps = ps * r2 - 1.0f / 5040.0f;
    ps = ps * r2 + 1.0f / 120.0f;
    ps = ps * r2 - 1.0f / 6.0f;
    vf sr = r + r * r2 * ps;
    vf pc = splat(-1.0f / 3628800.0f);
    pc = pc * r2 + 1.0f / 40320.0f;
    pc = pc * r2 - 1.0f / 720.0f;
    pc = pc * r2 + 1.0f / 24.0f;
    pc = pc * r2 - 0.5f;
    vf cr = 1.0f + r2 * pc;
    vi qi = __builtin_convertvector(q, vi) & 3;
    vi swap = (qi & 1) != 0;                      /* q odd: sin and cos trade places */
    vf s0 = pick(swap, cr, sr), c0 = pick(swap, sr, cr);
    *s = pick(qi >= 2, -s0, s0);                  /* q = 2, 3: sin negative */
    *c = pick((qi == 1) | (qi == 2), -c0, c0);    /* q = 1, 2: cos negative */
}

/* Box-Muller on the blocks of 16 uniforms at a and a + 16 (both when two, else the first
 * with the lanes of the second ignored): lanes 0-7 of each vector for block a, 8-15 for
 * block a + 16, taken from overlapping loads (no shuffles) */
static inline __attribute__((always_inline)) void box_muller(float *a, int two) {
    const vi low = (vi){-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    vf x0, x8, x16 = splat(0.0f);
    memcpy(&x0, a, sizeof x0); /* a[0..15] */
    if (two) {
        memcpy(&x8, a + 8, sizeof x8);   /* a[8..23] */
        memcpy(&x16, a + 16, sizeof x16); /* a[16..31] */
    } else {
        x8 = splat(0.0f);
        memcpy(&x8, a + 8, 8 * sizeof(float)); /* a[8..15]; the rest unused */
    }
    vf u1 = pick(low, x0, x8), u2 = pick(low, x8, x16);
    vf r2 = -2.0f * log_unit(1.0f - u1); /* 1 - u in (0, 1] */
    vf rad;
    for (int j = 0; j < LANES; j++)
        rad[j] = __builtin_sqrtf(r2[j]); /* one vector square root (no errno: -fno-math-errno) */
    vf s, c;
    sincos_turn(u2 * 6.28318548202514648f, &s, &c);
    vf zc = rad * c, zs = rad * s;
    memcpy(a, &zc, 8 * sizeof(float));
    memcpy(a + 8, &zs, 8 * sizeof(float));
    if (two) {
        memcpy(a + 16, (float *)&zc + 8, 8 * sizeof(float));
        memcpy(a + 24, (float *)&zs + 8, 8 * sizeof(float));
    }
}

CLONES void aevb_normal_rows(float *out, int64_t rows, int64_t n, uint32_t seed) {
    mt_t g;
    for (int64_t row = 0; row < rows; row++) {
        float *d = out + row * n;
        mt_seed(&g, seed + (uint32_t)row);
        mt_fill(&g, d, n);
        int64_t blocks = n / 16, i = 0;
        for (; i + 1 < blocks; i += 2)
            box_muller(d + 16 * i, 1);
        if (i < blocks)
            box_muller(d + 16 * i, 0);
        if (n % 16) {
            mt_fill(&g, d + n - 16, 16);
            box_muller(d + n - 16, 0);
        }
    }
}
