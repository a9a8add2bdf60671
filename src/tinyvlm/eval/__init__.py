"""Evaluation: generation over benchmark files, scoring, reports."""
