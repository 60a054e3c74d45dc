"""Fixtures shared by test modules."""

import pytest


@pytest.fixture
def sigterm_handler():
    """The CLI's SIGTERM handler, as `main` installs it; the test process's own restored."""
    import signal

    import localdisc.cli as cli

    kept = signal.getsignal(signal.SIGTERM)
    cli.install_signal_handlers()
    yield
    signal.signal(signal.SIGTERM, kept)
    cli._stopped_by = None


@pytest.fixture(autouse=True, scope="session")
def _sigint_as_python_sets_it():
    """Tests stop runs by sending SIGINT to their own process. A suite started in the background
    of a script (`nohup ... &`) inherits SIGINT ignored, which the engine leaves ignored (such a
    job is not meant to be stopped by it), and 35 such tests failed: Python's own handler, as an
    interactive start has it."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
