"""`load_gpen`: every published configuration, every container, safetensors, ONNX, and refusals."""

from __future__ import annotations

import logging
import pickle
import sys

import pytest
import torch
from support import PARITY_TOLERANCE, REPO_ROOT, CodePayload  # onnxruntime's kernels are held to PARITY too
from safetensors.torch import save_file

from comfyui_gpen_restore.gpen_arch import GPEN, load_gpen
from comfyui_gpen_restore.gpen_arch.loader import model_size
from comfyui_gpen_restore.gpen_arch.runner import GpenRunner
from comfyui_gpen_restore.model_files.errors import MissingDependencyError, UnsupportedCheckpointError
from comfyui_gpen_restore.model_files.folders import COMFYUI_WHERE_TO_GET

CONFIG_KEYS = ("size", "style_dim", "n_mlp", "channel_multiplier", "narrow")
# The published GPEN-BFR configurations (upstream's README and the fixture manifests).
PUBLISHED = {
    256: {"size": 256, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 1, "narrow": 0.5},
    512: {"size": 512, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "narrow": 1},
    1024: {"size": 1024, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "narrow": 1},
    2048: {"size": 2048, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "narrow": 1},
}
SMALL = {"size": 64, "style_dim": 32, "n_mlp": 2, "channel_multiplier": 1, "narrow": 0.0625}


def randomised(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of `GPEN(**config)` with every parameter set to distinct random values (so a key that is
    dropped or swapped on the way shows)."""
    generator = torch.Generator().manual_seed(seed)
    model = GPEN(**config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1 + 0.5)
    return model.state_dict()


def assert_same_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state_dict.keys()
    for key, tensor in state_dict.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize(
    "size", [256, 512, pytest.param(1024, marks=pytest.mark.slow), pytest.param(2048, marks=pytest.mark.slow)]
)
def test_published_configurations_round_trip(tmp_path, size):
    state_dict = randomised(PUBLISHED[size], seed=size)
    path = tmp_path / f"renamed_{size}.pth"  # a misleading name: the size must come from the weights
    torch.save(state_dict, path)
    model = load_gpen(path)
    assert {key: getattr(model, key) for key in CONFIG_KEYS} == PUBLISHED[size]
    assert_same_weights(model, state_dict)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_a_decoder_larger_than_its_encoder_loads_as_full_generator_sr(tmp_path):
    """Upstream's FullGenerator_SR: the encoder's depth gives the input size, the decoder's the output size, and
    the channel multiplier is read at the decoder's top (the encoder's 32-px input shows none)."""
    config = {"size": 32, "out_size": 128, "style_dim": 64, "n_mlp": 8, "channel_multiplier": 1, "narrow": 0.25}
    state_dict = randomised(config, seed=3)
    torch.save(state_dict, tmp_path / "GPEN-SR.pth")
    model = load_gpen(tmp_path / "GPEN-SR.pth")
    assert {key: getattr(model, key) for key in config} == config
    assert_same_weights(model, state_dict)
    assert model_size(tmp_path / "GPEN-SR.pth") == 32  # the crop size detection cuts for it
    runner = GpenRunner(model, name="GPEN-SR.pth")
    assert (runner.size, runner.output_size, runner.label) == (32, 128, "GPEN-32 to 128")


def test_a_decoder_smaller_than_its_encoder_is_refused(tmp_path):
    state_dict = randomised(SMALL)
    for key in [key for key in state_dict if key.startswith(("generator.convs.6.", "generator.convs.7.",
                                                              "generator.to_rgbs.3."))]:
        del state_dict[key]  # the decoder now ends at 32 px for a 64-px encoder
    torch.save(state_dict, tmp_path / "cut.pth")
    with pytest.raises(UnsupportedCheckpointError, match="decoder ends at 32 px for a 64-px input"):
        load_gpen(tmp_path / "cut.pth")


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"g_ema": sd, "g": {k: v * 0 for k, v in sd.items()}, "d": {"x": torch.zeros(1)}},
        lambda sd: {"params_ema": sd, "params": {k: v * 0 for k, v in sd.items()}},
        lambda sd: {"params": sd},
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["g_ema", "params_ema", "params", "state_dict", "module_prefix", "nested_module_prefix"],
)
def test_containers_are_unwrapped(tmp_path, wrap):
    state_dict = randomised(SMALL)
    torch.save(wrap(state_dict), tmp_path / "gpen.pt")
    assert_same_weights(load_gpen(tmp_path / "gpen.pt"), state_dict)


def test_safetensors_round_trip(tmp_path, fixtures_dir):
    state_dict = torch.load(fixtures_dir / "gpen" / "case_128.pth", weights_only=True)
    save_file(state_dict, tmp_path / "gpen.safetensors")
    model = load_gpen(tmp_path / "gpen.safetensors")
    io = torch.load(fixtures_dir / "gpen" / "case_128_io.pt", weights_only=True)
    with torch.no_grad():
        assert (model(io["input"]) - io["output"]).abs().max().item() <= PARITY_TOLERANCE


def test_half_precision_checkpoint_loads(tmp_path):
    state_dict = {k: v.half() for k, v in randomised(SMALL).items()}
    torch.save(state_dict, tmp_path / "gpen_fp16.pth")
    model = load_gpen(tmp_path / "gpen_fp16.pth")
    assert next(model.parameters()).dtype == torch.float16
    with torch.no_grad():
        assert torch.isfinite(model.float()(torch.zeros(1, 3, 64, 64))).all()


# --- ONNX ---------------------------------------------------------------------------------------------------


def test_onnx_fixture_matches_upstream_for_any_batch(fixtures_dir):
    io = torch.load(fixtures_dir / "gpen" / "case_64_io.pt", weights_only=True)
    model = load_gpen(fixtures_dir / "gpen" / "case_64.onnx")
    assert model.size == 64
    out = model(io["input"])  # the graph has a fixed batch of 1; two faces must still work
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    assert (out - io["output"]).abs().max().item() <= PARITY_TOLERANCE  # measured 5.3e-6
    half = model(io["input"].to(torch.bfloat16))
    assert half.dtype == torch.bfloat16


def make_onnx(path, input_shape, output_shape, elem_type: str = "FLOAT") -> None:
    import onnx
    from onnx import TensorProto, helper

    dtype = getattr(TensorProto, elem_type)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "not_gpen",
        [helper.make_tensor_value_info("input", dtype, input_shape)],
        [helper.make_tensor_value_info("output", dtype, output_shape)],
    )
    # IR version 10: what onnxruntime of the pinned test stack reads (the fixture's exporter wrote the same).
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)


@pytest.mark.parametrize(
    ("input_shape", "output_shape", "elem_type"),
    [([1, 3, 64, 48], [1, 3, 64, 48], "FLOAT"), ([1, 4, 64, 64], [1, 4, 64, 64], "FLOAT"),
     ([1, 3, 100, 100], [1, 3, 100, 100], "FLOAT"), ([1, 3, 64, 64], [1, 3, 64, 64], "FLOAT16")],
)
def test_onnx_graph_of_wrong_shape_is_refused(tmp_path, input_shape, output_shape, elem_type):
    make_onnx(tmp_path / "other.onnx", input_shape, output_shape, elem_type)
    expected = r"expected a GPEN ONNX graph.*float32.*\[N, 3, S, S\].*found"
    with pytest.raises(UnsupportedCheckpointError, match=expected):
        load_gpen(tmp_path / "other.onnx")


def test_onnx_graph_with_a_larger_output_runs(tmp_path):
    """An export of FullGenerator_SR: the output is larger than the input (here a graph that only enlarges 2x)."""
    import onnx
    from onnx import TensorProto, helper

    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
    graph = helper.make_graph(
        [helper.make_node("Resize", ["input", "", "scales"], ["output"], mode="nearest")], "enlarge",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 64, 64])], initializer=[scales])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
              tmp_path / "sr.onnx")
    model = load_gpen(tmp_path / "sr.onnx")
    x = torch.rand(2, 3, 32, 32)
    assert (model.size, model.out_size) == (32, 64)
    assert torch.equal(model(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    make_onnx(tmp_path / "smaller.onnx", [1, 3, 64, 64], [1, 3, 32, 32])
    with pytest.raises(UnsupportedCheckpointError, match="expected a GPEN ONNX graph"):
        load_gpen(tmp_path / "smaller.onnx")


def test_onnx_with_dynamic_batch_runs_whole_batches(tmp_path):
    make_onnx(tmp_path / "identity.onnx", ["batch", 3, 32, 32], ["batch", 3, 32, 32])
    model = load_gpen(tmp_path / "identity.onnx")
    x = torch.rand(3, 3, 32, 32)
    assert model.fixed_batch is None and torch.equal(model(x), x)


def test_onnxruntime_reads_and_writes_torch_memory(fixtures_dir, monkeypatch):
    """I/O binding: onnxruntime reads the input where torch keeps it and writes the result into a torch tensor
    (on a GPU, the batch never goes through host memory); no copy through numpy, no `session.run`."""
    io = torch.load(fixtures_dir / "gpen" / "case_64_io.pt", weights_only=True)
    model = load_gpen(fixtures_dir / "gpen" / "case_64.onnx")
    session = model._session("cpu")
    monkeypatch.setattr(torch.Tensor, "numpy", lambda *_a, **_k: pytest.fail("a tensor went through numpy"))
    monkeypatch.setattr(type(session), "run", lambda *_a, **_k: pytest.fail("session.run copies through numpy"))
    x = io["input"].contiguous(memory_format=torch.channels_last)  # any layout in: made contiguous for the binding
    out = model(x)
    assert (out - io["output"]).abs().max().item() <= PARITY_TOLERANCE


def test_corrupt_onnx_is_refused(tmp_path, fixtures_dir):
    data = (fixtures_dir / "gpen" / "case_64.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(UnsupportedCheckpointError, match="truncated or not an ONNX model"):
        load_gpen(tmp_path / "cut.onnx")


def test_onnx_session_follows_the_input_device_and_is_made_once(monkeypatch, fixtures_dir, caplog):
    import onnxruntime as ort

    model = load_gpen(fixtures_dir / "gpen" / "case_64.onnx")
    made = []
    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(
        ort, "InferenceSession",
        lambda path, providers: made.append(providers) or real_session(path, providers=["CPUExecutionProvider"]),
    )
    with caplog.at_level(logging.INFO, logger="comfyui_gpen_restore.gpen_arch.onnx_model"):
        assert model._session("cuda:1") is model._session(torch.device("cuda", 1))
    assert made == [[("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]]
    # Here onnxruntime really ran on the CPU (as it does when its CUDA provider fails to start): said, not hidden.
    assert "on the CPU, not on cuda:1" in caplog.text and "(CPUExecutionProvider)" in caplog.text
    model._session("cuda:0")
    assert made[-1][0] == ("CUDAExecutionProvider", {"device_id": 0}) and len(made) == 2  # another GPU, its own
    assert model._session("cpu") is not model._session("cuda:1") and len(made) == 2  # the CPU one from loading


def test_a_failing_cuda_session_is_not_called_a_damaged_file(monkeypatch, fixtures_dir):
    import onnxruntime as ort

    model = load_gpen(fixtures_dir / "gpen" / "case_64.onnx")

    def no_cuda(path, providers):
        raise RuntimeError("CUDA_PATH is set but CUDA wasn't able to be loaded\nlong details")

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", no_cuda)
    with pytest.raises(RuntimeError, match="could not run case_64.onnx on cuda:0 .*onnxruntime-gpu") as error:
        model._session("cuda:0")
    assert not isinstance(error.value, UnsupportedCheckpointError) and "truncated" not in str(error.value)


def test_missing_onnxruntime_is_explained(monkeypatch, fixtures_dir):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        load_gpen(fixtures_dir / "gpen" / "case_64.onnx")


# --- refusals -----------------------------------------------------------------------------------------------


def test_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    state_dict = randomised(SMALL)
    with open(tmp_path / "evil.pth", "wb") as f:
        torch.save({"state_dict": state_dict, "extra": CodePayload(str(marker))}, f)
    with pytest.raises(UnsupportedCheckpointError, match="needs code to load, which is never run") as error:
        load_gpen(tmp_path / "evil.pth")
    assert not marker.exists()
    # torch's own text advises turning the safety off; it must never be passed on.
    message = str(error.value)
    assert "weights only" not in message.lower().replace("_", " ")
    assert "use a file of plain weights" in message.lower()
    # A plain pickle (not torch's format) with the same payload is refused too.
    (tmp_path / "evil_plain.pth").write_bytes(pickle.dumps(CodePayload(str(marker))))
    with pytest.raises(UnsupportedCheckpointError):
        load_gpen(tmp_path / "evil_plain.pth")
    assert not marker.exists()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.99])
def test_truncated_checkpoint_is_refused(tmp_path, fraction):
    torch.save(randomised(SMALL), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(UnsupportedCheckpointError, match="truncated or corrupt") as error:
        load_gpen(tmp_path / "cut.pth")
    message = str(error.value)
    assert f"{int(len(data) * fraction):,} bytes" in message
    assert "weights_only" not in message and message.endswith(".")  # whole sentences, never cut


def test_a_file_that_is_no_checkpoint_is_named_so(tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    with pytest.raises(UnsupportedCheckpointError, match=r"notes.pth is not a PyTorch checkpoint.*b'thes'"):
        load_gpen(tmp_path / "notes.pth")


def test_every_refusal_ends_with_the_callers_advice(tmp_path):
    advice = "Expected a GPEN file; download one from https://example.org/gpen"
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    torch.save({"epoch": 3}, tmp_path / "wrapped.pth")
    (tmp_path / "cut.onnx").write_bytes(b"\x08\x07")
    for name in ("notes.pth", "other.pth", "wrapped.pth", "cut.onnx", "absent.pth"):
        with pytest.raises((UnsupportedCheckpointError, FileNotFoundError)) as error:
            load_gpen(tmp_path / name, where_to_get=advice)
        message = str(error.value)
        assert message.endswith(f"{advice}.") and "facerestore_models" not in message, message


def test_truncated_safetensors_is_refused(tmp_path):
    save_file(randomised(SMALL), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedCheckpointError, match="truncated or not safetensors"):
        load_gpen(tmp_path / "cut.safetensors")


def test_other_architecture_is_refused(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 3, 3)).state_dict()
    torch.save(other, tmp_path / "GPEN-BFR-512.pth")  # the name says GPEN; the keys do not
    with pytest.raises(UnsupportedCheckpointError, match=r"Not a GPEN checkpoint: no `generator.style.1.weight`"):
        load_gpen(tmp_path / "GPEN-BFR-512.pth")


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_damaged_gpen_state_dict_names_the_keys(tmp_path, damage):
    state_dict = randomised(SMALL)
    if damage == "missing":
        del state_dict["generator.convs.1.conv.weight"]
        expected = r"1 missing: generator.convs.1.conv.weight"
    elif damage == "extra":
        state_dict["generator.extra.weight"] = torch.zeros(1)
        expected = r"1 unexpected: generator.extra.weight"
    else:
        state_dict["generator.to_rgb1.bias"] = torch.zeros(1, 4, 1, 1)
        expected = r"1 wrong shape: generator.to_rgb1.bias \[1, 4, 1, 1\] \(expected \[1, 3, 1, 1\]\)"
    torch.save(state_dict, tmp_path / "damaged.pth")
    with pytest.raises(UnsupportedCheckpointError, match=expected):
        load_gpen(tmp_path / "damaged.pth")


def test_not_a_state_dict_is_refused(tmp_path):
    torch.save({"epoch": 3, "note": "hello"}, tmp_path / "other.pth")
    with pytest.raises(UnsupportedCheckpointError, match="expected a GPEN state dict"):
        load_gpen(tmp_path / "other.pth")


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(UnsupportedCheckpointError, match="expected a .pth, .pt, .safetensors or .onnx"):
        load_gpen(tmp_path / "model.gguf")
    with pytest.raises(FileNotFoundError, match="absent.pth. Expected a GPEN-BFR-256/512/1024/2048 file"):
        load_gpen(tmp_path / "absent.pth")
    # The host names its own folder.
    with pytest.raises(FileNotFoundError, match="in ComfyUI/models/facerestore_models"):
        load_gpen(tmp_path / "absent.pth", where_to_get=COMFYUI_WHERE_TO_GET)


def test_loading_initialises_nothing_it_then_replaces(tmp_path):
    # Building on the meta device must not run random init or arithmetic on meta tensors: either makes torch
    # import its compiler stack first, which took 1.5-3.5 s of a 2 s GPEN-512 load in a fresh process (a load now
    # costs about what reading the file costs). A fresh process shows it: nothing of torch._dynamo gets imported.
    import subprocess

    path = tmp_path / "gpen.pth"
    torch.save(GPEN(size=64, style_dim=64, n_mlp=2, channel_multiplier=1, narrow=0.125).state_dict(), path)
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('restore_faces', {str(REPO_ROOT / 'restore_faces.py')!r})\n"
        "script = importlib.util.module_from_spec(spec); spec.loader.exec_module(script); script.load_package()\n"
        "from comfyui_gpen_restore.gpen_arch import load_gpen\n"
        f"model = load_gpen({str(path)!r})\n"
        "assert model.size == 64\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
