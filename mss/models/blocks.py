"""Building blocks shared by the Demucs family (waveform Demucs v3, Hybrid Demucs, HT Demucs).

Constructor keywords, submodule names and parameter names follow the reference implementation
(``demucs.demucs`` / ``demucs.transformer``), so a reference state dict loads 1:1 into modules built from these
blocks; the computations are re-implemented (vectorised chunking in :class:`BLSTM`, a fused
``scaled_dot_product_attention`` call with an analytic decay bias in :class:`LocalState`).

Shape legend: ``B`` batch, ``C`` channels, ``T`` time steps (samples or frames), ``H`` heads, ``D`` channels per
head, ``N`` chunks.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["BLSTM", "DConv", "LayerScale", "LocalState", "center_trim", "rescale_conv", "rescale_module"]

_CONVS = (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d)


def center_trim(x: Tensor, reference: Tensor | int) -> Tensor:
    """Trim the last axis of ``x`` (``(..., T)``) to ``reference`` samples (an int or a tensor's last size), keeping
    the centre; an odd surplus loses its extra sample on the right."""
    length = reference if isinstance(reference, int) else reference.shape[-1]
    delta = x.shape[-1] - length
    if delta < 0:
        raise ValueError(f"cannot centre-trim {x.shape[-1]} samples to the longer length {length}")
    return x[..., delta // 2: delta // 2 + length]


@torch.no_grad()
def rescale_conv(conv: nn.Module, reference: float) -> None:
    """Weight-rescaling trick of the Demucs paper: with ``std`` the standard deviation of the initial weight, divide
    weight and bias by ``sqrt(std / reference)`` (the new std is ``sqrt(std * reference)``, not ``reference``)."""
    scale = (conv.weight.std() / reference) ** 0.5
    conv.weight.div_(scale)
    if conv.bias is not None:
        conv.bias.div_(scale)


def rescale_module(module: nn.Module, reference: float) -> None:
    """Apply :func:`rescale_conv` to every (transposed) 1-D / 2-D convolution inside ``module`` (reference a=0.1)."""
    for sub in module.modules():
        if isinstance(sub, _CONVS):
            rescale_conv(sub, reference)



@functools.cache
def cpu_bf16_rnn() -> bool:
    """Whether this CPU runs recurrent layers under bf16 autocast (oneDNN has no bf16 LSTM/GRU kernels without
    AVX-512 BF16 / AMX: it then raises "could not create a primitive descriptor"). Probed once per process on a tiny
    LSTM."""
    probe = nn.LSTM(2, 2, batch_first=True)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            probe(torch.zeros(1, 2, 2))
    except RuntimeError:
        return False
    return True


def run_rnn(rnn: nn.RNNBase, x: Tensor) -> tuple:
    """``rnn(x)``, in float32 where the CPU cannot run it under the current bf16 autocast (:func:`cpu_bf16_rnn`):
    the recurrent layer then computes in float32 and the layers around it keep autocast's bf16. Elsewhere (GPU,
    float32, a CPU with bf16 RNN kernels) exactly ``rnn(x)``."""
    if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not cpu_bf16_rnn()):
        with torch.autocast("cpu", enabled=False):
            return rnn(x.float())
    return rnn(x)

class LayerScale(nn.Module):
    """Learnt per-channel scale of a residual branch, initialised small (Touvron et al. 2021).

    ``(B, C, T) -> (B, C, T)``, or ``(..., C) -> (..., C)`` with ``channel_last=True``. Parameter: ``scale`` (C,).
    """

    def __init__(self, channels: int, init: float = 0.0, channel_last: bool = False):
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * (self.scale if self.channel_last else self.scale[:, None])


class BLSTM(nn.Module):
    """Bidirectional LSTM with ``dim`` hidden units per direction and a linear map ``2 dim -> dim``.

    ``(B, C=dim, T) -> (B, C, T)``. With ``max_steps`` set and ``T > max_steps`` the input is cut into overlapping
    chunks of ``max_steps`` (hop ``max_steps // 2``) that run as one batch; each chunk keeps its centre half
    (the first / last chunk also keep their outer quarter). ``skip`` adds the input back.
    Submodules: ``lstm`` (nn.LSTM, sequence-first), ``linear``.
    """

    def __init__(self, dim: int, layers: int = 1, max_steps: int | None = None, skip: bool = False):
        super().__init__()
        if max_steps is not None and max_steps % 4:
            raise ValueError(f"BLSTM max_steps must be a multiple of 4, got {max_steps}")
        self.max_steps = max_steps
        self.skip = skip
        self.lstm = nn.LSTM(input_size=dim, hidden_size=dim, num_layers=layers, bidirectional=True)
        self.linear = nn.Linear(2 * dim, dim)

    def _run(self, x: Tensor) -> Tensor:
        """``(B, C, T) -> (B, C, T)`` without chunking."""
        y = run_rnn(self.lstm, rearrange(x, "b c t -> t b c"))[0]
        return rearrange(self.linear(y), "t b c -> b c t")

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-1]
        width = self.max_steps
        if width is None or length <= width:
            y = self._run(x)
        else:
            hop, edge = width // 2, width // 4
            n = math.ceil(length / hop)
            frames = F.pad(x, (0, (n - 1) * hop + width - length)).unfold(-1, width, hop)  # (B, C, N, width)
            b = x.shape[0]
            y = self._run(rearrange(frames, "b c n w -> (b n) c w"))
            y = rearrange(y, "(b n) c w -> b c n w", b=b)
            core = rearrange(y[..., edge:width - edge], "b c n w -> b c (n w)")
            y = torch.cat([y[:, :, 0, :edge], core, y[:, :, -1, width - edge:]], dim=-1)[..., :length]
        return x + y if self.skip else y


class LocalState(nn.Module):
    """Local self-attention without positional embedding: content-based scores plus a learnt, per-query
    exponential-decay penalty ``-|t - s| * sum_f f * sigmoid(q_f) / (2 sqrt(ndecay))`` that keeps attention local;
    each position is masked from attending to itself. Output is residual: ``x + proj(attention)``.

    ``(B, C, T) -> (B, C, T)``. Submodules: ``content``, ``query``, ``key``, ``query_decay`` (with ``ndecay``),
    ``query_freqs`` (with ``nfreqs``, a periodic-kernel variant of the reference kept for checkpoint
    compatibility), ``proj`` — all 1x1 ``Conv1d``.
    """

    def __init__(self, channels: int, heads: int = 4, nfreqs: int = 0, ndecay: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"LocalState channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.nfreqs = nfreqs
        self.ndecay = ndecay
        self.content = nn.Conv1d(channels, channels, 1)
        self.query = nn.Conv1d(channels, channels, 1)
        self.key = nn.Conv1d(channels, channels, 1)
        if nfreqs:
            self.query_freqs = nn.Conv1d(channels, heads * nfreqs, 1)
        if ndecay:
            self.query_decay = nn.Conv1d(channels, heads * ndecay, 1)
            with torch.no_grad():  # sigmoid(-2) ~ 0.12: weak initial decay, i.e. a wide initial window
                self.query_decay.weight.mul_(0.01)
                self.query_decay.bias.fill_(-2.0)
        self.proj = nn.Conv1d(channels + heads * nfreqs, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-1]
        heads = self.heads
        split = "b (h d) t -> b h t d"
        q = rearrange(self.query(x), split, h=heads)
        k = rearrange(self.key(x), split, h=heads)
        v = rearrange(self.content(x), split, h=heads)
        # positions and the bias in (at least) fp32, also under bf16/fp16 autocast, where integers > 256 are inexact
        dtype = torch.promote_types(x.dtype, torch.float32)
        pos = torch.arange(length, device=x.device, dtype=dtype)
        delta = pos[:, None] - pos[None, :]  # (query s, key t)
        bias = torch.zeros((), device=x.device, dtype=dtype)
        if self.ndecay:
            rates = torch.arange(1, self.ndecay + 1, device=x.device, dtype=dtype)
            decay = torch.sigmoid(rearrange(self.query_decay(x), split, h=heads).to(dtype)) / 2  # (B, H, T, ndecay)
            bias = -(decay @ rates)[..., None] * delta.abs() / self.ndecay ** 0.5  # (B, H, T_query, T_key)
        if self.nfreqs:
            periods = torch.arange(1, self.nfreqs + 1, device=x.device, dtype=dtype)
            kernel = torch.cos(2 * math.pi * delta[None] / periods[:, None, None])  # (F, T_query, T_key)
            fq = rearrange(self.query_freqs(x), split, h=heads).to(dtype) / self.nfreqs ** 0.5  # (B, H, T, F)
            bias = bias + torch.einsum("bhsf,fst->bhst", fq, kernel)
            kernel = kernel.to(q.dtype)
        # no attention to self: the reference fills the diagonal score with -100; a -1e4 offset is equivalent
        eye = torch.eye(length, device=x.device, dtype=torch.bool)
        bias = (bias - 1e4 * eye).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(q.shape[0], heads, length, length))
        if self.nfreqs:  # per head, the attention-weighted periodic kernels follow the D content channels
            scores = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias, dim=-1)
            out = torch.cat([out, torch.einsum("bhst,fst->bhsf", scores, kernel)], dim=-1)
        return x + self.proj(rearrange(out, "b h t d -> b (h d) t"))


class DConv(nn.Module):
    """Residual branch of dilated convolutions (Demucs v3 / HDemucs / HT Demucs encoder and decoder layers).

    ``depth`` sub-blocks, each ``x <- x + LayerScale(GLU(norm(Conv1x1(act(norm(Conv_k(x, dilation 2^d)))))))`` with
    the inner width ``int(channels / compress)``; with ``lstm`` a :class:`BLSTM` (2 layers, chunks of 200, skip) and
    with ``attn`` a :class:`LocalState` follow the first activation. ``norm``: GroupNorm(1, .) (else identity);
    ``gelu``: GELU (else ReLU); a negative ``depth`` (or ``dilate=False``) disables dilation.

    ``(B, C, T) -> (B, C, T)``. Parameter names ``layers.<d>.<i>.*`` match the reference's ``nn.Sequential``
    indices: 0 conv, 1 norm, 2 act, [BLSTM], [LocalState], conv1x1, norm, GLU, LayerScale.
    """

    def __init__(self, channels: int, compress: float = 4, depth: int = 2, init: float = 1e-4, norm: bool = True,
                 attn: bool = False, heads: int = 4, ndecay: int = 4, lstm: bool = False, gelu: bool = True,
                 kernel: int = 3, dilate: bool = True):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"DConv kernel must be odd, got {kernel}")
        self.channels = channels
        self.compress = compress
        self.depth = abs(depth)
        dilate = dilate and depth > 0
        hidden = int(channels / compress)
        act = nn.GELU if gelu else nn.ReLU

        def norm_fn(dim: int) -> nn.Module:
            return nn.GroupNorm(1, dim) if norm else nn.Identity()

        self.layers = nn.ModuleList()
        for d in range(self.depth):
            dilation = 2 ** d if dilate else 1
            mods: list[nn.Module] = [
                nn.Conv1d(channels, hidden, kernel, dilation=dilation, padding=dilation * (kernel // 2)),
                norm_fn(hidden), act()]
            if lstm:
                mods.append(BLSTM(hidden, layers=2, max_steps=200, skip=True))
            if attn:
                mods.append(LocalState(hidden, heads=heads, ndecay=ndecay))
            mods += [nn.Conv1d(hidden, 2 * channels, 1), norm_fn(2 * channels), nn.GLU(1), LayerScale(channels, init)]
            self.layers.append(nn.Sequential(*mods))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x
