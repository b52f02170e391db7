"""The repository side of a run: git discipline (git), the archive (archive), config.json
(config), sweeps (sweep) and result patterns (patterns)."""
