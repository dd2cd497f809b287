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
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

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

static PyMethodDef methods[] = {
    {"header", header, METH_VARARGS, "(width, height, components) of a JPEG's header."},
    {"region", region, METH_VARARGS, "region(data, denom, top, left, height, width, channels) -> bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg", "libjpeg-turbo region decoding", -1, methods};

PyMODINIT_FUNC PyInit__jpeg(void) { return PyModule_Create(&module); }
