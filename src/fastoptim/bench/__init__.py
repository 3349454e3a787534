"""``fastoptim bench``: which optimizer trains best, and how fast each one steps, on this machine.

Modules, in the order a run uses them: :mod:`~fastoptim.bench.cli` (options),
:mod:`~fastoptim.bench.settings` (presets, hyperparameters), :mod:`~fastoptim.bench.data` (text
shipped with Python), :mod:`~fastoptim.bench.model` and :mod:`~fastoptim.bench.task` (training),
:mod:`~fastoptim.bench.roofline` and :mod:`~fastoptim.bench.speed` (step timing),
:mod:`~fastoptim.bench.report` and :mod:`~fastoptim.bench.plots` (table, JSON, PNG). Needs the
``bench`` extra (matplotlib, tqdm); the library itself does not import this package.
"""
