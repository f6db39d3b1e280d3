"""Run-directory bookkeeping shared by the entry points: resolved config, Rich config tree, git SHA."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mss.utils import atomic_write_text, git_revision

log = logging.getLogger("mss")


def conf_dir() -> Path:
    """The Hydra configs, the one place every entry point and :func:`compose` read them from: ``mss/conf/`` inside an
    installed wheel (setup.py ships the checkout's ``conf/`` there at build time), else ``conf/`` beside the package
    (a checkout or an editable install). An absolute path, so Hydra resolves it the same way whether the entry point
    runs as ``python -m mss.train`` or as the ``mss-train`` console script."""
    package = Path(__file__).resolve().parent
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parent / "conf"


CONF_DIR = conf_dir()


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config from ``conf/`` outside a Hydra run (notebooks, tests). ``paths.output_dir`` has no Hydra run
    directory to interpolate then, so set it among the overrides before resolving."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not (CONF_DIR / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"{CONF_DIR / config_name}.yaml: Hydra config not found (mss is neither a checkout "
                                "with conf/ nor a package with mss/conf/: reinstall it, pip install mss or -e .)")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def config_tree(cfg: DictConfig) -> str:
    """Render the resolved config as a Rich tree (one branch per top-level node)."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add(str(key)).add(Syntax(text, "yaml"))
    console = Console(record=True, width=110)
    console.print(tree)
    return console.export_text()


def save_run_info(cfg: DictConfig, out_dir: str | Path, print_tree: bool = True) -> None:
    """Write ``config.yaml`` (resolved), ``config_tree.log`` and ``git_sha.txt`` into the run directory."""
    out = Path(out_dir)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(out / "git_sha.txt", git_revision() + "\n")
    text = config_tree(cfg) if print_tree else ""
    if text:
        atomic_write_text(out / "config_tree.log", text)
