"""Scoring a finished run on another dataset, and breakdowns of its results."""
