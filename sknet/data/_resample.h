/* PIL's antialiased resize (Image.resize with BILINEAR or BICUBIC and a box), its pixels. */
#ifndef SKNET_RESAMPLE_H
#define SKNET_RESAMPLE_H

#include <stdint.h>

enum { SK_BILINEAR = 2, SK_BICUBIC = 3 };   /* PIL's Image.BILINEAR and Image.BICUBIC */

/* The order of the two passes, which shows in the pixels (each pass rounds to uint8):
 * Pillow up to 12 always goes across first; Pillow 13 goes down first when the height
 * shrinks by more than twice as many pixels as the width. */
enum { SK_ACROSS_FIRST = 0, SK_PILLOW13_ORDER = 1 };

/* src: height rows of width * channels bytes (channels 1 or 3); box: x0, y0, x1, y1 in
 * source pixels (PIL's float32 box); out: out_h rows of out_w * channels bytes, mirrored left
 * to right when flip is set. Returns 0, or -1 when out of memory. The caller checks the box
 * as PIL does (inside the image, not empty) and the sizes (at least 1). */
int sk_resample(const uint8_t *src, int width, int height, int channels, const float box[4],
                int out_w, int out_h, int filter, int order, int flip, uint8_t *out);

#endif
