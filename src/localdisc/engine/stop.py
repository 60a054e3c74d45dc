"""A graceful stop for a training loop: the first SIGINT or SIGTERM only asks the loop to stop.

Inside ``with GracefulStop() as stop:`` the first of those signals sets :attr:`GracefulStop.signum`
and nothing else; the loop looks at it after a whole step (under torch.distributed the ranks agree
on it, and on a time budget, in :meth:`GracefulStop.agree`), writes its checkpoint and calls
:meth:`GracefulStop.stop`, which hands the signal to the handler it had deferred (Python's raises
KeyboardInterrupt; the CLI's SIGTERM handler also records the signal for the exit code). A second
signal goes to that handler at once, as without a graceful stop, except inside
:meth:`GracefulStop.deferring` (the checkpoint of the stop being written), where it waits for the
write to end: a second Ctrl-C there lost the checkpoint the first one asked for. Under torchrun a
second signal within :data:`ECHO_SECONDS` of the first is the launcher's forward of the same stop
and is dropped: SLURM signals every process of a job step, torchrun included, which then sends
its workers SIGTERM; a terminal's Ctrl-C reaches the whole process group likewise. Taken as a
second request, it cut the step the first one let finish, and the run lost its checkpoint.

Only signals whose handler is a Python function are deferred: an ignored signal stays ignored
and a default action (SIGTERM outside the CLI ends the process) stays as it was. The handlers are
installed from the main thread only (elsewhere nothing changes) and restored on exit.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

import torch
from torch import Tensor

from localdisc.errors import DivergedError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Under torchrun, a second signal this soon after the first is the launcher's echo of it.
ECHO_SECONDS = 5.0


def _under_launcher() -> bool:
    """Whether this process is a torchrun (torch.distributed.elastic) worker."""
    return "TORCHELASTIC_RUN_ID" in os.environ


class GracefulStop:
    """Context manager that turns the first SIGINT/SIGTERM into a request to stop."""

    def __init__(self) -> None:
        #: The first signal received (its number), ``None`` while no stop is asked.
        self.signum: int | None = None
        self._first_at = 0.0  # time.monotonic() of the first signal
        self._previous: dict[int, Callable[[int, FrameType | None], Any]] = {}
        self._pid: int | None = None
        self._deferring = False
        self._held: int | None = None  # a second signal held by :meth:`deferring`

    def install(self) -> None:
        """Defer SIGINT and SIGTERM (from the main thread; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._pid = os.getpid()
        for signum in STOP_SIGNALS:
            previous = signal.getsignal(signum)
            if callable(previous):  # SIG_IGN, SIG_DFL, None (set from C): left alone
                self._previous[signum] = previous
                signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A forked child inherited the handler (it trains no loop), or a second signal: the
        # deferred handler acts at once, as it would have without this.
        if os.getpid() != self._pid or self.signum is not None:
            echo = time.monotonic() - self._first_at < ECHO_SECONDS and _under_launcher()
            if os.getpid() == self._pid and echo:
                return
            if os.getpid() == self._pid and self._deferring and self._held is None:
                self._held = signum  # handed on once the write ends; a third one acts now
                return
            self._previous[signum](signum, frame)
            return
        self.signum, self._first_at = signum, time.monotonic()

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Hold a second signal until the block ends, then hand it on: a short write that must
        not be cut (the checkpoint the first signal asked for). A third one acts at once, for a
        write that hangs; that one leaves the block by its KeyboardInterrupt."""
        self._deferring, self._held = True, None
        try:
            yield
        finally:
            self._deferring = False
        held, self._held = self._held, None
        if held is not None:
            self._previous[held](held, None)

    def agree(
        self, finite: Tensor, distributed: bool = False, budget_spent: bool = False
    ) -> tuple[bool, int, bool]:
        """Whether a step's loss is finite on every rank, the signal asking to stop (0: none),
        and whether the stage's time budget is spent. ``finite``: this rank's flag (1. or 0., a
        tensor on the training device); ``budget_spent``: rank 0's clock (other ranks: False).

        Alone: the flags and the signal as they are now. Under torchrun every rank must call it
        at every step: all three ride on the all_reduce the finite check needs anyway (MAX of
        ``[1 - finite, signal, budget_spent]``: one non-finite rank skips the step everywhere,
        or the gradient all-reduce hangs; SIGTERM wins over SIGINT; rank 0's clock ends the
        stage for all), and on its one host sync, so that all ranks stop, or end a stage, at
        the same step, even those the signal did not reach, at no extra cost.
        """
        signum = self.signum or 0
        if not distributed:
            return bool(finite.item()), signum, budget_spent
        # Fills, not copies of Python numbers to the device (no host sync on a GPU).
        flags = torch.cat(
            [
                1 - finite.reshape(1),
                finite.new_full((1,), float(signum)),
                finite.new_full((1,), float(budget_spent)),
            ]
        )
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        not_finite, agreed, spent = flags.tolist()
        return not not_finite, int(agreed), bool(spent)

    def diverged(
        self, message: str, log: Callable[[str], None], signum: int | None = None
    ) -> NoReturn:
        """Raise :class:`~localdisc.errors.DivergedError` with ``message``, unless a stop was asked
        for (``signum``, by default :attr:`signum`; under torchrun the one the ranks agreed on):
        then ``message`` is said in ``log`` and the stop handed on (:meth:`stop`). A caller that
        skips a diverged run (a benchmark, on to its next run) went on past the Ctrl-C or
        SIGTERM."""
        signum = self.signum if signum is None else signum
        if signum:
            log(f"{message} [stopped by {signal.Signals(signum).name}]")
            self.stop(signum)
        raise DivergedError(message)

    def stop(self, signum: int) -> NoReturn:
        """Hand ``signum`` to the handler it had deferred, then raise KeyboardInterrupt (if that
        handler did not; on a rank the signal did not reach, it is raised alone)."""
        handler = self._previous.get(signum) if self._pid == os.getpid() else None
        if handler is not None:
            handler(signum, None)
        raise KeyboardInterrupt
