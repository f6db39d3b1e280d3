"""Deterministic synthetic multitrack songs in the MUSDB18-HQ layout (or the MoisesDB layout).

MUSDB18 cannot be downloaded everywhere, yet the framework's loaders, training, evaluation and CLIs should run
end to end on *real files*. :func:`generate` writes a small dataset of synthetic songs laid out like
MUSDB18-HQ::

    root/
      train/synth-train-000/{mixture,drums,bass,other,vocals}.wav
      train/synth-valid-000/...            validation tracks live inside train/, as in MUSDB
      test/synth-test-000/...
      stems/{train,test}/<track>.stem.mp4  optional MUSDB18 (compressed STEMS) copy, plus valid_tracks.txt
      valid_tracks.txt                     validation track names, one per line
      synth.json                           manifest (parameters, format version), written last

Each track is rendered from a song plan (tempo, key, chord progression, a section where the whole band plays,
a room impulse response) and one synthesiser per source with the source's spectral and temporal character:
drums (kick, snare, hi-hats on a tempo grid), bass (monophonic low notes on the chord roots), other (pad
and/or plucked chords), vocals (glottal-like harmonics with vibrato through vowel formants, in phrases), piano
(decaying inharmonic notes) and accompaniment (drums + bass + other as one stem).

Stems are quantised to integers (TPDF dither only where the source plays; silent sections are exact digital
zeros, as in stems rendered from a DAW) and the mixture is their exact integer sum, with headroom chosen so
that nothing clips. Every source sits out one section of at least 1.5 s (and plays most of the track), which
exercises the all-zero-frame handling of museval-style evaluation.

Randomness: the song plan of track ``index`` of ``split`` comes from
``SeedSequence(seed, spawn_key=(split_code, index))``; each source's performance and its arrangement/dither
from keys that also hold a stable hash of the source name. A track is therefore reproducible on its own, and a
source's performance does not depend on which other sources are generated (the ``drums`` of a 4-stem dataset
equal, up to level and arrangement, the drum part inside ``accompaniment`` of a 2-stem dataset with the same
seed). Files are byte-identical across runs on one numpy/scipy build; other CPUs or versions may differ by
a few LSB where transcendental functions round differently.

CLI::

    python -m mss.data.synth root=DIR [n_train=8 n_valid=2 n_test=3 duration=12 seed=0 \
        sources=[vocals,accompaniment] bit_depth=16 dither=true stems_mp4=false overwrite=false layout=musdb]

``layout=moisesdb`` writes MoisesDB's layout instead (``moisesdb_v0.1/<song id>/data.json`` and one WAV file per
instrument track, several per stem, some stems absent; :mod:`~mss.data.synth.moisesdb`), read by ``data=moisesdb``::

    python -m mss.data.synth root=DIR layout=moisesdb n_train=4 n_valid=1 n_test=1 duration=6

The defaults (:class:`SynthConfig`) are those of ``data=synth`` (``conf/data/synth.yaml`` mirrors them; a test
checks that the two agree), so ``python -m mss.train data.root=DIR`` trains on what this command wrote.

Modules: :mod:`~mss.data.synth.song` (song plan, arrangement, note lines, seeds), :mod:`~mss.data.synth.instruments`
(the synthesisers and each source's performance), :mod:`~mss.data.synth.writer` (tracks and datasets on disk),
:mod:`~mss.data.synth.cli` (the command line), :mod:`~mss.data.synth.moisesdb` (the MoisesDB layout).
"""

from mss.data.synth.cli import SynthConfig, main
from mss.data.synth.instruments import KNOWN_SOURCES, MUSDB_SOURCES
from mss.data.synth.writer import (
    DURATION,
    FORMAT_VERSION,
    MANIFEST,
    MIN_DURATION,
    N_TEST,
    N_TRAIN,
    N_VALID,
    SEED,
    VALID_LIST,
    check_panned_mono,
    generate,
    read_manifest,
    render_track,
    track_names,
)

__all__ = [
    "DURATION", "FORMAT_VERSION", "KNOWN_SOURCES", "MANIFEST", "MIN_DURATION", "MUSDB_SOURCES", "N_TEST", "N_TRAIN",
    "N_VALID", "SEED", "SynthConfig", "VALID_LIST", "check_panned_mono", "generate", "main", "read_manifest",
    "render_track", "track_names",
]
