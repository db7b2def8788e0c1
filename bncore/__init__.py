"""bncore: batch normalization from scratch, the paper's models and data, and a trainer.

Kept light on purpose: importing ``bncore`` (or ``bncore.spec``) does not load torch, so the
API can validate job specs without it. Import ``bncore.nn``, ``bncore.functional``,
``bncore.models`` or ``bncore.train`` for the torch parts.
"""

__version__ = "0.1.0"
