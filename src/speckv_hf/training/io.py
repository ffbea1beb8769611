"""Saving what `speckv train` trained: the checkpoint (swapped in whole, never half-written), its report and
its calibration plot."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from ..predictor.model import GammaPredictor
from .train import TrainReport

__all__ = ["save_training"]


def save_training(
    predictor: GammaPredictor, report: TrainReport, out_dir: str | Path, command: str, overwrite: bool = False
) -> Path:
    """Saves the predictor (config.json, model.safetensors, README.md card), train_report.json and calibration.png.

    Everything is written into a hidden sibling folder that is renamed to `out_dir` once complete, so a failed run
    never leaves a checkpoint that looks complete. The card shows the pair(s), compressions, held-out metrics and
    `command`; `predictor` itself is not modified.

    Args:
        predictor: the trained predictor.
        report: its report.
        out_dir: the checkpoint folder (created; its parent too).
        command: the command line that trained it, for the card.
        overwrite: replace a non-empty `out_dir`.

    Returns:
        `out_dir` as a Path.

    Raises:
        FileExistsError: `out_dir` is a file, or a non-empty folder without `overwrite`.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise FileExistsError(f"{out} exists and is not an empty folder: choose another --out, or pass --overwrite")
    pairs = report.records["pairs"]
    metadata = {
        "pair": pairs[0] if len(pairs) == 1 else "; ".join(pairs) or None,
        "compressions": report.records["compressions"],
        "settings": report.records["settings"],
        "metrics": _card_metrics(report),
        "train_seconds": round(report.train_seconds, 3),
        "command": command,
    }
    checkpoint = GammaPredictor(**{**predictor.config(), "metadata": metadata})
    checkpoint.load_state_dict(predictor.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        checkpoint.save_pretrained(staging)
        (staging / "train_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        _plot_calibration(report, staging / "calibration.png")
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _card_metrics(report: TrainReport) -> dict[str, float | None]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    ours, baseline, rule = report.predictor, report.calibrated_confidence, report.stop_rule
    return {
        "held-out AUC": rounded(ours.auc),
        "held-out AUC, calibrated confidence": rounded(baseline.auc),
        "held-out log-loss": rounded(ours.log_loss),
        "held-out log-loss, calibrated confidence": rounded(baseline.log_loss),
        "held-out Brier": rounded(ours.brier),
        "held-out base rate": rounded(ours.base_rate),
        **{
            f"held-out AUC, {mode}{suffix}": rounded(report.by_mode[mode][name].auc)
            for mode in report.by_mode
            for name, suffix in (("predictor", ""), ("calibrated_confidence", ", calibrated confidence"))
        },
        "stop rule / best constant γ": rounded(rule.predictor_vs_best_constant),
        "stop rule / oracle": rounded(rule.predictor_vs_oracle),
    }


def _swap_in(staging: Path, out: Path) -> None:
    """Renames `staging` to `out`, replacing an empty or (after the caller's check) an old `out` folder."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _plot_calibration(report: TrainReport, path: Path) -> None:
    """Reliability diagram of the predictor and the calibrated-confidence baseline (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, metrics in (("predictor", report.predictor), ("calibrated_confidence", report.calibrated_confidence)):
        bins = [b for b in report.calibration[name] if b["count"]]
        label = f"{name.replace('_', ' ')} (AUC {metrics.auc:.3f})" if metrics.auc is not None else name
        axes.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], marker="o", label=label)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted acceptance", ylabel="observed acceptance")
    axes.set_title(f"held-out calibration ({report.splits['held_out']['rows']} tokens)")
    axes.legend(loc="upper left")
    figure.savefig(path, dpi=120)
