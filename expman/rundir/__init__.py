"""The run-directory contract: layout and ids (layout), atomic writes (files), the record
(record) and its one writer (lifecycle), and the log files (logs)."""
