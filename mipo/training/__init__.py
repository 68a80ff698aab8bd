"""Training: everything that turns an objective into a trained policy.

``setup`` builds a run (models, data, services, optimiser), ``loop`` fits it,
``step`` is one micro-step and one optimiser step, ``evaluate`` scores held-out
pairs, ``checkpoint`` saves and restores, ``metrics`` accumulates and logs;
``batching`` is the one entry point from token tensors to a
:class:`~mipo.batch.PairBatch`, used by training, evaluation and every tool.
See ``docs/architecture.md``.
"""
