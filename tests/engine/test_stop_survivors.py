"""GracefulStop alone, with handlers that record their calls: the first signal only asks, a
second goes to the deferred handler (at once, or once a checkpoint's write ends), a launcher's
echo is dropped for ECHO_SECONDS only, and the handlers are put back on exit."""

from __future__ import annotations

import os
import signal
import types

import pytest

from localdisc.engine import stop as stop_module
from localdisc.engine.stop import ECHO_SECONDS, GracefulStop
from localdisc.errors import DivergedError


class Recorder:
    """A Python signal handler that records ``(signum, frame is None)``; raises
    KeyboardInterrupt where ``raises`` (Python's own does), else returns (as the CLI's SIGTERM
    handler does, which records the signal for the exit code)."""

    def __init__(self, raises: bool = False) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.raises = raises

    def __call__(self, signum, frame):
        self.calls.append((signum, frame is None))
        if self.raises:
            raise KeyboardInterrupt


@pytest.fixture
def handlers():
    """Recorders installed for SIGINT and SIGTERM during the test, the previous handlers after."""
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    mine = {signal.SIGINT: Recorder(), signal.SIGTERM: Recorder()}
    for signum, handler in mine.items():
        signal.signal(signum, handler)
    yield mine
    for signum, handler in kept.items():
        signal.signal(signum, handler)


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)


def test_the_first_signal_asks_and_a_second_goes_to_its_handler_at_once(handlers):
    with GracefulStop() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._on_signal
        _send(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and handlers[signal.SIGTERM].calls == []
        _send(signal.SIGINT)  # a second one, of another kind: its own handler, at once
        assert handlers[signal.SIGINT].calls == [(signal.SIGINT, False)]
        assert stop.signum == signal.SIGTERM  # the first one stays the one asked
    assert handlers[signal.SIGTERM].calls == []
    assert signal.getsignal(signal.SIGINT) is handlers[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is handlers[signal.SIGTERM]


def test_the_handlers_are_put_back_on_an_error_and_only_once(handlers):
    """Left installed, the stop's handler swallowed every later Ctrl-C of the process; restored
    twice, it put back a handler the caller had replaced since."""
    stop = GracefulStop()
    with pytest.raises(RuntimeError), stop:
        raise RuntimeError("a failed step")
    assert signal.getsignal(signal.SIGTERM) is handlers[signal.SIGTERM]
    other = Recorder()
    signal.signal(signal.SIGTERM, other)
    stop.restore()  # nothing left to put back
    assert signal.getsignal(signal.SIGTERM) is other
    _send(signal.SIGTERM)
    assert other.calls == [(signal.SIGTERM, False)] and stop.signum is None


def test_an_ignored_or_default_signal_is_left_as_it_was(handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with GracefulStop() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with pytest.raises(KeyboardInterrupt):  # nothing to hand on: raised alone
            stop.stop(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_stop_hands_the_signal_on_then_raises_where_the_handler_returned(handlers):
    """The CLI's SIGTERM handler records the signal (exit 143) and returns: the loop must still
    stop."""
    with GracefulStop() as stop:
        _send(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            stop.stop(signal.SIGTERM)
    assert handlers[signal.SIGTERM].calls == [(signal.SIGTERM, True)]


def test_a_forked_child_hands_signals_on_at_once_and_never_stops_by_them(handlers, monkeypatch):
    """A worker process forked inside the stop inherits its handler but runs no loop that would
    look at the request: its signals act as without a graceful stop."""
    pid = os.getpid()
    with GracefulStop() as stop, monkeypatch.context() as m:
        m.setattr(stop_module.os, "getpid", lambda: pid + 1)  # as in the child
        os.kill(pid, signal.SIGTERM)
        assert handlers[signal.SIGTERM].calls == [(signal.SIGTERM, False)]
        assert stop.signum is None
        with pytest.raises(KeyboardInterrupt):  # its own stop: not handed to the parent's
            stop.stop(signal.SIGTERM)
        assert len(handlers[signal.SIGTERM].calls) == 1


@pytest.fixture
def clock(monkeypatch):
    """The stop module's monotonic clock, set by the test (``clock[0]`` seconds)."""
    now = [100.0]
    monkeypatch.setattr(stop_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_a_child_forked_after_the_first_signal_under_torchrun_drops_no_signal(
    handlers, clock, monkeypatch
):
    """The echo window is the training process's: a child forked after the first signal
    inherits its time, and a signal to the child within it must still reach its handler."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    pid = os.getpid()
    with GracefulStop():
        _send(signal.SIGTERM)
        with monkeypatch.context() as m:
            m.setattr(stop_module.os, "getpid", lambda: pid + 1)  # as in the child
            os.kill(pid, signal.SIGTERM)
            assert handlers[signal.SIGTERM].calls == [(signal.SIGTERM, False)]


def test_under_torchrun_an_echo_is_dropped_for_echo_seconds_only(handlers, clock, monkeypatch):
    """The launcher forwards the signal SLURM sent to every process: that second one, within
    ECHO_SECONDS of the first, is dropped; a Ctrl-C later than that is a second request."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    calls = handlers[signal.SIGTERM].calls
    with GracefulStop() as stop:
        _send(signal.SIGTERM)
        clock[0] += ECHO_SECONDS - 0.01
        _send(signal.SIGTERM)
        assert calls == [] and stop.signum == signal.SIGTERM
        with stop.deferring():  # an echo during the write is dropped too, not held
            _send(signal.SIGTERM)
        assert calls == []
        clock[0] = 100.0 + ECHO_SECONDS  # the first signal's time, not the echo's, counts
        _send(signal.SIGTERM)
        assert calls == [(signal.SIGTERM, False)]


def test_without_a_launcher_a_second_signal_acts_however_soon(handlers, clock, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    with GracefulStop() as stop:
        _send(signal.SIGINT)
        _send(signal.SIGINT)  # the same instant
        assert stop.signum == signal.SIGINT
        assert handlers[signal.SIGINT].calls == [(signal.SIGINT, False)]


def test_a_second_signal_in_a_write_is_held_until_it_ends_and_only_there(handlers):
    calls = handlers[signal.SIGINT].calls
    with GracefulStop() as stop:
        with stop.deferring():  # a first signal in a write only asks
            _send(signal.SIGINT)
        assert stop.signum == signal.SIGINT and calls == []
        with stop.deferring():
            _send(signal.SIGINT)
            assert calls == []  # held while the checkpoint is written
        assert calls == [(signal.SIGINT, True)]  # handed on once the write ended
        with stop.deferring():
            pass
        assert len(calls) == 1  # nothing held: nothing handed on again
        _send(signal.SIGINT)  # after the write: at once again
        assert len(calls) == 2


def test_a_third_signal_that_left_a_write_leaves_no_held_one_behind(handlers):
    """The third signal's KeyboardInterrupt leaves the block before the held second one is
    handed on: the next write must hold a second signal again, not hand it on at once."""
    raising = Recorder(raises=True)
    signal.signal(signal.SIGINT, raising)
    with GracefulStop() as stop:
        _send(signal.SIGINT)
        reached: list[str] = []
        with pytest.raises(KeyboardInterrupt), stop.deferring():
            _send(signal.SIGINT)  # held
            reached.append("second held")
            _send(signal.SIGINT)  # acts at once, inside the write (one that hangs)
            reached.append("third returned")
        assert reached == ["second held"] and len(raising.calls) == 1
        raising.raises = False
        with stop.deferring():
            _send(signal.SIGINT)
            assert len(raising.calls) == 1  # held again
        assert len(raising.calls) == 2


def test_a_diverged_training_stops_where_a_stop_was_asked_else_raises(handlers):
    """A benchmark skips a diverged run and goes on to its next: past the Ctrl-C, where the
    DivergedError hid it."""
    said: list[str] = []
    with GracefulStop() as stop:
        with pytest.raises(DivergedError, match="^loss is NaN$"):
            stop.diverged("loss is NaN", said.append)
        assert said == []
        _send(signal.SIGINT)
        try:  # the ranks agreed on no signal: that decides
            with pytest.raises(DivergedError):
                stop.diverged("loss is NaN", said.append, signum=0)
        except KeyboardInterrupt:
            pytest.fail("stopped by this rank's signal where the ranks agreed on none")
        with pytest.raises(KeyboardInterrupt):
            stop.diverged("loss is NaN", said.append)
        assert said == ["loss is NaN [stopped by SIGINT]"]
        with pytest.raises(KeyboardInterrupt):  # agreed on by the ranks, not received here
            GracefulStop().diverged("loss is NaN", said.append, signum=signal.SIGTERM)
        assert said[-1] == "loss is NaN [stopped by SIGTERM]"
    assert handlers[signal.SIGINT].calls == [(signal.SIGINT, True)]
