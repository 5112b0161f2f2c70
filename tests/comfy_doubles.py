"""Small stand-ins for ComfyUI's `comfy.model_management`, `comfy.model_patcher`, `comfy.utils` and `folder_paths`,
and helpers to import this repository as a package the way ComfyUI does.

The doubles keep the real signatures (read from ComfyUI's source: model_management.load_models_gpu,
get_torch_device, unet_offload_device, intermediate_device, get_free_memory, should_use_fp16/bf16,
throw_exception_if_processing_interrupted; ModelPatcher(model, load_device, offload_device); ProgressBar(total)
with update/update_absolute; folder_paths.folder_names_and_paths, models_dir, add_model_folder_path,
get_folder_paths, get_filename_list, get_full_path) and record every call, so tests can assert on model
management, progress and interruption.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_MODULES = ("comfy", "comfy.model_management", "comfy.model_patcher", "comfy.utils", "folder_paths")


class InterruptProcessingException(Exception):
    """Same name and role as ComfyUI's (raised when the user presses Cancel)."""


@dataclass
class ProgressRecord:
    total: int
    values: list[int] = field(default_factory=list)


@dataclass
class ComfyDoubles:
    """The state behind the fake modules; tests read and set these fields."""

    models_dir: Path
    device: torch.device = torch.device("cpu")
    free_memory: int = 8 << 30
    use_fp16: bool = False
    use_bf16: bool = False
    interrupt_after_checks: int | None = None  # raise on the (n+1)-th interruption check
    novram: bool = False  # like --novram: load_models_gpu leaves the weights on the offload device
    free_memory_calls: list[tuple[int, torch.device]] = field(default_factory=list)
    # Folders other packs or extra_model_paths.yaml registered before ours: name -> (paths, extensions).
    registered_before: dict[str, tuple[list[str], set[str]]] = field(default_factory=dict)
    load_calls: list[dict] = field(default_factory=list)
    progress: list[ProgressRecord] = field(default_factory=list)
    interrupt_checks: int = 0
    patchers: list[object] = field(default_factory=list)
    modules: dict[str, types.ModuleType] = field(default_factory=dict)

    def build(self) -> dict[str, types.ModuleType]:
        comfy = types.ModuleType("comfy")
        comfy.__path__ = []  # a package, so `import comfy.utils` resolves through sys.modules
        mm = types.ModuleType("comfy.model_management")
        patcher_mod = types.ModuleType("comfy.model_patcher")
        utils = types.ModuleType("comfy.utils")
        doubles = self

        def get_torch_device():
            return doubles.device

        def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                            force_full_load=False):
            doubles.load_calls.append({"models": list(models), "memory_required": memory_required,
                                       "force_full_load": force_full_load})
            for patcher in models:
                if not doubles.novram:
                    patcher.model.to(patcher.load_device)
                patcher.loaded = True

        def free_memory(memory_required, device, keep_loaded=()):
            doubles.free_memory_calls.append((memory_required, device))
            return []

        def get_free_memory(dev=None, torch_free_too=False):
            return (doubles.free_memory, doubles.free_memory) if torch_free_too else doubles.free_memory

        def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
            return doubles.use_fp16

        def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
            return doubles.use_bf16

        def throw_exception_if_processing_interrupted():
            doubles.interrupt_checks += 1
            limit = doubles.interrupt_after_checks
            if limit is not None and doubles.interrupt_checks > limit:
                raise InterruptProcessingException()

        mm.get_torch_device = get_torch_device
        mm.unet_offload_device = lambda: torch.device("cpu")
        mm.intermediate_device = lambda: torch.device("cpu")
        mm.load_models_gpu = load_models_gpu
        mm.get_free_memory = get_free_memory
        mm.free_memory = free_memory
        mm.should_use_fp16 = should_use_fp16
        mm.should_use_bf16 = should_use_bf16
        mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        mm.InterruptProcessingException = InterruptProcessingException
        mm.OOM_EXCEPTION = torch.OutOfMemoryError

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
                self.model = model
                self.load_device = load_device
                self.offload_device = offload_device
                self.loaded = False
                doubles.patchers.append(self)

            def model_size(self):
                return sum(t.nbytes for t in self.model.state_dict().values())

        patcher_mod.ModelPatcher = ModelPatcher

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total = total
                self.current = 0
                self.record = ProgressRecord(total)
                doubles.progress.append(self.record)

            def update_absolute(self, value, total=None, preview=None):
                if total is not None:
                    self.total = self.record.total = total
                self.current = min(value, self.total)
                self.record.values.append(self.current)

            def update(self, value):
                self.update_absolute(self.current + value)

        utils.ProgressBar = ProgressBar
        comfy.model_management, comfy.model_patcher, comfy.utils = mm, patcher_mod, utils
        self.modules = {"comfy": comfy, "comfy.model_management": mm, "comfy.model_patcher": patcher_mod,
                        "comfy.utils": utils, "folder_paths": self._folder_paths()}
        return self.modules

    def _folder_paths(self) -> types.ModuleType:
        fp = types.ModuleType("folder_paths")
        fp.models_dir = str(self.models_dir)
        fp.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
        fp.folder_names_and_paths = {
            "checkpoints": ([str(self.models_dir / "checkpoints")], fp.supported_pt_extensions),
            **{name: (list(paths), set(exts)) for name, (paths, exts) in self.registered_before.items()},
        }

        def add_model_folder_path(folder_name, full_folder_path, is_default=False):
            if folder_name in fp.folder_names_and_paths:
                paths = fp.folder_names_and_paths[folder_name][0]
                if full_folder_path not in paths:
                    paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
            else:
                fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

        def get_folder_paths(folder_name):
            return fp.folder_names_and_paths[folder_name][0][:]

        def get_filename_list(folder_name):
            paths, extensions = fp.folder_names_and_paths[folder_name]
            names = set()
            for folder in paths:
                for dirpath, _dirs, files in os.walk(folder):
                    for name in files:
                        rel = os.path.relpath(os.path.join(dirpath, name), folder)
                        if not extensions or os.path.splitext(name)[1].lower() in extensions:
                            names.add(rel)
            return sorted(names)

        def get_full_path(folder_name, filename):
            if folder_name not in fp.folder_names_and_paths:
                return None
            for folder in fp.folder_names_and_paths[folder_name][0]:
                path = os.path.join(folder, filename)
                if os.path.isfile(path):
                    return path
            return None

        def get_full_path_or_raise(folder_name, filename):
            path = get_full_path(folder_name, filename)
            if path is None:
                raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
            return path

        fp.add_model_folder_path = add_model_folder_path
        fp.get_folder_paths = get_folder_paths
        fp.get_filename_list = get_filename_list
        fp.get_full_path = get_full_path
        fp.get_full_path_or_raise = get_full_path_or_raise
        return fp


def import_pack_with_comfy(monkeypatch, doubles: ComfyDoubles, name: str = "gpen_pack_under_test") -> types.ModuleType:
    """Import the repository root as package `name` (running its `__init__.py`, as ComfyUI does) with the
    doubles in `sys.modules`. Each call is a fresh import; `monkeypatch` undoes everything afterwards."""
    for module_name, module in doubles.build().items():
        monkeypatch.setitem(sys.modules, module_name, module)
    for module_name in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, module_name)
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    package = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, package)
    spec.loader.exec_module(package)
    # Submodules imported during exec_module went into sys.modules directly; re-add them through monkeypatch
    # so they are removed afterwards too.
    for module_name in [m for m in sys.modules if m.startswith(name + ".")]:
        monkeypatch.setitem(sys.modules, module_name, sys.modules.pop(module_name))
    return package


def import_pack_module(module: str, name: str = "comfyui_gpen_restore") -> types.ModuleType:
    """Import `<pack>.<module>` without running the pack's `__init__.py` (no ComfyUI needed), the way the
    command-line script does."""
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(REPO_ROOT)]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.{module}")
