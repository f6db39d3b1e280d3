"""Resumable runs: a training process SIGKILLed mid-epoch and resumed with ``ckpt_path=last`` ends with exactly the
weights and optimiser state of an uninterrupted run (CPU, deterministic mode) — also with the random streams that
live outside the global generators: sparse attention's resampled LSH projections and the unlabeled-remix batches; the
sampler position and every RNG state are part of the checkpoint; checkpoint writes are atomic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mss.data.sampling import BatchStream, EpochSampler
from mss.lightning.resume import random_streams
from tests.conftest import TINY_LOSS, TINY_MODELS, TINY_RUN, TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]


def test_epoch_sampler_is_deterministic_sharded_and_resumable():
    full = list(EpochSampler(12, seed=3))
    assert sorted(i for i, _ in full) == list(range(12)) and full == list(EpochSampler(12, seed=3))
    shards = [list(EpochSampler(12, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert [x for pair in zip(*shards) for x in pair] == full  # ranks interleave one global order
    sampler = EpochSampler(12, seed=3)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != full
    sampler.resume(1, 5)
    assert list(sampler) == epoch1[5:] and list(sampler) == epoch1  # the skip applies to one iteration only
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        EpochSampler(3, seed=0, world_size=4)


def test_resume_checkpoint_resolution(tmp_path):
    from omegaconf import OmegaConf

    from mss.train import resume_checkpoint

    out = tmp_path / "run"

    def cfg(**kw):
        return OmegaConf.create({"ckpt_path": None, "auto_resume": True, **kw})

    assert resume_checkpoint(cfg(), out) is None and resume_checkpoint(cfg(ckpt_path="last"), out) is None
    last = out / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert resume_checkpoint(cfg(), out) == str(last)  # auto-resume: a re-run of the same command continues
    assert resume_checkpoint(cfg(auto_resume=False), out) is None
    assert resume_checkpoint(cfg(ckpt_path="last"), out) == str(last)
    assert resume_checkpoint(cfg(ckpt_path=str(out)), tmp_path / "new") == str(last)  # another run's directory
    hpc = out / "hpc_ckpt_2.ckpt"  # Lightning's SLURM pre-emption checkpoint, newer than last.ckpt
    hpc.write_bytes(b"")
    os.utime(hpc, (last.stat().st_mtime + 10,) * 2)
    assert resume_checkpoint(cfg(), out) == str(hpc)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        resume_checkpoint(cfg(ckpt_path=str(tmp_path / "nope.ckpt")), out)


def _train(run_dir: Path, synth_root: Path, *extra: str, check: bool = True,
           tiny: list[str] = TINY_TRAIN) -> subprocess.CompletedProcess:
    args = [f"hydra.run.dir={run_dir}", f"data.root={synth_root}", "data.synth=null",
            f"paths.cache_dir={run_dir.parent / 'cache'}",
            *[o for o in tiny if not o.startswith(("trainer.max_epochs", "data.samples_per_epoch"))],
            "trainer.max_epochs=3", "data.samples_per_epoch=8", "test=false", "++trainer.deterministic=true",
            "callbacks.last_checkpoint.every_n_train_steps=1", "module.optimizer._target_=torch.optim.AdamW",
            "+module.scheduler._target_=torch.optim.lr_scheduler.StepLR", "+module.scheduler._partial_=true",
            "+module.scheduler.step_size=1", "+module.scheduler.gamma=0.5", *extra]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "mss.train", *args], cwd=run_dir.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"mss.train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _kill_resume_and_compare(tmp_path: Path, synth_root: Path, *extra: str, tiny: list[str] = TINY_TRAIN) -> dict:
    """Train uninterrupted; train again, SIGKILLed inside step 6 (second epoch, after its 2nd batch: 4 steps per
    epoch, last.ckpt from step 5), resume with ``ckpt_path=last``; both end with the same weights, optimiser and
    scheduler state. Returns the checkpoint the killed run left."""
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    _train(reference, synth_root, *extra, tiny=tiny)
    proc = _train(crashed, synth_root, *extra, "+callbacks.kill._target_=tests._kill.KillAt", "+callbacks.kill.step=5",
                  check=False, tiny=tiny)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    interrupted = torch.load(crashed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    _train(crashed, synth_root, *extra, "ckpt_path=last", tiny=tiny)
    want = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    got = torch.load(crashed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert got["global_step"] == want["global_step"] > interrupted["global_step"]
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    for want_opt, got_opt in zip(want["optimizer_states"], got["optimizer_states"], strict=True):
        for (_, a), (_, b) in zip(sorted(want_opt["state"].items()), sorted(got_opt["state"].items()), strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert got["lr_schedulers"] == want["lr_schedulers"]
    return interrupted


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(synth_root, tmp_path):
    interrupted = _kill_resume_and_compare(tmp_path, synth_root)
    assert interrupted["global_step"] == 5 and interrupted["epoch"] == 1
    assert interrupted["MSSDataModule"] == {"epoch": 1, "batches": 1, "batch_size": 2, "world_size": 1}
    assert interrupted["callbacks"]["RNGState"]["streams"] == {}  # the U-Net holds no random stream of its own


@pytest.mark.slow
def test_sigkill_resume_with_resampled_lsh_attention_equals_uninterrupted_run(synth_root, tmp_path):
    """Tiny Sparse HT Demucs: every training forward draws new LSH projections from the attention layers' own
    generators, which the checkpoint carries; a resume restarting them from the seed ends with other weights."""
    tiny = [*TINY_MODELS["mss.models.htdemucs.HTDemucs"], *TINY_LOSS, *TINY_RUN]
    interrupted = _kill_resume_and_compare(tmp_path, synth_root, "model=htdemucs_sparse", "model.t_lsh_rounds=4",
                                           tiny=tiny)
    streams = interrupted["callbacks"]["RNGState"]["streams"]
    assert len(streams) == 4 and all(k.endswith("._train_generator") for k in streams), sorted(streams)
    seeded = torch.Generator().manual_seed(42).get_state()
    assert all(not torch.equal(s, seeded) for s in streams.values())  # 5 resampling steps so far


@pytest.mark.slow
def test_sigkill_resume_with_unlabeled_remixing_equals_uninterrupted_run(synth_root, tmp_path):
    """``module/unlabeled=remix``: the draw deciding each extra step and the stream of unlabeled batches are
    checkpointed; with ``proba=0.5`` some steps take an unlabeled batch and some do not."""
    from mss.unlabeled.extract_silent import main as extract_main

    index = tmp_path / "index"
    assert extract_main([f"input={synth_root / 'train'}", f"out={index}", "detector=energy", "min_duration=1.0"]) == 0
    interrupted = _kill_resume_and_compare(tmp_path, synth_root, "module/unlabeled=remix", "module.unlabeled.proba=0.5",
                                           f"module.unlabeled.dataset.index={index}")
    streams = interrupted["callbacks"]["RNGState"]["streams"]
    assert sorted(streams) == ["module._unlabeled_batches", "module._unlabeled_rng"]
    assert streams["module._unlabeled_batches"]["batches"] > 0


def test_batch_stream_resumes_exactly_and_random_streams_are_found():
    class Noise(torch.utils.data.Dataset):  # items drawn from torch's global generator, as datasets do
        def __len__(self):
            return 5

        def __getitem__(self, index):
            return torch.rand(3)

    stream = BatchStream(Noise(), 2, seed=1)
    batches = [next(stream) for _ in range(7)]  # 3 batches per epoch (the last one of 1 example)
    assert [len(b) for b in batches] == [2, 2, 1, 2, 2, 1, 2] and stream.get_state() == {"epoch": 2, "batches": 1}
    again = BatchStream(Noise(), 2, seed=1)
    again.set_state({"epoch": 1, "batches": 1})
    assert all(torch.equal(next(again), b) for b in batches[4:])
    torch.manual_seed(0)  # the global generator does not enter: the items have their own seeds
    fresh = BatchStream(Noise(), 2, seed=1)
    assert torch.equal(next(fresh), batches[0])

    from mss.models.attention import SparseAttention

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), SparseAttention(rounds=2))
    net.stream = stream
    found = random_streams(net)
    assert found == {"module.1._train_generator": net[1]._train_generator, "module.stream": stream}


def test_kill_during_checkpoint_save_leaves_previous_file_loadable(tmp_path):
    """A process SIGKILLed halfway through writing a checkpoint: the previous file is intact (atomic rename)."""
    from mss.lightning.resume import AtomicCheckpointIO

    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(10.0)}, path)
    pid = os.fork()
    if pid == 0:  # child: start writing a new version, die in the middle of it
        try:
            def torn_save(obj, f):
                with open(f, "wb") as fh:
                    fh.write(b"PK\x03\x04" + b"\0" * 4096)  # the first bytes of a zip-format checkpoint
                    fh.flush()
                    os.kill(os.getpid(), signal.SIGKILL)

            torch.save = torn_save
            io.save_checkpoint({"step": 2, "w": torch.zeros(10)}, path)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    loaded = io.load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(10.0))
    leftovers = list(path.parent.glob(".last.ckpt.*.tmp"))
    assert len(leftovers) == 1  # the torn temporary file, never mistaken for a checkpoint (hidden, .tmp)
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3
