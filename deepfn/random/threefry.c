#include <stdint.h>

/* Built once per vector ISA (-mavx512f, -mavx2, plain; the loader picks the build for the CPU):
   the rounds' 32-bit rotations and adds vectorize across counters, 8 or 16 lanes wide. */
int deepfn_threefry_isa(void) {   /* which build this is: 512, 256 or 0 */
#if defined(__AVX512F__)
    return 512;
#elif defined(__AVX2__)
    return 256;
#else
    return 0;
#endif
}

static inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

#define ROUND(r) a += b; b = rotl(b, r) ^ a;
#define INJECT(s0, s1, g) a += s0; b += s1 + (uint32_t)(g);

static inline void block(uint32_t ks0, uint32_t ks1, uint32_t a, uint32_t b, uint32_t *y0, uint32_t *y1) {
    uint32_t ks2 = ks0 ^ ks1 ^ 0x1BD11BDAu;
    a += ks0; b += ks1;
    ROUND(13) ROUND(15) ROUND(26) ROUND(6)  INJECT(ks1, ks2, 1)
    ROUND(17) ROUND(29) ROUND(16) ROUND(24) INJECT(ks2, ks0, 2)
    ROUND(13) ROUND(15) ROUND(26) ROUND(6)  INJECT(ks0, ks1, 3)
    ROUND(17) ROUND(29) ROUND(16) ROUND(24) INJECT(ks1, ks2, 4)
    ROUND(13) ROUND(15) ROUND(26) ROUND(6)  INJECT(ks2, ks0, 5)
    *y0 = a;
    *y1 = b;
}

/* Each input is read at i * step: step 1 for a contiguous array, 0 for one broadcast word.
   One key for many counters (how bits are drawn) gets its own loop, which compilers vectorize. */
void deepfn_threefry2x32(const int64_t *restrict k0, int64_t s_k0, const int64_t *restrict k1, int64_t s_k1,
                         const int64_t *restrict x0, int64_t s_x0, const int64_t *restrict x1, int64_t s_x1,
                         int64_t *restrict y0, int64_t *restrict y1, int64_t n) {
    if (s_k0 == 0 && s_k1 == 0 && s_x0 == 0 && s_x1 == 1) {   /* one high word: random.bits' counters */
        const uint32_t ks0 = (uint32_t)k0[0], ks1 = (uint32_t)k1[0], high = (uint32_t)x0[0];
        for (int64_t i = 0; i < n; i++) {
            uint32_t a, b;
            block(ks0, ks1, high, (uint32_t)x1[i], &a, &b);
            y0[i] = a;
            y1[i] = b;
        }
        return;
    }
    if (s_k0 == 0 && s_k1 == 0 && s_x0 == 1 && s_x1 == 1) {
        const uint32_t ks0 = (uint32_t)k0[0], ks1 = (uint32_t)k1[0];
        for (int64_t i = 0; i < n; i++) {
            uint32_t a, b;
            block(ks0, ks1, (uint32_t)x0[i], (uint32_t)x1[i], &a, &b);
            y0[i] = a;
            y1[i] = b;
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        uint32_t a, b;
        block((uint32_t)k0[i * s_k0], (uint32_t)k1[i * s_k1], (uint32_t)x0[i * s_x0], (uint32_t)x1[i * s_x1], &a, &b);
        y0[i] = a;
        y1[i] = b;
    }
}

/* The words of random.bits(key, n) for counters i in [begin, end): the cipher of (0, i) under
   one key, laid out as every y0 then every y1 (half = ceil(n / 2) of each), cut to n. Stored as
   they are (int64), or as their top 24 bits times 2**-24 (random's float32 and float64
   uniforms: exact in both types). No counter array, no concatenation: one pass. */
#define DRAW(T, CONVERT)                                                                          \
    T *o = (T *)out;                                                                              \
    const int64_t full = end < n - half ? end : n - half; /* counters whose y1 is kept */        \
    int64_t i = begin;                                                                            \
    for (; i < full; i++) {                                                                       \
        uint32_t y0, y1;                                                                          \
        block(ks0, ks1, 0u, (uint32_t)i, &y0, &y1);                                               \
        o[i] = CONVERT(y0);                                                                       \
        o[half + i] = CONVERT(y1);                                                                \
    }                                                                                             \
    for (; i < end; i++) {                                                                        \
        uint32_t y0, y1;                                                                          \
        block(ks0, ks1, 0u, (uint32_t)i, &y0, &y1);                                               \
        o[i] = CONVERT(y0);                                                                       \
    }
/* The words as uint32 and their top 24 bits through int32: conversions that vectorize (AVX2 has
   no 64-bit integer to float conversion; converting from int64 had kept the loop scalar). */
#define AS_WORD(y) ((int64_t)(y))
#define AS_FLOAT(y) ((float)(int32_t)((y) >> 8) * 0x1p-24f)
#define AS_DOUBLE(y) ((double)(int32_t)((y) >> 8) * 0x1p-24)

static inline void draw_range(const int64_t *key, int64_t begin, int64_t end, int64_t half, int64_t n, int kind,
                              void *restrict out) {
    const uint32_t ks0 = (uint32_t)key[0], ks1 = (uint32_t)key[1];
    if (kind == 0) { DRAW(int64_t, AS_WORD) }
    else if (kind == 1) { DRAW(float, AS_FLOAT) }
    else { DRAW(double, AS_DOUBLE) }
}

void deepfn_threefry_draw(const int64_t *key, int64_t begin, int64_t end, int64_t half, int64_t n, int kind,
                          void *restrict out) {
    draw_range(key, begin, end, half, n, kind, out);
}

/* Whole draws for keys [first, last) of an array of keys [count, 2]: row k of out ([count, n]
   values of the kind) is the draw of key k. */
void deepfn_threefry_draw_keys(const int64_t *keys, int64_t first, int64_t last, int64_t half, int64_t n,
                               int kind, void *restrict out) {
    const int64_t size = kind == 1 ? 4 : 8;
    for (int64_t k = first; k < last; k++)
        draw_range(keys + 2 * k, 0, half, half, n, kind, (char *)out + k * n * size);
}
