"""DDPM, DDIM and the U-Net: schedule math against closed forms, the samplers against each other
and against an exact denoiser, against diffusers' schedulers when installed, and tiny CPU runs."""

from __future__ import annotations

import math

import pytest
import torch

from nerfx.data.shapes import load_shapes
from nerfx.models.ddim import DDIMConfig, DDIMSampler, ddim_timesteps, slerp
from nerfx.models.ddpm import DiffusionConfig, GaussianDiffusion, beta_schedule
from nerfx.models.ema import EMA
from nerfx.models.layers import AttnBlock
from nerfx.models.unet import UNet, UNetConfig, timestep_embedding
from tests.helpers import outputs_per_attention_backend

# ---------------------------------------------------------------------------------------------
# schedules and closed forms


def test_linear_schedule_and_alpha_bar():
    d = GaussianDiffusion()
    assert d.betas.shape == (1000,)
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    for t in (0, 1, 10, 500, 999):  # ᾱ_t = Π_{s<=t} (1 - β_s), β_s = 1e-4 + s (0.02-1e-4)/999
        expected = math.prod(1 - (1e-4 + s * (0.02 - 1e-4) / 999) for s in range(t + 1))
        assert d.alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-10)
    assert d.alphas_cumprod[-1].item() == pytest.approx(4.036e-5, rel=1e-3)  # DDPM: ~0 at T


def test_scaled_linear_schedule_is_latent_diffusions_linear():
    """latent-diffusion's make_beta_schedule('linear') spaces √β evenly: β_t = (√β_1 + t
    (√β_T - √β_1) / (T - 1))²; its ImageNet configuration's ends 0.0015 and 0.0195."""
    betas = beta_schedule("scaled_linear", 1000, 0.0015, 0.0195)
    for t in (0, 1, 500, 999):
        root = 0.0015 ** 0.5 + t * (0.0195 ** 0.5 - 0.0015 ** 0.5) / 999
        assert betas[t].item() == pytest.approx(root ** 2, rel=1e-12)
    d = GaussianDiffusion(DiffusionConfig(schedule="scaled_linear", beta_start=0.0015,
                                          beta_end=0.0195))
    assert d.betas.dtype == torch.float64 and d.alphas_cumprod[-1].item() < 1e-3


def test_cosine_schedule():
    T, s = 1000, 0.008
    betas = beta_schedule("cosine", T)
    alpha_bar = torch.cumprod(1 - betas, 0)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 100, 500, 900):  # ᾱ_t = f(t+1)/f(0) on 0-based steps, before the 0.999 clip
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert betas.max().item() == pytest.approx(0.999)  # the last steps are clipped
    with pytest.raises(ValueError, match="schedule"):
        DiffusionConfig(schedule="quadratic")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_against_bayes(schedule):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), a product of Gaussians."""
    d = GaussianDiffusion(DiffusionConfig(schedule=schedule))
    x0, xt = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    for ti in (1, 2, 50, 500, 998):
        t = torch.full((5,), ti)
        ab_prev, beta = d.alphas_cumprod[ti - 1].item(), d.betas[ti].item()
        alpha = 1 - beta
        precision = 1 / (1 - ab_prev) + alpha / beta
        var = 1 / precision
        mean = var * (math.sqrt(ab_prev) * x0 / (1 - ab_prev) + math.sqrt(alpha) * xt / beta)
        got_mean, got_var = d.q_posterior(x0, xt, t)
        torch.testing.assert_close(got_mean, mean, rtol=1e-9, atol=1e-9)
        assert got_var.flatten()[0].item() == pytest.approx(var, rel=1e-9)


def test_q_sample_statistics():
    d = GaussianDiffusion()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7)
    t = torch.full((20000,), 300)
    xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    ab = d.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.05)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_q_sample_then_true_prediction_recovers_x0(objective):
    d = GaussianDiffusion(DiffusionConfig(objective=objective))
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 10, 100, 400, 700, 900, 999])
    xt = d.q_sample(x0, t, noise)
    x0_hat, eps_hat = d.predict(d.target(x0, t, noise), xt, t)
    torch.testing.assert_close(x0_hat, x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=2e-4, rtol=0)


def test_conversions_agree():
    d = GaussianDiffusion()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 2, dtype=torch.float64, generator=g)
    eps = torch.randn(6, 2, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 5, 50, 250, 600, 999])
    xt = d.q_sample(x0, t, eps)
    v = d.v_target(x0, t, eps)
    torch.testing.assert_close(d.eps_to_x0(xt, t, eps), x0)
    torch.testing.assert_close(d.x0_to_eps(xt, t, x0), eps)
    torch.testing.assert_close(d.v_to_x0(xt, t, v), x0)
    # v is the velocity of x_t along the circle (sqrt ᾱ, sqrt(1-ᾱ)) = (cos φ, sin φ): v = dx/dφ
    ab = d.alphas_cumprod[t].view(-1, 1)
    phi = torch.atan2((1 - ab).sqrt(), ab.sqrt())
    torch.testing.assert_close(v, -torch.sin(phi) * x0 + torch.cos(phi) * eps)


def test_simple_loss_is_mse_on_the_target():
    d = GaussianDiffusion(DiffusionConfig(objective="v"))
    x0 = torch.randn(4, 3, 2, 2)
    noise = torch.randn_like(x0)
    t = torch.tensor([3, 30, 300, 900])
    target = d.target(x0, t, noise)
    assert d.loss(lambda xt, tt: target, x0, t, noise).item() == pytest.approx(0.0, abs=1e-10)
    zero = d.loss(lambda xt, tt: torch.zeros_like(xt), x0, t, noise)
    assert zero.item() == pytest.approx(target.pow(2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_min_snr_loss_is_the_clipped_snr_weighted_x0_error(objective, schedule):
    """Whatever the objective, the Min-SNR-γ loss is the mean over examples of
    min(SNR_t, γ) |x̂_0 - x_0|² (per-pixel mean) [Hang et al. 2023, eq. 10]."""
    gamma = 5.0
    d = GaussianDiffusion(DiffusionConfig(schedule=schedule, objective=objective,
                                          min_snr_gamma=gamma))
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(5, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 17, 250, 640, 999])  # SNR from far above γ to far below it
    out = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    loss = d.loss(lambda xt, tt: out, x0, t, noise)
    xt = d.q_sample(x0, t, noise)
    x0_hat, _ = d.predict(out, xt, t)
    ab = d.alphas_cumprod[t]
    snr = ab / (1 - ab)
    expected = (snr.clamp(max=gamma) * (x0_hat - x0).pow(2).mean((1, 2, 3))).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    # Not the simple loss in disguise: the weights are not all 1.
    assert not torch.allclose(d.loss_weights(t).double(), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="min_snr_gamma"):
        DiffusionConfig(min_snr_gamma=0.0)


# ---------------------------------------------------------------------------------------------
# samplers


def _toy_model(x, t):
    """A deterministic stand-in for a network: smooth in x, depends on t."""
    return 0.6 * torch.tanh(x) + 0.05 * torch.sin(t.float() / 37.0).view(-1, *[1] * (x.dim() - 1))


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta1_full_steps_is_ddpm_posterior(clip):
    d = GaussianDiffusion(DiffusionConfig(variance="fixed_small", clip_denoised=clip))
    sampler = DDIMSampler(d, DDIMConfig(steps=1000, eta=1.0))
    assert sampler.timesteps == list(range(1000))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 1.5
    for ti in (999, 700, 300, 50, 1, 0):
        t = torch.full((4,), ti)
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        ddpm, _ = d.p_sample(_toy_model, x, t, noise=z)
        ddim, _ = sampler.step(_toy_model, x, ti, ti - 1, noise=z)
        torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)
        if ti > 0:
            sigma2 = sampler.sigma(ti, ti - 1) ** 2
            assert sigma2 == pytest.approx(d.posterior_variance[ti].item(), rel=1e-9)


def test_fixed_large_variance_is_beta():
    d = GaussianDiffusion()  # the paper's CIFAR-10 choice
    x = torch.zeros(1, 1)
    for ti in (1, 500, 999):
        _, log_var, _ = d.p_mean_variance(lambda xt, t: xt, x, torch.tensor([ti]))
        assert log_var.exp().item() == pytest.approx(d.betas[ti].item(), rel=1e-6)


class _GaussianDenoiser:
    """The exact ε-prediction E[ε | x_t] for data x_0 ~ N(0, s² I): a linear map of x_t."""

    def __init__(self, diffusion: GaussianDiffusion, s: float):
        self.ab, self.s = diffusion.alphas_cumprod, s

    def __call__(self, x, t):
        ab = self.ab[t].to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        return (1 - ab).sqrt() / (ab * self.s ** 2 + 1 - ab) * x


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_samplers_reach_the_data_distribution(schedule):
    d = GaussianDiffusion(DiffusionConfig(schedule=schedule, clip_denoised=False,
                                          variance="fixed_small"))
    model = _GaussianDenoiser(d, 0.5)
    g = torch.Generator().manual_seed(4)
    ddpm = d.sample(model, (2000, 4), generator=g)
    assert ddpm.std().item() == pytest.approx(0.5, rel=0.05)
    errors = {}
    for steps in (10, 50, 1000):
        for eta in (0.0, 1.0):
            sampler = DDIMSampler(d, DDIMConfig(steps=steps, eta=eta))
            x = sampler.sample(model, (2000, 4), generator=torch.Generator().manual_seed(steps))
            assert x.mean().abs().item() < 0.03
            errors[steps, eta] = abs(x.std().item() - 0.5)
    # All T steps: the data's spread; fewer steps: a discretisation error that shrinks with S,
    # smaller at η = 0 than at η = 1 (DDIM Table 1's ordering at few steps).
    assert errors[1000, 0.0] < 0.02 and errors[1000, 1.0] < 0.02
    for eta in (0.0, 1.0):
        assert errors[10, eta] > errors[50, eta] > errors[1000, eta] - 0.01
    assert errors[10, 0.0] < errors[10, 1.0] and errors[50, 0.0] < errors[50, 1.0]


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
def test_ddim_inversion_reconstructs(spacing):
    d = GaussianDiffusion(DiffusionConfig(clip_denoised=False))
    model = _GaussianDenoiser(d, 0.5)
    sampler = DDIMSampler(d, DDIMConfig(steps=100, eta=0.0, spacing=spacing))
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64) * 0.5
    z = sampler.invert(model, x0)
    assert z.std().item() == pytest.approx(1.0, rel=0.15)  # an image of the noise distribution
    back = sampler.sample(model, tuple(x0.shape), noise=z)
    err100 = ((back - x0).norm() / x0.norm()).item()
    assert err100 < 0.04
    # The inversion's ε̂ is taken one step early (first order): the error shrinks like 1/S.
    coarse = DDIMSampler(d, DDIMConfig(steps=10, spacing=spacing))
    back10 = coarse.sample(model, tuple(x0.shape), noise=coarse.invert(model, x0))
    err10 = ((back10 - x0).norm() / x0.norm()).item()
    assert err100 < err10 / 4 and err10 < 0.4


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 10) == list(range(0, 1000, 100))
    q = ddim_timesteps(1000, 10, "quadratic")
    assert q[0] == 0 and q[-1] == 800 and len(q) == 10 and q == sorted(q)
    assert len(ddim_timesteps(1000, 50, "quadratic")) == 49  # a repeated 0 dropped
    assert q[1] - q[0] < q[-1] - q[-2]  # denser near the data
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError, match="spacing"):
        DDIMConfig(spacing="cubic")


def test_slerp():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b, atol=1e-5, rtol=1e-5)
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = slerp(e0, e1, 0.5)
    torch.testing.assert_close(mid, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))  # on the circle


# ---------------------------------------------------------------------------------------------
# against diffusers' schedulers (a peer's implementation), when installed


@pytest.mark.parametrize("objective,prediction_type", [("eps", "epsilon"), ("v", "v_prediction"),
                                                       ("x0", "sample")])
@pytest.mark.parametrize("clip", [False, True])
def test_matches_diffusers_schedulers(objective, prediction_type, clip):
    diffusers = pytest.importorskip("diffusers")
    cfg = DiffusionConfig(objective=objective, variance="fixed_small", clip_denoised=clip)
    d = GaussianDiffusion(cfg)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 4, 4, generator=g)
    out = torch.randn(2, 3, 4, 4, generator=g) * 0.8

    ddpm = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                   variance_type="fixed_small", clip_sample=clip,
                                   prediction_type=prediction_type)
    for ti in (999, 600, 120, 1, 0):
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(ti))
        theirs = ddpm.step(out, ti, x, generator=torch.Generator().manual_seed(ti)).prev_sample
        ours, _ = d.p_sample(lambda xt, t: out, x, torch.full((2,), ti), noise=z)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    ddim = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                   clip_sample=clip, prediction_type=prediction_type)
    ddim.set_timesteps(50)
    sampler = DDIMSampler(d, DDIMConfig(steps=50))
    assert sorted(ddim.timesteps.tolist()) == sampler.timesteps
    for eta in (0.0, 1.0):
        for ti in (980, 500, 20, 0):
            z = torch.randn(x.shape, generator=g)
            theirs = ddim.step(out, ti, x, eta=eta, use_clipped_model_output=True,
                               variance_noise=z).prev_sample
            ours, _ = sampler.step(lambda xt, t: out, x, ti, ti - 20, noise=z, eta=eta)
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# the U-Net


def test_unet_cifar10_preset_parameter_count():
    model = UNet(UNetConfig.cifar10())
    # The paper's 35.7M (the official TF model and its PyTorch port: 35,746,307).
    assert model.num_parameters() == 35_746_307
    attn = [m for m in model.modules() if isinstance(m, AttnBlock)]
    assert len(attn) == 2 + 3 + 1  # at 16x16 down (2 blocks) and up (3 blocks), and the middle


def test_unet_shapes_and_errors():
    cfg = UNetConfig.tiny()
    model = UNet(cfg)
    x = torch.randn(3, 3, 16, 16)
    assert model(x, torch.tensor([0, 10, 999])).shape == (3, 3, 16, 16)
    assert model(x, torch.tensor(5)).shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match=r"expects \[B, 3, 16, 16\].*got \(3, 3, 32, 32\)"):
        model(torch.randn(3, 3, 32, 32), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        UNet(UNetConfig.tiny(resolution=18, ch_mult=(1, 2, 2)))


def test_unet_conditioning_hooks():
    torch.manual_seed(0)
    model = UNet(UNetConfig.tiny(num_classes=4, context_dim=6))
    for p in model.parameters():  # leave the zero initialisation so every path carries signal
        p.data.add_(torch.randn_like(p) * 0.02)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 7])
    ctx = torch.randn(2, 5, 6)
    a = model(x, t, y=torch.tensor([0, 1]), context=ctx)
    b = model(x, t, y=torch.tensor([2, 4]), context=ctx)  # 4 = the null label
    c = model(x, t, y=torch.tensor([0, 1]), context=ctx * 2)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t, context=ctx)
    with pytest.raises(ValueError, match="pass context"):
        model(x, t, y=torch.tensor([0, 1]))


def test_the_run_setting_chooses_the_attention_backend(monkeypatch):
    """use_backend("torch") runs the reference in every self- and cross-attention layer, "sdpa"
    torch's SDPA; the predictions agree."""
    torch.manual_seed(0)
    model = UNet(UNetConfig.tiny(context_dim=6)).eval()
    for p in model.parameters():  # leave the zero initialisation so attention reaches the output
        p.data.add_(torch.randn_like(p) * 0.02)
    x, t, ctx = torch.randn(2, 3, 16, 16), torch.tensor([3, 7]), torch.randn(2, 5, 6)
    out = outputs_per_attention_backend(monkeypatch, model, lambda: model(x, t, context=ctx))
    torch.testing.assert_close(out["sdpa"], out["torch"], rtol=1e-4, atol=1e-5)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 500]), 8)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 3)
    torch.testing.assert_close(emb[2, :4], torch.sin(500 * freqs))


def test_unet_starts_as_zero_and_gets_gradients():
    model = UNet(UNetConfig.tiny())
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([1, 2]))
    assert out.abs().max().item() == 0  # the output conv starts at zero (official: scale 1e-10)
    (out - x).pow(2).mean().backward()
    assert model.conv_out.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# tiny training and sampling


def _tiny_setup(objective="eps", timesteps=100):
    torch.manual_seed(0)
    model = UNet(UNetConfig.tiny(ch=16, attn_resolutions=(8,), num_groups=8))
    d = GaussianDiffusion(DiffusionConfig(timesteps=timesteps, objective=objective,
                                          beta_end=0.02 * 1000 / timesteps))
    return model, d


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_tiny_training_loss_falls(objective):
    model, d = _tiny_setup(objective)
    data = load_shapes("train", size=16, n=256)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    ema = EMA(model, decay=0.99)
    losses = []
    for _ in range(6):
        for x, _ in data.batches(32, g):
            loss = d.loss(model, x, generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update(model)
            losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    # The EMA model denoises too (better than predicting zeros).
    x0 = data.as_float(index=slice(0, 32))
    with torch.no_grad():
        ema_loss = d.loss(ema.model, x0, generator=torch.Generator().manual_seed(1)).item()
        zero = d.loss(lambda xt, t: torch.zeros_like(xt), x0,
                      generator=torch.Generator().manual_seed(1)).item()
    assert ema_loss < 0.8 * zero


def test_sampling_is_repeatable_with_a_seed():
    model, d = _tiny_setup(timesteps=20)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.02)
    model.eval()

    def ddpm(seed):
        return d.sample(model, (2, 3, 16, 16), generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(ddpm(0), ddpm(0), rtol=0, atol=0)
    assert not torch.allclose(ddpm(0), ddpm(1))
    sampler = DDIMSampler(d, DDIMConfig(steps=5, eta=1.0))

    def ddim(seed):
        return sampler.sample(model, (2, 3, 16, 16), generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(ddim(3), ddim(3), rtol=0, atol=0)
    assert not torch.allclose(ddim(3), ddim(4))
    a = sampler.interpolate(model, torch.randn(3, 16, 16), torch.randn(3, 16, 16), 4)
    assert a.shape == (4, 3, 16, 16)


def test_ema_warmup_and_state():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # 0.1 * 0 + 0.9 * 1
    assert ema.model.weight[0, 0].item() == pytest.approx(0.9)
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.num_updates = 10 ** 6
    assert ema.current_decay() == 0.9999
    ema.update(model)
    assert ema.model.weight[0, 0].item() == pytest.approx(0.9 * 0.9999 + 0.0001)
    other = EMA(torch.nn.Linear(2, 1, bias=False))
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == ema.num_updates
    fresh = torch.nn.Linear(2, 1, bias=False)
    other.copy_to(fresh)
    torch.testing.assert_close(fresh.weight, ema.model.weight)
    assert not any(p.requires_grad for p in ema.model.parameters())
