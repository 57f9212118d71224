"""Errors raised by the model loaders.

A folder that does not match what a loader expects must fail loudly and say what differs: serving a
half-loaded model with silently random layers is the worst outcome.
"""


class CheckpointFormatError(ValueError):
    """A checkpoint folder or file does not have the expected format, keys or shapes."""
