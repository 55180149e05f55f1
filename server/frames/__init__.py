"""Camera frames: the stream (session), the pull scheduler, and the work one frame is.

Value types live in `frames.types`, at the bottom; behaviour modules import them downward.
"""
