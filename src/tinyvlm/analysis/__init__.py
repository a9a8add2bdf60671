"""What a model costs and how it routes: analytic parameters and FLOPs, measured peak memory,
MoE expert load. Used by training (telemetry after a run) and evaluation (cost columns)."""
