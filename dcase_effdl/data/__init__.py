"""Stage 1, data: the TAU layout reader, generated and downloaded datasets, the tensors training takes."""
