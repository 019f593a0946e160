"""``nowcast evaluate``: every model on the same cases from the archive, scored per lead time.

Cases are init times whose history (the longest any model needs) and future (the lead steps)
are all in the archive without a gap, every ``stride``-th, inside ``[start, end]``; a case
is skipped as dry when under 1 % of the valid pixels of its last observed frame reach
0.1 mm/h. Scores are pooled over cases (``nowcast.verification``). Besides the JSON report
the command writes a markdown table, a PNG of CSI against lead time and a GIF of one case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nowcast.cases import archive_layout, is_dry, pixel_size_km
from nowcast.forecaster import DEFAULT_LEAD_STEPS, LoadedForecaster, load_forecaster
from nowcast.probabilistic_verification import (
    ProbabilisticVerifier,
    case_forecasts,
    probabilistic_scores,
    write_probabilistic_outputs,
)
from nowcast.verification import LeadTimeVerifier, scores_table_markdown
from pipelines.channels import AuxiliaryInputs
from pipelines.integrity import DamagedData
from pipelines.query import centre_crop, check_step, plan_windows, utc_text
from pipelines.store import ProductArchive


@dataclass
class Case:
    start: int  # index of the first history frame
    init: np.datetime64  # valid time of the last observed frame


def select_cases(
    times: np.ndarray, history: int, lead_steps: int, step_minutes: float,
    start: str | None, end: str | None, stride: int,
) -> list[Case]:
    windows = plan_windows(times, history, lead_steps, step_minutes, start, end, stride)
    return [Case(int(s), init) for s, init in zip(windows.starts, windows.inits, strict=True)]


def report_header(store: str, product: str, step: float, leads: int, km: float, crop: int | None, stride: int,
                  start: str | None, end: str | None, n_cases: int, n_dry: int) -> dict[str, Any]:
    """What every verification report (models run here, or stored forecasts) starts with."""
    return {"store": store, "product": product, "step_minutes": step,
            "lead_minutes": [(k + 1) * step for k in range(leads)], "pixel_size_km": km, "crop": crop,
            "stride": stride, "start": start, "end": end, "n_cases": n_cases, "n_dry_cases_skipped": n_dry}


def evaluate(
    store: str, product: str, models: list[str], out: str | Path, start: str | None = None, end: str | None = None,
    crop: int | None = None, stride: int = 1, lead_steps: int | None = None,
    on_case: Callable[[], None] | None = None, total: Callable[[int], None] | None = None,
    precision: str = "32", time_interpolation: str = "motion", probability_matching: str | None = None,
    keep_case: Callable[[np.ndarray], bool] | None = None, members: int | None = None,
) -> dict[str, Any]:
    """``keep_case``: given a case's frame times (history and leads), False leaves it out (promotion
    scores only cases the candidate never saw); the report counts them (``n_cases_excluded``).
    ``members``: ensemble size of the models that offer one (``steps``; default theirs). Every model is
    also scored probabilistically (``nowcast.probabilistic_verification``): ``probabilistic`` per lead."""
    archive = ProductArchive(store, product)
    if not archive.exists():
        raise KeyError(f"no product {product!r} in {store}")
    forecasters: dict[str, LoadedForecaster] = {}
    for spec in models:
        # "name=spec": a model the caller named (``nowcast.model_names``), reported by that name
        name, _, spec = spec.partition("=") if "=" in spec and not Path(spec).is_file() else ("", "", spec)
        loaded = load_forecaster(spec, precision=precision, time_interpolation=time_interpolation,
                                 probability_matching=probability_matching)
        loaded.name = name or loaded.name
        label = spec if spec == loaded.name else name or f"{loaded.name} ({Path(spec).name})"
        if label in forecasters:  # e.g. two model store versions, both called model.ckpt
            label = f"{loaded.name} ({Path(spec).parent.name}/{Path(spec).name})"
        if label in forecasters:
            raise ValueError(f"model {spec!r} is given twice")
        forecasters[label] = loaded
    times, grid, step = archive_layout(archive)
    for label, f in forecasters.items():
        check_step(step, f.step_minutes, label)
    # by default the shortest any network was trained for, so every model is scored on its own leads
    leads = lead_steps or min((f.default_lead_steps for f in forecasters.values() if f.trainable),
                              default=DEFAULT_LEAD_STEPS)
    history = max(f.frames_needed(step) for f in forecasters.values())  # other steps: resampled in time
    cases = select_cases(times, history, leads, step, start, end, stride)
    excluded = 0
    if keep_case is not None:
        kept = [case for case in cases if keep_case(times[case.start : case.start + history + leads])]
        excluded, cases = len(cases) - len(kept), kept
    if total:
        total(len(cases))
    ys, xs = centre_crop(grid.shape, crop)
    km = pixel_size_km(grid)
    # multi-source networks: their auxiliary products, aligned and regridded onto this product's grid
    auxiliary = {label: AuxiliaryInputs(store, f.auxiliary, grid) for label, f in forecasters.items() if f.auxiliary}
    verifiers = {label: LeadTimeVerifier(leads, step, km) for label in forecasters}
    probabilistic = {label: ProbabilisticVerifier(leads, step) for label, f in forecasters.items()
                     if "probability" in f.outputs}
    archive_array = archive.open()["precip"]
    used, dry, showcase, damaged = [], 0, None, []
    for case in cases:
        try:
            window = archive_array.isel(time=slice(case.start, case.start + history + leads), y=ys, x=xs).values
        except DamagedData as exc:  # skipped, named in the report; the command then exits 65
            damaged.append({"init": utc_text(case.init), "error": str(exc)})
            if on_case:
                on_case()
            continue
        past, future = window[:history], window[history:]
        if is_dry(past[-1]):
            dry += 1
            if on_case:
                on_case()
            continue
        past_times = times[case.start : case.start + history]
        forecasts = {}
        for label, f in forecasters.items():  # an ensemble model's deterministic forecast is its members' mean
            forecasts[label], scored = case_forecasts(
                f, past, leads, step, auxiliary[label].read(past_times, ys, xs) if label in auxiliary else None,
                members)
            verifiers[label].accumulate(forecasts[label], future)
            if scored:
                probabilistic[label].accumulate(future, **scored)
        wetness = float(np.nanmean(future >= 1.0))
        if showcase is None or wetness > showcase[0]:
            showcase = (wetness, case, future, forecasts)
        used.append(utc_text(case.init))
        if on_case:
            on_case()
    results = {label: v.result() for label, v in verifiers.items()}
    report = {
        **report_header(store, product, step, leads, km, crop, stride, start, end, len(used), dry),
        "cases": used,
        **({"n_cases_excluded": excluded} if keep_case is not None else {}),
        **({"damaged_cases_skipped": damaged} if damaged else {}),
        "models": {
            label: {"name": f.name, "identity": f.identity, "source": f.source, "input_steps": f.input_steps,
                    **({"precision": f.precision} if f.trainable else {}),
                    **({"time_interpolation": f.time_interpolation} if f.resamples(step) else {}),
                    "probability_matching": f.probability_matching,
                    "scores": results[label],
                    "outputs": f.outputs,
                    "probabilistic": probabilistic_scores(probabilistic.get(label), results[label]),
                    **({"auxiliary_cases_missing": auxiliary[label].cases_missing} if label in auxiliary else {})}
            for label, f in forecasters.items()
        },
    }
    write_outputs(report, results, showcase, Path(out))
    return report


def write_outputs(report: dict[str, Any], results: dict[str, list[dict]], showcase: Any, out: Path) -> None:
    import json

    from nowcast.plots import animate_case, plot_scores_by_lead

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False))
    report["files"] = {"json": str(out)}
    header = (
        f"# Verification: {report['product']} ({report['n_cases']} cases, "
        f"{report['n_dry_cases_skipped']} dry skipped)\n\n"
    )
    markdown = out.with_suffix(".md")
    markdown.write_text(header + scores_table_markdown(results) + "\n")
    report["files"]["markdown"] = str(markdown)
    write_probabilistic_outputs(report, markdown, out)  # its table, and the reliability diagram PNG
    if report["n_cases"]:
        png = plot_scores_by_lead(results, out.with_name(out.stem + "_csi.png"))
        report["files"]["csi_png"] = str(png)
        _, case, future, forecasts = showcase
        gif = animate_case(future, forecasts, report["lead_minutes"], f"{report['product']} init {case.init}Z",
                           out.with_name(out.stem + "_case.gif"))
        report["files"]["case_gif"] = str(gif)
    out.write_text(json.dumps(report, indent=2, allow_nan=False))
