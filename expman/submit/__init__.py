"""From a commit to prepared runs: every check (plan), run directories and records (create),
running them here or on a backend (run), or putting them into the job queue (schedule)."""
