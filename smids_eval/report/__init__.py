"""Leaderboard, paired comparisons, figures and the markdown report of a run folder."""
