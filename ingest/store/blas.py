"""NumPy's BLAS on one thread for a moment (the snapshot's exact search: one memory-bound product).

Waking a second BLAS thread for a single matrix-vector product costs more than it saves (10x slower
on a busy 2-core machine); ``threadpoolctl`` is the maintained way to limit it per call.
"""

from __future__ import annotations

import contextlib
from typing import Any

_BLAS: list[Any] = []  # the threadpoolctl controller, made once


def one_blas_thread() -> Any:
    """A context in which NumPy's BLAS uses one thread (a no-op without threadpoolctl)."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController  # heavy: inspects the loaded BLAS libraries

            _BLAS.append(ThreadpoolController())
        except Exception:  # noqa: BLE001 - only a speed-up
            _BLAS.append(None)
    controller = _BLAS[0]
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")
