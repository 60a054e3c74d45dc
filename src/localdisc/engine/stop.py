"""A graceful stop for a training loop: the first SIGINT or SIGTERM only asks the loop to stop.

Inside ``with GracefulStop() as stop:`` the first of those signals sets :attr:`GracefulStop.signum`
and nothing else; the loop looks at it after a whole step (:meth:`GracefulStop.agreed`), writes
its checkpoint and calls :meth:`GracefulStop.stop`, which hands the signal to the handler it had
deferred (Python's raises KeyboardInterrupt; the CLI's SIGTERM handler also records the signal
for the exit code). A second signal goes to that handler at once, as without a graceful stop.

Only signals whose handler is a Python function are deferred: an ignored signal stays ignored
and a default action (SIGTERM outside the CLI ends the process) stays as it was. The handlers are
installed from the main thread only (elsewhere nothing changes) and restored on exit.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager that turns the first SIGINT/SIGTERM into a request to stop."""

    def __init__(self) -> None:
        #: The first signal received (its number), ``None`` while no stop is asked.
        self.signum: int | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any]] = {}
        self._pid: int | None = None

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
            self._previous[signum](signum, frame)
            return
        self.signum = signum

    def agreed(self, distributed: bool = False, device: torch.device | str = "cpu") -> int:
        """The signal asking to stop (0: none). Under torch.distributed every rank must call it
        at the same step: the ranks' signals are combined (all_reduce MAX; SIGTERM wins over
        SIGINT), so that all stop at the same step, even those the signal did not reach."""
        signum = self.signum or 0
        if not distributed:
            return signum
        flag = torch.tensor([float(signum)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def stop(self, signum: int) -> NoReturn:
        """Hand ``signum`` to the handler it had deferred, then raise KeyboardInterrupt (if that
        handler did not; on a rank the signal did not reach, it is raised alone)."""
        handler = self._previous.get(signum) if self._pid == os.getpid() else None
        if handler is not None:
            handler(signum, None)
        raise KeyboardInterrupt
