"""Figures of a `speckv bench` run (PNG, matplotlib's non-interactive backend; matplotlib is the `plots` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bench_report import CompressionSummary, MethodSummary

__all__ = ["bench_plots"]

_MAX_SHOWN = 20
_COLORS = {"target": "grey", "hf": "tab:orange", "speckv": "tab:blue", "oracle": "tab:green"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'speckv-hf[plots]'.") from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def bench_plots(
    results: Sequence[MethodSummary], compressions: Sequence[CompressionSummary], out_dir: str | Path
) -> list[Path]:
    """Writes the figures of a run.

    - `tokens_per_s.png`: tokens per second by method, one panel per compression, with the measured and the
      modeled oracle as lines and the interquartile range over calls as error bars;
    - `gamma_distribution.png`: share of steps by drafted tokens γ (up to 20), for the SpecKV policies, the best
      constant γ and the oracle;
    - `accepted_runs.png`: share of steps by accepted run length, for the same methods.

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
    names = [c.compression for c in compressions]
    paths = []

    fig, axes = plt.subplots(len(names), 1, figsize=(10, 3.2 * len(names)), squeeze=False)
    for ax, overall in zip(axes[:, 0], compressions, strict=True):
        rows = [r for r in results if r.compression == overall.compression]
        x = range(len(rows))
        rates = [r.tokens_per_s for r in rows]
        errors = [
            [max(r.tokens_per_s - r.iqr_tokens_per_s[0], 0) for r in rows],
            [max(r.iqr_tokens_per_s[1] - r.tokens_per_s, 0) for r in rows],
        ]
        colors = [_COLORS[r.kind] for r in rows]
        ax.bar(x, rates, color=colors, yerr=errors, capsize=2)
        if overall.measured_oracle_tokens_per_s:
            ax.axhline(overall.measured_oracle_tokens_per_s, color="tab:green", ls="--", label="oracle (measured)")
        if overall.modeled_oracle_tokens_per_s:
            ax.axhline(overall.modeled_oracle_tokens_per_s, color="tab:green", ls=":", label="oracle (modeled)")
        ax.set_xticks(list(x), [r.method for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{overall.compression} target (detected: {overall.detected})", fontsize=10)
        if overall.measured_oracle_tokens_per_s or overall.modeled_oracle_tokens_per_s:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    paths.append(out / "tokens_per_s.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    for attribute, filename, label in (
        ("gamma_histogram", "gamma_distribution.png", "drafted tokens γ"),
        ("accepted_histogram", "accepted_runs.png", "accepted run length"),
    ):
        fig, axes = plt.subplots(len(names), 1, figsize=(8, 3 * len(names)), squeeze=False)
        for ax, overall in zip(axes[:, 0], compressions, strict=True):
            for r in results:
                histogram = getattr(r, attribute)
                # A constant γ is a spike: only the best one is drawn, next to the policies and the oracle.
                shown = not r.method.startswith("fixed:") or r.method == overall.best_fixed
                if r.compression != overall.compression or not histogram or not shown:
                    continue
                total = sum(histogram.values())
                keys = [k for k in sorted(histogram) if k <= _MAX_SHOWN]
                ax.plot(keys, [histogram[k] / total for k in keys], marker="o", ms=3, label=r.method)
            ax.set_xlabel(f"{label} (up to {_MAX_SHOWN})")
            ax.set_ylabel("share of steps")
            ax.set_title(overall.compression, fontsize=10)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / filename)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
