"""Fast paths: optimized twins of the reference formulas in :mod:`meldkit.methods`.

Nothing in ``methods/`` imports this package. A method's spec names its fast path
(``fast_impl="meldkit.kernels.<module>:<method>"``), a
:class:`~meldkit.methods.registry.FastPath` whose ``supports`` check says which calls it
covers; :func:`meldkit.methods.registry.load_merge_function` makes the choice, per call.
``MELDKIT_REFERENCE_MATH=1`` turns every fast path off.

Layout:

* ``<family>.py``: the driver of a method family (its ``supports`` check, the passes it makes
  and their small numpy bookkeeping), importing only numpy and torch;
* ``<family>_numba.py``: its ``@njit`` kernels, loaded through :func:`runner.load` (None when
  numba is not installed, so the reference runs);
* :mod:`.primitives`: the numba pieces every kernel module shares (stored-dtype loads and
  stores, the counter-based hash stream, the chunk size); :mod:`.runner`: numpy views of the
  inputs, fixed work ranges and the thread pool.

The fidelity rule: the reference is the truth. A fast path gives the same bytes wherever
reproducibility depends on it (random masks, selections, tie order: the CPU, the GPU and any
thread count give the same model); float sums may differ in the last bits, within the
tolerance its tests pin (tests/kernels/).
"""
