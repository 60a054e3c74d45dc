"""`localdisc demo` in float32, as it runs on a CPU without bf16 instructions, on any CPU.

    python benchmarks/demo_float32.py --out /tmp/demo_fp32

The arguments are those of ``localdisc demo``. bf16 autocast is used only where the CPU computes
in bf16 natively (:func:`localdisc.engine.precision.cpu_has_native_bf16`); this script says it
does not, so the demo's time and what it prints can be measured for such CPUs on a machine that
has them (``benchmarks/RESULTS.md``, "Demo on CPU").
"""

from __future__ import annotations

import sys

import localdisc.engine.precision as precision
from localdisc.cli import app


def main() -> None:
    precision.cpu_has_native_bf16 = lambda: False
    app(["demo", *sys.argv[1:]])


if __name__ == "__main__":
    main()
