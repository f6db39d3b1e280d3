"""Synthetic songs in the MoisesDB layout (``generate(..., layout="moisesdb")``).

MoisesDB (Pereira et al., 2023) ships one folder per song under a provider folder, with a ``data.json`` that lists
the song's stems (first level of its taxonomy: ``vocals``, ``drums``, ``bass``, ``guitar``, ``piano``,
``other_keys``, ...) and, for each stem, its raw instrument tracks (second level: ``trackType``), one audio file
each::

    root/moisesdb_v0.1/<song id>/data.json
    root/moisesdb_v0.1/<song id>/<stemName>/<track id>.wav

    data.json: {"song": ..., "artist": ..., "genre": ...,
                "stems": [{"stemName": "guitar", "id": <stem id>,
                           "tracks": [{"trackType": "acoustic guitar", "id": <track id>, "extension": "wav",
                                       "has_bleed": false}, ...]}, ...]}

There is no mixture file (the mixture is the sum of every track). The generator writes the same: per song a plan
(:func:`song_plan`) of 3 to 9 instrument tracks in up to 7 stems, rendered with the MUSDB-layout synthesisers
(:mod:`mss.data.synth.instruments`; two guitar tracks are two independent performances of the ``other``
synthesiser, percussion is a second drum kit, ...), each with its own silent section, quantised together so that
their sum does not clip. Some songs lack whole stems, by a seeded pattern over the song index: every fourth song
(from an offset set by the seed) has no piano, the next no bass, the next neither vocals nor piano, so even a tiny
dataset has songs without piano, bass or vocals; the second guitar, background vocals, percussion and keys come and
go at random (seeded).

MoisesDB has no official split. Song ids are deterministic UUIDs of ``(seed, split, index)``; the generator puts all
songs in one provider folder and writes the ids of its ``valid`` and ``test`` songs to ``valid_tracks.txt`` and
``test_tracks.txt`` at the root (``data=moisesdb data.valid_tracks=valid_tracks.txt
data.test_tracks=test_tracks.txt`` reads them; the default of ``data=moisesdb`` is a seeded fraction instead).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mss.data.synth.instruments import performance
from mss.data.synth.song import SPLIT_CODES, activity, name_key, plan_song, track_rng

__all__ = ["PROVIDER", "TEST_LIST", "Instrument", "render_song", "song_id", "song_plan", "write_song"]

PROVIDER = "moisesdb_v0.1"  # the provider folder of the MoisesDB download
TEST_LIST = "test_tracks.txt"
_NAMESPACE = uuid.UUID("9b6a0c52-6f1e-4e55-9d2a-3c1f0d0e5a11")  # of the generated ids (uuid5)
# stems absent from song (index + seed) % 4: none, piano, bass, vocals and piano
_ABSENT = ((), ("piano",), ("bass",), ("vocals", "piano"))


class Instrument(NamedTuple):
    """One instrument track of a generated song: its stem (``stemName``), ``trackType``, the synthesiser that plays
    it and the performer key of its seeds."""

    stem: str
    track_type: str
    synth: str
    key: str


def song_id(seed: int, split: str, index: int, *part: str) -> str:
    """Deterministic UUID of a generated song (or, with ``part``, of one of its stems or tracks)."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(map(str, ("mss.data.synth", seed, split, index, *part)))))


def song_plan(seed: int, split: str, index: int) -> list[Instrument]:
    """The instrument tracks of song ``index`` of ``split``, in ``data.json`` order (grouped by stem)."""
    rng = track_rng(seed, split, index, name_key("moisesdb-plan"), 0)
    absent = set(_ABSENT[(index + SPLIT_CODES[split] + seed) % len(_ABSENT)])
    lead = "lead female singer" if rng.random() < 0.5 else "lead male singer"
    plan = [Instrument("vocals", lead, "vocals", "vocals-lead")]
    if rng.random() < 0.5:
        plan.append(Instrument("vocals", "background vocals", "vocals", "vocals-background"))
    plan += [Instrument("drums", "full acoustic drumkit", "drums", "drums"),
             Instrument("bass", "bass guitar", "bass", "bass"),
             Instrument("guitar", "clean electric guitar", "other", "guitar-0")]
    if rng.random() < 0.6:
        plan.append(Instrument("guitar", "acoustic guitar", "other", "guitar-1"))
    plan.append(Instrument("piano", "grand piano", "piano", "piano"))
    if rng.random() < 0.5:
        plan.append(Instrument("percussion", "a-tonal percussion (claps, shakers, congas, cowbell etc)", "drums",
                               "percussion"))
    if rng.random() < 0.5:
        plan.append(Instrument("other_keys", "synth pad", "other", "other_keys"))
    return [i for i in plan if i.stem not in absent]


def render_song(split: str, index: int, *, duration: float, sample_rate: int, seed: int, bit_depth: int,
                dither: bool) -> tuple[list[Instrument], list[np.ndarray]]:
    """The plan of one song and its instrument tracks as stored, each (n, c) (see
    :func:`mss.data.synth.writer.render_track` for the sample formats); their sum does not clip."""
    from mss.data.synth.writer import quantise, to_stored

    plan = song_plan(seed, split, index)
    n = round(duration * sample_rate)
    song = plan_song(track_rng(seed, split, index), n, sample_rate)
    perf, masks, rngs = {}, {}, {}
    for inst in plan:
        rng = track_rng(seed, split, index, name_key(inst.key), 1)
        masks[inst.key] = activity(song, rng)
        rngs[inst.key] = rng
        perf[inst.key] = performance(inst.synth, song, seed, split, index, key=inst.key) * masks[inst.key][:, None]
    stems = quantise(perf, masks, rngs, song.peak_db, bit_depth, dither)
    return plan, [to_stored(stems[inst.key], bit_depth) for inst in plan]


def write_song(folder: Path, split: str, index: int, *, duration: float, sample_rate: int, seed: int,
               bit_depth: int, dither: bool, write_wav) -> None:
    """Write song ``index`` of ``split`` into ``folder`` (its ``<stemName>/<track id>.wav`` files and
    ``data.json``); ``write_wav(path, x, sample_rate, bit_depth)`` stores one track."""
    plan, audio = render_song(split, index, duration=duration, sample_rate=sample_rate, seed=seed,
                              bit_depth=bit_depth, dither=dither)
    stems: dict[str, dict] = {}
    for inst, x in zip(plan, audio):
        stem = stems.setdefault(inst.stem, {"stemName": inst.stem, "id": song_id(seed, split, index, inst.stem),
                                            "tracks": []})
        track_id = song_id(seed, split, index, inst.stem, inst.key)
        (folder / inst.stem).mkdir(parents=True, exist_ok=True)
        write_wav(folder / inst.stem / f"{track_id}.wav", x, sample_rate, bit_depth)
        stem["tracks"].append({"trackType": inst.track_type, "id": track_id, "extension": "wav",
                               "has_bleed": False})
    meta = {"song": f"synth-{split}-{index:03d}", "artist": "mss.data.synth", "genre": "Synthetic",
            "stems": list(stems.values())}
    (folder / "data.json").write_text(json.dumps(meta, indent=2) + "\n")
