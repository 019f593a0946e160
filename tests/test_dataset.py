"""Training windows: no gaps inside, no leakage across splits, crops that see rain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cropped_fmi, sample_files

from pipelines.datamodule import RadarDataModule
from pipelines.dataset import SequenceDataset, TimeBlockSplit, window_starts
from pipelines.ingest import ingest
from pipelines.normalization import RainNormalizer
from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames

STEP = 300


@pytest.fixture
def gappy_store(store: str) -> str:
    """Synthetic storm, 5-min step, with frames 10 and 23-24 missing."""
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=40, shape=(64, 64), skip={10, 23, 24}))
    return store


def test_windows_never_cross_a_gap(gappy_store: str) -> None:
    ds = SequenceDataset(gappy_store, "synth", t_in=4, t_out=3)
    assert len(ds) > 0
    for i in range(len(ds)):
        start = ds.starts[i]
        seconds = ds.seconds[start : start + 7]
        assert np.all(np.diff(seconds) == STEP), (i, seconds)
    # every contiguous window is there: 40 frames minus gaps leave runs of 10, 12 and 15
    assert len(ds) == (10 - 6) + (12 - 6) + (15 - 6)
    sample = ds[len(ds) - 1]
    assert sample["inputs"].shape == (4, 1, 64, 64) and sample["targets"].shape == (3, 1, 64, 64)
    assert sample["init_time"] == int(ds.seconds[ds.starts[-1] + 3])


def test_window_starts_rejects_irregular_spacing() -> None:
    seconds = np.array([0, 300, 600, 1000, 1300, 1600, 1900]) + 10**9
    assert window_starts(seconds, 3, STEP, None, TimeBlockSplit()).tolist() == [0, 3, 4]


def test_splits_do_not_leak(store: str) -> None:
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=200, shape=(32, 32)))
    splitter = TimeBlockSplit(block_hours=2, pattern=("train", "train", "val", "test"))
    frames_by_split = {}
    for split in ("train", "val", "test"):
        ds = SequenceDataset(store, "synth", 3, 3, split=split, splitter=splitter)
        assert len(ds) > 0, split
        used = {int(s) for start in ds.starts for s in ds.seconds[start : start + 6]}
        frames_by_split[split] = used
        blocks = {int(b) for b in splitter.block_of(np.array(sorted(used)))}
        assert all(splitter.pattern[b % 4] == split for b in blocks)
    assert not frames_by_split["train"] & frames_by_split["val"]
    assert not frames_by_split["train"] & frames_by_split["test"]
    assert not frames_by_split["val"] & frames_by_split["test"]
    # the same configuration always gives the same split
    again = SequenceDataset(store, "synth", 3, 3, split="val", splitter=splitter)
    assert {int(s) for start in again.starts for s in again.seconds[start : start + 6]} == frames_by_split["val"]


def test_crops_find_rain_on_real_radar(store: str) -> None:
    ingest(sample_files("fmi", 8), store, "fmi", fmt="fmi_pgm")
    # 2 mm/h covers under 2 % of this event's domain: random crops rarely reach 15 % of it
    kwargs = dict(crop=96, rain_threshold=2.0, split=None)
    wet = SequenceDataset(store, "fmi", 2, 2, min_rain_fraction=0.15, crop_tries=100, **kwargs)
    any_crop = SequenceDataset(store, "fmi", 2, 2, min_rain_fraction=0.0, **kwargs)
    threshold = float(RainNormalizer().forward(np.float32(2.0)))

    def mean_wet_fraction(ds: SequenceDataset) -> float:
        fractions = []
        for epoch in range(6):
            ds.set_epoch(epoch)
            fractions += [(ds[i]["inputs"][-1] >= threshold).float().mean().item() for i in range(len(ds))]
        return float(np.mean(fractions))

    assert mean_wet_fraction(wet) >= 0.15 > mean_wet_fraction(any_crop)
    # nodata is filled as no rain in the tensor and flagged in the mask
    full = SequenceDataset(store, "fmi", 4, 4)[0]
    assert 0.0 < full["input_mask"].float().mean() < 1.0
    assert torch.all(full["inputs"][~full["input_mask"]] == 0.0)


def test_augmentation_rotates_and_flips_consistently(store: str) -> None:
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=12, shape=(48, 48)))
    plain = SequenceDataset(store, "synth", 3, 3)[0]
    augmented = SequenceDataset(store, "synth", 3, 3, augment=True, seed=3)
    seen = set()
    for epoch in range(8):
        augmented.set_epoch(epoch)
        sample = augmented[0]
        window = torch.cat([sample["inputs"], sample["targets"]])
        reference = torch.cat([plain["inputs"], plain["targets"]])
        matches = [
            k * 2 + f
            for k in range(4)
            for f in range(2)
            if torch.equal(window, _dihedral(reference, k, f))
        ]
        assert matches, "augmented window is not a rotation/flip of the original"
        seen.update(matches)
    assert len(seen) > 1


def test_coded_windows_go_to_model_space_bit_for_bit_like_the_float_path(store: str) -> None:
    """The 8/16-bit lookup path (codes -> normalised value and validity) against the float path
    (decode to mm/h, then the normaliser), on real FMI radar with nodata outside its coverage."""
    ingest(sample_files("fmi", 8), store, "fmi", fmt="fmi_pgm")
    for crop, augment in ((None, False), (96, True)):
        looked_up = SequenceDataset(store, "fmi", 2, 2, crop=crop, augment=augment, min_rain_fraction=0.05, seed=1)
        computed = SequenceDataset(store, "fmi", 2, 2, crop=crop, augment=augment, min_rain_fraction=0.05, seed=1)
        computed._model_space_tables = lambda dtype: None  # type: ignore[method-assign]
        assert looked_up._model_space_tables(looked_up.array.dtype) is not None
        for epoch in range(3):
            looked_up.set_epoch(epoch)
            computed.set_epoch(epoch)
            for index in range(len(looked_up)):
                got, want = looked_up[index], computed[index]
                for key in ("inputs", "targets", "input_mask", "target_mask", "offset"):
                    assert torch.equal(got[key], want[key]), (crop, epoch, index, key)
        if crop is None:
            assert not bool(got["input_mask"].all()), "a full FMI frame has nodata outside the radars"


def _dihedral(x: torch.Tensor, k: int, flip: int) -> torch.Tensor:
    out = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(out, dims=(3,)) if flip else out


@pytest.mark.parametrize("kind", ["log", "db", "identity"])
def test_normalisation_is_invertible_for_numpy_and_torch(kind: str) -> None:
    norm = RainNormalizer(kind=kind)
    rates = np.array([0.0, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0], dtype=np.float64)
    z = norm.forward(rates)
    assert z[0] == 0.0 and np.all(np.diff(z) > 0)
    np.testing.assert_allclose(norm.inverse(z), rates, rtol=1e-9, atol=1e-12)
    zt = norm.forward(torch.tensor(rates))
    np.testing.assert_allclose(zt.numpy(), z, rtol=1e-9)
    np.testing.assert_allclose(norm.inverse(zt).numpy(), rates, rtol=1e-9, atol=1e-12)
    assert RainNormalizer.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError, match="unknown normalisation"):
        RainNormalizer(kind="sqrt")


def test_datamodule_feeds_several_products_into_one_training_set(store: str) -> None:
    ProductArchive(store, "a").write(synthetic_frames(n_frames=30, shape=(64, 64), seed=1))
    ProductArchive(store, "b").write(synthetic_frames(n_frames=30, shape=(80, 80), seed=2, start="2021-07-02T00:00"))
    dm = RadarDataModule(store, ["a", "b"], t_in=3, t_out=2, crop=32, min_rain_fraction=0.0, batch_size=4,
                         block_hours=1000, split_pattern=["train"])
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(train) == (30 - 4) * 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 3, 1, 32, 32) and batch["targets"].shape == (4, 2, 1, 32, 32)
    assert len(dm.datasets["val"]) == 0


def test_holdout_tail_is_kept_out_of_every_split(store: str) -> None:
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=72, shape=(32, 32)))  # 12:00 .. 17:55
    dm = RadarDataModule(store, ["synth"], t_in=3, t_out=3, crop=None, min_rain_fraction=0.0, block_hours=1,
                         split_pattern=["train", "val"], holdout_hours=2)
    dm.setup("fit")
    cutoff = np.datetime64("2021-07-01T15:55:00").astype("datetime64[s]").astype(np.int64)  # 17:55 - 2 h
    for split in ("train", "val", "test"):
        for part in dm.datasets[split].datasets:
            last = part.seconds[part.starts + 5]
            assert (last <= cutoff).all(), split
    assert len(dm.datasets["train"]) > 0 and dm.describe()["holdout_hours"] == 2


def test_an_empty_training_split_names_the_settings_to_change(tmp_path) -> None:
    from pipelines.datamodule import RadarDataModule
    from pipelines.store import ProductArchive
    from pipelines.synthetic import synthetic_frames

    store = str(tmp_path / "s.zarr")
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=20, shape=(32, 32)))
    module = RadarDataModule(store, ["synth"], t_in=6, t_out=12, crop=None, block_hours=1,
                             split_pattern=["train", "val"])
    with pytest.raises(ValueError, match="no training windows.*data.block_hours.*data.split_pattern"):
        module.setup("fit")


def test_products_at_different_steps_are_refused_by_name(tmp_path) -> None:
    from pipelines.datamodule import RadarDataModule
    from pipelines.store import ProductArchive
    from pipelines.synthetic import synthetic_frames

    store = str(tmp_path / "s.zarr")
    ProductArchive(store, "five").write(synthetic_frames(n_frames=30, shape=(32, 32)))
    ten = synthetic_frames(n_frames=30, shape=(32, 32))
    for k, frame in enumerate(ten):
        frame.time = ten[0].time + np.timedelta64(600 * k, "s")
    ProductArchive(store, "ten").write(ten)
    module = RadarDataModule(store, ["five", "ten"], t_in=2, t_out=2, crop=None, block_hours=24,
                             split_pattern=["train"])
    with pytest.raises(ValueError, match="five every 5 min, ten every 10 min"):
        module.setup("fit")


def _overlap(a: torch.Tensor, b: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The parts of frames ``a`` and ``b`` that coincide if ``b`` is ``a`` moved by (-dy, -dx)."""
    h, w = a.shape[-2] - abs(dy), a.shape[-1] - abs(dx)
    return (a[max(0, dy) : max(0, dy) + h, max(0, dx) : max(0, dx) + w],
            b[max(0, -dy) : max(0, -dy) + h, max(0, -dx) : max(0, -dx) + w])


def _shift_between(a: torch.Tensor, b: torch.Tensor, reach: int) -> tuple[int, int] | None:
    """The whole-pixel shift (dy, dx) that carries frame ``a`` exactly onto frame ``b``, if any."""
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if torch.equal(*_overlap(a, b, dy, dx)):
                return dy, dx
    return None


def test_advected_windows_carry_one_real_frame_at_a_constant_speed(store: str) -> None:
    """Every frame of an advected window is the last input frame moved k steps at one constant
    whole-pixel velocity within the speed limit, its nodata moving with it; evaluation windows never
    are, and windows without the option are the real sequence."""
    ingest(sample_files("fmi", 20), store, "fmi", fmt="fmi_pgm")
    speed, t_in, t_out = 3, 2, 3
    ds = SequenceDataset(store, "fmi", t_in, t_out, crop=64, min_rain_fraction=0.05, advect_prob=1.0,
                         advect_max_speed=speed, seed=2)
    velocities = set()
    for index in range(len(ds)):
        item = ds[index]
        frames = torch.cat([item["inputs"], item["targets"]])[:, 0]
        masks = torch.cat([item["input_mask"], item["target_mask"]])[:, 0]
        shift = _shift_between(frames[0], frames[1], speed)
        assert shift is not None, index
        for k in range(1, t_in + t_out):
            assert torch.equal(*_overlap(frames[0], frames[k], shift[0] * k, shift[1] * k)), (index, k)
            assert torch.equal(*_overlap(masks[0], masks[k], shift[0] * k, shift[1] * k)), (index, k)
        velocities.add(shift)
    assert len(velocities) > 2, velocities  # random speeds and directions, not one
    real = SequenceDataset(store, "fmi", t_in, t_out, crop=64, min_rain_fraction=0.05, seed=2)[0]
    frames = torch.cat([real["inputs"], real["targets"]])[:, 0]
    assert _shift_between(frames[0], frames[-1], speed * 4) is None  # real rain does not move rigidly
    held_out = SequenceDataset(store, "fmi", t_in, t_out, split="val", splitter=TimeBlockSplit(24, ("val",)),
                               crop=64, min_rain_fraction=0.05, advect_prob=1.0)
    plain = SequenceDataset(store, "fmi", t_in, t_out, split="val", splitter=TimeBlockSplit(24, ("val",)),
                            crop=64, min_rain_fraction=0.05)
    assert torch.equal(held_out[0]["targets"], plain[0]["targets"])
    with pytest.raises(ValueError, match="advected windows need a crop"):
        SequenceDataset(store, "fmi", t_in, t_out, advect_prob=0.5)
    with pytest.raises(ValueError, match="probability"):
        SequenceDataset(store, "fmi", t_in, t_out, crop=64, advect_prob=2.0)


def test_validation_windows_take_their_own_crop_and_stride(store: str) -> None:
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=60, shape=(96, 96)))
    kwargs = dict(t_in=3, t_out=3, crop=32, min_rain_fraction=0.0, block_hours=1, split_pattern=["train", "val"])
    every = RadarDataModule(store, ["synth"], **kwargs)
    every.setup("fit")
    wide = RadarDataModule(store, ["synth"], val_crop=80, val_stride=4, **kwargs)
    wide.setup("fit")
    assert len(wide.datasets["train"]) == len(every.datasets["train"])  # training windows untouched
    starts = every.datasets["val"].datasets[0].starts
    assert wide.datasets["val"].datasets[0].starts.tolist() == starts[::4].tolist()
    assert wide.datasets["val"][0]["targets"].shape[-2:] == (80, 80)
    assert wide.datasets["train"][0]["targets"].shape[-2:] == (32, 32)
    with pytest.raises(ValueError, match="stride must be at least 1"):
        SequenceDataset(store, "synth", 3, 3, stride=0)


def test_a_teacher_forecast_rides_along_cut_like_the_window_and_is_the_future_of_an_advected_one(
        store: str) -> None:
    """Distillation: a real window carries the baseline's cached forecast of its init, cropped like
    it, with nodata masked (not dry); an advected window, whose motion is exact, its own future."""
    from pipelines.extrapolation import ExtrapolationCache, build_cache

    # 11 real frames (6 windows: index 5 is the last) on a 320 x 320 window with rain and the radar's
    # edge: the cached optical flow of every init of 20 full-grid frames cost a minute and showed no more
    cropped_fmi(store, 11)
    t_in, t_out = 3, 3
    cache = build_cache(store, "fmi", t_out, workers=1, progress=False, method="optical_flow")
    real = SequenceDataset(store, "fmi", t_in, t_out, crop=64, min_rain_fraction=0.05, seed=2, teacher=cache)
    normalizer = RainNormalizer()
    for index in (0, 5):
        item = real[index]
        y0, x0 = (int(v) for v in item["offset"])
        start = int(real.starts[index])
        expected = ExtrapolationCache(cache, "fmi").read(start + t_in - 1, t_out, slice(y0, y0 + 64),
                                                         slice(x0, x0 + 64))
        assert torch.equal(item["teacher_mask"][:, 0], torch.from_numpy(~np.isnan(expected)))
        observed = item["teacher_mask"][:, 0]
        assert torch.allclose(item["teacher"][:, 0][observed],
                              normalizer.forward(torch.from_numpy(expected[observed.numpy()]).float()), atol=1e-6)
        assert not torch.equal(item["teacher"], item["targets"])  # a forecast, not the observation
    whole = SequenceDataset(store, "fmi", t_in, t_out, teacher=cache)[0]
    unobserved = ~whole["teacher_mask"]
    assert unobserved.any() and (whole["teacher"][unobserved] == 0).all()  # outside the radar: masked, not dry
    advected = SequenceDataset(store, "fmi", t_in, t_out, crop=64, min_rain_fraction=0.05, seed=2, teacher=cache,
                               advect_prob=1.0)[0]
    assert torch.equal(advected["teacher"], advected["targets"])
    assert torch.equal(advected["teacher_mask"], advected["target_mask"])
    with pytest.raises(ValueError, match="data.teacher must be one of optical_flow, sprog, got 'steps'"):
        RadarDataModule(store, ["fmi"], teacher="steps")
