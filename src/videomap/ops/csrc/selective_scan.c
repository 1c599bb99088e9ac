/*
 * CPU kernels for the Mamba-1 (S6) selective scan used by videomap.ops.
 *
 * Plain C (GNU vector extensions + OpenMP), no Python or torch headers, so it
 * compiles in about a second on first use; Python loads it with ctypes and
 * passes raw data pointers of contiguous fp32 tensors.
 *
 * Layouts (fp32, contiguous; NP = state size padded to a multiple of VW with
 * A = B = C = 0 in the padding, which keeps padded states at exactly zero):
 *   u, delta, z, out, dout, du, ddelta, dz : (nbatch, E, L)
 *   A, dA                                  : (E, NP)
 *   Bt, Ct, dBt, dCt                       : (nbatch, L, NP)  time-major, so the state
 *                                            loop of one step reads contiguous memory
 *   D, delta_bias, dD, ddelta_bias         : (E,)
 *   carries                                : (nbatch, E, nchunks, NP) state at the end
 *                                            of every CHUNK-step chunk (saved by the
 *                                            forward, read by the backward)
 *   last, dlast                            : (nbatch, E, NP)
 *
 * Numerics.  The recurrence only multiplies decay factors exp(dt*A) in (0, 1];
 * nothing is ever divided by a cumulative decay, so a large dt cannot overflow.
 * exp is a branch-free polynomial (Cody-Waite reduction, degree-6 fit, about
 * 1-2 ulp) evaluated VW lanes at a time; that vector exp is what makes the
 * kernel much faster than a scalar libm loop.  The file is compiled without
 * -ffast-math, so inf and NaN propagate as in IEEE arithmetic; the only
 * reassociation is the explicit trees used for sums over the state index.
 * Per-channel sums over time (dA, dD, d delta_bias) are accumulated per chunk in
 * fp32 and across chunks in fp64.
 *
 * Work split.  Threads own disjoint blocks of channels.  Loops are tiled in
 * time: a thread runs TILE_CHUNKS chunks (1024 steps) of one channel, then the
 * same tile of its next channel, so the tile's B/C rows (128 KB) stay in L2
 * while each channel's own rows are read sequentially (prefetch-friendly).
 * The backward recomputes the states of one CHUNK from the carry saved by the
 * forward into a small per-thread buffer, then runs the reverse adjoint over
 * that chunk.  dB and dC (sums over channels) accumulate into per-thread
 * (L, NP) buffers that are added up once per batch element, so no per-channel
 * (E, L, N) buffer ever exists.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define VW 16     /* lanes of one state vector */
#define CHUNK 64  /* time steps per chunk (multiple of VW) */
#define NBMAX 16  /* at most NBMAX * VW = 256 states */
#define TILE_CHUNKS 16 /* loop tiling: a thread runs TILE_CHUNKS chunks of one channel before the next */
#define ABI_VERSION 2

typedef float vf __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VW * sizeof(int32_t))));

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE vf vsplat(float x) {
    vf v;
    for (int i = 0; i < VW; i++) v[i] = x;
    return v;
}
ALWAYS_INLINE vf loadu(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
ALWAYS_INLINE void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* first n (< VW allowed) elements of p, zeros elsewhere */
ALWAYS_INLINE vf load_n(const float *p, int n) {
    if (n == VW) return loadu(p);
    float t[VW] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return loadu(t);
}
ALWAYS_INLINE void store_n(float *p, vf v, int n) {
    if (n == VW) {
        storeu(p, v);
    } else {
        float t[VW];
        storeu(t, v);
        memcpy(p, t, (size_t)n * sizeof(float));
    }
}
/* m ? a : b, lane-wise (m lanes are all-ones or all-zeros) */
ALWAYS_INLINE vf vselect(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }

/* exp(x): Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, a degree-6 polynomial
 * for exp(r) (coefficients fitted for minimal relative error on that interval,
 * about 2e-8 before rounding), then scaling by 2^k in the exponent bits.
 * No clamping is needed on the fast path: lanes outside the representable range
 * compute garbage that the two final selects replace (x < ln(FLT_MIN) -> 0,
 * x > ln(FLT_MAX) -> +inf); NaN fails both tests and propagates through r. */
ALWAYS_INLINE vf vexp(vf x) {
    const vf magic = vsplat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf t = x * 1.44269504088896341f + magic;
    vf k = t - magic;
    vi kbits = ((vi)t - (vi)magic) << 23; /* k, moved to the exponent field */
    vf r = x - k * 0.693145751953125f;    /* ln2 high part: exact product for |k| < 2^12 */
    r = r - k * 1.428606765330187045e-06f; /* ln2 low part */
    vf p = vsplat(1.3836845e-3f);
    p = p * r + 8.374816e-3f;
    p = p * r + 4.1668225e-2f;
    p = p * r + 1.666642e-1f;
    p = p * r + 4.999999e-1f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* p * 2^k by adding k to p's exponent: unlike multiplying by a built 2^k this also
     * covers k = 128 (p < 1 there); where it would leave the normal range, the
     * selects below take over. */
    vf res = (vf)((vi)p + kbits);
    res = (vf)((vi)res & ~(x < -87.336544f));
    return vselect(x > 88.722839f, vsplat(__builtin_inff()), res);
}

/* log(1 + t) for t in [0, 1] via 2*atanh(s), s = t / (2 + t) <= 1/3; accurate in
 * relative terms also for tiny t (no cancellation in 1 + t). */
ALWAYS_INLINE vf vlog1p_unit(vf t) {
    vf s = t / (2.0f + t);
    vf s2 = s * s;
    vf p = vsplat(1.0f / 17.0f);
    p = p * s2 + 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

/* softplus with torch's threshold: x for x > 20, else log(1 + exp(x)) */
ALWAYS_INLINE vf vsoftplus(vf x) {
    vf ax = (vf)((vi)x & 0x7fffffff);
    vf pos = vselect(x > 0.0f, x, vsplat(0.0f));
    vf r = pos + vlog1p_unit(vexp(-ax));
    return vselect(x > 20.0f, x, r);
}

ALWAYS_INLINE vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

/* sum of the VW lanes (pairwise tree, a fixed order) */
ALWAYS_INLINE float vhsum(vf v) {
#if VW == 16
    v = v + __builtin_shuffle(v, (vi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    v = v + __builtin_shuffle(v, (vi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
    v = v + __builtin_shuffle(v, (vi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    v = v + __builtin_shuffle(v, (vi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
    return v[0];
#else
    float s = 0.0f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
#endif
}

/* Row sums of a 16 x 16 block (rows contiguous, 16 floats apart): lane i of the
 * result is the sum of row i.  A transpose-and-add tree, ~3 vector ops per row
 * instead of the ~8 of one horizontal sum per row. */
ALWAYS_INLINE vf rowsum16(const float *m) {
#if VW == 16
    const vi lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const vi hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const vi lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const vi hi4 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    const vi lo2 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const vi hi2 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
    const vi ev = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const vi od = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
    vf s8[8], s4[4], s2[2];
    for (int i = 0; i < 8; i++) {
        vf a = loadu(m + (2 * i) * VW), b = loadu(m + (2 * i + 1) * VW);
        s8[i] = __builtin_shuffle(a, b, lo8) + __builtin_shuffle(a, b, hi8);
    }
    for (int i = 0; i < 4; i++)
        s4[i] = __builtin_shuffle(s8[2 * i], s8[2 * i + 1], lo4) + __builtin_shuffle(s8[2 * i], s8[2 * i + 1], hi4);
    for (int i = 0; i < 2; i++)
        s2[i] = __builtin_shuffle(s4[2 * i], s4[2 * i + 1], lo2) + __builtin_shuffle(s4[2 * i], s4[2 * i + 1], hi2);
    return __builtin_shuffle(s2[0], s2[1], ev) + __builtin_shuffle(s2[0], s2[1], od);
#else
    vf r;
    for (int i = 0; i < VW; i++) r[i] = vhsum(loadu(m + i * VW));
    return r;
#endif
}

/* Team size and this thread's index inside an OpenMP parallel region (1 and 0 without OpenMP). */
#ifdef _OPENMP
#define TEAM_POSITION(T, tid) const int T = omp_get_num_threads(), tid = omp_get_thread_num()
#else
#define TEAM_POSITION(T, tid) const int T = 1, tid = 0
#endif

static void *xalloc(size_t nbytes) {
    size_t n = (nbytes + 63) / 64 * 64;
    return aligned_alloc(64, n ? n : 64);
}

static int thread_count(int requested) {
#ifdef _OPENMP
    return requested > 0 ? requested : omp_get_max_threads();
#else
    (void)requested;
    return 1;
#endif
}

/* Per time step of a chunk: dt after bias/softplus and dt*u.  Also the softplus
 * derivative and gate terms when asked for (backward). */
ALWAYS_INLINE void prep_chunk(int K, const float *u, const float *dl, const float *zr, const float *dout,
                              float bias, int softplus, float *dt, float *dtu, float *sg, float *dy,
                              float *dgz) {
    for (int k = 0; k < K; k += VW) {
        const int m = K - k < VW ? K - k : VW;
        vf x = load_n(dl + k, m) + bias;
        vf uu = load_n(u + k, m);
        vf d = softplus ? vsoftplus(x) : x;
        storeu(dt + k, d);
        storeu(dtu + k, d * uu);
        if (sg) storeu(sg + k, softplus ? vselect(x > 20.0f, vsplat(1.0f), vsigmoid(x)) : vsplat(1.0f));
        if (dy) {
            vf go = load_n(dout + k, m);
            if (zr) {
                vf zz = load_n(zr + k, m);
                vf sz = vsigmoid(zz);
                storeu(dy + k, go * (zz * sz));
                storeu(dgz + k, go * (sz * (1.0f + zz * (1.0f - sz))));
            } else {
                storeu(dy + k, go);
            }
        }
    }
}

/* Forward over one chunk of K steps for one (batch, channel) row. */
ALWAYS_INLINE void fwd_chunk(const int nb, const int K, const float *u, const float *dl, const float *zr,
                             float bias, float Dv, int softplus, const float *A, const float *Bt,
                             const float *Ct, float *out, float *state) {
    const int NP = nb * VW;
    float dt[CHUNK] __attribute__((aligned(64)));
    float dtu[CHUNK] __attribute__((aligned(64)));
    float prod[CHUNK * VW] __attribute__((aligned(64))); /* per step: C * h summed over blocks */
    prep_chunk(K, u, dl, NULL, NULL, bias, softplus, dt, dtu, NULL, NULL, NULL);
    vf Av[NBMAX], h[NBMAX];
    for (int j = 0; j < nb; j++) {
        Av[j] = loadu(A + j * VW);
        h[j] = loadu(state + j * VW);
    }
    for (int k = 0; k < K; k++) {
        const float *bk = Bt + (size_t)k * NP, *ck = Ct + (size_t)k * NP;
        vf acc = vsplat(0.0f);
        for (int j = 0; j < nb; j++) {
            vf a = vexp(dt[k] * Av[j]);
            h[j] = a * h[j] + dtu[k] * loadu(bk + j * VW);
            acc += loadu(ck + j * VW) * h[j];
        }
        storeu(prod + k * VW, acc);
    }
    for (int j = 0; j < nb; j++) storeu(state + j * VW, h[j]);
    /* y for VW steps at a time: row sums of the stored products, then D*u and the gate */
    for (int k = K; k % VW; k++) storeu(prod + k * VW, vsplat(0.0f));
    for (int k = 0; k < K; k += VW) {
        const int m = K - k < VW ? K - k : VW;
        vf uu = load_n(u + k, m);
        vf o = rowsum16(prod + k * VW) + Dv * uu;
        if (zr) {
            vf zz = load_n(zr + k, m);
            o = o * (zz * vsigmoid(zz));
        }
        store_n(out + k, o, m);
    }
}

static void fwd_chunk_1(int K, const float *u, const float *dl, const float *zr, float bias, float Dv,
                        int softplus, const float *A, const float *Bt, const float *Ct, float *out,
                        float *state) {
    fwd_chunk(1, K, u, dl, zr, bias, Dv, softplus, A, Bt, Ct, out, state);
}
static void fwd_chunk_n(int nb, int K, const float *u, const float *dl, const float *zr, float bias,
                        float Dv, int softplus, const float *A, const float *Bt, const float *Ct, float *out,
                        float *state) {
    fwd_chunk(nb, K, u, dl, zr, bias, Dv, softplus, A, Bt, Ct, out, state);
}

int vm_scan_abi_version(void) { return ABI_VERSION; }
int vm_scan_chunk(void) { return CHUNK; }

/* bf16 <-> fp32 for the bf16-in/out forward (round to nearest even, NaN kept quiet: the
 * same results as torch's conversions). */
ALWAYS_INLINE float bf16_to_f32(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}
ALWAYS_INLINE uint16_t f32_to_bf16(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

/* Forward.  carries and last may be NULL.  bf16_io: u, delta, z and out are bf16 (uint16)
 * rows, converted a chunk at a time into fp32 buffers on the stack, so a bf16 model feeds the
 * scan without full-size fp32 copies; the scan itself is fp32 either way.  Returns 0, or a
 * negative code. */
/* The forward for channels [e0, e1) of every batch element, on one thread; ``state`` holds E rows
 * of NP floats, of which this call uses rows e0..e1-1 (callers running ranges in parallel share
 * it).  NP must be a valid padded state size (checked by the callers). */
static void scan_fwd_rows(const void *u, const void *delta, const float *A, const float *Bt, const float *Ct,
                          const float *D, const void *z, const float *delta_bias, int softplus, int64_t nbatch,
                          int64_t E, int64_t L, int64_t NP, void *out, float *last, float *carries, int bf16_io,
                          int64_t e0, int64_t e1, float *state) {
    const int nb = (int)(NP / VW);
    const int64_t nch = (L + CHUNK - 1) / CHUNK;
    {
        float ub[CHUNK], db[CHUNK], zb[CHUNK], ob[CHUNK]; /* fp32 rows of one chunk (bf16_io) */
        for (int64_t b = 0; b < nbatch; b++) {
            memset(state + e0 * NP, 0, (size_t)(e1 - e0) * NP * sizeof(float));
            for (int64_t t0 = 0; t0 < nch; t0 += TILE_CHUNKS) {
                const int64_t t1 = t0 + TILE_CHUNKS < nch ? t0 + TILE_CHUNKS : nch;
                for (int64_t e = e0; e < e1; e++) {
                    const float bias = delta_bias ? delta_bias[e] : 0.0f;
                    const float Dv = D ? D[e] : 0.0f;
                    float *st = state + e * NP;
                    for (int64_t c = t0; c < t1; c++) {
                        const int64_t l0 = c * CHUNK;
                        const int K = (int)(L - l0 < CHUNK ? L - l0 : CHUNK);
                        const float *bt = Bt + (b * L + l0) * NP, *ct = Ct + (b * L + l0) * NP;
                        const size_t row = (size_t)((b * E + e) * L + l0);
                        const float *ur, *dr, *zr;
                        float *orow;
                        if (bf16_io) {
                            const uint16_t *u16 = (const uint16_t *)u + row, *d16 = (const uint16_t *)delta + row;
                            for (int k = 0; k < K; k++) {
                                ub[k] = bf16_to_f32(u16[k]);
                                db[k] = bf16_to_f32(d16[k]);
                            }
                            if (z) {
                                const uint16_t *z16 = (const uint16_t *)z + row;
                                for (int k = 0; k < K; k++) zb[k] = bf16_to_f32(z16[k]);
                            }
                            ur = ub, dr = db, zr = z ? zb : NULL, orow = ob;
                        } else {
                            ur = (const float *)u + row, dr = (const float *)delta + row;
                            zr = z ? (const float *)z + row : NULL;
                            orow = (float *)out + row;
                        }
                        if (nb == 1)
                            fwd_chunk_1(K, ur, dr, zr, bias, Dv, softplus, A + e * NP, bt, ct, orow, st);
                        else
                            fwd_chunk_n(nb, K, ur, dr, zr, bias, Dv, softplus, A + e * NP, bt, ct, orow, st);
                        if (bf16_io) {
                            uint16_t *o16 = (uint16_t *)out + row;
                            for (int k = 0; k < K; k++) o16[k] = f32_to_bf16(ob[k]);
                        }
                        if (carries) memcpy(carries + ((b * E + e) * nch + c) * NP, st, NP * sizeof(float));
                    }
                }
            }
            if (last)
                memcpy(last + (b * E + e0) * NP, state + e0 * NP, (size_t)(e1 - e0) * NP * sizeof(float));
        }
    }
}

static int scan_fwd(const void *u, const void *delta, const float *A, const float *Bt, const float *Ct,
                    const float *D, const void *z, const float *delta_bias, int softplus, int64_t nbatch,
                    int64_t E, int64_t L, int64_t NP, void *out, float *last, float *carries, int nthreads,
                    int bf16_io) {
    if (NP <= 0 || NP % VW != 0 || NP / VW > NBMAX) return -2;
    float *state = xalloc((size_t)(E > 0 ? E : 1) * NP * sizeof(float));
    if (!state) return -1;
    const int nt = thread_count(nthreads);
    (void)nt;
#pragma omp parallel num_threads(nt)
    {
        TEAM_POSITION(T, tid);
        scan_fwd_rows(u, delta, A, Bt, Ct, D, z, delta_bias, softplus, nbatch, E, L, NP, out, last, carries,
                      bf16_io, E * tid / T, E * (tid + 1) / T, state);
    }
    free(state);
    return 0;
}

int vm_scan_fwd(const float *u, const float *delta, const float *A, const float *Bt, const float *Ct,
                const float *D, const float *z, const float *delta_bias, int softplus, int64_t nbatch,
                int64_t E, int64_t L, int64_t NP, float *out, float *last, float *carries, int nthreads) {
    return scan_fwd(u, delta, A, Bt, Ct, D, z, delta_bias, softplus, nbatch, E, L, NP, out, last, carries,
                    nthreads, 0);
}

/* The same with bf16 u, delta, z and out (inference under bf16 autocast). */
int vm_scan_fwd_bf16(const uint16_t *u, const uint16_t *delta, const float *A, const float *Bt, const float *Ct,
                     const float *D, const uint16_t *z, const float *delta_bias, int softplus, int64_t nbatch,
                     int64_t E, int64_t L, int64_t NP, uint16_t *out, float *last, float *carries, int nthreads) {
    return scan_fwd(u, delta, A, Bt, Ct, D, z, delta_bias, softplus, nbatch, E, L, NP, out, last, carries,
                    nthreads, 1);
}

/* Causal depthwise convolution + SiLU for inference, one pass over memory:
 * out[b,e,l] = silu(bias[e] + sum_j w[e,j] * x[b,e,l-(K-1)+j]) with zeros before the start.
 * reverse: the convolution runs over the time-reversed row and its output is stored in that
 * reversed order (what flip -> conv -> silu gives), so the backward scan direction needs no
 * separate flip of its input.  x and out are fp32, or bf16 when bf16_io.  K <= 16. */
int vm_conv_silu(const void *x, const float *w, const float *bias, int64_t nrows_b, int64_t E, int64_t L,
                 int K, void *out, int bf16_io, int reverse, int nthreads) {
    if (K < 1 || K > 16 || L < 0) return -2;
    const int nt = thread_count(nthreads);
    (void)nt;
    int err = 0;
#pragma omp parallel num_threads(nt)
    {
        /* one row in fp32 with 15 zeros of history in front and room for a full last vector */
        float *row = xalloc((size_t)(L + 15 + VW) * sizeof(float));
        if (!row) {
#pragma omp atomic write
            err = -1;
        } else {
            float *xin = row + 15;
            memset(row, 0, 15 * sizeof(float));
            memset(xin + L, 0, VW * sizeof(float)); /* read by the last vector, never stored */
            float yv[VW];
#pragma omp for schedule(static)
            for (int64_t r = 0; r < nrows_b * E; r++) {
                const int64_t e = r % E;
                const size_t off = (size_t)r * (size_t)L;
                for (int64_t l = 0; l < L; l++) {
                    const int64_t src = reverse ? L - 1 - l : l;
                    xin[l] = bf16_io ? bf16_to_f32(((const uint16_t *)x)[off + src]) : ((const float *)x)[off + src];
                }
                const float *we = w + e * K;
                const float be = bias ? bias[e] : 0.0f;
                for (int64_t l = 0; l < L; l += VW) {
                    const int m = L - l < VW ? (int)(L - l) : VW;
                    vf acc = vsplat(be);
                    for (int j = 0; j < K; j++) acc += we[j] * loadu(xin + l - (K - 1) + j);
                    storeu(yv, acc * vsigmoid(acc));
                    if (bf16_io) {
                        uint16_t *o = (uint16_t *)out + off + l;
                        for (int i = 0; i < m; i++) o[i] = f32_to_bf16(yv[i]);
                    } else {
                        memcpy((float *)out + off + l, yv, (size_t)m * sizeof(float));
                    }
                }
            }
            free(row);
        }
    }
    return err;
}

/* Backward over one chunk for one (batch, channel) row: recompute the chunk's
 * states from the carry `hin` (NULL = zero state), then walk the adjoint from
 * the end of the chunk to its start.  gst holds A_bar_{l+1} * g_{l+1} flowing in
 * from the right and receives the value for the chunk to the left. */
ALWAYS_INLINE void bwd_chunk(const int nb, const int K, const float *u, const float *dl, const float *zr,
                             const float *dout, float bias, float Dv, int softplus, const float *A,
                             const float *Bt, const float *Ct, const float *hin, float *gst, double *accA,
                             double *accD, double *accBias, float *Hbuf, float *Abuf, float *dBc, float *dCc,
                             float *du, float *ddl, float *dzr) {
    const int NP = nb * VW;
    float dt[CHUNK] __attribute__((aligned(64)));
    float dtu[CHUNK] __attribute__((aligned(64)));
    float sg[CHUNK] __attribute__((aligned(64)));
    float dy[CHUNK] __attribute__((aligned(64)));
    float dgz[CHUNK] __attribute__((aligned(64)));
    float prod[CHUNK * VW] __attribute__((aligned(64))); /* per step: C * h (for dz) */
    float gbp[CHUNK * VW] __attribute__((aligned(64)));  /* per step: g * B */
    float sap[CHUNK * VW] __attribute__((aligned(64)));  /* per step: dL/dA_bar * A_bar * h_prev * A */
    prep_chunk(K, u, dl, zr, dout, bias, softplus, dt, dtu, sg, dy, dgz);

    vf Av[NBMAX], h[NBMAX], h0[NBMAX];
    for (int j = 0; j < nb; j++) {
        Av[j] = loadu(A + j * VW);
        h0[j] = hin ? loadu(hin + j * VW) : vsplat(0.0f);
        h[j] = h0[j];
    }
    /* recompute a_bar and h of this chunk */
    for (int k = 0; k < K; k++) {
        const size_t o = (size_t)k * NP;
        vf acc = vsplat(0.0f);
        for (int j = 0; j < nb; j++) {
            vf a = vexp(dt[k] * Av[j]);
            storeu(Abuf + o + j * VW, a);
            h[j] = a * h[j] + dtu[k] * loadu(Bt + o + j * VW);
            storeu(Hbuf + o + j * VW, h[j]);
            if (zr) acc += loadu(Ct + o + j * VW) * h[j];
        }
        if (zr) storeu(prod + k * VW, acc);
    }

    /* reverse adjoint: g_k = C_k dy_k + a_bar_{k+1} g_{k+1} */
    vf gp[NBMAX], aA[NBMAX];
    for (int j = 0; j < nb; j++) {
        gp[j] = loadu(gst + j * VW);
        aA[j] = vsplat(0.0f);
    }
    for (int k = K - 1; k >= 0; k--) {
        const size_t o = (size_t)k * NP;
        vf gB = vsplat(0.0f), sA = vsplat(0.0f);
        for (int j = 0; j < nb; j++) {
            const size_t oj = o + j * VW;
            vf g = loadu(Ct + oj) * dy[k] + gp[j];
            vf hp = k > 0 ? loadu(Hbuf + oj - NP) : h0[j];
            vf a = loadu(Abuf + oj);
            gB += g * loadu(Bt + oj);
            vf dAh = g * a * hp;
            aA[j] += dAh * dt[k];
            sA += dAh * Av[j];
            storeu(dBc + oj, loadu(dBc + oj) + g * dtu[k]);
            storeu(dCc + oj, loadu(dCc + oj) + dy[k] * loadu(Hbuf + oj));
            gp[j] = a * g;
        }
        storeu(gbp + k * VW, gB);
        storeu(sap + k * VW, sA);
    }
    for (int j = 0; j < nb; j++) {
        storeu(gst + j * VW, gp[j]);
        for (int i = 0; i < VW; i++) accA[j * VW + i] += (double)aA[j][i];
    }

    /* per-step scalars, VW steps at a time; padded lanes are zero and add nothing */
    for (int k = K; k % VW; k++) {
        storeu(gbp + k * VW, vsplat(0.0f));
        storeu(sap + k * VW, vsplat(0.0f));
        storeu(prod + k * VW, vsplat(0.0f));
    }
    vf vD = vsplat(0.0f), vBias = vsplat(0.0f);
    for (int k = 0; k < K; k += VW) {
        const int m = K - k < VW ? K - k : VW;
        vf gb = rowsum16(gbp + k * VW), sa = rowsum16(sap + k * VW);
        vf uu = load_n(u + k, m), dyv = loadu(dy + k), dtv = loadu(dt + k);
        store_n(du + k, Dv * dyv + dtv * gb, m);
        vf dr = (uu * gb + sa) * loadu(sg + k);
        store_n(ddl + k, dr, m);
        vBias += dr;
        vD += dyv * uu;
        if (zr) store_n(dzr + k, (rowsum16(prod + k * VW) + Dv * uu) * loadu(dgz + k), m);
    }
    *accD += vhsum(vD);
    *accBias += vhsum(vBias);
}

static void bwd_chunk_1(int K, const float *u, const float *dl, const float *zr, const float *dout, float bias,
                        float Dv, int softplus, const float *A, const float *Bt, const float *Ct,
                        const float *hin, float *gst, double *accA, double *accD, double *accBias,
                        float *Hbuf, float *Abuf, float *dBc, float *dCc, float *du, float *ddl, float *dzr) {
    bwd_chunk(1, K, u, dl, zr, dout, bias, Dv, softplus, A, Bt, Ct, hin, gst, accA, accD, accBias, Hbuf, Abuf,
              dBc, dCc, du, ddl, dzr);
}
static void bwd_chunk_n(int nb, int K, const float *u, const float *dl, const float *zr, const float *dout,
                        float bias, float Dv, int softplus, const float *A, const float *Bt, const float *Ct,
                        const float *hin, float *gst, double *accA, double *accD, double *accBias,
                        float *Hbuf, float *Abuf, float *dBc, float *dCc, float *du, float *ddl, float *dzr) {
    bwd_chunk(nb, K, u, dl, zr, dout, bias, Dv, softplus, A, Bt, Ct, hin, gst, accA, accD, accBias, Hbuf,
              Abuf, dBc, dCc, du, ddl, dzr);
}

/* Backward.  carries come from vm_scan_fwd; dlast and z may be NULL (dz is
 * then untouched).  Every other output is fully written.  Returns 0, or a
 * negative code. */
int vm_scan_bwd(const float *u, const float *delta, const float *A, const float *Bt, const float *Ct,
                const float *D, const float *z, const float *delta_bias, int softplus, int64_t nbatch,
                int64_t E, int64_t L, int64_t NP, const float *carries, const float *dout, const float *dlast,
                float *du, float *ddelta, float *dA, float *dBt, float *dCt, float *dD, float *dz,
                float *ddelta_bias, int nthreads) {
    if (NP <= 0 || NP % VW != 0 || NP / VW > NBMAX) return -2;
    const int nb = (int)(NP / VW);
    const int64_t nch = (L + CHUNK - 1) / CHUNK;
    const int nt = thread_count(nthreads);
    const size_t LN = (size_t)L * NP;
    const size_t Ep = (size_t)(E > 0 ? E : 1);
    float *part = xalloc((size_t)nt * 2 * (LN ? LN : 1) * sizeof(float));
    float *gstate = xalloc(Ep * NP * sizeof(float));
    double *accA = calloc(Ep * NP, sizeof(double));
    double *accD = calloc(Ep, sizeof(double));
    double *accBias = calloc(Ep, sizeof(double));
    int failed = !part || !gstate || !accA || !accD || !accBias;
    if (!failed) {
#pragma omp parallel num_threads(nt)
        {
            TEAM_POSITION(T, tid);
            const int64_t e0 = E * tid / T, e1 = E * (tid + 1) / T;
            const size_t cbytes = (size_t)CHUNK * NP * sizeof(float);
            float *Hbuf = xalloc(cbytes), *Abuf = xalloc(cbytes);
            if (!Hbuf || !Abuf) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp barrier
            int bad;
#pragma omp atomic read
            bad = failed;
            if (!bad) {
                float *myB = part + (size_t)tid * 2 * LN, *myC = myB + LN;
                for (int64_t b = 0; b < nbatch; b++) {
                    for (int64_t e = e0; e < e1; e++) {
                        float *g = gstate + e * NP;
                        if (dlast)
                            memcpy(g, dlast + (b * E + e) * NP, NP * sizeof(float));
                        else
                            memset(g, 0, NP * sizeof(float));
                    }
                    for (int64_t t1 = nch; t1 > 0; t1 -= TILE_CHUNKS) {
                        const int64_t t0 = t1 - TILE_CHUNKS > 0 ? t1 - TILE_CHUNKS : 0;
                        const int64_t tl0 = t0 * CHUNK, tl1 = t1 * CHUNK < L ? t1 * CHUNK : L;
                        float *tB = myB + tl0 * NP, *tC = myC + tl0 * NP;
                        memset(tB, 0, (size_t)(tl1 - tl0) * NP * sizeof(float));
                        memset(tC, 0, (size_t)(tl1 - tl0) * NP * sizeof(float));
                        for (int64_t e = e0; e < e1; e++) {
                            const float bias = delta_bias ? delta_bias[e] : 0.0f;
                            const float Dv = D ? D[e] : 0.0f;
                            for (int64_t c = t1 - 1; c >= t0; c--) {
                                const int64_t l0 = c * CHUNK;
                                const int K = (int)(L - l0 < CHUNK ? L - l0 : CHUNK);
                                const float *bt = Bt + (b * L + l0) * NP, *ct = Ct + (b * L + l0) * NP;
                                const size_t row = (size_t)((b * E + e) * L + l0);
                                const float *zr = z ? z + row : NULL;
                                float *dzr = z ? dz + row : NULL;
                                const float *hin = c > 0 ? carries + ((b * E + e) * nch + c - 1) * NP : NULL;
                                float *dBc = myB + l0 * NP, *dCc = myC + l0 * NP;
                                if (nb == 1)
                                    bwd_chunk_1(K, u + row, delta + row, zr, dout + row, bias, Dv, softplus,
                                                A + e * NP, bt, ct, hin, gstate + e * NP, accA + e * NP,
                                                accD + e, accBias + e, Hbuf, Abuf, dBc, dCc, du + row,
                                                ddelta + row, dzr);
                                else
                                    bwd_chunk_n(nb, K, u + row, delta + row, zr, dout + row, bias, Dv,
                                                softplus, A + e * NP, bt, ct, hin, gstate + e * NP,
                                                accA + e * NP, accD + e, accBias + e, Hbuf, Abuf, dBc, dCc,
                                                du + row, ddelta + row, dzr);
                            }
                        }
                    }
#pragma omp barrier
#pragma omp for schedule(static)
                    for (int64_t i = 0; i < (int64_t)LN; i++) {
                        float sb = 0.0f, sc = 0.0f;
                        for (int t = 0; t < T; t++) {
                            sb += part[(size_t)t * 2 * LN + i];
                            sc += part[(size_t)t * 2 * LN + LN + i];
                        }
                        dBt[b * LN + i] = sb;
                        dCt[b * LN + i] = sc;
                    }
                }
            }
            free(Hbuf);
            free(Abuf);
        }
    }
    if (!failed) {
        for (size_t i = 0; i < (size_t)E * NP; i++) dA[i] = (float)accA[i];
        for (int64_t e = 0; e < E; e++) {
            if (dD) dD[e] = (float)accD[e];
            if (ddelta_bias) ddelta_bias[e] = (float)accBias[e];
        }
    }
    free(part);
    free(gstate);
    free(accA);
    free(accD);
    free(accBias);
    return failed ? -1 : 0;
}
