"""Inputs made for checking scorers against the real reference scripts, and the figures those
scripts printed for them (tests/refs/*.json, each naming the repository, path and commit of
the script and how it was run)."""
