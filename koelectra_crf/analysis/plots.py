"""PNG charts of the analyses, drawn with matplotlib's object API (no pyplot state, no display needed)."""

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

# Fonts with Hangul glyphs, tried in order; matplotlib's default (DejaVu Sans) has none.
KOREAN_FONTS = ["NanumGothic", "Noto Sans CJK KR", "Noto Sans KR", "Malgun Gothic", "AppleGothic", "UnDotum"]


@contextlib.contextmanager
def _korean_text() -> Iterator[None]:
    """Draw with a Hangul font when one is installed; otherwise say once that Hangul shows as boxes."""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    fonts = [name for name in KOREAN_FONTS if name in installed]
    if not fonts:
        logger.warning("no Korean font found (e.g. fonts-nanum): Hangul labels will show as boxes")
    with matplotlib.rc_context({"font.family": [*fonts, "DejaVu Sans"]}), warnings.catch_warnings():
        # The per-glyph warnings would repeat the one above for every character.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        yield


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def bar_chart(
    path: Path,
    categories: Sequence[str],
    series: dict[str, Sequence[float]],
    errors: dict[str, Sequence[float]] | None = None,
    title: str = "",
    ylabel: str = "",
) -> Path:
    """Grouped bars: one group per category, one bar per series, with optional error bars (e.g. std)."""
    figure = Figure(figsize=(max(6.0, 0.9 * len(categories) * len(series)), 4.5), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(series)
    positions = np.arange(len(categories))
    for k, (name, values) in enumerate(series.items()):
        bars = axes.bar(
            positions + k * width, values, width, label=name, yerr=None if errors is None else errors[name], capsize=3
        )
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_xticks(positions + width * (len(series) - 1) / 2, categories)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if len(series) > 1:
        axes.legend()
    return _save(figure, path)


def heatmap(
    path: Path,
    matrix: np.ndarray,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """A matrix as colours, each cell annotated with its value."""
    size = max(5.0, 0.45 * max(matrix.shape))
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    axes.set_xticks(range(len(column_labels)), column_labels, rotation=90)
    axes.set_yticks(range(len(row_labels)), row_labels)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        axes.text(
            j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white" if value > threshold else "black"
        )
    return _save(figure, path)


def attention_grid(path: Path, tokens: Sequence[str], maps: dict[tuple[int, int], np.ndarray], title: str = "") -> Path:
    """One attention heatmap (query rows, key columns) per (layer, head), layers as rows of the grid."""
    layers = sorted({layer for layer, _ in maps})
    heads = sorted({head for _, head in maps})
    cell = max(3.0, 0.18 * len(tokens))
    figure = Figure(figsize=(cell * len(heads), cell * len(layers)), layout="constrained")
    grid = figure.subplots(len(layers), len(heads), squeeze=False)
    with _korean_text():
        for (layer, head), attention in maps.items():
            axes = grid[layers.index(layer)][heads.index(head)]
            axes.imshow(attention, cmap="viridis", vmin=0.0)
            axes.set_title(f"layer {layer}, head {head}", fontsize=9)
            axes.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
            axes.set_yticks(range(len(tokens)), tokens, fontsize=6)
        figure.suptitle(title)
        return _save(figure, path)


def attention_by_layer(path: Path, shares: np.ndarray, uniform: float, title: str = "") -> Path:
    """Share of attention to entity tokens per layer: mean over heads, the range over heads shaded, and the share
    uniform attention would give (dashed)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    layers = np.arange(len(shares))
    axes.plot(layers, shares.mean(axis=1), "-o", label="mean over heads")
    axes.fill_between(layers, shares.min(axis=1), shares.max(axis=1), alpha=0.25, label="range over heads")
    axes.axhline(uniform, linestyle="--", color="black", label="uniform attention")
    axes.set_xticks(layers)
    axes.set(title=title, xlabel="layer", ylabel="share of attention to entity tokens", ylim=(0, None))
    axes.legend(fontsize=8)
    return _save(figure, path)


def reliability_diagram(path: Path, panels: dict[str, dict[str, list[dict]]], num_bins: int) -> Path:
    """Accuracy against mean confidence per bin, one panel per level (token, entity, ...), one line per model
    (before/after temperature scaling); the diagonal is perfect calibration.

    `panels[level][model]` is a list of bins as written by `calibration.reliability_bins` (empty bins skipped).
    """
    figure = Figure(figsize=(5.5 * len(panels), 5), layout="constrained")
    for axes, (level, models) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels.items(), strict=True):
        axes.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        for name, bins in models.items():
            filled = [b for b in bins if b["count"]]
            axes.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "-o", label=name)
        axes.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence",
            ylabel="accuracy",
            title=f"{level} level, {num_bins} equal-width bins",
        )
        axes.legend(fontsize=8)
    return _save(figure, path)
