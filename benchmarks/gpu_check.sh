#!/usr/bin/env bash
# The GPU check, in one go (about 5-8 minutes on an H100): what the pack costs on an NVIDIA GPU, and the tests that
# need CUDA.
#
#   bash benchmarks/gpu_check.sh [DEVICE]        # DEVICE: cuda (default), cuda:N; `cpu` rehearses it here
#
# Prints, as Markdown tables:
#   1. GPEN-512/1024/2048 ms per face in fp16, bf16 and fp32 (bench_gpen.py: random weights at the published sizes,
#      batch 1, median of 5 after a warm-up; peak memory);
#   2. the one-node restore of 8 1080p frames with one face (bench_pipeline.py's "batch" scene) with GPEN-2048 in
#      fp16: per stage, and the share of the whole spent outside GPEN (target: the frame at most 1.5x GPEN's time);
# then runs the tests that exercise CUDA when it is there (crops kept on the GPU as with --gpu-only, the torch
# pixel path's parity with OpenCV, fp32 without TF32).
#
# Needs torch, torchvision and opencv-python (a GPU machine here has torch and OpenCV), numpy, facexlib (the
# fixture detector), safetensors and pytest; on a machine that reaches no registry, carry them as wheels and put
# them on PYTHONPATH first (the device tool's README says how).
set -uo pipefail
cd "$(dirname "$0")/.."
device=${1:-cuda}
python=${PYTHON:-python3}
status=0

echo "## GPEN per face on $device"
if [ "$device" = cpu ]; then sizes=(512); dtypes=(fp32 bf16); else sizes=(512 1024 2048); dtypes=(fp16 bf16 fp32); fi
"$python" benchmarks/bench_gpen.py --device "$device" --sizes "${sizes[@]}" --dtypes "${dtypes[@]}" --batches 1 \
  --repeats 5 || status=1

echo
echo "## One-node restore, 8 frames of 1920x1080 with one face, on $device"
precision=fp16; [ "$device" = cpu ] && precision=fp32
models=2048; [ "$device" = cpu ] && models=512
"$python" benchmarks/bench_pipeline.py --device "$device" --precision "$precision" --scenes batch \
  --models $models --repeats 3 || status=1

echo
echo "## Tests that use CUDA when it is there"
# test_face_pipeline: restored crops stay on a CUDA device; test_gpen_arch: fp32 runs without TF32;
# test_torch_pixels: the torch pixel path (CPU here, the same code on the GPU) against OpenCV; test_repair: the
# repair's paste on the device.
"$python" -m pytest -q -p no:cacheprovider -rs tests/test_torch_pixels.py tests/test_face_pipeline.py \
  tests/test_gpen_arch.py tests/test_repair.py -k "torch_pixels or crops_device or tf32 or device" || status=1
exit $status
