"""The loader nodes: a GPEN model and a face detector."""

from __future__ import annotations

import logging
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
from comfy_api.latest import io

from ..face_utils import DETECTORS, KNOWN_WEIGHTS, load_detector
from ..gpen_arch.loader import model_size
from ..gpen_arch.choices import TASKS, guess_task
from ..gpen_arch.runner import PRECISIONS, GpenRunner, cpu_has_native_bf16
from ..model_files.folders import COMFYUI_WHERE_TO_GET, RESTORE_FOLDER, preferred_model
from .host import advanced, loaders_category
from .inputs import TITLES, FaceDetectorSocket, GpenModelSocket, named_errors, schema
from .models import NO_MODELS, GpenModel, gpen_run_device, model_path, model_paths, weights_dir

logger = logging.getLogger(__name__)


class GPENModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        paths = model_paths()
        return schema(
            "GPENModelLoader", category=loaders_category(),
            description=(
                "Loads a GPEN face-restoration model (GPEN-BFR-256/512/1024/2048, .pth/.pt/.safetensors/.onnx) from "
                "models/facerestore_models. The model's size is read from the weights. ComfyUI's model management "
                "moves it to the GPU when it runs and frees it under memory pressure."),
            inputs=[
                io.Combo.Input("model_name", options=list(paths) or [NO_MODELS],
                               default=preferred_model(paths, model_size) or NO_MODELS, tooltip=(
                    "A GPEN file in models/facerestore_models (the folder ReActor and facerestore_cf use); the "
                    "default is the largest GPEN there, judged by what each file holds.")),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto", tooltip=(
                    "auto: fp16 or bf16 where the GPU handles it well, bf16 on CPUs that compute it natively (AVX-512 "
                    "BF16, AMX), fp32 on other CPUs. fp32 is full IEEE precision "
                    "on every device (TF32 is off while GPEN runs), slower and twice the memory. .onnx models "
                    "always run in fp32.")),
                io.Boolean.Input("compile", default=False, **advanced(), tooltip=(
                    "Compile the network with torch.compile: the first run takes minutes, later runs of the same "
                    "size are faster. Needs Triton on NVIDIA GPUs, a C++ compiler on the CPU. Ignored for .onnx.")),
                io.Combo.Input("task", options=["auto", *TASKS], default="auto", optional=True, tooltip=(
                    "What the model was trained to do: restore (GPEN-BFR), colourise (GPEN-Colorization) or repair "
                    "(GPEN-Inpainting). Their files look alike inside, so 'auto' guesses from the file name "
                    "('color'/'colour' colourises, 'inpaint'/'repair' repairs, anything else restores) and the log "
                    "says so; choose it here if the name does not tell.")),
            ],
            outputs=[GpenModelSocket.Output("gpen_model", tooltip=(
                f"The loaded GPEN model, for '{TITLES['GPENRestoreFaces']}', '{TITLES['GPENDetectFaces']}' and "
                f"'{TITLES['GPENRestoreFacesOneNode']}'."))],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name: str, precision: str, compile: bool = False, task: str = "auto") -> tuple:
        # A file replaced under the same name must load again, not come from ComfyUI's cache.
        path = folder_paths.get_full_path(RESTORE_FOLDER, model_name)
        stat = Path(path).stat() if path else None
        return (model_name, precision, compile, task, stat and stat.st_size, stat and stat.st_mtime_ns)

    @classmethod
    @named_errors
    def execute(cls, model_name: str, precision: str, compile: bool = False, task: str = "auto") -> io.NodeOutput:
        path = model_path(model_name)
        chosen = guess_task(model_name) if task == "auto" else task
        device = mm.get_torch_device()
        # "auto" precision is chosen for where GPEN will run, which with --novram is the offload device (a CPU,
        # where fp16 is emulated and some 30x slower), not the GPU.
        runs_on = gpen_run_device()
        runner = GpenRunner.load(
            path, precision=precision, compile=compile, where_to_get=COMFYUI_WHERE_TO_GET,
            fp16_ok=mm.should_use_fp16(runs_on, prioritize_performance=True),
            # ComfyUI answers no for any CPU; one that computes bf16 natively runs GPEN 2x faster in it.
            bf16_ok=mm.should_use_bf16(runs_on, prioritize_performance=True)
            or (runs_on.type == "cpu" and not mm.FORCE_FP32 and cpu_has_native_bf16()),
            task=chosen,
        )
        patcher = None
        if not runner.is_onnx:
            patcher = comfy.model_patcher.ModelPatcher(
                runner.module, load_device=device, offload_device=mm.unet_offload_device()
            )
        logger.info("%s: %s is %s to %s%s, running in %s on %s", TITLES["GPENModelLoader"], model_name,
                    runner.label, chosen, " (guessed from the file name: set the task if it does another job)"
                    if task == "auto" else "", runner.dtype, "onnxruntime" if runner.is_onnx else runs_on)
        return io.NodeOutput(GpenModel(runner, patcher))


class GPENFaceDetectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "GPENFaceDetectorLoader", category=loaders_category(),
            description=(
                "Loads a face detector: RetinaFace ResNet-50 (most accurate, upstream GPEN's choice), RetinaFace "
                "MobileNet-0.25 (fast) or YuNet (tiny, CPU). Weights are taken from models/facedetection, or "
                "downloaded there (checksum-verified) the first time this node runs."),
            inputs=[io.Combo.Input("detector", options=list(DETECTORS), default=DETECTORS[0], tooltip=(
                "retinaface_resnet50: best on small and turned faces. retinaface_mobile0.25: several times faster, "
                "misses more small faces. yunet: OpenCV's 230 kB detector, always on the CPU."))],
            outputs=[FaceDetectorSocket.Output("face_detector", tooltip=(
                f"The face detector, for '{TITLES['GPENDetectFaces']}' and '{TITLES['GPENRestoreFacesOneNode']}'."))],
        )

    @classmethod
    @named_errors
    def execute(cls, detector: str) -> io.NodeOutput:
        model_dir = weights_dir(KNOWN_WEIGHTS[detector].filename)
        # Kept on the offload device between runs; the nodes that detect move it to the GPU while they work.
        return io.NodeOutput(load_detector(detector, model_dir, device=mm.unet_offload_device()))

