"""The choices and defaults of running GPEN, kept where importing them costs nothing (the rest of gpen_arch imports
torch; the command line shows these in `--help` before it imports torch)."""

from __future__ import annotations

# Precisions `runner.choose_dtype` resolves ("auto" asks the device).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# Upstream GPEN blends the restored face 80/20 with the aligned input (`--alpha 0.8`).
DEFAULT_STRENGTH = 0.8
# What a colourised face keeps: its own luminance ("keep": it gains colour, never loses detail) or the model's.
LUMINANCES = ("keep", "model")
# What a GPEN checkpoint was trained to do. The published colourisation and inpainting models have exactly the keys
# and shapes of GPEN-BFR-1024, so the job cannot be read from the weights: it is chosen, or guessed from the name.
TASKS = ("restore", "colourise", "repair")
# Words in upstream's file names (GPEN-Colorization-1024.pth, GPEN-Inpainting-1024.pth) and in ours.
_TASK_WORDS = {"colourise": ("color", "colour"), "repair": ("inpaint", "repair")}


def guess_task(file_name: str) -> str:
    """The task a GPEN file's name suggests: "colourise" for a colo(u)ri[sz]ation model, "repair" for an inpainting
    one, else "restore"."""
    name = file_name.lower()
    return next((task for task, words in _TASK_WORDS.items() if any(word in name for word in words)), "restore")
