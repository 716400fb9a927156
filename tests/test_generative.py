"""The generative capability: a method that can sample says so by subclassing `GenerativeMethod`,
with its samplers and default steps; the core and the CLI ask only that."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.errors import ConfigError, UnknownMethodError
from benchmark.method import GenerativeMethod
from benchmark.registry import generative_methods, get_generative, get_method
from methods.diffusion.linear import DiffusionLinearConfig
from methods.diffusion.model import DDPMConfig, build_scheduler
from methods.diffusion.sampling import sample


def test_the_diffusion_methods_are_generative_and_list_their_samplers():
    assert {"diffusion-linear", "diffusion-decoder"} <= set(generative_methods())
    assert not {"unet-scratch", "simclr", "mae", "nnunet"} & set(generative_methods())
    for name in ("diffusion-linear", "diffusion-decoder"):
        cls = get_generative(name)
        assert issubclass(cls, GenerativeMethod) and cls.uses_pretraining
        assert cls.samplers == ("ddpm", "ddim")
        assert cls.check_sampler(None) == "ddpm" and cls.check_sampler("ddim") == "ddim"
    # The steps `bench fidelity` records when none are asked for: T for DDPM, 50 for DDIM.
    cls, config = get_method("diffusion-linear"), DiffusionLinearConfig(train_timesteps=300)
    assert cls.default_steps(config, "ddpm") == 300 and cls.default_steps(config, "ddim") == 50


def test_a_non_generative_method_is_refused_naming_those_that_can_sample():
    with pytest.raises(UnknownMethodError, match="cannot sample") as info:
        get_generative("unet-scratch")
    assert "diffusion-linear" in str(info.value) and "unet-scratch" in str(info.value)
    with pytest.raises(ConfigError, match="--sampler euler: method 'diffusion-linear'") as info:
        get_generative("diffusion-linear").check_sampler("euler")
    assert "ddpm, ddim" in str(info.value)


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "simclr"], "method 'simclr' cannot sample (not generative)"),
        (["-m", "diffusion-decoder", "--sampler", "euler"], "samples with ddpm, ddim"),
        (["-m", "diffusion-linear", "--steps", "50"], "the ddpm sampler takes all 1000 steps"),
        (["-m", "diffusion-linear", "--sampler", "ddim", "--steps", "2000"], "more than the"),
    ],
)
def test_bench_sample_refuses_before_any_pretraining(tmp_path, isolated, args, message):
    r = CliRunner().invoke(app, ["sample", "-p", "tiny", "--out", str(tmp_path / "s"), *args])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and r.output.count("\n") == 1 and message in r.output
    assert not (isolated / "pretrain").exists() and not (tmp_path / "s").exists()


class _Oracle(torch.nn.Module):
    """The exact ε-predictor for data N(0, 0.3²) per pixel: a sampler that follows its
    schedule ends with samples of standard deviation 0.3."""

    def __init__(self, cfg):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.abar = build_scheduler(cfg).alphas_cumprod

    def forward(self, x, timesteps):
        a = self.abar[timesteps.long()].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * 0.09 + 1 - a)


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 1000), ("ddim", 50)])
def test_the_samplers_end_where_the_data_are_and_a_short_ddpm_chain_is_refused(sampler, steps):
    cfg = DDPMConfig()
    out = sample(_Oracle(cfg), cfg, 64, 16, sampler, steps, seed=0)
    assert abs(float((out * 2 - 1).std()) - 0.3) < 0.03
    with pytest.raises(ValueError, match="the ddpm sampler takes all 1000 steps"):
        sample(_Oracle(cfg), cfg, 8, 16, "ddpm", 250, seed=0)
