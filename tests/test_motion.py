"""Motion-conditioned networks, the motion baselines and the extrapolation cache, on real radar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from nowcast.forecaster import load_forecaster
from nowcast.models import get_model
from pipelines.dataset import SequenceDataset
from pipelines.extrapolation import ExtrapolationCache, build_cache, cache_path, init_indices
from pipelines.motion import extrapolate, sprog
from pipelines.normalization import RainNormalizer
from pipelines.store import ProductArchive

HYBRIDS = ("convlstm_flow", "predrnn_flow", "sa_convlstm_flow", "convlstm_sprog")
CACHED_LEADS = 2


@pytest.fixture(scope="module")
def short_archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    """8 real FMI frames: 4 init times with 3 frames of history and 2 leads, on a 320 x 320 window with
    rain and the radar's edge (``FMI_RAIN_EDGE``; the cache's 256-pixel chunks split it): optical flow
    and S-PROG of the full 1226 x 760 grid cost a minute here and show nothing more."""
    from conftest import cropped_fmi

    return cropped_fmi(str(tmp_path_factory.mktemp("short") / "fmi.zarr"), 8)


@pytest.fixture(scope="module")
def short_cache(short_archive: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("cache") / "fmi.extrapolation.zarr")
    return build_cache(short_archive, "fmi", CACHED_LEADS, workers=2, path=path, progress=False)


def real_frames(store: str, start: int, count: int, box: tuple[slice, slice]) -> np.ndarray:
    with ProductArchive(store, "fmi").open() as ds:
        return ds["precip"].isel(time=slice(start, start + count), y=box[0], x=box[1]).values


@pytest.mark.parametrize("name", HYBRIDS)
def test_untrained_hybrid_forecasts_exactly_the_baseline_it_corrects(name: str, fmi_archive: str) -> None:
    frames = real_frames(fmi_archive, 0, 4, (slice(500, 628), slice(200, 328)))
    normalizer = RainNormalizer()
    model = get_model(name, hidden=(8, 8), kernel=3, patch=4, normalization=normalizer.to_dict())
    assert model.baseline == ("sprog" if name.endswith("_sprog") else "optical_flow")
    z = normalizer.forward(torch.from_numpy(np.nan_to_num(frames, nan=0.0)))[None, :, None].float()
    flow = load_forecaster(model.baseline).predict(frames, 5)
    hybrid = normalizer.inverse(model(z, 5)[0, :, 0].detach()).numpy()
    covered = np.isfinite(flow)
    assert np.mean(flow[covered] >= 1.0) > 0.01, "pick a rainy crop"
    np.testing.assert_allclose(hybrid[covered], flow[covered], atol=1e-3)
    # and a trained correction changes it: gradients reach the network through the output layer
    out = model(z, 5)
    out.square().mean().backward()
    assert model.output.weight.grad is not None and model.output.weight.grad.abs().sum() > 0


def test_hybrid_needs_as_many_cached_leads_as_it_forecasts() -> None:
    model = get_model("convlstm_flow", hidden=(4,), patch=2)
    with pytest.raises(ValueError, match="extrapolation has 2 leads, 3 requested"):
        model(torch.zeros(1, 4, 1, 8, 8), 3, extrapolation=torch.zeros(1, 2, 1, 8, 8))


@pytest.mark.parametrize("name", ["optical_flow_smooth", "sprog"])
def test_new_baselines_forecast_real_radar_by_name(name: str, fmi_archive: str) -> None:
    frames = real_frames(fmi_archive, 0, 4, (slice(400, 656), slice(150, 406)))
    frames[:, :20, :] = np.nan  # a strip outside the radar's coverage
    forecast = load_forecaster(name).predict(frames, 6)
    assert forecast.shape == (6, 256, 256)
    covered = np.isfinite(frames[-1])
    assert covered[20:].mean() > 0.9
    assert np.isnan(forecast[:, ~covered]).all(), "nodata in the last frame must stay nodata"
    assert np.isfinite(forecast[:, covered]).all() and (forecast[:, covered] >= 0).all()
    body = np.where(covered, forecast, 0.0)
    flow = np.where(covered, load_forecaster("optical_flow").predict(frames, 6), 0.0)
    if name == "optical_flow_smooth":  # the same rain, spread wider as lead time grows
        assert abs(np.nansum(body[-1]) - np.nansum(flow[-1])) / np.nansum(flow[-1]) < 0.15
        assert np.std(body[-1]) < np.std(flow[-1])
        assert np.std(body[0]) / np.std(flow[0]) > np.std(body[-1]) / np.std(flow[-1])
    else:  # S-PROG loses the small scales first: smoother than extrapolation, but rain where it was
        def roughness(field: np.ndarray) -> float:  # small-scale variability of log rain
            return float(np.abs(np.diff(np.log1p(field), axis=-1)).mean())

        assert roughness(body[-1]) < roughness(flow[-1])
        assert np.corrcoef(np.log1p(body[0]).ravel(), np.log1p(flow[0]).ravel())[0, 1] > 0.7


def test_extrapolation_cache_equals_the_baseline_and_resumes(short_archive: str, short_cache: str) -> None:
    assert cache_path("data/a.zarr") == "data/a.extrapolation.zarr"
    t_out, path = CACHED_LEADS, short_cache
    times = ProductArchive(short_archive, "fmi").times()
    cache = ExtrapolationCache(path, "fmi")
    inits = init_indices(times, t_out)
    assert len(inits) == 4 and cache.done[inits].all() and cache.done.sum() == len(inits)
    index = int(inits[2])
    frames = real_frames(short_archive, index - 2, 3, (slice(None), slice(None)))
    direct = extrapolate(frames, t_out)
    cached = cache.read(index, t_out, slice(None), slice(None))
    both = np.isfinite(direct)
    np.testing.assert_array_equal(np.isnan(cached), ~both)
    np.testing.assert_allclose(cached[both], np.clip(direct[both], 0, None), atol=0.006)
    # a lost entry (as after a kill before its flag) is recomputed, and only that one
    done = zarr.open_array(f"{path}/fmi/done", mode="r+")
    done[index] = 0
    zarr.open_array(f"{path}/fmi/rain", mode="r+")[index] = 0
    build_cache(short_archive, "fmi", t_out, workers=1, path=path, progress=False)
    again = ExtrapolationCache(path, "fmi")
    assert again.done[inits].all()
    np.testing.assert_array_equal(again.read(index, t_out, slice(None), slice(None)), cached)


def test_training_windows_carry_the_cached_extrapolation_cropped_and_turned_alike(
    short_archive: str, short_cache: str,
) -> None:
    t_out = CACHED_LEADS
    kwargs = dict(crop=96, min_rain_fraction=0.05, extrapolation=short_cache)
    plain = SequenceDataset(short_archive, "fmi", 4, t_out, **kwargs)
    turned = SequenceDataset(short_archive, "fmi", 4, t_out, augment=True, seed=1, **kwargs)
    item = plain[1]
    assert item["extrapolation"].shape == item["targets"].shape == (t_out, 1, 96, 96)
    y0, x0 = item["offset"].tolist()
    expected = ExtrapolationCache(short_cache, "fmi").read(
        int(plain.starts[1]) + 3, t_out, slice(y0, y0 + 96), slice(x0, x0 + 96))
    z = plain.normalizer.forward(np.nan_to_num(expected, nan=0.0))
    np.testing.assert_allclose(item["extrapolation"][:, 0].numpy(), z, atol=1e-6)
    # under augmentation the last input and the first extrapolated lead stay aligned (same turn)
    for k in range(len(turned)):
        t = turned[k]
        a, b = t["inputs"][-1, 0].numpy(), t["extrapolation"][0, 0].numpy()
        if a.std() > 0 and b.std() > 0:
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.5


def test_sprog_cache_holds_the_sprog_forecast_in_a_store_of_its_own(
    short_archive: str, short_cache: str, tmp_path,
) -> None:
    assert cache_path("data/a.zarr", "sprog") == "data/a.sprog.zarr"
    with pytest.raises(ValueError, match="unknown extrapolation method 'lk'"):
        cache_path("data/a.zarr", "lk")
    path = build_cache(short_archive, "fmi", CACHED_LEADS, workers=1, path=str(tmp_path / "fmi.sprog.zarr"),
                       progress=False, method="sprog")
    cache = ExtrapolationCache(path, "fmi")
    assert cache.group.attrs["extrapolation"] == "sprog" and "S-PROG" in cache.group.attrs["method"]
    index = int(init_indices(ProductArchive(short_archive, "fmi").times(), CACHED_LEADS)[1])
    frames = real_frames(short_archive, index - 2, 3, (slice(None), slice(None)))
    direct = sprog(frames, CACHED_LEADS)
    cached = cache.read(index, CACHED_LEADS, slice(None), slice(None))
    both = np.isfinite(direct)
    np.testing.assert_array_equal(np.isnan(cached), ~both)
    np.testing.assert_allclose(cached[both], direct[both], atol=0.006)
    # S-PROG is not the optical flow cached beside it: a cache never serves the other method
    flow = ExtrapolationCache(short_cache, "fmi").read(index, CACHED_LEADS, slice(None), slice(None))
    assert np.nanmax(np.abs(flow - cached)) > 0.1
    # building the S-PROG cache into the optical-flow store replaces it (stale), not mixes them
    build_cache(short_archive, "fmi", CACHED_LEADS, workers=1, path=path, progress=False)
    assert ExtrapolationCache(path, "fmi").group.attrs["extrapolation"] == "optical_flow"


def test_a_capped_hybrid_never_forecasts_above_the_heaviest_observed_rain(fmi_archive: str) -> None:
    frames = real_frames(fmi_archive, 0, 4, (slice(500, 628), slice(200, 328)))
    normalizer = RainNormalizer()
    z = normalizer.forward(torch.from_numpy(np.nan_to_num(frames, nan=0.0)))[None, :, None].float()
    estimate = z[:, -1:].repeat(1, 6, 1, 1, 1)  # the last frame as every lead's estimate
    top = float(z.max())
    for ceiling in (False, True):
        model = get_model("convlstm_sprog", hidden=(8,), patch=4, ceiling=ceiling)
        with torch.no_grad():
            model.lead_bias.fill_(-1.0)  # every scale weight near -1: the head sharpens at all scales
        out = model(z, 6, extrapolation=estimate)
        if ceiling:
            assert float(out.max()) <= top and float(out.max()) >= top - 1e-6  # capped, and the cap is reached
        else:
            assert float(out.max()) > top + 0.1  # what the cap is for: sharpening overshoots the peak
