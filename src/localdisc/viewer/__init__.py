"""A local web page to explore what an LD model learnt: clusters and similarity maps.

Start it with ``localdisc view --model RUN_DIR --images PATH...`` or :func:`serve`.
"""

from __future__ import annotations

from localdisc.viewer.server import Viewer, create_server, serve

__all__ = ["Viewer", "create_server", "serve"]
