"""Training progress: a progress bar in a terminal, structured log lines otherwise, and the
loss curve (JSON + PNG) beside the run.

In a terminal, transformers' own tqdm bar is the progress bar. Under systemd (no terminal) the
bar is turned off and ``StructuredProgressCallback`` writes one JSON line per logging step to
stderr (journald keeps them). ``LossCurveCallback`` rewrites ``loss_curve.json`` at every log and
every checkpoint (so a killed run keeps its curve so far) and draws ``loss_curve.png`` at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

LOSS_CURVE_JSON = "loss_curve.json"
LOSS_CURVE_PNG = "loss_curve.png"


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether progress goes to an interactive terminal (then a progress bar is shown)."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def json_line_emitter(stream: TextIO | None = None) -> Callable[[dict[str, Any]], None]:
    """An emitter writing each event as one JSON line (stderr by default, so stdout stays for --json)."""

    def emit(event: dict[str, Any]) -> None:
        target = stream or sys.stderr
        target.write(json.dumps(event, default=str) + "\n")
        target.flush()

    return emit


class StructuredProgressCallback(TrainerCallback):
    """Emits ``{"event": "train.progress", "step": .., "max_steps": .., "loss": .., "eta_s": ..}``
    at each logging step, plus start and end events."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], run: str = "") -> None:
        self.emit = emit
        self.run = run
        self._t0 = 0.0
        self._step0 = 0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, D102
        self._t0 = time.monotonic()
        self._step0 = state.global_step
        self.emit({"event": "train.start", "run": self.run, "step": state.global_step, "max_steps": state.max_steps})

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, D102
        logs = logs or {}
        done = state.global_step - self._step0
        elapsed = time.monotonic() - self._t0
        eta = (elapsed / done) * (state.max_steps - state.global_step) if done > 0 else None
        event = {"event": "train.progress", "run": self.run, "step": state.global_step, "max_steps": state.max_steps,
                 "epoch": round(state.epoch or 0.0, 3), "eta_s": round(eta, 1) if eta is not None else None}
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm", "num_input_tokens_seen"):
            if key in logs:
                event[key] = logs[key]
        self.emit(event)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, D102
        self.emit({"event": "train.end", "run": self.run, "step": state.global_step, "max_steps": state.max_steps,
                   "elapsed_s": round(time.monotonic() - self._t0, 1)})


def curve_points(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Train and eval loss points from a trainer's ``log_history``."""
    train = [{"step": h["step"], "loss": h["loss"]} for h in log_history if "loss" in h and "step" in h]
    # One eval point per step: the end-of-training evaluation can repeat the last epoch's.
    by_step = {h["step"]: h["eval_loss"] for h in log_history if "eval_loss" in h and "step" in h}
    evals = [{"step": step, "loss": loss} for step, loss in sorted(by_step.items())]
    return {"train": train, "eval": evals}


def write_loss_curve(log_history: list[dict[str, Any]], out_dir: Path, *, png: bool = True) -> dict[str, str]:
    """Write ``loss_curve.json`` (and ``loss_curve.png`` when asked); returns their paths."""
    out_dir = Path(out_dir)
    points = curve_points(log_history)
    json_path = out_dir / LOSS_CURVE_JSON
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(points, indent=1) + "\n")
    tmp.replace(json_path)
    paths = {"loss_curve_json": str(json_path)}
    if png and (points["train"] or points["eval"]):
        import matplotlib

        matplotlib.use("Agg")  # no display under systemd or in tests
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if points["train"]:
            ax.plot([p["step"] for p in points["train"]], [p["loss"] for p in points["train"]], label="train loss")
        if points["eval"]:
            ax.plot([p["step"] for p in points["eval"]], [p["loss"] for p in points["eval"]], "o-", label="eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png_path = out_dir / LOSS_CURVE_PNG
        fig.savefig(png_path)
        plt.close(fig)
        paths["loss_curve_png"] = str(png_path)
    return paths


class LossCurveCallback(TrainerCallback):
    """Keeps ``loss_curve.json`` current during training and draws the PNG at the end."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, D102
        write_loss_curve(state.log_history, self.out_dir, png=False)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, D102
        write_loss_curve(state.log_history, self.out_dir, png=True)
