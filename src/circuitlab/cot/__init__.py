"""cot: Feng et al. 2023, chain of thought vs direct answers on arithmetic, equations and DP."""
