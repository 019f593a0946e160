"""Pictures of rain: one frame (PNG) or a sequence (GIF), with a rain-rate colour scale."""

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


def rain_colormap() -> tuple[ListedColormap, BoundaryNorm]:
    cmap = ListedColormap(RAIN_COLOURS)
    cmap.set_under("white")
    cmap.set_over("#3f007d")
    cmap.set_bad("#d9d9d9")  # nodata
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


def plot_scores_by_lead(results: dict[str, list[dict]], out: str | Path, threshold: float = 1.0) -> Path:
    """CSI at ``threshold`` against lead time, one line per model."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    key = f"{threshold:g}" if f"{threshold:g}" in next(iter(results.values()))[0]["csi"] else str(threshold)
    for name, leads in results.items():
        minutes = [lead["lead_minutes"] for lead in leads]
        values = [np.nan if lead["csi"].get(key) is None else lead["csi"][key] for lead in leads]
        ax.plot(minutes, values, marker="o", label=name)
    ax.set_xlabel("lead time (min)")
    ax.set_ylabel(f"CSI at {threshold:g} mm/h")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def animate_case(
    observed: np.ndarray, forecasts: dict[str, np.ndarray], lead_minutes: list[float], title: str,
    out: str | Path, frame_ms: int = 500,
) -> Path:
    """GIF: the observed sequence beside each model's forecast, one frame per lead time."""
    animate_panels({"observed": observed, **forecasts}, lead_minutes, title, out, frame_ms)
    return Path(out)


def _figure_image(fig: plt.Figure):
    from PIL import Image

    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    plt.close(fig)
    return image


def animate_panels(
    panels: dict[str, np.ndarray], lead_minutes: list[float], title: str, out, frame_ms: int = 500,
) -> None:
    """GIF with one panel per sequence and a rain-rate colour bar; ``out`` is a path or a binary file."""
    cmap, norm = rain_colormap()
    images = []
    cols = min(len(panels), 4)
    rows = (len(panels) + cols - 1) // cols
    for k, minutes in enumerate(lead_minutes):
        size = (max(3.4 * cols + 1.2, 5.6), 3.4 * rows + 1.0)
        fig, axes = plt.subplots(rows, cols, figsize=size, dpi=90, squeeze=False, layout="constrained")
        image = None
        for index, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if index >= len(panels):
                ax.axis("off")
                continue
            name, field = list(panels.items())[index]
            image = ax.imshow(np.ma.masked_invalid(field[k]), cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_title(name, fontsize=11)
        fig.colorbar(image, ax=list(axes.flat), label="rain rate (mm/h); grey: no data", shrink=0.8, extend="max",
                     ticks=TICKS)
        fig.suptitle(f"{title}\nlead +{minutes:g} min", fontsize=12)
        images.append(_figure_image(fig))
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)


def montage(frames: np.ndarray, titles: list[str], title: str, out) -> None:
    """One PNG with every frame side by side and a colour bar; ``out`` is a path or a binary file."""
    cmap, norm = rain_colormap()
    n = len(frames)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 0.8, 2.6 * rows + 0.5), dpi=80, squeeze=False)
    image = None
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k < n:
            image = ax.imshow(np.ma.masked_invalid(frames[k]), cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_title(titles[k], fontsize=9)
        else:
            ax.axis("off")
    fig.colorbar(image, ax=list(axes.flat), label="rain rate (mm/h); grey: no data", shrink=0.8, extend="max",
                 ticks=TICKS)
    fig.suptitle(title, fontsize=10)
    _figure_image(fig).save(out, format="PNG")
