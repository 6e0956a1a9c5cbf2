"""Stage 2, features: audio reading, log-mel front ends, the content-keyed feature cache."""
