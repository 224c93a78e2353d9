"""The training engine: one ``Trainer`` for every task, atomic checkpoints, torchrun helpers, the ``Objective``
protocol, and the ``Workspace`` that library code gets of a run.

Import the submodules (``kdnas.engine.trainer``, ``.workspace``, ...); this package imports nothing, so
``import kdnas.engine`` stays cheap (torch loads with the submodules).
"""
