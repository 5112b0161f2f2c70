"""The command line on the fixture photos with test-made weights: outputs, defaults, --aligned, errors, and that
it gives what the nodes give."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from comfyui_gpen_restore.cli import main as cli
from comfyui_gpen_restore.cli.image_files import ImageFileError, read_image
from comfyui_gpen_restore.face_utils import PasteSettings, load_detector, pipeline
from comfyui_gpen_restore.gpen_arch import GpenRunner
from comfyui_gpen_restore.gpen_arch.runner import cpu_has_native_bf16
from support import DETECTOR, EIGHT_BIT_ROUNDING, REPO_ROOT, CodePayload, cli_args, image_batch, one_error_line
from support import read_rgb, run_cli, save_gpen, save_realesrnet


def read_png(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def test_restores_every_image_of_a_folder(models_dir, home, fixtures_dir, capsys):
    out = home / "out"
    assert run_cli(["--input", fixtures_dir / "images", "--output", out, *cli_args(models_dir)], home) == 0
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "grace_hopper.png"]
    original = read_rgb(fixtures_dir / "images" / "grace_hopper.jpg")
    restored = read_png(out / "grace_hopper.png")
    assert restored.shape == original.shape
    assert np.abs(restored[150:330, 190:340] - original[150:330, 190:340]).mean() > 0.02
    # Untouched pixels come back as the JPEG's own 8-bit values (measured exact) within the file's 8-bit rounding.
    np.testing.assert_allclose(restored[:40, :40], original[:40, :40], rtol=0, atol=EIGHT_BIT_ROUNDING + 1e-6)
    assert "2/2 images, 2 faces" in capsys.readouterr().err


def test_gives_what_the_one_node_path_gives(models_dir, home, fixtures_dir):
    out = home / "grace.png"
    source = fixtures_dir / "images" / "grace_hopper.jpg"
    assert run_cli(["--input", source, "--output", out, "--strength", "0.7", "--precision", "fp32",
                    *cli_args(models_dir)], home) == 0
    runner = GpenRunner.load(models_dir / "facerestore_models" / "GPEN-BFR-64.pth", precision="fp32")
    detector = load_detector(DETECTOR, models_dir / "facedetection")
    image, _mask, faces = pipeline.restore_image(
        image_batch(read_rgb(source)), detector,
        lambda crops, on_face: runner.restore(crops, device=torch.device("cpu"), strength=0.7, on_face=on_face),
        pipeline.DetectSettings(crop_size=runner.size), PasteSettings(),
    )
    assert len(faces) == 1
    # The same pipeline run twice (equal to the bit here, so the file is the floats rounded); 1e-5 leaves room for
    # the two runs to differ by fp32 rounding, which can tip a value over a rounding edge. A wrong strength or
    # detection is off by many levels.
    np.testing.assert_allclose(read_png(out), image[0].numpy(), rtol=0, atol=EIGHT_BIT_ROUNDING + 1e-5)


def test_finds_the_largest_gpen_in_the_usual_folders(models_dir, home, fixtures_dir, monkeypatch):
    folder = home / "models" / "facerestore_models"
    save_gpen(folder / "GPEN-BFR-64.pth", 64)
    save_gpen(folder / "GPEN-BFR-128.pth", 128)
    assert cli.default_model(cli.model_roots(home / "custom_nodes" / "pack")) == folder / "GPEN-BFR-128.pth"
    shutil.copytree(models_dir / "facedetection", home / "models" / "facedetection")
    crop = home / "crop.png"
    cv2.imwrite(str(crop), np.full((100, 100, 3), 128, np.uint8))
    assert run_cli(["--input", crop, "--output", home / "out.png", "--aligned"], home) == 0
    assert cv2.imread(str(home / "out.png")).shape == (128, 128, 3)  # size read from the weights


def test_aligned_crops_are_restored_whole_at_the_models_size(models_dir, home, fixtures_dir):
    crops = home / "crops"
    crops.mkdir()
    face = read_rgb(fixtures_dir / "images" / "grace_hopper.jpg")[100:356, 160:416]
    cv2.imwrite(str(crops / "face.jpg"), cv2.cvtColor((face * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    assert run_cli(["--input", crops, "--output", home / "out", "--aligned", "--strength", "1",
                *cli_args(models_dir)], home) == 0
    restored = read_png(home / "out" / "face.png")
    assert restored.shape == (64, 64, 3)
    assert np.abs(restored - cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA)).mean() > 0.05


def test_a_model_that_restores_to_a_larger_size(models_dir, home, fixtures_dir, capsys):
    """Upstream's FullGenerator_SR (64-px faces in, 128 out): crops are cut at 64 px, restored at 128, and pasted
    back where they came from; aligned crops come out at 128 px; strength 0 gives the crop itself, enlarged."""
    model = save_gpen(home / "GPEN-SR-64-128.pth", 64, out_size=128)
    photo = fixtures_dir / "images" / "grace_hopper.jpg"
    args = ["--model", model, "--detector", DETECTOR, "--detector-dir", models_dir / "facedetection"]
    assert run_cli(["--input", photo, "--output", home / "out.png", *args], home) == 0
    assert "GPEN-SR-64-128.pth: GPEN-64 to 128 in" in capsys.readouterr().out
    original, restored = read_rgb(photo), read_png(home / "out.png")
    assert restored.shape == original.shape
    assert np.abs(restored[150:330, 190:340] - original[150:330, 190:340]).mean() > 0.02
    np.testing.assert_allclose(restored[:40, :40], original[:40, :40], rtol=0, atol=EIGHT_BIT_ROUNDING + 1e-6)

    crop = home / "crop.png"
    cv2.imwrite(str(crop), np.full((64, 64, 3), (40, 120, 200), np.uint8))
    for strength, output in (("1", "aligned.png"), ("0", "unchanged.png")):
        assert run_cli(["--input", crop, "--output", home / output, "--aligned", "--strength", strength, *args],
                       home) == 0
    assert read_png(home / "aligned.png").shape == (128, 128, 3)
    assert f"{home / 'aligned.png'}: face crop restored at 128x128" in capsys.readouterr().out
    np.testing.assert_allclose(read_png(home / "unchanged.png"), np.broadcast_to(np.array([200, 120, 40]) / 255,
                               (128, 128, 3)), rtol=0, atol=EIGHT_BIT_ROUNDING + 1e-6)


def test_no_model_anywhere_names_the_folders_and_where_to_download(home, fixtures_dir, capsys):
    assert run_cli(["--input", fixtures_dir / "images" / "astronaut.png"], home) == 2
    err = capsys.readouterr().err
    assert str(home / "models" / "facerestore_models") in err
    assert str(home / "ComfyUI" / "models" / "facerestore_models") in err
    assert "GPEN-BFR-512.pth" in err and "--model" in err


def test_a_file_that_is_not_gpen_is_a_clear_error(models_dir, home, fixtures_dir, capsys):
    bad = home / "GFPGANv1.4.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    assert run_cli(["--input", fixtures_dir / "images", "--model", bad], home) == 2
    assert "Not a GPEN checkpoint" in capsys.readouterr().err


def test_missing_input_and_bad_output_are_clear_errors(models_dir, home, fixtures_dir, capsys):
    assert run_cli(["--input", home / "nowhere.jpg", *cli_args(models_dir)], home) == 2
    assert "nowhere.jpg: no such file or folder" in capsys.readouterr().err
    assert run_cli(["--input", fixtures_dir / "images", "--output", home / "x.png", *cli_args(models_dir)], home) == 2
    assert "give a folder instead" in capsys.readouterr().err
    assert run_cli(["--input", fixtures_dir / "images", "--strength", "2", *cli_args(models_dir)], home) == 2
    assert "--strength must be between 0" in capsys.readouterr().err


def test_unreadable_images_are_reported_and_the_others_restored(models_dir, home, fixtures_dir, capsys):
    folder = home / "in"
    folder.mkdir()
    shutil.copy(fixtures_dir / "images" / "astronaut.png", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    assert run_cli(["--input", folder, "--output", home / "out", *cli_args(models_dir)], home) == 1
    assert (home / "out" / "astronaut.png").is_file() and not (home / "out" / "broken.png").exists()
    assert "broken.png: not an image: OpenCV cannot decode it" in capsys.readouterr().err


def test_images_without_faces_are_written_unchanged(models_dir, home, capsys):
    blank = home / "wall.png"
    pixels = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(blank), pixels)
    assert run_cli(["--input", blank, "--output", home / "out", *cli_args(models_dir)], home) == 0
    np.testing.assert_array_equal(cv2.imread(str(home / "out" / "wall.png")), pixels)
    assert f"{home / 'out' / 'wall.png'}: no face found, written unchanged" in capsys.readouterr().out


@pytest.mark.slow
def test_the_script_runs_as_the_readme_says(models_dir, home, fixtures_dir):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "restore_faces.py"), "--input", str(fixtures_dir / "images" / "astronaut.png"),
         "--output", str(home / "restored.png"), *map(str, cli_args(models_dir))],
        capture_output=True, text=True, cwd=home, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    original, restored = read_rgb(fixtures_dir / "images" / "astronaut.png"), read_png(home / "restored.png")
    assert restored.shape == original.shape == (512, 512, 3)
    # The face was restored (random weights change it a lot) and nothing outside its box was touched (up to the
    # 8-bit rounding of the written file).
    changed = np.abs(restored - original).max(axis=2) > EIGHT_BIT_ROUNDING + 1e-6
    ys, xs = np.nonzero(changed)
    assert changed.mean() > 0.01 and np.abs(restored - original)[changed].mean() > 0.02
    (face,) = load_detector(DETECTOR, models_dir / "facedetection").detect(original)
    x0, y0, x1, y1 = face.box_xyxy
    side = face.box_size
    assert x0 - side < xs.min() and xs.max() < x1 + side and y0 - side < ys.min() and ys.max() < y1 + side
    assert "1/1 images, 1 faces" in result.stderr


def test_detector_weights_go_beside_the_model_folder_or_into_models(tmp_path):
    roots = [tmp_path / "cwd" / "models", tmp_path / "home" / "ComfyUI" / "models"]
    comfy_model = tmp_path / "ComfyUI" / "models" / "facerestore_models" / "GPEN-BFR-2048.pth"
    assert cli.default_detector_dir(roots, comfy_model, DETECTOR) == tmp_path / "ComfyUI" / "models" / "facedetection"
    loose_model = tmp_path / "downloads" / "GPEN-BFR-2048.pth"  # not a ComfyUI layout: never ../facedetection
    assert cli.default_detector_dir(roots, loose_model, DETECTOR) == roots[0] / "facedetection"
    weights = roots[1] / "facedetection" / "detection_mobilenet0.25_Final.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert cli.default_detector_dir(roots, loose_model, DETECTOR) == roots[1] / "facedetection"  # found there


def test_sixteen_bit_images_stay_sixteen_bit_and_untouched_where_no_face_is(models_dir, home):
    ramp = np.linspace(0, 65535, 96 * 128, dtype=np.float64).reshape(96, 128)
    image = np.stack([ramp, ramp[::-1], np.full_like(ramp, 1234)], axis=-1).round().astype(np.uint16)
    cv2.imwrite(str(home / "deep.png"), image)
    assert run_cli(["--input", home / "deep.png", "--output", home / "out.png", *cli_args(models_dir)], home) == 0
    written = cv2.imread(str(home / "out.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16 and np.array_equal(written, image)  # no face: every value kept


def test_exif_orientation_is_applied(home):
    from PIL import Image

    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(home / "phone.jpg", exif=exif)
    image, depth = read_image(home / "phone.jpg")
    assert image.shape == (80, 40, 3) and depth == 8  # upright, as a viewer shows it
    assert image[:35].mean() > 0.9 and image[45:].mean() < 0.1  # the white half is now on top


@pytest.mark.parametrize(("option", "value"), [("--erosion", "0.6"), ("--feather", "0.9"), ("--threshold", "1.5"),
                                               ("--max-faces", "-1")])
def test_bad_settings_are_refused_before_anything_is_loaded(home, fixtures_dir, capsys, option, value):
    # No model exists anywhere: if the settings were checked after loading, the error would be about the model.
    assert run_cli(["--input", fixtures_dir / "images" / "astronaut.png", option, value], home) == 2
    assert option in capsys.readouterr().err


def test_a_non_square_crop_with_aligned_fails_alone(models_dir, home, capsys):
    crops = home / "crops"
    crops.mkdir()
    cv2.imwrite(str(crops / "a_wide.png"), np.full((64, 100, 3), 128, np.uint8))
    cv2.imwrite(str(crops / "b_square.png"), np.full((64, 64, 3), 128, np.uint8))
    assert run_cli(["--input", crops, "--output", home / "out", "--aligned", *cli_args(models_dir)], home) == 1
    assert (home / "out" / "b_square.png").is_file() and not (home / "out" / "a_wide.png").exists()
    assert "a_wide.png" in capsys.readouterr().err


# --- what a new user ran into ----------------------------------------------------------------------------------


def test_a_truncated_image_fails_alone(models_dir, home, fixtures_dir, capsys):
    folder = home / "in"
    folder.mkdir()
    shutil.copy(fixtures_dir / "images" / "astronaut.png", folder)
    data = (fixtures_dir / "images" / "grace_hopper.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) * 6 // 10])  # the decoder would grey-fill the rest
    assert run_cli(["--input", folder, "--output", home / "out", *cli_args(models_dir)], home) == 1
    assert (home / "out" / "astronaut.png").is_file() and not (home / "out" / "cut.png").exists()
    assert f"cut.jpg: truncated or corrupt image ({len(data) * 6 // 10:,} bytes" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["jpeg_cut", "png_cut", "png_bit_flip", "webp_cut"])
def test_incomplete_images_are_refused_whatever_the_decoder_does(home, fixtures_dir, damage):
    if damage.startswith("jpeg"):
        data = (fixtures_dir / "images" / "grace_hopper.jpg").read_bytes()
        data = data[: len(data) - 100]
    elif damage.startswith("png"):
        data = bytearray((fixtures_dir / "images" / "astronaut.png").read_bytes())
        if damage == "png_cut":
            data = data[: len(data) - 20]  # inside the last IDAT chunk or the IEND chunk
        else:
            data[len(data) // 2] ^= 0x01  # a checksum catches what the decoder may not
    else:
        ok, encoded = cv2.imencode(".webp", np.full((32, 32, 3), 100, np.uint8))
        data = encoded.tobytes()[:-10]
    path = home / f"damaged{'.jpg' if damage.startswith('jpeg') else '.png' if 'png' in damage else '.webp'}"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or corrupt image"):  # an ImageFileError
        read_image(path)


def test_whole_images_pass_the_completeness_check(home, fixtures_dir):
    for name in ("astronaut.png", "grace_hopper.jpg"):
        image, depth = read_image(fixtures_dir / "images" / name)
        assert image.ndim == 3 and depth == 8
    for suffix in (".webp", ".bmp", ".tif"):
        ok, encoded = cv2.imencode(suffix, np.full((16, 24, 3), 200, np.uint8))
        (home / f"whole{suffix}").write_bytes(encoded.tobytes())
        assert read_image(home / f"whole{suffix}")[0].shape == (16, 24, 3)


def test_empty_and_non_image_inputs_are_named_so(models_dir, home, fixtures_dir, capsys):
    folder = home / "in"
    folder.mkdir()
    shutil.copy(fixtures_dir / "images" / "astronaut.png", folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "page.png").write_text("<html>404 Not Found</html>")
    assert run_cli(["--input", folder, "--output", home / "out", *cli_args(models_dir)], home) == 1
    err = capsys.readouterr().err
    assert "empty.jpg: empty file (0 bytes)" in err
    assert "page.png: not an image" in err
    assert (home / "out" / "astronaut.png").is_file()


def test_an_output_that_is_a_folder_is_refused_before_any_work(home, fixtures_dir, capsys):
    (home / "out" / "astronaut.png").mkdir(parents=True)  # where astronaut.png's result would go
    # The model does not exist: an output checked only after loading would be reported as a model problem.
    assert run_cli(["--input", fixtures_dir / "images", "--output", home / "out", "--model", home / "none.pth"],
               home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{home / 'out' / 'astronaut.png'} is a folder" in line and "choose another --output" in line
    assert not (home / "out" / "grace_hopper.png").exists()


def test_an_output_under_a_file_is_refused_with_a_message(models_dir, home, fixtures_dir, capsys):
    (home / "notes.txt").write_text("a file, not a folder")
    assert run_cli(["--input", fixtures_dir / "images", "--output", home / "notes.txt" / "out",
                *cli_args(models_dir)], home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{home / 'notes.txt'} is a file, not a folder" in line


def test_one_failed_write_loses_no_other_image(models_dir, home, fixtures_dir, monkeypatch, capsys):
    real_replace = os.replace

    def disk_full_for_astronaut(source, target):
        if Path(target).name == "astronaut.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", disk_full_for_astronaut)
    assert run_cli(["--input", fixtures_dir / "images", "--output", home / "out", *cli_args(models_dir)], home) == 1
    assert sorted(p.name for p in (home / "out").iterdir()) == ["grace_hopper.png"]  # no partial file left
    err = capsys.readouterr().err
    assert f"{home / 'out' / 'astronaut.png'}: cannot write it (No space left on device)" in err
    assert "1 of 2 image(s) could not be restored" in err


def test_a_corrupt_detector_file_is_a_message(models_dir, home, fixtures_dir, capsys):
    detector = models_dir / "facedetection" / "detection_mobilenet0.25_Final.pth"
    detector.write_bytes(detector.read_bytes()[:1000])
    assert run_cli(["--input", fixtures_dir / "images" / "astronaut.png", "--output", home / "out",
                *cli_args(models_dir)], home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "detection_mobilenet0.25_Final.pth is truncated or corrupt (1,000 bytes" in line
    assert "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth" in line


@pytest.mark.parametrize(("device", "expected"), [
    ("cuda", "--device cuda: torch"), ("cuda:0", "finds no CUDA GPU on this machine; use --device cpu"),
    ("gpu", "--device gpu: not a device name; expected auto, cpu, cuda, cuda:N"),
])
def test_an_unusable_device_is_a_message(models_dir, home, fixtures_dir, monkeypatch, capsys, device, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on machines with a GPU
    assert run_cli(["--input", fixtures_dir / "images" / "astronaut.png", "--device", device,
                *cli_args(models_dir)], home) == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_an_offline_detector_names_the_other_choices(models_dir, home, fixtures_dir, monkeypatch, capsys):
    from comfyui_gpen_restore.face_utils.weights import KNOWN_WEIGHTS, WeightsSpec

    spec = KNOWN_WEIGHTS["yunet"]
    with socket.socket() as sock:  # a port nothing listens on: the download fails at once, as offline
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/{spec.filename}"
    monkeypatch.setitem(KNOWN_WEIGHTS, "yunet", WeightsSpec(spec.filename, url, spec.sha256))
    args = cli_args(models_dir)
    args[args.index("--detector") + 1] = "yunet"
    assert run_cli(["--input", fixtures_dir / "images" / "astronaut.png", *args], home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"Could not download {spec.filename}" in line
    assert "choose another detector: retinaface_resnet50 (detection_Resnet50_Final.pth)" in line
    assert "retinaface_mobile0.25 (detection_mobilenet0.25_Final.pth, already in that folder)" in line


def test_a_code_carrying_model_is_refused_with_the_reason(home, fixtures_dir, capsys):
    marker = home / "payload_ran"
    with open(home / "GPEN-BFR-512.pth", "wb") as f:
        torch.save({"weights": torch.zeros(1), "hook": CodePayload(str(marker))}, f)
    assert run_cli(["--input", fixtures_dir / "images", "--model", home / "GPEN-BFR-512.pth"], home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "needs code to load, which is never run" in line and not marker.exists()
    assert "weights only" not in line.lower().replace("_", " ")  # torch's advice to turn the safety off
    assert "https://public-vigen-video.oss-cn-shanghai.aliyuncs.com" in line  # where a plain one is


def test_a_truncated_model_says_so_in_whole_sentences(models_dir, home, fixtures_dir, capsys):
    data = (models_dir / "facerestore_models" / "GPEN-BFR-64.pth").read_bytes()
    (home / "GPEN-BFR-64.pth").write_bytes(data[: len(data) // 2])
    assert run_cli(["--input", fixtures_dir / "images", "--model", home / "GPEN-BFR-64.pth"], home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"GPEN-BFR-64.pth is truncated or corrupt ({len(data) // 2:,} bytes" in line
    assert "PytorchStreamReader" not in line and line.endswith(".")  # torch's text is not cut and pasted
    assert "ComfyUI" not in line and "modelscope" in line  # an explicit --model: where to download, no folders


def test_a_missing_model_file_says_where_to_download_not_comfyui_folders(home, fixtures_dir, capsys):
    assert run_cli(["--input", fixtures_dir / "images", "--model", home / "GPEN-BFR-2048.pth"], home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"GPEN model file not found: {home / 'GPEN-BFR-2048.pth'}" in line
    assert "facerestore_models" not in line and "modelscope" in line


def test_a_folder_given_as_model_lists_the_gpen_files_in_it(models_dir, home, fixtures_dir, capsys):
    folder = models_dir / "facerestore_models"
    assert run_cli(["--input", fixtures_dir / "images", "--model", folder], home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--model {folder} is a folder" in line and str(folder / "GPEN-BFR-64.pth") in line
    empty = home / "empty_models"
    empty.mkdir()
    assert run_cli(["--input", fixtures_dir / "images", "--model", empty], home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is a folder" in line and "holds no .pth" in line and "GPEN-BFR-512.pth" in line


def test_help_shows_every_default_and_where_the_size_comes_from(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    parser = cli.build_parser()
    for action in parser._actions:
        if action.default not in (None, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, action.dest
    assert "read from the model's weights" in text and "the size is read from the weights" in text
    assert "written at the model's size" in text  # --aligned


def test_each_image_gets_a_result_line(models_dir, home, fixtures_dir, capsys):
    folder = home / "in"
    folder.mkdir()
    shutil.copy(fixtures_dir / "images" / "astronaut.png", folder)
    cv2.imwrite(str(folder / "wall.png"), np.full((50, 60, 3), 90, np.uint8))
    assert run_cli(["--input", folder, "--output", home / "out", *cli_args(models_dir)], home) == 0
    # First the precision "auto" chose for this CPU: bf16 where it computes bf16 natively, else fp32.
    ran_in = f"GPEN-BFR-64.pth: GPEN-64 in {'bf16' if cpu_has_native_bf16() else 'fp32'} on cpu"
    assert capsys.readouterr().out.splitlines() == [
        ran_in,
        f"{home / 'out' / 'astronaut.png'}: 1 face restored",
        f"{home / 'out' / 'wall.png'}: no face found, written unchanged",
    ]
    crop = home / "crop.png"
    cv2.imwrite(str(crop), np.full((100, 100, 3), 128, np.uint8))
    assert run_cli(["--input", crop, "--output", home / "crop_out.png", "--aligned", "--precision", "fp32",
                    *cli_args(models_dir)], home) == 0
    assert capsys.readouterr().out.splitlines() == [
        "GPEN-BFR-64.pth: GPEN-64 in fp32 on cpu",
        f"{home / 'crop_out.png'}: face crop restored at 64x64 (the model's size)"
    ]


def test_damaged_images_of_other_formats_are_not_called_non_images(home):
    ok, encoded = cv2.imencode(".tif", np.full((64, 64, 3), 100, np.uint8))
    data = encoded.tobytes()
    (home / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageFileError, match=r"truncated or corrupt image \(\d+ bytes; a TIFF"):
        read_image(home / "cut.tif")


def test_a_bad_checksum_in_an_ancillary_png_chunk_is_tolerated_like_libpng_does(home, fixtures_dir):
    ok, encoded = cv2.imencode(".png", np.full((8, 8, 3), 100, np.uint8))
    data = encoded.tobytes()
    chunk = b"tEXt" + b"Comment\x00hello"
    text = len(chunk[4:]).to_bytes(4, "big") + chunk + b"\x00\x00\x00\x00"  # a wrong CRC
    (home / "text.png").write_bytes(data[:33] + text + data[33:])  # after the 8-byte signature and IHDR
    assert read_image(home / "text.png")[0].shape == (8, 8, 3)


def test_results_get_the_permissions_of_any_new_file(models_dir, home):
    crop = home / "crop.png"
    cv2.imwrite(str(crop), np.full((64, 64, 3), 128, np.uint8))
    assert run_cli(["--input", crop, "--output", home / "out.png", "--aligned", *cli_args(models_dir)], home) == 0
    (home / "plain.txt").write_text("")
    assert (home / "out.png").stat().st_mode == (home / "plain.txt").stat().st_mode
    assert [p.name for p in home.iterdir() if p.name.startswith(".")] == []  # no temporary file left


# --- colourise -------------------------------------------------------------------------------------------------


def black_and_white(fixtures_dir: Path, home: Path) -> tuple[Path, np.ndarray]:
    """grace_hopper.jpg as an 8-bit grey picture saved in RGB (what a scanned black-and-white photo is)."""
    grey = cv2.cvtColor(cv2.imread(str(fixtures_dir / "images" / "grace_hopper.jpg")), cv2.COLOR_BGR2GRAY)
    path = home / "old_portrait.png"
    cv2.imwrite(str(path), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    return path, grey.astype(np.float32)


def luma_8bit(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Luma and chroma magnitude of an 8-bit RGB file, in 8-bit levels."""
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32)
    luma = rgb @ np.float32([0.299, 0.587, 0.114])
    return luma, np.abs(rgb - luma[..., None]).max(axis=-1)


def test_a_black_and_white_photo_is_colourised_keeping_its_luminance(models_dir, home, fixtures_dir, capsys):
    source, grey = black_and_white(fixtures_dir, home)
    colouriser = save_gpen(models_dir / "facerestore_models" / "GPEN-Colorization-64.pth", 64, seed=3)
    out = home / "coloured.png"
    assert run_cli(["--input", source, "--output", out, *cli_args(models_dir), "--model", colouriser,
                    "--strength", "1"], home) == 0
    assert "GPEN-Colorization-64.pth: GPEN-64 to colourise (guessed from the file name" in capsys.readouterr().out
    luma, chroma = luma_8bit(out)
    assert np.abs(luma - grey).max() <= 0.5  # each channel rounded to a level moves the luma at most half of one
    coloured = chroma > 4
    assert coloured.mean() > 0.02  # the face gained colour ...
    ys, xs = np.nonzero(coloured)
    x0, y0, x1, y1 = crop_footprint(models_dir, grey)
    assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1  # ... and only the face


def crop_footprint(models_dir: Path, grey: np.ndarray) -> tuple[float, float, float, float]:
    """The bounding box, in the photo, of the aligned crop of its one face: where a paste can reach."""
    from comfyui_gpen_restore.face_utils import align_face

    face, = load_detector(DETECTOR, models_dir / "facedetection").detect(np.repeat(grey[..., None] / 255, 3, axis=2))
    corners = np.float64([[0, 0], [63, 0], [0, 63], [63, 63]])
    inverse = cv2.invertAffineTransform(align_face(face, crop_size=64).affine)
    placed = corners @ inverse[:, :2].T + inverse[:, 2]
    return (*(placed.min(axis=0) - 2), *(placed.max(axis=0) + 2))


def test_restoring_then_colourising_in_one_run(models_dir, home, fixtures_dir, capsys):
    """GPEN-BFR then a colouriser on each face, one command: the restoration's detail stays (the luminance is
    the restored face's, not the photo's), the colour is the colouriser's, the rest of the photo untouched."""
    source, grey = black_and_white(fixtures_dir, home)
    colouriser = save_gpen(models_dir / "facerestore_models" / "GPEN-Colorization-64.pth", 64, seed=3)
    restorer = models_dir / "facerestore_models" / "GPEN-BFR-64.pth"
    out = home / "restored_coloured.png"
    assert run_cli(["--input", source, "--output", out, *cli_args(models_dir), "--model", restorer, colouriser],
                   home) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("GPEN-BFR-64.pth: GPEN-64 in") and "to colourise" in lines[1]
    luma, chroma = luma_8bit(out)
    changed = np.abs(luma - grey) > 2
    assert changed.mean() > 0.01 and (chroma > 4).mean() > 0.02  # restored and coloured
    outside = ~(changed | (chroma > 0))
    assert outside.mean() > 0.5  # most of the photo is as it was


def test_tasks_must_match_the_models(models_dir, home, capsys):
    colouriser = save_gpen(models_dir / "facerestore_models" / "GPEN-Colorization-64.pth", 64, seed=3)
    assert run_cli(["--input", home, *cli_args(models_dir), "--model", colouriser, colouriser, "--task", "colourise",
                    "restore", "repair"], home) == 2
    assert "--task names 3 task(s) for 2 --model file(s)" in one_error_line(capsys.readouterr().err)


# --- repair ----------------------------------------------------------------------------------------------------


def test_a_scratched_photo_is_repaired_only_where_the_mask_is(models_dir, home, fixtures_dir, grace_face, capsys):
    repairer = save_gpen(models_dir / "facerestore_models" / "GPEN-Inpainting-64.pth", 64, seed=4)
    photo = fixtures_dir / "images" / "grace_hopper.jpg"
    original = cv2.imread(str(photo))
    damage = np.zeros(original.shape[:2], np.uint8)
    (x0, y0), (x1, _) = grace_face.landmarks_xy[:2]
    damage[round(y0) - 5 : round(y0) + 5, round(x0) - 20 : round(x1) + 20] = 255  # a tear across the eyes
    cv2.imwrite(str(home / "damage.png"), damage)
    out = home / "repaired.png"
    assert run_cli(["--input", photo, "--output", out, *cli_args(models_dir), "--model", repairer, "--mask",
                    home / "damage.png"], home) == 0
    assert "GPEN-Inpainting-64.pth: GPEN-64 to repair (guessed" in capsys.readouterr().out
    changed = np.abs(cv2.imread(str(out)).astype(np.int16) - original).max(axis=2) > 0
    assert changed[damage > 0].mean() > 0.9  # the tear was repaired ...
    distance = cv2.distanceTransform((damage == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert not changed[distance > 0.2 * grace_face.box_size].any()  # ... and nothing far from it changed


def test_a_mask_needs_a_repairing_model_first_and_a_repairing_model_needs_a_mask(models_dir, home, fixtures_dir,
                                                                                capsys):
    repairer = save_gpen(models_dir / "facerestore_models" / "GPEN-Inpainting-64.pth", 64, seed=4)
    photo = fixtures_dir / "images" / "grace_hopper.jpg"
    cv2.imwrite(str(home / "damage.png"), np.zeros((600, 512), np.uint8))
    assert run_cli(["--input", photo, *cli_args(models_dir), "--mask", home / "damage.png"], home) == 2
    assert "is to restore: put the repairing model first" in one_error_line(capsys.readouterr().err)
    assert run_cli(["--input", photo, *cli_args(models_dir), "--model", repairer], home) == 2
    assert "give it with --mask PATH" in one_error_line(capsys.readouterr().err)
    cv2.imwrite(str(home / "small.png"), np.zeros((60, 50), np.uint8))
    assert run_cli(["--input", photo, "--output", home / "o.png", *cli_args(models_dir), "--model", repairer,
                    "--mask", home / "small.png"], home) == 1
    assert "the damage mask is 50x60, the picture 512x600" in capsys.readouterr().err


# --- selfie: the background upscaled ---------------------------------------------------------------------------


def test_the_background_is_upscaled_and_the_faces_pasted_onto_it(models_dir, home, fixtures_dir, grace_face,
                                                                  capsys):
    """Upstream's selfie mode: the photo enlarged by an upscale model in upstream's RealESRNet layout (read by
    spandrel), the restored face pasted onto it; elsewhere the picture is the upscaler's."""
    upscaler = save_realesrnet(home / "realesrnet_x2.pth")
    photo = fixtures_dir / "images" / "grace_hopper.jpg"
    out = home / "selfie.png"
    assert run_cli(["--input", photo, "--output", out, *cli_args(models_dir), "--background-upscale", upscaler],
                   home) == 0
    assert "realesrnet_x2.pth: the background is upscaled 2x" in capsys.readouterr().out
    selfie = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    original = torch.from_numpy(read_rgb(photo)).permute(2, 0, 1)[None]
    # What this test-made upscaler computes (see save_realesrnet): 2x2 means, enlarged 4x.
    expected = F.interpolate(F.avg_pool2d(original, 2), scale_factor=4, mode="nearest")[0].permute(1, 2, 0).numpy()
    assert selfie.shape == expected.shape == (1200, 1024, 3)
    difference = np.abs(selfie - expected).max(axis=2)
    x0, y0, x1, y1 = (2 * v for v in grace_face.box_xyxy)
    face = (slice(max(int(y0) - 200, 0), int(y1) + 200), slice(max(int(x0) - 200, 0), int(x1) + 200))
    assert difference[face].mean() > 0.02  # the face was pasted ...
    difference[face] = 0
    assert difference.max() <= EIGHT_BIT_ROUNDING + 1e-6  # ... onto the upscaled picture, untouched elsewhere


def test_the_background_upscale_refuses_what_it_cannot_do(models_dir, home, fixtures_dir, capsys):
    photo = fixtures_dir / "images" / "grace_hopper.jpg"
    assert run_cli(["--input", photo, *cli_args(models_dir), "--background-upscale", home / "none.pth"], home) == 2
    assert "no such file" in one_error_line(capsys.readouterr().err)
    save_gpen(home / "not_an_upscaler.pth", 64)
    assert run_cli(["--input", photo, *cli_args(models_dir), "--background-upscale", home / "not_an_upscaler.pth"],
                   home) == 2
    assert "not an upscale model spandrel reads" in one_error_line(capsys.readouterr().err)
