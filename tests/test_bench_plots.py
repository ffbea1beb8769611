"""The figures of a bench run render (matplotlib's Agg backend) and draw what they say they draw."""

from __future__ import annotations

import pytest
from matplotlib.container import BarContainer

from speckv_hf.bench.harness import CallRecord
from speckv_hf.bench.plots import bench_figures, bench_plots
from speckv_hf.bench.summary import summarize


def _summaries():
    records = []
    for index, base in enumerate([80.0, 100.0, 120.0, 90.0, 10.0]):  # the last prompt stalls
        for method, ratio in (("target-only", 1.0), ("fixed:2", 1.4), ("fixed:3", 1.6), ("adaptive", 1.7)):
            extra = {}
            if method != "target-only":
                extra = {"gamma_histogram": {1: 2, 3: 4, 5: 1}, "accepted_histogram": {0: 1, 2: 3, 7: 2}}
            seconds = 10 / (base * ratio)
            records.append(CallRecord(method, f"p{index}", "task", 0, seconds, 10, 5, 4, **extra))
    return summarize("fp32", "fp32", records, {}, do_sample=False)


def test_histograms_are_bars_on_integer_ticks():
    rows, overall = _summaries()
    figures = bench_figures(rows, [overall])
    try:
        for name, keys in (("gamma_distribution.png", (1, 3, 5)), ("accepted_runs.png", (0, 2, 7))):
            ax = figures[name].axes[0]
            assert not ax.lines  # no connected lines between the counts
            bars = [c for c in ax.containers if isinstance(c, BarContainer)]
            assert [c.get_label() for c in bars] == ["fixed:3", "adaptive"]  # the best constant, the policies
            ticks = list(ax.get_xticks())
            assert ticks == list(range(keys[0], keys[-1] + 1))  # every integer, none at 2.5
            for container in bars:  # side by side, each bar within half a step of its integer
                assert [round(p.get_x() + p.get_width() / 2) for p in container.patches] == list(keys)
            legend = ax.get_legend()
            assert legend is not None and legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1  # outside
    finally:
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)


def test_bars_are_medians_inside_their_interquartile_error_bars():
    rows, overall = _summaries()
    figures = bench_figures(rows, [overall])
    try:
        for name, median, iqr in (
            ("tokens_per_s.png", "median_tokens_per_s", "iqr_tokens_per_s"),
            ("paired_speedup.png", "median_speedup", "iqr_speedup"),
        ):
            ax = figures[name].axes[0]
            bars = next(c for c in ax.containers if isinstance(c, BarContainer))
            heights = [p.get_height() for p in bars.patches]
            assert heights == pytest.approx([getattr(r, median) for r in rows])
            errors = bars.errorbar.lines[2][0].get_segments()  # one vertical segment per bar: (low, high)
            for row, segment in zip(rows, errors, strict=True):
                low, high = segment[0][1], segment[1][1]
                assert (low, high) == pytest.approx(getattr(row, iqr))
                assert low <= getattr(row, median) <= high
        # The total-based rate of a method sits outside its calls' IQR here; the bar is not it.
        fixed = next(r for r in rows if r.method == "fixed:2")
        assert not fixed.iqr_tokens_per_s[0] <= fixed.tokens_per_s <= fixed.iqr_tokens_per_s[1]
        paired_ax = figures["paired_speedup.png"].axes[0]
        assert any(line.get_ydata()[0] == 1.0 for line in paired_ax.lines)  # target-only's 1.0
    finally:
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)


def test_bench_plots_writes_every_figure(tmp_path):
    rows, overall = _summaries()
    paths = bench_plots(rows, [overall], tmp_path / "plots")
    assert sorted(p.name for p in paths) == [
        "accepted_runs.png",
        "gamma_distribution.png",
        "paired_speedup.png",
        "tokens_per_s.png",
    ]
    assert all(p.stat().st_size > 0 for p in paths)
