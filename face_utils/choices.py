"""The choices and defaults the face pipeline offers, kept where importing them costs nothing: the modules that
implement them import torch and OpenCV, and the command line shows these in `--help` before it imports those."""

from __future__ import annotations

# Face detectors `detectors.load_detector` knows.
DETECTORS = ("retinaface_resnet50", "retinaface_mobile0.25", "yunet")
# How faces and tracks are numbered (`selection.order_faces`).
ORDERS = ("largest", "left_to_right", "top_to_bottom", "best_score")
# Alignment templates (`alignment.reference_points`): upstream GPEN's own and FFHQ's.
TEMPLATES = ("gpen", "ffhq")
# Paste-back masks (`paste.PasteSettings.mask_shape`).
MASK_SHAPES = ("ellipse", "box", "parsing")
# `paste.PasteSettings` defaults, fractions of the crop side: 0.04 keeps clear of the crop's border pixels.
DEFAULT_EROSION = 0.04
DEFAULT_FEATHER = 0.1
# Missed frames a track survives (1/6 s at 30 fps: a blink of the detector, a hand passing the face).
DEFAULT_MAX_GAP = 5
# `repair.RepairSettings` defaults, fractions of the crop side: pasted around the damage, and the soft edge beyond.
DEFAULT_DAMAGE_GROW = 0.02
DEFAULT_DAMAGE_FEATHER = 0.03
# Restored detail steadied over neighbouring frames on video (`temporal.TemporalConsistency`), unless turned off: on
# a still noisy face it cuts the flicker a detail-inventing restorer leaves to 0.15x and a random-weight GPEN's to
# 0.22x, follows a blink whole and ghosts nothing, for 1-9 % of GPEN's time (benchmarks/bench_temporal.py and
# bench_video.py). Single images are unaffected.
DEFAULT_TEMPORAL_CONSISTENCY = True
