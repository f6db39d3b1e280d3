"""Tracks and datasets on disk: :func:`render_track` turns a song plan and its sources' performances into integer
stems and their exact-sum mixture; :func:`generate` writes a whole dataset (WAV files, optional STEMS MP4 copies,
the validation list and the ``synth.json`` manifest) and renames it into place.

Shape legend: n = samples, c = channels (2), s = stems.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from mss.data.synth.instruments import MUSDB_SOURCES, check_sources, pan_mono, performance
from mss.data.synth.song import SPLIT_CODES, activity, name_key, plan_song, track_rng

__all__ = [
    "DURATION", "FORMAT_VERSION", "MANIFEST", "MIN_DURATION", "N_TEST", "N_TRAIN", "N_VALID", "SEED", "VALID_LIST",
    "check_panned_mono", "generate", "read_manifest", "render_track", "track_names",
]

FORMAT_VERSION = 1
# Defaults of generate(), the CLI and data=synth (conf/data/synth.yaml repeats them: tests/test_synth.py checks).
N_TRAIN, N_VALID, N_TEST, DURATION, SEED = 8, 2, 3, 12.0, 0
MIN_DURATION = 4.0  # a >= 1.5 s silent section plus > 50 % activity needs a few seconds
MANIFEST = "synth.json"
LAYOUTS = ("musdb", "moisesdb")
VALID_LIST = "valid_tracks.txt"

Array = np.ndarray


# ----------------------------------------------------------------------------------------------- rendering


def render_track(split: str, index: int, *, sources: Sequence[str] = MUSDB_SOURCES, duration: float = 12.0,
                 sample_rate: int = 44100, seed: int = 0, bit_depth: int = 16,
                 dither: bool = True, panned_mono: Mapping[str, float] | None = None) -> dict[str, Array]:
    """Render one track in memory, exactly as :func:`generate` stores it.

    Args:
        split: ``"train"``, ``"valid"`` or ``"test"`` (part of the random seed).
        index: track index within the split.
        panned_mono: ``{source: pan}``: these sources are mono performances panned to stereo (pan in [-1, 1],
            constant power), as bass and lead vocals are in many real mixes. Their channels are scaled copies of
            one signal up to the final rounding (each channel rounded and dithered on its own), and bit-identical
            at ``pan = 0``; BSS Eval's reference Gram matrix is then rank-deficient.

    Returns:
        ``{"mixture": x, <source>: x, ...}`` with x shaped (n, c): int16 for ``bit_depth=16``, int32 holding
        24-bit values (|x| < 2**23) for 24, float32 on a 2**-23 grid for 32. ``mixture`` is the exact sum of
        the stems (in float64 for ``bit_depth=32``).
    """
    sources = check_sources(sources)
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
    if bit_depth not in (16, 24, 32):
        raise ValueError(f"bit_depth must be 16, 24 or 32 (float), got {bit_depth}")
    panned = check_panned_mono(panned_mono, sources)
    n = round(duration * sample_rate)
    song = plan_song(track_rng(seed, split, index), n, sample_rate)
    perf, masks, rngs = [], [], []
    for name in sources:
        rng = track_rng(seed, split, index, name_key(name), 1)
        masks.append(activity(song, rng))
        rngs.append(rng)
        x = performance(name, song, seed, split, index)
        if name in panned:
            x = pan_mono(x.mean(axis=1), panned[name])
        perf.append(x * masks[-1][:, None])
    stems = quantise(dict(zip(sources, perf)), dict(zip(sources, masks)), dict(zip(sources, rngs)), song.peak_db,
                     bit_depth, dither)
    for name in sources:
        if panned.get(name) == 0.0:  # centred mono: one rounding for both channels (bit-identical)
            stems[name][:, 1:] = stems[name][:, :1]
    mix = sum(stems.values())
    full = 2 ** (min(bit_depth, 24) - 1) - 1
    if np.abs(mix).max() > full:  # cannot happen by construction; guard the invariant anyway
        raise RuntimeError("synthetic mixture clips; this is a bug in mss.data.synth")
    return {k: to_stored(v, bit_depth) for k, v in {"mixture": mix, **stems}.items()}


def quantise(perf: Mapping[str, Array], masks: Mapping[str, Array], rngs: Mapping[str, np.random.Generator],
             peak_db: float, bit_depth: int, dither: bool) -> dict[str, Array]:
    """Scale the performances ``{name: (n, c)}`` (already multiplied by their arrangement ``masks``) so that neither
    their sum nor any one of them exceeds ``peak_db`` after rounding and dither, dither them (TPDF, +-1 LSB, from
    ``rngs[name]``, only where ``masks[name] > 0``: silent sections stay exact zeros) and round: ``{name: (n, c)}``
    int64 on the ``min(bit_depth, 24)``-bit grid."""
    full = 2 ** (min(bit_depth, 24) - 1) - 1
    peak = max(float(np.abs(sum(perf.values())).max()), *(float(np.abs(p).max()) for p in perf.values()))
    scale = (10 ** (peak_db / 20) * full - 2 * len(perf)) / peak
    stems = {}
    for name, x in perf.items():
        y = x * scale
        if dither:
            y += (rngs[name].random(y.shape) - rngs[name].random(y.shape)) * (masks[name] > 0)[:, None]
        stems[name] = np.rint(y).astype(np.int64)
    return stems


def to_stored(x: Array, bit_depth: int) -> Array:
    """int64 samples from :func:`quantise` as stored by :func:`_write_wav`: int16 (16), int32 holding 24-bit
    values (24), float32 on a 2**-23 grid (32)."""
    if bit_depth == 16:
        return x.astype(np.int16)
    if bit_depth == 24:
        return x.astype(np.int32)
    return (x / 2.0**23).astype(np.float32)


def check_panned_mono(panned_mono: Mapping[str, float] | None, sources: Sequence[str]) -> dict[str, float]:
    """``panned_mono`` as ``{source: pan}`` with every source among ``sources`` and every pan in [-1, 1]."""
    if not panned_mono:
        return {}
    if not isinstance(panned_mono, Mapping):
        raise TypeError(f"panned_mono must map source names to pan positions in [-1, 1] (0 = centre), e.g. "
                        f"{{bass: 0, vocals: 0.3}}; got {panned_mono!r}")
    out = {str(k): float(v) for k, v in panned_mono.items()}
    unknown = sorted(set(out) - set(sources))
    if unknown:
        raise ValueError(f"panned_mono names {unknown}, which are not among the sources {list(sources)}")
    bad = {k: v for k, v in out.items() if not -1.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"panned_mono pan positions must lie in [-1, 1] (0 = centre), got {bad}")
    return out


def _write_wav(path: Path, x: Array, sr: int, bit_depth: int) -> None:
    if bit_depth == 16:
        sf.write(path, x, sr, subtype="PCM_16")
    elif bit_depth == 24:  # libsndfile maps int32 full scale to PCM_24 by dropping the low byte
        sf.write(path, x.astype(np.int32) << 8, sr, subtype="PCM_24")
    else:
        sf.write(path, x, sr, subtype="FLOAT")


# ----------------------------------------------------------------------------------------------- dataset


def track_names(n_train: int, n_valid: int, n_test: int) -> dict[str, list[str]]:
    """Track names per split: ``{"train": [synth-train-000, ...], "valid": [...], "test": [...]}``."""
    return {split: [f"synth-{split}-{i:03d}" for i in range(count)]
            for split, count in (("train", n_train), ("valid", n_valid), ("test", n_test))}


def read_manifest(root: Path) -> dict | None:
    """The parsed ``synth.json`` of ``root`` (``{}`` when unreadable), or ``None`` when there is none."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _diff(manifest: dict, params: dict) -> list[str]:
    old = dict(manifest.get("params", {}), version=manifest.get("version"))
    new = dict(params, version=FORMAT_VERSION)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _to_float(x: Array, bit_depth: int) -> Array:
    """Stored samples (n, c) as float64 in [-1, 1)."""
    return x / 2.0 ** (bit_depth - 1) if bit_depth in (16, 24) else x.astype(np.float64)


def _write_stem_mp4(path: Path, audio: dict[str, Array], sr: int, bit_depth: int) -> None:
    """MUSDB18 STEMS file: AAC streams 0 mixture, 1 drums, 2 bass, 3 other, 4 vocals."""
    import stempeg  # imported lazily: only this option needs it (and ffmpeg)

    order = ("mixture", *MUSDB_SOURCES)
    data = np.stack([_to_float(audio[s], bit_depth) for s in order])  # (s, n, c)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = stempeg.StreamsWriter(codec="aac", bitrate=256000, stem_names=list(order))
    stempeg.write_stems(str(path), data, sample_rate=sr, writer=writer)


def generate(root: str | os.PathLike, *, sources: Sequence[str] = MUSDB_SOURCES, n_train: int = N_TRAIN,
             n_valid: int = N_VALID, n_test: int = N_TEST, duration: float = DURATION, sample_rate: int = 44100,
             seed: int = SEED, bit_depth: int = 16, dither: bool = True, stems_mp4: bool = False,
             overwrite: bool = False, panned_mono: Mapping[str, float] | None = None, layout: str = "musdb") -> Path:
    """Write a synthetic dataset in the MUSDB18-HQ layout (or the MoisesDB layout) under ``root`` (see
    :mod:`mss.data.synth`).

    Generation happens in a temporary sibling folder that is renamed into place, ``valid_tracks.txt`` and
    ``synth.json`` being written last, so ``root`` is either absent or complete.

    Args:
        root: destination folder.
        sources: stem names, from :data:`KNOWN_SOURCES` (``accompaniment`` = drums + bass + other).
        n_train, n_valid, n_test: track counts; validation tracks are written into ``train/``.
        duration: seconds per track (>= 4).
        sample_rate: Hz (>= 8000).
        seed: non-negative base seed.
        bit_depth: 16 or 24 (PCM) or 32 (float WAV).
        dither: TPDF dither of +-1 LSB where a source plays.
        stems_mp4: also write ``root/stems/{train,test}/<track>.stem.mp4`` (MUSDB18 STEMS format; requires
            the 4 MUSDB sources and ffmpeg).
        overwrite: replace an existing synthetic dataset generated with other parameters. A non-empty folder
            without a manifest is never deleted.
        panned_mono: ``{source: pan}`` of sources rendered as panned mono (see :func:`render_track`).
        layout: ``musdb`` (MUSDB18-HQ: ``{train,test}/<track>/<source>.wav``) or ``moisesdb`` (MoisesDB:
            ``moisesdb_v0.1/<song id>/data.json`` and ``<stemName>/<track id>.wav`` per instrument track, some
            stems absent, the valid and test song ids in ``valid_tracks.txt`` / ``test_tracks.txt``; see
            :mod:`mss.data.synth.moisesdb`). ``sources`` does not apply to it (its songs have their own
            instruments), nor ``stems_mp4`` and ``panned_mono``.

    Returns:
        ``Path(root)``.

    Raises:
        ValueError: invalid parameters or unknown source names.
        FileExistsError: ``root`` holds a dataset with different parameters (and not ``overwrite``), or other
            files.
    """
    root = Path(root).expanduser()
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    moises = layout == "moisesdb"
    if moises and (stems_mp4 or panned_mono):
        raise ValueError("layout=moisesdb writes one WAV file per instrument track: stems_mp4 and panned_mono apply "
                         "to layout=musdb only")
    sources = MUSDB_SOURCES if moises else check_sources(sources)
    if bit_depth not in (16, 24, 32):
        raise ValueError(f"bit_depth must be 16, 24 or 32 (float), got {bit_depth}")
    if not float(duration) >= MIN_DURATION:
        raise ValueError(f"duration must be >= {MIN_DURATION} s (each source needs a >= 1.5 s silent "
                         f"section), got {duration}")
    if int(sample_rate) != sample_rate or sample_rate < 8000:
        raise ValueError(f"sample_rate must be an integer >= 8000, got {sample_rate}")
    counts = (n_train, n_valid, n_test)
    if any(int(c) != c or c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"track counts must be non-negative integers, not all zero, got {counts}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if stems_mp4 and set(sources) != set(MUSDB_SOURCES):
        raise ValueError(f"stems_mp4 needs exactly the MUSDB sources {list(MUSDB_SOURCES)}, "
                         f"got {list(sources)}")
    params = {"sources": list(sources), "n_train": int(n_train), "n_valid": int(n_valid),
              "n_test": int(n_test), "duration": float(duration), "sample_rate": int(sample_rate),
              "seed": int(seed), "bit_depth": int(bit_depth), "dither": bool(dither),
              "stems_mp4": bool(stems_mp4)}
    if moises:  # recorded only for this layout: datasets written before the option keep matching their manifest
        del params["sources"]
        params["layout"] = layout
    panned = check_panned_mono(panned_mono, sources)
    if panned:  # recorded only when used: datasets written before the option keep matching their manifest
        params["panned_mono"] = panned

    replacing = False
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a folder")
        manifest = read_manifest(root)
        if manifest is not None:
            diff = _diff(manifest, params)
            if not diff:
                return root
            if not overwrite:
                have = dict(manifest.get("params", {}), version=manifest.get("version"))
                want = dict(params, version=FORMAT_VERSION)
                raise FileExistsError(
                    f"{root} holds a synthetic dataset generated with other parameters (differing: {', '.join(diff)}"
                    f"; it has {', '.join(f'{k}={have.get(k)!r}' for k in diff)}, this asks for "
                    f"{', '.join(f'{k}={want.get(k)!r}' for k in diff)}); pass overwrite=true to replace it "
                    "(data.synth.overwrite=true for mss.train / mss.evaluate)")
            replacing = True
        elif any(root.iterdir()):
            raise FileExistsError(f"{root} exists, is not empty and holds no {MANIFEST}; refusing to write "
                                  "there (even with overwrite=True)")

    names = track_names(int(n_train), int(n_valid), int(n_test))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        if moises:
            _write_moisesdb(tmp, names, duration=duration, sample_rate=int(sample_rate), seed=int(seed),
                            bit_depth=bit_depth, dither=dither)
        else:
            _write_musdb(tmp, names, sources=sources, duration=duration, sample_rate=int(sample_rate),
                         seed=int(seed), bit_depth=bit_depth, dither=dither, stems_mp4=stems_mp4, panned=panned)
        (tmp / MANIFEST).write_text(json.dumps({"format": "mss.data.synth", "version": FORMAT_VERSION,
                                                "params": params, "tracks": names}, indent=2) + "\n")
        _move_into_place(tmp, root, params, replacing)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_musdb(tmp: Path, names: dict[str, list[str]], *, sources, duration, sample_rate, seed, bit_depth, dither,
                 stems_mp4, panned) -> None:
    for split, subset in (("train", "train"), ("valid", "train"), ("test", "test")):
        (tmp / subset).mkdir(parents=True, exist_ok=True)
        if stems_mp4:
            (tmp / "stems" / subset).mkdir(parents=True, exist_ok=True)
        for index, name in enumerate(names[split]):
            folder = tmp / subset / name
            folder.mkdir()
            audio = render_track(split, index, sources=sources, duration=duration, sample_rate=sample_rate,
                                 seed=seed, bit_depth=bit_depth, dither=dither, panned_mono=panned)
            for stem, x in audio.items():
                _write_wav(folder / f"{stem}.wav", x, sample_rate, bit_depth)
            if stems_mp4:
                _write_stem_mp4(tmp / "stems" / subset / f"{name}.stem.mp4", audio, sample_rate, bit_depth)
    valid_text = "".join(f"{name}\n" for name in names["valid"])
    if stems_mp4:
        (tmp / "stems" / VALID_LIST).write_text(valid_text)
    (tmp / VALID_LIST).write_text(valid_text)


def _write_moisesdb(tmp: Path, names: dict[str, list[str]], *, duration, sample_rate, seed, bit_depth,
                    dither) -> None:
    """All songs under ``tmp/moisesdb_v0.1/<song id>``; ``names`` becomes ``{split: [song id, ...]}``."""
    from mss.data.synth.moisesdb import PROVIDER, TEST_LIST, song_id, write_song

    for split in ("train", "valid", "test"):
        names[split] = [song_id(seed, split, index) for index in range(len(names[split]))]
        for index, name in enumerate(names[split]):
            folder = tmp / PROVIDER / name
            folder.mkdir(parents=True)
            write_song(folder, split, index, duration=duration, sample_rate=sample_rate, seed=seed,
                       bit_depth=bit_depth, dither=dither, write_wav=_write_wav)
    (tmp / VALID_LIST).write_text("".join(f"{name}\n" for name in names["valid"]))
    (tmp / TEST_LIST).write_text("".join(f"{name}\n" for name in names["test"]))


def _move_into_place(tmp: Path, root: Path, params: dict, replacing: bool) -> None:
    """Rename the finished ``tmp`` folder to ``root`` (moving an old dataset aside first when ``replacing``);
    tolerate a concurrent writer that finished the same dataset first."""
    old = None
    if replacing:
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(root, old)
    elif root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    try:
        os.rename(tmp, root)
    except OSError:
        if old is not None and not root.exists():
            os.rename(old, root)  # put the previous dataset back
            raise
        manifest = read_manifest(root)
        if manifest is None or _diff(manifest, params):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
