"""Per-source fine-tuning (experiment=finetune), parameter groups by name, and bags of checkpoints (mss.bag)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from mss import load_model
from mss.bag import build_bag
from mss.bag import main as bag_main
from mss.checkpoint import CheckpointError, build_model
from mss.inference.overlap_add import apply_model
from mss.lightning.module import SeparationModule
from mss.losses import WaveformL1
from mss.run import compose
from tests.conftest import TINY_TRAIN

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def base_ckpt(synth_root, tmp_path_factory) -> Path:
    """A multi-source mss checkpoint of the tiny U-Net (random weights: only the plumbing is under test)."""
    from omegaconf import OmegaConf

    from mss.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = compose("train", [f"data.root={synth_root}", "data.synth=null", "paths.output_dir=unused", *TINY_TRAIN])
    net = build_model(cfg.model)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base.ckpt", net,
                           OmegaConf.to_container(cfg.model, resolve=True),
                           data=OmegaConf.to_container(cfg.data, resolve=True))


def finetune_cfg(source, ckpt, synth_root, tmp_path, *extra):
    return compose("train", ["experiment=finetune", f"source={source}", f"ckpt={ckpt}", f"data.root={synth_root}",
                             "data.synth=null", f"paths.output_dir={tmp_path / source}",
                             f"paths.cache_dir={tmp_path / 'cache'}", *TINY_TRAIN, *extra])


def test_finetune_recipe_composes_for_every_source_and_steps(base_ckpt, synth_root, tmp_path):
    base = load_model(base_ckpt)
    for source in SOURCES:
        cfg = finetune_cfg(source, base_ckpt, synth_root, tmp_path, "data.segment=0.4",
                           "augment.transforms.shift.shift=0.1")
        assert cfg.trainer.gradient_clip_val == 5.0 and cfg.module.optimizer.lr == 1e-4
        assert cfg.data.repitch is None and cfg.augment.transforms.remix is None
        assert cfg.augment.transforms.scale is None and cfg.augment.transforms.shift.same
        module = instantiate(cfg.module, net=build_model(cfg.model), augment=instantiate(cfg.augment),
                             _convert_="partial")
        assert module.source_weights.tolist() == [float(s == source) for s in SOURCES]
        for key, value in base.state_dict().items():  # initialised from the checkpoint
            torch.testing.assert_close(module.net.state_dict()[key], value)
        optimizer = module.configure_optimizers()
        assert isinstance(optimizer, torch.optim.AdamW)
        if source != "vocals":  # one real step here; the slow multirun test trains every source
            continue
        stems = torch.randn(2, 4, 2, round((cfg.data.segment + cfg.data.segment_margin) * 44100))
        loss = module.training_step(stems, 0)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)


def test_init_checkpoint_mismatch_is_a_clear_error(base_ckpt, synth_root, tmp_path):
    cfg = finetune_cfg("vocals", base_ckpt, synth_root, tmp_path, "model.filters=[4,8,8,8,8,16]")
    with pytest.raises((CheckpointError, InstantiationException), match="init_checkpoint weights do not fit"):
        instantiate(cfg.module, net=build_model(cfg.model), _convert_="partial")
    cfg = finetune_cfg("vocals", base_ckpt, synth_root, tmp_path, "data.sources=[bass,vocals]")
    with pytest.raises((CheckpointError, InstantiationException), match="trained on sources"):
        instantiate(cfg.module, net=build_model(cfg.model), _convert_="partial")


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 2)
        self.transformer = nn.ModuleDict({"attn": nn.Linear(2, 2), "norm": nn.LayerNorm(2)})


def test_weight_decay_goes_to_transformer_parameters_by_name():
    module = SeparationModule(_Toy(), WaveformL1(), lambda params: torch.optim.AdamW(params, lr=1e-4,
                                                                                     weight_decay=0.0),
                              sources=["a"], sample_rate=8000, param_groups={"transformer": {"weight_decay": 0.05}})
    groups = module.configure_optimizers().param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(4, 0.05), (2, 0.0)]
    assert all(p is q for p, q in zip(groups[0]["params"], module.net.transformer.parameters()))


def test_bag_of_two_checkpoints_separates_like_the_weighted_members(base_ckpt, tmp_path):
    other = tmp_path / "other.ckpt"
    net = load_model(base_ckpt)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.9)
    from mss.checkpoint import read_checkpoint, save_checkpoint

    stored = read_checkpoint(base_ckpt)["mss"]
    save_checkpoint(other, net, stored["model"], data=stored["data"])
    weights = [[1.0, 0.0, 1.0, 3.0], [0.0, 1.0, 1.0, 1.0]]
    out = tmp_path / "bag.ckpt"
    assert bag_main([f"ckpt=[{base_ckpt},{other}]", f"weights={weights}".replace(" ", ""), f"out={out}"]) == 0
    bag = load_model(out)
    mix = torch.randn(1, 2, 50_000)
    members = [apply_model(m, mix) for m in (load_model(base_ckpt), load_model(other))]
    w = torch.tensor(weights)[:, None, :, None, None]
    expected = (w[0] * members[0] + w[1] * members[1]) / w.sum(0)
    torch.testing.assert_close(apply_model(bag, mix), expected, rtol=1e-4, atol=1e-5)
    assert bag_main([f"ckpt=[{base_ckpt}]", "weights=identity", f"out={tmp_path / 'x.ckpt'}"]) == 2
    with pytest.raises(ValueError, match="identity needs one checkpoint per source"):
        build_bag([base_ckpt, other], "identity")


@pytest.mark.slow
def test_finetune_multirun_bag_and_evaluate_cli(base_ckpt, synth_root, tmp_path):
    """The documented commands: a 4-source fine-tune multirun, its identity bag, and evaluation of the bag."""
    sweep = tmp_path / "sweep"
    common = [f"data.root={synth_root}", "data.synth=null", f"paths.cache_dir={tmp_path / 'cache'}"]

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=1200)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    run("mss.train", "-m", "experiment=finetune", "source=drums,bass,other,vocals", f"ckpt={base_ckpt}",
        f"hydra.sweep.dir={sweep}", *common, *TINY_TRAIN, "test=false", "++trainer.limit_val_batches=1")
    jobs = sorted((p for p in sweep.iterdir() if (p / "config.yaml").is_file()),
                  key=lambda p: int(p.name.split("_")[0]))
    assert [next(line.split(":")[1].strip() for line in (j / "config.yaml").read_text().splitlines()
                 if line.startswith("source:")) for j in jobs] == SOURCES
    ckpts = [str(j / "checkpoints" / "last.ckpt") for j in jobs]
    bag = tmp_path / "ft_bag.ckpt"
    run("mss.bag", f"ckpt=[{','.join(ckpts)}]", "weights=identity", f"out={bag}")
    run("mss.evaluate", f"ckpt={bag}", f"hydra.run.dir={tmp_path / 'eval'}", f"data.root={synth_root}",
        f"paths.cache_dir={tmp_path / 'cache'}", "evaluation.batch_size=8")
    assert (tmp_path / "eval" / "results.csv").is_file()


@pytest.mark.slow
def test_multi_ema_validates_every_average_and_checkpoints_the_best(train_overrides):
    from mss.lightning.callbacks import MultiEMA
    from mss.train import train

    cfg = compose("train", train_overrides + ["callbacks=ema_multi", "test=false", "callbacks.ema.epoch_decays=[0.5]",
                                              "callbacks.ema.batch_decays=[0.9]"])
    metrics, objects = train(cfg)
    names = ["batch_0.9", "epoch_0.5"]
    scores = {"raw": metrics["val/nsdr"]} | {n: metrics[f"val/ema/{n}/nsdr"] for n in names}
    assert metrics["val/best/nsdr"] == pytest.approx(max(scores.values()))
    callback = next(c for c in objects["trainer"].callbacks if isinstance(c, MultiEMA))
    assert scores[callback.selected] == pytest.approx(max(scores.values()))
    raw = torch.load(objects["checkpoint"], weights_only=True)
    assert raw["mss_ema_selected"] == callback.selected
    stored = {k[4:]: v for k, v in raw["state_dict"].items() if k.startswith("net.")}
    expected = (objects["module"].net.state_dict() if callback.selected == "raw"
                else callback.emas[callback.selected].state)
    for key, value in expected.items():
        torch.testing.assert_close(stored[key], value.cpu())
    assert load_model(objects["checkpoint"]) is not None
    if callback.selected != "raw":  # the raw weights travel along for resuming
        assert "current_model_state" in raw


@pytest.mark.slow
def test_validation_metrics_and_the_monitor_are_selectable(train_overrides):
    """``module.val_metrics`` adds whole-track and museval metrics to the validation; ``monitor.metric`` /
    ``monitor.mode`` select the checkpoint and the EMA candidate by any of them (here SI-SDR, then the L1 of STFT
    magnitudes, lower is better); a metric the validation does not log is refused before training."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mss.lightning.callbacks import MultiEMA
    from mss.train import train

    extra = ["test=false", "auto_resume=false", "module.val_metrics=[sdr,si_sdr,l1_freq,bss_eval_v4]"]
    metrics, objects = train(compose("train", train_overrides + extra + ["monitor.metric=val/si_sdr"]))
    logged = {"val/si_sdr", "val/si_sdr/vocals", "val/l1_freq", "val/isr", "val/sir", "val/sar", "val/sdr"}
    assert logged <= set(metrics)
    checkpoint = next(c for c in objects["trainer"].callbacks if isinstance(c, ModelCheckpoint) and c.monitor)
    assert checkpoint.monitor == "val/si_sdr" and float(checkpoint.best_model_score) == pytest.approx(
        metrics["val/si_sdr"])

    cfg = compose("train", train_overrides + extra + ["callbacks=ema_multi", "callbacks.ema.epoch_decays=[0.5]",
                                                      "callbacks.ema.batch_decays=[0.9]", "monitor.metric=val/l1_freq",
                                                      "monitor.mode=min"])
    metrics, objects = train(cfg)
    scores = {"raw": metrics["val/l1_freq"]} | {n: metrics[f"val/ema/{n}/l1_freq"] for n in ("batch_0.9", "epoch_0.5")}
    assert metrics["val/best"] == metrics["val/best/l1_freq"] == pytest.approx(min(scores.values()))
    callback = next(c for c in objects["trainer"].callbacks if isinstance(c, MultiEMA))
    assert scores[callback.selected] == pytest.approx(min(scores.values()))

    with pytest.raises(ValueError, match=r"monitor.metric='val/si_sdr' is not logged.*module.val_metrics"):
        train(compose("train", train_overrides + ["test=false", "monitor.metric=val/si_sdr"]))
    with pytest.raises(ValueError, match=r"module.val_metrics: unknown \['pesq'\]"):
        train(compose("train", train_overrides + ["test=false", "module.val_metrics=[pesq]"]))
