"""The choices and defaults of running GPEN, kept where importing them costs nothing (the rest of gpen_arch imports
torch; the command line shows these in `--help` before it imports torch)."""

from __future__ import annotations

# Precisions `runner.choose_dtype` resolves ("auto" asks the device).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# Upstream GPEN blends the restored face 80/20 with the aligned input (`--alpha 0.8`).
DEFAULT_STRENGTH = 0.8
