"""Set-up on users' machines: which torch build scripts/setup.sh installs, dependencies declared for every module mss
imports, and environment.yml in step with pyproject.toml."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _name(requirement: str) -> str:
    """Normalised distribution name of a requirement string (PEP 503)."""
    return re.sub(r"[-_.]+", "-", _NAME.match(requirement).group()).lower()


def _spec(requirement: str) -> str:
    """The version specifier of a requirement string, markers and spaces dropped (``>=2.6,<3``)."""
    return re.sub(r"\s+", "", requirement.split(";")[0][_NAME.match(requirement).end():])


# --- which torch build -----------------------------------------------------------------------------------------------

def _fake_wheel(folder: Path, version: str) -> Path:
    """A minimal valid wheel named torch (metadata only): what pip finds on disk through find-links."""
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def plan(tmp_path: Path, gpu: bool = False, wheel: str | None = None, **env: str) -> list[str]:
    """``scripts/setup.sh --plan`` on a machine with (or without) ``nvidia-smi`` and a find-links folder holding (or
    not) a torch wheel; pip's own configuration files are switched off, so nothing reaches the network."""
    bin_dir, links = tmp_path / "bin", tmp_path / "wheels"
    bin_dir.mkdir()
    links.mkdir()
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\nexit 0\n")
        smi.chmod(0o755)
    if wheel:
        _fake_wheel(links, wheel)
    base = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path), "PYTHON": sys.executable,
            "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(links), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--plan"], env={**base, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[:-1]


def _has_nvidia_gpu() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or any(
        shutil.which("nvidia-smi", path=p) for p in ("/usr/bin", "/bin"))


linux = pytest.mark.skipif(sys.platform != "linux", reason="PyPI's torch is a CUDA build on Linux only")
no_gpu = pytest.mark.skipif(_has_nvidia_gpu(), reason="this machine has an NVIDIA GPU")


@linux
@no_gpu
def test_no_gpu_no_local_wheel_takes_pytorchs_cpu_index(tmp_path):
    assert plan(tmp_path) == ["torch==2.13.0", "--index-url", CPU_INDEX]


@linux
@no_gpu
def test_no_gpu_takes_the_local_wheel_that_satisfies_the_spec(tmp_path):
    assert plan(tmp_path, wheel="2.13.0+cpu") == [str(tmp_path / "wheels" / "torch-2.13.0+cpu-py3-none-any.whl")]
    # a wheel on disk that does not satisfy TORCH_SPEC is not taken
    other = tmp_path / "other"
    other.mkdir()
    assert plan(other, wheel="2.13.0+cpu", TORCH_SPEC="torch==2.12.0") == ["torch==2.12.0", "--index-url", CPU_INDEX]


@linux
def test_gpu_takes_the_default_pypi_build_and_an_index_url_wins(tmp_path):
    (tmp_path / "a").mkdir()
    assert plan(tmp_path / "a", gpu=True, wheel="2.13.0+cpu") == ["torch==2.13.0"]
    (tmp_path / "b").mkdir()
    cuda = "https://download.pytorch.org/whl/cu128"
    assert plan(tmp_path / "b", wheel="2.13.0+cpu", TORCH_INDEX_URL=cuda, TORCH_SPEC="torch==2.13.0") == [
        "torch==2.13.0", "--index-url", cuda]


# --- declared dependencies -------------------------------------------------------------------------------------------

def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in a ``try`` whose handlers catch ImportError (an optional dependency)."""
    child, node = node, parents.get(node)
    while node is not None:
        if isinstance(node, ast.Try) and child in node.body:
            for handler in node.handlers:
                names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
        child, node = node, parents.get(node)
    return False


def third_party_imports(package: Path) -> dict[str, bool]:
    """``{top-level module: optional}`` for every module imported under ``package`` that is neither stdlib nor mss;
    optional when every import of it is guarded by ``except ImportError``."""
    found: dict[str, bool] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top in sys.stdlib_module_names or top in ("mss", "__main__"):
                    continue
                found[top] = found.get(top, True) and _guarded(node, parents)
    return found


def test_every_imported_module_is_declared():
    required = {_name(r) for r in PROJECT["dependencies"]}
    optional = {_name(r) for reqs in PROJECT["optional-dependencies"].values() for r in reqs}
    distributions = importlib.metadata.packages_distributions()
    imports = third_party_imports(ROOT / "mss")
    assert {"torch", "yaml", "simplejson", "jsonschema", "xformers"} <= imports.keys()  # the walk sees them
    problems = []
    for module, is_optional in sorted(imports.items()):
        dists = {_name(d) for d in distributions.get(module, [])}
        if not dists:
            if not is_optional:
                problems.append(f"{module}: imported unconditionally but not installed here")
                continue
            dists = {_name(module)}  # an optional package that is not installed: its name is the module's
        declared = required | optional if is_optional else required
        if not dists & declared:
            where = "dependencies or an extra" if is_optional else "dependencies"
            problems.append(f"{module} (distribution {sorted(dists)}): not in pyproject.toml {where}")
    assert not problems, "\n".join(problems)


def test_floors_match_what_the_code_calls():
    floors = {_name(r): _spec(r) for r in PROJECT["dependencies"]}
    assert floors["torch"] == ">=2.5"  # torch.nn.attention.flex_attention (t_attn_backend=flex)
    assert floors["lightning"].startswith(">=2.6")  # lightning.pytorch.callbacks.EMAWeightAveraging
    assert "lightning.pytorch.callbacks.EMAWeightAveraging" in (ROOT / "conf" / "callbacks" / "ema.yaml").read_text()
    assert "torch.nn.attention.flex_attention" in (ROOT / "mss" / "models" / "attention.py").read_text()


# --- environment.yml -------------------------------------------------------------------------------------------------

# pyproject name -> conda-forge / pytorch channel name, where they differ
CONDA_NAMES = {"torch": "pytorch", "soundfile": "pysoundfile"}
CONDA_ONLY = {"python", "cpuonly", "ffmpeg", "pip"}
DEV_TOOLS = {"pytest", "ruff", "onnx", "onnxruntime", "onnxscript"}  # dev extras in environment.yml too


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip_section = next(e["pip"] for e in env if isinstance(e, dict))
    conda = {_name(e): _spec(e) for e in env if isinstance(e, str)}
    pip = {_name(e): _spec(e) for e in pip_section if not e.startswith("-e")}
    assert "-e ." in pip_section  # mss itself, editable
    assert conda.pop("python").startswith(PROJECT["requires-python"])
    for name in CONDA_ONLY - {"python"}:
        conda.pop(name)
    entries = {**{next((k for k, v in CONDA_NAMES.items() if v == n), n): s for n, s in conda.items()}, **pip}
    assert not conda.keys() & pip.keys(), "a package listed for both conda and pip"
    wanted = {_name(r): _spec(r) for r in PROJECT["dependencies"]}
    wanted |= {_name(r): _spec(r) for r in PROJECT["optional-dependencies"]["dev"] if _name(r) in DEV_TOOLS}
    assert entries == wanted
