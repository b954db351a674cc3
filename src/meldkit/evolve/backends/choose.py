"""open_backend: the one place that decides between the serial and the Ray backend."""

from __future__ import annotations

import os
from collections.abc import Callable

from meldkit.errors import OptionError
from meldkit.evolve.backends.options import Backend, BackendOptions, EvaluatorFactory, check_options
from meldkit.evolve.backends.ray_pool import RayBackend
from meldkit.evolve.backends.serial import SerialBackend


def open_backend(
    factory: EvaluatorFactory,
    options: BackendOptions,
    on_info: Callable[[str], None] | None = None,
) -> Backend:
    """Return the backend ``options`` ask for; ``on_info`` receives one line saying which.

    Nothing is built yet for a serial backend; a Ray backend has started (or connected to) Ray
    and asked it for its workers. Raises :class:`OptionError` for impossible options, for
    ``kind="ray"`` without the ray package, for an unreachable cluster, and for more workers
    than the cluster holds.
    """
    kind = check_options(options)
    info = on_info or (lambda _line: None)
    if kind == "serial":
        return SerialBackend(factory, threads=options.cpus_per_worker)
    try:
        import ray  # noqa: F401  (only whether it is importable)
    except ImportError:
        if kind == "ray":
            raise OptionError(
                "--ray needs the ray package", hint="pip install 'meldkit[ray]'"
            ) from None
        info(
            "ray is not installed: evaluating candidates serially in this process "
            "(pip install 'meldkit[ray]' to use Ray)"
        )
        return SerialBackend(factory, threads=options.cpus_per_worker)
    wanted = options.address or os.environ.get("RAY_ADDRESS") or (options.workers or 1) > 1
    if kind == "auto" and not wanted:
        return SerialBackend(factory, threads=options.cpus_per_worker)
    backend = RayBackend(factory, options)
    info(backend.describe())
    return backend
