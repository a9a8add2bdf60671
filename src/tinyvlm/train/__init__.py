"""Training: one loop for every stage, objectives, recipes."""
