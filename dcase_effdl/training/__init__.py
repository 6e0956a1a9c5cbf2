"""Stage 3, training: the loop and what it uses (augmentation, batch plans, schedules, several processes)."""
