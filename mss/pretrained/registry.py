"""Published models by name: download, verify, convert once, reuse.

``mss.load_model("htdemucs")``, ``python -m mss.separate model=htdemucs input=song.mp3`` (or ``ckpt=htdemucs``),
``python -m mss.evaluate ckpt=umxhq`` and ``python -m mss.pretrained list``.

:data:`REGISTRY` maps a name to the files the reference project publishes (URL, SHA-256 — the Demucs and Open-Unmix
file names carry the first 8 hex digits of their SHA-256, which is what those projects check; a full sum where one is
published; ``None`` where nothing is published, then the sum of the first download is recorded and later uses of
the cached file are checked against it), the importer that turns them into an mss checkpoint, and the sources.
More entries (your own model zoo) come from YAML files named in ``MSS_PRETRAINED_REGISTRY`` (``os.pathsep``-separated),
in the same layout as :data:`REGISTRY`.

First use downloads each file with a progress bar into ``<cache>/<name>/`` (``MSS_PRETRAINED_DIR``, default
``~/.cache/mss/pretrained``), verifies its checksum **before** it becomes a cache entry (a partial download stays a
``.partial-*`` file and is removed), converts once to ``<cache>/<name>/<name>-<entry hash>.ckpt`` (atomically) and
reuses it afterwards. Offline, the error names the URL and the path to place the file at.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["REGISTRY", "PretrainedError", "cache_dir", "download", "fetch", "is_published", "registry",
           "resolve_checkpoint"]

log = logging.getLogger("mss.pretrained")

DEMUCS = "https://dl.fbaipublicfiles.com/demucs/"
_MUSDB4 = ["drums", "bass", "other", "vocals"]
_UMX_TARGETS = ["vocals", "drums", "bass", "other"]


def _demucs_file(path: str) -> dict:
    """A Demucs release file ``<root>/<sig>-<sha256 prefix>.th``."""
    return {"url": DEMUCS + path, "sha256": Path(path).stem.split("-")[1]}


def _umx(record: int, hashes: Mapping[str, str]) -> dict:
    return {f"{t}": {"url": f"https://zenodo.org/records/{record}/files/{t}-{h}.pth", "sha256": h}
            for t, h in hashes.items()}


_FT = ["f7e0c4bc-ba3fe64a", "d12395a8-e57c48e6", "92cfc3b6-ef3bcb9c", "04573f0d-f3cf25b2"]
_MSST = "https://github.com/ZFTurbo/Music-Source-Separation-Training/"
_UVR = "https://github.com/TRvlvr/model_repo/releases/download/all_public_uvr_models/"

REGISTRY: dict[str, dict[str, Any]] = {
    "htdemucs": {"importer": "demucs", "sources": _MUSDB4,
                 "files": {"model": _demucs_file("hybrid_transformer/955717e8-8726e21a.th")},
                 "description": "Hybrid Transformer Demucs (v4), MUSDB18-HQ + 800 songs; 9.0 dB (Demucs README)"},
    "htdemucs_ft": {"importer": "demucs_bag", "sources": _MUSDB4,
                    "files": {sig: _demucs_file(f"hybrid_transformer/{sig}.th") for sig in _FT},
                    "bag": {"models": [s.split("-")[0] for s in _FT],
                            "weights": [[float(i == j) for j in range(4)] for i in range(4)]},
                    "description": "HT Demucs fine-tuned per source (bag of 4, one per stem; 4x slower); 9.2 dB"},
    "htdemucs_6s": {"importer": "demucs", "sources": _MUSDB4 + ["guitar", "piano"],
                    "files": {"model": _demucs_file("hybrid_transformer/5c90dfd2-34c22ccb.th")},
                    "description": "HT Demucs, 6 sources (adds guitar, piano; piano bleeds), not trained on MUSDB"},
    "hdemucs_mmi": {"importer": "demucs", "sources": _MUSDB4,
                    "files": {"model": _demucs_file("hybrid_transformer/75fc33f5-1941ce65.th")},
                    "description": "Hybrid Demucs v3 retrained on MUSDB18-HQ + 800 songs"},
    "umxhq": {"importer": "umx", "sources": _UMX_TARGETS,
              "files": _umx(3370489, {"vocals": "b62c91ce", "drums": "9619578f", "bass": "8d85a5bd",
                                      "other": "b52fbbf7"}),
              "description": "Open-Unmix UMX-HQ (MUSDB18-HQ)"},
    "umx": {"importer": "umx", "sources": _UMX_TARGETS,
            "files": _umx(3370486, {"vocals": "c8df74a5", "drums": "5a48008b", "bass": "646024d3",
                                    "other": "f8e132cc"}),
            "description": "Open-Unmix UMX (MUSDB18, 16 kHz bandwidth)"},
    "umxl": {"importer": "umx", "sources": _UMX_TARGETS,
             "files": _umx(5069601, {"vocals": "bccbd9aa", "drums": "69e0ebd4", "bass": "2ca1ce51",
                                     "other": "c8c5b3e6"}),
             "description": "Open-Unmix UMX-L (private data; weights CC BY-NC-SA 4.0)"},
    "bs_roformer_msst_musdb": {
        "importer": "msst", "type": "bs_roformer", "sources": _MUSDB4,
        "files": {"model": {"url": _MSST + "releases/download/v1.0.12/model_bs_roformer_ep_17_sdr_9.6568.ckpt",
                            "sha256": None},
                  "config": {"url": _MSST + "releases/download/v1.0.12/config_bs_roformer_384_8_2_485100.yaml",
                             "sha256": None}},
        "description": "BS-RoFormer 4 stems, MSST (MUSDB test avg 9.65 dB)"},
    "bs_roformer_viperx_1297": {
        "importer": "msst", "type": "bs_roformer", "sources": ["vocals", "other"],
        "files": {"model": {"url": _UVR + "model_bs_roformer_ep_317_sdr_12.9755.ckpt", "sha256": None},
                  "config": {"url": "https://raw.githubusercontent.com/ZFTurbo/Music-Source-Separation-Training/main/"
                                    "configs/viperx/model_bs_roformer_ep_317_sdr_12.9755.yaml", "sha256": None}},
        "description": "BS-RoFormer vocals/other, viperx edition (MSST: vocals 10.87 dB)"},
    "mel_roformer_viperx_1143": {
        "importer": "msst", "type": "mel_band_roformer", "sources": ["vocals", "other"],
        "files": {"model": {"url": _UVR + "model_mel_band_roformer_ep_3005_sdr_11.4360.ckpt", "sha256": None},
                  "config": {"url": "https://raw.githubusercontent.com/ZFTurbo/Music-Source-Separation-Training/main/"
                                    "configs/viperx/model_mel_band_roformer_ep_3005_sdr_11.4360.yaml",
                             "sha256": None}},
        "description": "Mel-Band RoFormer vocals/other, viperx edition (MSST: vocals 9.67 dB)"},
    "mel_roformer_kj": {
        "importer": "msst", "type": "mel_band_roformer", "sources": ["vocals", "other"],
        "files": {"model": {"url": "https://huggingface.co/KimberleyJSN/melbandroformer/resolve/main/"
                                   "MelBandRoformer.ckpt", "sha256": None},
                  "config": {"url": "https://raw.githubusercontent.com/ZFTurbo/Music-Source-Separation-Training/main/"
                                    "configs/KimberleyJensen/config_vocals_mel_band_roformer_kj.yaml",
                             "sha256": None}},
        "description": "Mel-Band RoFormer vocals, KimberleyJensen edition (MSST: vocals 10.98 dB)"},
}
# published names mss refuses, with the reason
REFUSED = {name: ("DiffQ-quantized weights: no maintained package decodes them (diffq is unmaintained); use "
                  f"{name[:-2]} or htdemucs") for name in ("mdx_q", "mdx_extra_q")}
IMPORTERS = ("demucs", "demucs_bag", "umx", "msst")


class PretrainedError(RuntimeError):
    """A published model cannot be fetched or converted (unknown name, download failure, checksum mismatch)."""


def cache_dir() -> Path:
    """Where downloads and converted checkpoints live: ``MSS_PRETRAINED_DIR`` or ``~/.cache/mss/pretrained``."""
    return Path(os.environ.get("MSS_PRETRAINED_DIR") or Path.home() / ".cache" / "mss" / "pretrained").expanduser()


def registry() -> dict[str, dict[str, Any]]:
    """:data:`REGISTRY` plus the entries of the YAML files in ``MSS_PRETRAINED_REGISTRY`` (later files win)."""
    import yaml

    out = dict(REGISTRY)
    for item in filter(None, os.environ.get("MSS_PRETRAINED_REGISTRY", "").split(os.pathsep)):
        path = Path(item).expanduser()
        try:
            entries = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise PretrainedError(f"MSS_PRETRAINED_REGISTRY: cannot read {path}: {err}") from err
        if not isinstance(entries, dict):
            raise PretrainedError(f"{path}: expected a mapping of model names to entries")
        for name, entry in entries.items():
            _check_entry(name, entry, path)
            out[str(name)] = entry
    return out


def _check_entry(name: str, entry: Any, where: Path | str) -> None:
    if not isinstance(entry, dict) or entry.get("importer") not in IMPORTERS or not isinstance(entry.get("files"),
                                                                                                dict):
        raise PretrainedError(f"{where}: entry {name!r} needs importer (one of {list(IMPORTERS)}), files "
                              "({role: {url, sha256}}) and sources")
    for role, spec in entry["files"].items():
        if not isinstance(spec, dict) or "url" not in spec:
            raise PretrainedError(f"{where}: entry {name!r}, file {role!r}: expected {{url: ..., sha256: ...}}")


def is_published(name: str | os.PathLike) -> bool:
    """``name`` is a registry name (and not an existing path)."""
    text = str(name)
    return not Path(text).expanduser().exists() and (text in registry() or text in REFUSED)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True) -> Path:
    """``url`` -> ``dest``, verified against ``sha256`` (a full sum or a prefix) before it takes the name ``dest``.
    A cached ``dest`` whose sum matches is reused (no request); one that does not is downloaded again."""
    dest = Path(dest)
    if dest.is_file():
        if sha256 is None or _sha256(dest).startswith(sha256.lower()):
            return dest
        log.warning("%s: cached file fails its checksum; downloading it again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{uuid.uuid4().hex[:8]}")
    digest = hashlib.sha256()
    try:
        from tqdm.auto import tqdm

        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        tmp.unlink(missing_ok=True)
        raise PretrainedError(f"cannot download {url} ({err}); without network access, download it elsewhere and "
                              f"place it at {dest}") from err
    if sha256 is not None and not digest.hexdigest().startswith(sha256.lower()):
        tmp.unlink(missing_ok=True)
        raise PretrainedError(f"{url}: checksum mismatch (sha256 {digest.hexdigest()[:16]}…, expected {sha256}…); "
                              f"nothing was written to {dest}")
    os.replace(tmp, dest)
    return dest


def fetch(name: str, progress: bool = True) -> Path:
    """The converted mss checkpoint of the published model ``name`` (downloaded and converted on first use)."""
    if name in REFUSED:
        raise PretrainedError(f"published model {name!r} is not supported: {REFUSED[name]}")
    entries = registry()
    if name not in entries:
        raise PretrainedError(f"unknown published model {name!r}; known: {sorted(entries)} (python -m mss.pretrained "
                              "list)")
    entry = entries[name]
    _check_entry(name, entry, "registry")
    folder = cache_dir() / name
    key = hashlib.sha1(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:8]
    out = folder / f"{name}-{key}.ckpt"
    if out.is_file():
        return out
    files = {role: download(spec["url"], folder / Path(urllib.request.url2pathname(spec["url"].split("?")[0])).name,
                            spec.get("sha256"), progress)
             for role, spec in entry["files"].items()}
    _record_unpublished_sums(folder, entry, files)
    log.info("converting %s to an mss checkpoint: %s", name, out)
    _convert(entry, files, out)
    return out


def _record_unpublished_sums(folder: Path, entry: Mapping, files: Mapping[str, Path]) -> None:
    """Files without a published checksum: the sum of the first download is kept in ``sums.json``; a cached file
    that no longer matches it is an error (trust on first use)."""
    from mss.utils import atomic_write_text

    if all(entry["files"][role].get("sha256") is not None for role in files):
        return
    record = folder / "sums.json"
    sums = json.loads(record.read_text()) if record.is_file() else {}
    for role, path in files.items():
        if entry["files"][role].get("sha256") is not None:
            continue
        actual = _sha256(path)
        if sums.setdefault(path.name, actual) != actual:
            raise PretrainedError(f"{path}: changed since it was first downloaded (sha256 {actual[:16]}…, recorded "
                                  f"{sums[path.name][:16]}… in {record}); delete it to download it again")
    atomic_write_text(record, json.dumps(sums, indent=2))


def _convert(entry: Mapping, files: Mapping[str, Path], out: Path) -> None:
    importer = entry["importer"]
    if importer == "demucs":
        from mss.pretrained.import_demucs import convert

        convert(files["model"], out)
    elif importer == "demucs_bag":
        import yaml

        from mss.pretrained.import_demucs import convert
        from mss.utils import atomic_write_text

        folder = next(iter(files.values())).parent
        bag = folder / "bag.yaml"
        atomic_write_text(bag, yaml.safe_dump(dict(entry["bag"])))
        convert(bag, out)
    elif importer == "umx":
        from mss.pretrained.import_umx import import_umx

        import_umx({t: files[t] for t in entry.get("sources") or files}, out)
    else:
        from mss.pretrained.import_msst import import_msst

        import_msst(files["model"], files["config"], out, entry.get("type"), entry.get("sources"))


def resolve_checkpoint(spec: str | os.PathLike | None) -> str | os.PathLike | None:
    """``spec`` itself when it is a path (or unset), else the converted checkpoint of the published model it names."""
    if spec is None or not is_published(spec):
        return spec
    return str(fetch(str(spec)))
