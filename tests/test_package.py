"""mss as an installed package: the configs travel inside the wheel, the console scripts find them from any folder,
and a user's own project adds its networks and configs to ours."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_LOSS, TINY_RUN, TINY_TRAIN

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)[:200]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def test_console_script_entries_resolve_configs_without_main(tmp_path):
    """A console script calls ``mss.train:main`` from a wrapper, so the Hydra task function's module is
    ``mss.train``, not ``__main__``: the configs must resolve all the same, from a folder that is not the checkout."""
    calls = []
    for name, entry in SCRIPTS.items():
        module, func = entry.split(":")
        argv = ["--help"] if name == "mss-results" else ["--cfg", "job"]
        calls.append(f"sys.argv = [{name!r}, *{argv!r}]\n"
                     f"print('== {name}', flush=True)\n"
                     f"try:\n    importlib.import_module({module!r}).{func}()\n"
                     f"except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
                     "GlobalHydra.instance().clear()\n")
    code = "import importlib, sys\nfrom hydra.core.global_hydra import GlobalHydra\n" + "".join(calls)
    out = run([sys.executable, "-c", code], cwd=tmp_path).stdout
    assert set(SCRIPTS) == {"mss-train", "mss-evaluate", "mss-separate", "mss-results"}
    for name, expected in (("mss-train", "task_name: train"), ("mss-evaluate", "task_name: evaluate"),
                           ("mss-separate", "task_name: separate"), ("mss-results", "usage: python -m mss.results")):
        section = out.split(f"== {name}\n", 1)[1].split("\n== ", 1)[0]
        assert expected in section, (name, section[:500])


# A user's project: their own separator in their own module, a model config pointing at it, and an experiment that
# overrides our values. Exactly the example of docs/workflow.md ("Your own models and configs").
USER_MODULE = '''
import torch
from torch import nn


class GainNet(nn.Module):
    """forward(mix (B, C, T)) -> (B, S, C, T): per-source sigmoid masks from a small 1-D convolution of the mixture."""

    def __init__(self, sources, audio_channels, sample_rate, segment_length, hidden=8):
        super().__init__()
        self.sources, self.audio_channels, self.sample_rate = list(sources), audio_channels, sample_rate
        self.segment_length = segment_length  # overlap-add chunk (samples) for whole-track inference
        self.conv = nn.Sequential(nn.Conv1d(audio_channels, hidden, 9, padding=4), nn.GELU(),
                                  nn.Conv1d(hidden, len(self.sources) * audio_channels, 9, padding=4))

    def forward(self, mix):
        b, c, t = mix.shape
        masks = torch.sigmoid(self.conv(mix)).view(b, len(self.sources), c, t)
        return masks * mix.unsqueeze(1)
'''
USER_MODEL_CONFIG = '''
_target_: mymodels.GainNet
sources: ${data.sources}
audio_channels: ${data.channels}
sample_rate: ${data.sample_rate}
segment_length: 44100
hidden: 8
'''
USER_EXPERIMENT = '''
# @package _global_
defaults:
  - override /model: mine
trainer:
  max_epochs: 1
module:
  optimizer:
    lr: 3.0e-3
'''


def test_user_model_and_configs_from_their_own_project(synth_root, tmp_path):
    """``--config-dir conf`` from the user's project folder: ``model=mine`` (their nn.Module, their YAML) trains,
    evaluates and loads back; their experiment overrides our values."""
    project = tmp_path / "project"
    (project / "conf" / "model").mkdir(parents=True)
    (project / "conf" / "experiment").mkdir()
    (project / "mymodels.py").write_text(USER_MODULE)
    (project / "conf" / "model" / "mine.yaml").write_text(USER_MODEL_CONFIG)
    (project / "conf" / "experiment" / "mine_quick.yaml").write_text(USER_EXPERIMENT)
    run_dir = project / "run"
    run([sys.executable, "-m", "mss.train", "--config-dir", "conf", "model=mine", "experiment=mine_quick",
         f"hydra.run.dir={run_dir}", f"data.root={synth_root}", "data.synth=null",
         f"paths.cache_dir={tmp_path / 'cache'}", *TINY_LOSS, *[o for o in TINY_RUN if "max_epochs" not in o]],
        cwd=project)
    cfg = (run_dir / "config.yaml").read_text()
    assert "_target_: mymodels.GainNet" in cfg and "max_epochs: 1" in cfg and "lr: 0.003" in cfg
    assert (run_dir / "eval" / "results.csv").is_file()
    code = ("import mss, torch, mymodels\n"
            f"net = mss.load_model({str(run_dir / 'checkpoints' / 'best.ckpt')!r})\n"
            "assert type(net) is mymodels.GainNet, type(net)\n"
            "print(tuple(net(torch.zeros(1, 2, 1000)).shape))\n")
    assert run([sys.executable, "-c", code], cwd=project).stdout.strip() == "(1, 4, 2, 1000)"


def _tiny_umx_targets(folder: Path) -> dict[str, torch.Tensor]:
    """Open-Unmix target state dicts in the reference layout (``<target>.pth``), tiny, at random weights."""
    from mss.models.openunmix import OpenUnmix

    torch.manual_seed(0)
    net = OpenUnmix(["vocals", "drums"], n_fft=512, hop_length=128, hidden_size=16, nb_layers=1)
    folder.mkdir()
    for name, target in net.targets.items():
        torch.save(target.state_dict(), folder / f"{name}.pth")
    return {f"targets.{k}": v for k, v in net.targets.state_dict().items()}


@pytest.mark.slow
def test_wheel_installs_and_runs_from_any_folder(tmp_path, server):
    """Build the wheel, install it (no dependencies resolved: the test environment's packages are made visible) into
    a fresh venv where the checkout's mss is not importable, then walk the user paths from an empty folder."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             "logs", "outputs", "multirun", ".pytest_cache"))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w",
         str(dist), str(src)], cwd=tmp_path)
    (wheel,) = dist.glob("mss-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.removeprefix("mss/conf/") for n in names if n.startswith("mss/conf/")} == {
        p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    entry_points = next(zipfile.Path(wheel, n).read_text() for n in names if n.endswith("entry_points.txt"))
    assert all(f"{name} = {entry}" in entry_points for name, entry in SCRIPTS.items())

    # outside the checkout: no PYTHONPATH (which may name the checkout), the venv's scripts first on PATH
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               MSS_CACHE_DIR=str(tmp_path / "cache"))
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       tmp_path, env).stdout.strip())
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         str(wheel)], tmp_path, env)
    # then torch and the other dependencies from this environment, as plain path entries (after the install, so that
    # pip does not take the checkout's mss for this one): this environment's .pth files, among them the editable
    # install of the checkout, are not processed
    import site

    (purelib / "test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    # the user's project is a git repository holding the venv: its revision is not mss's
    work = tmp_path / "work"
    work.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    run([*git, "init", "-q"], tmp_path, env)
    run([*git, "commit", "-q", "--allow-empty", "-m", "user project"], tmp_path, env)
    where = run(["python", "-c", "import mss, mss.run; print(mss.__file__); print(mss.run.CONF_DIR)"], work, env)
    mss_file, conf = (Path(line) for line in where.stdout.split())
    assert mss_file == purelib / "mss" / "__init__.py" and conf == purelib / "mss" / "conf"

    # the default job, shortened: synthetic data generated into the cache, train, test-set evaluation
    synth = ["data.synth.n_train=3", "data.synth.n_valid=1", "data.synth.n_test=2", "data.synth.duration=5.0"]
    run(["mss-train", *synth, *TINY_TRAIN], work, env)
    (run_dir,) = (work / "logs" / "train" / "runs").iterdir()
    best = run_dir / "checkpoints" / "best.ckpt"
    assert (run_dir / "eval" / "results.csv").is_file()
    assert (run_dir / "git_sha.txt").read_text() == "unknown\n"
    out = run(["mss-evaluate", f"ckpt={best}", "hydra.run.dir=evaluated"], work, env)
    assert "SDR" in out.stdout and (work / "evaluated" / "results.md").is_file()
    mixture = next((tmp_path / "cache").rglob("test/*/mixture.wav"))
    run(["mss-separate", f"ckpt={best}", f"input={mixture}", "output_dir=separated", "hydra.run.dir=sep_run"],
        work, env)
    assert {p.name for p in (work / "separated" / mixture.parent.name).iterdir()} == {
        f"{s}.wav" for s in ("drums", "bass", "other", "vocals")}
    out = run(["mss-results", "logs/train/runs", "--out", "results"], work, env)
    assert "SDR" in out.stdout and (work / "results" / "results.md").is_file()

    # an importer (reference-layout Open-Unmix targets), then load_model from Python on both checkpoints
    weights = _tiny_umx_targets(work / "umx")
    run(["python", "-m", "mss.pretrained.import_umx", "umx", "n_fft=512", "hop_length=128", "out=umx.ckpt"], work, env)
    code = ("import mss, torch\n"
            "net = mss.load_model('umx.ckpt')\n"
            "torch.save(net.state_dict(), 'loaded.pt')\n"
            f"unet = mss.load_model({str(best)!r})\n"
            "print(tuple(unet(torch.zeros(1, 2, 16384)).shape))\n")
    assert run(["python", "-c", code], work, env).stdout.strip() == "(1, 4, 2, 16384)"
    loaded = torch.load(work / "loaded.pt", weights_only=True)
    assert weights.keys() <= loaded.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
    # the registry of published models ships in the wheel
    out = run(["python", "-m", "mss.pretrained", "list"], work, env)
    assert all(name in out.stdout for name in ("htdemucs_ft", "umxhq", "bs_roformer_msst_musdb"))

    # a published model by name (a user registry on a local server: download, checksum, conversion), an MP3 in,
    # FLAC out, two-stem mode and test-time augmentation
    import hashlib

    import yaml

    from tests.test_import_demucs import export, small_htdemucs

    base, served, _ = server
    model = export(small_htdemucs(seed=3), served / "aaaa1111-00000000.th")
    entry = {"importer": "demucs", "sources": ["drums", "bass", "other", "vocals"],
             "files": {"model": {"url": base + model.name, "sha256": hashlib.sha256(model.read_bytes()).hexdigest()}}}
    (work / "registry.yaml").write_text(yaml.safe_dump({"tiny_ht": entry}))
    named = {**env, "MSS_PRETRAINED_REGISTRY": str(work / "registry.yaml"),
             "MSS_PRETRAINED_DIR": str(tmp_path / "pretrained")}
    run(["ffmpeg", "-v", "error", "-i", str(mixture), "-t", "1.5", "song.mp3"], work, env)
    run(["mss-separate", "model=tiny_ht", "input=song.mp3", "format=flac", "stems=[vocals]", "tta=[flip_channels]",
         "output_dir=named", "hydra.run.dir=named_run"], work, named)
    assert sorted(p.name for p in (work / "named" / "song").iterdir()) == ["no_vocals.flac", "vocals.flac"]
    assert any((tmp_path / "pretrained").rglob("*.ckpt"))

    # ONNX: export a (tiny, random) Conv-TasNet checkpoint, then separate with onnxruntime
    from mss.checkpoint import save_checkpoint
    from tests.test_export import tiny

    save_checkpoint(work / "tasnet.ckpt", *tiny("conv_tasnet"))
    out = run(["python", "-m", "mss.export", "ckpt=tasnet.ckpt", "format=onnx", "out=tasnet.onnx"], work, env)
    assert "max abs diff" in out.stdout
    run(["mss-separate", "ckpt=tasnet.onnx", "input=song.mp3", "output_dir=onnx", "hydra.run.dir=onnx_run"], work,
        env)
    assert len(list((work / "onnx" / "song").glob("*.wav"))) == 4
