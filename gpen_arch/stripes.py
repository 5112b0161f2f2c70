"""The network's highest resolutions computed in horizontal bands of rows.

At the top resolutions (512 to 2048 px for GPEN-BFR-2048) nothing needs a whole activation at once: the decoder
ends in an RGB image, and each of its rows depends on a few rows of the resolution below. Here the top decoder
resolutions (up to `STREAMED_LEVELS`) are one pipeline of bands: each band of the last resolution asks the level
below for the rows it reads, which that level computes (from whole tensors, or again from the level below) and
keeps only in a window of rows (`StreamedLevel`). The encoder's two top outputs (ecd0 at full resolution, ecd1
at half), read by the next encoder stage and by the decoder's two top resolutions, are row sources too
(`EncoderRows`, `StageRows`): their rows are computed from the input image whenever asked, at about 2.5 % more
FLOPs, instead of being kept (0.25 + 0.125 GB at 2048 px; on CPU the page faults of fresh large tensors cost
more than the arithmetic). Every band reads exactly the rows the whole-image computation would, so results are
the whole-image ones, row for row, up to rounding (bit for bit where both use the same kernels).

Row bookkeeping, for output rows [a, b) of a decoder resolution R = 2h:
- the styled conv at R (3x3, padding 1) needs the up-conv's rows [a - 1, b + 1);
- the up-conv is a stride-2 transposed 3x3 conv (output row o takes input rows i with 0 <= o - 2i <= 2) followed by
  the 4x4 blur with padding 1 (row p takes transposed rows p - 1 .. p + 2);
- ToRGB adds the previous RGB upsampled by a stride-2 transposed 4x4 filter with padding 1 (row o takes rows i
  with 0 <= o + 1 - 2i <= 3).
For a downsampling encoder stage (4x4 blur with padding 2, then a 3x3 stride-2 conv without padding),
output rows [a, b) read the blur's rows [2a, 2b + 1), which read input rows [2a - 2, 2b + 2).
Beyond the image, rows are the zeros the whole-image convolutions pad with.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .layers import EncoderBlock, StyledConv, ToRGB, empty_like_layout

# Bytes of one band's widest activation (2 x channels x rows x width): below glibc's largest mmap threshold
# (32 MiB), so band buffers are recycled by the allocator instead of being faulted in afresh each time. Bands run
# on the CPU only (GPEN.forward): a GPU's caching allocator recycles whole activations as well.
STRIPE_BYTES = 16 * 2**20
# Decoder resolutions computed as one pipeline of bands (the top one and the two below it): GPEN-2048's 1024-px
# and 512-px activations (0.25 and 0.125 GB, plus the up-convs' temporaries) then never exist whole either.
STREAMED_LEVELS = 3
# ... of which those below the top only where one sample's whole activation is at least this large: there it
# matters (GPEN-2048: 0.125 and 0.25 GB at 512 and 1024 px; GPEN-512's 256-px level: 64 MiB); smaller ones cost
# little, and bands of them would be so small that torch picks other convolution kernels for them (it leaves
# oneDNN below 20480 input values), which round differently from the whole tensor's.
STREAM_FROM_BYTES = 32 * 2**20


def stripe_rows(channels: int, width: int, batch: int, itemsize: int, stripe_bytes: int = STRIPE_BYTES) -> int:
    """Rows per band (even, at least 8) so that a `[batch, channels, rows, width]` band fits `stripe_bytes`."""
    rows = stripe_bytes // max(batch * channels * width * itemsize, 1)
    return max(8, rows - rows % 2)


class RowSource(Protocol):
    """Rows of a `[1, C, height, W]` activation, handed out a band at a time."""

    height: int

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        """Rows [top, bottom) (inside the image) as a `[1, C, bottom - top, W]` tensor, possibly a view."""
        ...


class WholeRows:
    """A tensor that exists whole (one sample of it)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.height = tensor.shape[2]

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        return self.tensor[:, :, top:bottom]

    def sample(self, index: int) -> WholeRows:
        return WholeRows(self.tensor[index : index + 1])


class EncoderRows:
    """The output of a 1x1 encoder stage (`ecd0`), computed from the matching rows of its input on request."""

    def __init__(self, block: EncoderBlock, x: torch.Tensor, memory_format: torch.memory_format) -> None:
        self.block = block
        self.x = x
        self.memory_format = memory_format
        self.height = x.shape[2]

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        # A band of the (small, 3-channel) input in the network's layout; the block then allocates its output
        # like it.
        return self.block(self.x[:, :, top:bottom].contiguous(memory_format=self.memory_format))

    def sample(self, index: int) -> EncoderRows:
        return EncoderRows(self.block, self.x[index : index + 1], self.memory_format)


class StageRows:
    """The output of a downsampling encoder stage (blur, 3x3 stride-2 conv, bias + leaky ReLU), computed from
    the rows of its input (`source`) on request."""

    def __init__(self, stage: EncoderBlock, source: WholeRows | EncoderRows | StageRows) -> None:
        self.stage = stage
        self.source = source
        self.height = source.height // 2

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        blur, source = self.stage[0], self.source
        lo, hi = 2 * top - blur.pad, 2 * bottom + blur.pad  # input rows [lo, hi), see the module docstring
        band = source.rows(max(lo, 0), min(hi, source.height))
        band = pad_rows(band, max(0, -lo), max(0, hi - source.height))
        channels = band.shape[1]
        weight = blur.depthwise_weight(channels, band.dtype)
        blurred = F.conv2d(band, weight, padding=(0, blur.pad), groups=channels)
        del band
        return self.stage.conv_activate(blurred)

    def sample(self, index: int) -> StageRows:
        return StageRows(self.stage, self.source.sample(index))


# What a decoder level's up-conv and styled conv concatenate, as row sources: the same encoder feature twice, or
# each its own noise (the levels of FullGenerator_SR above its input size).
LayerRows = tuple[WholeRows | EncoderRows | StageRows, WholeRows | EncoderRows | StageRows]


def layer_rows(feature: torch.Tensor | EncoderRows | StageRows | tuple[torch.Tensor, torch.Tensor]) -> LayerRows:
    """A decoder level's `LayerRows` from what the whole-image decoder takes: an encoder feature (a tensor, or rows
    computed on request) serves both convs as one source; a pair of noise tensors gives one source each."""
    if isinstance(feature, tuple):
        return WholeRows(feature[0]), WholeRows(feature[1])
    source = WholeRows(feature) if isinstance(feature, torch.Tensor) else feature
    return source, source


def encode_in_bands(source: StageRows, rows: int) -> torch.Tensor:
    """The whole output of `source`, computed `rows` rows at a time (so that no input of it exists whole)."""
    out = None
    for top in range(0, source.height, rows):
        bottom = min(top + rows, source.height)
        result = source.rows(top, bottom)
        if out is None:
            out = empty_like_layout(result, (*result.shape[:2], source.height, result.shape[3]))
        out[:, :, top:bottom] = result
    return out


def pad_rows(x: torch.Tensor, above: int, below: int) -> torch.Tensor:
    """`x` with zero rows added above and below, in its own layout; `x` itself when there are none (F.pad copies
    even then)."""
    if not above and not below:
        return x
    padded = empty_like_layout(x, (x.shape[0], x.shape[1], above + x.shape[2] + below, x.shape[3]))
    padded[:, :, :above].zero_()
    padded[:, :, above + x.shape[2] :].zero_()
    padded[:, :, above : above + x.shape[2]] = x
    return padded


class BandedLevel:
    """One decoder resolution (up-conv, styled conv, ToRGB) with ONE sample's styles folded into its weights,
    computed a band of rows at a time. Reads its input and encoder feature through `RowSource`s."""

    def __init__(
        self, up_conv: StyledConv, conv: StyledConv, to_rgb: ToRGB, w: torch.Tensor, dtype: torch.dtype, size: int
    ) -> None:
        """`w` one sample's latent; `size` the resolution. The styles go where the whole-image computation puts
        them (see `ModulatedConv2d.prepare`), so that both round alike: into the weights, or, for the up-conv,
        into its input (`input_scales`, which the caller applies) and, for the styled conv, into its band."""
        self.up_conv, self.conv = up_conv, conv
        self.out_channels = up_conv.conv.weight.shape[1]
        up_scales, conv_scales = up_conv.conv.input_scales(w), conv.conv.input_scales(w)
        self.up_demod, self.conv_demod = up_conv.conv.demodulation(up_scales), conv.conv.demodulation(conv_scales)
        self.input_scales = self.conv_scales = None
        in_channels = up_conv.conv.weight.shape[2]
        if up_conv.conv.folds_styles(in_channels * (size // 2) ** 2):
            up_weight = up_conv.conv.styled_weight(up_scales, dtype)
        else:
            up_weight, self.input_scales = up_conv.conv.weight[0].to(dtype), up_scales.to(dtype).view(1, -1, 1, 1)
        self.up_weight = up_weight.transpose(0, 1)  # conv_transpose2d wants [in, out, k, k]
        if conv.conv.folds_styles(2 * self.out_channels * size**2):
            self.conv_weight = conv.conv.styled_weight(conv_scales, dtype)
        else:
            self.conv_weight, self.conv_scales = conv.conv.weight[0].to(dtype), conv_scales.to(dtype).view(1, -1, 1, 1)
        self.blur = up_conv.conv.blur.depthwise_weight(self.out_channels, dtype)
        self.blur_pad = up_conv.conv.blur.pad
        self.to_rgb = to_rgb
        self.rgb_scales = to_rgb.conv.input_scales(w)
        self.skip_filter = to_rgb.upsample.depthwise_weight(3, dtype)

    def compute(
        self,
        x: RowSource,
        features: LayerRows,
        skip: torch.Tensor,
        top: int,
        bottom: int,
        out: torch.Tensor,
        halo: torch.Tensor,
        rgb: torch.Tensor,
    ) -> None:
        """Write activation rows [top, bottom) into `out` `[1, 2 * C, bottom - top, W]` and RGB rows into
        `rgb[:, :, top:bottom]`. `x` is the previous resolution's activation, `features` what the up-conv and the
        styled conv concatenate, `skip` the previous RGB (whole), `halo` a scratch buffer of at least
        `bottom - top + 2` rows."""
        half = x.height
        size = 2 * half
        # Up-conv rows [a1, b1): the band plus the 3x3 conv's one-row halo, inside the image.
        a1, b1 = max(top - 1, 0), min(bottom + 1, size)
        # Transposed rows [a1 - 1, b1 + 2) for the blur; input rows [i0, i1) give all of them exactly.
        i0, i1 = max(0, (a1 - 2) // 2), min(half, (b1 + 3) // 2)
        transposed = F.conv_transpose2d(x.rows(i0, i1), self.up_weight, stride=2)  # rows from 2 * i0
        lo, hi = a1 - 1, b1 + 2
        transposed = transposed[:, :, max(lo, 0) - 2 * i0 : min(hi, 2 * half + 1) - 2 * i0]
        transposed = pad_rows(transposed, max(0, -lo), max(0, hi - (2 * half + 1)))
        y = F.conv2d(transposed, self.blur, padding=(0, self.blur_pad), groups=self.out_channels)
        del transposed
        halo = halo[:, :, : bottom - top + 2]
        first, last = a1 - (top - 1), b1 - (top - 1)  # rows of `halo` inside the image
        halo[:, :, :first].zero_()
        halo[:, :, last:].zero_()
        up_source, conv_source = features
        up_rows = up_source.rows(a1, b1)
        # An encoder feature serves both styled convs (computed once); noise levels have one per conv.
        if conv_source is up_source:
            conv_rows = up_rows[:, :, top - a1 : bottom - a1]
        else:
            conv_rows = conv_source.rows(top, bottom)
        self.up_conv.activate_into(halo[:, :, first:last], y, self.up_demod, up_rows)
        del y, up_rows

        if self.conv_scales is not None:
            halo.mul_(self.conv_scales)
        y = F.conv2d(halo, self.conv_weight, padding=(0, self.conv_weight.shape[-1] // 2))
        self.conv.activate_into(out, y, self.conv_demod, conv_rows)
        del y, conv_rows

        # Previous RGB rows [j0, j1) upsampled: local row o - 2 * j0 + 1 is output row o.
        j0, j1 = max(0, (top - 2) // 2), min(half, bottom // 2 + 1)
        upsampled = F.conv_transpose2d(skip[:, :, j0:j1], self.skip_filter, stride=2, padding=(0, 1), groups=3)
        rows_up = upsampled[:, :, top - 2 * j0 + 1 : bottom - 2 * j0 + 1]
        rgb[:, :, top:bottom] = self.to_rgb.rgb(out, self.rgb_scales) + rows_up  # 3 channels: a tiny temporary


class StreamedLevel:
    """A decoder resolution whose activation is computed on request, in increasing row order, and kept only in a
    window of rows (the next resolution's bands overlap by a few rows). Its RGB goes to the whole `rgb`."""

    def __init__(
        self,
        level: BandedLevel,
        x: RowSource,
        features: LayerRows,
        skip: torch.Tensor,
        band_rows: int,
        request_rows: int,
        layout: torch.Tensor,
    ) -> None:
        """`band_rows` rows are computed at a time; the consumer asks for at most `request_rows` at once; buffers
        take `layout`'s device, dtype and memory format."""
        self.level, self.x, self.features, self.skip = level, x, features, skip
        self.height = 2 * x.height
        self.band_rows = band_rows
        channels, width = 2 * level.out_channels, self.height
        self.rgb = empty_like_layout(layout, (1, 3, self.height, width))
        self.window = empty_like_layout(layout, (1, channels, band_rows + request_rows, width))
        self.halo = empty_like_layout(layout, (1, channels, band_rows + 2, width))
        self.first = 0  # image row of the window's first row
        self.end = 0  # rows [first, end) are in the window, and every row before `end` has its RGB
        # The consumer's input scales, applied to each band once its RGB is out (None: the consumer's weights
        # carry its styles).
        self.output_scales: torch.Tensor | None = None

    def rows(self, top: int, bottom: int) -> torch.Tensor:
        if top < self.first:
            raise ValueError(f"rows from {top} were requested after they were dropped (kept from {self.first})")
        if bottom > self.end:
            self.advance(top, bottom)
        return self.window[:, :, top - self.first : bottom - self.first]

    def advance(self, top: int, bottom: int) -> None:
        """Compute rows up to at least `bottom` (a whole band where possible), first dropping the rows before `top`
        if the window is full."""
        new_end = min(self.height, max(bottom, self.end + self.band_rows))
        if new_end - self.first > self.window.shape[2]:
            self.drop_before(top)
        if new_end - self.first > self.window.shape[2]:
            raise ValueError(f"a request for rows [{top}, {bottom}) does not fit the window")
        for start in range(self.end, new_end, self.band_rows):
            stop = min(start + self.band_rows, new_end)
            out = self.window[:, :, start - self.first : stop - self.first]
            self.level.compute(self.x, self.features, self.skip, start, stop, out, self.halo, self.rgb)
            if self.output_scales is not None:
                out.mul_(self.output_scales)
        self.end = new_end

    def drop_before(self, top: int) -> None:
        """Move the rows from `top` on to the window's start."""
        keep = max(0, self.end - top)
        source = self.window[:, :, self.end - keep - self.first : self.end - self.first]
        if keep > self.end - keep - self.first:  # source and destination overlap
            source = source.clone()
        self.window[:, :, :keep] = source
        self.first = self.end - keep


def input_rows_needed(rows: int) -> int:
    """Most input rows one band of `rows` output rows reads (see `BandedLevel.compute`: [(top - 3) // 2,
    (bottom + 4) // 2)), with a margin."""
    return rows // 2 + 4


def decode_in_bands(
    levels: list[tuple[StyledConv, StyledConv, ToRGB]],
    x: torch.Tensor,
    w: torch.Tensor,
    features: list[LayerRows],
    skip: torch.Tensor,
    rows: list[int],
) -> torch.Tensor:
    """RGB `[B, 3, R, R]` of the last of `levels`, all of them computed as one pipeline of bands.

    `x` `[B, Cin, h, h]` is the activation before the first of `levels` (consumed), `skip` its RGB,
    `features[i]` what level i's up-conv and styled conv concatenate (the same encoder feature twice, whole or
    computed rows, or two noise tensors), `rows[i]` the band height of level i. The samples of a batch run one
    after another: each has its own styles folded into the weights.
    """
    images = []
    for index in range(x.shape[0]):
        one = slice(index, index + 1)
        source: WholeRows | StreamedLevel = WholeRows(x[one])
        rgb = skip[one]
        size = 2 * x.shape[2]
        for (up_conv, conv, to_rgb), feature, level_rows, next_rows in zip(levels[:-1], features, rows, rows[1:]):
            level = BandedLevel(up_conv, conv, to_rgb, w[one], x.dtype, size)
            scale_input(source, level)
            request = input_rows_needed(next_rows)
            source = StreamedLevel(level, source, sample_pair(feature, index), rgb, level_rows, request, x[one])
            rgb = source.rgb
            size *= 2
        top_level = BandedLevel(*levels[-1], w[one], x.dtype, size)
        scale_input(source, top_level)
        images.append(last_level(top_level, source, sample_pair(features[-1], index), rgb, rows[-1], x[one]))
    return images[0] if len(images) == 1 else torch.cat(images)


def sample_pair(features: LayerRows, index: int) -> LayerRows:
    """One sample of a level's pair of row sources, one source still shared where it was."""
    up, conv = features
    up_sample = up.sample(index)
    return up_sample, up_sample if conv is up else conv.sample(index)


def scale_input(source: WholeRows | StreamedLevel, level: BandedLevel) -> None:
    """Apply `level`'s input scales, if it has any, to its input: in place on a whole tensor (consumed), or to
    each band a streamed level produces."""
    if level.input_scales is None:
        return
    if isinstance(source, WholeRows):
        source.tensor.mul_(level.input_scales)
    else:
        source.output_scales = level.input_scales


def last_level(
    level: BandedLevel, x: RowSource, features: LayerRows, skip: torch.Tensor, rows: int, layout: torch.Tensor
) -> torch.Tensor:
    """The RGB image `[1, 3, R, R]` of the top resolution, `rows` rows at a time (its activation is dropped);
    buffers take `layout`'s device, dtype and memory format."""
    size = 2 * x.height
    channels = 2 * level.out_channels
    image = empty_like_layout(layout, (1, 3, size, size))
    # Two band buffers reused by every band: the up-conv's output with one halo row above and below, and the
    # styled conv's output.
    halo = empty_like_layout(layout, (1, channels, rows + 2, size))
    band = empty_like_layout(layout, (1, channels, rows, size))
    for top in range(0, size, rows):
        bottom = min(top + rows, size)
        level.compute(x, features, skip, top, bottom, band[:, :, : bottom - top], halo, image)
    return image
