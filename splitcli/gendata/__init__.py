"""`splitreason gendata`: SplitReason training data from reasoning traces (annotate, align, export)."""
