import multiprocessing
import os
import signal

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retinopathy.errors import UserError
from retinopathy.preprocessing.fundus import (
    ben_graham,
    clahe,
    crop_to_eye,
    find_eye,
    prepare,
    resize_pad,
    scale_to_radius,
)
from retinopathy.preprocessing.image_io import decode_image, examine_file
from retinopathy.preprocessing.stage import preprocess_dataset

from conftest import run_script, shared


def disc_image(w, h, cx, cy, r, value=(180, 90, 40)):
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (cx, cy), r, value, -1)
    return img


@pytest.mark.parametrize("w, h, cx, cy, r", [
    (400, 300, 200, 150, 140),   # centred
    (500, 300, 180, 160, 120),   # off-centre
    (600, 400, 300, 200, 260),   # cut at top and bottom, as in many EyePACS photos
])
def test_find_eye_locates_the_circle(w, h, cx, cy, r):
    eye = find_eye(disc_image(w, h, cx, cy, r))
    assert abs(eye.cx - cx) < 3 and abs(eye.cy - cy) < 3 and abs(eye.radius - r) < 3


def test_find_eye_ignores_text_and_uneven_light():
    img = disc_image(500, 400, 250, 200, 170)
    ramp = np.linspace(0.35, 1.0, 500)[None, :, None]  # one side much darker
    img = (img * ramp).astype(np.uint8)
    cv2.putText(img, "OD 2015", (5, 390), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    eye = find_eye(img)
    assert abs(eye.cx - 250) < 4 and abs(eye.cy - 200) < 4 and abs(eye.radius - 170) < 4


def test_blank_image_has_no_eye_and_is_still_prepared():
    assert find_eye(np.zeros((200, 300, 3), np.uint8)) is None
    out, eye = prepare(np.zeros((200, 300, 3), np.uint8), "ben", 64)
    assert eye is None and out.shape == (64, 64, 3)


@pytest.mark.parametrize("convert", [
    lambda im: im[..., 0],                                            # grayscale
    lambda im: np.dstack([im, np.full(im.shape[:2], 255, np.uint8)]),  # RGBA
    lambda im: im.astype(np.uint16) * 257,                            # 16-bit
])
def test_any_input_format_gives_rgb_uint8(convert):
    out, eye = prepare(convert(disc_image(160, 120, 80, 60, 50)), "crop", 48)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8 and eye is not None


def test_tiny_image():
    out, _ = prepare(disc_image(50, 50, 25, 25, 22), "ben", 128)
    assert out.shape == (128, 128, 3)


def test_resize_pad_keeps_the_aspect():
    img = np.full((100, 200, 3), 200, np.uint8)
    out = resize_pad(img, 64)
    assert out.shape == (64, 64, 3)
    assert out[:16].max() == 0 and out[-15:].max() == 0 and out[32, :].min() == 200


def test_crop_pads_a_cut_circle():
    img = disc_image(600, 400, 300, 200, 260)
    eye = find_eye(img)
    square = crop_to_eye(img, eye)
    assert abs(square.shape[0] - 520) <= 2 and square.shape[0] == square.shape[1]
    assert square[2, square.shape[1] // 2].max() == 0, "padded black above the cut"


def test_ben_graham_centres_flat_regions_on_grey():
    flat = np.full((64, 64, 3), 90, np.uint8)
    assert np.abs(ben_graham(flat).astype(int) - 128).max() <= 1


def test_unknown_method():
    with pytest.raises(UserError, match="unknown preprocessing method 'fancy'"):
        prepare(np.zeros((10, 10, 3), np.uint8), "fancy", 32)


def test_real_eyepacs_edges_found_and_output_masked():
    folder = shared("eyepacs-sample") / "train"
    for path in sorted(folder.glob("*.jpeg"))[:4]:
        img, _ = decode_image(path)
        eye = find_eye(img)
        gray = img.max(axis=2).astype(float)
        h, w = gray.shape
        agree = checked = 0
        for angle in np.linspace(0, 2 * np.pi, 72, endpoint=False):
            dx, dy = np.cos(angle), np.sin(angle)
            outside = (eye.cx + dx * (eye.radius + 6), eye.cy + dy * (eye.radius + 6))
            inside = (eye.cx + dx * (eye.radius - 6), eye.cy + dy * (eye.radius - 6))
            if not (0 <= outside[0] < w and 0 <= outside[1] < h):
                continue  # the circle is cut by the frame here
            checked += 1
            agree += gray[int(outside[1]), int(outside[0])] < 20 < gray[int(inside[1]), int(inside[0])]
        # Within 6 px of the true edge all round, but for the camera's notch mark outside the rim.
        assert checked >= 36 and agree >= 0.9 * checked, f"{path.name}: {agree}/{checked} rays agree"
        examined = examine_file(path, "crop", 128)
        out, original = examined.image, examined.original
        assert examined.quality.gradable, f"{path.name}: a real photograph is gradable ({examined.quality})"
        assert out.shape == (128, 128, 3) and original == (w, h)
        assert out[0, 0].max() == 0 and out[64, 2].max() > 10, "eye fills the square; surround masked"


def test_batch_stage_is_resumable_and_records_bad_images(tiny_aptos, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for item in tiny_aptos.iterdir():  # a copy whose one image we break; the shared fixture stays intact
        (raw / item.name).symlink_to(item)
    (raw / "train_images").unlink()
    (raw / "train_images").mkdir()
    ids = pd.read_csv(tiny_aptos / "train.csv", dtype=str)["id_code"]
    for i in ids:
        (raw / "train_images" / f"{i}.png").symlink_to(tiny_aptos / "train_images" / f"{i}.png")
    broken = raw / "train_images" / f"{ids[0]}.png"
    broken.unlink()
    broken.write_bytes((tiny_aptos / "train_images" / f"{ids[0]}.png").read_bytes()[:300])

    out = tmp_path / "processed"
    manifest = preprocess_dataset(raw, out, "ben", 48, workers=1, progress=False)
    assert len(manifest) == 50
    bad = manifest.set_index("id").loc[ids[0]]
    assert bad["status"].startswith("unreadable") and bad["path"] == ""
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) == 49 and all(Image.open(p).size == (48, 48) for p in ok["path"])
    mtimes = {p: (out / p).stat().st_mtime_ns for p in [f"{i}.png" for i in ids[1:]]}
    again = preprocess_dataset(raw, out, "ben", 48, workers=1, progress=False)
    assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes, "valid outputs are not redone"
    assert len(again) == 50 and (again["status"] == "ok").sum() == 49


def test_sixteen_bit_png_file(tmp_path):
    img = (disc_image(120, 100, 60, 50, 45).astype(np.uint16) * 257)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), img)
    assert Image.open(path).mode.startswith("I;16") or cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    examined = examine_file(path, "crop", 40)
    out, eye, original = examined.image, examined.eye, examined.original
    assert original == (120, 100) and out.dtype == np.uint8 and eye is not None
    assert out[20, 20].max() > 30, "16-bit values scaled down, not clipped to black or white"


def test_fast_ben_matches_the_full_size_blur():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8), (0, 0), 6)
    exact = cv2.addWeighted(img, 4, cv2.GaussianBlur(img, (0, 0), 512 / 30), -4, 128)
    assert np.abs(ben_graham(img).astype(int) - exact.astype(int)).mean() < 2


def test_crop_leaves_no_black_border_outside_the_circle():
    img = disc_image(640, 480, 300, 250, 200)
    out, _ = prepare(img, "crop", 100)
    for y, x in ((50, 1), (50, 98), (1, 50), (98, 50)):  # the eye touches all four sides of the square
        assert out[y, x].max() > 0, (y, x)


def test_contact_sheet_script(tmp_path, tiny_aptos):
    result = run_script("contact_sheet.py", str(tiny_aptos / "train_images"), "-o", str(tmp_path / "sheet.png"),
                        "--limit", "3", "--size", "64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.format == "PNG" and sheet.size == (5 * 72, 30 + 3 * 72)
    assert run_script("contact_sheet.py", str(tmp_path / "empty"), cwd=tmp_path).returncode == 2


def test_scale_to_radius():
    img = disc_image(400, 300, 200, 150, 120)
    eye = find_eye(img)
    scaled = scale_to_radius(img, eye, 60)
    assert abs(scaled.shape[0] - 150) <= 3 and abs(scaled.shape[1] - 200) <= 3  # found radius is ~120 px
    assert abs(find_eye(scaled).radius - 60) < 2


def test_clahe_raises_local_contrast_and_keeps_the_hue():
    img = disc_image(200, 200, 100, 100, 90, value=(150, 80, 40))
    img[80:120, 80:120] = (160, 85, 42)  # a faint patch
    out = clahe(img)
    patch, around = out[90:110, 90:110].astype(int).mean((0, 1)), out[60:70, 60:70].astype(int).mean((0, 1))
    assert abs(patch - around).sum() > abs(np.array([160, 85, 42]) - np.array([150, 80, 40])).sum()
    assert out[100, 100, 0] > out[100, 100, 2], "still reddish"


def test_preprocess_script_options(tmp_path, tiny_aptos):
    result = run_script("preprocess.py", "--raw-dir", str(tiny_aptos), "--method", "clahe", "--size", "40",
                        "--workers", "2", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "data" / "processed" / tiny_aptos.name / "clahe-40"
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 50 and set(manifest["split"]) == {"train", "test"}
    assert {"id", "source", "width", "height", "eye_x", "eye_y", "eye_radius", "status"} <= set(manifest.columns)
    assert (manifest["status"] == "ok").all() and Image.open(out / f"{manifest['id'][0]}.png").size == (40, 40)
    assert "preprocess: 50 images" in result.stdout


def test_reduction_factor_keeps_the_smaller_side_at_least_the_target():
    from retinopathy.preprocessing.image_io import reduction_factor
    assert reduction_factor((3888, 2592), 512) == 4   # 648 px high after a 1/4 decode
    assert reduction_factor((3888, 2592), 256) == 8
    assert reduction_factor((640, 480), 512) == 1 and reduction_factor((640, 480), None) == 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_camera_turned_jpeg_is_upright_at_every_decode_size(orientation):
    """OpenCV's reduced decode applies the EXIF orientation; the full-size path must too, or the same photograph
    reaches the network turned or not depending on the config's image size."""
    import io

    img = np.zeros((400, 600, 3), np.uint8)
    img[:, :300] = 255  # the left half white: where it ends up tells the turn
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", exif=exif, quality=95)
    full, full_size = decode_image(buffer.getvalue())
    reduced, reduced_size = decode_image(buffer.getvalue(), min_side=100)
    assert full_size == reduced_size == (full.shape[1], full.shape[0])
    shrunk = cv2.resize(full, (reduced.shape[1], reduced.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - reduced.astype(int)).mean() < 8, "the same way up on both paths"
    if orientation in (6, 8):
        assert full.shape[:2] == (600, 400), "a portrait photograph, as the camera meant it"


def test_a_contact_sheet_of_a_file_that_is_no_image_is_one_line(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "notes.png").write_text("not a picture")
    result = run_script("contact_sheet.py", str(folder), "-o", str(tmp_path / "sheet.png"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr[-1500:]
    assert "notes.png: not an image that can be read" in result.stderr


@pytest.mark.parametrize("fault", [MemoryError(), cv2.error("OpenCV(4.10) error: (-4:Insufficient memory) Failed to "
                                                            "allocate 442368 bytes in function 'OutOfMemoryError'")])
def test_out_of_memory_stops_the_stage_instead_of_quarantining_the_images(tiny_aptos, tmp_path, monkeypatch, fault):
    """A fault of the machine is not the image's: the stage ends in one line, marks no image unreadable, keeps
    what it did and resumes from there."""
    from retinopathy.preprocessing import image_io, stage

    examine, calls = image_io.examine_file, []

    def runs_out_after_five(*args):
        calls.append(args[0])
        if len(calls) > 5:
            raise fault
        return examine(*args)

    monkeypatch.setattr(stage, "examine_file", runs_out_after_five)
    out = tmp_path / "processed"
    with pytest.raises(UserError, match=r"preprocess: out of memory on .*: free memory or use fewer workers") as stop:
        preprocess_dataset(tiny_aptos, out, "ben", 48, workers=1, progress=False)
    assert "\n" not in str(stop.value) and not (out / "manifest.csv").exists(), "no manifest of unreadable images"
    monkeypatch.setattr(stage, "examine_file", examine)
    manifest = preprocess_dataset(tiny_aptos, out, "ben", 48, workers=1, progress=False)
    assert (manifest["status"] == "ok").all() and len(manifest) == 50


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the patched decoder reaches forked workers")
def test_a_worker_killed_by_the_system_stops_the_stage_in_one_line(tiny_aptos, tmp_path, monkeypatch):
    from retinopathy.preprocessing import stage

    parent = os.getpid()

    def killed_for_memory(*args):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        raise AssertionError("the pool was not used")

    monkeypatch.setattr(stage, "examine_file", killed_for_memory)
    with pytest.raises(UserError, match=r"a worker process was killed .* use fewer workers") as stop:
        preprocess_dataset(tiny_aptos, tmp_path / "processed", "ben", 48, workers=2, progress=False)
    assert "\n" not in str(stop.value)
