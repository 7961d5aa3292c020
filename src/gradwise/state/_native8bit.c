/* The fused 8-bit step of gradwise.state.native: decode, update, re-quantize, one block at a time.

   Built on first use by gradwise/state/native.py with the C compiler that torch.compile needs on the CPU, and
   called through ctypes. One call runs a whole flat bucket (the layout of gradwise.core.compiled_state): for
   each block of `block` values, strip by strip (GW_STRIP values, kept in the first-level cache), it decodes
   every state key into a float32 scratch row (the exact fraction of the code's decade times the block scale;
   the scalar tail reads the table), copies the gradient and runs the chain's transforms as a short program of
   elementwise ops (`gw_op`, the arithmetic of each transform's torch kernel, in float32); then it zeroes the
   padding, takes each key's absmax and rounds back to the dynamic code map without a table (`round8`; the
   packed rounding table of gradwise.state.quantize only near ties and in the scalar tail). The step reads and
   writes each byte of state once, which the generated code of torch.compile cannot do (it re-runs the update
   to round after the block's maximum is known, and loads table entries one lane at a time).

   The arithmetic matches gradwise.state.quantize: the same decoded values (the table's float32 numbers), the
   same codes and scales for the values the update produces (ties decided on the exact quotient by the table),
   the same handling of non-finite blocks (NaN scale; NaN reads 0, +-inf reads +-1). The update is float32 in
   the order of the transforms' torch kernels, with a fused multiply-add exactly where torch's CPU kernels use
   one (add with alpha, addcmul, lerp), so most results equal eager's bit for bit; torch's float32 square root on
   the CPU is not always correctly rounded (this one is), so a result that goes through sqrt may differ by an ulp. */

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

enum {
    OP_SCALE_U = 1,   /* u <- u * k0 */
    OP_DECAY_P = 2,   /* p <- p * k0 */
    OP_DECAY_G = 3,   /* u <- u + k0 p */
    OP_DIV_P = 4,     /* p <- p / k0 */
    OP_LERP = 5,      /* s[a] <- lerp(s[a], u, k0) */
    OP_SECOND = 6,    /* s[a] <- s[a] k0 + k1 u u */
    OP_BELIEF = 7,    /* r = u - s[b]; s[a] <- (s[a] k0 + k1 r r) + k2 */
    OP_MAX = 8,       /* s[a] <- max(s[a], s[b]) (NaN propagates) */
    OP_ADAM_STEP = 9, /* p <- p + k0 s[a] / (sqrt(s[b]) / k1 + k2) */
    OP_RECT_STEP = 10,/* k0 != 0: p <- p + k1 s[a] / (sqrt(s[b]) + k2); else p <- p + k1 s[a] */
    OP_SGD_STEP = 11, /* p <- p + k0 u */
    OP_NESTEROV = 12, /* k0 != 0: s[b] <- u; d = u - s[b]; s[a] <- s[a] k1 + k2 d; s[b] <- u; u <- d k1 + u */
    OP_ADAN_STEP = 13,/* q = sqrt(s[c]) / k0 + k1; p <- p + k2 s[a] / q; p <- p + k3 s[b] / q */
    OP_SIGN_MOM = 14, /* x = s[a] k0 + k1 u; s[a] <- s[a] k2 + k3 u; u <- sign(x) (NaN stays NaN) */
    OP_SET = 15,      /* s[a] <- u (tests: round chosen values) */
    OP_GET = 16,      /* p <- s[a] (tests: read decoded values) */
    OP_HEAVY_BALL = 17,  /* s[a] <- k0 != 0 ? u : s[a] k1 + k2 u;  u <- s[a] */
    OP_HEAVY_BALL_NESTEROV = 18, /* s[a] as OP_HEAVY_BALL;  u <- u + k1 s[a] */
    OP_ADOPT = 19,    /* k0 != 0: s[b] <- s[b] + u u, u <- s[a]; else n = u / max(sqrt(s[b]), k1),
                         s[a] <- lerp(s[a], n, k3), s[b] <- s[b] k4 + k5 u u, u <- s[a] */
    OP_ADOPT_CLIPPED = 20, /* OP_ADOPT with n clamped to [-k2, k2] */
    OP_EMA = 21,      /* s[a] <- s[a] k0 + k1 u */
    OP_ADEMAMIX_STEP = 22, /* p <- p + k5 ((s[a] k2 + k3 s[b]) / (sqrt(s[c]) k0 + k1)) */
    OP_ADEMAMIX_STEP_DECAY = 23, /* p <- p + k5 ((s[a] k2 + k3 s[b]) / (sqrt(s[c]) k0 + k1) + k4 p) */
    OP_BOUNDED_STEP = 24, /* p <- p - clamp(k1 / (sqrt(s[b]) + k0), k2, k3) s[a] */
    OP_FRICTION_STEP = 25 /* e = 2^(-log2(e) |s[c] - u|) + 1; s[c] <- u; p <- p + k1 s[a] / ((sqrt(s[b]) + k0) e) */
};

typedef struct {
    int32_t op, a, b, c;
    float k[8];
} gw_op;

/* The code map's constants per signedness (gw_codec, filled by native.py from gradwise.state.quantize): per
   decade j (magnitude indices m in [2^j, 2^(j+1))) the value (9 m + P_j) / Q_j, one float32 division as the
   table's own rounding (`_decode_arithmetic`), and the float32 midpoint `start[j]` between the last magnitude
   below the decade and its first, the table's own number. Unused decades (the signed map has 7) hold P = NaN
   and start = +inf. Derived once in native.py: the same P and Q at slot (127 + j) & 7, the low bits of m's
   float exponent (decoding); the rounding grid, index = floor(a slope_j + offset_j), slope_j = Q_j / 9 and
   offset_j = 1/2 - P_j / 9, decade 0's putting its two starts on 1 and 2; each decade's last index. */
typedef struct {
    float start[8], p[8], q[8];
    float rotated_p[8], rotated_q[8];
    float slope[8], offset[8];
    int32_t high[8];
} gw_codec;

typedef struct {
    const gw_op *prog;
    int32_t nops;
    float *param;
    const float *grad;
    int32_t maximize;
    uint8_t *const *codes;
    float *const *absmax;
    const int32_t *is_signed;
    int32_t nkeys;
    const int32_t *valid;
    int64_t first, last; /* blocks [first, last) */
    int32_t block;
    const float *decode[2];   /* [unsigned, signed]: 256 code values */
    const gw_codec *codec[2]; /* [unsigned, signed] */
    const int32_t *round[2];  /* [unsigned, signed]: the packed rounding tables */
    float *scratch;
} gw_job;

#define GW_MAX_THREADS 256
#define GW_MAX_KEYS 16
#define GW_STRIP 128 /* values per strip: decoded and updated while in the first-level cache (measured: 64-192) */

/* gradwise.state.quantize's rounding-table constants and friction.EXP2_FRACTION, defined by native.py (-D) from
   the Python that owns them */
#if !defined(GW_SHIFT) || !defined(GW_LOWEST) || !defined(GW_BUCKETS) || !defined(GW_SIGNED_ZERO) || \
    !defined(GW_EXP2_FRACTION)
#error "build through gradwise.state.native, which defines the quantizer's constants"
#endif
#define GW_LOW ((1 << GW_SHIFT) - 1)


static void decode_row(const uint8_t *codes, const float *table, const gw_codec *codec, int is_signed,
                       float scale, float *out, int32_t n) {
    int32_t i = 0;
#if defined(__AVX2__)
    /* the decade's slot is the low 3 bits of m's float exponent (127 + j) */
    const __m256 p = _mm256_loadu_ps(codec->rotated_p), q = _mm256_loadu_ps(codec->rotated_q);
    const __m256 nine = _mm256_set1_ps(9.0f);
    const __m256 s = _mm256_set1_ps(scale), negative = _mm256_set1_ps(-scale);
    const __m256i zero_code = _mm256_set1_epi32(is_signed ? GW_SIGNED_ZERO : 0), izero = _mm256_setzero_si256();
    for (; i + 8 <= n; i += 8) {
        __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + i)));
        __m256i offset = c, m = c;
        if (is_signed) {
            offset = _mm256_sub_epi32(c, zero_code);
            m = _mm256_abs_epi32(offset);
        }
        __m256 mf = _mm256_cvtepi32_ps(m);
        __m256i j = _mm256_srli_epi32(_mm256_castps_si256(mf), 23);
        __m256 v = _mm256_div_ps(_mm256_add_ps(_mm256_mul_ps(mf, nine), _mm256_permutevar8x32_ps(p, j)),
                                 _mm256_permutevar8x32_ps(q, j));
        v = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpgt_epi32(m, izero)));
        __m256 sc = is_signed ? _mm256_blendv_ps(s, negative, _mm256_castsi256_ps(offset)) : s;
        _mm256_storeu_ps(out + i, _mm256_mul_ps(v, sc));
    }
#else
    (void)codec;
    (void)is_signed;
#endif
    for (; i < n; i++) out[i] = table[codes[i]] * scale;
}

/* the block's absmax as quantize_rows takes it: NaN when any value is NaN or infinite */
static float block_absmax(const float *x, int32_t n) {
    int32_t i = 0;
    float best = 0.0f;
    int bad = 0;
#if defined(__AVX2__)
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 largest = _mm256_set1_ps(3.40282347e+38f);
    __m256 m = _mm256_setzero_ps(), nonfinite = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + i), magnitude);
        nonfinite = _mm256_or_ps(nonfinite, _mm256_cmp_ps(a, largest, _CMP_NLE_UQ));
        m = _mm256_max_ps(m, a);
    }
    bad = _mm256_movemask_ps(nonfinite) != 0;
    float lanes[8];
    _mm256_storeu_ps(lanes, m);
    for (int j = 0; j < 8; j++) best = lanes[j] > best ? lanes[j] : best;
#endif
    for (; i < n; i++) {
        float a = fabsf(x[i]);
        if (!(a <= 3.40282347e+38f)) bad = 1;
        best = a > best ? a : best;
    }
    return bad ? NAN : best;
}

static inline int32_t round_one(float x, const int32_t *table, int is_signed) {
    /* x / scale already taken; into [-1, 1] (signed) or [0, 1] (unsigned), NaN to 0 */
    if (x > 1.0f) x = 1.0f;
    if (is_signed) {
        if (x < -1.0f) x = -1.0f;
        if (x != x) x = 0.0f;
    } else if (!(x > 0.0f)) {
        x = 0.0f;
    }
    int32_t bits;
    memcpy(&bits, &x, 4);
    int32_t mag = is_signed ? (bits & 0x7FFFFFFF) : bits;
    int32_t key = (mag >> GW_SHIFT) - GW_LOWEST;
    key = key < 0 ? 0 : (key > GW_BUCKETS - 1 ? GW_BUCKETS - 1 : key);
    int32_t sign = bits >> 31;
    if (is_signed) key += sign & GW_BUCKETS;
    int32_t entry = table[key];
    int32_t index = (entry >> 16) + ((mag & GW_LOW) >= (entry & 0xFFFF));
    if (!is_signed) return index;
    return (index ^ sign) - sign + GW_SIGNED_ZERO;
}

/* Rounding to the nearest code without a table look-up, for the values of a block whose absmax is finite and
   positive (other blocks take the table's rule, `round_one`). Each value is scaled by the reciprocal of the
   absmax (within 2 ulp of the division that eager quantization does). The decade j is found by a binary search
   over the decades' float32 starts (the midpoints between decades); inside it the codes are evenly spaced, so
   the magnitude index is floor(a A_j + B_j), A_j = Q_j / 9, B_j = 1/2 - P_j / 9, in float32. The decades' grids
   join: in decade j's coordinates a + 1/2 is an integer at its own start and at the next decade's, so a value
   near any tie, between codes or between decades, lies near an integer. A value within 1/2048 of a step of one
   (about 1 in 1000; the arithmetic errs by less than 1e-4 of a step) takes the table's rule on the exact
   quotient instead, so the codes are those of `quantize_rows` exactly. Decade 0 holds only the magnitude index
   1; its map puts its two starts on 1 and 2, so that index 0 (the code 0) comes out below the first. */
#if defined(__AVX2__)
typedef struct {
    __m256 start4, start, slope, offset, near;
    __m256i high, abs_mask, ione, two, four;
} gw_rounder;

static gw_rounder make_rounder(const gw_codec *codec) {
    gw_rounder r;
    r.start4 = _mm256_set1_ps(codec->start[4]);
    r.start = _mm256_loadu_ps(codec->start);
    r.slope = _mm256_loadu_ps(codec->slope);
    r.offset = _mm256_loadu_ps(codec->offset);
    r.near = _mm256_set1_ps((1.0f / 2048.0f) * (1.0f / 2048.0f));
    /* decade j holds the magnitude indices [2^j, 2^(j+1)); the signed map's unused eighth decade is never chosen */
    r.high = _mm256_loadu_si256((const __m256i *)codec->high);
    r.abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    r.ione = _mm256_set1_epi32(1);
    r.two = _mm256_set1_epi32(2);
    r.four = _mm256_set1_epi32(4);
    return r;
}

/* The magnitude indices of 8 scaled values v (about [-1, 1], or [0, 1] unsigned), their signs (-1 or 0) in
   `*sign`, the lanes near a tie in `*slow` */
static inline __m256i round8(const gw_rounder *r, __m256 v, int is_signed, __m256i *sign, int *slow) {
    __m256 a = v;
    if (is_signed) {
        __m256i bits = _mm256_castps_si256(v);
        *sign = _mm256_srai_epi32(bits, 31);
        a = _mm256_castsi256_ps(_mm256_and_si256(bits, r->abs_mask));
    }
    /* the decade: binary search over the 8 starts */
    __m256i j = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(a, r->start4, _CMP_GT_OQ)), r->four);
    __m256i probe = _mm256_add_epi32(j, r->two);
    j = _mm256_add_epi32(j, _mm256_and_si256(_mm256_castps_si256(
        _mm256_cmp_ps(a, _mm256_permutevar8x32_ps(r->start, probe), _CMP_GT_OQ)), r->two));
    probe = _mm256_add_epi32(j, r->ione);
    j = _mm256_add_epi32(j, _mm256_and_si256(_mm256_castps_si256(
        _mm256_cmp_ps(a, _mm256_permutevar8x32_ps(r->start, probe), _CMP_GT_OQ)), r->ione));
    __m256 shifted = _mm256_add_ps(_mm256_mul_ps(a, _mm256_permutevar8x32_ps(r->slope, j)),
                                   _mm256_permutevar8x32_ps(r->offset, j));
    __m256 d = _mm256_sub_ps(shifted, _mm256_round_ps(shifted, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    *slow = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_mul_ps(d, d), r->near, _CMP_LT_OQ));
    /* floor (shifted >= 0); the top of a decade is 2.5 of its steps below the next one's start: bounded */
    return _mm256_min_epi32(_mm256_cvttps_epi32(shifted), _mm256_permutevar8x32_epi32(r->high, j));
}
#endif

static void encode_row(const float *x, float absmax, const int32_t *table, const gw_codec *codec, int is_signed,
                       uint8_t *codes, int32_t n) {
    int32_t i = 0;
    if (absmax == 0.0f) { /* all zeros */
        memset(codes, is_signed ? GW_SIGNED_ZERO : 0, (size_t)n);
        return;
    }
    const float scale = absmax > 0.0f ? absmax : 1.0f; /* NaN > 0 is false: a non-finite block has scale 1 */
#if defined(__AVX2__)
    /* finite, and not so small that its reciprocal overflows (below 2^-128): every x / absmax is in [-1, 1] */
    if (absmax > 0.0f && isfinite(1.0f / scale)) {
        const gw_rounder r = make_rounder(codec);
        const __m256 inverse = _mm256_set1_ps(1.0f / scale);
        const __m256i signed_zero = _mm256_set1_epi16(GW_SIGNED_ZERO);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0);
        for (; i + 16 <= n; i += 16) {
            __m256 v0 = _mm256_mul_ps(_mm256_loadu_ps(x + i), inverse);
            __m256 v1 = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8), inverse);
            /* unsigned: a negative value (or -0) falls below every decade's start and its index saturates to 0 */
            int slow0, slow1;
            __m256i sign0 = _mm256_setzero_si256(), sign1 = _mm256_setzero_si256();
            __m256i c0 = round8(&r, v0, is_signed, &sign0, &slow0), c1 = round8(&r, v1, is_signed, &sign1, &slow1);
            __m256i words = _mm256_packs_epi32(c0, c1); /* 16-bit, lanes interleaved by 128-bit halves */
            if (is_signed) { /* 127 - index for negative values, 127 + index */
                __m256i signs = _mm256_packs_epi32(sign0, sign1);
                words = _mm256_add_epi16(_mm256_sub_epi16(_mm256_xor_si256(words, signs), signs), signed_zero);
            }
            __m256i bytes = _mm256_packus_epi16(words, words);
            __m256i ordered = _mm256_permutevar8x32_epi32(bytes, order);
            _mm_storeu_si128((__m128i *)(codes + i), _mm256_castsi256_si128(ordered));
            if (slow0 | slow1) { /* near a tie: the table's rule on the exact quotient */
                int slow = slow0 | (slow1 << 8);
                for (int l = 0; l < 16; l++)
                    if (slow & (1 << l)) codes[i + l] = (uint8_t)round_one(x[i + l] / scale, table, is_signed);
            }
        }
    }
#else
    (void)codec;
#endif
    for (; i < n; i++) codes[i] = (uint8_t)round_one(x[i] / scale, table, is_signed);
}

/* 2^x for x <= 0 (NaN stays NaN) as the compiled float32 step computes it (gradwise.transforms.friction
   `exp2_nonpositive`): x clamped to -126, 2^n p(x - n) with n = floor(x), the polynomial EXP2_FRACTION and 2^n
   written into the exponent bits. Within an ulp of torch's exp2 before diffGrad adds 1 (tests); unlike libm's
   exp2f, the loop around it vectorises. */
static inline float exp2_nonpositive(float x) {
    x = x < -126.0f ? -126.0f : x;
    float whole = floorf(x);
    float fraction = x - whole;
    static const float coefficients[7] = GW_EXP2_FRACTION; /* lowest degree first */
    float power = coefficients[6];
    for (int d = 5; d >= 0; d--) power = power * fraction + coefficients[d];
    int32_t exponent = ((int32_t)(whole == whole ? whole : 0.0f) + 127) << 23; /* 2^n, n in [-126, 0] */
    float scale;
    memcpy(&scale, &exponent, sizeof scale);
    return power * scale;
}

static void run_ops(const gw_op *prog, int32_t nops, float *restrict p, float *restrict u, float **s, int32_t n) {
    for (int32_t o = 0; o < nops; o++) {
        const gw_op op = prog[o];
        const float k0 = op.k[0], k1 = op.k[1], k2 = op.k[2], k3 = op.k[3];
        float *restrict a = op.a >= 0 ? s[op.a] : NULL;
        float *restrict b = op.b >= 0 ? s[op.b] : NULL;
        float *restrict c = op.c >= 0 ? s[op.c] : NULL;
        switch (op.op) {
        case OP_SCALE_U:
            for (int32_t i = 0; i < n; i++) u[i] = u[i] * k0;
            break;
        case OP_DECAY_P:
            for (int32_t i = 0; i < n; i++) p[i] = p[i] * k0;
            break;
        case OP_DECAY_G:
            for (int32_t i = 0; i < n; i++) u[i] = fmaf(k0, p[i], u[i]);
            break;
        case OP_DIV_P:
            for (int32_t i = 0; i < n; i++) p[i] = p[i] / k0;
            break;
        case OP_LERP:
            if (fabsf(k0) < 0.5f) {
                for (int32_t i = 0; i < n; i++) a[i] = fmaf(k0, u[i] - a[i], a[i]);
            } else {
                const float w = -(1.0f - k0);
                for (int32_t i = 0; i < n; i++) a[i] = fmaf(w, u[i] - a[i], u[i]);
            }
            break;
        case OP_SECOND:
            for (int32_t i = 0; i < n; i++) a[i] = fmaf(k1 * u[i], u[i], a[i] * k0);
            break;
        case OP_BELIEF:
            for (int32_t i = 0; i < n; i++) {
                float r = u[i] - b[i];
                a[i] = fmaf(k1 * r, r, a[i] * k0) + k2;
            }
            break;
        case OP_MAX:
            for (int32_t i = 0; i < n; i++) {
                float x = a[i], y = b[i];
                a[i] = (x != x || y != y) ? x + y : (x > y ? x : y);
            }
            break;
        case OP_ADAM_STEP:
            for (int32_t i = 0; i < n; i++) p[i] = p[i] + (k0 * a[i]) / (sqrtf(b[i]) / k1 + k2);
            break;
        case OP_RECT_STEP:
            if (k0 != 0.0f) {
                for (int32_t i = 0; i < n; i++) p[i] = p[i] + (k1 * a[i]) / (sqrtf(b[i]) + k2);
            } else {
                for (int32_t i = 0; i < n; i++) p[i] = fmaf(k1, a[i], p[i]);
            }
            break;
        case OP_SGD_STEP:
            for (int32_t i = 0; i < n; i++) p[i] = fmaf(k0, u[i], p[i]);
            break;
        case OP_NESTEROV:
            if (k0 != 0.0f) memcpy(b, u, sizeof(float) * (size_t)n);
            for (int32_t i = 0; i < n; i++) {
                float d = u[i] - b[i];
                a[i] = fmaf(k2, d, a[i] * k1);
                b[i] = u[i];
                u[i] = d * k1 + u[i];
            }
            break;
        case OP_ADAN_STEP:
            for (int32_t i = 0; i < n; i++) {
                float q = sqrtf(c[i]) / k0 + k1;
                float x = p[i] + (k2 * a[i]) / q;
                p[i] = x + (k3 * b[i]) / q;
            }
            break;
        case OP_SIGN_MOM:
            for (int32_t i = 0; i < n; i++) {
                float x = fmaf(k1, u[i], a[i] * k0);
                a[i] = fmaf(k3, u[i], a[i] * k2);
                u[i] = x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x == 0.0f ? 0.0f : x));
            }
            break;
        case OP_SET:
            memcpy(a, u, sizeof(float) * (size_t)n);
            break;
        case OP_GET:
            memcpy(p, a, sizeof(float) * (size_t)n);
            break;
        case OP_HEAVY_BALL:
        case OP_HEAVY_BALL_NESTEROV:
            /* torch: buf.copy_(u) on an undamped first step, else buf.mul_(beta).add_(u, alpha=weight); the
               buffer itself is the update, or u.add(buf, alpha=beta) with Nesterov's look-ahead */
            if (k0 != 0.0f) {
                memcpy(a, u, sizeof(float) * (size_t)n);
            } else {
                for (int32_t i = 0; i < n; i++) a[i] = fmaf(k2, u[i], a[i] * k1);
            }
            if (op.op == OP_HEAVY_BALL_NESTEROV) {
                for (int32_t i = 0; i < n; i++) u[i] = fmaf(k1, a[i], u[i]);
            } else {
                memcpy(u, a, sizeof(float) * (size_t)n);
            }
            break;
        case OP_ADOPT:
        case OP_ADOPT_CLIPPED:
            /* torch: the first step v.addcmul_(u, u); later n = u / clamp(v.sqrt(), min=eps), n.clamp_(-c, c)
               when clipped, m.lerp_(n, w), v.mul_(beta).addcmul_(u, u, value=fresh); the update is m */
            if (k0 != 0.0f) {
                for (int32_t i = 0; i < n; i++) b[i] = fmaf(u[i], u[i], b[i]);
            } else {
                const float k4 = op.k[4], k5 = op.k[5], low = -k2;
                const int clipped = op.op == OP_ADOPT_CLIPPED, near = fabsf(k3) < 0.5f;
                const float w = -(1.0f - k3);
                for (int32_t i = 0; i < n; i++) {
                    float r = sqrtf(b[i]);
                    r = (r != r) ? r : (r < k1 ? k1 : r);
                    float x = u[i] / r;
                    if (clipped && x == x) x = x < low ? low : (x > k2 ? k2 : x);
                    a[i] = near ? fmaf(k3, x - a[i], a[i]) : fmaf(w, x - a[i], x);
                    b[i] = fmaf(k5 * u[i], u[i], b[i] * k4);
                }
            }
            memcpy(u, a, sizeof(float) * (size_t)n);
            break;
        case OP_EMA:
            /* torch: s.mul_(k0).add_(u, alpha=k1) */
            for (int32_t i = 0; i < n; i++) a[i] = fmaf(k1, u[i], a[i] * k0);
            break;
        case OP_ADEMAMIX_STEP:
        case OP_ADEMAMIX_STEP_DECAY: {
            /* torch: d = v.sqrt().mul_(k0).add_(k1); x = (m1 * k2).add_(m2, alpha=k3).div_(d);
               x.add_(p, alpha=k4) with weight decay; p.add_(x, alpha=k5) */
            const float k4 = op.k[4], k5 = op.k[5];
            const int decays = op.op == OP_ADEMAMIX_STEP_DECAY;
            for (int32_t i = 0; i < n; i++) {
                float x = fmaf(k3, b[i], a[i] * k2) / (sqrtf(c[i]) * k0 + k1);
                if (decays) x = fmaf(k4, p[i], x);
                p[i] = fmaf(k5, x, p[i]);
            }
            break;
        }
        case OP_BOUNDED_STEP:
            /* torch: d = v.sqrt().add_(eps); r = full(k1).div_(d).clamp_(k2, k3); p.sub_(r.mul_(m)) */
            for (int32_t i = 0; i < n; i++) {
                float r = k1 / (sqrtf(b[i]) + k0);
                if (r == r) r = r < k2 ? k2 : (r > k3 ? k3 : r);
                p[i] = p[i] - r * a[i];
            }
            break;
        case OP_FRICTION_STEP: {
            /* torch (eager): e = exp2((prev - u).abs_().mul_(-LOG2_E)).add_(1); prev.copy_(u);
               p.addcdiv_(m, v.sqrt().add_(eps).mul_(e), value=k1), addcdiv being p + (k1 m) / d */
            const float minus_log2e = -1.4426950408889634f; /* float32(-1 / ln 2), as torch rounds the scalar */
            for (int32_t i = 0; i < n; i++) {
                float e = exp2_nonpositive(fabsf(c[i] - u[i]) * minus_log2e) + 1.0f;
                c[i] = u[i];
                p[i] = p[i] + (k1 * a[i]) / ((sqrtf(b[i]) + k0) * e);
            }
            break;
        }
        default:
            break;
        }
    }
}

static void *run_job(void *arg) {
    gw_job *job = (gw_job *)arg;
    const int32_t block = job->block, nkeys = job->nkeys;
    float *rows[GW_MAX_KEYS];
    for (int32_t k = 0; k < nkeys; k++) rows[k] = job->scratch + (size_t)block * (size_t)(k + 1);
    float *u = job->scratch;
    for (int64_t blk = job->first; blk < job->last; blk++) {
        const int32_t valid = job->valid[blk];
        const int64_t base = blk * (int64_t)block;
        if (valid <= 0) continue; /* an empty block that completes the buffer: stays the code of 0 */
        /* decode, and run the chain, strip by strip: a strip's rows stay in the first-level cache between them */
        for (int32_t start = 0; start < block; start += GW_STRIP) {
            const int32_t len = block - start < GW_STRIP ? block - start : GW_STRIP;
            float *strip[GW_MAX_KEYS];
            for (int32_t k = 0; k < nkeys; k++) {
                int sg = job->is_signed[k] != 0;
                strip[k] = rows[k] + start;
                decode_row(job->codes[k] + base + start, job->decode[sg], job->codec[sg], sg, job->absmax[k][blk],
                           strip[k], len);
            }
            const float *g = job->grad + base + start;
            if (job->maximize) {
                for (int32_t i = 0; i < len; i++) u[i] = -g[i];
            } else {
                memcpy(u, g, sizeof(float) * (size_t)len);
            }
            run_ops(job->prog, job->nops, job->param + base + start, u, strip, len);
        }
        for (int32_t k = 0; k < nkeys; k++) {
            int sg = job->is_signed[k] != 0;
            for (int32_t i = valid; i < block; i++) rows[k][i] = 0.0f; /* the padding reads 0, as in eager */
            float m = block_absmax(rows[k], block);
            job->absmax[k][blk] = m;
            encode_row(rows[k], m, job->round[sg], job->codec[sg], sg, job->codes[k] + base, block);
        }
    }
    return NULL;
}

/* One step over `blocks` blocks of `block` values with `threads` threads (at most GW_MAX_THREADS).
   `scratch` holds threads * (nkeys + 1) * block floats. Returns 0, or 1 when an argument is out of range
   (nothing written then). */
int gw8_step(const gw_op *prog, int32_t nops, float *param, const float *grad, int32_t maximize,
             uint8_t *const *codes, float *const *absmax, const int32_t *is_signed, int32_t nkeys,
             const int32_t *valid, int64_t blocks, int32_t block, const float *decode_unsigned,
             const float *decode_signed, const int32_t *round_unsigned, const int32_t *round_signed,
             const gw_codec *codec_unsigned, const gw_codec *codec_signed, float *scratch, int32_t threads) {
    if (threads < 1 || threads > GW_MAX_THREADS || nkeys < 1 || nkeys > GW_MAX_KEYS || block < 1 || blocks < 0)
        return 1;
    gw_job jobs[GW_MAX_THREADS];
    pthread_t ids[GW_MAX_THREADS];
    int started[GW_MAX_THREADS];
    for (int32_t t = 0; t < threads; t++) {
        gw_job *job = &jobs[t];
        job->prog = prog;
        job->nops = nops;
        job->param = param;
        job->grad = grad;
        job->maximize = maximize;
        job->codes = codes;
        job->absmax = absmax;
        job->is_signed = is_signed;
        job->nkeys = nkeys;
        job->valid = valid;
        job->first = blocks * t / threads;
        job->last = blocks * (t + 1) / threads;
        job->block = block;
        job->decode[0] = decode_unsigned;
        job->decode[1] = decode_signed;
        job->round[0] = round_unsigned;
        job->round[1] = round_signed;
        job->codec[0] = codec_unsigned;
        job->codec[1] = codec_signed;
        job->scratch = scratch + (size_t)t * (size_t)(nkeys + 1) * (size_t)block;
        started[t] = 0;
    }
#if defined(_OPENMP)
    /* torch's own OpenMP runtime where the library shares it (its libgomp.so.1 is loaded first): no second pool
       of threads competing with torch's, which keep spinning for a while after each parallel region */
    (void)ids;
    (void)started;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int32_t t = 0; t < threads; t++) run_job(&jobs[t]);
#else
    for (int32_t t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, run_job, &jobs[t]) == 0;
    run_job(&jobs[0]);
    for (int32_t t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            run_job(&jobs[t]); /* no thread to be had: this one runs it */
    }
#endif
    return 0;
}

/* 1 when this build runs its threads through OpenMP, else 0 (POSIX threads) */
int gw8_openmp(void) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

/* 1 when this build uses AVX2 (the vector decode and rounding), else 0 */
int gw8_vectorised(void) {
#if defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}
