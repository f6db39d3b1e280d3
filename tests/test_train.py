"""Config composition and training: every model config builds a net with the model contract, every experiment
composes and runs one fast step, overfitting a toy batch lowers the loss and raises SDR, checkpoints reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from mss import load_model
from mss.checkpoint import CheckpointError, build_model
from mss.losses import SpectrogramL1, WaveformL1
from mss.models.base import Separator
from mss.run import CONF_DIR, compose
from mss.train import train
from tests._overfit import SOURCES, assert_overfits, toy_batch
from tests.conftest import TINY_MODEL, tiny_overrides

ALL_MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
# oracles need the true stems (forward(mix, stems)): tests/test_oracle.py
MODELS = [name for name in ALL_MODELS if not name.startswith("oracle_")]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_config_implements_the_separator_contract(name):
    """The contract's attributes (mss.models.base.Separator) agree with the data node the model was built from."""
    cfg = compose("train", [f"model={name}", "paths.output_dir=unused"])
    net = build_model(cfg.model)
    assert isinstance(net, Separator)
    assert (net.sources, net.sample_rate, net.audio_channels) == (
        list(cfg.data.sources), cfg.data.sample_rate, cfg.data.channels)
    assert net.segment_length is None or (isinstance(net.segment_length, int) and net.segment_length > 0)
    wrong = torch.zeros(1, cfg.data.channels + 1, 1000)  # a mixture with one channel too many
    stems = [wrong[:, None].expand(-1, len(net.sources), -1, -1)] if name.startswith("oracle_") else []
    with pytest.raises(ValueError, match=r"expected mixture waveform \(B, C, T\) with C="):
        net(wrong, *stems)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_builds_a_separator(name):
    cfg = compose("train", [f"model={name}", "paths.output_dir=unused"])
    net = build_model(cfg.model)
    assert isinstance(net, torch.nn.Module)
    assert list(net.sources) == list(cfg.data.sources)
    net.eval()
    mix = torch.randn(1, cfg.data.channels, 20_000)
    with torch.inference_mode():
        out = net(mix)
    assert out.shape == (1, len(cfg.data.sources), cfg.data.channels, 20_000)


def test_unet_parameter_count_through_config():
    cfg = compose("train", ["model=unet", "data.sources=[vocals]", "paths.output_dir=unused"])
    net = build_model(cfg.model)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 9_823_749


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_one_fast_step(experiment, run_overrides, tmp_path):
    overrides = [f"experiment={experiment}", "debug=fdr"] + run_overrides
    overrides += tiny_overrides(compose("train", overrides))
    cfg = compose("train", overrides)
    if "piano" in cfg.data.sources:  # the 5-stem recipe needs a dataset with a piano stem: generate one
        overrides = [o for o in overrides if not o.startswith(("data.root=", "data.synth="))]
        overrides += [f"data.root={tmp_path / 'synth5'}", "data.synth.n_train=2", "data.synth.n_test=1",
                      "data.synth.duration=4.0", "data.synth.generate=true"]
        cfg = compose("train", overrides)
    metrics, _ = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "val/nsdr" in metrics
    assert (Path(cfg.paths.output_dir) / "config.yaml").is_file()


def test_unknown_config_key_is_a_clear_error():
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose("train", ["model.no_such_key=1"])
    with pytest.raises(ConfigCompositionException, match="no_such_model"):
        compose("train", ["model=no_such_model"])


def tiny_net(sources):
    cfg = compose("train", [f"data.sources=[{','.join(sources)}]", "paths.output_dir=unused",
                                "model.dropout=0.0"] + TINY_MODEL)
    return build_model(cfg.model), OmegaConf.to_container(cfg.model, resolve=True)


def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(synth_root):
    stems = toy_batch(synth_root, 32768)
    net, _ = tiny_net(SOURCES)
    assert_overfits(net, stems, SpectrogramL1(512, 128), lr=3e-3, steps=60, name="unet")


def test_checkpoint_round_trip_same_output(train_overrides):
    """The reloaded best checkpoint gives the output the trained network gave before anything was reloaded (with
    ``callbacks=ema`` that network holds the averaged weights, which the checkpoint must hold too)."""
    cfg = compose("train", train_overrides + ["test=false", "callbacks=ema"])
    _, objects = train(cfg)
    ckpt = objects["checkpoint"]
    assert Path(ckpt).name == "best.ckpt" and (Path(ckpt).parent / "last.ckpt").is_file()
    mix = torch.randn(1, 2, 30_000, generator=torch.Generator().manual_seed(0))
    trained = objects["module"].net.eval()
    with torch.no_grad():
        expected = trained(mix)  # captured before any checkpoint is read back
        # a loader that kept the initial weights would be far off: a fresh network of the same config is
        untrained = (build_model(cfg.model).eval()(mix) - expected).abs().max().item()
    net = load_model(ckpt)
    assert not net.training
    with torch.no_grad():
        torch.testing.assert_close(net(mix), expected, rtol=0, atol=1e-6)
    assert untrained > 1e3 * 1e-6, untrained
    raw = torch.load(ckpt, weights_only=True)
    assert raw["mss"]["model"]["_target_"] == "mss.models.unet.SpleeterUNet"
    assert raw["mss"]["data"]["sources"] == ["drums", "bass", "other", "vocals"]


def test_load_model_rejects_foreign_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not an mss checkpoint"):
        load_model(tmp_path / "foreign.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(tmp_path / "garbage.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.ckpt")


def test_losses_have_a_shape_contract():
    est, ref = torch.randn(2, 3, 2, 4096), torch.randn(2, 3, 2, 4096)
    assert WaveformL1()(est, ref).shape == (3,)
    assert SpectrogramL1(512, 128)(est, ref).shape == (3,)
    with pytest.raises(ValueError, match=r"\(B, S, C, T\)"):
        WaveformL1()(est[0], ref[0])


def test_optimizer_and_scheduler_partials_are_completed():
    cfg = compose("train", ["paths.output_dir=unused", "data.sources=[vocals]", *TINY_MODEL,
                            "module.optimizer._target_=torch.optim.AdamW", "module.optimizer.lr=5e-4",
                            "+module.optimizer.weight_decay=0.01",
                            "module.scheduler={_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, "
                            "step_size: 3, gamma: 0.5}", "module.scheduler_interval=step"])
    from hydra.utils import instantiate

    module = instantiate(cfg.module, net=build_model(cfg.model), _convert_="partial")
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.01
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.StepLR) and sched["interval"] == "step"
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(module.net.parameters()))


GROUP_OPTIONS = [(group, p.stem) for group in ("data", "module/loss", "module/optimizer", "module/finetune", "trainer",
                                               "callbacks", "logger", "debug", "augment", "evaluation")
                 for p in sorted((CONF_DIR / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes(group, option):
    cfg = compose("train", [f"{group}={option}", "paths.output_dir=unused", "++data.root=/nowhere"])
    node = OmegaConf.select(cfg, group.replace("/", "."))
    assert node is not None or group == "debug"
    if group == "module/loss":
        from hydra.utils import instantiate

        assert WaveformL1()(torch.zeros(1, 4, 2, 4096), torch.zeros(1, 4, 2, 4096)).shape == (4,)
        assert instantiate(node)(torch.zeros(1, 4, 2, 4096), torch.ones(1, 4, 2, 4096)).shape == (4,)
