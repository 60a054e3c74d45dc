"""localdisc: unsupervised local discrimination for medical images.

The main entry points: :class:`localdisc.models.LDModel` (pre-trained networks),
:func:`localdisc.similarity` (similarity maps) and :class:`localdisc.Localizer` (one-shot
landmarks); the command line is ``localdisc --help``.
"""

__version__ = "0.1.0"

__all__ = ["Localizer", "similarity"]


def __getattr__(name: str):
    # Lazy: `import localdisc` stays light (no torch) for the CLI's fast paths.
    if name == "similarity":
        from localdisc.tasks.similarity import similarity

        return similarity
    if name == "Localizer":
        from localdisc.tasks.localize import Localizer

        return Localizer
    raise AttributeError(f"module 'localdisc' has no attribute {name!r}")
