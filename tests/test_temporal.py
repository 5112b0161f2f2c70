"""Restored detail that holds still on video (`temporal_consistency`): measured with a test restorer that invents
fresh detail every frame, as a GAN does (random weights cannot show it): on a still face the pasted face flickers
at most half as much as without; a blink in the input is followed; a face moving over its background leaves no
ghost; a scene's faces are never mixed with another's."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from comfyui_gpen_restore.face_utils import PasteSettings
from comfyui_gpen_restore.face_utils import pipeline
from support import GivenFace, image_batch

FRAMES = 15
BLINK = range(6, 9)  # frames whose eyes are closed


def inventing_restorer(seed: int = 0):
    """A restorer that returns its input with fresh fine detail (noise of 0.06) drawn anew at every call."""
    generator = torch.Generator().manual_seed(seed)

    def restore(crops, on_face):
        for _ in range(crops.shape[0]):
            on_face()
        detail = torch.randn(crops[..., :3].shape, generator=generator) * 0.06
        return (crops[..., :3] + detail).clamp(0, 1)

    return restore


def video(grace, grace_face, blink: bool) -> torch.Tensor:
    """A still shot of the fixture photo with mild sensor noise; with `blink`, the eyes darken for three frames."""
    rng = np.random.default_rng(1)
    frames = []
    (x0, y0), (x1, _) = grace_face.landmarks_xy[:2]
    for t in range(FRAMES):
        frame = grace + rng.normal(0, 0.01, grace.shape).astype(np.float32)
        if blink and t in BLINK:
            frame[round(y0) - 8 : round(y0) + 8, round(x0) - 15 : round(x1) + 15] *= 0.4
        frames.append(np.clip(frame, 0, 1))
    return image_batch(*frames)


def run(frames, grace_face, consistent: bool):
    settings = pipeline.DetectSettings(crop_size=256, score_threshold=0.5)
    out, mask, faces = pipeline.restore_image(frames, GivenFace(grace_face), inventing_restorer(),
                                              settings, PasteSettings(color_correction=False),
                                              temporal_consistency=consistent)
    assert len(faces) == FRAMES and faces.faces[0].track_id == 0
    return out, mask


def test_a_still_face_flickers_at_most_half_as_much(grace, grace_face):
    frames = video(grace, grace_face, blink=False)
    plain, mask = run(frames, grace_face, consistent=False)
    steady, steady_mask = run(frames, grace_face, consistent=True)
    assert torch.equal(mask, steady_mask)
    core = mask[0] > 0.99

    def flicker(out):
        return (out[1:] - out[:-1]).abs()[:, core].mean().item()

    assert flicker(steady) <= 0.5 * flicker(plain), (flicker(steady), flicker(plain))
    assert torch.equal(steady[:, mask[0] == 0], frames[:, mask[0] == 0])  # nothing outside the faces changes


def test_a_blink_is_followed(grace, grace_face):
    frames = video(grace, grace_face, blink=True)
    plain, _ = run(frames, grace_face, consistent=False)
    steady, _ = run(frames, grace_face, consistent=True)
    (x0, y0), (x1, _) = grace_face.landmarks_xy[:2]
    eyes = (slice(round(y0) - 6, round(y0) + 6), slice(round(x0) - 10, round(x1) + 10))

    def change(out):  # how much the eyes' brightness moved from before the blink to its middle
        return (out[7][eyes].mean() - out[4][eyes].mean()).abs().item()

    assert change(steady) >= 0.9 * change(plain), (change(steady), change(plain))


def test_faces_of_another_shot_are_never_combined(grace, grace_face):
    """Two shots (a cut between frames 7 and 8) whose faces both have track id 0: each frame's face is combined
    only with its own shot's, so the first frame after the cut is the second shot's face, not a blend."""
    frames = video(grace, grace_face, blink=False)
    frames[8:] = 1.0 - frames[8:]  # another picture from frame 8 on (a cut), the face at the same place
    steady, mask = run(frames, grace_face, consistent=True)
    plain, _ = run(frames, grace_face, consistent=False)
    core = mask[8] > 0.99
    # Across the cut the picture inverts: a blend with the first shot's faces would pull frame 8 towards them.
    assert (steady[8][core] - plain[8][core]).abs().mean() < 0.03


def test_a_moving_face_leaves_no_ghost(grace, grace_face, monkeypatch):
    """The face moves 6 px a frame over a still background (so its aligned crops agree on the face and not around
    it). With a restorer that invents nothing, the combined faces must equal the per-frame ones: any difference is
    a ghost of the neighbours' surroundings. Switching the input agreement off shows what the test catches."""
    from comfyui_gpen_restore.face_utils import temporal

    patch = grace[60:380, 120:400]  # the head, moved as a whole
    stripes = 0.3 + 0.4 * ((np.arange(512) // 8) % 2).astype(np.float32)  # a background with structure
    background = np.tile(stripes[None, :, None], (600, 1, 3))
    frames = []
    for t in range(FRAMES):
        frame = background.copy()
        frame[60:380, 60 + 6 * t : 340 + 6 * t] = patch
        frames.append(frame)

    class Moving:
        name = "stand-in"

        def detect(self, frame, *, frame_index=0, **_):
            dx = 6 * frame_index - 60
            face = grace_face.with_frame(frame_index)
            x0, y0, x1, y1 = face.box_xyxy
            return [dataclasses.replace(face, box_xyxy=(x0 + dx, y0, x1 + dx, y1),
                                        landmarks_xy=tuple((x + dx, y) for x, y in face.landmarks_xy))]

    def restore(crops, on_face):
        for _ in range(crops.shape[0]):
            on_face()
        return crops[..., :3].clone()

    settings = pipeline.DetectSettings(crop_size=256, score_threshold=0.5, smoothing=0.0)
    batch = image_batch(*frames)

    def ghost() -> float:
        (plain, mask, _), (steady, _, _) = [
            pipeline.restore_image(batch, Moving(), restore, settings, PasteSettings(color_correction=False),
                                   temporal_consistency=consistent) for consistent in (False, True)]
        return (steady - plain).abs()[mask > 0.5].mean().item()

    kept = ghost()
    monkeypatch.setattr(temporal, "AGREEMENT_SCALE", 1e9)
    blind = ghost()
    assert kept < 0.25 * blind and kept < 0.01, (kept, blind)
