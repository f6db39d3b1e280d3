"""Separators: pure ``nn.Module``s with ``forward(mix: (B, C, T)) -> (B, S, C, T)``, one module per family and
their building blocks. Networks are built from Hydra configs by :func:`mss.checkpoint.build_model`."""
