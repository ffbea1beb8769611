"""`speckv train`: the acceptance predictor from profiling records, a held-out report, a checkpoint folder."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from ._common import fail

# speckv_hf.training.train's defaults, spelled out so that `speckv --help` does not import torch.
DEFAULT_EPOCHS = 40
DEFAULT_LR = 3e-3
KINDS = ("portable", "pair")


def train(
    records: Path = typer.Argument(..., help="Records folder written by speckv profile (its tokens/ shards)."),
    out: Path | None = typer.Option(None, help="Checkpoint folder to create (config.json, weights, card, report)."),
    kind: str = typer.Option("portable", help="portable (features only) or pair (also the draft's hidden state)."),
    hidden_sizes: str = typer.Option("32,32", help="Comma-separated hidden layer widths (empty: logistic)."),
    epochs: int = typer.Option(DEFAULT_EPOCHS, min=1, help="Most epochs (early stopping may stop sooner)."),
    lr: float = typer.Option(DEFAULT_LR, min=0.0, help="Adam learning rate."),
    seed: int = typer.Option(0, help="Seed of the initialisation, batch order and permutations."),
    holdout: float = typer.Option(0.25, help="Share of prompts held out for the report, in (0, 1)."),
    slope: float = typer.Option(0.03, min=0.0, help="Verification cost per extra token, in target forwards."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
) -> None:
    """Train the acceptance predictor on profiling records and report on held-out prompts.

    Prompts are split, never rows. The report compares the predictor with calibrated confidence.

    It also simulates the predictor's stop rule against every constant γ and the oracle (docs/training.md).
    """
    # Every check before any work.
    if out is None:
        fail("pass --out DIR: the checkpoint folder to create.")
    if not records.is_dir():
        fail(f"records folder {records} does not exist: pass the --out folder of speckv profile.")
    tokens = records / "tokens"
    if not tokens.is_dir() or not any(p for p in tokens.glob("*.parquet") if not p.name.startswith(".")):
        fail(f"{records} holds no tokens/*.parquet shards: pass the --out folder of a finished speckv profile run.")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file: choose a folder path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        fail(f"--out {out} exists and is not empty: choose another folder, or pass --overwrite to replace it.")
    if kind not in KINDS:
        fail(f"--kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    sizes = [part.strip() for part in hidden_sizes.split(",") if part.strip()]  # repeats are layers: no dedup
    if not all(size.isdigit() and int(size) > 0 for size in sizes):
        fail(f"--hidden-sizes takes positive integers separated by commas, e.g. 32,32; got {hidden_sizes!r}.")
    if not 0 < holdout < 1:
        fail(f"--holdout must be in (0, 1), e.g. 0.25; got {holdout}.")
    if lr <= 0:
        fail(f"--lr must be > 0, e.g. {DEFAULT_LR}; got {lr}.")

    from ..training.dataset import TrainingDataError
    from ..training.io import save_training
    from ..training.records import RecordsSchemaError
    from ..training.train import train_predictor

    options = {"--kind": kind, "--hidden-sizes": hidden_sizes, "--epochs": epochs, "--lr": lr, "--seed": seed}
    options.update({"--holdout": holdout, "--slope": slope})
    command = shlex.join(
        ["speckv", "train", str(records), "--out", str(out), *(str(v) for o in options.items() for v in o)]
    )
    try:
        with Console(stderr=True).status("training"):
            predictor, report = train_predictor(
                records,
                kind=kind,
                hidden_sizes=[int(size) for size in sizes],
                epochs=epochs,
                lr=lr,
                seed=seed,
                holdout=holdout,
                slope=slope,
            )
        save_training(predictor, report, out, command, overwrite=overwrite)
    except (TrainingDataError, RecordsSchemaError, FileExistsError) as error:
        fail(str(error))
    console = Console()
    held, fitted = report.splits["held_out"], report.splits["train"]
    console.print(
        f"held out: {held['rows']:,} tokens of {held['prompts']} prompts; "
        f"fitted on {fitted['rows']:,} of {fitted['prompts']}",
        highlight=False,
    )
    console.print(_metrics_table(report))
    console.print(_stop_rule_table(report))
    top = sorted(report.feature_importance.items(), key=lambda item: -item[1])[:3]
    console.print("AUC drop if shuffled: " + ", ".join(f"{name} {drop:.3f}" for name, drop in top), highlight=False)
    ours, baseline = report.predictor, report.calibrated_confidence
    if ours.log_loss >= baseline.log_loss or (ours.auc or 0.0) <= (baseline.auc or 0.0):
        console.print(
            "[yellow]the predictor does not beat calibrated confidence on the held-out prompts: profile more "
            "prompts before using it.[/yellow]"
        )
    console.print(
        f"trained in {report.train_seconds:.1f} s ({report.best_epoch} of {report.epochs_run} epochs kept); "
        f"saved to {out}",
        highlight=False,
    )


def _metrics_table(report: Any) -> Table:
    table = Table(
        title="held-out metrics",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
    )
    for header in ("metric", "predictor", "calibrated confidence"):
        table.add_column(header, justify="left" if header == "metric" else "right", no_wrap=True)
    ours, baseline = report.predictor, report.calibrated_confidence
    cell = lambda value: "-" if value is None else f"{value:.4f}"  # noqa: E731
    table.add_row("AUC", cell(ours.auc), cell(baseline.auc))
    table.add_row("log-loss", cell(ours.log_loss), cell(baseline.log_loss))
    table.add_row("Brier", cell(ours.brier), cell(baseline.brier))
    table.add_row("base rate", cell(ours.base_rate), cell(baseline.base_rate))
    for mode, metrics in report.by_mode.items():
        table.add_row(f"AUC, {mode}", cell(metrics["predictor"].auc), cell(metrics["calibrated_confidence"].auc))
    return table


def _stop_rule_table(report: Any) -> Table:
    rule = report.stop_rule
    table = Table(
        title=f"stop rule on {rule.steps:,} held-out steps (tokens per target forward)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
    )
    for header in ("policy", "tokens/unit", "vs best constant", "vs oracle"):
        table.add_column(header, justify="left" if header == "policy" else "right", no_wrap=True)
    rows = [
        (f"predictor (mean γ {rule.mean_predictor_gamma:.1f})", rule.predictor),
        ("calibrated confidence", rule.calibrated_confidence),
        (f"best constant γ={rule.best_constant_k}", rule.best_constant),
        ("oracle", rule.oracle),
    ]
    for name, value in rows:
        table.add_row(name, f"{value:.3f}", f"{value / rule.best_constant:.2f}x", f"{value / rule.oracle:.2f}")
    return table
