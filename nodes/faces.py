"""The face nodes: detect and align, restore, paste back (the separate steps), and the one-node restore."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..face_utils import PasteSettings
from ..face_utils.choices import DEFAULT_TEMPORAL_CONSISTENCY
from ..face_utils.conversion import check_image_batch, frame_to_numpy, frames_to_image
from ..face_utils.detection import FaceDetector
from ..face_utils.face_set import DetectSettings, FaceSet
from ..face_utils.landmark_faces import LandmarkFaces
from ..face_utils.pipeline import RestoreFn, detect_faces, paste_back, restore_crop_batch, restore_image, warp_crops
from ..face_utils.pixels import choose_pixels
from ..face_utils.repair import RepairSettings, damage_frames, painted, paste_weight, with_damage_batch
from ..face_utils.preview import draw_faces
from ..face_utils.temporal import steady_batch
from ..gpen_arch.runner import MAX_BATCH_SIZE, crops_rgb, resize_crops, with_luminance
from .inputs import CATEGORY, OUTPUT_SIZES, TITLES, FacesSocket, GpenModelSocket, detector_input, face_size_input
from .inputs import image_and_mask_outputs, model_input, named_errors, paste_inputs, schema, selection_inputs
from .inputs import canvas_input, consistency_input, damage_input, luminance_input, repair_inputs, strength_input
from .inputs import template_input, title, tracking_inputs
from .models import GpenModel, bind_restorer, on_device, parser_for

logger = logging.getLogger(__name__)


class GPENDetectFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "GPENDetectFaces", category=CATEGORY,
            description=(
                "Finds faces in every frame of an image batch, picks which to keep, and cuts each out aligned (eyes, "
                "nose and mouth at fixed places), ready for a restorer. Outputs the crops, the faces paste-back "
                "needs, and a preview. When no frame has a face, the crops are one black placeholder (never "
                "restored) and the faces are empty, so the rest of the graph passes the image through."),
            inputs=[
                io.Image.Input("image", tooltip="The image or batch of frames to find faces in."),
                detector_input(), face_size_input(), template_input(), *selection_inputs(),
                GpenModelSocket.Input("gpen_model", optional=True,
                                      tooltip="Connect to cut crops at this model's size."),
                *tracking_inputs(), damage_input(),
            ],
            outputs=[
                io.Image.Output("face_crops", tooltip=(
                    "Aligned face crops, one per face (square). When no face is found: one black placeholder.")),
                FacesSocket.Output("faces", tooltip="The faces: frame, track, box, landmarks, the transform back."),
                io.Image.Output("preview", tooltip="The frames with each kept face's box, landmarks, id and score."),
            ],
        )

    @classmethod
    @named_errors
    def execute(cls, image, face_detector, face_size, template, score_threshold, order, face_index, max_faces,
                gpen_model: GpenModel | None = None, temporal_smoothing: float = 1.0, max_gap: int = 5,
                detection_size: int = 0, damage: torch.Tensor | None = None) -> io.NodeOutput:
        check_image_batch(image)
        face_detector = face_source(face_detector)
        crop_size = gpen_model.size if gpen_model is not None else face_size
        settings = DetectSettings(crop_size=crop_size, template=template, score_threshold=score_threshold,
                                  order=order, index=face_index, max_faces=max_faces,
                                  smoothing=temporal_smoothing, max_gap=max_gap, detection_size=detection_size)
        with on_device(face_detector):
            faces = detect_faces(image, face_detector, settings,
                                 check_interrupted=mm.throw_exception_if_processing_interrupted)
        log_faces(cls, faces, "paste-back will pass the image through unchanged")
        if len(faces):
            # With damage, the crops carry it as alpha and are painted white there (see face_utils.repair).
            source = image if damage is None else with_damage_batch(image, damage)
            crops = warp_crops(source, faces, free_bytes=mm.get_free_memory(mm.intermediate_device()),
                               pixels=choose_pixels(mm.get_torch_device()))
            crops = crops if damage is None else painted(crops)
        else:
            # ComfyUI's image nodes (VAE Encode, upscalers) fail on an empty batch: one black crop flows to them,
            # which the restore node recognises and never runs GPEN on.
            crops = torch.zeros((1, crop_size, crop_size, image.shape[-1]), dtype=torch.float32)
        positions = faces.positions_by_frame()
        preview = frames_to_image([draw_faces(frame_to_numpy(image, i), [faces.faces[p] for p in positions.get(i, [])])
                                   for i in range(image.shape[0])])
        device = mm.intermediate_device()
        return io.NodeOutput(crops.to(device), faces, preview.to(device))


class GPENRestoreFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "GPENRestoreFaces", category=CATEGORY,
            description=(
                "Restores aligned face crops with a GPEN model. Crops of any size are resized to the model's size; "
                f"the output crops have the model's size. Works on any face crops, not only those from "
                f"'{TITLES['GPENDetectFaces']}'; black crops (its no-face placeholder) pass through unrestored."),
            inputs=[
                model_input(),
                io.Image.Input("face_crops",
                               tooltip=f"Aligned square face crops, e.g. from '{TITLES['GPENDetectFaces']}'."),
                strength_input(),
                FacesSocket.Input("faces", optional=True, tooltip=(
                    f"Optional: the faces from '{TITLES['GPENDetectFaces']}'; when it found none, GPEN does not run.")),
                io.Combo.Input("output_size", options=list(OUTPUT_SIZES), default="model", optional=True, tooltip=(
                    "Size of the restored crops: the model's (2048 px for GPEN-BFR-2048), or that of the input crops. "
                    "For long videos through the separate nodes, cut small crops (face_size, no model connected) "
                    "and keep them small here: 300 crops at 2048 px take 15 GB, at 512 px under 1 GB.")),
                luminance_input(), *repair_inputs(), consistency_input(),
            ],
            outputs=[io.Image.Output("restored_crops", tooltip=(
                "The restored crops, same count and order as the input crops, at the chosen output_size."))],
        )

    @classmethod
    @named_errors
    def execute(cls, gpen_model: GpenModel, face_crops, strength, faces: FaceSet | None = None,
                output_size: str = "model", luminance: str = "keep", damage_grow: float = RepairSettings.grow,
                damage_feather: float = RepairSettings.feather,
                temporal_consistency: bool = DEFAULT_TEMPORAL_CONSISTENCY) -> io.NodeOutput:
        check_image_batch(face_crops, name="face_crops")
        repair = gpen_model.runner.task == "repair"
        if repair and face_crops.shape[-1] != 4:
            raise ValueError(f"{gpen_model.runner.name} repairs the damage it is shown, and these crops carry none: "
                             f"connect a mask to 'damage' on '{TITLES['GPENDetectFaces']}' (white = damaged)")
        repair_settings = RepairSettings(grow=damage_grow, feather=damage_feather)

        def bind(count: int) -> RestoreFn:
            progress = comfy.utils.ProgressBar(count)
            restore = bind_restorer(gpen_model, count, strength, luminance)
            if repair:  # the restored crops get their paste weight as alpha: only the damage is pasted back
                return lambda crops, _on_face: paste_weight(restore(crops, lambda: progress.update(1)),
                                                            crops[..., 3], repair_settings)
            return lambda crops, _on_face: restore(crops, lambda: progress.update(1))

        out, count = restore_crop_batch(
            face_crops, bind, size=gpen_model.runner.output_size if output_size == "model" else face_crops.shape[1],
            free_bytes=mm.get_free_memory(mm.intermediate_device()), none_found=faces is not None and not len(faces),
            chunk=MAX_BATCH_SIZE, channels=4 if repair else 3,
        )
        # Video through the separate nodes: each face steadied with its track's neighbours, as the one-node restore
        # does (a repair is not: it fills what no neighbour shows either).
        steadied = (temporal_consistency and not repair and faces is not None and count
                    and len(faces.positions_by_frame()) > 1)
        if steadied:
            if len(faces) != face_crops.shape[0]:
                raise ValueError(f"{face_crops.shape[0]} crop(s) but {len(faces)} face record(s): temporal "
                                 "consistency needs the crops and faces of the same detection, one crop per face "
                                 "(or turn it off)")
            out = steady_batch(face_crops.to(out.device), out, faces)
        if gpen_model.runner.task == "colourise" and luminance == "keep" and (output_size == "input" or steadied):
            # Colour on the crops' own luminance at the output's size (for "input", not on the model-size copy's
            # resampled; for steadied faces, exactly again after the neighbours' were averaged in).
            out = with_luminance(out, resize_crops(crops_rgb(face_crops).to(out.device), out.shape[1]))
        skipped = face_crops.shape[0] - count
        logger.info("%s: restored %d crop(s) with %s%s", title(cls), count, gpen_model.runner.name,
                    f"; {skipped} black placeholder crop(s) passed through unrestored" if skipped else "")
        return io.NodeOutput(out.to(mm.intermediate_device()))


class GPENPasteFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "GPENPasteFaces", category=CATEGORY,
            description=(
                f"Pastes face crops back where '{TITLES['GPENDetectFaces']}' found them, with a soft mask and colour "
                "matching. The image may be the original or an upscaled copy (faces are placed at the same relative "
                "position). Also outputs the paste mask."),
            inputs=[
                io.Image.Input("image", tooltip="The image the faces were detected on, or an upscaled copy of it."),
                io.Image.Input("face_crops", tooltip=(
                    "Restored crops, in the order of `faces` (one per face). A crop with alpha (a repaired face's) "
                    "is pasted only where its alpha is: its damage, grown and feathered.")),
                FacesSocket.Input("faces", tooltip=f"From the same '{TITLES['GPENDetectFaces']}' node as the crops."),
                *paste_inputs(),
                io.Float.Input("opacity", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=(
                    "How much of the pasted face shows over the original inside the mask (1 = all).")),
            ],
            outputs=image_and_mask_outputs(),
        )

    @classmethod
    @named_errors
    def execute(cls, image, face_crops, faces: FaceSet, mask_shape, erosion, feather, color_correction,
                opacity) -> io.NodeOutput:
        check_image_batch(image)
        check_image_batch(face_crops, name="face_crops")
        settings = PasteSettings(mask_shape=mask_shape, erosion=erosion, feather=feather, opacity=opacity,
                                 color_correction=color_correction)
        if not len(faces):
            logger.info("%s: no faces to paste (%s); the image passes through unchanged", title(cls),
                        faces.summary())
            face_crops = face_crops[:0]
        with parser_for(mask_shape if len(faces) else None) as parser:
            out, mask = paste_back(image, face_crops, faces, settings, parser=parser,
                                   check_interrupted=mm.throw_exception_if_processing_interrupted,
                                   pixels=choose_pixels(mm.get_torch_device()))
        device = mm.intermediate_device()
        return io.NodeOutput(out.to(device), mask.to(device))


class GPENRestoreFacesOneNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "GPENRestoreFacesOneNode", category=CATEGORY,
            description=(
                "Detects, restores and pastes back every chosen face in one node, frame by frame, holding only one "
                "frame's crops at a time (suited to long video frame batches). Frames without faces pass through "
                "unchanged with an empty mask."),
            inputs=[
                io.Image.Input("image", tooltip="The image or batch of frames whose faces to restore."),
                model_input(), detector_input(), strength_input(), *selection_inputs(), template_input(),
                *paste_inputs(), *tracking_inputs(), luminance_input(), damage_input(), *repair_inputs(),
                canvas_input(), consistency_input(),
            ],
            outputs=image_and_mask_outputs(),
        )

    @classmethod
    @named_errors
    def execute(cls, image, gpen_model: GpenModel, face_detector, strength, score_threshold, order, face_index,
                max_faces, template, mask_shape, erosion, feather, color_correction, temporal_smoothing: float = 1.0,
                max_gap: int = 5, detection_size: int = 0, luminance: str = "keep", damage: torch.Tensor | None = None,
                damage_grow: float = RepairSettings.grow,
                damage_feather: float = RepairSettings.feather, canvas: torch.Tensor | None = None,
                temporal_consistency: bool = DEFAULT_TEMPORAL_CONSISTENCY) -> io.NodeOutput:
        check_image_batch(image)
        if canvas is not None:
            check_image_batch(canvas, name="canvas")
        runner = gpen_model.runner
        if damage is not None and runner.task != "repair":
            raise ValueError(f"a damage mask was given, but {runner.name} is loaded to {runner.task}: load a "
                             f"repairing model (GPEN-Inpainting), or set the task of '{TITLES['GPENModelLoader']}' "
                             "to repair")
        if damage is None and runner.task == "repair":
            raise ValueError(f"{runner.name} repairs the damage it is shown: connect a mask to 'damage' (white = "
                             "damaged)")
        damage_source = None if damage is None else damage_frames(damage, image.shape[0], tuple(image.shape[1:3]))
        repair_settings = RepairSettings(grow=damage_grow, feather=damage_feather)
        face_detector = face_source(face_detector)
        detect_settings = DetectSettings(crop_size=gpen_model.size, template=template, score_threshold=score_threshold,
                                         order=order, index=face_index, max_faces=max_faces,
                                         smoothing=temporal_smoothing, max_gap=max_gap,
                                         detection_size=detection_size)
        paste_settings = PasteSettings(mask_shape=mask_shape, erosion=erosion, feather=feather,
                                       color_correction=color_correction)
        if runner.task == "colourise":
            # Only inside the face mask does colour appear: the rest of a black-and-white photo stays as it was.
            paste_settings = paste_settings.for_colourised(keep_luminance=luminance == "keep")
        progress = comfy.utils.ProgressBar(image.shape[0])
        with on_device(face_detector), parser_for(mask_shape) as parser:
            # GPEN is placed after the helpers took their room: freeing memory for them may unload it (always
            # with --disable-smart-memory), and its batch size must count what they hold. Sized for a few faces
            # per frame; the runner halves its batch if memory runs out.
            restore = bind_restorer(gpen_model, MAX_BATCH_SIZE, strength, luminance)
            out, mask, faces = restore_image(
                image, face_detector, restore, detect_settings, paste_settings, parser=parser,
                on_progress=lambda done, total: progress.update_absolute(done, total),
                check_interrupted=mm.throw_exception_if_processing_interrupted,
                pixels=choose_pixels(mm.get_torch_device()), damage=damage_source, repair=repair_settings,
                canvas=canvas, temporal_consistency=temporal_consistency,
            )
        log_faces(cls, faces, "the image passes through unchanged, the mask is empty")
        device = mm.intermediate_device()
        return io.NodeOutput(out.to(device), mask.to(device))


def face_source(face_detector: FaceDetector | dict) -> FaceDetector:
    """The `face_detector` socket's value as a detector: ours, or core ComfyUI's face landmarks (a dict) as one."""
    return face_detector if isinstance(face_detector, FaceDetector) else LandmarkFaces(face_detector)


def log_faces(node: type, faces: FaceSet, consequence: str) -> None:
    if len(faces):
        logger.info("%s: %s", title(node), faces.summary())
    else:
        logger.warning("%s: %s, none to restore; %s", title(node), faces.summary(), consequence)

