"""tinyvlm."""
