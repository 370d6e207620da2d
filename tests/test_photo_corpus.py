"""scripts/make_photo_crops.py: whole photos are held out, both crop forms have the asked size and
count, native crops are pixel-exact pieces of their photo, and the folder loads as train/test."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_photo_crops.py"


def write_photos(folder: Path, count: int = 5) -> dict[str, np.ndarray]:
    """``count`` random-noise 'photos' of different sizes (noise makes every crop unique)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    photos = {}
    for i in range(count):
        pixels = rng.integers(0, 256, (70 + 10 * i, 90 + 5 * i, 3), dtype=np.uint8)
        name = f"photo{i}.png"
        PIL.Image.fromarray(pixels).save(folder / name)
        photos[name] = pixels
    return photos


def run(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_crops_split_by_whole_photo_with_both_forms(tmp_path):
    photos = write_photos(tmp_path / "photos")
    out = tmp_path / "corpus"
    manifest = run("--photos", str(tmp_path / "photos"), "--out", str(out), "--native", "6",
                   "--scene", "8", "--test", "photo3.png")
    assert manifest["test_photos"] == ["photo3.png"]
    assert sorted(manifest["train_photos"]) == ["photo0.png", "photo1.png", "photo2.png",
                                                "photo4.png"]
    assert manifest["train"] == {"native": 24, "scene": 32}
    assert manifest["test"] == {"native": 6, "scene": 8}
    train, test = sorted((out / "train").glob("*.png")), sorted((out / "test").glob("*.png"))
    assert len(train) == 56 and len(test) == 14
    assert all(p.name.startswith("photo3-") for p in test)
    assert not any(p.name.startswith("photo3-") for p in train)
    assert len(list((out / "heldout-native" / "test").glob("*"))) == 6
    assert len(list((out / "heldout-scene" / "test").glob("*"))) == 8
    for path in train + test:
        assert PIL.Image.open(path).size == (32, 32)
    # A native crop is an exact 32x32 window of its photo.
    crop = np.asarray(PIL.Image.open(out / "test" / "photo3-native-0000.png"))
    photo = photos["photo3.png"]
    windows = np.lib.stride_tricks.sliding_window_view(photo, (32, 32, 3))[..., 0, :, :, :]
    assert (windows == crop).all(axis=(-1, -2, -3)).any()


def test_default_split_holds_out_every_fifth_photo(tmp_path):
    write_photos(tmp_path / "photos", count=6)
    manifest = run("--photos", str(tmp_path / "photos"), "--out", str(tmp_path / "corpus"),
                   "--native", "1", "--scene", "0")
    assert manifest["test_photos"] == ["photo0.png", "photo5.png"]
    assert manifest["test"] == {"native": 2, "scene": 0}


def test_the_corpus_loads_as_an_image_folder(tmp_path):
    write_photos(tmp_path / "photos", count=2)
    run("--photos", str(tmp_path / "photos"), "--out", str(tmp_path / "corpus"), "--native", "3",
        "--scene", "4")
    from imgtx.data import load_images

    assert len(load_images(str(tmp_path / "corpus"), split="train", image_size=32)) == 7
    assert len(load_images(str(tmp_path / "corpus"), split="test", image_size=32)) == 7


def test_zoom_crops_are_box_means_and_leave_the_other_forms_unchanged(tmp_path):
    """``--zoom``: squares of 32 x 2..8 pixels averaged down to 32x32 (for an integer factor
    Pillow's BOX filter is the block mean, up to its fixed-point rounding); native and scene
    crops are the same files with or without them."""
    import importlib.util

    rng = np.random.default_rng(1)
    (tmp_path / "photos").mkdir()
    for i in range(2):
        pixels = rng.integers(0, 256, (300 + 20 * i, 280, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(tmp_path / "photos" / f"photo{i}.png")
    common = ("--photos", str(tmp_path / "photos"), "--native", "3", "--scene", "2", "--test",
              "photo1.png", "--no-val")
    plain = run(*common, "--out", str(tmp_path / "plain"))
    zoomed = run(*common, "--out", str(tmp_path / "zoomed"), "--zoom", "40")
    assert "val" not in plain and not (tmp_path / "plain" / "val").exists()
    assert zoomed["train"] == {**plain["train"], "zoom": 40}
    assert zoomed["zooms"] == [2, 3, 4, 5, 6, 7, 8]
    for split in ("train", "test"):
        for path in (tmp_path / "plain" / split).glob("*.png"):
            assert path.read_bytes() == (tmp_path / "zoomed" / split / path.name).read_bytes()
    assert len(list((tmp_path / "zoomed" / "heldout-zoom" / "test").glob("*.png"))) == 40

    spec = importlib.util.spec_from_file_location("make_photo_crops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    photo = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
    windows = module.zoom_windows(280, 300, 60, 32, np.random.default_rng(0))
    sides = {side for _, _, side in windows}
    assert sides <= {32 * z for z in range(2, 9)} and len(sides) >= 5 and len(windows) == 60
    small = module.zoom_windows(100, 100, 50, 32, np.random.default_rng(0))
    assert {side for _, _, side in small} == {64, 96} and len(small) < 50  # 128+ do not fit
    crops = module.cut(PIL.Image.fromarray(photo), windows, 32)
    for (x, y, side), crop in zip(windows, crops):
        z = side // 32
        block = photo[y : y + side, x : x + side].reshape(32, z, 32, z, 3).astype(np.float64)
        assert np.abs(np.asarray(crop) - block.mean(axis=(1, 3))).max() <= 1.0  # fixed point
