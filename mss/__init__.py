"""mss: a PyTorch research framework for music source separation."""

from mss.platform.threads import configure_waiting

__version__ = "0.1.0"

configure_waiting()  # OpenMP workers sleep instead of spinning; only effective before torch is imported


def load_model(path, map_location="cpu"):
    """Network of an mss checkpoint in eval mode (see :func:`mss.checkpoint.load_model`); ``path`` may also name a
    published model (``"htdemucs"``, ``"umxhq"``…: downloaded and converted on first use, see
    :mod:`mss.pretrained.registry` and ``python -m mss.pretrained list``)."""
    from mss.checkpoint import load_model as _load
    from mss.pretrained.registry import resolve_checkpoint

    return _load(resolve_checkpoint(path), map_location)


__all__ = ["load_model", "__version__"]
