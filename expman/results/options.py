"""Names of the results options, importable without numpy or pandas (for the CLI)."""

FORMATS = ("rich", "markdown", "latex", "csv", "json", "html")
AGGREGATES = ("mean±std", "mean±sem", "median", "min", "max", "last", "count")
DEFAULT_SEED_KEYS = ("*seed",)
DEFAULT_STATS = ("last", "max", "min", "mean_last_10")
KEEP_MODES = ("last", "all")
PLOT_KINDS = ("heatmap", "lines", "bars", "curve")
PLOT_FORMATS = ("png", "svg", "pdf")
ERROR_STYLES = ("band", "bars")
