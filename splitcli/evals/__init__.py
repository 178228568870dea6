"""`splitreason eval`: benchmark tasks, honest grading, metrics, resumable runs, comparisons."""
