"""GPEN (GAN Prior Embedded Network, Yang et al., CVPR 2021), written here for inference.

A convolutional encoder reduces the face to 4x4 and a latent code; a StyleGAN2 decoder regenerates it, taking
the encoder feature of each resolution as its "noise" (concatenated channels). The state dict matches upstream's
`FullGenerator` key for key, so published GPEN-BFR checkpoints load strictly, and upstream's `FullGenerator_SR`
(a decoder larger than the encoder's input) as well.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .layers import ConstantInput, EncoderBlock, EqualLinear, PixelNorm, StyledConv, ToRGB
from .stripes import (
    STREAM_FROM_BYTES,
    STREAMED_LEVELS,
    STRIPE_BYTES,
    EncoderRows,
    StageRows,
    WholeRows,
    decode_in_bands,
    encode_in_bands,
    layer_rows,
    stripe_rows,
)

SIZES = (64, 128, 256, 512, 1024, 2048)  # every resolution the channel table below covers from 4x4 up
# When the decoder's top is banded, this many of the encoder's top outputs are computed on request, band by
# band, from the input image (ecd0 and ecd1: for GPEN-2048 the 0.25 GB and 0.125 GB features, and the blurred
# copies of them the next stages would make, never exist whole; recomputing them costs about 2.5 % more FLOPs).
ENCODER_ROWS_ON_REQUEST = 2
# Seed of the noise that the decoder levels above the encoder's input size take (FullGenerator_SR): upstream draws
# it afresh from torch's global generator at every call, so its output for one face changes from run to run; here
# it is drawn once, from this seed and in upstream's order, and every face of every call gets the same noise.
# Each draw is a valid sample of what the network was trained with; fixing it makes a restore repeatable and a
# video steady, and equal to upstream's output when upstream's generator is seeded with it (tests/test_gpen_arch.py).
NOISE_SEED = 0


def channel_table(channel_multiplier: float, narrow: float) -> dict[int, int]:
    """Channels per resolution, exactly as upstream's `FullGenerator` computes them (int() truncation included)."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16, 2048: 8}
    return {
        res: int(c * narrow) if res <= 32 else int(c * channel_multiplier * narrow) for res, c in base.items()
    }


class StyleDecoder(nn.Module):
    """Upstream's `Generator`: mapping network, 4x4 constant, and two styled convs plus a ToRGB per resolution."""

    def __init__(self, *, size: int, style_dim: int, n_mlp: int, channels: Mapping[int, int]) -> None:
        super().__init__()
        # Index 0 is the parameter-free PixelNorm, so the MLP's keys start at `style.1` as upstream's do.
        self.style = nn.Sequential(
            PixelNorm(), *(EqualLinear(style_dim, style_dim, lr_mul=0.01, activate=True) for _ in range(n_mlp))
        )
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], style_dim)
        self.to_rgb1 = ToRGB(2 * channels[4], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_c = channels[4]
        for log_res in range(3, int(math.log2(size)) + 1):
            out_c = channels[2**log_res]
            # Inputs are doubled by the concatenated encoder feature of the previous layer.
            self.convs.append(StyledConv(2 * in_c, out_c, style_dim, upsample=True))
            self.convs.append(StyledConv(2 * out_c, out_c, style_dim))
            self.to_rgbs.append(ToRGB(2 * out_c, style_dim))
            in_c = out_c
        self.size = 2 ** (len(self.to_rgbs) + 2)
        # The top resolutions are computed in bands of rows this many bytes wide (see stripes.py); 0 = whole.
        self.stripe_bytes = STRIPE_BYTES
        # Levels below the top are streamed with it where their whole activation is this large (see stripes.py).
        self.stream_from_bytes = STREAM_FROM_BYTES

    def band_rows(self, itemsize: int) -> list[int] | None:
        """Band heights of the resolutions computed as one pipeline of bands, lowest first: the top one, and up
        to `STREAMED_LEVELS - 1` below it whose whole activation has at least `stream_from_bytes`. None when the
        top resolution fits one band (small models) or banding is off (`stripe_bytes` 0)."""
        if not self.stripe_bytes:
            return None
        levels = len(self.to_rgbs)  # level k is resolution 2**(k + 3)

        def activation_bytes(k: int) -> int:  # one sample's, whole: twice its up-conv's output channels
            return 2 * self.convs[2 * k].conv.weight.shape[1] * 4 ** (k + 3) * itemsize

        first = levels - 1
        while first > max(0, levels - STREAMED_LEVELS) and activation_bytes(first - 1) >= self.stream_from_bytes:
            first -= 1
        # A band holds `stripe_bytes` of its level's widest activation (twice the up-conv's output channels).
        rows = [
            stripe_rows(2 * self.convs[2 * k].conv.weight.shape[1], 2 ** (k + 3), 1, itemsize, self.stripe_bytes)
            for k in range(first, levels)
        ]
        if rows[-1] >= self.size:
            return None
        return rows

    def forward(
        self,
        latent: torch.Tensor,
        features: list,
        memory_format: torch.memory_format,
        band_rows: list[int] | None = None,
    ) -> torch.Tensor:
        """`latent` [B, style_dim]; `features` what each resolution concatenates, from 4x4 upwards: the encoder
        outputs (with `band_rows`, the top ones may be row sources, see stripes.py), then a pair of noise tensors
        per level above the encoder's input size; consumed (emptied) as used. Activations are kept in
        `memory_format` (layers allocate their outputs like their inputs). `band_rows`: from `self.band_rows`, to
        compute the top resolutions in bands."""
        w = self.style(latent.float())
        x = self.input(latent.shape[0], features[0].dtype).contiguous(memory_format=memory_format)
        # The activation lives only in this list, and each styled conv pops it: the previous activation is
        # freed as soon as it has been convolved (see StyledConv).
        activation = [x]
        del x
        activation.append(self.conv1(activation, w, features.pop(0)))
        skip = self.to_rgb1(activation[0], w)
        levels = list(zip(self.convs[::2], self.convs[1::2], self.to_rgbs))
        for level, (up_conv, conv, to_rgb) in enumerate(levels):
            # Popping drops our reference too, so each encoder feature is freed once its resolution is done.
            if band_rows and level == len(levels) - len(band_rows):
                banded = [layer_rows(f) for f in features]
                return decode_in_bands(levels[level:], activation.pop(), w, banded, skip, band_rows)
            up_feature, conv_feature = layer_features(features.pop(0))
            activation.append(up_conv(activation, w, up_feature))
            activation.append(conv(activation, w, conv_feature, reuse_input=True))
            del up_feature, conv_feature
            skip = to_rgb(activation[0], w, skip)
        return skip


def layer_features(feature: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """What a decoder level's up-conv and styled conv concatenate: one encoder feature for both, or a pair of
    noise tensors (the levels above the encoder's input size)."""
    return feature if isinstance(feature, tuple) else (feature, feature)


class GPEN(nn.Module):
    """GPEN face restorer. `forward(x)`: `[B, 3, S, S]` RGB in [-1, 1] -> `[B, 3, S', S']` RGB, about [-1, 1], where
    S is `size` and S' is `out_size`.

    The upstream `FullGenerator(size, style_dim, n_mlp, channel_multiplier, narrow=narrow)`; GPEN-BFR-2048 is
    `GPEN(size=2048)`. With an `out_size` above `size`, upstream's `FullGenerator_SR(size, out_size, ...)`: the
    decoder levels above `size` have no encoder feature and take noise instead, fixed here (see `NOISE_SEED`).
    Deterministic. Runs in whatever device and dtype the module is moved to. A new instance carries upstream's
    random initialisation (useful for tests); real weights come through `from_state_dict` or `load_gpen`.
    """

    def __init__(
        self,
        *,
        size: int,
        out_size: int | None = None,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: float = 2,
        narrow: float = 1.0,
    ) -> None:
        super().__init__()
        out_size = size if out_size is None else out_size
        for name, value in (("size", size), ("out_size", out_size)):
            if value < 8 or value & (value - 1) or value > max(SIZES):
                raise ValueError(f"GPEN {name} must be a power of two from 8 to {max(SIZES)}, got {value}")
        if out_size < size:
            raise ValueError(f"GPEN out_size ({out_size}) must not be below its input size ({size})")
        self.size = size
        self.out_size = out_size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.channel_multiplier = channel_multiplier
        self.narrow = narrow
        channels = channel_table(channel_multiplier, narrow)
        log_size = int(math.log2(size))

        self.generator = StyleDecoder(size=out_size, style_dim=style_dim, n_mlp=n_mlp, channels=channels)
        # Encoder stages are attributes ecd0..ecd{log_size-2}, each wrapped in a Sequential as upstream's are.
        self.ecd0 = nn.Sequential(EncoderBlock(3, channels[size], downsample=False))
        for index, log_res in enumerate(range(log_size, 2, -1), start=1):
            stage = EncoderBlock(channels[2**log_res], channels[2 ** (log_res - 1)], downsample=True)
            setattr(self, f"ecd{index}", nn.Sequential(stage))
        self.encoder_depth = log_size - 1
        self.final_linear = nn.Sequential(EqualLinear(channels[4] * 4 * 4, style_dim, activate=True))
        # The noise of the decoder levels above `size`, two layers each, lowest first, in upstream's order of
        # drawing (one sample; every face of a batch shares it). Not part of the state dict, as upstream's is not.
        self.noise_levels = int(math.log2(out_size)) - log_size
        generator = torch.Generator(device="cpu").manual_seed(NOISE_SEED)
        for index in range(2 * self.noise_levels):
            resolution = 2 ** (log_size + 1 + index // 2)
            # Drawn on the CPU even while a model is built on the meta device: the loaded model keeps it.
            noise = torch.randn(1, channels[resolution], resolution, resolution, generator=generator, device="cpu")
            self.register_buffer(f"noise{index}", noise, persistent=False)
        # Layout of the activations; results are the same in either. Set torch.contiguous_format for backends
        # where channels-last is slow.
        self.memory_format = torch.channels_last

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> GPEN:
        """Build the GPEN that `state_dict` describes (hyperparameters read from its keys and shapes) and load it
        strictly. Raises `UnsupportedCheckpointError` when it is not a GPEN state dict."""
        from .config import check_state_dict, infer_config  # config imports this module

        # Built without memory or random init, then the checkpoint's tensors are adopted as they are.
        with torch.device("meta"):
            model = cls(**infer_config(state_dict))
        check_state_dict(model, state_dict)
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def extra_repr(self) -> str:
        sizes = f"size={self.size}" + (f", out_size={self.out_size}" if self.out_size != self.size else "")
        return (f"{sizes}, style_dim={self.style_dim}, n_mlp={self.n_mlp}, "
                f"channel_multiplier={self.channel_multiplier}, narrow={self.narrow}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.size or x.shape[3] != self.size:
            raise ValueError(
                f"GPEN-{self.size} expects a [B, 3, {self.size}, {self.size}] tensor, got {list(x.shape)}; "
                f"resize the face crops to {self.size}x{self.size} first"
            )
        # Channels-last throughout: oneDNN and cuDNN run these convolutions several times faster in it, and the
        # 1x1 ToRGB becomes a plain matrix product (see layers.ToRGB).
        # Bands keep the CPU's memory small and its pages warm (see stripes.py). A GPU's caching allocator already
        # reuses its memory, and there bands would run a batch's faces one by one and make a compiled network
        # recompile for every face count: on a GPU the network runs whole, the batch together.
        band_rows = self.generator.band_rows(x.element_size()) if x.device.type == "cpu" else None
        features = self.encode(x, band_rows)
        # The latent path is tiny and runs in fp32 whatever the network's dtype (no fp16 overflow there).
        latent = self.final_linear(features[-1].flatten(1).float())
        features.reverse()
        return self.generator(latent, features + self.noise_pairs(x.shape[0]), self.memory_format, band_rows)

    def noise_pairs(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The noise of each decoder level above `size` (up-conv's, styled conv's), lowest first, for `batch` faces
        (views: one sample shared)."""
        noise = [getattr(self, f"noise{index}").expand(batch, -1, -1, -1) for index in range(2 * self.noise_levels)]
        return list(zip(noise[::2], noise[1::2]))

    def encode(self, x: torch.Tensor, band_rows: list[int] | None) -> list:
        """The encoder's outputs, full resolution first. With a banded decoder (`band_rows`), the top ones are
        row sources (see `encode_top_in_bands`) and stages with large inputs run in bands."""
        # Encoder features computed on request only feed banded levels (those above `size` take noise).
        on_request = min(ENCODER_ROWS_ON_REQUEST, len(band_rows or ()) - self.noise_levels)
        if on_request > 0:
            features = self.encode_top_in_bands(x, on_request)
            x = features[-1]
        else:
            features = []
            x = x.contiguous(memory_format=self.memory_format)
        for index in range(len(features), self.encoder_depth):
            stage = getattr(self, f"ecd{index}")
            if band_rows and x[0].numel() * x.element_size() >= self.generator.stream_from_bytes:
                # Same arithmetic, but no blurred copy of the whole input is made (fresh memory costs page faults).
                batch, channels, size, _ = x.shape
                rows = stripe_rows(channels, size, batch, x.element_size(), self.generator.stripe_bytes) // 2
                x = encode_in_bands(StageRows(stage[0], WholeRows(x)), rows)
            else:
                x = stage(x)
            features.append(x)
        return features

    def encode_top_in_bands(self, x: torch.Tensor, on_request: int) -> list:
        """The first encoder outputs for a banded decoder: the top `on_request` (at least 1) as row sources that
        compute rows from `x` when the decoder asks (they never exist whole: recomputing them is cheaper than
        holding them), and the next one computed whole from them, band by band."""
        features: list = [EncoderRows(self.ecd0[0], x, self.memory_format)]
        depth = min(on_request + 1, self.encoder_depth)
        for index in range(1, depth):
            features.append(StageRows(getattr(self, f"ecd{index}")[0], features[-1]))
        # Output rows per band of the whole one: half the input rows that fit a band (see stripe_rows).
        # Each stage up the chain reads twice the rows of the one below, so the widest temporary of a band is the
        # full-resolution one: its rows fit a band (see stripe_rows), and the last stage makes 2**-depth of them.
        channels = self.ecd0[0][0].weight.shape[0]
        rows = stripe_rows(channels, self.size, x.shape[0], x.element_size(), self.generator.stripe_bytes)
        return [*features[:-1], encode_in_bands(features[-1], max(1, rows >> (depth - 1)))]
