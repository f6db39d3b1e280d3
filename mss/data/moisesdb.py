"""MoisesDB (``data=moisesdb``): track discovery from each song's ``data.json`` and the mapping of MoisesDB's two-level
taxonomy (stems, then instrument tracks) onto ``data.sources``.

Layout read (the download, and what ``python -m mss.data.synth layout=moisesdb`` writes)::

    root/<provider>/<song id>/data.json          (root may also be the provider folder itself)
    root/<provider>/<song id>/<stemName>/<track id>.<extension>

    data.json: {"song", "artist", "genre", "stems": [{"stemName", "id", "tracks": [{"trackType", "id",
               "extension", ...}, ...]}, ...]}

Mapping (``data.taxonomy``, ``data.unmapped``): each source of ``data.sources`` lists rules; a rule is a stem name
(``guitar``: every track of that stem) or ``stem/instrument`` (``guitar/acoustic guitar``: the tracks of that stem
whose ``trackType`` equals the instrument, or matches it as a regular expression, case-insensitively). An instrument
rule beats a stem rule; two rules of one level claiming one track is an error. Every track no rule claims goes to the
source ``data.unmapped`` (``other``) or is dropped (``drop``: left out of the sources *and* the mixture). Stem names
compare case-insensitively with spaces as underscores (``other keys`` = ``other_keys``), and must be MoisesDB stems
(:data:`STEMS`). A source of a song is the tuple of its files (summed on read); a song with none is missing that
source (``Track.sources[s] == ()``, ``missing_stems: allow``). There is no mixture file: the mixture is the sum of
the mapped tracks.

Split: MoisesDB has no official one. ``data.test_tracks`` and ``data.valid_tracks`` are each a fraction of the songs
drawn with ``data.split_seed`` (one seeded permutation of the sorted song ids: the test songs first, then the
validation songs, so the test set does not depend on the validation fraction), a file of song ids relative to
``data.root`` (one per line; the generator writes ``valid_tracks.txt`` and ``test_tracks.txt``), a list of ids, or
null for none.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mss.data.datamodule import MSSDataModule
from mss.data.tracks import METADATA_VERSION, MISSING, DatasetError, Track, build_track, listing_key
from mss.utils import atomic_write_text

log = logging.getLogger("mss.data")

# MoisesDB's stems (first level of its taxonomy), as data.json spells them
STEMS = ("vocals", "bass", "drums", "other", "guitar", "other_plucked", "percussion", "piano", "other_keys",
         "bowed_strings", "wind")
DROP = "drop"
MAPPING_VERSION = 1


def _norm(stem: str) -> str:
    return re.sub(r"[\s-]+", "_", str(stem).strip().lower())


class Taxonomy:
    """The rules that map (stemName, trackType) onto sources (see the module docstring).

    Args:
        rules: ``{source: [stem or "stem/instrument", ...]}``.
        sources: ``data.sources``; every source needs rules or must be ``unmapped``.
        unmapped: a source of ``sources`` that takes every unclaimed track, or ``drop``.
    """

    def __init__(self, rules: dict[str, list[str]], sources: list[str], unmapped: str = "other"):
        rules = {str(k): [v] if isinstance(v, str) else list(v or []) for k, v in (rules or {}).items()}
        extra = sorted(set(rules) - set(sources))
        if extra:
            raise DatasetError(f"data.taxonomy names source(s) {extra} that are not in data.sources={list(sources)}")
        if unmapped != DROP and unmapped not in sources:
            raise DatasetError(f"data.unmapped={unmapped!r}: expected one of data.sources={list(sources)} or "
                               f"{DROP!r}")
        lacking = [s for s in sources if not rules.get(s) and s != unmapped]
        if lacking:
            raise DatasetError(f"data.taxonomy: source(s) {lacking} have no rules (and are not data.unmapped="
                               f"{unmapped!r}); e.g. data.taxonomy.{lacking[0]}=[{lacking[0]}]")
        self.sources, self.unmapped, self.rules = list(sources), unmapped, rules
        self._stem: dict[str, tuple[str, str]] = {}  # stem -> (source, rule)
        self._inst: list[tuple[str, str, str, re.Pattern | None, str]] = []  # stem, literal, source, regex, rule
        for source, items in rules.items():
            for i, rule in enumerate(items):
                key = f"data.taxonomy.{source}[{i}]"
                if not isinstance(rule, str) or not rule.strip():
                    raise DatasetError(f"{key}={rule!r}: expected a stem name or 'stem/instrument'")
                stem, _, inst = rule.partition("/")
                stem = _norm(stem)
                if stem not in STEMS:
                    raise DatasetError(f"{key}={rule!r}: unknown MoisesDB stem {stem!r}; known stems: "
                                       f"{', '.join(STEMS)}")
                if not inst:
                    if stem in self._stem and self._stem[stem][0] != source:
                        raise DatasetError(f"{key}={rule!r}: stem {stem!r} is already mapped to source "
                                           f"{self._stem[stem][0]!r}")
                    self._stem[stem] = (source, rule)
                    continue
                try:
                    pattern = re.compile(inst.strip(), re.IGNORECASE)
                except re.error:
                    pattern = None  # a literal trackType with regex metacharacters
                self._inst.append((stem, inst.strip().lower(), source, pattern, rule))

    def source_of(self, stem: str, track_type: str, where: str) -> tuple[str | None, str]:
        """``(source or None when dropped, the rule that decided)`` of one instrument track."""
        stem = _norm(stem)
        hits = {(source, rule) for s, literal, source, pattern, rule in self._inst if s == stem and (
            literal == track_type.strip().lower() or (pattern is not None and pattern.fullmatch(track_type)))}
        if len({source for source, _ in hits}) > 1:
            raise DatasetError(f"{where}: track type {track_type!r} of stem {stem!r} matches the rules "
                               f"{sorted(rule for _, rule in hits)} of different sources")
        if hits:
            return min(hits)  # one source; the first of its matching rules
        if stem in self._stem:
            return self._stem[stem]
        return (None if self.unmapped == DROP else self.unmapped), f"unmapped={self.unmapped}"


def _field(obj, key: str, kind, where: str, path: Path):
    where = f"{where}.{key}" if where else key
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(f"{path}: key '{where}' is missing (MoisesDB data.json: stems[i].stemName, "
                           f"stems[i].tracks[j].trackType/id/extension)")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise DatasetError(f"{path}: key '{where}' is {value!r}, expected "
                           f"{'a list' if kind is list else 'a non-empty string'}")
    return value


def read_song(folder: Path, taxonomy: Taxonomy) -> tuple[dict[str, list[str]], list[list]]:
    """Parse ``folder/data.json``: ``({source: [files]}, [[stemName, trackType, source or None, rule, file], ...])``;
    malformed content or a listed file that does not exist is a :class:`DatasetError` naming the file and key."""
    path = folder / "data.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object with key 'stems', got {type(meta).__name__}")
    stems = _field(meta, "stems", list, "", path)
    files: dict[str, list[str]] = {s: [] for s in taxonomy.sources}
    entries = []
    for i, stem in enumerate(stems):
        name = _field(stem, "stemName", str, f"stems[{i}]", path)
        for j, track in enumerate(_field(stem, "tracks", list, f"stems[{i}]", path)):
            where = f"stems[{i}].tracks[{j}]"
            kind = _field(track, "trackType", str, where, path)
            track_id, ext = (_field(track, k, str, where, path) for k in ("id", "extension"))
            audio = folder / name / f"{track_id}.{ext}"
            if not audio.is_file():
                raise DatasetError(f"{path}: {where} ({name}/{kind}) lists {audio}, which does not exist")
            source, rule = taxonomy.source_of(name, kind, f"{path} {where}")
            if source is not None:
                files[source].append(str(audio))
            entries.append([name, kind, source, rule, str(audio)])
    return files, entries


def song_folders(root: Path) -> list[Path]:
    """The song folders (holding ``data.json``) of ``root``: its sub-folders, or those of its provider folders."""
    if not root.is_dir():
        raise DatasetError(f"{root}: MoisesDB folder not found (set data.root to the folder of the download, holding "
                           "moisesdb_v0.1/<song id>/data.json)")
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (child / "data.json").is_file():
            found.append(child)
        else:
            found += sorted(p for p in child.iterdir() if p.is_dir() and (p / "data.json").is_file())
    if not found:
        raise DatasetError(f"{root}: no song folders with a data.json (expected {root}/<provider>/<song id>/data.json "
                           "as in the MoisesDB download)")
    names = Counter(p.name for p in found)
    twice = sorted(n for n, c in names.items() if c > 1)
    if twice:
        raise DatasetError(f"{root}: song id(s) {twice[:3]} appear in more than one provider folder")
    return found


def mapping_report(taxonomy: Taxonomy, songs: dict[str, list[list]]) -> dict:
    """What went where: per source the stems and ``stem/trackType`` counts, its files and the songs with / without
    it; the dropped ``stem/trackType`` counts; the rules that matched no track."""
    entries = [e for es in songs.values() for e in es]
    out = {"version": MAPPING_VERSION, "rules": taxonomy.rules, "unmapped": taxonomy.unmapped, "songs": len(songs),
           "sources": {}}
    for source in taxonomy.sources:
        mine = [(stem, kind) for stem, kind, src, _, _ in entries if src == source]
        present = sum(any(e[2] == source for e in es) for es in songs.values())
        out["sources"][source] = {
            "stems": dict(sorted(Counter(stem for stem, _ in mine).items())),
            "instruments": dict(sorted(Counter(f"{stem}/{kind}" for stem, kind in mine).items())),
            "files": len(mine), "songs": present, "songs_without": len(songs) - present}
    out["dropped"] = dict(sorted(Counter(f"{stem}/{kind}" for stem, kind, src, _, _ in entries
                                         if src is None).items()))
    used = {rule for _, _, _, rule, _ in entries}
    out["unmatched_rules"] = [rule for items in taxonomy.rules.values() for rule in items if rule not in used]
    return out


def find_songs(root, taxonomy: Taxonomy, *, sample_rate: int, channels: int, convert: bool = False,
               cache_dir=None) -> tuple[list[Track], dict]:
    """All songs of a MoisesDB folder as :class:`Track` objects (sources mapped by ``taxonomy``, absent ones ``()``),
    and the mapping report (:func:`mapping_report`). The scan (file checks, mixture statistics) is cached in
    ``cache_dir/metadata/<hash of the listing and the rules>.json``, like :func:`mss.data.tracks.find_tracks`."""
    root = Path(root).expanduser()
    folders = song_folders(root)
    files = sorted(p for d in folders for p in [d / "data.json", *d.glob("*/*")] if p.is_file())
    key = listing_key(root, files, {"v": METADATA_VERSION, "layout": "moisesdb", "rules": taxonomy.rules,
                                     "unmapped": taxonomy.unmapped, "sources": taxonomy.sources, "sr": sample_rate,
                                     "channels": channels, "convert": convert})
    cache = Path(cache_dir).expanduser() / "metadata" / f"{key}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
        tracks = [Track(**{**t, "sources": {k: tuple(v) for k, v in t["sources"].items()}}) for t in data["tracks"]]
        return tracks, data["mapping"]
    tracks, songs = [], {}
    for folder in folders:
        sources, songs[folder.name] = read_song(folder, taxonomy)
        if not any(sources.values()):
            raise DatasetError(f"{folder / 'data.json'}: song {folder.name} has no tracks for any of the sources "
                               f"{taxonomy.sources} (everything dropped by data.unmapped={DROP})")
        resolved = {s: tuple(fs) for s, fs in sources.items()}
        tracks.append(build_track(folder.name, resolved, None, sample_rate=sample_rate, channels=channels,
                                  convert=convert, where=str(folder)))
    mapping = mapping_report(taxonomy, songs)
    if cache is not None:
        atomic_write_text(cache, json.dumps({"folder": str(root), "tracks": [asdict(t) for t in tracks],
                                             "mapping": mapping}))
    return tracks, mapping


def split_names(names: list[str], spec, root: Path, seed: int, exclude: set[str], key: str) -> list[str]:
    """Resolve ``data.test_tracks`` / ``data.valid_tracks`` (``key``): a fraction in [0, 1) of ``names`` drawn from
    the seeded permutation (skipping ``exclude``), a file of ids relative to ``root``, a list of ids, or null."""
    if spec is None or spec == [] or spec == "":
        return []
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not 0 <= spec < 1:
            raise DatasetError(f"{key}={spec}: a fraction must lie in [0, 1)")
        if spec == 0:
            return []
        order = [n for n in (sorted(names)[i] for i in np.random.default_rng(seed).permutation(len(names)))
                 if n not in exclude]
        count = max(1, round(spec * len(names)))
        if count >= len(order):
            raise DatasetError(f"{key}={spec}: {count} of the {len(order)} remaining songs would leave none to "
                               "train on")
        return sorted(order[:count])
    if isinstance(spec, str):
        path = root / spec
        if not path.is_file():
            raise DatasetError(f"{key}={spec!r}: {path} not found (expected a fraction, a list of song ids, or a "
                               "file of ids relative to data.root)")
        wanted = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        wanted = [str(n) for n in spec]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise DatasetError(f"{key}: {len(unknown)} song id(s) not found in {root}: {unknown[:5]}")
    both = sorted(set(wanted) & exclude)
    if both:
        raise DatasetError(f"{key}: song id(s) {both[:5]} are also test songs")
    return sorted(set(wanted))


class MoisesDBDataModule(MSSDataModule):
    """:class:`MSSDataModule` on a MoisesDB folder: only the track discovery differs (see the module docstring).

    Args (beyond :class:`MSSDataModule`'s):
        taxonomy: ``{source: [stem or "stem/instrument", ...]}``.
        unmapped: the source that takes unclaimed tracks, or ``drop``.
        test_tracks, valid_tracks: fraction, file of song ids relative to ``root``, list of ids, or null.
        split_seed: seed of the fraction split.
        mapping_file: where :meth:`setup` for training (stage ``fit``) writes the mapping report (JSON; ``null``:
            nowhere); ``conf/data/moisesdb`` puts it into the run directory.

    ``synth`` (as in ``data=synth``) generates a synthetic MoisesDB-layout dataset (``layout=moisesdb``).
    """

    def __init__(self, *, taxonomy: dict[str, list[str]] | None = None, unmapped: str = "other", test_tracks=0.1,
                 split_seed: int = 0, mapping_file: str | None = None, missing_stems: str = "allow", **kw):
        if kw.get("format", "wav") == "stems":
            raise ValueError("data.format=stems is MUSDB18's; MoisesDB songs are folders of audio files")
        if kw.get("aggregates"):
            raise ValueError("data.aggregates does not apply to data=moisesdb: list the stems of a combined source "
                             "in data.taxonomy instead (e.g. accompaniment: [drums, bass, guitar, piano, ...])")
        if kw.get("synth") is not None:
            kw["synth"] = {**kw["synth"], "layout": "moisesdb"}
        if missing_stems not in MISSING:
            raise ValueError(f"data.missing_stems={missing_stems!r}: expected one of {MISSING}")
        super().__init__(missing_stems=missing_stems, **kw)
        self.taxonomy = Taxonomy(taxonomy or {}, self.sources, unmapped)
        self.test_spec, self.split_seed = test_tracks, int(split_seed)
        self.mapping_file = Path(mapping_file).expanduser() if mapping_file else None
        self._songs: list[Track] | None = None
        self.mapping: dict | None = None
        self._split: dict[str, list[str]] = {}

    def _scan(self) -> list[Track]:
        if self._songs is None:
            songs, self.mapping = find_songs(self.root, self.taxonomy, sample_rate=self.sample_rate,
                                             channels=self.channels, convert=self.convert, cache_dir=self.cache_dir)
            if self.missing_stems != "allow":
                lacking = [(t.name, s) for t in songs for s in self.sources if not t.present(s)]
                if lacking:
                    raise DatasetError(f"{self.root}: song {lacking[0][0]} has no tracks for source "
                                       f"'{lacking[0][1]}' ({len(lacking)} song/source pairs missing; set "
                                       "data.missing_stems=allow)")
            names = [t.name for t in songs]
            test = split_names(names, self.test_spec, self.root, self.split_seed, set(), "data.test_tracks")
            valid = split_names(names, self.valid_spec, self.root, self.split_seed, set(test), "data.valid_tracks")
            self._split = {"test": test, "valid": valid}
            self.mapping = {**self.mapping, "split": {"seed": self.split_seed, **self._split}}
            self._songs = songs
        return self._songs

    def _find(self, subset: str) -> list[Track]:
        songs = self._scan()
        test = set(self._split["test"])
        return [t for t in songs if (t.name in test) == (subset == self.test_subset)]

    def setup(self, stage: str | None = None) -> None:
        self._require_root()
        self._scan()
        self.valid_spec = self._split["valid"]  # resolved: the base class takes these names out of training
        super().setup(stage)
        if self._rank_world[0] != 0:
            return
        # written when training sets up (stage fit), not when mss.evaluate reads a checkpoint's test songs: its stored
        # data config names the training run's directory
        write = self.mapping_file is not None and stage in ("fit", None)
        per = ", ".join(f"{s} {m['files']} files in {m['songs']} songs" for s, m in self.mapping["sources"].items())
        log.info("MoisesDB mapping of %d songs: %s; %d tracks dropped%s", self.mapping["songs"], per,
                 sum(self.mapping["dropped"].values()), f"; written to {self.mapping_file}" if write else "")
        text = json.dumps(self.mapping, indent=2) + "\n"
        if write and not (self.mapping_file.is_file() and self.mapping_file.read_text() == text):
            atomic_write_text(self.mapping_file, text)
