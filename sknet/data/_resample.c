/* PIL's antialiased resize, the same pixels, in loops that vectorise.
 *
 * PIL (libImaging/Resample.c) resizes in two passes, each rounding to uint8. An output
 * pixel is a weighted sum of a run of source pixels; the weights are the filter stretched by
 * the shrink factor, evaluated in double, normalised to sum 1 and rounded to 22-bit fixed
 * point; the sum starts at half a unit and is shifted back and clipped. Here the weights
 * come from the same expressions in the same order (the file is compiled with
 * -ffp-contract=off), so they are PIL's integers; integer sums do not depend on their order,
 * so each pass sums in the order that vectorises: the vertical pass along whole rows (all
 * channels of all pixels of a row at once), the horizontal one a pixel's channels in one
 * SSE4.1 multiply. PIL's own loops go output pixel by output pixel, channel by channel.
 * Which pass runs first shows in the pixels and changed in Pillow 13 (_resample.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "_resample.h"

#define PRECISION 22                       /* 32 - 8 - 2: fraction bits of PIL's weights */
#define HALF (1 << (PRECISION - 1))

/* Function multiversioning: an AVX2 build of the vertical pass, picked at load time where
 * the CPU has it; integer arithmetic, so both builds give the same bytes. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

static double bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double bicubic(double x) {          /* Keys' cubic convolution with a = -0.5, as PIL */
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* For each output pixel along one axis: the first source pixel it reads, how many, and their
 * fixed-point weights (ksize per output pixel). */
typedef struct {
    int ksize;
    int *first, *count;
    int32_t *weight;
} taps_t;

static void taps_free(taps_t *t) {
    free(t->first); free(t->count); free(t->weight);
    t->first = t->count = NULL;
    t->weight = NULL;
}

/* PIL's precompute_coeffs and normalize_coeffs_8bpc: the span [in0, in1) of in_size source
 * pixels onto out_size pixels. in0 and in1 are float32 as in PIL, and so is their difference. */
static int taps_make(taps_t *t, int in_size, float in0, float in1, int out_size, int filter) {
    double (*fn)(double) = filter == SK_BICUBIC ? bicubic : bilinear;
    double scale = (double)(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = (filter == SK_BICUBIC ? 2.0 : 1.0) * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = malloc((size_t)ksize * sizeof(double));
    t->ksize = ksize;
    t->first = malloc((size_t)out_size * sizeof(int));
    t->count = malloc((size_t)out_size * sizeof(int));
    t->weight = calloc((size_t)out_size * ksize, sizeof(int32_t));
    if (w == NULL || t->first == NULL || t->count == NULL || t->weight == NULL) {
        free(w); taps_free(t);
        return -1;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax, x;
        if (xmin < 0) xmin = 0;
        xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (x = 0; x < xmax; x++) {
            w[x] = fn((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = t->weight + (size_t)xx * ksize;
        for (x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION)) : (int32_t)(0.5 + v * (1 << PRECISION));
        }
        t->first[xx] = xmin;
        t->count[xx] = xmax > 0 ? xmax : 0;   /* PIL's loops run no taps for a count <= 0 */
    }
    free(w);
    return 0;
}

static inline uint8_t clip8(int32_t sum) {
    int32_t v = sum >> PRECISION;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One output pixel from n source pixels, tap by tap (PIL's loop, on packed pixels). */
static inline void horizontal_pixel(const uint8_t *p, const int32_t *k, int n, int channels, uint8_t *o) {
    int32_t sum[3] = {HALF, HALF, HALF};
    for (int x = 0; x < n; x++)
        for (int c = 0; c < channels; c++) sum[c] += p[x * channels + c] * k[x];
    for (int c = 0; c < channels; c++) o[c] = clip8(sum[c]);
}

static void horizontal_scalar(const uint8_t *src, int in_w, int rows, const taps_t *t, int out_w, int channels,
                              int flip, uint8_t *dst) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *row = src + (size_t)y * in_w * channels;
        uint8_t *o = dst + (size_t)y * out_w * channels;
        for (int xx = 0; xx < out_w; xx++)
            horizontal_pixel(row + (size_t)t->first[xx] * channels, t->weight + (size_t)xx * t->ksize, t->count[xx],
                             channels, o + (size_t)(flip ? out_w - 1 - xx : xx) * channels);
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_SSE41_PATH 1
#include <immintrin.h>

/* RGB with SSE4.1: a tap is one pixel's bytes widened to four int32 lanes (R, G, B and the
 * next byte) times the tap's weight in all four, so three channels take one multiply and
 * one add instead of three of each; two accumulators for the adds' latency. The 4-byte
 * load reads one byte past the pixel: only the last row's last pixel is done tap by tap,
 * so nothing past the source is read. */
__attribute__((target("sse4.1"))) static int
horizontal_rgb_sse41(const uint8_t *src, int in_w, int rows, const taps_t *t, int out_w, int flip, uint8_t *dst) {
    int32_t *lanes = malloc((size_t)out_w * t->ksize * 4 * sizeof(int32_t));
    if (lanes == NULL) return -1;
    for (size_t i = 0; i < (size_t)out_w * t->ksize; i++)
        for (int c = 0; c < 4; c++) lanes[4 * i + c] = t->weight[i];
    for (int y = 0; y < rows; y++) {
        const uint8_t *row = src + (size_t)y * in_w * 3;
        uint8_t *o = dst + (size_t)y * out_w * 3;
        for (int xx = 0; xx < out_w; xx++) {
            const uint8_t *p = row + (size_t)t->first[xx] * 3;
            const int32_t *w = lanes + (size_t)xx * t->ksize * 4;
            uint8_t *to = o + (size_t)(flip ? out_w - 1 - xx : xx) * 3;
            int n = t->count[xx], x = 0;
            if (y == rows - 1 && t->first[xx] + n == in_w) {
                horizontal_pixel(p, t->weight + (size_t)xx * t->ksize, n, 3, to);
                continue;
            }
            __m128i a0 = _mm_set1_epi32(HALF), a1 = _mm_setzero_si128();
            int32_t px;
            for (; x + 1 < n; x += 2) {
                memcpy(&px, p + 3 * x, 4);
                a0 = _mm_add_epi32(a0, _mm_mullo_epi32(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(px)),
                                                       _mm_loadu_si128((const __m128i *)(w + 4 * x))));
                memcpy(&px, p + 3 * x + 3, 4);
                a1 = _mm_add_epi32(a1, _mm_mullo_epi32(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(px)),
                                                       _mm_loadu_si128((const __m128i *)(w + 4 * x + 4))));
            }
            if (x < n) {
                memcpy(&px, p + 3 * x, 4);
                a0 = _mm_add_epi32(a0, _mm_mullo_epi32(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(px)),
                                                       _mm_loadu_si128((const __m128i *)(w + 4 * x))));
            }
            /* >> 22, then saturating packs: clip8 of each lane (the sums fit 16 bits after the shift). */
            __m128i v = _mm_srai_epi32(_mm_add_epi32(a0, a1), PRECISION);
            v = _mm_packus_epi16(_mm_packs_epi32(v, v), v);
            uint32_t rgb = (uint32_t)_mm_cvtsi128_si32(v);
            to[0] = (uint8_t)rgb; to[1] = (uint8_t)(rgb >> 8); to[2] = (uint8_t)(rgb >> 16);
        }
    }
    free(lanes);
    return 0;
}
#endif

static int horizontal(const uint8_t *src, int in_w, int rows, const taps_t *t, int out_w, int channels, int flip,
                      uint8_t *dst) {
#ifdef HAVE_SSE41_PATH
    if (channels == 3 && __builtin_cpu_supports("sse4.1"))
        return horizontal_rgb_sse41(src, in_w, rows, t, out_w, flip, dst);
#endif
    horizontal_scalar(src, in_w, rows, t, out_w, channels, flip, dst);
    return 0;
}

/* Each output row: its source rows (from `first` - skip; `stride` bytes apart, `len` of each
 * read) weighted and summed along the row. */
VECTOR_CLONES static void vertical(const uint8_t *src, size_t stride, size_t len, const taps_t *t, int skip,
                                   int out_h, int32_t *acc, uint8_t *dst) {
    for (int yy = 0; yy < out_h; yy++) {
        const int32_t *k = t->weight + (size_t)yy * t->ksize;
        size_t i;
        for (i = 0; i < len; i++) acc[i] = HALF;
        for (int y = 0; y < t->count[yy]; y++) {
            const uint8_t *r = src + (size_t)(t->first[yy] - skip + y) * stride;
            int32_t ky = k[y];
            for (i = 0; i < len; i++) acc[i] += r[i] * ky;
        }
        uint8_t *o = dst + (size_t)yy * len;
        for (i = 0; i < len; i++) o[i] = clip8(acc[i]);
    }
}

static void mirror_rows(uint8_t *img, int width, int height, int channels) {
    for (int y = 0; y < height; y++) {
        uint8_t *row = img + (size_t)y * width * channels;
        for (int a = 0, b = width - 1; a < b; a++, b--)
            for (int c = 0; c < channels; c++) {
                uint8_t v = row[a * channels + c];
                row[a * channels + c] = row[b * channels + c];
                row[b * channels + c] = v;
            }
    }
}

int sk_resample(const uint8_t *src, int width, int height, int channels, const float box[4],
                int out_w, int out_h, int filter, int order, int flip, uint8_t *out) {
    size_t out_row = (size_t)out_w * channels, in_row = (size_t)width * channels;
    /* PIL's shortcut: a box of whole pixels the output's size is a crop. */
    if (box[0] - (int)box[0] == 0 && box[2] - box[0] == out_w && box[1] - (int)box[1] == 0 &&
        box[3] - box[1] == out_h) {
        for (int y = 0; y < out_h; y++)
            memcpy(out + y * out_row, src + (size_t)((int)box[1] + y) * in_row + (size_t)(int)box[0] * channels,
                   out_row);
        if (flip) mirror_rows(out, out_w, out_h, channels);
        return 0;
    }
    int need_h = out_w != width || box[0] != 0 || box[2] != out_w;
    int need_v = out_h != height || box[1] != 0 || box[3] != out_h;
    /* Pillow 13's rule, in the image's pixels, not the box's (measured on its output). */
    int v_first = need_h && need_v && order == SK_PILLOW13_ORDER && out_h < height &&
                  height - out_h > 2 * (width - out_w);
    taps_t v = {0}, h = {0};
    uint8_t *tmp = NULL;
    int32_t *acc = NULL;
    int failed = (need_v && taps_make(&v, height, box[1], box[3], out_h, filter)) ||
                 (need_h && taps_make(&h, width, box[0], box[2], out_w, filter));
    if (!failed && v_first) {
        /* The columns the horizontal pass reads, through the vertical pass, then across. */
        int first = h.first[0], cols = h.first[out_w - 1] + h.count[out_w - 1] - first;
        if (cols < 1) cols = 1;
        size_t mid_row = (size_t)cols * channels;
        for (int xx = 0; xx < out_w; xx++) h.first[xx] -= first;
        failed = (tmp = malloc((size_t)out_h * mid_row)) == NULL ||
                 (acc = malloc(mid_row * sizeof(int32_t))) == NULL;
        if (!failed) {
            vertical(src + (size_t)first * channels, in_row, mid_row, &v, 0, out_h, acc, tmp);
            failed = horizontal(tmp, cols, out_h, &h, out_w, channels, flip, out);
        }
    } else if (!failed && need_h) {
        /* Across the rows the vertical pass reads (all of them without one), then down. */
        int first = need_v ? v.first[0] : 0;
        int rows = need_v ? v.first[out_h - 1] + v.count[out_h - 1] - first : height;
        if (rows < 1) rows = 1;
        failed = (need_v && (tmp = malloc((size_t)rows * out_row)) == NULL) ||
                 (need_v && (acc = malloc(out_row * sizeof(int32_t))) == NULL);
        if (!failed)
            failed = horizontal(src + (size_t)first * in_row, width, need_v ? rows : height, &h, out_w, channels, flip,
                                need_v ? tmp : out);
        if (!failed && need_v) vertical(tmp, out_row, out_row, &v, first, out_h, acc, out);
    } else if (!failed) {
        /* Down only (the width is the box's, whole pixels from 0), or a copy. */
        failed = need_v && (acc = malloc(in_row * sizeof(int32_t))) == NULL;
        if (!failed && need_v) vertical(src, in_row, in_row, &v, 0, out_h, acc, out);
        else if (!failed) memcpy(out, src, (size_t)out_h * out_row);
        if (!failed && flip) mirror_rows(out, out_w, out_h, channels);
    }
    free(acc); free(tmp);
    taps_free(&v); taps_free(&h);
    return failed ? -1 : 0;
}
