"""The photo-GAN yardstick: the corpus's val split (fresh crops of the training photos, disjoint
from train), bits/dim under a likelihood model beside FID, per-class variety of a conditional
generator, and the race script's CPU-time budget and image corruptions."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import scipy.ndimage
import torch

ROOT = Path(__file__).resolve().parents[1]
CROPS = ROOT / "scripts" / "make_photo_crops.py"
LIKELIHOOD_MODEL = ROOT / "checkpoints" / "imgtx-photos-dmol-small"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# val split
# ------------------------------------------------------------------------------------------------


def coordinate_photo(width: int, height: int) -> np.ndarray:
    """A photo whose pixel (x, y) spells its own position: R = x mod 256, G = y mod 256,
    B = 16 (x div 256) + (y div 256). A native crop's top-left pixel says where it was cut."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return np.stack([x % 256, y % 256, 16 * (x // 256) + y // 256], axis=-1).astype(np.uint8)


def crop_corner(path: Path) -> tuple[int, int]:
    r, g, b = (int(v) for v in np.asarray(PIL.Image.open(path))[0, 0])
    return r + 256 * (b // 16), g + 256 * (b % 16)


def make_crops(photos: Path, out: Path, *extra: str) -> dict:
    done = subprocess.run([sys.executable, str(CROPS), "--photos", str(photos), "--out", str(out),
                           "--native", "24", "--scene", "8", "--test", "c.png", *extra],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    photos = root / "photos"
    photos.mkdir()
    for name, (w, h) in {"a.png": (300, 200), "b.png": (260, 280), "c.png": (200, 150)}.items():
        PIL.Image.fromarray(coordinate_photo(w, h)).save(photos / name)
    with_val = make_crops(photos, root / "with_val", "--val-native", "12", "--val-scene", "8")
    make_crops(photos, root / "no_val", "--val-native", "0", "--val-scene", "0")
    return {"photos": photos, "root": root, "manifest": with_val}


def test_val_native_crops_share_no_pixel_with_train_crops(corpora):
    out = corpora["root"] / "with_val"
    assert corpora["manifest"]["val"] == {"native": 24, "scene": 16}  # 2 training photos
    for photo in ("a", "b"):
        pixels = np.asarray(PIL.Image.open(corpora["photos"] / f"{photo}.png"))
        corners = {}
        for split in ("train", "val"):
            corners[split] = []
            for path in sorted((out / split).glob(f"{photo}-native-*.png")):
                x, y = crop_corner(path)
                assert (np.asarray(PIL.Image.open(path)) == pixels[y : y + 32, x : x + 32]).all()
                corners[split].append((x, y))
        assert len(corners["train"]) == 24 and len(corners["val"]) == 12
        for vx, vy in corners["val"]:
            for tx, ty in corners["train"] + [c for c in corners["val"] if c != (vx, vy)]:
                assert abs(vx - tx) >= 32 or abs(vy - ty) >= 32, "val window overlaps"
    assert not list((out / "val").glob("c-*")), "val holds only the training photos"


def test_val_scene_crops_are_not_train_crops(corpora):
    out = corpora["root"] / "with_val"
    train = {np.asarray(PIL.Image.open(p)).tobytes() for p in (out / "train").glob("*scene*")}
    val = [np.asarray(PIL.Image.open(p)).tobytes() for p in (out / "val").glob("*scene*")]
    assert len(val) == 16 and not train & set(val)


def test_val_leaves_train_and_test_byte_identical_and_add_val_matches(corpora):
    root = corpora["root"]
    for split in ("train", "test", "heldout-native/test", "heldout-scene/test"):
        names = sorted(p.name for p in (root / "no_val" / split).glob("*.png"))
        assert names == sorted(p.name for p in (root / "with_val" / split).glob("*.png"))
        for name in names:
            assert ((root / "no_val" / split / name).read_bytes()
                    == (root / "with_val" / split / name).read_bytes())
    subprocess.run([sys.executable, str(CROPS), "--photos", str(corpora["photos"]), "--out",
                    str(root / "no_val"), "--add-val", "--val-native", "12", "--val-scene", "8"],
                   check=True, capture_output=True)
    added = sorted((root / "no_val" / "val").glob("*.png"))
    assert [p.name for p in added] == sorted(p.name for p in (root / "with_val" / "val").iterdir())
    assert all(p.read_bytes() == (root / "with_val" / "val" / p.name).read_bytes() for p in added)
    manifest = json.loads((root / "no_val" / "manifest.json").read_text())
    assert manifest["val"] == corpora["manifest"]["val"]


# ------------------------------------------------------------------------------------------------
# bits/dim under a likelihood model
# ------------------------------------------------------------------------------------------------


class StubGenerator:
    """``generate`` returns fixed images: the evaluation only sees what a generator makes."""

    def __init__(self, images: torch.Tensor, num_classes: int = 0):
        self.images = images
        self.config = SimpleNamespace(image_size=images.shape[-1], num_classes=num_classes)

    def generate(self, num, labels=None, seed=0):
        return self.images[torch.arange(seed, seed + num) % len(self.images)]


def test_likelihood_reads_blobs_below_real_photos_and_noise_above(tmp_path):
    from skimage import data as photos

    from imgtx.eval.bits_per_dim import evaluate_model
    from imgtx.gan.evaluate import evaluate_generator
    from imgtx.gan.yardstick import likelihood_figures

    folder = tmp_path / "real"  # four 32x32 crops of two photographs, as a one-split folder
    folder.mkdir()
    for i, (photo, x, y) in enumerate([(photos.astronaut(), 200, 60), (photos.astronaut(), 300,
                                       380), (photos.coffee(), 100, 250), (photos.coffee(), 400,
                                       120)]):
        PIL.Image.fromarray(photo[y : y + 32, x : x + 32]).save(folder / f"{i}.png")
    crops = torch.stack([torch.from_numpy(np.asarray(PIL.Image.open(folder / f"{i}.png")))
                         .permute(2, 0, 1) for i in range(4)])
    blobs = load_script("photo_gan_race").blurred(crops, 4.0)  # their colours, no texture
    result = evaluate_generator(StubGenerator(blobs), str(folder), "test",
                                num_samples=4, features="random", batch_size=4,
                                use_cache=False, likelihood_model=str(LIKELIHOOD_MODEL),
                                likelihood_images=4)
    smooth, real = result["samples_bits_per_dim"], result["real_bits_per_dim"]
    torch.manual_seed(0)
    noise = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    noisy = likelihood_figures(str(LIKELIHOOD_MODEL), {"noise": noise})["noise_bits_per_dim"]
    assert smooth < real - 1.0 and noisy > real + 2.0, (smooth, real, noisy)
    # The real figure is imgtx eval-bpd's on the same images.
    bpd = evaluate_model(str(LIKELIHOOD_MODEL), str(folder), "test", baselines=False,
                         progress=False, device="cpu")
    assert bpd["num_images"] == 4
    assert real == pytest.approx(bpd["bits_per_dim"], abs=1e-6)


# ------------------------------------------------------------------------------------------------
# variety within each class
# ------------------------------------------------------------------------------------------------


def test_mean_pairwise_distance_against_a_double_loop():
    from imgtx.eval.stats import mean_pairwise_distance

    rows = np.random.default_rng(0).random((7, 3, 4, 4))
    pairs = [np.linalg.norm(rows[i] - rows[j]) for i in range(7) for j in range(i + 1, 7)]
    assert mean_pairwise_distance(rows) == pytest.approx(np.mean(pairs), rel=1e-10)


class ClassStub(StubGenerator):
    """Class ``c``'s samples are real training digits of class ``c`` (``collapse``: one each)."""

    def __init__(self, images, labels, collapse: bool):
        super().__init__(images, num_classes=10)
        self.by_class = [images[labels == c][: 1 if collapse else None] for c in range(10)]

    def generate(self, num, labels=None, seed=0):
        pool = self.by_class[int(labels[0])]
        return pool[torch.arange(num) % len(pool)]


@pytest.mark.parametrize("collapse", [False, True])
def test_class_variety_of_real_digits_and_of_one_digit_per_class(collapse):
    from imgtx.data import load_images
    from imgtx.eval.features import get_extractor
    from imgtx.eval.stats import mean_pairwise_distance
    from imgtx.gan.yardstick import class_variety

    source = load_images("builtin:digits", split="train", image_size=16)
    rows = [source[i] for i in range(len(source))]
    images = torch.stack([row["image"] for row in rows])
    labels = torch.tensor([int(row["label"]) for row in rows])
    generator = ClassStub(images, labels, collapse)
    result = class_variety(generator, "builtin:digits", get_extractor("random"), per_class=100,
                           batch_size=100)
    ratios = np.array(result["variety_ratio"])
    assert len(ratios) == 10
    if collapse:
        assert ratios.max() < 1e-6  # identical samples (Gram-matrix rounding aside)
        assert min(result["class_fid_over_floor"]) > 1.5
    else:  # the first 100 training digits of each class: the spread of those over the class's
        expected = [mean_pairwise_distance(generator.by_class[c][:100].double().numpy() / 255)
                    / mean_pairwise_distance(generator.by_class[c].double().numpy() / 255)
                    for c in range(10)]
        assert ratios == pytest.approx(expected, rel=1e-12)
        assert 0.9 < ratios.min() and ratios.max() < 1.1


# ------------------------------------------------------------------------------------------------
# the race script
# ------------------------------------------------------------------------------------------------


def test_cpu_budget_counts_process_cpu_time_not_waiting(monkeypatch):
    """The budget reads the process's CPU clock (``time.process_time``), here a fake one that only
    the step's work advances: waiting costs no budget. (A real busy loop made this test depend on
    what other threads of the test process were doing.)"""
    race = load_script("photo_gan_race")
    clock = [100.0]
    monkeypatch.setattr(race.time, "process_time", lambda: clock[0])
    calls = []

    def busy(run, batch):
        calls.append(batch)
        clock[0] += 0.02  # 0.02 s of CPU a step
        time.sleep(0.001)  # waiting for the CPU costs no budget
        return {}

    budget = race.CPUBudget(busy, budget_s=0.1, tick_s=1e9, out=Path("."), fid_samples=2,
                            seed=0, reference={})
    ticks = []
    budget.tick = lambda run: ticks.append(run.state.step)
    run = SimpleNamespace(state=SimpleNamespace(step=0), settings=SimpleNamespace(max_steps=10**9))
    while run.state.step < run.settings.max_steps:
        budget(run, run.state.step)
        run.state.step += 1
    assert 5 <= len(calls) <= 6, len(calls)  # 0.1 s of CPU at 0.02 s a step
    assert run.settings.max_steps == len(calls)
    assert ticks == [0]  # the tick at 0 CPU-minutes
    assert 0.1 - 1e-9 <= budget.used() <= 0.12 + 1e-9


def test_extended_budget_counts_on_from_the_run_it_continues(monkeypatch, tmp_path):
    """``--extend``: a run that stopped at 1.0 CPU-second ticks next at 1.0 + tick, not at once,
    and stops at the new total budget, not after a whole new one."""
    race = load_script("photo_gan_race")
    clock = [50.0]
    monkeypatch.setattr(race.time, "process_time", lambda: clock[0])

    def busy(run, batch):
        clock[0] += 0.1
        return {}

    budget = race.CPUBudget(busy, budget_s=2.0, tick_s=0.5, out=Path("."), fid_samples=2,
                            seed=0, reference={}, spent_s=1.0)
    ticks = []
    budget.tick = lambda run: ticks.append(round(budget.used(), 6))
    run = SimpleNamespace(state=SimpleNamespace(step=0), settings=SimpleNamespace(max_steps=10**9))
    while run.state.step < run.settings.max_steps:
        budget(run, run.state.step)
        run.state.step += 1
    assert run.state.step == 10  # 1.0 more CPU-second at 0.1 a step
    assert ticks == [1.5]  # not 1.0 (the run's own last tick) and not 0
    assert budget.used() == pytest.approx(2.0)
    # the refusals of race(extend=True), before anything trains
    with pytest.raises(SystemExit, match="no finished race run"):
        race.race("toolkit6", 2.0, tmp_path, 0, 1.0, 2, extend=True)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "race.jsonl").write_text(json.dumps({"cpu_minutes": 3.0, "floor_fid": 0.5}) + "\n")
    (tmp_path / "settings.json").write_text(json.dumps({"train": {"seed": 1}}))
    with pytest.raises(SystemExit, match="--seed 1"):
        race.race("toolkit6", 5.0, tmp_path, 0, 1.0, 2, extend=True)
    with pytest.raises(SystemExit, match="already trained 3.0"):
        race.race("toolkit6", 2.0, tmp_path, 1, 1.0, 2, extend=True)
    with pytest.raises(SystemExit, match="--extend"):  # a fresh run will not overwrite it
        race.race("toolkit6", 2.0, tmp_path, 1, 1.0, 2)


def test_annealed_budget_holds_the_rates_then_takes_them_linearly_to_zero(monkeypatch):
    """toolkit7's ``anneal``: every optimiser step of the first half of a 2.0 CPU-second budget
    runs at the base rates, and those of the second half at ``base x (budget - used) / 1.0``
    (read inside the step, where the optimisers use them), whatever the schedulers wrote."""
    race = load_script("photo_gan_race")
    assert race.RECIPES["toolkit7"]["anneal"] == 0.5
    assert race.RECIPES["toolkit7"]["settings"] == race.RECIPES["toolkit6"]["settings"]
    clock = [10.0]
    monkeypatch.setattr(race.time, "process_time", lambda: clock[0])
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizers = {"G": torch.optim.Adam([weight], lr=1e-4),
                  "D": torch.optim.Adam([weight], lr=4e-4)}
    for optimizer in optimizers.values():
        optimizer.param_groups[0]["initial_lr"] = optimizer.param_groups[0]["lr"]
    seen = []

    def busy(run, batch):
        seen.append((budget.used(), [o.param_groups[0]["lr"] for o in optimizers.values()]))
        clock[0] += 0.125  # exact in binary: the step count does not hang on rounding
        for optimizer in optimizers.values():  # a constant LambdaLR writes the base rate back
            optimizer.param_groups[0]["lr"] = optimizer.param_groups[0]["initial_lr"]
        return {}

    budget = race.CPUBudget(busy, budget_s=2.0, tick_s=1e9, out=Path("."), fid_samples=2,
                            seed=0, reference={}, anneal_s=1.0)
    budget.tick = lambda run: None
    run = SimpleNamespace(state=SimpleNamespace(step=0), settings=SimpleNamespace(max_steps=10**9),
                          optimizers=optimizers)
    while run.state.step < run.settings.max_steps:
        budget(run, run.state.step)
        run.state.step += 1
    assert len(seen) == 16
    for used, (lr_g, lr_d) in seen:
        factor = min(1.0, 2.0 - used)
        assert lr_g == pytest.approx(1e-4 * factor) and lr_d == pytest.approx(4e-4 * factor)
    assert [lr for _, (lr, _) in seen[:9]] == [1e-4] * 9  # held through 1.0 CPU-second
    assert seen[9][1][0] < 1e-4
    assert seen[-1][1][0] == pytest.approx(1.25e-5)  # the last step, 0.125 s before the end
    assert budget.lr_factor() == 0.0


def test_race_plot_draws_every_run_in_its_own_colour(monkeypatch, tmp_path):
    import imgtx.gan.evaluate
    from imgtx.errors import UserError

    race = load_script("photo_gan_race")
    monkeypatch.setattr(imgtx.gan.evaluate, "real_images",  # no corpus here: stand-in crops
                        lambda *args: torch.zeros((64, 3, 32, 32), dtype=torch.uint8))
    runs = []
    for index in range(len(race.COLOURS) + 1):
        run = tmp_path / f"run{index}"
        (run / "race_samples").mkdir(parents=True)
        rows = [{"cpu_minutes": m, "fid": 10.0 + 5 * index + m, "floor_fid": 0.5}
                for m in (0.0, 15.0, 30.0)]
        (run / "race.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        PIL.Image.new("RGB", (8, 8)).save(run / "race_samples" / "cpu_0030.00min.png")
        runs.append(run)
    written = race.plot(runs[: len(race.COLOURS)], tmp_path / "docs")
    assert {f"run{i}" for i in range(len(race.COLOURS))} <= set(written)
    colours = {colour for _, colour in PIL.Image.open(written["curve"]).getcolors(1 << 16)}
    assert set(race.COLOURS) <= colours  # the first version dropped runs past its 4th colour
    with pytest.raises(UserError, match="at most"):
        race.plot(runs, tmp_path / "docs")


def test_export_best_ships_the_tick_with_the_lowest_fid(monkeypatch, tmp_path):
    import imgtx.gan.evaluate
    from imgtx.errors import UserError
    from imgtx.gan.base import Generator
    from imgtx.gan.configs import gan_entry, model_classes

    race = load_script("photo_gan_race")
    monkeypatch.setattr(imgtx.gan.evaluate, "real_images",  # no corpus here: stand-in crops
                        lambda *args: torch.zeros((64, 3, 32, 32), dtype=torch.uint8))
    run = tmp_path / "toolkit2"
    (run / "race_samples").mkdir(parents=True)
    rows = []
    for index, (minutes, fid) in enumerate([(0.0, 90.0), (15.0, 12.0), (30.0, 20.0)]):
        torch.manual_seed(index)  # three different generators
        entry = gan_entry("strans-tiny")
        g_class, d_class = model_classes(entry.config)
        name = f"cpu_{minutes:07.2f}min"
        g_class(entry.config).save_pretrained(run / "ticks" / name)
        d_class(entry.discriminator).save_pretrained(run / "ticks" / name / "discriminator")
        PIL.Image.new("RGB", (8, 8), (index, 0, 0)).save(run / "race_samples" / f"{name}.png")
        rows.append({"cpu_minutes": minutes, "fid": fid, "snapshot": f"ticks/{name}"})
    (run / "race.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "metrics.jsonl").write_text("{}\n")
    written = race.export(run, tmp_path / "out", "cmd", best=True)
    assert written["tick"] == "cpu_0015.00min"
    shipped = Generator.from_pretrained(tmp_path / "out")
    chosen = Generator.from_pretrained(run / "ticks" / "cpu_0015.00min")
    assert torch.equal(shipped.generate(2, seed=1), chosen.generate(2, seed=1))
    assert (tmp_path / "out" / "discriminator" / "model.safetensors").is_file()
    assert PIL.Image.open(tmp_path / "out" / "samples.png").getpixel((0, 0)) == (1, 0, 0)
    assert "15 CPU-minutes" in (tmp_path / "out" / "train_command.txt").read_text()
    # chosen on train crops instead: val's FIDs are not read
    train_fids = {"cpu_0000.00min": 80.0, "cpu_0015.00min": 30.0, "cpu_0030.00min": 25.0}
    seen = []

    def measured(generator, data, split, *args, **kwargs):
        assert split == "train"
        seen.append(generator)
        name = next(n for n in train_fids if torch.equal(
            generator.generate(2, seed=1),
            Generator.from_pretrained(run / "ticks" / n).generate(2, seed=1)))
        return {"fid": train_fids[name]}

    monkeypatch.setattr(race, "evaluate_generator", measured)
    written = race.export(run, tmp_path / "out2", "cmd", best=True, select_on="train")
    assert written["tick"] == "cpu_0030.00min" and len(seen) == 3
    selection = json.loads((tmp_path / "out2" / "selection.json").read_text())
    assert selection["chosen"]["train_fid"] == 25.0 and selection["chosen"]["fid"] == 20.0
    with pytest.raises(UserError, match="select on"):
        race.export(run, tmp_path / "out3", "cmd", best=True, select_on="test")


def test_blur_matches_scipy_and_noise_has_its_std():
    race = load_script("photo_gan_race")
    images = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    for sigma in (0.5, 1.5):
        radius = max(1, int(np.ceil(3 * sigma)))
        expected = scipy.ndimage.gaussian_filter(images.double().numpy(), (0, 0, sigma, sigma),
                                                 mode="mirror", truncate=radius / sigma)
        got = race.blurred(images, sigma).double().numpy()
        assert np.abs(got - expected).max() <= 1.0
    flat = torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)
    assert race.noised(flat, 8.0).double().std() == pytest.approx(8.0, rel=0.05)


def test_class_fid_is_the_mean_over_disjoint_sets_of_samples():
    from imgtx.eval.features import compute_features, get_extractor
    from imgtx.eval.fid import fid_from_features
    from imgtx.gan.yardstick import _labelled, class_variety

    train, train_labels = _labelled("builtin:digits", "train", 16)
    test, test_labels = _labelled("builtin:digits", "test", 16)
    # class c's samples: its test digits first (that set scores the floor exactly), then its
    # training digits
    pools = [torch.cat([test[test_labels == c], train[train_labels == c]]) for c in range(10)]
    generator = ClassStub(train, train_labels, collapse=False)
    generator.by_class = pools
    extractor = get_extractor("random")
    result = class_variety(generator, "builtin:digits", extractor, per_class=100, batch_size=100)
    for c in range(10):
        n = int((test_labels == c).sum())
        real = compute_features(extractor, train[train_labels == c], 100)
        fids = [fid_from_features(compute_features(extractor, pools[c][k * n : (k + 1) * n], 100),
                                  real) for k in range(100 // n)]
        assert len(fids) >= 2
        assert fids[0] == pytest.approx(result["class_floor_fid"][c], rel=1e-9)
        assert result["class_fid"][c] == pytest.approx(np.mean(fids), rel=1e-9)
        assert result["class_fid_range"][c] == pytest.approx([min(fids), max(fids)], rel=1e-9)
        assert result["class_fid_over_floor"][c] == pytest.approx(np.mean(fids) / fids[0],
                                                                  rel=1e-9)


def test_evaluate_generator_adds_the_class_figures_when_asked():
    from imgtx.data import load_images
    from imgtx.gan.evaluate import evaluate_generator

    source = load_images("builtin:digits", split="train", image_size=16)
    rows = [source[i] for i in range(len(source))]
    generator = ClassStub(torch.stack([row["image"] for row in rows]),
                          torch.tensor([int(row["label"]) for row in rows]), collapse=True)
    plain = evaluate_generator(generator, "builtin:digits", num_samples=20, features="random",
                               batch_size=20, use_cache=False)
    assert "variety_ratio" not in plain
    result = evaluate_generator(generator, "builtin:digits", num_samples=20, features="random",
                                batch_size=20, use_cache=False, variety_per_class=10)
    assert len(result["variety_ratio"]) == len(result["class_fid"]) == 10
    assert max(result["variety_ratio"]) < 1e-6 and result["num_per_class"] == 10


def test_a_likelihood_model_that_is_no_image_transformer_is_refused():
    from imgtx.errors import UserError
    from imgtx.gan.yardstick import load_likelihood_model

    with pytest.raises(UserError, match="not an Image Transformer"):
        load_likelihood_model(str(ROOT / "checkpoints" / "transgan-photos32-small"))


def test_grid_edge_ratio_against_a_loop_and_on_blocks():
    """The ratio against a loop over every neighbouring pair (float64); blocks of 8 pixels with
    texture inside score far above 1 at period 8 (and not at a period that misses their
    borders), smooth ramps score 1."""
    from imgtx.gan.yardstick import grid_edge_ratio

    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    x = images.double()
    on, off = [], []
    for i in range(12):
        for j in range(11):
            (on if (j + 1) % 4 == 0 else off).append(abs(x[:, :, i, j + 1] - x[:, :, i, j]))
            (on if (j + 1) % 4 == 0 else off).append(abs(x[:, :, j + 1, i] - x[:, :, j, i]))
    expected = float(torch.cat(on).mean() / torch.cat(off).mean())
    assert grid_edge_ratio(images, 4) == pytest.approx(expected, rel=1e-12)

    blocks = torch.randint(0, 200, (4, 3, 4, 4)).double().repeat_interleave(8, 2)
    blocks = blocks.repeat_interleave(8, 3) + torch.randint(0, 8, (4, 3, 32, 32))
    assert grid_edge_ratio(blocks, 8) > 10
    assert grid_edge_ratio(blocks, 16) > 5  # every 16-pixel line is an 8-pixel line
    assert grid_edge_ratio(blocks, 5) < 3
    ramp = torch.arange(32.0).expand(1, 3, 32, 32) * 4 + torch.arange(32.0)[:, None]
    assert grid_edge_ratio(ramp, 8) == pytest.approx(1.0)


def test_evaluate_generator_reports_the_grid_view_beside_real_images():
    from imgtx.gan.evaluate import evaluate_generator

    class Blocks:
        config = SimpleNamespace(image_size=32, num_classes=0)

        def generate(self, num, labels=None, seed=0):
            g = torch.Generator().manual_seed(seed)
            coarse = torch.randint(0, 256, (num, 3, 4, 4), generator=g)
            return coarse.repeat_interleave(8, 2).repeat_interleave(8, 3).to(torch.uint8)

    result = evaluate_generator(Blocks(), "builtin:photos32", num_samples=16, features="random",
                                batch_size=16, use_cache=False)
    assert set(result["grid_edge_ratio"]) == {"4", "8", "16"}
    assert result["grid_edge_ratio"]["8"] > 1e6  # no step inside a block at all
    assert result["real_grid_edge_ratio"]["8"] < 2


def test_by_photo_view_labels_every_train_crop_with_its_own_photo(corpora, monkeypatch):
    """toolkit8 trains on the photo each crop was cut from: the class view of ``train`` holds
    every train crop once, byte-identical, under the label of its photo (the loader's ids,
    sorted by name), and the recipe is the conditional toolkit7."""
    from imgtx.data import load_images

    race = load_script("photo_gan_race")
    data = corpora["root"] / "with_val"
    monkeypatch.setattr(race, "DATA", str(data))
    view, photos = race.by_photo("train")
    assert photos == ["a", "b"]  # c.png is the held-out test photo
    assert race.by_photo("train") == (view, photos)  # a second call reuses the view
    source = load_images(view, split="train", image_size=32, seed=0)
    assert source.class_names == photos
    files = sorted((data / "train").glob("*.png"))
    assert len(source) == len(files)
    by_label = {}
    for path in sorted(Path(view, "train").rglob("*.png")):
        by_label.setdefault(photos.index(path.parent.name), []).append(path.name)
        assert path.read_bytes() == (data / "train" / path.name).read_bytes()
        assert race.photo_of(path.name) == path.parent.name
    assert sorted(n for names in by_label.values() for n in names) == [f.name for f in files]
    assert set(by_label) == {0, 1}
    labels = {int(source[i]["label"]) for i in range(len(source))}
    assert labels == {0, 1}
    recipe = race.RECIPES["toolkit8"]
    assert recipe["labels"] == "photo"
    assert recipe["settings"] == race.RECIPES["toolkit7"]["settings"]
    assert recipe.get("anneal") == 0.5
