"""The GPEN network: parity with upstream, upstream's key layout, precision, determinism."""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_gpen_restore.gpen_arch import GPEN, infer_config, load_gpen
from comfyui_gpen_restore.gpen_arch.layers import fir_kernel
from comfyui_gpen_restore.gpen_arch.model import NOISE_SEED
from support import PARITY_TOLERANCE, REORDER_TOLERANCE, SMALL_GPEN

CASES = (64, 128, 256)
CONFIG_KEYS = ("size", "style_dim", "n_mlp", "channel_multiplier", "narrow")


def load_case(fixtures_dir, size: int) -> tuple[GPEN, dict]:
    io = torch.load(fixtures_dir / "gpen" / f"case_{size}_io.pt", weights_only=True)
    return load_gpen(fixtures_dir / "gpen" / f"case_{size}.pth"), io


@pytest.mark.parametrize("size", CASES)
def test_matches_upstream_output(fixtures_dir, size):
    model, io = load_case(fixtures_dir, size)
    assert {key: getattr(model, key) for key in CONFIG_KEYS} == {key: io["config"][key] for key in CONFIG_KEYS}
    with torch.no_grad():
        out = model(io["input"])
    assert out.shape == io["output"].shape == (2, 3, size, size)
    assert (out - io["output"]).abs().max().item() <= PARITY_TOLERANCE


def test_intermediate_activations_match_upstream(fixtures_dir):
    """Every module upstream recorded, checked by forward hooks, so a mismatch names its layer."""
    model, io = load_case(fixtures_dir, 64)
    reference = torch.load(fixtures_dir / "gpen" / "case_64_intermediates.pt", weights_only=True)
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def record(name: str, output: torch.Tensor) -> None:
        # A copy: the decoder later scales its activations in place. (Returning it would replace the output.)
        captured[name] = output.clone()

    for name in reference["order"]:
        module = modules[name.removesuffix("(w)")]
        module.register_forward_hook(lambda _m, _i, out, name=name: record(name, out))
    with torch.no_grad():
        model(io["input"])
    assert list(captured) == reference["order"]
    for name in reference["order"]:
        error = (captured[name] - reference["intermediates"][name]).abs().max().item()
        assert error <= PARITY_TOLERANCE, f"{name}: max |ours - upstream| = {error}"


@pytest.mark.parametrize("size", (256, 512, 1024, 2048))
def test_state_dict_layout_matches_published_manifest(fixtures_dir, size):
    manifest = json.loads((fixtures_dir / "gpen" / f"gpen_{size}_manifest.json").read_text())
    constructor = manifest["constructor"]
    with torch.device("meta"):
        model = GPEN(**{key: constructor[key] for key in CONFIG_KEYS})
    ours = [(key, list(t.shape)) for key, t in model.state_dict().items()]
    theirs = [(entry["key"], entry["shape"]) for entry in manifest["keys"]]
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
    assert infer_config({key: t for key, t in model.state_dict().items()}) == {
        key: constructor[key] for key in CONFIG_KEYS
    }


def test_fir_kernel_buffers_have_upstream_values(fixtures_dir):
    manifest = json.loads((fixtures_dir / "gpen" / "gpen_2048_manifest.json").read_text())
    model = GPEN(size=64, style_dim=32, n_mlp=1, channel_multiplier=1, narrow=0.03125)
    buffers = dict(model.named_buffers())
    for group in manifest["buffer_values"]["groups"]:
        value = torch.tensor(group["value"])
        assert value.shape == (4, 4)
        assert torch.equal(value, fir_kernel(factor=2)) or torch.equal(value, fir_kernel(factor=1))
        for key in group["keys"]:
            # Our model is smaller; check every key it has of the same kind (blur/upsample/encoder).
            if key in buffers:
                assert torch.equal(buffers[key], value), key
    assert any(key.endswith("upsample.kernel") for key in buffers)


def test_forward_is_deterministic(fixtures_dir):
    model, io = load_case(fixtures_dir, 64)
    with torch.no_grad():
        # Exact: the same kernels on the same input and threads sum in the same order.
        assert torch.equal(model(io["input"]), model(io["input"]))


def test_batch_items_are_independent(fixtures_dir):
    model, io = load_case(fixtures_dir, 64)
    with torch.no_grad():
        together = model(io["input"])
        alone = model(io["input"][1:])
    assert (together[1:] - alone).abs().max().item() <= REORDER_TOLERANCE


def test_full_generator_sr_matches_upstream(fixtures_dir):
    """Upstream's FullGenerator_SR (a 32-px encoder, a 128-px decoder; every parameter random, the noise weights
    too): its levels above 32 px take random noise, which upstream draws afresh at every call. Ours draws it once,
    from NOISE_SEED: the recorded output is upstream's with its generator seeded so, and ours must equal it whole,
    in narrow bands, and for every face of a batch (all get the same noise), call after call."""
    io = torch.load(fixtures_dir / "gpen" / "case_sr_io.pt", weights_only=True)
    model = load_gpen(fixtures_dir / "gpen" / "case_sr.pth")
    config = io["config"]
    assert (model.size, model.out_size, model.style_dim, model.channel_multiplier, model.narrow) == (
        config["in_size"], config["out_size"], config["style_dim"], config["channel_multiplier"], config["narrow"])
    assert io["noise_seed"] == NOISE_SEED
    pair = io["input"].repeat(2, 1, 1, 1)
    with torch.no_grad():
        model.generator.stripe_bytes = 0
        whole = [model(io["input"]), model(pair)]
        model.generator.stripe_bytes, model.generator.stream_from_bytes = 1, 1  # every level in 8-row bands
        assert len(model.generator.band_rows(4)) == 3  # two noise levels and one fed by the encoder
        banded = model(pair)
    assert whole[0].shape == (1, 3, 128, 128)
    for out in (*whole, banded):
        assert (out - io["output"]).abs().max().item() <= PARITY_TOLERANCE  # measured 1.9e-6 and 3.3e-6


def test_noise_of_larger_decoders_is_fixed_and_outside_the_state_dict():
    """The noise is a buffer (it follows the model's device and dtype) that no checkpoint holds, drawn in upstream's
    order and shapes: level by level upwards, the up-conv's then the styled conv's, one sample each."""
    with torch.device("meta"):  # as `from_state_dict` builds: the noise is drawn all the same
        model = GPEN(size=16, out_size=64, **SMALL_GPEN)
    assert not any(key.startswith("noise") for key in model.state_dict())
    noise = [model.noise0, model.noise1, model.noise2, model.noise3]
    assert [tuple(n.shape) for n in noise] == [(1, 64, 32, 32)] * 2 + [(1, 32, 64, 64)] * 2
    generator = torch.Generator().manual_seed(NOISE_SEED)
    for tensor in noise:
        assert torch.equal(tensor, torch.randn(tensor.shape, generator=generator))
    assert not hasattr(GPEN(size=16, **SMALL_GPEN), "noise0")  # FullGenerator: the encoder feeds every level


@pytest.mark.parametrize(("size", "out_size"), [(64, 32), (48, 96), (64, 4096)])
def test_impossible_sizes_are_refused(size, out_size):
    with pytest.raises(ValueError, match="size"):
        GPEN(size=size, out_size=out_size, **SMALL_GPEN)


# Half precision against fp32 on the fixture weights (output scale about 5). One rounding of an output is up to
# 5 * 2^-11 = 2.4e-3 in fp16 and 5 * 2^-8 = 0.02 in bf16; the layers add many. Worst over the kernel settings
# (native bf16 or not): max 0.006 / 0.048, mean 0.001 / 0.009, at least 3.5x inside the bounds (an earlier
# implementation measured 0.03 / 0.09 and 0.007 / 0.012, which they still hold).
@pytest.mark.parametrize(("dtype", "max_tol", "mean_tol"), [(torch.float16, 0.1, 0.02), (torch.bfloat16, 0.2, 0.03)])
def test_half_precision_stays_close_to_fp32(fixtures_dir, dtype, max_tol, mean_tol):
    model, io = load_case(fixtures_dir, 64)
    model = model.to(dtype)
    with torch.no_grad():
        out = model(io["input"].to(dtype))
    assert out.dtype == dtype
    error = (out.float() - io["output"]).abs()
    assert error.max().item() <= max_tol
    assert error.mean().item() <= mean_tol


def test_wrong_input_shape_is_explained():
    model = GPEN(size=64, style_dim=32, n_mlp=1, channel_multiplier=1, narrow=0.03125)
    with pytest.raises(ValueError, match=r"expects a \[B, 3, 64, 64\].*got \[1, 3, 128, 128\]"):
        model(torch.zeros(1, 3, 128, 128))


def test_new_model_has_upstream_initialisation():
    torch.manual_seed(0)
    model = GPEN(size=64, style_dim=32, n_mlp=2, channel_multiplier=1, narrow=0.03125)
    state = model.state_dict()
    assert torch.all(state["generator.conv1.conv.modulation.bias"] == 1)  # identity modulation
    assert torch.all(state["generator.conv1.noise.weight"] == 0)
    # randn / lr_mul 0.01; the std of 1024 samples is within 2.2 % (1 sigma) of 100, so rel 0.1 is 4.5 sigma.
    assert state["generator.style.1.weight"].std().item() == pytest.approx(100, rel=0.1)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_torch_compile_matches_upstream(fixtures_dir):
    """The `compile` switch of the loader node and the command line: the in-place layers must compile."""
    model, io = load_case(fixtures_dir, 64)
    model.compile()
    with torch.no_grad():
        out = model(io["input"])
    assert (out - io["output"]).abs().max().item() <= PARITY_TOLERANCE


@pytest.mark.parametrize("size", CASES)
@pytest.mark.parametrize("stripe_bytes", [1, 163_840])
def test_last_resolution_in_stripes_matches_upstream(fixtures_dir, size, stripe_bytes):
    """Real models compute their last resolution in bands of rows (the fixtures are too small to by default):
    forced narrow bands (8 rows; 10 rows, which leaves a short last band) must give upstream's output too."""
    model, io = load_case(fixtures_dir, size)
    with torch.no_grad():
        model.generator.stripe_bytes = 0
        whole = model(io["input"][:1])
        model.generator.stripe_bytes = stripe_bytes
        banded_pair = model(io["input"])
        banded_one = model(io["input"][:1])
    assert (banded_pair - io["output"]).abs().max().item() <= PARITY_TOLERANCE
    assert (banded_one - whole).abs().max().item() <= REORDER_TOLERANCE


def test_stripe_rows_fit_the_budget():
    from comfyui_gpen_restore.gpen_arch.stripes import STRIPE_BYTES, stripe_rows

    rows = stripe_rows(32, 2048, 1, 4)  # GPEN-2048's last resolution, fp32
    assert rows % 2 == 0 and 32 * 2048 * 4 * (rows + 2) <= 1.2 * STRIPE_BYTES and rows >= 32
    assert stripe_rows(32, 2048, 1, 4, stripe_bytes=1) == 8  # never below 8 rows


def test_large_models_run_faces_one_at_a_time_on_every_device():
    from comfyui_gpen_restore.gpen_arch import GpenRunner

    with torch.device("meta"):  # shapes only: a 2048-px GPEN without its memory
        runners = {size: GpenRunner(GPEN(size=size, **SMALL_GPEN), name=f"GPEN-{size}") for size in (512, 2048)}
    cuda, plenty = torch.device("cuda"), 2**40
    assert runners[2048].batch_size_for(plenty, faces=8, device=cuda) == 1
    assert runners[512].batch_size_for(plenty, faces=8, device=cuda) == 8
    assert runners[512].batch_size_for(plenty, faces=8, device=torch.device("cpu")) == 1


def test_bands_are_for_the_cpu_and_a_gpu_runs_the_batch_whole(monkeypatch):
    """On the CPU the top resolutions run in bands (memory, page faults); elsewhere the network runs whole, the
    batch together (bands would run its faces one by one). The meta device stands in for a GPU: shapes only."""
    from comfyui_gpen_restore.gpen_arch import model as gpen_model

    calls = []
    real = gpen_model.decode_in_bands
    monkeypatch.setattr(gpen_model, "decode_in_bands", lambda *args: calls.append(args[1].shape[0]) or real(*args))
    torch.manual_seed(0)
    model = GPEN(size=64, style_dim=32, n_mlp=1, channel_multiplier=1, narrow=0.25).eval()
    model.generator.stream_from_bytes, model.generator.stripe_bytes = 0, 1
    with torch.inference_mode():
        assert model(torch.rand(2, 3, 64, 64) * 2 - 1).shape == (2, 3, 64, 64)
        assert calls == [2]
        model.to("meta")
        assert model(torch.rand(2, 3, 64, 64, device="meta")).shape == (2, 3, 64, 64)
    assert calls == [2]


@pytest.mark.slow
def test_a_compiled_gpen_runs_any_face_count_in_at_most_two_graphs():
    """One graph for a single face (its styles fold into the weights) and one for every other count: a compiled
    GPEN must not recompile for each number of faces a frame brings (it once hit the recompile limit on the first
    video, when bands of batch-dependent height ran its faces one by one). Dynamo's eager backend: tracing and
    guards as in a real compile, without code generation."""
    from comfyui_gpen_restore.gpen_arch import GpenRunner

    torch.manual_seed(0)
    runner = GpenRunner(GPEN(size=16, style_dim=32, n_mlp=1, channel_multiplier=1, narrow=0.25), name="tiny")
    runner.module.compile(backend="eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for faces in (1, 2, 3, 5, 4, 1):
        runner.restore(torch.rand(faces, 16, 16, 3), device=torch.device("cpu"), batch_size=8)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2


def test_fp32_runs_without_tf32_and_leaves_the_flags_as_it_found_them(monkeypatch):
    # "fp32" means IEEE fp32 on every GPU: cuDNN's TF32 default (left on by ComfyUI) and TF32 matmuls are off
    # while GPEN runs, then back as they were. The flags exist on every torch build, so this holds on the CPU too.
    from comfyui_gpen_restore.gpen_arch import GpenRunner

    torch.manual_seed(0)
    runner = GpenRunner(GPEN(size=16, style_dim=32, n_mlp=1, channel_multiplier=1, narrow=0.25), name="tiny")
    seen = []
    real_forward = runner.module.forward
    monkeypatch.setattr(runner.module, "forward", lambda x: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)) or real_forward(x))
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    kept = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = True  # what a host may have set
    try:
        runner.restore(torch.rand(2, 16, 16, 3), device=torch.device("cpu"))
        assert seen == [(False, False)] * 2
        assert cudnn.allow_tf32 and matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = kept
