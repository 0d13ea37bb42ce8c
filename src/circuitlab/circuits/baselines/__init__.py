"""Baselines for circuit discovery, each returning a `discover.Ranking` over heads.

attribution: attribution patching (gradient x (clean - corrupted) activation, one forward and
             one backward per batch); hisp: gradient-magnitude head importance from the same
             pass; activation: exhaustive single-head activation patching (the reference
             method: expensive upper bound); random: a seeded random ranking.
"""
