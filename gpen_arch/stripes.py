"""The decoder's last resolution computed in horizontal stripes.

At the top resolution (2048 px for GPEN-BFR-2048) nothing downstream needs the whole activation: only the RGB
image. Computing it a band of rows at a time keeps the 0.25-0.5 GB full-resolution activations (and their page
faults on CPU) out of memory; every band reads the rows of the previous resolution it depends on, so the result is
the whole-image computation's, row for row.

Row bookkeeping, for output rows [a, b) of the top resolution R = 2h:
- the styled conv at R (3x3, padding 1) needs the up-conv's rows [a - 1, b + 1);
- the up-conv is a stride-2 transposed 3x3 conv (output row o takes input rows i with 0 <= o - 2i <= 2) followed by
  the 4x4 blur with padding 1 (row p takes transposed rows p - 1 .. p + 2);
- ToRGB adds the previous RGB upsampled by a stride-2 transposed 4x4 filter with padding 1 (row o takes rows i
  with 0 <= o + 1 - 2i <= 3).
Beyond the image, rows are the zeros the whole-image convolutions pad with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import StyledConv, ToRGB, empty_like_layout

# Bytes of one band's widest activation (2 x channels x rows x width): below glibc's largest mmap threshold
# (32 MiB), so band buffers are recycled by the allocator instead of being faulted in afresh each time.
STRIPE_BYTES = 16 * 2**20


def stripe_rows(channels: int, width: int, batch: int, itemsize: int, stripe_bytes: int = STRIPE_BYTES) -> int:
    """Rows per band (even, at least 8) so that a `[batch, channels, rows, width]` band fits `stripe_bytes`."""
    rows = stripe_bytes // max(batch * channels * width * itemsize, 1)
    return max(8, rows - rows % 2)


def last_level_in_stripes(
    up_conv: StyledConv,
    conv: StyledConv,
    to_rgb: ToRGB,
    x: torch.Tensor,
    w: torch.Tensor,
    feature: torch.Tensor,
    skip: torch.Tensor,
    rows: int,
) -> torch.Tensor:
    """RGB `[B, 3, R, R]` of the last resolution, `rows` output rows at a time.

    `x` `[B, Cin, R/2, R/2]` is the previous resolution's activation (consumed: it may be scaled in place),
    `feature` `[B, C, R, R]` the encoder feature injected at R, `skip` `[B, 3, R/2, R/2]` the RGB so far.
    """
    batch, _, half, _ = x.shape
    size = 2 * half
    out_c = up_conv.conv.weight.shape[1]
    up_scales, conv_scales = up_conv.conv.input_scales(w), conv.conv.input_scales(w)
    up_demod, conv_demod = up_conv.conv.demodulation(up_scales), conv.conv.demodulation(conv_scales)
    rgb_scales = to_rgb.conv.input_scales(w)
    x, up_weight = up_conv.conv.prepare(x, up_scales)
    up_weight = up_weight.transpose(0, 1)  # conv_transpose2d wants [in, out, k, k]
    blur = up_conv.conv.blur.depthwise_weight(out_c, x.dtype)
    skip_filter = to_rgb.upsample.depthwise_weight(3, skip.dtype)
    image = empty_like_layout(feature, (batch, 3, size, size))
    # Two band buffers reused by every band: the up-conv's output with one halo row above and below (zero
    # beyond the image, as the 3x3 conv's padding would be), and the styled conv's output.
    halo_band = empty_like_layout(feature, (batch, 2 * out_c, rows + 2, size))
    band = empty_like_layout(feature, (batch, 2 * out_c, rows, size))

    for top in range(0, size, rows):
        bottom = min(top + rows, size)
        # Up-conv rows [a1, b1): the band plus the 3x3 conv's one-row halo, inside the image.
        a1, b1 = max(top - 1, 0), min(bottom + 1, size)
        # Transposed rows [a1 - 1, b1 + 2) for the blur; input rows [i0, i1) give all of them exactly.
        i0, i1 = max(0, (a1 - 2) // 2), min(half, (b1 + 3) // 2)
        transposed = F.conv_transpose2d(x[:, :, i0:i1], up_weight, stride=2)  # rows from 2 * i0
        lo, hi = a1 - 1, b1 + 2
        transposed = transposed[:, :, max(lo, 0) - 2 * i0 : min(hi, 2 * half + 1) - 2 * i0]
        transposed = F.pad(transposed, (0, 0, max(0, -lo), max(0, hi - (2 * half + 1))))
        y = F.conv2d(transposed, blur, padding=(0, up_conv.conv.blur.pad), groups=out_c)
        del transposed
        halo = halo_band[:, :, : bottom - top + 2]
        first, last = a1 - (top - 1), b1 - (top - 1)  # rows of `halo` inside the image
        halo[:, :, :first].zero_()
        halo[:, :, last:].zero_()
        up_conv.activate_into(halo[:, :, first:last], y, up_demod, feature[:, :, a1:b1])
        del y

        halo, weight = conv.conv.prepare(halo, conv_scales)
        y = F.conv2d(halo, weight, padding=(0, weight.shape[-1] // 2))
        out = conv.activate_into(band[:, :, : bottom - top], y, conv_demod, feature[:, :, top:bottom])
        del y

        # Previous RGB rows [j0, j1) upsampled: local row o - 2 * j0 + 1 is output row o.
        j0, j1 = max(0, (top - 2) // 2), min(half, bottom // 2 + 1)
        upsampled = F.conv_transpose2d(skip[:, :, j0:j1], skip_filter, stride=2, padding=(0, 1), groups=3)
        rows_up = upsampled[:, :, top - 2 * j0 + 1 : bottom - 2 * j0 + 1]
        image[:, :, top:bottom] = to_rgb.rgb(out, rgb_scales).add_(rows_up)
    return image

