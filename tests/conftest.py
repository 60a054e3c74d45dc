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
