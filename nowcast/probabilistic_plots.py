"""The reliability diagram of ``nowcast evaluate``: observed frequency against forecast probability."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import pipelines.plots  # noqa: F401  (selects the Agg backend, as nowcast.plots does)

#: bins with fewer pairs than this are not drawn (their frequency is noise)
MIN_BIN_COUNT = 10


def pick_lead(lead_minutes: list[float], target: float = 30.0) -> int:
    """The index of the lead closest to ``target`` minutes (the diagram shows one lead)."""
    return int(np.argmin([abs(m - target) for m in lead_minutes]))


def plot_reliability_diagram(results: dict[str, list[dict]], out: str | Path, target_minutes: float = 30.0) -> Path:
    """One panel per threshold: each model's reliability curve at the lead closest to ``target_minutes``,
    the diagonal of perfect reliability, and the climatological frequency (horizontal, dotted)."""
    first = next(iter(results.values()))
    lead = pick_lead([row["lead_minutes"] for row in first], target_minutes)
    keys = sorted({key for rows in results.values() for key in rows[lead]["reliability_diagram"]}, key=float)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys), 4.2), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
        for name, rows in results.items():
            diagram = rows[lead]["reliability_diagram"].get(key)
            if diagram is None:  # a store that holds other thresholds
                continue
            points = [(p, o) for p, o, n in zip(diagram["forecast_probability"], diagram["observed_frequency"],
                                                diagram["count"], strict=True)
                      if p is not None and o is not None and n >= MIN_BIN_COUNT]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
            total = sum(diagram["count"])
            if total:  # the observed frequency over all pairs: the no-resolution line
                events = sum(o * n for o, n in zip(diagram["observed_frequency"], diagram["count"], strict=True)
                             if o is not None)
                ax.axhline(events / total, color="grey", lw=0.8, ls=":")
        ax.set_title(f"≥ {float(key):g} mm/h, +{first[lead]['lead_minutes']:g} min")
        ax.set_xlabel("forecast probability")
        ax.set_ylabel("observed frequency")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
