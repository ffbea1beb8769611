"""Figures of a `speckv bench` run (PNG, matplotlib's non-interactive backend; matplotlib is the `plots` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .summary import CompressionSummary, MethodSummary, is_constant

__all__ = ["bench_figures", "bench_plots"]

_MAX_SHOWN = 20
_COLORS = {"target": "grey", "hf": "tab:orange", "speckv": "tab:blue", "oracle": "tab:green"}
# Legends sit right of the axes, where they cover no bar; `bbox_inches="tight"` keeps them in the file.
_LEGEND = {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install matplotlib.") from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _median_bars(
    ax: Any, rows: Sequence[MethodSummary], medians: list[float], iqrs: Sequence[tuple[float, float]]
) -> None:
    """Bars at the medians with the interquartile ranges as error bars (a median lies inside its own IQR)."""
    x = range(len(rows))
    errors = [
        [max(median - low, 0.0) for median, (low, _) in zip(medians, iqrs, strict=True)],
        [max(high - median, 0.0) for median, (_, high) in zip(medians, iqrs, strict=True)],
    ]
    ax.bar(x, medians, color=[_COLORS[r.kind] for r in rows], yerr=errors, capsize=2)
    ax.set_xticks(list(x), [r.method for r in rows], rotation=30, ha="right", fontsize=8)


def _paired_figure(plt: Any, results: Sequence[MethodSummary], compressions: Sequence[CompressionSummary]) -> Any:
    fig, axes = plt.subplots(len(compressions), 1, figsize=(10, 3.2 * len(compressions)), squeeze=False)
    for ax, overall in zip(axes[:, 0], compressions, strict=True):
        rows = [r for r in results if r.compression == overall.compression]
        _median_bars(ax, rows, [r.median_speedup for r in rows], [r.iqr_speedup for r in rows])
        ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="target alone")
        ax.set_ylabel("paired speedup over target-only")
        ax.set_title(
            f"{overall.compression} target: median per-call speedup, IQR as error bars (detected: {overall.detected})",
            fontsize=10,
        )
        ax.legend(**_LEGEND)
    fig.tight_layout()
    return fig


def _rate_figure(plt: Any, results: Sequence[MethodSummary], compressions: Sequence[CompressionSummary]) -> Any:
    fig, axes = plt.subplots(len(compressions), 1, figsize=(10, 3.2 * len(compressions)), squeeze=False)
    for ax, overall in zip(axes[:, 0], compressions, strict=True):
        rows = [r for r in results if r.compression == overall.compression]
        _median_bars(ax, rows, [r.median_tokens_per_s for r in rows], [r.iqr_tokens_per_s for r in rows])
        oracle = next((r for r in rows if r.method == "oracle"), None)  # the draft's, which the modeled line prices
        if oracle is not None:
            ax.axhline(oracle.median_tokens_per_s, color="tab:green", ls="--", label="oracle (median call)")
        if overall.modeled_oracle_tokens_per_s:
            ax.axhline(overall.modeled_oracle_tokens_per_s, color="tab:green", ls=":", label="oracle (modeled)")
        ax.set_ylabel("tokens/s (median call)")
        ax.set_title(f"{overall.compression} target (detected: {overall.detected})", fontsize=10)
        if oracle is not None or overall.modeled_oracle_tokens_per_s:
            ax.legend(**_LEGEND)
    fig.tight_layout()
    return fig


def _histogram_figure(
    plt: Any,
    results: Sequence[MethodSummary],
    compressions: Sequence[CompressionSummary],
    attribute: str,
    label: str,
) -> Any:
    fig, axes = plt.subplots(len(compressions), 1, figsize=(9, 3 * len(compressions)), squeeze=False)
    for ax, overall in zip(axes[:, 0], compressions, strict=True):
        # A constant γ is a spike: only the best one is drawn, next to the policies and the oracle.
        shown = [
            r
            for r in results
            if r.compression == overall.compression
            and getattr(r, attribute)
            and (not is_constant(r.method) or r.method == overall.best_fixed)
        ]
        keys = sorted({k for r in shown for k in getattr(r, attribute) if k <= _MAX_SHOWN})
        width = 0.8 / max(len(shown), 1)
        for i, r in enumerate(shown):
            histogram = getattr(r, attribute)
            total = sum(histogram.values())
            # Side by side around each integer, so that every method's bar stays visible.
            offset = (i - (len(shown) - 1) / 2) * width
            ax.bar([k + offset for k in keys], [histogram.get(k, 0) / total for k in keys], width, label=r.method)
        if keys:
            ax.set_xticks(list(range(keys[0], keys[-1] + 1)))
        ax.set_xlabel(f"{label} (up to {_MAX_SHOWN})")
        ax.set_ylabel("share of steps")
        ax.set_title(overall.compression, fontsize=10)
        if shown:
            ax.legend(**_LEGEND)
    fig.tight_layout()
    return fig


def bench_figures(results: Sequence[MethodSummary], compressions: Sequence[CompressionSummary]) -> dict[str, Any]:
    """The figures of a run, one panel per compression in each, not yet written.

    - `paired_speedup.png`: the paired speedup over target-only by method (the median of each call's speedup on the
      same prompt and repeat), with its interquartile range as error bars and target-only's 1.0 as a line;
    - `tokens_per_s.png`: the median call's tokens per second by method, with the interquartile range over calls as
      error bars, and the oracle's median call and the modeled oracle as lines;
    - `gamma_distribution.png`: share of steps by drafted tokens γ (up to 20), as bars side by side, for the SpecKV
      policies, the best constant γ and the oracle;
    - `accepted_runs.png`: share of steps by accepted run length, for the same methods.

    Args:
        results: every method summary.
        compressions: every compression summary.

    Returns:
        File name -> matplotlib `Figure` (close them with `matplotlib.pyplot.close`).

    Raises:
        ImportError: when matplotlib is missing.
    """
    plt = _pyplot()
    return {
        "paired_speedup.png": _paired_figure(plt, results, compressions),
        "tokens_per_s.png": _rate_figure(plt, results, compressions),
        "gamma_distribution.png": _histogram_figure(plt, results, compressions, "gamma_histogram", "drafted tokens γ"),
        "accepted_runs.png": _histogram_figure(
            plt, results, compressions, "accepted_histogram", "accepted run length"
        ),
    }


def bench_plots(
    results: Sequence[MethodSummary], compressions: Sequence[CompressionSummary], out_dir: str | Path
) -> list[Path]:
    """Writes the figures of a run (see [`bench_figures`][]) as PNG files.

    Args:
        results: every method summary.
        compressions: every compression summary.
        out_dir: the folder (created if missing).

    Returns:
        The paths written.

    Raises:
        ImportError: when matplotlib is missing.
    """
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in bench_figures(results, compressions).items():
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return paths
