"""Stage 5, reporting: leaderboard rows beside published ones, plots, the HTML report."""
