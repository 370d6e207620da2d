"""Spec for imgtx.data: builtin photo patches, image conversion, folders, datasets, loaders."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from imgtx.data import (  # noqa: E402
    DIGITS_CLASS_NAMES,
    FLAT_LUMA_STD,
    ImageDataError,
    ImageSource,
    StreamingImageSource,
    digit_images,
    from_hf_dataset,
    image_loader,
    load_images,
    photo_patches,
    to_rgb_uint8,
)
from imgtx.errors import UserError  # noqa: E402

LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    """Keep imagefolder's Arrow cache out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array, mode).save(path)
    return array


def _rgb(seed: int, height: int = 32, width: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# builtin:photos
# ---------------------------------------------------------------------------------------------


def test_photos32_items_are_uint8_chw_and_deterministic():
    source = load_images("builtin:photos32", split="test")
    item = source[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
    assert item["label"] == -1 and source.num_classes is None
    rebuilt = photo_patches.__wrapped__("test", 32)  # bypass the cache: a fresh build
    assert torch.equal(rebuilt.images, photo_patches("test", 32).images)
    assert torch.equal(
        load_images("builtin:photos32", split="test")[7]["image"], source[7]["image"]
    )


def test_photos_items_are_copies_so_the_cache_cannot_be_corrupted():
    source = load_images("builtin:photos32", split="test")
    source[0]["image"].zero_()
    assert source[0]["image"].max() > 0


def test_photos_train_and_test_come_from_different_photos():
    train, test = photo_patches("train", 32), photo_patches("test", 32)
    assert not set(train.names) & set(test.names)
    assert {"motorcycle_left.png", "motorcycle_right.png"} <= set(train.names)
    assert set(train.photo.tolist()) == set(range(len(train.names)))  # every photo contributes
    train_bytes = {patch.numpy().tobytes() for patch in train.images}
    assert not any(patch.numpy().tobytes() in train_bytes for patch in test.images)


def test_photos_split_sizes_and_aliases():
    test = load_images("builtin:photos32", split="test")
    assert len(test) >= 300
    assert len(load_images("builtin:photos32", split="train")) > 10 * len(test)
    valid = load_images("builtin:photos32", split="valid")
    assert len(valid) == len(test) and torch.equal(valid[3]["image"], test[3]["image"])
    with pytest.raises(ImageDataError, match="'train' and 'test'"):
        load_images("builtin:photos32", split="holdout")


@pytest.mark.parametrize("split", ["train", "test"])
def test_no_flat_patch_survives_and_the_rule_drops_some(split):
    patches = photo_patches(split, 32)
    luma = torch.einsum("nchw,c->nhw", patches.images.double(), LUMA)
    std = luma.flatten(1).std(dim=1, unbiased=False)
    assert std.min() >= FLAT_LUMA_STD
    assert sum(patches.dropped) > 0
    assert len(patches.images) == sum(patches.candidates) - sum(patches.dropped)


def test_photos_other_sizes_and_limit():
    source = load_images("builtin:photos", split="test", image_size=16, limit=5)
    assert len(source) == 5 and source[4]["image"].shape == (3, 16, 16)
    with pytest.raises(ImageDataError, match="builtin:photos'"):
        load_images("builtin:photos32", image_size=64)


# ---------------------------------------------------------------------------------------------
# builtin:digits
# ---------------------------------------------------------------------------------------------


def test_digits_split_counts_disjointness_and_labels():
    from sklearn.datasets import load_digits

    reference = load_digits()
    train, test = digit_images("train", 8), digit_images("test", 8)
    assert len(train.images) == 1437 and len(test.images) == 360
    assert test.index.tolist() == list(range(0, 1797, 5))
    assert sorted(train.index.tolist() + test.index.tolist()) == list(range(1797))
    for split in (train, test):
        assert split.labels.tolist() == reference.target[split.index.numpy()].tolist()
    assert set(test.labels.tolist()) == set(range(10))
    # grey v in 0..16 -> round(v * 255 / 16), checked with Python's own round on every pixel
    first = reference.images[test.index[1].item()]
    expected = [[round(v * 255 / 16) for v in row] for row in first.tolist()]
    assert all(test.images[1, c].tolist() == expected for c in range(3))
    assert test.images.dtype == torch.uint8 and test.images.shape == (360, 3, 8, 8)


def test_digits_through_the_normal_loader():
    source = load_images("builtin:digits", split="test")
    assert len(source) == 360 and source.num_classes == 10
    assert source.class_names == list(DIGITS_CLASS_NAMES) == [str(d) for d in range(10)]
    batch = next(iter(image_loader(source, batch_size=20, shuffle=False)))
    assert batch["image"].shape == (20, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["label"].tolist() == digit_images("test", 32).labels[:20].tolist()
    streamed = list(load_images("builtin:digits", split="train", image_size=16, streaming=True,
                                limit=6))
    train = digit_images("train", 16)
    assert [item["label"] for item in streamed] == train.labels[:6].tolist()
    assert torch.equal(streamed[5]["image"], train.images[5])
    assert len(load_images("builtin:digits", split="valid", limit=7)) == 7
    shuffled = next(iter(image_loader(source, batch_size=360, shuffle=True)))["label"]
    labels = digit_images("test", 32).labels
    assert not torch.equal(shuffled, labels)
    assert torch.equal(shuffled.sort().values, labels.sort().values)  # same images, new order


def test_digits_upscale_is_pils_bicubic():
    from sklearn.datasets import load_digits

    grey = np.rint(load_digits().images[7] * 255 / 16).astype(np.uint8)  # index 7 is train
    train = digit_images("train", 32)
    position = train.index.tolist().index(7)
    rgb = PIL.Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    expected = np.array(rgb.resize((32, 32), PIL.Image.BICUBIC))  # (32, 32, 3)
    assert torch.equal(train.images[position], torch.from_numpy(expected).permute(2, 0, 1))
    with pytest.raises(ImageDataError, match="builtin:digits has splits 'train' and 'test'"):
        load_images("builtin:digits", split="holdout")


# ---------------------------------------------------------------------------------------------
# to_rgb_uint8
# ---------------------------------------------------------------------------------------------


def test_grayscale_palette_and_cmyk_become_rgb():
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    out = to_rgb_uint8(PIL.Image.fromarray(gray, "L"), 32)
    assert out.shape == (3, 32, 32) and all(
        torch.equal(out[c], torch.from_numpy(gray)) for c in range(3)
    )
    rgb = _rgb(0)
    palette = PIL.Image.fromarray(rgb).quantize(256)
    assert torch.equal(to_rgb_uint8(palette, 32), to_rgb_uint8(palette.convert("RGB"), 32))
    cmyk = PIL.Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red ink-wise
    assert to_rgb_uint8(cmyk, 32)[:, 0, 0].tolist() == [255, 0, 0]


def test_alpha_is_composited_on_white():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:16, :, 3] = 255  # top half opaque, bottom half transparent
    out = to_rgb_uint8(PIL.Image.fromarray(rgba, "RGBA"), 32)
    assert out[:, 0, 0].tolist() == [10, 20, 30]
    assert out[:, 31, 0].tolist() == [255, 255, 255]


def test_16_bit_grayscale_is_scaled_to_8_bits():
    values = np.array([[0, 257 * 100, 65535, 257 * 3]] * 4, dtype=np.uint16)
    out = to_rgb_uint8(PIL.Image.fromarray(values), 4)
    assert out[0, 0].tolist() == [0, 100, 255, 3]


def test_crop_area_center_crops_then_box_averages():
    image = np.zeros((64, 80, 3), np.uint8)  # H=64, W=80: the crop removes 8 columns each side
    image[:, :8] = 255
    image[:, 72:] = 255
    image[:, 8:72] = _rgb(1, 64, 64)
    out = to_rgb_uint8(PIL.Image.fromarray(image), 32)
    block_mean = image[:, 8:72].reshape(32, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))
    expected = torch.from_numpy(block_mean).permute(2, 0, 1)
    assert (out.double() - expected).abs().max() <= 1.0  # Pillow rounds in fixed point


def test_crop_area_enlarges_small_images():
    out = to_rgb_uint8(PIL.Image.new("RGB", (16, 16), (40, 80, 120)), 32)
    assert out.shape == (3, 32, 32) and out[:, 5, 9].tolist() == [40, 80, 120]


def test_reject_names_sizes_and_the_fix():
    image = PIL.Image.new("RGB", (40, 30))
    with pytest.raises(ImageDataError, match="'odd.png' is 40x30.*32x32.*resize='crop-area'"):
        to_rgb_uint8(image, 32, resize="reject", name="odd.png")
    assert to_rgb_uint8(PIL.Image.new("RGB", (32, 32)), 32, resize="reject").shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------
# Image folders (Downsampled ImageNet layout)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def flat_folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path / "valid_32x32"
    arrays = {
        "00000.png": _save(folder / "00000.png", _rgb(2)),
        "00001.png": _save(folder / "00001.png", _rgb(3)[..., 0], "L"),
        "00002.png": _save(
            folder / "00002.png", np.dstack([_rgb(4), np.full((32, 32), 255, np.uint8)])
        ),
        "00003.png": _save(folder / "00003.png", _rgb(5, 30, 40)),
    }
    (folder / "README.txt").write_text("not an image")
    return folder, arrays


@pytest.mark.parametrize("split", ["test", "valid", "validation"])
def test_flat_folder_is_the_only_split(flat_folder, split):
    folder, arrays = flat_folder
    source = load_images(str(folder), split=split)
    assert isinstance(source, ImageSource) and len(source) == len(arrays)
    items = [source[i] for i in range(len(source))]
    assert all(
        it["image"].shape == (3, 32, 32) and it["image"].dtype == torch.uint8 for it in items
    )
    assert all(it["label"] == -1 for it in items) and source.num_classes is None
    images = sorted(it["image"].permute(1, 2, 0).numpy().tobytes() for it in items)
    assert arrays["00000.png"].tobytes() in images  # RGB pixels unchanged
    assert arrays["00002.png"][..., :3].tobytes() in images  # opaque RGBA keeps its colour
    gray = np.repeat(arrays["00001.png"][..., None], 3, axis=2)
    assert gray.tobytes() in images


def test_flat_folder_named_for_another_split_warns(flat_folder):
    folder, arrays = flat_folder
    with pytest.warns(UserWarning, match="name says 'validation'"):
        source = load_images(f"imagefolder:{folder}", split="train")
    assert len(source) == len(arrays)


def test_folder_with_split_and_class_subfolders(tmp_path):
    for split, count in (("train", 3), ("valid", 2)):
        for label in ("cat", "dog"):
            for i in range(count):
                _save(tmp_path / "data" / split / label / f"{i}.png", _rgb(i))
    _save(tmp_path / "data" / "train" / "eel" / "0.png", _rgb(9))  # a class only in train
    train = load_images(str(tmp_path / "data"), split="train")
    test = load_images(str(tmp_path / "data"), split="test")  # falls back to valid/
    assert (len(train), len(test)) == (7, 4)
    assert train.class_names == test.class_names == ["cat", "dog", "eel"]
    assert sorted(test[i]["label"] for i in range(4)) == [0, 0, 1, 1]
    assert sorted(train[i]["label"] for i in range(7)) == [0, 0, 0, 1, 1, 1, 2]


def test_folder_of_size_subfolders_picks_the_one_for_image_size(tmp_path):
    _save(tmp_path / "imagenet" / "train_32x32" / "a.png", _rgb(0))
    _save(tmp_path / "imagenet" / "train_64x64" / "a.png", _rgb(0, 64, 64))
    _save(tmp_path / "imagenet" / "valid_64x64" / "a.png", _rgb(1, 64, 64))
    source = load_images(str(tmp_path / "imagenet"), split="train", image_size=64, resize="reject")
    assert len(source) == 1 and source[0]["image"].shape == (3, 64, 64)
    with pytest.raises(ImageDataError, match="train_32x32"):
        load_images(str(tmp_path / "imagenet"), split="train", image_size=16)


def test_reject_on_a_folder_names_the_file(flat_folder):
    folder, _ = flat_folder
    source = load_images(str(folder), split="test", resize="reject")
    assert source[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ImageDataError, match=r"00003\.png' is 40x30"):
        source[3]


def test_folder_index_order_hidden_entries_and_nested_classes(tmp_path):
    root = tmp_path / "data" / "train"
    for relative in ("b/2.png", "b/1.PNG", "a/z.jpg", "a/deeper/0.png", "a/.hidden.png",
                     "a/__pycache__/x.png", ".git/y.png"):
        _save(root / relative, _rgb(len(relative), 8, 8))
    (root / "a" / "notes.txt").write_text("not an image")
    source = load_images(str(tmp_path / "data"), split="train", image_size=8)
    names = [source._rows(i)[2] for i in range(len(source))]
    assert [Path(n).relative_to(root).as_posix() for n in names] == [
        "a/z.jpg", "a/deeper/0.png", "b/1.PNG", "b/2.png"]  # files first, then subfolders
    assert source.class_names == ["a", "b"]
    assert [source[i]["label"] for i in range(4)] == [0, 0, 1, 1]  # the top folder is the class


def test_folder_index_is_compact_and_decodes_nothing(tmp_path):
    import tracemalloc

    from imgtx.data.folder import index_image_folder

    folder = tmp_path / "valid_8x8"
    folder.mkdir()
    count = 5000
    for i in range(count):
        (folder / f"{i:05d}.png").touch()  # never opened while indexing
    tracemalloc.start()
    rows, class_names = index_image_folder(folder, "valid", 8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(rows) == count and class_names is None
    assert rows.blob.nbytes + rows.offsets.nbytes == count * len("00000.png") + (count + 1) * 8
    assert peak < count * 150  # transient directory listing included
    assert rows(4321)[0] == str(folder / "04321.png")
    assert rows.limited(10).path(9) == str(folder / "00009.png") and len(rows.limited(10)) == 10


# ---------------------------------------------------------------------------------------------
# Unreadable images
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def folder_with_corrupt_png(flat_folder) -> Path:
    folder, _ = flat_folder
    (folder / "00004_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return folder


def test_corrupt_png_raises_naming_the_file(folder_with_corrupt_png):
    source = load_images(str(folder_with_corrupt_png), split="test")
    with pytest.raises(ImageDataError, match=r"00004_bad\.png.*on_error='skip'"):
        [source[i] for i in range(len(source))]


def test_skip_serves_readable_images_and_counts(folder_with_corrupt_png):
    source = load_images(str(folder_with_corrupt_png), split="test", on_error="skip")
    assert len(source) == 5
    items = [source[i] for i in range(5)]
    assert all(it["image"].shape == (3, 32, 32) for it in items) and source.skipped == 1
    assert len(source.scan()) == 4 and source.skipped == 1


def test_skip_in_streaming_drops_the_image(folder_with_corrupt_png):
    source = load_images(
        str(folder_with_corrupt_png), split="test", on_error="skip", streaming=True
    )
    assert isinstance(source, StreamingImageSource)
    assert len(list(source)) == 4 and source.skipped == 1


@pytest.mark.parametrize("damage", ["truncated", "not-an-image", "empty-file"])
def test_damaged_files_raise_one_actionable_line(tmp_path, damage):
    folder = tmp_path / "images"
    _save(folder / "good.png", _rgb(0))
    encoded = (folder / "good.png").read_bytes()
    bad = {"truncated": encoded[: len(encoded) // 2], "not-an-image": b"hello, world\n" * 9,
           "empty-file": b""}[damage]
    (folder / "bad.png").write_bytes(bad)
    for streaming in (False, True):
        source = load_images(str(folder), split="train", streaming=streaming)
        with pytest.raises(ImageDataError) as info:
            list(source) if streaming else [source[i] for i in range(len(source))]
        message = str(info.value)
        assert isinstance(info.value, UserError) and "\n" not in message
        assert "bad.png" in message and "on_error='skip'" in message
        assert " object at 0x" not in message


@pytest.mark.parametrize("layout", ["empty", "only-text", "empty-split"])
def test_a_folder_without_images_is_a_user_error(tmp_path, layout):
    folder = tmp_path / "data"
    folder.mkdir()
    if layout == "only-text":
        (folder / "README.txt").write_text("no images here")
    if layout == "empty-split":
        _save(folder / "train" / "a.png", _rgb(0))
        (folder / "test").mkdir()
    for streaming in (False, True):
        with pytest.raises(ImageDataError, match="holds no image files.*point the spec at"):
            load_images(str(folder), split="test", streaming=streaming)


def test_an_empty_data_set_is_a_user_error():
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    one = datasets.Dataset.from_dict({"image": [PIL.Image.new("RGB", (8, 8))], "label": [1]},
                                     features=features)
    with pytest.raises(ImageDataError, match="'nothing' has no images"):
        from_hf_dataset(one.select([]), name="nothing")
    nothing = one.to_iterable_dataset().filter(lambda row: False)
    streamed = from_hf_dataset(nothing, name="nothing")
    with pytest.raises(ImageDataError, match="'nothing' streamed no images"):
        list(streamed)
    with pytest.raises(ImageDataError, match="limit must be None or an int >= 1"):
        load_images("builtin:digits", limit=0)


def test_nothing_readable_is_a_user_error_even_when_skipping(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / "bad" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "bad" / name).write_bytes(b"not a png")
    source = load_images(str(tmp_path / "bad"), split="test", on_error="skip")
    with pytest.raises(ImageDataError, match="none of the 2 images"):
        source[0]
    with pytest.raises(ImageDataError, match="none of the images"):
        source.scan()
    streamed = load_images(str(tmp_path / "bad"), split="test", on_error="skip", streaming=True)
    with pytest.raises(ImageDataError, match="none of its 2 images could be decoded"):
        list(streamed)


# ---------------------------------------------------------------------------------------------
# datasets: in-memory, save_to_disk, streaming
# ---------------------------------------------------------------------------------------------

CIFAR_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


@pytest.fixture
def cifar_like() -> datasets.Dataset:
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR_NAMES)}
    )
    images = [PIL.Image.fromarray(_rgb(i)) for i in range(6)]
    return datasets.Dataset.from_dict(
        {"img": images, "label": [3, 1, 4, 1, 5, 9]}, features=features
    )


def test_from_hf_dataset_finds_cifar_columns(cifar_like):
    source = from_hf_dataset(cifar_like, image_size=32)
    assert source.num_classes == 10 and source.class_names == CIFAR_NAMES
    assert [source[i]["label"] for i in range(6)] == [3, 1, 4, 1, 5, 9]
    assert torch.equal(source[2]["image"], torch.from_numpy(_rgb(2)).permute(2, 0, 1))


def test_from_hf_dataset_with_named_columns_and_no_labels():
    ds = datasets.Dataset.from_dict(
        {"picture": [PIL.Image.fromarray(_rgb(0, 48, 48))], "caption": ["x"]},
        features=datasets.Features(
            {"picture": datasets.Image(), "caption": datasets.Value("string")}
        ),
    )
    source = from_hf_dataset(ds, image_size=24)
    assert source[0]["image"].shape == (3, 24, 24) and source[0]["label"] == -1
    assert source.num_classes is None
    with pytest.raises(ImageDataError, match="column 'pixels' not found"):
        from_hf_dataset(ds, image_column="pixels")


def test_save_to_disk_path_is_a_spec(cifar_like, tmp_path):
    cifar_like.save_to_disk(tmp_path / "one")
    assert [load_images(str(tmp_path / "one"))[i]["label"] for i in range(6)] == [3, 1, 4, 1, 5, 9]
    datasets.DatasetDict(
        {"train": cifar_like.select(range(4)), "validation": cifar_like.select([5])}
    ).save_to_disk(tmp_path / "dict")
    test = load_images(str(tmp_path / "dict"), split="test")  # falls back to validation
    assert len(test) == 1 and test[0]["label"] == 9 and test.num_classes == 10
    with pytest.raises(ImageDataError, match="none of them 'unlabelled'"):
        load_images(str(tmp_path / "dict"), split="unlabelled")


def test_streaming_goes_through_the_same_code(cifar_like):
    mapped = from_hf_dataset(cifar_like, image_size=32)
    streamed = from_hf_dataset(cifar_like.to_iterable_dataset(), image_size=32, limit=4)
    assert isinstance(streamed, StreamingImageSource) and streamed.num_classes == 10
    items = list(streamed)
    assert len(items) == 4
    assert all(torch.equal(it["image"], mapped[i]["image"]) for i, it in enumerate(items))
    assert [it["label"] for it in items] == [3, 1, 4, 1]


# ---------------------------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------------------------


def test_loader_collates_uint8_batches(cifar_like):
    loader = image_loader(from_hf_dataset(cifar_like, image_size=32), batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [3, 1, 4, 1]


def test_loader_shuffles_reproducibly_from_the_seed():
    source = load_images("builtin:photos32", split="test", seed=3)
    first = next(iter(image_loader(source, 16, shuffle=True)))["image"]
    again = next(iter(image_loader(source, 16, shuffle=True)))["image"]
    assert torch.equal(first, again) and not torch.equal(
        first, next(iter(image_loader(source, 16, False)))["image"]
    )


def test_streaming_loader_shuffles_and_drops_last():
    source = load_images("builtin:photos32", split="test", streaming=True, limit=10)
    plain = [b["image"] for b in image_loader(source, 4, shuffle=False, drop_last=True)]
    shuffled = torch.cat([b["image"] for b in image_loader(source, 4, shuffle=True)])
    assert [b.shape[0] for b in plain] == [4, 4]
    assert shuffled.shape == (10, 3, 32, 32)
    assert not torch.equal(shuffled[:8], torch.cat(plain))


# ---------------------------------------------------------------------------------------------
# Specs that cannot be loaded
# ---------------------------------------------------------------------------------------------


def test_unknown_spec_lists_the_accepted_forms(tmp_path):
    with pytest.raises(
        ImageDataError, match="(?s)unknown image spec.*builtin:photos32.*save_to_disk.*Hub"
    ):
        load_images(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(ImageDataError, match="unknown builtin"):
        load_images("builtin:mnist")


def test_missing_hub_dataset_offline_says_so():
    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip(
            "HF_HUB_OFFLINE was unset before datasets was imported; would touch the network"
        )
    with pytest.raises(ImageDataError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        load_images("imgtx-tests/no-such-dataset", split="test")
