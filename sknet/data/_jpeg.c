/* Decode one rectangle of a JPEG (libjpeg-turbo's jpeg_crop_scanline / jpeg_skip_scanlines).
 *
 * A random-resized crop keeps a fraction of the image: the rows below it are never
 * entropy-decoded, the rows above it are entropy-decoded but not transformed, and only the
 * iMCU columns it touches go through the IDCT, upsampling and colour conversion. The
 * pixels are those of a full decode (the same IDCT and upsampling), so this is a fast path
 * of sknet/data/folder.py's PIL decode, never a different image.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

#include "_resample.h"

#if !defined(LIBJPEG_TURBO_VERSION_NUMBER) && JPEG_LIB_VERSION < 62
#error "needs libjpeg-turbo (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

struct fail {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct fail *f = (struct fail *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, f->message);
    longjmp(f->jump, 1);
}

/* Warnings stay off stderr; data that ends before the rows we need is an error (PIL raises
 * on a truncated file too), not the grey rows libjpeg would fill in. */
static void on_emit(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) on_error(cinfo);
}

/* header(data) -> (width, height, components) */
static PyObject *header(PyObject *self, PyObject *args) {
    Py_buffer buf;
    struct jpeg_decompress_struct cinfo;
    struct fail err;
    PyObject *out;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_emit;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, err.message);
        return NULL;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (const unsigned char *)buf.buf, (unsigned long)buf.len);
    jpeg_read_header(&cinfo, TRUE);
    out = Py_BuildValue("(iii)", (int)cinfo.image_width, (int)cinfo.image_height, cinfo.num_components);
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&buf);
    return out;
}

/* region(data, denom, top, left, height, width, channels) -> bytes, height * width * channels
 *
 * The image is scaled by 1/denom (1, 2, 4 or 8: libjpeg's DCT scaling) and the rectangle is
 * in the scaled image's pixels; channels 3 gives RGB, 1 greyscale.
 */
static PyObject *region(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int denom, top, left, height, width, channels;
    struct jpeg_decompress_struct cinfo;
    struct fail err;
    PyObject *volatile out = NULL;
    unsigned char *volatile row = NULL;
    volatile int ok = 0;
    if (!PyArg_ParseTuple(args, "y*iiiiii", &buf, &denom, &top, &left, &height, &width, &channels))
        return NULL;
    if (channels != 1 && channels != 3) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "channels must be 1 or 3");
        return NULL;
    }
    if (height <= 0 || width <= 0 || top < 0 || left < 0) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "empty or negative rectangle");
        return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)height * width * channels);
    if (out == NULL) { PyBuffer_Release(&buf); return NULL; }
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_emit;
    err.message[0] = 0;
    if (setjmp(err.jump)) goto done;
    jpeg_create_decompress(&cinfo);
    Py_BEGIN_ALLOW_THREADS
    if (setjmp(err.jump) == 0) {
        JDIMENSION x, w, y;
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
        jpeg_mem_src(&cinfo, (const unsigned char *)buf.buf, (unsigned long)buf.len);
        jpeg_read_header(&cinfo, TRUE);
        cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
        cinfo.scale_num = 1;
        cinfo.scale_denom = (unsigned int)denom;
        jpeg_start_decompress(&cinfo);
        if ((JDIMENSION)(top + height) > cinfo.output_height || (JDIMENSION)(left + width) > cinfo.output_width) {
            snprintf(err.message, sizeof err.message, "rectangle %d+%d x %d+%d outside the %ux%u image",
                     top, height, left, width, cinfo.output_height, cinfo.output_width);
        } else {
            /* crop_scanline widens the columns to iMCU boundaries: x <= left, x + w >= left + width. */
            x = (JDIMENSION)left;
            w = (JDIMENSION)width;
            jpeg_crop_scanline(&cinfo, &x, &w);
            row = (unsigned char *)malloc((size_t)w * cinfo.output_components);
            if (row == NULL) {
                snprintf(err.message, sizeof err.message, "out of memory");
            } else {
                if (top > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
                for (y = 0; y < (JDIMENSION)height; y++) {
                    JSAMPROW rows[1] = {row};
                    jpeg_read_scanlines(&cinfo, rows, 1);
                    memcpy(dst + (size_t)y * width * channels, row + (size_t)(left - x) * channels,
                           (size_t)width * channels);
                }
                ok = 1;
            }
        }
    }
    Py_END_ALLOW_THREADS
done:
    free(row);
    jpeg_destroy_decompress(&cinfo);  /* the rows below the rectangle are never read */
    PyBuffer_Release(&buf);
    if (!ok) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, err.message[0] ? err.message : "cannot decode");
        return NULL;
    }
    return out;
}

/* Colour jitter and normalisation of a uint8 HWC image, written once, to float32 CHW
 * (or, given a uint8 out, to uint8 CHW for a step that normalises: no normalisation here).
 *
 * The same arithmetic as sknet/data/transforms.py's PIL path, so the same values:
 * brightness and contrast are per-level tables rounded half to even (np.rint) of float32
 * products, the contrast's grey mean is the mean of PIL's "L" conversion (ITU-R 601-2 in
 * 16-bit fixed point), saturation is PIL's blend with that grey image (float, truncated;
 * clipped when extrapolating), normalisation is ((v * float32(1/255)) - mean) / std in
 * float32. setup.py compiles this file with -ffp-contract=off: a fused multiply-add would
 * round differently from NumPy's separate operations.
 */
static inline int grey_level(const unsigned char *p) {
    return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
}

static inline unsigned char clip_level(float v) {
    v = nearbyintf(v);
    return v <= 0.0f ? 0 : v >= 255.0f ? 255 : (unsigned char)v;
}

/* The image after the adjustments so far, without writing it: every value goes through the
 * table `pre`; after saturation (once it ran) each pixel is blended with its grey in `blend`
 * and goes through `post`. Brightness and contrast are per-level tables, so each composes
 * into `pre` (before saturation) or `post` (after it); only contrast needs the image itself,
 * for its grey mean. */
typedef struct {
    unsigned char pre[256], post[256];
    unsigned char *blend;     /* 256 x 256: [grey][level], or NULL before saturation */
} chain_t;

static inline void chain_pixel(const chain_t *ch, const unsigned char *p, unsigned char *v) {
    v[0] = ch->pre[p[0]]; v[1] = ch->pre[p[1]]; v[2] = ch->pre[p[2]];
    if (ch->blend != NULL) {
        const unsigned char *row = ch->blend + 256 * grey_level(v);
        v[0] = ch->post[row[v[0]]]; v[1] = ch->post[row[v[1]]]; v[2] = ch->post[row[v[2]]];
    }
}

static void compose(chain_t *ch, const unsigned char *table) {
    unsigned char *lut = ch->blend != NULL ? ch->post : ch->pre;
    for (int v = 0; v < 256; v++) lut[v] = table[lut[v]];
}

static float grey_mean(const chain_t *ch, const unsigned char *px, size_t n, int channels) {
    unsigned long long sum = 0;
    size_t i;
    unsigned char v[3];
    if (channels == 3)
        for (i = 0; i < n; i++) { chain_pixel(ch, px + 3 * i, v); sum += (unsigned long long)grey_level(v); }
    else
        for (i = 0; i < n; i++) sum += ch->pre[px[i]];
    return (float)((double)sum / (double)n);
}

/* finish(data, pixels, channels, order, factors, mean, std, bgr, out) */
static PyObject *finish(PyObject *self, PyObject *args) {
    Py_buffer data, order, factors, mean, std, out;
    Py_ssize_t pixels;
    int channels, bgr;
    if (!PyArg_ParseTuple(args, "y*niy*y*y*y*pw*", &data, &pixels, &channels, &order, &factors, &mean, &std,
                          &bgr, &out))
        return NULL;
    int u8 = out.len == pixels * channels;
    int failed = (channels != 1 && channels != 3) || data.len != pixels * channels ||
        factors.len != 3 * (Py_ssize_t)sizeof(float) || mean.len != channels * (Py_ssize_t)sizeof(float) ||
        std.len != channels * (Py_ssize_t)sizeof(float) ||
        (!u8 && out.len != pixels * channels * (Py_ssize_t)sizeof(float)) || order.len > 3;
    if (failed) {
        PyBuffer_Release(&data); PyBuffer_Release(&order); PyBuffer_Release(&factors);
        PyBuffer_Release(&mean); PyBuffer_Release(&std); PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "finish: buffer sizes do not match pixels x channels");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    const float *f = (const float *)factors.buf;
    const unsigned char *ops = (const unsigned char *)order.buf;
    const unsigned char *px = (const unsigned char *)data.buf;
    size_t n = (size_t)pixels, i;
    unsigned char table[256];
    chain_t ch;
    int v, c;
    for (v = 0; v < 256; v++) ch.pre[v] = ch.post[v] = (unsigned char)v;
    ch.blend = NULL;
    for (Py_ssize_t k = 0; k < order.len && !failed; k++) {
        float fk = f[ops[k]];
        if (ops[k] == 0) {                                  /* brightness */
            for (v = 0; v < 256; v++) table[v] = clip_level((float)v * fk);
            compose(&ch, table);
        } else if (ops[k] == 1) {                           /* contrast */
            float m = grey_mean(&ch, px, n, channels);
            float w = 1.0f - fk;
            for (v = 0; v < 256; v++) {
                float a = (float)v * fk;
                float b = w * m;
                table[v] = clip_level(a + b);
            }
            compose(&ch, table);
        } else if (channels == 3 && fk != 1.0f) {          /* saturation: PIL's blend(grey, image, f) */
            /* A level's blend with its pixel's grey depends on the two levels only: one table of
             * 65536 evaluations of the same float expression instead of one per value. */
            ch.blend = (unsigned char *)malloc(256 * 256);
            if (ch.blend == NULL) { failed = 1; break; }
            int inside = fk >= 0.0f && fk <= 1.0f;
            for (int g = 0; g < 256; g++)
                for (v = 0; v < 256; v++) {
                    float t = (float)g + fk * (float)(v - g);
                    unsigned char *e = ch.blend + g * 256 + v;
                    if (fk == 0.0f) *e = (unsigned char)g;
                    else if (inside) *e = (unsigned char)t;
                    else *e = t <= 0.0f ? 0 : t >= 255.0f ? 255 : (unsigned char)t;
                }
        }
    }
    if (!failed) {
        /* One pass: each pixel through the chain, each channel to its CHW plane (reversed for BGR),
         * as uint8 for a step that normalises, or through per-level normalisation tables. */
        int src[3] = {0, 1, 2};
        if (bgr && channels == 3) { src[0] = 2; src[2] = 0; }
        float levels[3][256];
        if (!u8) {
            const float *mu = (const float *)mean.buf, *sd = (const float *)std.buf;
            const float scale = (float)(1.0 / 255.0);
            for (c = 0; c < channels; c++)
                for (v = 0; v < 256; v++) {
                    float x = (float)v * scale;
                    x = x - mu[c];
                    levels[c][v] = x / sd[c];
                }
        }
        if (channels == 1) {
            if (u8) { unsigned char *o = (unsigned char *)out.buf; for (i = 0; i < n; i++) o[i] = ch.pre[px[i]]; }
            else { float *o = (float *)out.buf; for (i = 0; i < n; i++) o[i] = levels[0][ch.pre[px[i]]]; }
        } else if (u8) {
            unsigned char *o0 = (unsigned char *)out.buf, *o1 = o0 + n, *o2 = o1 + n;
            unsigned char val[3];
            for (i = 0; i < n; i++) {
                chain_pixel(&ch, px + 3 * i, val);
                o0[i] = val[src[0]]; o1[i] = val[src[1]]; o2[i] = val[src[2]];
            }
        } else {
            float *o0 = (float *)out.buf, *o1 = o0 + n, *o2 = o1 + n;
            unsigned char val[3];
            for (i = 0; i < n; i++) {
                chain_pixel(&ch, px + 3 * i, val);
                o0[i] = levels[0][val[src[0]]]; o1[i] = levels[1][val[src[1]]]; o2[i] = levels[2][val[src[2]]];
            }
        }
    }
    free(ch.blend);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data); PyBuffer_Release(&order); PyBuffer_Release(&factors);
    PyBuffer_Release(&mean); PyBuffer_Release(&std); PyBuffer_Release(&out);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* resample(data, width, height, channels, box, out_w, out_h, filter, order, flip) -> bytes
 *
 * PIL's Image.resize((out_w, out_h), filter, box) of a packed uint8 image (channels 1 or
 * 3), the same bytes (_resample.c) for the pass order of the PIL it follows (_resample.h),
 * mirrored left to right with flip. The checks and their messages are PIL's. */
static PyObject *resample(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int width, height, channels, out_w, out_h, filter, order, flip, rc;
    float box[4];
    const char *bad = NULL;
    if (!PyArg_ParseTuple(args, "y*iii(ffff)iiiip", &buf, &width, &height, &channels, &box[0], &box[1], &box[2],
                          &box[3], &out_w, &out_h, &filter, &order, &flip))
        return NULL;
    if (channels != 1 && channels != 3) bad = "channels must be 1 or 3";
    else if (filter != SK_BILINEAR && filter != SK_BICUBIC) bad = "filter must be PIL's BILINEAR or BICUBIC";
    else if (order != SK_ACROSS_FIRST && order != SK_PILLOW13_ORDER) bad = "order must be 0 or 1";
    else if (width < 1 || height < 1 || buf.len != (Py_ssize_t)width * height * channels)
        bad = "data is not width x height x channels bytes";
    else if (out_w < 1 || out_h < 1) bad = "height and width must be > 0";
    else if (!isfinite(box[0]) || !isfinite(box[1]) || !isfinite(box[2]) || !isfinite(box[3]))
        bad = "box must be finite";   /* PIL lets NaN through its checks, into undefined casts */
    else if (box[0] < 0 || box[1] < 0) bad = "box offset can't be negative";
    else if (box[2] > width || box[3] > height) bad = "box can't exceed original image size";
    else if (box[2] - box[0] < 0 || box[3] - box[1] < 0) bad = "box can't be empty";
    if (bad != NULL) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, bad);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)out_w * out_h * channels);
    if (out == NULL) { PyBuffer_Release(&buf); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    rc = sk_resample((const uint8_t *)buf.buf, width, height, channels, box, out_w, out_h, filter, order, flip,
                     (uint8_t *)PyBytes_AS_STRING(out));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (rc != 0) { Py_DECREF(out); return PyErr_NoMemory(); }
    return out;
}

static PyMethodDef methods[] = {
    {"header", header, METH_VARARGS, "(width, height, components) of a JPEG's header."},
    {"region", region, METH_VARARGS, "region(data, denom, top, left, height, width, channels) -> bytes"},
    {"resample", resample, METH_VARARGS,
     "resample(data, width, height, channels, box, out_w, out_h, filter, order, flip) -> bytes: PIL's resize"},
    {"finish", finish, METH_VARARGS,
     "finish(data, pixels, channels, order, factors, mean, std, bgr, out): jitter + normalise into out (float32), or jitter alone (uint8 out)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg",
    "libjpeg-turbo region decoding; PIL's resize; colour jitter and normalisation in one pass", -1, methods};

PyMODINIT_FUNC PyInit__jpeg(void) { return PyModule_Create(&module); }
