"""Training-step and inference speed of our networks on named workloads (one JSON object per line).

    python bench/models.py --model NAME --workload W1|W2 [--device cpu|cuda] [--precision 32|bf16]
        [--compile none|default|reduce-overhead|max-autotune]
        [--fast-path eager|compile|auto|eager+graph|compile+graph ...] [--no-fuse-convs]
        [--infer-batches N ...]

This command line is a contract. Workloads and what a step is: ``bench/harness.py``; the
public implementations run through the same harness in ``bench/peers.py``. ``--model``,
``--workload``, ``--precision`` and ``--fast-path`` each take several values: one JSON line per
combination, all in one process (``--fast-path`` default: eager, the model as written).

Fast paths (``nowcast.models.fast_path``): ``compile`` runs each recurrent cell step compiled
(``torch.compile(dynamic=False)``, PredRNN's gates from one convolution unless ``--no-fuse-convs``),
``auto`` compiles on CUDA only, ``+graph`` captures the whole training step and each inference forward in
a CUDA graph and replays it (CUDA only). Every line says how far the variant's output (a forward of the
fresh, seeded model on the training batch) is from the eager model's at the same precision and at
float32 (``rel_diff_vs_eager``: ||out - eager|| / ||eager||), the loss after the same number of training
steps, and how long its first forward took (compilation included).

Two more measurements, each a JSON line per model, workload, precision and fast path:

    python bench/models.py --max-batch --model M --workload W2 R256 [--precision bf16] [--batch-limit N]

the largest training batch that fits (CUDA: probes until out of memory, from a linear fit of the peak
memory at the workload's batch and twice it; CPU: up to ``--batch-limit``), and the step at that batch;

    python bench/models.py --service --model convlstm [--grid 512 --leads 12] [--fast-path ...]

the forecast service's inference of a shipped network (``nowcast/weights/<model>.ckpt``) on one
grid x grid forecast of ``--leads`` leads at batch 1, the way ``LoadedForecaster.predict`` runs it
(mm/h frames with nodata -> normalise -> network -> mm/h): ``predict_ms`` end to end, ``network_ms``
the network alone on a tensor already on the device. Where ``nowcast.forecaster`` imports (it needs
zarr), the replica's forecast is checked against ``LoadedForecaster.predict``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import (
    WORKLOADS,
    Workload,
    autocast_for,
    batch_for,
    common_arguments,
    environment,
    measure,
    median_ms,
    set_threads,
    sync,
    workload_dict,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain copy of the repository too

from nowcast.models import BASELINES, MODELS, get_model, model_class  # noqa: E402
from nowcast.models.fast_path import CudaGraphed, set_fast_path  # noqa: E402

#: our networks a bench runs (the hybrids' extra input is the extrapolation, timed elsewhere)
NETWORKS = sorted(n for n in MODELS if n not in BASELINES and not model_class(n).motion)
#: ``--fast-path`` values: a cell mode (nowcast.models.fast_path), optionally with the step in a CUDA graph
VARIANTS = ("eager", "compile", "auto", "eager+graph", "compile+graph")
WEIGHTS = Path(__file__).resolve().parents[1] / "nowcast" / "weights"


def build(name: str, workload) -> torch.nn.Module:
    return get_model(name, in_channels=workload.channels, hidden=(workload.hidden,) * workload.layers,
                     kernel=workload.kernel, patch=workload.patch)


def recurrent_steps(name: str, workload) -> int:
    """Cell steps one forward runs: the encoder-forecaster ConvLSTM reads T_in and writes T_out frames;
    the frame-feeding models (PredRNN, SA-ConvLSTM) step T_in + T_out - 1 times."""
    return workload.t_in + workload.t_out - (0 if name == "convlstm" else 1)


def prepare(args: argparse.Namespace) -> tuple[torch.device, Workload, torch.nn.Module]:
    """Device (with its threads), workload and a seeded model from the common options."""
    device = torch.device(args.device)
    set_threads(device, args.threads)
    torch.manual_seed(0)
    workload = WORKLOADS[args.workload]
    return device, workload, build(args.model, workload)


def split_variant(variant: str) -> tuple[str, bool]:
    """"compile+graph" -> ("compile", True)."""
    mode, _, graph = variant.partition("+")
    return mode, graph == "graph"


def seeded(name: str, workload: Workload, variant: str, fuse: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return set_fast_path(build(name, workload), split_variant(variant)[0], fuse)


def unroll(network: torch.nn.Module, t_out: int):
    """The harness's ``forward(x, targets)`` for ``network``: t_out frames, its own predictions fed back."""
    return lambda x, _targets=None: network(x, t_out)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def first_forward(model: torch.nn.Module, forward, x: torch.Tensor, device: torch.device, precision: str
                  ) -> tuple[torch.Tensor, float]:
    """The fresh model's output on ``x`` in training mode (the training graphs), and the seconds it took."""
    model.to(device).train()
    start = time.perf_counter()
    with autocast_for(device, precision):
        out = forward(x).float().detach()
    sync(device)
    return out, time.perf_counter() - start


def error_line(kind: str, **what: Any) -> None:
    print(json.dumps({"mode": kind, **what}), flush=True)


def sweep(args: argparse.Namespace, device: torch.device) -> None:
    """One JSON line per model x workload x precision x fast path."""
    for name in args.model:
        for wname in args.workload:
            workload = WORKLOADS[wname]
            x, _ = batch_for(workload, device)
            references: dict[str, torch.Tensor] = {}

            def reference(precision: str, name: str = name, workload: Workload = workload,
                          x: torch.Tensor = x, references: dict = references) -> torch.Tensor:
                if precision not in references:
                    model = seeded(name, workload, "eager", True)
                    references[precision] = first_forward(model, unroll(model, workload.t_out), x, device,
                                                          precision)[0]
                    del model
                return references[precision]

            for precision in args.precision:
                for variant in args.fast_path:
                    spec = {"model": name, "workload": wname, "precision": precision, "fast_path": variant}
                    try:
                        mode, graph = split_variant(variant)
                        model = seeded(name, workload, variant, not args.no_fuse_convs)
                        network = model if args.compile == "none" else torch.compile(model, mode=args.compile)
                        out, first_s = first_forward(model, unroll(network, workload.t_out), x, device, precision)
                        diffs = {"same_precision": relative(out, reference(precision)),
                                 "float32": relative(out, reference("32"))}
                        del out
                        result = measure(model, unroll(network, workload.t_out), workload, device, precision,
                                         args.repeats, cuda_graph=graph, infer_batches=args.infer_batches)
                        print(json.dumps({"model": name, "implementation": "nowcast", "compile": args.compile,
                                          "fast_path": variant, "fuse_convs": not args.no_fuse_convs, **result,
                                          "rel_diff_vs_eager": diffs, "first_forward_s": round(first_s, 2),
                                          "recurrent_steps": recurrent_steps(name, workload),
                                          "workload_spec": workload_dict(workload),
                                          "environment": environment(device)}), flush=True)
                    except Exception as exc:  # one failing variant (a compile error, out of memory) is reported
                        error_line("train", **spec, error=f"{type(exc).__name__}: {exc}"[:2000])
                    finally:
                        model = network = None
                        free(device)


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


def max_batch(args: argparse.Namespace, device: torch.device) -> None:
    """The largest training batch that fits, per model x workload x precision x fast path."""
    limit = args.batch_limit or (4096 if device.type == "cuda" else 8)
    for name in args.model:
        for wname in args.workload:
            workload = WORKLOADS[wname]
            for precision in args.precision:
                for variant in args.fast_path:
                    mode, graph = split_variant(variant)
                    if graph:
                        error_line("max_batch", model=name, workload=wname, precision=precision, fast_path=variant,
                                   error="the search runs without CUDA graphs: use eager or compile")
                        continue
                    model = seeded(name, workload, variant, not args.no_fuse_convs).to(device).train()
                    probes: list[dict[str, Any]] = []

                    def fits(batch: int, model: torch.nn.Module = model, workload: Workload = workload,
                             precision: str = precision, probes: list = probes) -> bool:
                        """One training step at ``batch``: True if it ran (its peak memory is kept)."""
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        start = time.perf_counter()
                        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
                        try:
                            x, y = batch_for(workload, device, batch)
                            with autocast_for(device, precision):
                                loss = torch.nn.functional.mse_loss(model(x, workload.t_out).float(), y)
                            loss.backward()
                            optimiser.step()
                            sync(device)
                            ok = True
                        except Exception as exc:
                            if not out_of_memory(exc):
                                raise
                            ok = False
                        finally:
                            x = y = loss = None
                            model.zero_grad(set_to_none=True)
                            del optimiser
                            free(device)
                        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
                        probes.append({"batch": batch, "fits": ok, "seconds": round(time.perf_counter() - start, 2),
                                       **({"peak_gpu_mb": round(peak, 1)} if ok and peak is not None else {})})
                        return ok

                    try:
                        lo, hi, bound = 0, None, "memory"
                        b0 = min(workload.batch, limit)
                        if fits(b0):
                            lo = b0
                            guess = min(2 * b0, limit)
                            if device.type == "cuda" and guess > b0 and fits(guess):
                                lo = guess
                                p1, p2 = probes[0]["peak_gpu_mb"], probes[1]["peak_gpu_mb"]
                                per_sample = max((p2 - p1) / (guess - b0), 1e-3)
                                total = torch.cuda.mem_get_info(device)[1] / 2**20
                                guess = int((0.92 * total - (p1 - per_sample * b0)) / per_sample)
                            elif device.type == "cuda" and guess > b0:
                                hi = guess
                            while len(probes) < args.max_probes:
                                if hi is not None and hi - lo <= max(1, int(args.batch_tolerance * lo)):
                                    break
                                if lo >= limit:
                                    bound = "limit"
                                    break
                                cand = min(max(guess, lo + 1), limit, hi - 1 if hi is not None else limit)
                                if fits(cand):
                                    lo = cand
                                    guess = (lo + hi) // 2 if hi is not None else int(lo * 1.25) + 1
                                else:
                                    hi = cand
                                    guess = (lo + hi) // 2
                        result: dict[str, Any] = {}
                        for batch in (lo, int(lo * 0.95)):  # the timed run may need a little more memory
                            if batch < 1:
                                break
                            try:
                                result = measure(model, unroll(model, workload.t_out), workload, device, precision,
                                                 args.repeats, infer_batches=(), batch=batch)
                                break
                            except Exception as exc:
                                if not out_of_memory(exc):
                                    raise
                                free(device)
                        print(json.dumps({"mode": "max_batch", "model": name, "implementation": "nowcast",
                                          "fast_path": variant, "workload": wname, "precision": precision,
                                          "max_batch": lo, "first_failing_batch": hi, "bound": bound,
                                          "batch_limit": limit, "probes": probes, "timed_at_max": result,
                                          "workload_spec": workload_dict(workload),
                                          "environment": environment(device)}), flush=True)
                    except Exception as exc:
                        error_line("max_batch", model=name, workload=wname, precision=precision, fast_path=variant,
                                   probes=probes, error=f"{type(exc).__name__}: {exc}"[:2000])
                    finally:
                        model = None
                        free(device)


def service(args: argparse.Namespace, device: torch.device) -> None:
    """A shipped network's forecast of one grid x grid field, ``--leads`` leads, batch 1, per precision and
    fast path."""
    from pipelines.normalization import RainNormalizer

    for name in args.model:
        path = WEIGHTS / f"{name}.ckpt"
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        info = checkpoint["nowcast"]
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        t_in, normalizer = int(info["t_in"]), RainNormalizer.from_dict(info["normalization"])
        kind = model_class(info["model"])
        if kind.motion or (getattr(kind, "attention_tile", None) or args.grid) < args.grid:
            error_line("service", model=name, error="the service runs this network in tiles or with its baseline "
                       "(nowcast.forecaster); this bench times plain networks on the whole grid")
            continue
        frames = storm_frames(t_in, args.grid)
        frames[:, : args.grid // 8, : args.grid // 8] = np.nan  # a corner without radar: nodata in, nodata out
        batch = frames[None]
        reference: dict[str, np.ndarray] = {}
        for precision in args.precision:
            for variant in args.fast_path:
                spec = {"mode": "service", "model": name, "precision": precision, "fast_path": variant}
                try:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    mode, graph = split_variant(variant)
                    model = set_fast_path(get_model(info["model"], **info["model_kwargs"]), mode,
                                          not args.no_fuse_convs)
                    model.load_state_dict(state)
                    model.to(device).eval()
                    z_dev = normalizer.forward(torch.from_numpy(np.nan_to_num(batch, nan=0.0)))[:, :, None].to(device)
                    start = time.perf_counter()
                    run = network_call(model, args.leads, device, precision, graph, z_dev)
                    run(z_dev)
                    sync(device)
                    first_s = time.perf_counter() - start
                    forecast = service_predict(run, normalizer, batch, device)
                    network_ms = median_ms(partial(run, z_dev), device, args.repeats)
                    predict_ms = median_ms(partial(service_predict, run, normalizer, batch, device), device,
                                           args.repeats)
                    line: dict[str, Any] = {
                        **spec, "implementation": "nowcast", "weights": str(path.name), "architecture": info["model"],
                        "model_kwargs": info["model_kwargs"], "grid": args.grid, "leads": args.leads, "batch": 1,
                        "input_steps": t_in, "predict_ms": round(predict_ms, 2), "network_ms": round(network_ms, 2),
                        "first_call_s": round(first_s, 2), "device": device.type,
                    }
                    valid = ~np.isnan(forecast)
                    if precision not in reference:
                        reference[precision] = forecast
                    line["rel_diff_vs_first_variant"] = float(
                        np.linalg.norm(forecast[valid] - reference[precision][valid])
                        / max(np.linalg.norm(reference[precision][valid]), 1e-30))
                    line["nodata_kept"] = bool(np.isnan(forecast[0, :, : args.grid // 8, : args.grid // 8]).all())
                    line["matches_forecaster"] = matches_forecaster(name, batch, args.leads, precision, forecast)
                    if device.type == "cuda":
                        line["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                    line["environment"] = environment(device)
                    print(json.dumps(line), flush=True)
                except Exception as exc:
                    error_line("service", **{k: v for k, v in spec.items() if k != "mode"},
                               error=f"{type(exc).__name__}: {exc}"[:2000])
                finally:
                    model = run = None
                    free(device)


def storm_frames(steps: int, size: int, cells: int = 24, seed: int = 1) -> np.ndarray:
    """[steps, size, size] mm/h: Gaussian rain cells drifting east-north-east, 0.5-60 mm/h at their cores
    (pipelines.synthetic's idea without its grid, which needs pyproj)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    centres = rng.uniform(0, size, (cells, 2))
    sigmas = rng.uniform(size / 64, size / 12, cells)
    peaks = rng.uniform(0.5, 60.0, cells)
    frames = np.zeros((steps, size, size), np.float32)
    for t in range(steps):
        for (cy, cx), sigma, peak in zip(centres + t * np.array([-0.5, 1.5]), sigmas, peaks, strict=True):
            frames[t] += peak * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return np.where(frames < 0.1, 0.0, frames).astype(np.float32)


def network_call(model: torch.nn.Module, leads: int, device: torch.device, precision: str, graph: bool,
                 example: torch.Tensor):
    """``z -> model(z, leads)`` as the service runs it (no grad, autocast at ``precision``); ``graph``:
    replayed from a CUDA graph captured on ``example``'s shape."""
    def network(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast_for(device, precision, cache=not graph):
            return model(z, leads)

    return CudaGraphed(network, example) if graph else network


def service_predict(run, normalizer, frames_mm_h: np.ndarray, device: torch.device) -> np.ndarray:
    """``LoadedForecaster.predict`` of a plain network at its own step (nowcast.forecaster._predict):
    [B, T, H, W] mm/h with NaN nodata -> [B, leads, H, W] mm/h, NaN where the last frame is."""
    nodata = np.isnan(frames_mm_h[:, -1])
    ny, nx = frames_mm_h.shape[-2:]
    z = normalizer.forward(torch.from_numpy(np.nan_to_num(frames_mm_h, nan=0.0)))[:, :, None]
    out = run(z.to(device))[:, :, 0, :ny, :nx]
    rain = normalizer.inverse(out.float()).cpu().numpy()
    return np.where(nodata[:, None], np.float32(np.nan), rain)


def matches_forecaster(name: str, batch: np.ndarray, leads: int, precision: str, forecast: np.ndarray) -> bool | None:
    """Whether ``LoadedForecaster.predict`` gives this forecast (None where nowcast.forecaster cannot be
    imported, e.g. without zarr); float32 only: bf16 rounding differs between devices."""
    if precision != "32":
        return None
    try:
        from nowcast.forecaster import load_forecaster
    except ImportError:
        return None
    expected = load_forecaster(name).predict(batch, leads)
    return bool(np.allclose(forecast, expected, rtol=1e-4, atol=1e-4, equal_nan=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, NETWORKS, many=True)
    parser.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"],
                        help="torch.compile the whole network in this mode (reduce-overhead: CUDA graphs of the "
                             "unroll); compilation happens in the warm-ups, outside the timed steps")
    parser.add_argument("--fast-path", nargs="+", default=["eager"], choices=VARIANTS,
                        help="the recurrent cells' path (nowcast.models.fast_path); +graph: CUDA graphs (CUDA only)")
    parser.add_argument("--no-fuse-convs", action="store_true",
                        help="compiled PredRNN cells keep conv_x, conv_h and conv_m apart (default: one convolution)")
    parser.add_argument("--infer-batches", nargs="*", type=int, default=None,
                        help="inference batches timed (default: 1 and the workload's; none: no inference)")
    parser.add_argument("--max-batch", action="store_true", help="the largest training batch that fits (see above)")
    parser.add_argument("--batch-limit", type=int, default=None, help="--max-batch: largest batch tried "
                        "(default 4096 on CUDA, 8 on CPU)")
    parser.add_argument("--max-probes", type=int, default=12, help="--max-batch: training steps tried at most")
    parser.add_argument("--batch-tolerance", type=float, default=0.05,
                        help="--max-batch: stop once the first failing batch is within this fraction of the largest")
    parser.add_argument("--service", action="store_true", help="service inference of a shipped network (see above)")
    parser.add_argument("--grid", type=int, default=512, help="--service: grid side, pixels")
    parser.add_argument("--leads", type=int, default=12, help="--service: lead steps")
    args = parser.parse_args()
    if args.infer_batches is not None:
        args.infer_batches = tuple(args.infer_batches)
    device = torch.device(args.device)
    if device.type != "cuda" and any(split_variant(v)[1] for v in args.fast_path):
        parser.error("+graph fast paths need --device cuda (CUDA graphs)")
    if not args.service and not args.workload:
        parser.error("--workload is required (except with --service)")
    set_threads(device, args.threads)
    if args.service:
        service(args, device)
    elif args.max_batch:
        max_batch(args, device)
    else:
        sweep(args, device)


if __name__ == "__main__":
    main()
