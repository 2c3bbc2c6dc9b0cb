"""Reference values of alpha_bar for tests/schedule.rs, in plain Python floats (f64).

Linear: betas = linspace(1e-4, 0.02, T) * 1000/T (improved DDPM's scaling); cosine: Nichol &
Dhariwal eq. 17 with betas clipped at 0.999; TDR: 1 - (t/(T+1))^2. Run: python3 schedule.py
"""
import math


def linear(T):
    scale = 1000 / T
    lo, hi = scale * 1e-4, scale * 0.02
    out, prod = [1.0], 1.0
    for i in range(T):
        beta = lo + (hi - lo) * (i / (T - 1) if T > 1 else 0.0)
        prod *= 1 - min(beta, 0.999)
        out.append(prod)
    return out + [0.0]


def cosine(T):
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    out, prod = [1.0], 1.0
    for t in range(1, T + 1):
        prod *= 1 - min(1 - f(t / T) / f((t - 1) / T), 0.999)
        out.append(prod)
    return out + [0.0]


def tdr(T):
    return [1.0] + [1 - (t / (T + 1)) ** 2 for t in range(1, T + 1)] + [0.0]


for name, fn in [("linear", linear), ("cosine", cosine), ("tdr", tdr)]:
    for T in (1000, 10):
        ab = fn(T)
        print(name, T, [repr(ab[t]) for t in (1, T // 2, T)])
