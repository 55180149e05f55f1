"""Detection and recognition postprocessors: model outputs to `Detection`s in source pixels."""
