"""Image completion: a conditional VAE against a deterministic regressor of the same size.

Doersch's tutorial (2016, https://arxiv.org/abs/1606.05908, sec. 4) motivates the CVAE with
this task: given part of a digit, predict the rest. The missing part is ambiguous (the top
of a 7 is also the top of a 9), so p(x_missing | x_observed) is multimodal. A regressor
trained to minimise the expected loss predicts its *mean*, a blur of every possibility;
the CVAE samples one possibility at a time (through z), and the spread of its samples
shows where the ambiguity is.

Both models are trained on the same task, data, mask, likelihood (Bernoulli, scored on the
missing pixels only), optimiser and number of steps, and share the same generative
networks: the regressor is the CVAE's generative path with z taken out,

    regressor:  x_mis_hat = sigmoid(decoder(h(x_obs)))
    CVAE:       z ~ p(z | x_obs),  x_mis ~ Bernoulli(sigmoid(decoder([z, h(x_obs)])))

with h and decoder of the same ``--hidden`` widths. The script writes a figure (observed
input, truth, regressor output, CVAE samples of E[x | z, x_obs], and the per-pixel variance
of the CVAE's samples) and prints both test log-likelihoods of the missing part:
the regressor's log p(x_mis | x_obs) is exact (it is a Bernoulli), the CVAE's is
importance-sampled.

Usage::

    python benchmarks/completion.py --out docs/images/completion.png             # digits, offline
    python benchmarks/completion.py --mnist-dir ../shared/data/mnist --mask center
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]


class Regressor(nn.Module):
    """The CVAE's generative path without z: h(x_obs) -> decoder -> Bernoulli logits."""

    def __init__(self, cvae: nn.Module):
        super().__init__()
        from aevb.models.networks import DECODERS, ENCODERS

        config, cc = cvae.config, cvae.cvae_config
        event = tuple(config.input_shape)
        self.register_buffer("observed", cvae.observed.clone(), persistent=False)
        self.context_net = ENCODERS[config.arch](
            event, tuple(config.hidden), cc.context_dim, config.activation
        )
        self.decoder = DECODERS[config.arch](
            event,
            tuple(config.hidden),
            cc.context_dim,
            config.activation,
            cvae.likelihood.param_shape,
        )
        self.likelihood = cvae.likelihood

    def forward(self, x: Tensor) -> Tensor:
        """Likelihood parameters ``[B, *param_shape]`` from the observed part of ``x``."""
        return self.decoder(self.context_net(x * self.observed.to(x.dtype)))

    def log_prob_missing(self, x: Tensor) -> Tensor:
        """log p(x_mis | x_obs) ``[B]`` in nats: the missing pixels under the prediction."""
        return self.likelihood.log_prob_where(x, self(x), (~self.observed).to(x.dtype))

    @torch.no_grad()
    def complete(self, x: Tensor) -> Tensor:
        """The prediction E[x_mis | x_obs], with the observed pixels kept as given."""
        return torch.where(self.observed, x, self.likelihood.mean(self(x)))


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_regressor(reg: Regressor, data, steps: int, batch_size: int, lr: float, seed: int):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(reg.parameters(), lr=lr)
    step, epoch = 0, 0
    while step < steps:
        for x, _ in data.train_batches(batch_size, seed, epoch):
            loss = -reg.log_prob_missing(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
        epoch += 1


def figure(rows: dict[str, Tensor], path: Path, samples: int, title: str) -> None:
    """One picture: a column per panel (a row per test image), titles above the columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from aevb.figures import image_grid

    def rgb(imgs: Tensor) -> np.ndarray:
        return np.repeat(image_grid(imgs, 1), 3, -1) if imgs.shape[1] == 1 else image_grid(imgs, 1)

    panels = [("observed\n(missing: blue)", rgb(rows["observed"])), ("truth", rgb(rows["truth"]))]
    panels += [("regressor", rgb(rows["regressor"]))]
    panels += [(f"CVAE\nsample {i + 1}", rgb(rows["cvae"][i])) for i in range(samples)]
    var = rows["variance"].mean(1, keepdim=True)  # over channels: [n, 1, H, W]
    heat = image_grid(var / max(float(var.max()), 1e-12), 1)[..., 0]
    h, w = rows["truth"].shape[-2:]
    pad_r = np.arange(heat.shape[0]) % (h + 1) == 0
    pad_c = np.arange(heat.shape[1]) % (w + 1) == 0
    coloured = plt.get_cmap("magma")(heat)[..., :3]
    coloured[pad_r] = 1.0
    coloured[:, pad_c] = 1.0
    panels.append(("CVAE per-pixel\nvariance", coloured))
    gap = np.ones((panels[0][1].shape[0], 2, 3))
    picture = np.concatenate([p for _, img in panels for p in (img, gap)][:-1], axis=1)
    scale = 5.0 / picture.shape[0]  # inches per pixel: the columns 5 inches tall
    width_in = max(7.0, picture.shape[1] * scale)
    fig, ax = plt.subplots(figsize=(width_in, width_in * picture.shape[0] / picture.shape[1] + 1.0))
    ax.imshow(picture, interpolation="nearest")
    ax.set_axis_off()
    x = 0
    for name, img in panels:
        ax.text(x + img.shape[1] / 2, -1, name, ha="center", va="bottom", fontsize=7)
        x += img.shape[1] + gap.shape[1]
    ax.set_title(title, fontsize=9, pad=28)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist-dir", help="use the 8-bit MNIST test split in this IDX folder")
    p.add_argument("--mask", default="center", choices=["top", "left", "center", "random"])
    p.add_argument(
        "--beta-warmup-steps",
        type=int,
        default=1500,
        help="the CVAE's KL weight rises linearly from 0 to 1 over these steps (Bowman et al. "
        "2016), so that its decoder learns to use z; 0 trains the plain ELBO throughout",
    )
    p.add_argument("--hidden", default="256,256")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, default=8, help="test images in the figure")
    p.add_argument("--samples", type=int, default=6, help="CVAE samples shown per image")
    p.add_argument("--k", type=int, default=500, help="importance samples for the CVAE")
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "completion.png"))
    args = p.parse_args()

    import numpy as np

    import aevb

    with tempfile.TemporaryDirectory() as tmp:
        dataset = "digits"
        if args.mnist_dir:
            from aevb.data.idx import parse_idx

            raw = (Path(args.mnist_dir) / "t10k-images-idx3-ubyte").read_bytes()
            images = parse_idx(raw, "t10k images")
            dataset = str(Path(tmp) / "mnist.npz")
            np.savez(dataset, train=images[:8000], valid=images[8000:9000], test=images[9000:])
        fields = dict(
            dataset=dataset,
            model="cvae",
            condition="mask",
            mask=args.mask,
            hidden=tuple(int(h) for h in args.hidden.split(",")),
            latent_dim=args.latent_dim,
            likelihood="bernoulli",
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            figures=False,
        )
        if args.beta_warmup_steps > 0:
            fields.update(beta_schedule="linear", beta_warmup_steps=args.beta_warmup_steps)
        config = aevb.RunConfig().replace(**fields)
        t0 = time.perf_counter()
        cvae = aevb.train(config, Path(tmp) / "cvae", progress=False).model.eval()
        t_cvae = time.perf_counter() - t0
        data = aevb.load_dataset(config.data)
        reg = Regressor(cvae)
        t0 = time.perf_counter()
        train_regressor(reg, data, args.steps, args.batch_size, args.lr, args.seed)
        t_reg = time.perf_counter() - t0
        reg.eval()

        x = data.tensor("test")
        report = aevb.evaluate(cvae, data, "test", k=args.k)
        with torch.no_grad():
            reg_ll = reg.log_prob_missing(x)
        generative = count(cvae.context_net) + count(cvae.decoder)
        print(
            f"data: {dataset if not args.mnist_dir else 'MNIST test split (8,000 train)'}, "
            f"mask {args.mask}: {cvae.num_scored_dims()} missing pixels of "
            f"{math.prod(x.shape[1:])}; {args.steps} steps of batch {args.batch_size} each"
        )
        print(
            f"generative networks: CVAE {generative:,} parameters (h and decoder), "
            f"regressor {count(reg):,}; training {t_cvae:.0f} s and {t_reg:.0f} s"
        )
        print(
            f"test log p(x_mis | x_obs), nats: CVAE (K = {args.k}) "
            f"{report['log_px_iw']:.3f} ± {report['log_px_iw_se']:.3f} (rate {report['rate']:.2f} "
            f"nats, active units {report['active_units']}); regressor "
            f"{float(reg_ll.mean()):.3f} ± {float(reg_ll.std() / math.sqrt(len(reg_ll))):.3f}"
        )

        sel = x[: args.rows]
        g = torch.Generator().manual_seed(args.seed)
        many = cvae.complete(sel, 64, mean=True, generator=g)  # E[x | z, x_obs], z ~ p(z|x_obs)
        tint = torch.tensor([0.35, 0.55, 0.95]).view(1, 3, 1, 1)  # blue where missing
        hole = (~cvae.observed).any(0)[None, None]  # [1, 1, H, W]
        observed = torch.where(hole, tint, sel.expand(-1, 3, -1, -1))
        rows = {
            "observed": observed,
            "truth": sel,
            "regressor": reg.complete(sel),
            "cvae": many[: args.samples],
            "variance": many.var(0),
        }
        title = (
            f"test digits completed from their {args.mask} part: the regressor gives the mean "
            "(a blur); each CVAE sample is E[x | z, x_obs], z ~ p(z | x_obs)"
        )
        figure(rows, Path(args.out), args.samples, title)
        print(Path(args.out))


if __name__ == "__main__":
    main()
