"""Stopping a training run cleanly when asked to: Slurm's warning signal before a time limit or a preemption,
torchrun forwarding a termination, Ctrl-C.

SIGTERM, SIGUSR1 and a first SIGINT only ask: the run finishes the step it is in, every rank writes its part
of one checkpoint, and the command exits with EXIT_PREEMPTED, after which `--resume auto` continues exactly
as an uninterrupted run would. A second SIGINT aborts at once (KeyboardInterrupt).
Under torchrun the ranks agree on the step to stop after (a one-integer all-reduce per step on a gloo group:
no device sync), so a signal that reaches one rank first stops them all at the same step.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint written; run again with --resume auto
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class StopRequests:
    """Installs the handlers of STOP_SIGNALS while in use (main thread only; elsewhere it never stops a run)
    and answers `should_stop()` once per step, the same on every rank."""

    def __init__(self, world: int = 1):
        self.signal: str | None = None  # the first stop signal received
        self._old: dict[int, object] = {}
        self._group = dist.new_group(backend="gloo") if world > 1 else None

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signal is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        self.signal = self.signal or name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                num = getattr(signal, name, None)
                if num is not None:
                    self._old[num] = signal.signal(num, self._handle)
        return self

    def __exit__(self, *exc):
        for num, handler in self._old.items():
            signal.signal(num, handler)
        self._old.clear()

    def should_stop(self) -> bool:
        """Whether any rank has been asked to stop (a collective call under torchrun)."""
        if self._group is None:
            return self.signal is not None
        flag = torch.tensor([int(self.signal is not None)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        if flag.item() and self.signal is None:
            self.signal = "another rank's signal"
        return bool(flag.item())
