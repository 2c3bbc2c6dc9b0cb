"""PyTorch reference for `cdm bench`: the same training and sampling steps as the Rust code.

CDM training step = draw a batch, stratified levels and noise; logits = cumsum(h(x_t));
F = l_{T+1} - l_t; eps_hat = sqrt(1 - abar_t) (grad_x F + x_t) with create_graph;
loss = ce_weight * CE + summed MSE on levels 1..T; backward; global-norm clip; Adam; EMA.
DDM training step = the same with eps_hat = net(x_t, t) and the MSE alone. Sampling step = one
eps_hat for the batch (CDM: forward and input gradient; DDM: forward), without dropout. Runs on
"device" ("cpu" or "cuda"), waiting for the GPU at the end of each step, in "precision" ("f32",
"f64", or "bf16": the network under bfloat16 autocast, the cumsum head and losses in f32, as the
Rust side does). Prints one JSON line with median milliseconds and the FLOPs of one step of each
kind by torch.utils.flop_counter; with "best", also the times of PyTorch's best eager setting
(bf16 autocast and channels-last). Usage: python3 reference.py '{"backbone": "mlp", ...}'
"""
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mlp(nn.Module):
    """src/nets/mlp.rs: x -> SiLU(W x) -> blocks x (h + SiLU(W h)) -> head."""

    def __init__(self, dim, hidden, blocks, classes):
        super().__init__()
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(blocks))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = F.silu(self.input(x.flatten(1)))
        for block in self.blocks:
            h = h + F.silu(block(h))
        return self.head(h)


def timestep_embedding(t, T, dim):
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float64, device=t.device) * (-math.log(10000.0) / half))
    args = (t.double() * (1000.0 / T))[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], 1).float()


class ResBlock(nn.Module):
    """src/nets/blocks.rs ResBlock: GN-SiLU-conv, + embedding, GN-SiLU-dropout-conv, skip."""

    def __init__(self, c_in, c_out, groups, emb_dim, dropout=0.0):
        super().__init__()
        self.dropout = dropout
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.embed = nn.Linear(emb_dim, c_out) if emb_dim else None
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.embed is not None and emb is not None:
            h = h + self.embed(emb)[:, :, None, None]
        h = self.conv2(F.dropout(F.silu(self.norm2(h)), self.dropout, self.training))
        return (self.skip(x) if self.skip is not None else x) + h


class Attention(nn.Module):
    """src/nets/blocks.rs Attention: single-head self-attention over pixels, residual."""

    def __init__(self, c, groups):
        super().__init__()
        self.norm, self.qkv, self.proj = nn.GroupNorm(groups, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), -1)
        return x + self.proj((v @ weights.transpose(1, 2)).reshape(b, c, h, w))


class ConvNet(nn.Module):
    """src/nets/convnet.rs: conv -> stages of res blocks (strided conv between stages) -> SiLU ->
    conv(C->2C) -> pixel sum -> linear."""

    def __init__(self, channels_in, channels, mult, blocks, groups, classes):
        super().__init__()
        self.input = nn.Conv2d(channels_in, channels, 3, padding=1)
        self.stages, self.downs, c = nn.ModuleList(), nn.ModuleList(), channels
        for i, m in enumerate(mult):
            stage = nn.ModuleList()
            for _ in range(blocks):
                stage.append(ResBlock(c, m * channels, groups, None))
                c = m * channels
            self.stages.append(stage)
            last = i + 1 == len(mult)
            self.downs.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.head_conv = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.head = nn.Linear(2 * c, classes)

    def forward(self, x):
        h = self.input(x)
        for stage, down in zip(self.stages, self.downs):
            for block in stage:
                h = block(h, None)
            h = down(h)
        return self.head(self.head_conv(F.silu(h)).sum((2, 3)))


class Unet(nn.Module):
    """src/nets/unet.rs: encoder, middle, decoder with skips; attention after each block at the
    resolutions in `attention` and always in the middle."""

    def __init__(self, c_in, size, ch, mult, res_blocks, groups, head_classes, attention=(), dropout=0.0,
                 head_width=0):
        super().__init__()
        self.timed = head_classes is None
        emb = 4 * ch if self.timed else None
        self.t1, self.t2 = (nn.Linear(ch, 4 * ch), nn.Linear(4 * ch, 4 * ch)) if self.timed else (None, None)
        self.ch = ch
        self.input = nn.Conv2d(c_in, ch, 3, padding=1)
        skips, c, res = [ch], ch, size

        def attn(c):
            return Attention(c, groups) if res in attention else nn.Identity()

        self.down = nn.ModuleList()
        for i, m in enumerate(mult):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(res_blocks):
                blocks.append(ResBlock(c, m * ch, groups, emb, dropout))
                c = m * ch
                attns.append(attn(c))
                skips.append(c)
            sample = nn.Conv2d(c, c, 3, stride=2, padding=1) if i + 1 < len(mult) else None
            if sample is not None:
                skips.append(c)
                res //= 2
            self.down.append(nn.ModuleList([blocks, attns] + ([sample] if sample is not None else [])))
        self.mid1, self.mid_attn = ResBlock(c, c, groups, emb, dropout), Attention(c, groups)
        self.mid2 = ResBlock(c, c, groups, emb, dropout)
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mult))):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(res_blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), m * ch, groups, emb, dropout))
                c = m * ch
                attns.append(attn(c))
            sample = nn.Conv2d(c, c, 3, padding=1) if i > 0 else None
            if sample is not None:
                res *= 2
            self.up.append(nn.ModuleList([blocks, attns] + ([sample] if sample is not None else [])))
        self.out_norm = nn.GroupNorm(groups, c)
        if self.timed:
            self.out_conv = nn.Conv2d(c, c_in, 3, padding=1)
        else:
            width = head_width or 2 * c
            self.out_conv, self.head = nn.Conv2d(c, width, 3, padding=1), nn.Linear(width, head_classes)

    def forward(self, x, t=None):
        emb = None
        if self.timed:
            emb = F.silu(self.t2(F.silu(self.t1(timestep_embedding(t, self.T, self.ch)))))
        h = self.input(x)
        hs = [h]
        for level in self.down:
            for block, attn in zip(level[0], level[1]):
                h = attn(block(h, emb))
                hs.append(h)
            if len(level) > 2:
                h = level[2](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            for block, attn in zip(level[0], level[1]):
                h = attn(block(torch.cat([h, hs.pop()], 1), emb))
            if len(level) > 2:
                h = level[2](F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.out_conv(F.silu(self.out_norm(h)))
        return h if self.timed else self.head(h.mean((2, 3)))


def linear_alpha_bar(T):
    betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=torch.float64).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0), torch.zeros(1, dtype=torch.float64)])


def build(cfg, device, dtype, channels_last):
    """The network of `cfg` on `device` in `dtype`, seeded alike for every setting."""
    torch.manual_seed(0)
    T, shape = cfg["timesteps"], cfg["shape"]
    classes = T + 2
    ddm = cfg.get("model", "cdm") == "ddm"
    if cfg["backbone"] == "mlp":
        net = Mlp(math.prod(shape), cfg["hidden"], cfg["blocks"], classes)
    elif cfg["backbone"] == "unet":
        net = Unet(shape[0], shape[1], cfg["channels"], cfg["mult"], cfg["blocks"], cfg["groups"],
                   None if ddm else classes, cfg.get("attention", []), cfg.get("dropout", 0.0),
                   cfg.get("head_width", 0))
        net.T = T
    else:
        net = ConvNet(shape[0], cfg["channels"], cfg["mult"], cfg["blocks"], cfg["groups"], classes)
    net.to(device=device, dtype=dtype)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def steps(cfg, device, precision, channels_last):
    """The training step and the sampling step as functions of the step number."""
    dtype = torch.float64 if precision == "f64" else torch.float32
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    net = build(cfg, device, dtype, channels_last and len(cfg["shape"]) == 3)
    T, batch, shape = cfg["timesteps"], cfg["batch"], cfg["shape"]
    classes = T + 2
    ddm = cfg.get("model", "cdm") == "ddm"
    memory = torch.channels_last if channels_last and len(shape) == 3 else torch.contiguous_format
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    abar = linear_alpha_bar(T).to(device=device, dtype=dtype)

    def eps_hat(x_t, t, train):
        """The model's noise prediction, and the logits for a CDM: the network under autocast,
        its output and all after it in the data's precision."""
        if ddm:
            with autocast():
                return net(x_t, t).to(dtype), None
        x_t = x_t.detach().requires_grad_(True)
        with autocast():
            # A view, not the leaf itself: FlopCounterMode's module tracker hooks the inputs'
            # autograd nodes and refuses a leaf inside autograd.grad. Free (no copy).
            h = net(x_t.view_as(x_t))
        logits = h.to(dtype).cumsum(1)
        f = logits[:, -1] - logits.gather(1, t[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(f.sum(), x_t, create_graph=train)
        a = abar[t].view(-1, *[1] * len(shape))
        return (1 - a).sqrt() * (grad + x_t), logits

    def train_step():
        net.train()
        x0 = ((torch.rand(batch, *shape, device=device, dtype=dtype) - 0.5) * cfg["width"]).contiguous(
            memory_format=memory)
        u = torch.rand(()).item()
        first, count = (1, T) if ddm else (0, classes)
        t = first + ((torch.arange(batch, device=device) + u) / batch * count).long().clamp(max=count - 1)
        eps = torch.randn_like(x0)
        a = abar[t].view(-1, *[1] * len(shape))
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred, logits = eps_hat(x_t, t, True)
        err = ((pred - eps) ** 2).flatten(1).sum(1)
        if ddm:
            loss = err.mean()
        else:
            inside = ((t > 0) & (t < classes - 1)).to(dtype)
            loss = cfg["ce_weight"] * F.cross_entropy(logits, t) + (err * inside).sum() / inside.sum().clamp(min=1)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, net.parameters()):
                e.mul_(0.999).add_(p, alpha=0.001)
        loss.item()
        return x_t

    def sample_step(x_t):
        net.eval()
        with torch.no_grad():
            level = torch.full((batch,), T // 2, device=device)
            with torch.enable_grad():
                out, _ = eps_hat(x_t, level, False)
            out.sum().item()

    return train_step, sample_step, net


def time_steps(cfg, device, precision, channels_last):
    """Median milliseconds of a training step and a sampling step."""
    train_step, sample_step, net = steps(cfg, device, precision, channels_last)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    train_times, sample_times = [], []
    for step in range(cfg["warmup"] + cfg["steps"]):
        start = time.perf_counter()
        x_t = train_step()
        synchronize()
        if step >= cfg["warmup"]:
            train_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        sample_step(x_t)
        synchronize()
        if step >= cfg["warmup"]:
            sample_times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in net.parameters())
    return 1000 * statistics.median(train_times), 1000 * statistics.median(sample_times), params


def count_flops(cfg, device, precision):
    """FLOPs of one training step and one sampling step by PyTorch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    train_step, sample_step, _ = steps(cfg, device, precision, False)
    with FlopCounterMode(display=False) as counter:
        x_t = train_step()
    train = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        sample_step(x_t)
    return train, counter.get_total_flops()


def main():
    cfg = json.loads(sys.argv[1])
    device = torch.device(cfg.get("device", "cpu"))
    precision = cfg.get("precision", "f32")
    train_ms, sample_ms, params = time_steps(cfg, device, precision, False)
    train_flops, sample_flops = count_flops(cfg, device, precision)
    report = {
        "median_ms": train_ms,
        "sample_ms": sample_ms,
        "precision": precision,
        "train_flops": train_flops,
        "sample_flops": sample_flops,
        "threads": torch.get_num_threads(),
        "params": params,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    if cfg.get("best"):
        report["best_median_ms"], report["best_sample_ms"], _ = time_steps(cfg, device, "bf16", True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
