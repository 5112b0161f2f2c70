"""The banded computation of GPEN's top resolutions (gpen_arch/stripes.py) against the whole-image one.

Real models stream several decoder levels and compute the encoder's top features on request; the fixtures are
too small for that by default, so these tests force it (every streamed level, 8- and 10-row bands).
"""

from __future__ import annotations

import pytest
import torch
from comfyui_gpen_restore.gpen_arch import GPEN, load_gpen, stripes
from support import PARITY_TOLERANCE, REORDER_TOLERANCE

# Bands of a few rows of these tiny tensors may go through other convolution kernels than the whole tensors (torch
# leaves oneDNN below 20480 input values), so they round differently: REORDER_TOLERANCE (measured up to 4.2e-6
# on outputs of scale 5; stages of the encoder alike to the bit). A row off shows as 0.36
# (test_a_wrong_row_breaks_the_comparison).


def load_case(fixtures_dir, size: int):
    io = torch.load(fixtures_dir / "gpen" / f"case_{size}_io.pt", weights_only=True)
    return load_gpen(fixtures_dir / "gpen" / f"case_{size}.pth"), io


def run(model, x: torch.Tensor, stripe_bytes: int) -> torch.Tensor:
    model.generator.stripe_bytes = stripe_bytes
    model.generator.stream_from_bytes = 0  # stream every level STREAMED_LEVELS allows
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("size", (64, 128, 256))
@pytest.mark.parametrize("stripe_bytes", [1, 163_840])
def test_streamed_levels_match_whole_computation(fixtures_dir, size, stripe_bytes):
    model, io = load_case(fixtures_dir, size)
    assert len(model.generator.band_rows(4) or []) == 0  # by default the fixtures run whole ...
    model.generator.stream_from_bytes = 0
    model.generator.stripe_bytes = stripe_bytes
    assert len(model.generator.band_rows(4)) == stripes.STREAMED_LEVELS  # ... here they do not
    whole = run(model, io["input"][:1], 0)
    banded_one = run(model, io["input"][:1], stripe_bytes)
    banded_pair = run(model, io["input"], stripe_bytes)
    assert (banded_one - whole).abs().max().item() <= REORDER_TOLERANCE
    assert (banded_pair - io["output"]).abs().max().item() <= PARITY_TOLERANCE


def test_encoder_rows_equal_whole_stages(fixtures_dir):
    model, io = load_case(fixtures_dir, 64)
    x = io["input"]
    with torch.no_grad():
        first = model.ecd0(x.contiguous(memory_format=torch.channels_last))
        second = model.ecd1(first)
        third = model.ecd2(second)
        top = stripes.EncoderRows(model.ecd0[0], x, torch.channels_last)
        middle = stripes.StageRows(model.ecd1[0], top)
        bottom = stripes.StageRows(model.ecd2[0], middle)
        for lo, hi in ((0, 8), (5, 13), (24, 32)):  # first, inner (odd) and last rows
            assert (top.rows(lo, hi) - first[:, :, lo:hi]).abs().max().item() <= REORDER_TOLERANCE
            assert (middle.rows(lo, hi) - second[:, :, lo:hi]).abs().max().item() <= REORDER_TOLERANCE
        assert (stripes.encode_in_bands(bottom, 3) - third).abs().max().item() <= REORDER_TOLERANCE


def test_a_wrong_row_breaks_the_comparison(fixtures_dir, monkeypatch):
    """The checks above have teeth: a feature read one row off makes the banded result differ."""
    model, io = load_case(fixtures_dir, 64)
    whole = run(model, io["input"][:1], 0)

    def shifted(self, top: int, bottom: int) -> torch.Tensor:
        top, bottom = (top + 1, bottom + 1) if bottom < self.height else (top, bottom)
        return self.tensor[:, :, top:bottom]

    monkeypatch.setattr(stripes.WholeRows, "rows", shifted)
    broken = run(model, io["input"][:1], 1)
    assert (broken - whole).abs().max().item() > 1000 * REORDER_TOLERANCE  # measured 0.36


def test_stream_window_refuses_rows_it_dropped(fixtures_dir):
    model, _ = load_case(fixtures_dir, 64)
    generator = model.generator
    with torch.no_grad():
        latent = torch.zeros(1, model.style_dim)
        w = generator.style(latent)
        up_conv, conv, to_rgb = generator.convs[4], generator.convs[5], generator.to_rgbs[2]  # the 32-px level
        level = stripes.BandedLevel(up_conv, conv, to_rgb, w, torch.float32, 32)
        x = torch.randn(1, up_conv.conv.weight.shape[2], 16, 16).contiguous(memory_format=torch.channels_last)
        feature = stripes.WholeRows(torch.randn(1, up_conv.conv.weight.shape[1], 32, 32))
        streamed = stripes.StreamedLevel(level, stripes.WholeRows(x), (feature, feature), torch.zeros(1, 3, 16, 16), 8,
                                         8, x)
        streamed.rows(0, 8)
        streamed.rows(6, 14)
        streamed.rows(12, 20)  # the window is full here: rows before 12 are dropped
        with pytest.raises(ValueError, match="dropped"):
            streamed.rows(4, 10)


@pytest.mark.slow
@pytest.mark.parametrize("banded", [False, True])
def test_torch_compile_traces_the_whole_network_in_one_graph(banded):
    # A graph break splits the compiled network and runs the pieces between them eagerly (upstream's layout wrote
    # `out=` into slices: 31 breaks in this small banded network, 41 at GPEN-2048). Dynamo's trace only, no codegen.
    torch.manual_seed(0)
    model = GPEN(size=64, style_dim=32, n_mlp=1, channel_multiplier=1, narrow=0.25).eval()
    if banded:
        model.generator.stream_from_bytes, model.generator.stripe_bytes = 0, 1
        assert len(model.generator.band_rows(4)) == stripes.STREAMED_LEVELS
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert explained.graph_break_count == 0, [reason.reason.splitlines()[0] for reason in explained.break_reasons]
    assert explained.graph_count == 1
