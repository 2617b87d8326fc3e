"""Single-threaded BLAS for the command line, set before numpy is first imported.

The embedded model's matrices are small, and OpenBLAS's spinning threads fight the event loop
and the worker threads for the cores (measured on 2 cores: the default run took 62 s with
threaded BLAS, 10 s without). Only the CLI and the benchmarks import this module; a library
user's process is left alone. A value the user set wins.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
