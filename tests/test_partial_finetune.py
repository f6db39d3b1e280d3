"""Parameter-efficient and partial fine-tuning: LoRA adapters (module/finetune=lora), freezing by name with
unfreezing after some epochs (module.finetune.freeze / unfreeze_after_epochs), partial init checkpoints
(module.init_checkpoint_strict=false), and the optimisers of the module/optimizer group, through the real CLIs."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from mss import load_model
from mss.checkpoint import CheckpointError, build_model, read_checkpoint, save_checkpoint
from mss.lightning.finetune import extend_schedulers
from mss.losses import CombinedLoss, MultiResolutionSTFTL1, WaveformL1
from mss.models.lora import LoRA, apply_lora, merge_lora, merge_lora_state
from mss.run import compose
from tests._overfit import assert_overfits, toy_batch
from tests.conftest import TINY_LOSS, TINY_MODEL, TINY_MODELS, TINY_RUN, TINY_TRAIN

ROFORMER = ["model=bs_roformer", *TINY_MODELS["mss.models.bs_roformer.BSRoformer"], *TINY_LOSS]


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def base_checkpoint(path: Path, synth_root: Path, overrides: list[str]) -> Path:
    """An mss checkpoint of a freshly initialised tiny network (seeded): the weights a fine-tune starts from."""
    torch.manual_seed(0)
    cfg = compose("train", [f"data.root={synth_root}", "data.synth=null", "paths.output_dir=unused", *overrides])
    return save_checkpoint(path, build_model(cfg.model), OmegaConf.to_container(cfg.model, resolve=True),
                           data=OmegaConf.to_container(cfg.data, resolve=True))


def net_state(path: Path) -> dict[str, torch.Tensor]:
    return {k[4:]: v for k, v in torch.load(path, weights_only=True)["state_dict"].items() if k.startswith("net.")}


# -- LoRA ----------------------------------------------------------------------------------------------------------
class _Layers(nn.Module):
    """Every kind of layer LoRA adapts (strided, dilated, padded, reflect-padded convolutions) and two it skips."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 6, 5, stride=2, padding=3, dilation=2)
        self.conv2 = nn.Conv2d(1, 4, (3, 5), padding=(1, 2), padding_mode="reflect", bias=False)
        self.depthwise = nn.Conv1d(6, 6, 3, padding=1, groups=6)  # grouped: skipped
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)  # reads out_proj.weight itself: skipped
        self.fc = nn.Linear(8, 8)

    def forward(self, x):  # (B, 2, 32)
        h = self.depthwise(self.conv1(x))  # (B, 6, 14)
        h = self.conv2(h[:, None]).flatten(1, 2)[..., :8]  # (B, 24, 8)
        return self.fc(self.attn(h, h, h)[0])


def test_lora_merge_equals_adapters_on_linear_and_convs():
    torch.manual_seed(0)
    net = _Layers()
    wrapped = apply_lora(net, ["."], rank=3, alpha=6.0, dropout=0.5)
    assert wrapped == ["conv1", "conv2", "fc"]
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {
        f"{m}.lora_{ab}.weight" for m in wrapped for ab in "AB"}
    x = torch.randn(3, 2, 32)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, LoRA):  # B starts at zero (adapted = base): give the adapters something to fold
                m.lora_B.weight.normal_()
    net.eval()  # adapter dropout off
    with torch.no_grad():
        adapted = net(x)
        base_only = _Layers().eval()
        base_only.load_state_dict({k.replace(".base.", "."): v for k, v in net.state_dict().items()
                                   if ".lora_" not in k})
        state = merge_lora_state(net.state_dict(), alpha=6.0)
        plain = _Layers().eval()
        plain.load_state_dict(state)  # the plain architecture's keys, strictly
        merged = merge_lora(net)
        assert not any(isinstance(m, LoRA) for m in merged.modules())
        assert (adapted - base_only(x)).abs().max() > 0.1  # the adapters change the output
        torch.testing.assert_close(merged(x), adapted, rtol=0, atol=1e-5)
        torch.testing.assert_close(plain(x), adapted, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"matches no nn.Linear/Conv1d/Conv2d layer .* eligible layers"):
        apply_lora(_Layers(), ["no_such_layer"], rank=2, alpha=2.0)


def test_lora_finetune_of_tiny_bs_roformer_trains_adapters_only(synth_root, single_thread):
    """Only adapter parameters change (base weights bit-identical), the toy-batch loss falls, and the merged
    network separates like the network with adapters."""
    cfg = compose("train", ["paths.output_dir=unused", "module/finetune=lora", "module.finetune.lora.rank=4",
                            *ROFORMER])
    torch.manual_seed(0)
    module = instantiate(cfg.module, net=build_model(cfg.model), _convert_="partial")
    net = module.net
    base = {k: v.clone() for k, v in net.state_dict().items() if ".lora_" not in k}
    optimised = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    adapters = {id(p) for n, p in net.named_parameters() if ".lora_" in n}
    assert optimised == adapters and len(adapters) == 2 * sum(isinstance(m, LoRA) for m in net.modules()) > 0
    stems = toy_batch(synth_root, 16384)
    loss = CombinedLoss({"wave": WaveformL1(), "mrstft": MultiResolutionSTFTL1(windows=(1024, 512, 256),
                                                                              min_n_fft=256)})
    assert_overfits(net, stems, loss, lr=5e-3, steps=30, name="bs_roformer LoRA")
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items()), [k for k, v in base.items()
                                                                       if not torch.equal(after[k], v)]
    assert any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in after if ".lora_B." in k)
    net.eval()
    mix = stems.sum(1)
    with torch.no_grad():
        adapted = net(mix)
        plain = build_model(cfg.model).eval()
        plain.load_state_dict(merge_lora_state(net.state_dict(), cfg.module.finetune.lora.alpha))
        merged = merge_lora(net)(mix)
    assert (merged - adapted).abs().max() <= 1e-5 and (plain(mix) - adapted).abs().max() <= 1e-5
    assert (adapted - build_model(cfg.model).eval()(mix)).abs().max() > 1e-3  # the adapters did something


def test_lora_cli_checkpoint_keeps_base_weights_and_evaluates(synth_root, tmp_path):
    """`python -m mss.train module/finetune=lora` from an init checkpoint: the checkpoint holds the base weights
    bit-identical plus adapters and the LoRA config; mss.load_model folds them; `python -m mss.evaluate ckpt=...`
    runs on it."""
    base = base_checkpoint(tmp_path / "base.ckpt", synth_root, ROFORMER)
    run("mss.train", *ROFORMER, *TINY_RUN, "module/finetune=lora", f"module.init_checkpoint={base}",
        f"data.root={synth_root}", "data.synth=null", f"hydra.run.dir={tmp_path / 'run'}", "test=false",
        f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stored, state, init = read_checkpoint(ckpt), net_state(ckpt), net_state(base)
    assert stored["mss"]["lora"] == {"target": ["."], "rank": 8, "alpha": 16.0, "dropout": 0.0}
    bases = {k.replace(".base.", "."): v for k, v in state.items() if ".lora_" not in k}
    assert bases.keys() == init.keys() and all(torch.equal(bases[k], init[k]) for k in init)
    assert any(k.endswith(".lora_B.weight") and v.abs().max() > 0 for k, v in state.items())
    [group] = torch.load(ckpt, weights_only=True)["optimizer_states"][0]["param_groups"]
    assert len(group["params"]) == sum(".lora_" in k for k in state)
    net = load_model(ckpt)
    assert not any(isinstance(m, LoRA) for m in net.modules())
    adapted = build_model(stored["mss"]["model"])
    apply_lora(adapted, **stored["mss"]["lora"])
    adapted.load_state_dict(state)
    mix = torch.randn(1, 2, 44100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(mix), adapted.eval()(mix), rtol=0, atol=1e-5)
    # a LoRA checkpoint as the init checkpoint of a further (plain) fine-tune: the merged weights
    cfg = compose("train", ["paths.output_dir=unused", *ROFORMER, f"module.init_checkpoint={ckpt}"])
    module = instantiate(cfg.module, net=build_model(cfg.model), _convert_="partial")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in module.net.state_dict().items())
    run("mss.evaluate", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}", f"data.root={synth_root}",
        f"paths.cache_dir={tmp_path / 'cache'}", "evaluation.batch_size=8", cwd=tmp_path)
    assert (tmp_path / "eval" / "results.csv").is_file()


# -- freezing, unfreezing, partial init checkpoints -----------------------------------------------------------------
def test_freeze_then_unfreeze_through_the_cli_and_resume(synth_root, tmp_path):
    """Epoch 0 leaves the frozen encoder convolutions bit-identical to the init checkpoint and the optimiser without
    them; resuming into epoch 1 (unfreeze_after_epochs=1) trains them in a group of their own."""
    base = base_checkpoint(tmp_path / "base.ckpt", synth_root, TINY_MODEL)
    common = [*TINY_TRAIN, f"data.root={synth_root}", "data.synth=null", f"hydra.run.dir={tmp_path / 'run'}",
              "test=false", f"paths.cache_dir={tmp_path / 'cache'}", f"module.init_checkpoint={base}",
              "module.finetune.freeze=[enc_conv]", "module.finetune.unfreeze_after_epochs=1",
              "module.scheduler={_target_: torch.optim.lr_scheduler.OneCycleLR, _partial_: true, max_lr: 0.001, "
              "total_steps: 100}", "module.scheduler_interval=step"]
    run("mss.train", *common, cwd=tmp_path)
    ckpt, init = tmp_path / "run" / "checkpoints" / "last.ckpt", net_state(base)
    frozen = [k for k in init if ".enc_conv." in k]
    assert len(frozen) == 4 * 12
    state = net_state(ckpt)
    assert all(torch.equal(state[k], init[k]) for k in frozen)
    assert any(not torch.equal(state[k], init[k]) for k in init if k not in frozen)
    trainable = len(list(build_model(read_checkpoint(base)["mss"]["model"]).parameters())) - len(frozen)
    groups = torch.load(ckpt, weights_only=True)["optimizer_states"][0]["param_groups"]
    assert len(groups) == 1 and len(groups[0]["params"]) == trainable
    run("mss.train", *[o for o in common if not o.startswith("trainer.max_epochs")], "trainer.max_epochs=2",
        "ckpt_path=last", cwd=tmp_path)
    state = net_state(ckpt)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2  # epochs completed
    assert all(not torch.equal(state[k], init[k]) for k in frozen if k.endswith(".weight"))
    raw = torch.load(ckpt, weights_only=True)
    groups = raw["optimizer_states"][0]["param_groups"]
    assert [len(g["params"]) for g in groups] == [trainable, len(frozen)]
    assert groups[1]["lr"] == groups[0]["lr"] and groups[1]["max_lr"] == 0.001  # on the OneCycle schedule
    assert len(raw["lr_schedulers"][0]["base_lrs"]) == 2


def test_unfreezing_refuses_several_processes():
    from types import SimpleNamespace

    from mss.lightning.finetune import Unfreeze

    with pytest.raises(ValueError, match="does not work with several processes"):
        Unfreeze(["w"], 1, lambda named: []).setup(SimpleNamespace(world_size=2), None, "fit")


def test_unfrozen_groups_join_the_lr_schedule():
    param, extra = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** epoch)
    optimizer.step()
    scheduler.step()
    optimizer.add_param_group({"params": [extra], "lr": optimizer.param_groups[0]["lr"]})
    extend_schedulers(optimizer, [scheduler])
    optimizer.step()
    scheduler.step()  # without extend_schedulers: ValueError (zip() argument 2 is shorter)
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 0.25]


def test_freeze_and_lora_settings_are_checked(synth_root, tmp_path):
    def build(*extra):
        cfg = compose("train", ["paths.output_dir=unused", *TINY_MODEL, *extra])
        return instantiate(cfg.module, net=build_model(cfg.model), _convert_="partial")

    module = build("module.finetune.freeze=[head,dec_conv.0]")
    frozen = {n for n, p in module.net.named_parameters() if not p.requires_grad}
    assert frozen == set(module.frozen) and len(frozen) == 4 * 4
    optimised = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert not optimised & {id(p) for n, p in module.net.named_parameters() if n in frozen}
    assert module.configure_callbacks() == []  # no unfreezing asked for
    for extra, message in ((["module.finetune.freeze=[no_such_layer]"], r"\['no_such_layer'\] match\(es\) no param"),
                           (["module.finetune.unfreeze_after_epochs=2"], "nothing to unfreeze"),
                           (["module/finetune=lora", "module.finetune.freeze=[head]"], "trains the adapters only"),
                           (["module/finetune=lora", "module.finetune.lora.target=[nope]"], "matches no nn.Linear"),
                           (["+module.finetune.freez=[head]"], "unknown key")):
        with pytest.raises((ValueError, InstantiationException), match=message):
            build(*extra)


def test_init_checkpoint_strict_false_loads_the_compatible_tensors(synth_root, tmp_path, caplog):
    base = base_checkpoint(tmp_path / "base.ckpt", synth_root, TINY_MODEL)
    overrides = [f"module.init_checkpoint={base}", "model.filters=[4,8,8,8,8,16]"]  # a wider last encoder layer
    with pytest.raises((CheckpointError, InstantiationException),
                       match=r"init_checkpoint weights do not fit .*shape mismatch \(\d+\): unets.drums.enc_conv.5."
                             r"weight: \(8, 8, 5, 5\) -> \(16, 8, 5, 5\)"):
        instantiate(compose("train", ["paths.output_dir=unused", *TINY_MODEL, *overrides]).module,
                    net=build_model(compose("train", ["paths.output_dir=u", *TINY_MODEL, *overrides]).model),
                    _convert_="partial")
    cfg = compose("train", ["paths.output_dir=unused", *TINY_MODEL, *overrides, "module.init_checkpoint_strict=false"])
    torch.manual_seed(1)
    net = build_model(cfg.model)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="mss.checkpoint"):
        instantiate(cfg.module, net=net, _convert_="partial")
    init, state = net_state(base), net.state_dict()
    same = [k for k in state if k in init and init[k].shape == state[k].shape]
    differ = [k for k in state if k not in same]
    assert len(same) > len(differ) > 0
    assert all(torch.equal(state[k], init[k]) for k in same)
    assert all(torch.equal(state[k], fresh[k]) for k in differ)
    assert all(k in caplog.text for k in differ) and "not loaded (shape mismatch)" in caplog.text
    # a 2-source model from the 4-source checkpoint: a warning, the two sources' networks load
    cfg = compose("train", ["paths.output_dir=unused", *TINY_MODEL, f"module.init_checkpoint={base}",
                            "data.sources=[bass,vocals]", "module.init_checkpoint_strict=false"])
    module = instantiate(cfg.module, net=build_model(cfg.model), _convert_="partial")
    assert all(torch.equal(v, init[k]) for k, v in module.net.state_dict().items())


# -- optimisers ---------------------------------------------------------------------------------------------------
def test_optimizer_group_options_train_one_step_through_the_cli(synth_root, tmp_path):
    """module/optimizer=adamw,prodigy,schedulefree in one multirun; each job's checkpoint holds that optimiser's
    state (Prodigy's step-size estimate d, schedule-free's z iterate, in eval mode after validation)."""
    sweep = tmp_path / "sweep"
    run("mss.train", "-m", "module/optimizer=adamw,prodigy,schedulefree", *TINY_TRAIN, f"data.root={synth_root}",
        "data.synth=null", f"hydra.sweep.dir={sweep}", "test=false", f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path)
    jobs = sorted((p for p in sweep.iterdir() if (p / "checkpoints" / "last.ckpt").is_file()),
                  key=lambda p: int(p.name.split("_")[0]))
    assert len(jobs) == 3, list(sweep.iterdir())
    ckpts = [j / "checkpoints" / "last.ckpt" for j in jobs]
    states = [torch.load(c, weights_only=True)["optimizer_states"][0] for c in ckpts]
    adamw, prodigy, schedulefree = states
    assert adamw["param_groups"][0]["weight_decay"] == 0.01 and "amsgrad" in adamw["param_groups"][0]
    assert prodigy["param_groups"][0]["d"] > 0 and prodigy["param_groups"][0]["lr"] == 1.0
    assert schedulefree["param_groups"][0]["train_mode"] is False
    assert schedulefree["param_groups"][0]["k"] == 2 and any("z" in s for s in schedulefree["state"].values())
    for ckpt in ckpts:
        assert load_model(ckpt) is not None



@pytest.mark.slow
def test_adamw8bit_trains_on_cpu_and_its_checkpoints_load(synth_root, tmp_path):
    """module/optimizer=adamw8bit (torchao): one training epoch on the CPU; the checkpoint holds 8-bit quantised
    moments for the tensors torchao quantises (4096 elements or more: the U-Net's wider convolutions here) and loads
    with mss.load_model in a fresh process (torchao's tensor subclass allowlisted on demand)."""
    run_dir = tmp_path / "run"
    tiny = [o for o in TINY_TRAIN if not o.startswith("model.filters=")]
    run("mss.train", "module/optimizer=adamw8bit", *tiny, "model.filters=[4,8,16,16,16,16]",
        f"data.root={synth_root}", "data.synth=null", f"hydra.run.dir={run_dir}", "test=false",
        f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    code = (f"import mss, torch; net = mss.load_model({str(ckpt)!r}); import torchao.optim; "
            f"state = torch.load({str(ckpt)!r}, weights_only=True)['optimizer_states'][0]['state']; "
            "print(sorted({type(s['exp_avg']).__name__ for s in state.values()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "['OptimState8bit', 'Tensor']"
