"""The ``aevb`` command line: thin argument parsing over the Python API.

Every field of ModelConfig, DataConfig and TrainConfig is a ``train`` flag spelled with
dashes; values are type-checked by :mod:`aevb.config`. Errors a user can cause print one
line (``aevb: error: ...``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import RunConfig, all_fields, coerce
from .errors import AevbError, ConfigError, DataError

EXIT_ERROR = 1
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line, with the valid options for unknown ones."""

    valid_hint: str = ""

    def error(self, message: str) -> None:  # type: ignore[override]
        valid = self.valid_hint or ", ".join(
            o for o in self._option_string_actions if o.startswith("--")
        )
        hint = f"; valid options: {valid}" if valid and "unrecognized" in message else ""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}{hint}\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        # A subcommand's parser would hand unknown options up to `aevb`, which cannot list
        # the subcommand's valid ones: report them here, where the options are known.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _config_flags() -> list[str]:
    return ["--" + name.replace("_", "-") for name in all_fields()]


def build_parser() -> Parser:
    p = Parser(prog="aevb", description="Train, evaluate and use variational autoencoders.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a VAE (or continue one with --resume)",
        description="Train a VAE. Every config field is a flag; the last line printed is the run directory.",
        allow_abbrev=False,
    )
    t.valid_hint = ", ".join(
        ["--config", "--out", "--resume", "--no-progress", "--nproc", *_config_flags()]
    )
    t.add_argument(
        "--config", metavar="FILE.json", help="start from this config (partial configs are fine)"
    )
    t.add_argument(
        "--out", metavar="RUN_DIR", help="run directory (default runs/<dataset>-<timestamp>)"
    )
    t.add_argument("--resume", metavar="RUN_DIR", help="continue this run in place")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train in N processes on this machine (torchrun + DistributedDataParallel; "
        "one GPU each on CUDA); --batch-size stays the global batch",
    )
    groups = {s: t.add_argument_group(f"{s} config") for s in ("model", "data", "train")}
    for name, (section, f) in all_fields().items():
        flag = "--" + name.replace("_", "-")
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "") + (f" {{{', '.join(choices)}}}" if choices else "")
        help_text += f" (default: {f.default})".replace("%", "%%")
        is_bool = f.type in (bool, "bool")
        groups[section].add_argument(
            flag,
            dest=f"cfg_{name}",
            default=argparse.SUPPRESS,
            metavar="" if is_bool else "VALUE",
            nargs="?" if is_bool else None,
            const="true" if is_bool else None,
            help=help_text,
        )

    e = sub.add_parser(
        "evaluate",
        help="importance-sampled log p(x), neg-ELBO, rate, distortion on a whole split",
        description="Score every example of a split once: log p(x) by importance sampling with K "
        "samples (Burda et al. 2015), the ELBO and its gap, rate (KL) and distortion (reconstruction "
        "NLL), per-dimension KL, active units and bits per dimension; each mean with a standard error.",
    )
    _run_arg(e)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument(
        "--k", type=int, default=100, help="importance samples per example (5000 for papers)"
    )
    e.add_argument(
        "--naive",
        type=int,
        default=0,
        metavar="N",
        help="also the naive estimate from N prior samples (shows why importance sampling is needed)",
    )
    e.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="most (example, sample) pairs decoded at once; bounds memory, not results "
        "(default 2048 on CPU, 262144 on GPU)",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--report", metavar="FILE.md", help="also write a Markdown report")
    e.add_argument("--batch-size", type=int, default=500)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _dataset_arg(e)

    s = sub.add_parser("sample", help="generate new data by sampling the prior")
    _run_arg(s)
    s.add_argument("-n", type=int, default=64, help="number of samples")
    s.add_argument("--temperature", type=float, default=1.0, help="z ~ N(0, T^2 I)")
    s.add_argument(
        "--mean", action="store_true", help="show E[x|z] instead of a draw of x ~ p(x|z)"
    )
    s.add_argument("--seed", type=int, default=0)
    _out_arg(s, "FILE.png", "also writes FILE.npy beside it (default RUN/figures/sample.png)")

    r = sub.add_parser("reconstruct", help="originals above their reconstructions")
    _run_arg(r)
    r.add_argument("--split", default="test", choices=["train", "valid", "test"])
    r.add_argument("-n", type=int, default=16)
    _dataset_arg(r)
    _out_arg(r, "FILE.png", "(default RUN/figures/reconstruct.png)")

    i = sub.add_parser("interpolate", help="decode paths between latent means of test examples")
    _run_arg(i)
    i.add_argument("--steps", type=int, default=10, help="points per path, endpoints included")
    i.add_argument("--pairs", type=int, default=5, help="number of paths (rows)")
    i.add_argument("--slerp", action="store_true", help="spherical instead of linear interpolation")
    i.add_argument("--split", default="test", choices=["train", "valid", "test"])
    _out_arg(i, "FILE.png", "(default RUN/figures/interpolate.png)")

    m = sub.add_parser("manifold", help="decode a grid z = Phi^-1(u) (2-D latents only)")
    _run_arg(m)
    m.add_argument("--grid", type=int, default=20, help="grid points per axis")
    _out_arg(m, "FILE.png", "(default RUN/figures/manifold.png)")

    b = sub.add_parser("embed", help="write the latent means of a split")
    _run_arg(b)
    b.add_argument("--split", default="test", choices=["train", "valid", "test"])
    _dataset_arg(b)
    b.add_argument("--out", required=True, metavar="FILE.npy|FILE.csv")

    f = sub.add_parser("info", help="a run's config and final metrics")
    _run_arg(f)
    f.add_argument("--json", action="store_true")

    sub.add_parser("datasets", help="list the named datasets")

    # `aevb serve`: the latent-space explorer; its options live in aevb.serve.command.
    from .serve import add_arguments as add_serve_arguments

    add_serve_arguments(
        sub.add_parser(
            "serve",
            help="explore a run's latent space in the browser",
            description="Serve a local page that maps, walks and decodes a run's latent space.",
        )
    )
    return p


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `aevb train`")


def _out_arg(p: argparse.ArgumentParser, metavar: str, help: str) -> None:
    p.add_argument("--out", metavar=metavar, help=help)


def _dataset_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", metavar="NAME|PATH", help="use other data than the run's (same shape)"
    )


# --- commands -------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import is_main
    from .train import resume, train

    if args.nproc is not None and args.nproc != 1:
        return _launch_train(args)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    if args.resume:
        if args.config:
            raise ConfigError("--config cannot be combined with --resume (the run has its config)")
        section_of = {n: s for n, (s, _) in all_fields().items()}
        fixed = [n for n in overrides if section_of[n] != "train"]
        if fixed:
            raise ConfigError(
                f"cannot change {', '.join('--' + n.replace('_', '-') for n in fixed)} when resuming; "
                "only training options (--steps, --epochs, --lr, ...) may change"
            )
        if args.out and Path(args.out) != Path(args.resume):
            raise ConfigError("--resume continues the run in place; drop --out")
        steps = overrides.pop("steps", None)
        epochs = overrides.pop("epochs", None)
        typed = {k: coerce(_section_cls("train"), k, v) for k, v in overrides.items()}
        result = resume(
            args.resume,
            steps=coerce(_section_cls("train"), "steps", steps) if steps is not None else None,
            epochs=coerce(_section_cls("train"), "epochs", epochs) if epochs is not None else None,
            progress=not args.no_progress,
            **typed,
        )
    else:
        config = _train_config(args, overrides)
        result = train(config, args.out, progress=not args.no_progress)
    if is_main():  # under torchrun, one summary and one run directory
        _print_summary(result.metrics)
        print(result.run_dir)
    return 0


def _train_config(args: argparse.Namespace, overrides: dict[str, Any]) -> RunConfig:
    config = RunConfig()
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        config = RunConfig.from_json(path.read_text())
    return config.replace(**overrides)


def _launch_train(args: argparse.Namespace) -> int:
    """``aevb train --nproc N ...``: ``aevb train ...`` in N processes under torchrun."""
    from . import distributed
    from .train import default_run_dir

    if args.nproc < 1:
        raise ConfigError("--nproc must be >= 1")
    if distributed.launched_by_torchrun():
        raise ConfigError("--nproc starts torchrun itself; drop it when launching with torchrun")
    argv = _without_option(args.argv, "--nproc")
    run = args.resume or args.out
    if args.resume:
        ckpt.load_config(args.resume)  # a missing or broken run fails here, once
    else:  # a bad flag fails here, once; every rank gets the same directory
        overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
        config = _train_config(args, overrides)
        distributed.check_batch_size(config.train.batch_size, args.nproc)
        if run is None:
            run = str(default_run_dir(config))
            argv += ["--out", run]
    code = distributed.launch(args.nproc, argv)
    if code != 0:
        hint = ""
        if (Path(run) / ckpt.STATE_FILE).is_file():
            hint = (
                f"; continue from its last checkpoint with "
                f"`aevb train --resume {run} --nproc {args.nproc}`"
            )
        print(
            f"aevb train: error: the {args.nproc}-process run stopped (torchrun exit status "
            f"{code}; the failing rank's error is above){hint}",
            file=sys.stderr,
        )
    return code


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` less ``name VALUE`` and ``name=VALUE``."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def _section_cls(section: str) -> type:
    from .config import SECTIONS

    return SECTIONS[section]


def _print_summary(m: dict[str, Any]) -> None:
    if not m:
        return
    print(
        f"step {m['step']}  epoch {m['epoch']}  valid neg-ELBO {m['valid_neg_elbo']:.3f} nats/example "
        f"(recon NLL {m['valid_recon_nll']:.3f}, KL {m['valid_kl']:.3f})  wall {m['wall_time_s']:.1f}s"
    )
    if m.get("best_epoch") is not None:
        why = "stopped early; " if m.get("stopped_early") else ""
        print(
            f"{why}model.safetensors holds the best epoch, {m['best_epoch']} "
            f"(valid neg-ELBO {m['best_valid_neg_elbo']:.3f} nats/example)"
        )


def _load(run: str, device: str = "cpu"):
    from .train import resolve_device

    return ckpt.load_model(run, device=resolve_device(device))


def _run_dataset(run: str, dataset: str | None = None):
    """The run's dataset (as recorded in its config) or another one of the same shape."""
    from dataclasses import replace

    from .data import load_dataset

    config = ckpt.load_config(run)
    data_config = config.data if dataset is None else replace(config.data, dataset=dataset)
    ds = load_dataset(data_config)
    if tuple(ds.info.shape) != tuple(config.model.input_shape):
        raise DataError(
            f"{ds.info.name} has examples of shape {tuple(ds.info.shape)} but the model of {run} "
            f"expects {tuple(config.model.input_shape)}"
        )
    return ds


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, markdown_report

    for name in ("k", "chunk_size", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if args.naive < 0:
        raise ConfigError("--naive must be >= 0")
    model = _load(args.run, args.device)
    ds = _run_dataset(args.run, args.dataset)
    res = evaluate(
        model,
        ds,
        args.split,
        args.k,
        chunk_size=args.chunk_size,
        naive=args.naive,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.json,
    )
    res["run"] = str(args.run)
    if args.report:
        ckpt.atomic_write_text(args.report, markdown_report(res, f"aevb evaluation of {args.run}"))
    if args.json:
        print(json.dumps(res))
        return 0
    print(
        f"{args.split} split, {res['n_examples']} examples, K = {res['k']}; nats per example (± standard error):"
    )
    rows = [
        ("log p(x) (importance-sampled)", "log_px_iw"),
        ("log p(x) (naive, prior)", "log_px_naive"),
        ("neg-ELBO", "neg_elbo"),
        ("gap log p(x) - ELBO", "gap"),
        ("KL (rate)", "rate"),
        ("recon NLL (distortion)", "distortion"),
        ("bits per dimension", "bits_per_dim"),
    ]
    for label, key in rows:
        if key in res:
            print(f"  {label:30s} {res[key]:11.4f} ± {res[key + '_se']:.4f}")
    print(f"  active units                   {res['active_units']} of {len(res['kl_per_dim'])}")
    return 0


def _default_out(run: str, out: str | None, name: str) -> Path:
    return Path(out) if out else Path(run) / ckpt.FIGURES_DIR / name


def _value_range(run: str) -> tuple[float, float]:
    vr = ckpt.load_dataset_info(run).get("value_range", [0.0, 1.0])
    return float(vr[0]), float(vr[1])


def cmd_sample(args: argparse.Namespace) -> int:
    from .figures import plot_samples

    if args.n < 1:
        raise ConfigError("-n must be >= 1")
    if not math.isfinite(args.temperature):
        raise ConfigError(f"--temperature must be a finite number, got {args.temperature}")
    model = _load(args.run)
    gen = torch.Generator().manual_seed(args.seed)
    x = model.sample(args.n, temperature=args.temperature, mean=args.mean, generator=gen)
    out = _default_out(args.run, args.out, "sample.png")
    _save_npy(out.with_suffix(".npy"), x.numpy())
    plot_samples(x, out, _value_range(args.run), title=f"samples, temperature {args.temperature:g}")
    print(out)
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .figures import plot_reconstructions

    if args.n < 1:
        raise ConfigError("-n must be >= 1")
    model = _load(args.run)
    ds = _run_dataset(args.run, args.dataset)
    x = ds.head(args.split, args.n)
    out = _default_out(args.run, args.out, "reconstruct.png")
    x_hat = model.reconstruct(x)
    _save_npy(out.with_suffix(".npy"), x_hat.numpy())
    plot_reconstructions(x, x_hat, out, _value_range(args.run))
    print(out)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from .figures import plot_interpolation

    if args.steps < 2:
        raise ConfigError("--steps must be >= 2")
    if args.pairs < 1:
        raise ConfigError("--pairs must be >= 1")
    model = _load(args.run)
    ds = _run_dataset(args.run)
    x = ds.head(args.split, 2 * args.pairs)
    out = _default_out(args.run, args.out, "interpolate.png")
    plot_interpolation(model, x, out, args.steps, args.slerp, _value_range(args.run))
    print(out)
    return 0


def cmd_manifold(args: argparse.Namespace) -> int:
    from .figures import plot_manifold

    model = _load(args.run)
    if model.config.latent_dim != 2:
        raise ConfigError(
            f"the manifold figure needs a 2-D latent space; this model has latent_dim {model.config.latent_dim} "
            "(train with --latent-dim 2)"
        )
    if args.grid < 2:
        raise ConfigError("--grid must be >= 2")
    out = _default_out(args.run, args.out, "manifold.png")
    plot_manifold(model, out, args.grid, _value_range(args.run))
    print(out)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    model = _load(args.run)
    ds = _run_dataset(args.run, args.dataset)
    mu = torch.cat([model.embed(b) for b in ds.eval_batches(args.split, 1000)]).numpy()
    out = Path(args.out)
    if out.suffix == ".npy":
        _save_npy(out, mu)
    elif out.suffix == ".csv":
        labels = ds.labels(args.split)
        header = ",".join(f"z{j + 1}" for j in range(mu.shape[1]))
        rows = mu if labels is None else np.column_stack([mu, labels.numpy()])
        if labels is not None:
            header += ",label"
        import io

        buf = io.StringIO()
        np.savetxt(buf, rows, delimiter=",", header=header, comments="", fmt="%.7g")
        ckpt.atomic_write_text(out, buf.getvalue())
    else:
        raise ConfigError(f"--out must end in .npy or .csv, got {out.name}")
    print(out)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    d = ckpt.read_config_dict(args.run)
    ckpt.load_config(args.run)  # validates
    metrics = ckpt.read_metrics(args.run)
    final = metrics[-1] if metrics else {}
    if args.json:
        print(json.dumps({"config": d, "final_metrics": final}))
        return 0
    print(f"run {args.run}")
    for section in ("model", "data", "train"):
        print(f"[{section}]")
        for k, v in d.get(section, {}).items():
            print(f"  {k} = {v}")
    info = d.get("dataset_info")
    if info:
        print(f"[dataset] {info.get('name')}: shape {info.get('shape')}, sizes {info.get('sizes')}")
    if final:
        print("[final metrics]")
        _print_summary(final)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import DATASETS

    for name, spec in sorted(DATASETS.items()):
        print(f"{name:16s} {spec.description}")
    return 0


def _save_npy(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    ckpt.atomic_write_bytes(path, buf.getvalue())


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import cmd_serve as serve

    return serve(args)


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "sample": cmd_sample,
    "reconstruct": cmd_reconstruct,
    "interpolate": cmd_interpolate,
    "manifold": cmd_manifold,
    "embed": cmd_embed,
    "info": cmd_info,
    "datasets": cmd_datasets,
    "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``aevb`` and ``python -m aevb``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for `train --nproc` to pass on
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except AevbError as e:
        from .distributed import rank_tag  # "" in one process, " on rank R of N" under torchrun

        print(f"aevb {args.command}: error{rank_tag()}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        saved = " (training state saved; continue with --resume)" if args.command == "train" else ""
        print(f"aevb {args.command}: interrupted{saved}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `aevb info RUN | head`: the reader left; nothing to report
        sys.stderr.close()
        return 0
    except OSError as e:
        print(f"aevb {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
