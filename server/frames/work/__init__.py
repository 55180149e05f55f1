"""What running one camera frame means: a batch of plain frames, one frame through one model,
a detect-and-crop pipeline, or a cascade."""
