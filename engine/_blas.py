"""Single-threaded BLAS for the command line, set before numpy is first imported.

The embedded model's matrices are small, and OpenBLAS's spinning threads fight the event loop
and the worker threads for the cores, which makes the default run several times slower on a
small machine. Only the CLI and the benchmarks import this module; a library user's process
is left alone. A value the user set wins.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
