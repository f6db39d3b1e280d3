"""DDP ranks of a Hydra job, sweeps included.

Lightning's DDP launcher (``strategy=ddp`` with the default ``popen`` start) starts ranks > 0 by running the entry
point again with the parent's environment plus ``LOCAL_RANK``; the command line it builds is ``sys.argv`` plus a
``hydra.run.dir``. Inside a multirun that command is the whole sweep (``-m lr=1e-3,3e-4``): every child would run
every job. Lightning has no public hook for that command (its launchers and the function that builds the command
are private), so :func:`job` uses the part that is public — children inherit the parent's environment and run
the same entry point — and :func:`child_argv` turns the inherited job command into the child's ``sys.argv``:

- rank 0 of every job (plain run or sweep job) puts the job's own command line in ``MSS_DDP_JOB``: the config
  name and config directories, the job's overrides as Hydra recorded them, its output directory as
  ``hydra.run.dir`` and ``hydra.output_subdir=null`` (rank 0 alone writes the run files);
- a process started with ``LOCAL_RANK`` > 0 and that variable set runs that command instead of its own arguments,
  as a single run named ``<job name>_rank<k>`` (its log: ``<run dir>/<job name>_rank<k>.log``).

A sweep runs its jobs one after the other in the same process, so each job also leaves that process as it found it:
the variables Lightning sets while launching (``LOCAL_RANK``, ``MASTER_PORT``, ``WORLD_SIZE``, ...), whose presence
would make the next job believe its ranks were started externally, and the process group are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

ENV = "MSS_DDP_JOB"
# hydra overrides that belong to the sweep (or that the child sets itself), not to the job
_SWEEP_KEYS = ("hydra.mode", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher", "hydra/launcher",
               "hydra.run.dir", "hydra.job.name", "hydra.output_subdir")


def _quoted(value: str) -> str:
    """A Hydra override value that may hold ``=``, ``,`` or spaces (a run directory)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_command() -> dict:
    """The current Hydra job as the command line of a single run into its own output directory."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    flags = [f"--config-name={hc.job.config_name}"]
    for source in hc.runtime.config_sources:
        if source.schema == "file" and source.provider in ("main", "command-line"):
            flags.append(("--config-path=" if source.provider == "main" else "--config-dir=") + source.path)
    hydra = [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(_SWEEP_KEYS)]
    argv = [*flags, *hydra, *hc.overrides.task, f"hydra.run.dir={_quoted(hc.runtime.output_dir)}",
            "hydra.output_subdir=null"]
    return {"argv": argv, "job_name": hc.job.name}


def child_argv() -> list[str] | None:
    """Arguments for this process when it is DDP rank > 0 of an mss job (see the module doc), else ``None``."""
    spec, local_rank = os.environ.get(ENV), int(os.environ.get("LOCAL_RANK", "0"))
    if not spec or local_rank == 0:
        return None
    try:
        job = json.loads(spec)
        argv, name = list(job["argv"]), str(job["job_name"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"environment variable {ENV}: expected the JSON job command written by DDP rank 0 "
                         f"(mss.ddp.job_command), got {spec[:200]!r}") from err
    return [*argv, f"hydra.job.name={name}_rank{local_rank}"]


@contextlib.contextmanager
def job() -> Iterator[None]:
    """Around one Hydra job: its DDP children run this job (:func:`child_argv`); afterwards the environment and
    the process group are as before, so the next job of a sweep launches and connects its own ranks."""
    saved = dict(os.environ)
    os.environ[ENV] = json.dumps(job_command())
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)
