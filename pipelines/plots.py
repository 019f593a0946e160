"""A stored frame as a picture: the rain-rate colour scale every picture of rain uses, and one frame as a PNG.

It lives with the archive so that ``nowcast store show`` needs nothing above ``pipelines``;
``nowcast.plots`` draws forecasts and scores with the same scale."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402

#: mm/h class boundaries and colours, in the style of operational radar displays
RAIN_LEVELS = [0.1, 0.5, 1, 2, 5, 10, 20, 30, 50, 100]
#: the top of the scale: ingest masks rates above it as clutter, so nothing stored is higher
MAX_RAIN_MM_H = 300
RAIN_COLOURS = ["#c6dbef", "#6baed6", "#2171b5", "#41ab5d", "#addd8e", "#fee391",
                "#fe9929", "#ec7014", "#cb181d", "#7a0177"]


TICKS = [*RAIN_LEVELS, MAX_RAIN_MM_H]
#: probability maps (P(rate >= threshold)): classes of 0.1 from 0.1 to 1 (the last includes 1), each a colour
#: of matplotlib's RdPu, away from the rain scale's blues and greens; under 0.1 is left blank, like dry rain
PROBABILITY_LEVELS = [round(0.1 * k, 1) for k in range(1, 11)]
PROBABILITY_COLOURS = ["#fcd0cc", "#fbb6bc", "#f994b1", "#f767a1", "#e23e99", "#c01588", "#99017b", "#6f0174",
                       "#49006a"]
#: nodata, in every picture: outside the radars' coverage
NODATA_COLOUR = "#d9d9d9"


def rain_colormap() -> tuple[ListedColormap, BoundaryNorm]:
    cmap = ListedColormap(RAIN_COLOURS)
    cmap.set_under("white")
    cmap.set_over("#3f007d")
    cmap.set_bad(NODATA_COLOUR)
    return cmap, BoundaryNorm(RAIN_LEVELS + [MAX_RAIN_MM_H], cmap.N)


def plot_frame(
    rain_rate: np.ndarray, title: str, out: str | Path, extent: tuple[float, float, float, float] | None = None,
    units: str = "km",
) -> Path:
    """Save one rain-rate field (row 0 = north) as a PNG; grey is nodata, white is dry."""
    cmap, norm = rain_colormap()
    ny, nx = rain_rate.shape
    fig, ax = plt.subplots(figsize=(6, 6 * ny / nx + 0.6), dpi=100)
    image = ax.imshow(np.ma.masked_invalid(rain_rate), cmap=cmap, norm=norm, extent=extent,
                      origin="upper", interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"x ({units})")
    ax.set_ylabel(f"y ({units})")
    fig.colorbar(image, ax=ax, label="rain rate (mm/h); grey: no data", extend="max", shrink=0.8, ticks=TICKS)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
