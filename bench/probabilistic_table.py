"""The probabilistic scores of ``nowcast evaluate`` reports as markdown: Brier score at 1 and 5 mm/h, CRPS
and ROC area at chosen leads, and the reliability check the issue sets (every bin holding at least 1 % of
the pixels within 0.1 of the diagonal).

    python bench/probabilistic_table.py REPORT [REPORT ...] [--crps MODEL=BENCH_JSON ...] [--leads 30 60]

``--crps`` fills the CRPS of a network without members from ``bench/exceedance_network.py``'s output on the
same cases (``nowcast evaluate`` leaves it empty). Prints the markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MIN_SHARE = 0.01  # a bin holding at least this share of the pixels must be within TOLERANCE of the diagonal
TOLERANCE = 0.1


def worst_gap(row: dict, threshold: str) -> tuple[float, int] | None:
    """The largest |observed - forecast| over bins holding >= MIN_SHARE of the pixels, and how many such bins
    (None where the report kept no diagram for this lead)."""
    diagram = (row.get("reliability_diagram") or {}).get(threshold)
    if diagram is None:
        return None
    total = sum(diagram["count"])
    gaps = [abs(o - f) for f, o, n in zip(diagram["forecast_probability"], diagram["observed_frequency"],
                                           diagram["count"], strict=True)
            if n >= MIN_SHARE * total and f is not None and o is not None]
    return (max(gaps) if gaps else 0.0), len(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--crps", nargs="*", default=[], help="MODEL=bench/exceedance_network.py output")
    parser.add_argument("--leads", nargs="*", type=float, default=[30.0, 60.0])
    args = parser.parse_args()
    crps = {}
    for item in args.crps:
        label, path = item.split("=", 1)
        bench = json.loads(Path(path).read_text())
        crps[(label, bench["product"])] = {row["lead_minutes"]: row["crps"] for row in bench["probabilistic"]}
    print("| event | model | lead | BS >= 1 mm/h | BS >= 5 mm/h | CRPS (mm/h) | ROC area >= 1 "
          "| worst reliability gap >= 1 / >= 5 (bins with >= 1 % of pixels) |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.reports:
        report = json.loads(path.read_text())
        for label, model in report["models"].items():
            rows = model.get("probabilistic")
            if not rows or rows[0].get("brier") is None:  # a deterministic model: its CRPS is its MAE
                continue
            for lead in args.leads:
                row = next(r for r in rows if abs(r["lead_minutes"] - lead) < 1e-6)
                value = row["crps"] if row["crps"] is not None else crps.get((label, report["product"]), {}).get(lead)
                gaps = [worst_gap(row, t) for t in ("1.0", "5.0")]
                brier = row["brier"]
                print(f"| {report['product']} | {label} | {lead:g} min | {brier['1.0']:.5f} | {brier['5.0']:.6f} | "
                      + ("" if value is None else f"{value:.4f}") + f" | {row['roc_area']['1.0']:.3f} | "
                      + " / ".join("not kept" if g is None else f"{g[0]:.2f} ({g[1]} bins)" for g in gaps) + " |")


if __name__ == "__main__":
    main()
