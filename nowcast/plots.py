"""Pictures of forecasts and scores: CSI against lead time (PNG), forecast loops (GIF) and
montages, on the archive's rain-rate colour scale (``pipelines.plots``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from pipelines.plots import TICKS, plot_frame, rain_colormap  # also selects the Agg backend

__all__ = ["animate_case", "animate_panels", "montage", "plot_frame", "plot_scores_by_lead"]


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
