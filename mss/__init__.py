"""mss: a PyTorch research framework for music source separation."""

__version__ = "0.1.0"


def load_model(path, map_location="cpu"):
    """Network of an mss checkpoint in eval mode (see :func:`mss.checkpoint.load_model`)."""
    from mss.checkpoint import load_model as _load

    return _load(path, map_location)


__all__ = ["load_model", "__version__"]
