"""What the CLI prints: integers as integers in the run summary, a progress bar whose
figures survive an 80-column terminal, predictions by class name."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from contracts.events import TrainingProgress
from lmesh.commands.predict import describe
from lmesh.commands.train import format_metric, progress_bar, progress_stats


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("epochs", 2.0, "2"),
        ("resumed_from_epoch", 0.0, "0"),
        ("val_accuracy", 0.89354, "0.8935"),
        ("test_accuracy", 1.0, "1.0000"),  # a ratio stays a ratio
        ("loss", 0.5, "0.5000"),
        ("samples_per_sec", 45992.4, "45,992"),
        ("train_samples", 60000.0, "60,000"),
    ],
)
def test_run_summary_prints_integers_as_integers(key: str, value: float, shown: str) -> None:
    assert format_metric(key, value) == shown


def _render(width: int, samples_per_sec: float, run_id: str) -> list[str]:
    """The bar as a terminal of ``width`` columns draws it (one frame, plain text)."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    progress = TrainingProgress(
        run_id="r",
        epoch=7,
        epochs=10,
        loss=0.71704,
        train_accuracy=0.91414,
        val_accuracy=0.89351,
        samples_per_sec=samples_per_sec,
        elapsed_s=12.0,
        worker="trainer-host-1234",
    )
    bar = progress_bar(console)
    task = bar.add_task(run_id, total=10, stats="waiting for a worker...")
    bar.update(task, completed=7, stats=progress_stats(progress))
    console.print(bar.make_tasks_table(bar.tasks))
    return out.getvalue().splitlines()


@pytest.mark.parametrize("samples_per_sec", [45_992.4, 1_234_567.0])
def test_progress_bar_fits_80_columns_with_every_figure_whole(samples_per_sec: float) -> None:
    lines = _render(80, samples_per_sec, "fashion-mnist-mlp-20261129-195901-abcd")
    assert len(lines) == 1, lines  # one line: nothing wrapped onto a second
    last = lines[0]
    assert len(last.rstrip()) <= 80, last
    for figure in (
        "7/10",
        "loss 0.717",
        "train 0.914",
        "val 0.894",
        f"{samples_per_sec:,.0f} samples/s",
    ):
        assert figure in last, (figure, last)
    assert "━" in last  # the bar itself is still there


def test_predictions_name_the_class_the_index_and_the_model_version() -> None:
    body = {
        "model_name": "fashion-mnist-mlp",
        "model_version": "1",
        "outputs": [
            {"name": "probabilities", "shape": [2, 3], "data": [0.01, 0.02, 0.97, 0.6, 0.3, 0.1]},
            {"name": "label", "shape": [2], "data": [2, 0]},
            {"name": "classes", "shape": [2], "data": ["Ankle boot", "T-shirt/top"]},
        ],
    }
    assert describe(body) == [
        "Ankle boot (class 2, p=0.97) — fashion-mnist-mlp v1",
        "T-shirt/top (class 0, p=0.60) — fashion-mnist-mlp v1",
    ]
    assert describe(body, served_by=False)[0] == "Ankle boot (class 2, p=0.97)"  # the demo's
    unnamed = {**body, "outputs": body["outputs"][:2]}  # a model without class names
    assert describe(unnamed)[0] == "class 2, p=0.97 — fashion-mnist-mlp v1"
