"""Process-wide tuning of a process that serves models, done once by its entry point.

``modelfleet serve`` and ``modelfleet instance`` call :func:`tune_process` after building their
app and before serving (and so will the Ray actor). Library classes never do: a process that
embeds a :class:`~modelfleet.instance.manager.ModelManager`, or a test, keeps its own allocator,
OpenMP and collector settings.
"""

from __future__ import annotations

import gc

from modelfleet.instance.pools import configure_allocator, configure_openmp


def tune_process() -> None:
    """Tune this process for serving models: glibc's mmap threshold and arenas
    (:func:`~modelfleet.instance.pools.configure_allocator`), sleeping OpenMP workers
    (:func:`~modelfleet.instance.pools.configure_openmp`), and the server's own objects
    frozen out of the garbage collector's generations.

    The freeze: the modules, app and settings alive now live as long as the process, and a full
    collection during a model load would walk them all (measured when it was added: 10 MB cold
    loads 1.5x faster). Later freezes, after a load imported a framework, are the memory
    pressure policy's (:meth:`~modelfleet.instance.pressure.MemoryPressure.freeze_if_safe`).
    """
    configure_allocator()
    configure_openmp()
    gc.freeze()
