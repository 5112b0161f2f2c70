"""Reading GPEN's hyperparameters from a state dict (key names and tensor shapes only, never file names)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from ..model_files.errors import UnsupportedCheckpointError

# Keys every GPEN FullGenerator state dict has; their absence means "not GPEN" rather than "damaged GPEN".
SIGNATURE_KEYS = ("generator.style.1.weight", "generator.input.input", "ecd0.0.0.weight", "final_linear.0.weight")
# The advice `load_gpen` ends its errors with (the messages raised here describe the problem only).
WHERE_TO_GET = "Expected a GPEN-BFR-256/512/1024/2048 file (.pth, .pt, .safetensors or .onnx)"


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, float | int]:
    """GPEN constructor keywords (`size`, `style_dim`, `n_mlp`, `channel_multiplier`, `narrow`, and `out_size` for
    upstream's FullGenerator_SR, whose decoder outgrows its encoder) for `state_dict`."""
    missing = [key for key in SIGNATURE_KEYS if key not in state_dict]
    if missing:
        found = ", ".join(list(state_dict)[:5]) or "no keys at all"
        raise UnsupportedCheckpointError(
            f"Not a GPEN checkpoint: no {', '.join(f'`{k}`' for k in missing)} (found {found}, ...)."
        )
    encoder_depth = len({m.group(1) for key in state_dict if (m := re.match(r"ecd(\d+)\.", key))})
    size = 2 ** (encoder_depth + 1)  # the encoder goes from S down to 4x4 in log2(S) - 1 stages
    # The decoder has a ToRGB per resolution from 8x8 up; above the encoder's size its levels take noise instead.
    rgb_levels = {m.group(1) for key in state_dict if (m := re.match(r"generator\.to_rgbs\.(\d+)\.", key))}
    out_size = 2 ** (len(rgb_levels) + 2)
    n_mlp = len({m.group(1) for key in state_dict if (m := re.match(r"generator\.style\.(\d+)\.weight$", key))})
    style_dim = state_dict["generator.style.1.weight"].shape[0]
    # channels[4] = int(512 * narrow); published narrows are 1 and 0.5, so this is exact.
    narrow = state_dict["generator.input.input"].shape[1] / 512
    # channels[S] = int(2**(14 - log2 S) * channel_multiplier * narrow) for S >= 64, read at the decoder's top (its
    # ToRGB takes twice them); below 64 the multiplier affects no layer and cannot be deduced, so upstream's
    # default 2 stands.
    channel_multiplier: float = 2
    top_rgb = f"generator.to_rgbs.{len(rgb_levels) - 1}.conv.weight"
    if out_size >= 64 and top_rgb in state_dict:
        channels_at_top = state_dict[top_rgb].shape[2] // 2
        channel_multiplier = channels_at_top / (2 ** (14 - int(math.log2(out_size))) * narrow)
    config = {
        "size": size,
        "style_dim": style_dim,
        "n_mlp": n_mlp,
        "channel_multiplier": _tidy(channel_multiplier),
        "narrow": _tidy(narrow),
    }
    if not 8 <= size <= 2048:
        raise UnsupportedCheckpointError(
            f"GPEN checkpoint with {encoder_depth} encoder stages (size {size}) is outside the supported 8..2048."
        )
    if out_size != size:  # FullGenerator_SR
        if not size < out_size <= 2048:
            raise UnsupportedCheckpointError(
                f"GPEN checkpoint whose decoder ends at {out_size} px for a {size}-px input: expected an output "
                f"from {size} to 2048 px."
            )
        config["out_size"] = out_size
    return config


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise `UnsupportedCheckpointError` listing every key that is missing, extra, or of another shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {list(state_dict[k].shape)} (expected {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or extra or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}")
        raise UnsupportedCheckpointError(
            f"Checkpoint does not match GPEN({model.extra_repr()}): {'; '.join(parts)}. "
            f"The file is damaged or from another network (a discriminator, a GPEN of another design)."
        )


def _tidy(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
