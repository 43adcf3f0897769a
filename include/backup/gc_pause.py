"""Pausing Python's cyclic garbage collector around bulk work that allocates many
containers and frees none (loading an index, building hundreds of DAGs): the collector's
passes are triggered by the allocation count alone, and each one walks every young object
again without finding garbage."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside the block; the collector is back on after it (if it was
    on before), and a later pass collects whatever cycles the block left behind."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
