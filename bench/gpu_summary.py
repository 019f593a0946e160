"""Markdown tables from the JSON lines bench/gpu_step.sh collects (bench/models.py, bench/peers.py).

    python bench/gpu_summary.py RESULTS.jsonl [MORE.jsonl ...]

- training: ms per step of each fast path of ours, the fastest peer at the same workload and precision,
  and the peer's time over our best (above 1: we are faster; the issue's target is 2x in bf16), with
  how far each variant's output is from the eager model's (relative L2, same precision) and, for
  scale, how far eager bf16 is from eager float32;
- service inference: end to end and network alone, per shipped network, precision and fast path;
- the largest training batch that fits, and the step at it;
- every line that reported an error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = ("eager", "compile", "auto", "eager+graph", "compile+graph")


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def header(columns: list[str]) -> list[str]:
    """A markdown table's two header lines; a column named with a trailing ':' is right-aligned."""
    names = [c.removesuffix(":") for c in columns]
    return ["| " + " | ".join(names) + " |",
            "| " + " | ".join("---:" if c.endswith(":") else "---" for c in columns) + " |"]


def training(rows: list[dict]) -> list[str]:
    ours = [r for r in rows if r.get("implementation") == "nowcast" and "train_ms_per_step" in r
            and r.get("mode") is None]
    peers = [r for r in rows if r.get("implementation") not in (None, "nowcast") and "train_ms_per_step" in r]
    keys = sorted({(r["workload"], r["precision"], r["model"]) for r in ours + peers})
    out = ["| workload | precision | model | " + " | ".join(f"{v} ms" for v in ORDER) +
           " | fastest peer ms | peer / our best | output diff to eager (same precision) | "
           "eager bf16 vs float32 | loss at step: eager / best |",
           "| --- | --- | --- | " + " | ".join("---:" for _ in ORDER) + " | --- | ---: | --- | ---: | --- |"]
    for workload, precision, model in keys:
        mine = {r["fast_path"]: r for r in ours if (r["workload"], r["precision"], r["model"]) == (workload, precision,
                                                                                                   model)}
        theirs = [r for r in peers if (r["workload"], r["precision"], r["model"]) == (workload, precision, model)]
        peer = min(theirs, key=lambda r: r["train_ms_per_step"], default=None)
        best = min(mine.values(), key=lambda r: r["train_ms_per_step"], default=None)
        cells = [fmt(mine[v]["train_ms_per_step"]) if v in mine else "" for v in ORDER]
        peer_text = f"{peer['implementation']} {peer['train_ms_per_step']:.1f}" if peer else "-"
        ratio = f"{peer['train_ms_per_step'] / best['train_ms_per_step']:.2f}x ({best['fast_path']})" \
            if peer and best else "-"
        diffs = ", ".join(f"{v} {mine[v]['rel_diff_vs_eager']['same_precision']:.1e}" for v in ORDER
                          if v in mine and v != "eager" and "rel_diff_vs_eager" in mine[v])
        scale = next((f"{r['rel_diff_vs_eager']['float32']:.1e}" for r in mine.values()
                      if r["fast_path"] == "eager" and precision == "bf16" and "rel_diff_vs_eager" in r), "-")
        loss = "-"
        if "eager" in mine and best is not None:
            loss = (f"{fmt(mine['eager']['loss_at_step']['loss'], 5)} / "
                    f"{fmt(best['loss_at_step']['loss'], 5)}")
        out.append(f"| {workload} | {precision} | {model} | " + " | ".join(cells) +
                   f" | {peer_text} | {ratio} | {diffs or '-'} | {scale} | {loss} |")
    return out


def service(rows: list[dict]) -> list[str]:
    lines = [r for r in rows if r.get("mode") == "service" and "predict_ms" in r]
    out = header(["model", "grid:", "leads:", "precision", "fast path", "predict ms (end to end):", "network ms:",
                  "first call s:", "diff to first variant:", "peak GPU MB:"])
    for r in lines:
        out.append(f"| {r['model']} | {r['grid']} | {r['leads']} | {r['precision']} | {r['fast_path']} | "
                   f"{r['predict_ms']:.1f} | {r['network_ms']:.1f} | {r['first_call_s']:.1f} | "
                   f"{r['rel_diff_vs_first_variant']:.1e} | {r.get('peak_gpu_mb', '-')} |")
    return out


def max_batch(rows: list[dict]) -> list[str]:
    lines = [r for r in rows if r.get("mode") == "max_batch" and "max_batch" in r]
    out = header(["model", "workload", "precision", "fast path", "largest batch:", "first failing:", "bound",
                  "ms per step at it:", "samples/s:", "peak GPU MB:", "probes:"])
    for r in lines:
        timed = r.get("timed_at_max") or {}
        out.append(f"| {r['model']} | {r['workload']} | {r['precision']} | {r['fast_path']} | {r['max_batch']} | "
                   f"{r['first_failing_batch'] or '-'} | {r['bound']} | {fmt(timed.get('train_ms_per_step'))} | "
                   f"{fmt(timed.get('train_samples_per_s'))} | {timed.get('peak_gpu_mb', '-')} | {len(r['probes'])} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path)
    rows = load(parser.parse_args().results)
    env = next((r["environment"] for r in rows if "environment" in r), {})
    print(f"environment: {json.dumps(env)}\n")
    for title, table in (("Training step", training(rows)), ("Service inference", service(rows)),
                         ("Largest batch", max_batch(rows))):
        print(f"### {title}\n")
        print("\n".join(table) + "\n")
    errors = [r for r in rows if "error" in r]
    if errors:
        print("### Errors\n")
        for r in errors:
            what = {k: v for k, v in r.items() if k not in ("error", "probes")}
            print(f"- {json.dumps(what)}: {r['error'][:300]}")


if __name__ == "__main__":
    main()
