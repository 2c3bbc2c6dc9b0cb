"""PyTorch reference for `cdm bench`: the same CDM training step as the Rust code, same sizes.

One step = draw a batch, stratified levels and noise; logits = cumsum(h(x_t)); F = l_{T+1} - l_t;
eps_hat = sqrt(1 - abar_t) (grad_x F + x_t) with create_graph; loss = ce_weight * CE + summed
MSE on levels 1..T; backward; global-norm clip; Adam; EMA. Prints one JSON line with the
median milliseconds per step. Usage: python3 reference.py '{"backbone": "mlp", ...}'
"""
import json
import math
import statistics
import sys
import time

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


class ResBlock(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class ConvNet(nn.Module):
    """src/nets/convnet.rs with one stage: conv -> res blocks -> SiLU -> conv(C->2C) -> pixel sum -> linear."""

    def __init__(self, channels_in, channels, blocks, groups, classes):
        super().__init__()
        self.input = nn.Conv2d(channels_in, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(channels, groups) for _ in range(blocks))
        self.head_conv = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.head = nn.Linear(2 * channels, classes)

    def forward(self, x):
        h = self.input(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.head_conv(F.silu(h)).sum((2, 3)))


def linear_alpha_bar(T):
    betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=torch.float64).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0), torch.zeros(1, dtype=torch.float64)])


def main():
    cfg = json.loads(sys.argv[1])
    torch.manual_seed(0)
    T, batch, shape = cfg["timesteps"], cfg["batch"], cfg["shape"]
    classes = T + 2
    if cfg["backbone"] == "mlp":
        net = Mlp(math.prod(shape), cfg["hidden"], cfg["blocks"], classes)
    else:
        net = ConvNet(shape[0], cfg["channels"], cfg["blocks"], cfg["groups"], classes)
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    abar = linear_alpha_bar(T).float()
    times = []
    for step in range(cfg["warmup"] + cfg["steps"]):
        start = time.perf_counter()
        x0 = (torch.rand(batch, *shape) - 0.5) * cfg["width"]
        u = torch.rand(()).item()
        t = ((torch.arange(batch) + u) / batch * classes).long().clamp(max=classes - 1)
        eps = torch.randn_like(x0)
        a = abar[t].view(-1, *[1] * len(shape))
        x_t = (a.sqrt() * x0 + (1 - a).sqrt() * eps).requires_grad_(True)
        logits = net(x_t).cumsum(1)
        f = logits[:, -1] - logits.gather(1, t[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(f.sum(), x_t, create_graph=True)
        eps_hat = (1 - a).sqrt() * (grad + x_t)
        inside = ((t > 0) & (t < classes - 1)).float()
        mse = (((eps_hat - eps) ** 2).flatten(1).sum(1) * inside).sum() / inside.sum().clamp(min=1)
        loss = cfg["ce_weight"] * F.cross_entropy(logits, t) + mse
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, net.parameters()):
                e.mul_(0.999).add_(p, alpha=0.001)
        loss.item()
        if step >= cfg["warmup"]:
            times.append(time.perf_counter() - start)
    print(json.dumps({"median_ms": 1000 * statistics.median(times), "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
