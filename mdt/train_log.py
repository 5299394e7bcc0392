"""What `mdt train` records: metrics.jsonl (one JSON object per line, each with "step"), the same metrics as
TensorBoard scalars under --tensorboard, the loss curve (loss.png) and the progress bar."""

from __future__ import annotations

import json
import os
import sys

from .errors import MissingPackageError

# The scalars of a log record as TensorBoard tags (evaluation results go under eval/).
SCALARS = {"loss": "train/loss", "loss_full": "train/loss_full", "loss_masked": "train/loss_masked",
           "grad_norm": "train/grad_norm", "lr": "train/lr", "steps_per_s": "train/steps_per_s",
           "skipped_steps": "train/skipped_steps"}


class MetricsLog:
    """metrics.jsonl in the run folder, and optionally TensorBoard event files in out/tensorboard.

    On resume, the lines (and TensorBoard events) of steps after the checkpoint were written by the
    interrupted run and are dropped: they are redone."""

    def __init__(self, out_dir: str, resume_step: int | None, tensorboard: bool = False):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and _json_step(line) <= resume_step]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)
        elif resume_step is None and os.path.exists(self.path):
            os.remove(self.path)
        self.tb = _summary_writer(os.path.join(out_dir, "tensorboard"), resume_step) if tensorboard else None

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for key, tag in SCALARS.items():
                if record.get(key) is not None:
                    self.tb.add_scalar(tag, record[key], step)
            for key, value in (record.get("eval") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"eval/{key}", value, step)
            self.tb.flush()

    def read(self) -> list[dict]:
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _summary_writer(log_dir: str, resume_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise MissingPackageError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
    # purge_step: events after the checkpoint's step, written by an interrupted run, are hidden by TensorBoard.
    return SummaryWriter(log_dir, purge_step=None if resume_step is None else resume_step + 1)


def _json_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable (half-written) line is dropped


def plot_losses(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r.get("loss") is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in rows]
    for key, label in (("loss", "total"), ("loss_full", "full pass"), ("loss_masked", "masked pass")):
        if key in rows[0]:
            ax.plot(steps, [r[key] for r in rows], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over log interval)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                mininterval=0.5 if tty else 30.0, file=sys.stderr)
