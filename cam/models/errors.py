"""What can go wrong when a model is built or loaded, said in words (shared by the builders and the checkpoints)."""

class CheckpointError(RuntimeError):
    """A checkpoint or its card is missing, truncated, foreign or inconsistent."""


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be downloaded (offline) and are not in Keras's cache."""
