"""The catalogue: losses, activations and regularizers, each with its block solver.

Every entry is a small frozen dataclass built by Hydra from its YAML file
(``conf/loss``, ``conf/act``, ``conf/reg``) through ``_target_``. docs/math.md §3 lists every
entry with its value and the derivation of its solver. Each entry also declares ``memory``, what
its value and solver allocate (``_memory.py``), which ``bcd_cli.run.memory`` reads to estimate a run's peak.
"""
