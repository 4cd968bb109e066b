"""The ``aevb`` command line: thin argument parsing over the Python API.

Every config field is a ``train`` flag (``--latent-dim``, or ``--vae.latent-dim``); values
are type- and range-checked by :mod:`aevb.config`. Errors a user can cause print one line
(``aevb <command>: error: ...``) and exit non-zero; Ctrl-C prints one line and exits 130.
Parsing needs neither torch nor numpy (``--help`` is instant); each command imports what
it uses when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from .config import RunConfig, all_fields, flag, resolve_field, short_names, valid_flags
from .errors import AevbError, CheckpointError, ConfigError, is_out_of_memory

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def int64(text: str) -> int:
    """An integer argument within the 64-bit range torch takes (argparse ``type``)."""
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is out of range; give an integer below 2**63")
    return value


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


CONFIG_MAX_BYTES = 2**20  # a config is a few KB; more is the wrong file (or /dev/zero)
TRAIN_OPTIONS = ("--config", "--out", "--resume", "--no-progress", "--nproc")


def build_parser() -> Parser:
    parser = Parser(prog="aevb", description="Train, evaluate and use variational autoencoders.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    _train_parser(sub)
    _evaluate_parser(sub)
    _sample_parser(sub)
    _reconstruct_parser(sub)
    _interpolate_parser(sub)
    _manifold_parser(sub)
    _traverse_parser(sub)
    _embed_parser(sub)
    _train_prior_parser(sub)
    _classes_parser(sub)
    _complete_parser(sub)
    info_p = sub.add_parser("info", help="a run's status, config and final metrics")
    _run_arg(info_p)
    info_p.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_parser("datasets", help="list the named datasets")
    _serve_parser(sub)
    return parser


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    # The latent-space explorer; its options live in aevb.serve (imports no torch).
    from .serve import add_arguments

    add_arguments(
        sub.add_parser(
            "serve",
            help="explore a run's latent space in the browser",
            description="Serve a local page that maps, walks and decodes a run's latent space.",
        )
    )


def _train_parser(sub: argparse._SubParsersAction) -> None:
    train_p = sub.add_parser(
        "train",
        help="train a model (or continue one with --resume)",
        description="Train a model. Every config field is a flag (--FIELD, or --SECTION.FIELD); "
        "the last line printed is the run directory.",
        allow_abbrev=False,
    )
    train_p.valid_hint = ", ".join([*TRAIN_OPTIONS, valid_flags()])
    train_p.add_argument(
        "--config", metavar="FILE.json", help="start from this config (partial configs are fine)"
    )
    train_p.add_argument(
        "--out", metavar="RUN_DIR", help="run directory (default runs/<dataset>-<timestamp>)"
    )
    train_p.add_argument("--resume", metavar="RUN_DIR", help="continue this run in place")
    train_p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train_p.add_argument(
        "--nproc",
        type=int64,
        metavar="N",
        help="train in N processes on this machine (torchrun + DistributedDataParallel; "
        "one GPU each on CUDA); --batch-size stays the global batch",
    )
    short = short_names()
    groups: dict[str, argparse._ArgumentGroup] = {}
    shared: set[str] = set()  # short flags of fields several sections have, added once
    for qualified, (section, f) in all_fields().items():
        if section not in groups:
            groups[section] = train_p.add_argument_group(f"{section} config")
        choices = f.metadata.get("choices")
        help_text = f.metadata.get("help", "") + (f" {{{', '.join(choices)}}}" if choices else "")
        help_text += f" (default: {f.default})".replace("%", "%%")
        is_bool = f.type in (bool, "bool")
        kwargs = dict(
            default=argparse.SUPPRESS,
            metavar="" if is_bool else "VALUE",
            nargs="?" if is_bool else None,
            const="true" if is_bool else None,
        )
        flags = [f"--{qualified.replace('_', '-')}"]
        if short.get(f.name) == qualified:
            flags.insert(0, "--" + f.name.replace("_", "-"))
        elif f.name not in shared:  # the section in use decides (see RunConfig.replace)
            shared.add(f.name)
            train_p.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f"cfg__{f.name}",
                help=f"{f.metadata.get('help', '')} (for the section in use)",
                **kwargs,
            )
        groups[section].add_argument(*flags, dest=f"cfg__{qualified}", help=help_text, **kwargs)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="importance-sampled log p(x), neg-ELBO, rate, distortion on a whole split",
        description="Score every example of a split once: log p(x) by importance sampling with K "
        "samples (Burda et al. 2015), the ELBO and its gap, rate (KL) and distortion (reconstruction "
        "NLL), per-dimension KL, active units and bits per dimension; each mean with a standard error.",
    )
    _run_arg(p)
    _split_arg(p)
    p.add_argument(
        "--k", type=int64, default=100, help="importance samples per example (5000 for papers)"
    )
    p.add_argument(
        "--naive",
        type=int64,
        default=0,
        metavar="N",
        help="also the naive estimate from N prior samples (shows why importance sampling is needed)",
    )
    p.add_argument(
        "--chunk-size",
        type=int64,
        default=None,
        help="most (example, sample) pairs per chunk (a few chunks per CPU thread in "
        "memory); bounds memory, not results "
        "(default 4096 on CPU, 262144 on GPU)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", metavar="FILE.md", help="also write a Markdown report")
    p.add_argument("--batch-size", type=int64, default=500, help="examples per encoder pass")
    p.add_argument("--seed", type=int64, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d = p.add_argument_group("posterior diagnostics")
    d.add_argument(
        "--diagnostics",
        action="store_true",
        help="also the aggregate posterior against the prior (ELBO surgery: KL(q(z) || p(z)) and "
        "the index-code mutual information), class usage, a collapse check, and the figure",
    )
    d.add_argument(
        "--diagnostic-samples",
        type=int,
        default=2000,
        metavar="M",
        help="draws of the aggregate posterior, each scored against every posterior of the split",
    )
    d.add_argument(
        "--collapse-threshold",
        type=float,
        default=0.5,
        metavar="FRACTION",
        help="warn of posterior collapse when fewer than this fraction of latent units are in use",
    )
    d.add_argument(
        "--figure",
        metavar="FILE.png",
        help="where the posterior-against-prior figure goes (default "
        "RUN/figures/posterior_vs_prior.png)",
    )
    _data_args(p)


def _traverse_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "traverse",
        help="decode latent traversals: one unit swept per row, the rest fixed",
        description="One row per latent unit (the top --rows by KL for larger latents): an "
        "example's posterior point (or the prior's origin) with that unit swept over its prior "
        "quantiles (2.5% to 97.5%), or over the classes / codes of a discrete latent.",
    )
    _run_arg(p)
    _split_arg(p)
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--example", type=int, default=0, help="start from this example's posterior point"
    )
    start.add_argument(
        "--origin", action="store_true", help="start from the prior's origin instead"
    )
    p.add_argument("--rows", type=int, default=10, help="most latent units shown (rows)")
    p.add_argument("--steps", type=int, default=9, help="values per unit (columns)")
    _data_args(p)
    _out_arg(p, "traversals")


def _sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate new data by sampling the prior")
    _run_arg(p)
    p.add_argument("-n", type=int64, default=64, help="number of samples")
    p.add_argument("--temperature", type=float, default=1.0, help="sample the prior at T")
    p.add_argument(
        "--mean", action="store_true", help="show E[x|z] instead of a draw of x ~ p(x|z)"
    )
    p.add_argument("--seed", type=int64, default=0)
    p.add_argument(
        "--label",
        type=int,
        metavar="K",
        help="models conditioned on class labels (--model cvae): generate class K (without it, "
        "every class in turn)",
    )
    _out_arg(p, "samples", "also writes FILE.npy beside it")


def _classes_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classes",
        help="one row per class from shared latents (models conditioned on labels)",
        description="Decode the same n latents with every class label: each row is a class, "
        "each column keeps its z (its style).",
    )
    _run_arg(p)
    p.add_argument("-n", type=int, default=8, help="columns (latents shared by every row)")
    p.add_argument("--temperature", type=float, default=1.0, help="sample the prior at T")
    p.add_argument("--mean", action="store_true", help="show E[x|z, y] instead of a draw")
    p.add_argument("--seed", type=int, default=0)
    _out_arg(p, "classes", "also writes FILE.npy ([classes, n, *shape]) beside it")


def _complete_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "complete",
        help="complete images from their observed part (--model cvae --condition mask)",
        description="Keep the part of each input image the model was trained to observe, and "
        "draw n completions of the rest from p(x_missing | x_observed). The figure shows the "
        "observed part, then the completions, one row per input.",
    )
    _run_arg(p)
    p.add_argument(
        "--input",
        required=True,
        metavar="IMAGE|FILE.npy",
        help="a PNG/JPEG image, or a .npy of one image or N images (uint8, or floats as the "
        "model's data)",
    )
    p.add_argument(
        "--mask",
        choices=["top", "left", "center", "random"],
        help="the observed part (default: the one the model was trained with, which is the "
        "only one it can use)",
    )
    p.add_argument("-n", type=int, default=8, help="completions per input image")
    p.add_argument("--temperature", type=float, default=1.0, help="sample p(z|x_obs) at T")
    p.add_argument("--mean", action="store_true", help="E[x_mis|z, x_obs] instead of a draw")
    p.add_argument("--seed", type=int, default=0)
    _out_arg(p, "completions", "also writes FILE.npy ([N, n, *shape]) beside it")


def _reconstruct_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="originals above their reconstructions")
    _run_arg(p)
    _split_arg(p)
    p.add_argument("-n", type=int64, default=16)
    _data_args(p)
    _out_arg(p, "reconstructions", "also writes FILE.npy beside it")


def _interpolate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="decode paths between latents of test examples")
    _run_arg(p)
    p.add_argument("--steps", type=int64, default=10, help="points per path, endpoints included")
    p.add_argument("--pairs", type=int64, default=5, help="number of paths (rows)")
    p.add_argument(
        "--slerp", action="store_true", help="spherical instead of linear (N(0, I) priors)"
    )
    _split_arg(p)
    _data_args(p)
    _out_arg(p, "interpolation")


def _manifold_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifold", help="decode a grid z = Phi^-1(u) (2-D N(0, I) latents only)")
    _run_arg(p)
    p.add_argument("--grid", type=int64, default=20, help="grid points per axis")
    _out_arg(p, "manifold")


def _embed_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="write the posterior summaries (means) of a split")
    _run_arg(p)
    _split_arg(p)
    _data_args(p)
    p.add_argument("--out", required=True, metavar="FILE.npy|FILE.csv")


def _train_prior_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-prior",
        help="fit a trained run's learned prior over its codes (VQ-VAE's PixelCNN)",
        description="The second stage of a VQ-VAE: fit the gated PixelCNN prior to the code "
        "grids of the run's training split, with its own resumable state in RUN/prior/. Run it "
        "again to continue after Ctrl-C, or with more --epochs to train longer. When it ends, "
        "RUN/model.safetensors holds the prior: `aevb sample` draws from it and `aevb evaluate` "
        "scores with it. The last line printed is the run directory.",
    )
    _run_arg(p)
    p.add_argument("--epochs", type=int, help="train up to N epochs in all (default 20)")
    p.add_argument("--steps", type=int, help="train up to N steps in all (overrides --epochs)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, help="code grids per step (default 128)")
    p.add_argument("--seed", type=int, help="seed of the initialisation and data order")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the run's named dataset is now (default: as for the other commands)",
    )


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory written by `aevb train`")


def _split_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])


def _out_arg(p: argparse.ArgumentParser, figure: str, more: str = "") -> None:
    p.add_argument(
        "--out", metavar="FILE.png", help=f"(default RUN/figures/{figure}.png) {more}".strip()
    )


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", metavar="NAME|PATH", help="use other data than the run's (same shape)"
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the named datasets are now (default: the folder recorded at training if "
        "it still exists, else $AEVB_DATA, else ~/.cache/aevb)",
    )


# --- commands -------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import is_main
    from .train import resume, train

    if args.nproc is not None and args.nproc != 1:
        return _launch_train(args)
    overrides = _overrides(args)
    if args.resume is not None:
        if args.config:
            raise ConfigError("--config cannot be combined with --resume (the run has its config)")
        fixed = [k for k in overrides if resolve_field(k)[0] != "train"]
        if fixed:
            raise ConfigError(
                f"cannot change {', '.join(flag(k) for k in fixed)} when resuming; only "
                "training options (--steps, --epochs, --lr, ...) may change"
            )
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise ConfigError("--resume continues the run in place; drop --out")
        if not args.resume:
            raise ConfigError("--resume must name a run directory")
        steps = overrides.pop("train.steps", None)
        epochs = overrides.pop("train.epochs", None)
        from .config import TrainConfig, coerce

        typed = {
            k.split(".", 1)[1]: coerce(TrainConfig, k.split(".", 1)[1], v)
            for k, v in overrides.items()
        }
        result = resume(
            args.resume,
            steps=coerce(TrainConfig, "steps", steps) if steps is not None else None,
            epochs=coerce(TrainConfig, "epochs", epochs) if epochs is not None else None,
            progress=not args.no_progress,
            **typed,
        )
    else:
        if args.out is not None and args.out.strip() in ("", "."):
            raise ConfigError("--out must name a directory for the run (not the current directory)")
        config = _train_config(args, overrides)
        result = train(config, args.out, progress=not args.no_progress)
    if is_main():  # under torchrun, one summary and one run directory
        _print_summary(result.metrics)
        print(result.run_dir)
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{section.field: raw value}`` of the config flags given on the command line."""
    return {k[5:]: v for k, v in vars(args).items() if k.startswith("cfg__")}


def _train_config(args: argparse.Namespace, overrides: dict[str, Any]) -> RunConfig:
    config = RunConfig()
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory; give a JSON file")
        with open(path, "rb") as f:  # a file, or a pipe: --config <(...)
            data = f.read(CONFIG_MAX_BYTES + 1)
        if len(data) > CONFIG_MAX_BYTES:
            raise ConfigError(f"config file {path} is over 1 MB; a config is a small JSON object")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not text (UTF-8 JSON expected)") from None
        config = RunConfig.from_json(text)
    return config.replace(**overrides)


def _launch_train(args: argparse.Namespace) -> int:
    """``aevb train --nproc N ...``: ``aevb train ...`` in N processes under torchrun."""
    from . import distributed, rundir
    from .train import default_run_dir

    if args.nproc < 1:
        raise ConfigError("--nproc must be >= 1")
    if distributed.launched_by_torchrun():
        raise ConfigError("--nproc starts torchrun itself; drop it when launching with torchrun")
    from .tracking import check_config

    argv = _without_option(args.argv, "--nproc")
    run = args.resume or args.out
    if args.resume:
        from . import checkpoint as ckpt

        config = ckpt.load_config(args.resume)  # a missing or broken run fails here, once
        changes = {k: v for k, v in _overrides(args).items() if resolve_field(k)[0] == "train"}
        check_config(config.replace(**changes))  # --tensorboard without the package
        _check_data(config.replace(**changes))
    else:  # a bad flag, folder or data file fails here, once; every rank gets the same directory
        config = _train_config(args, _overrides(args))
        check_config(config)
        distributed.check_batch_size(config.train.batch_size, args.nproc)
        _check_data(config)
        if run is None:
            run = str(default_run_dir(config))
            argv += ["--out", run]
        elif why := rundir.refusal(Path(run), rundir.inspect(Path(run))):
            raise ConfigError(why)
    code = distributed.launch(args.nproc, argv)
    if code == EXIT_INTERRUPTED:
        return code
    if code != 0:
        hint = ""
        if (Path(run) / rundir.STATE_FILE).is_file():
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


def _check_data(config: RunConfig) -> None:
    """What every process checks before training (the data, and the model it needs), checked
    once before starting N processes, so that bad data fails with one line."""
    from .data import check_options_apply, load_dataset
    from .models import build_model
    from .train import resolve_device, resolve_model_config

    resolve_device(config.train.device)
    check_options_apply(config.data)
    dataset = load_dataset(config.data)  # dropped at once: each process loads its own
    model = build_model(resolve_model_config(config, dataset))
    for x, _ in dataset.eval_batches("train", config.train.eval_batch_size):
        model.likelihood.check_data(x)


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


def _print_summary(m: dict[str, Any]) -> None:
    if not m:
        return

    def num(key: str) -> str:
        v = m.get(key)
        return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"

    wall = m.get("wall_time_s", 0)  # a hand-edited metrics.jsonl may hold anything
    wall = f"{wall:.1f}s" if isinstance(wall, (int, float)) else "n/a"
    print(
        f"step {m.get('step')}  epoch {m.get('epoch')}  valid neg-ELBO {num('valid_neg_elbo')} "
        f"nats/example (recon NLL {num('valid_recon_nll')}, KL {num('valid_kl')})  wall {wall}"
    )
    if m.get("best_epoch") is not None:
        why = "stopped early; " if m.get("stopped_early") else ""
        print(
            f"{why}model.safetensors holds the best epoch, {m['best_epoch']} "
            f"(valid neg-ELBO {num('best_valid_neg_elbo')} nats/example)"
        )


def _device(name: str):
    from .train import resolve_device

    return resolve_device(name)


def _positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import runs
    from .evaluate import evaluate, markdown_report
    from .rundir import check_output_file

    _positive(k=args.k, chunk_size=args.chunk_size, batch_size=args.batch_size)
    if args.naive < 0:
        raise ConfigError("--naive must be >= 0")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if args.report:
        check_output_file(args.report, "--report")
    figure = None
    if args.diagnostics:
        _positive(diagnostic_samples=args.diagnostic_samples)
        if not 0 <= args.collapse_threshold <= 1:
            raise ConfigError(
                f"--collapse-threshold must be a fraction in [0, 1], got {args.collapse_threshold}"
            )
        figure = _figure_out(args.run, args.figure, "posterior_vs_prior")
    elif args.figure:
        raise ConfigError("--figure is the diagnostics' figure: add --diagnostics")
    model = runs.load_run_model(args.run, _device(args.device))
    ds = runs.load_run_dataset(args.run, args.dataset, args.data_dir)
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
    if args.diagnostics:
        res["diagnostics"] = _diagnostics(args, model, ds, res, figure)
    res["run"] = str(args.run)
    report = markdown_report(res, f"aevb evaluation of {args.run}")
    if args.report:
        from .checkpoint import atomic_write_text

        atomic_write_text(args.report, report)
    if args.json:
        from .checkpoint import jsonable

        print(json.dumps(jsonable(res)))
    else:
        print(report, end="")
    return 0


def _diagnostics(args: argparse.Namespace, model, ds, res: dict[str, Any], figure: Path) -> dict:
    """ELBO surgery, usage and collapse of the evaluated split, and their figure."""
    import torch

    from .diagnostics import diagnose, rank_units
    from .figures import plot_posterior_vs_prior

    out, sample, prior_z = diagnose(
        model,
        ds,
        args.split,
        res,
        samples=args.diagnostic_samples,
        collapse_threshold=args.collapse_threshold,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.json,
    )
    kl, spread = res.get("kl_per_dim"), res.get("au_variance")
    order = None
    if kl is not None or spread is not None:
        n = len(kl if kl is not None else spread)
        order = rank_units(
            torch.tensor(kl) if kl is not None else None,
            torch.tensor(spread) if spread is not None else torch.zeros(n),
        )
    plot_posterior_vs_prior(sample.z.cpu(), prior_z.cpu(), model.latent, figure, out, order)
    out["figure"] = str(figure)
    return out


def _figure_out(run: str, out: str | None, figure: str, suffixes=(".png",)) -> Path:
    """The output picture: checked before any work; default RUN/figures/<figure>.png."""
    from .figures import FIGURE_NAMES
    from .rundir import FIGURES_DIR, check_output_file

    path = Path(out) if out is not None else Path(run) / FIGURES_DIR / FIGURE_NAMES[figure]
    path = check_output_file(path, "--out", suffixes)
    if figure in ("samples", "reconstructions"):  # FILE.npy is written beside these
        check_output_file(path.with_suffix(".npy"), "--out (its .npy beside)")
    return path


def _value_range(run: str) -> tuple[float, float]:
    from .checkpoint import load_dataset_info

    vr = load_dataset_info(run).get("value_range", [0.0, 1.0])
    try:
        lo, hi = (float(v) for v in vr) if isinstance(vr, list) else (math.nan, math.nan)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise CheckpointError(
            f"{Path(run) / 'config.json'} is corrupt (dataset_info.value_range {vr!r} is not two "
            "numbers); restore the file, or retrain"
        )
    return lo, hi


def cmd_sample(args: argparse.Namespace) -> int:
    _positive(n=args.n)
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ConfigError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    out = _figure_out(args.run, args.out, "samples")
    import torch

    from . import runs
    from .figures import plot_samples

    model = runs.load_run_model(args.run)
    vr = _value_range(args.run)  # a corrupt record fails before anything is written
    y, what = _sample_labels(model, args.label, args.n, args.run)
    gen = torch.Generator().manual_seed(args.seed)
    x = model.sample(args.n, temperature=args.temperature, mean=args.mean, generator=gen, y=y)
    title = f"samples{what}, T = {args.temperature:g}"
    _write_picture_and_array(out, x, lambda: plot_samples(x, out, vr, title))
    print(out)
    return 0


def _class_names(run: str) -> list:
    from .checkpoint import load_dataset_info

    return list(load_dataset_info(run).get("transform", {}).get("classes") or [])


def _sample_labels(model, label: int | None, n: int, run: str):
    """The labels ``[n]`` to sample (``--label``) and the figure's words for them."""
    import torch

    if model.conditions_on != "labels":
        if label is not None:
            other = (
                "it completes images: use `aevb complete`"
                if model.conditions_on == "observed"
                else "it samples without labels: drop --label"
            )
            raise ConfigError(
                f"--label applies to models conditioned on class labels (--model cvae); {other}"
            )
        return None, ""
    names = _class_names(run)
    if label is None:
        return None, f", classes 0..{model.num_classes - 1} in turn"
    if not 0 <= label < model.num_classes:
        raise ConfigError(f"--label must be a class 0..{model.num_classes - 1}, got {label}")
    name = f" ({names[label]})" if label < len(names) and str(names[label]) != str(label) else ""
    return torch.full((n,), label, dtype=torch.int64), f" of class {label}{name}"


def cmd_classes(args: argparse.Namespace) -> int:
    _positive(n=args.n)
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ConfigError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    out = _figure_out(args.run, args.out, "classes")
    from . import runs
    from .figures import class_rows, plot_class_rows

    model = runs.load_run_model(args.run)
    vr = _value_range(args.run)  # a corrupt record fails before anything is written
    _, x = class_rows(model, args.n, args.seed, args.temperature, mean=args.mean)
    names = _class_names(args.run)
    _write_picture_and_array(out, x, lambda: plot_class_rows(x, out, vr, names or None))
    print(out)
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    _positive(n=args.n)
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ConfigError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    out = _figure_out(args.run, args.out, "completions")
    import torch

    from . import runs
    from .figures import plot_completions

    model = runs.load_run_model(args.run)
    if model.conditions_on != "observed":
        raise ConfigError(
            "complete needs a model trained to complete images (--model cvae --condition "
            "mask); this one is not"
            + ("; sample a class with `aevb sample RUN --label K`" if model.conditional else "")
        )
    x = _read_input_images(args.input, tuple(model.likelihood.event_shape))
    model.likelihood.check_data(x)
    gen = torch.Generator().manual_seed(args.seed)
    done = model.complete(x, args.n, args.temperature, args.mean, gen, mask=args.mask)
    arr = done.transpose(0, 1)  # [N, n, *shape]
    _write_picture_and_array(
        out,
        arr,
        lambda: plot_completions(x, model.scored_mask, done, out, _value_range(args.run)),
    )
    print(out)
    return 0


def _read_input_images(path_text: str, event_shape: tuple[int, ...]):
    """``--input`` as ``[N, *event_shape]`` float32: an image file, or a .npy of 1 or N images."""
    import numpy as np
    import torch

    from .errors import DataError

    path = Path(path_text)
    if not path.is_file():
        raise DataError(f"--input {path} does not exist")
    c, h, w = event_shape
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        from .data.images import decode_image

        with Image.open(path) as im:
            size = (im.height, im.width)
        if size != (h, w):
            logging.getLogger("aevb").warning(
                "%s is %dx%d; resized (bilinear) to the model's %dx%d", path, *size, h, w
            )
        return torch.from_numpy(decode_image(path, c, (h, w))).float().div(255.0).unsqueeze(0)
    if suffix != ".npy":
        raise DataError(f"--input must be a .png, .jpg or .npy file, got {path.name}")
    from .data.arrays import _read, to_examples

    a = _read(path)["x"]
    one = {event_shape, (h, w, c)} | ({(h, w)} if c == 1 else set())
    if tuple(a.shape) in one:
        a = a[None]
    if tuple(a.shape[1:]) == (c, h, w) and a.dtype.kind in "biuf":
        x = torch.from_numpy(a.astype(np.float32))
        x = x / 255.0 if a.dtype.kind in "iu" and a.min() >= 0 and a.max() <= 255 else x
    else:
        x, _ = to_examples(a, path.name)
    if tuple(x.shape[1:]) != event_shape:
        raise DataError(
            f"--input {path.name} holds images of shape {tuple(a.shape[1:])}; the model takes "
            f"{event_shape} (or H x W x C, or one such image)"
        )
    return x


def _write_picture_and_array(out: Path, x, draw) -> None:
    """The picture and FILE.npy beside it, both or neither."""
    npy = out.with_suffix(".npy")
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    _save_npy(npy, x.cpu().numpy())
    try:
        draw()
    except BaseException:
        npy.unlink(missing_ok=True)
        for folder in made:  # and the folders made for them
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def cmd_reconstruct(args: argparse.Namespace) -> int:
    _positive(n=args.n)
    out = _figure_out(args.run, args.out, "reconstructions")
    from . import runs
    from .figures import plot_reconstructions

    model = runs.load_run_model(args.run)
    vr = _value_range(args.run)
    ds = runs.load_run_dataset(args.run, args.dataset, args.data_dir)
    x, y = ds.head(args.split, args.n).cpu(), ds.head_labels(args.split, args.n)
    x_hat = model.reconstruct(x, None if y is None else y.cpu())
    _write_picture_and_array(out, x_hat, lambda: plot_reconstructions(x, x_hat, out, vr))
    print(out)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    if args.steps < 2:
        raise ConfigError("--steps must be >= 2")
    _positive(pairs=args.pairs)
    out = _figure_out(args.run, args.out, "interpolation")
    from . import runs
    from .figures import check_walkable, plot_interpolation

    model = runs.load_run_model(args.run)
    check_walkable(model, args.slerp)
    ds = runs.load_run_dataset(args.run, args.dataset, args.data_dir)
    x = ds.head(args.split, 2 * args.pairs).cpu()
    y = ds.head_labels(args.split, 2 * args.pairs)
    if len(x) < 2:
        raise ConfigError(
            f"the {args.split} split has fewer than 2 examples to interpolate between"
        )
    plot_interpolation(
        model,
        x,
        out,
        args.steps,
        args.slerp,
        _value_range(args.run),
        None if y is None else y.cpu(),
    )
    print(out)
    return 0


def cmd_manifold(args: argparse.Namespace) -> int:
    if args.grid < 2:
        raise ConfigError("--grid must be >= 2")
    out = _figure_out(args.run, args.out, "manifold")
    from . import runs
    from .figures import plot_manifold

    model = runs.load_run_model(args.run)
    plot_manifold(model, out, args.grid, _value_range(args.run))
    print(out)
    return 0


def cmd_traverse(args: argparse.Namespace) -> int:
    _positive(rows=args.rows, steps=args.steps)
    if args.steps < 2:
        raise ConfigError("--steps must be >= 2")
    if args.example < 0:
        raise ConfigError(f"--example must be >= 0, got {args.example}")
    out = _figure_out(args.run, args.out, "traversals")
    from . import runs
    from .figures import plot_traversal

    model = runs.load_run_model(args.run)
    ds = runs.load_run_dataset(args.run, args.dataset, args.data_dir)
    n = ds.size(args.split)
    if not args.origin and args.example >= n:
        raise ConfigError(
            f"--example {args.example} is beyond the {n} examples of the {args.split} split"
        )
    # The units are ranked on the first 1000 examples (or up to the one asked for).
    head = max(1000, args.example + 1)
    x, y = ds.head(args.split, head).cpu(), ds.head_labels(args.split, head)
    plot_traversal(
        model,
        x,
        out,
        y,
        example=None if args.origin else args.example,
        rows=args.rows,
        steps=args.steps,
        value_range=_value_range(args.run),
    )
    print(out)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .rundir import check_output_file

    out = check_output_file(args.out, "--out", (".npy", ".csv"))
    import numpy as np
    import torch

    from . import runs

    model = runs.load_run_model(args.run)
    ds = runs.load_run_dataset(args.run, args.dataset, args.data_dir)
    parts = [
        model.embed(x.cpu(), None if y is None else y.cpu())
        for x, y in ds.eval_batches(args.split, 1000)
    ]
    emb = torch.cat(parts).cpu().numpy()
    if out.suffix == ".npy":
        _save_npy(out, emb)
    else:
        import io

        from .checkpoint import atomic_write_text

        labels = ds.labels(args.split)
        header = ",".join(f"z{j + 1}" for j in range(emb.shape[1]))
        rows = emb if labels is None else np.column_stack([emb, labels.cpu().numpy()])
        if labels is not None:
            header += ",label"
        buf = io.StringIO()
        np.savetxt(buf, rows, delimiter=",", header=header, comments="", fmt="%.7g")
        atomic_write_text(out, buf.getvalue())
    print(out)
    return 0


def cmd_train_prior(args: argparse.Namespace) -> int:
    from .prior_fit import train_prior

    result = train_prior(
        args.run,
        epochs=args.epochs,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    m = result.metrics
    if m:
        print(
            f"step {m['step']}  epoch {m['epoch']}  valid -log p_prior(codes) "
            f"{m['valid_neg_log_prior']:.3f} nats/example  wall {m.get('wall_time_s', 0):.1f}s"
        )
    print(result.run_dir)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import checkpoint as ckpt
    from . import rundir

    d = ckpt.read_config_dict(args.run)
    config = ckpt.load_config(args.run)  # validates
    info = ckpt.load_dataset_info(args.run)
    metrics = ckpt.read_metrics(args.run)
    run = Path(args.run)
    step = rundir.state_step(run)
    if (run / rundir.MODEL_FILE).is_file():
        status = {"status": "finished", "step": metrics[-1].get("step") if metrics else step}
    else:
        status = {"status": "unfinished", "step": step}
    final = metrics[-1] if metrics else {}
    if args.json:
        out = {
            "status": status,
            "config": d,
            "final_metrics": final if status["status"] == "finished" else None,
        }
        out["last_metrics"] = final
        print(json.dumps(ckpt.jsonable(out)))
        return 0
    print(f"run {args.run}")
    if status["status"] == "finished":
        print("[status] finished")
    else:
        where = f"at step {step}" if step is not None else "before its first checkpoint"
        print(f"[status] unfinished {where}: continue with `aevb train --resume {args.run}`")
    for section, values in config.to_dict().items():
        print(f"[{section}]")
        for k, v in values.items():
            print(f"  {k} = {v}")
    if info:
        print(f"[dataset] {info.get('name')}: shape {info.get('shape')}, sizes {info.get('sizes')}")
    if final:
        print("[final metrics]" if status["status"] == "finished" else "[last logged epoch]")
        _print_summary(final)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import DATASETS

    for name, spec in sorted(DATASETS.items()):
        print(f"{name:16s} {spec.description}")
    return 0


def _save_npy(path: Path, arr) -> None:
    import io

    import numpy as np

    from .checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


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
    "traverse": cmd_traverse,
    "embed": cmd_embed,
    "train-prior": cmd_train_prior,
    "classes": cmd_classes,
    "complete": cmd_complete,
    "info": cmd_info,
    "datasets": cmd_datasets,
    "serve": cmd_serve,
}


class _NoteFormatter(logging.Formatter):
    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        return f"aevb {self.command}: note: {record.getMessage()}"


def _warning_as_note(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning as one note line, not Python's two (with a line of its source)."""
    logging.getLogger("aevb").warning("%s", " ".join(str(message).split()))


def _on_rank_zero(record: logging.LogRecord) -> bool:
    """Notes are printed once, by rank 0, when several processes train together."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (a worker's traceback text is dropped)."""
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if len(lines) > 1 and "Traceback" in text else " ".join(lines)


def _allocation(e: BaseException) -> str:
    """What a failed allocation asked for, in a few words."""
    import re

    found = re.search(r"allocate (\d+) bytes", str(e))
    if found:
        return f"{int(found[1]) / 2**30:.3g} GiB asked for at once"
    return _one_line(e)[:200]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``aevb`` and ``python -m aevb``; returns the exit status."""
    code = _main(argv)
    if argv is None:  # this process's own command line: the process ends when this returns
        import gc

        # The final garbage collection walks the millions of objects torch and torch._dynamo
        # (which torch.optim imports) leave behind: 0.5-0.9 s of every command's exit on a
        # 2-core machine. Frozen objects are skipped; atexit handlers and module teardown
        # still run. (Not for in-process calls with an argv, such as the tests'.)
        gc.freeze()
    return code


def _main(argv: list[str] | None) -> int:
    command = "?"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # for `train --nproc`
        if args.version:
            from . import __version__

            print(__version__)
            return 0
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        command = args.command
        logger = logging.getLogger("aevb")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_NoteFormatter(command))
        handler.addFilter(_on_rank_zero)
        logger.addHandler(handler)
        logger.propagate = False
        show_warning, warnings.showwarning = warnings.showwarning, _warning_as_note
        try:
            return COMMANDS[command](args)
        finally:
            warnings.showwarning = show_warning
            logger.removeHandler(handler)
            logger.propagate = True
    except AevbError as e:
        from .distributed import is_main, rank_tag  # rank_tag: " on rank R of N" under torchrun

        code = getattr(e, "exit_code", EXIT_ERROR)
        if code == EXIT_INTERRUPTED:  # every rank stopped together; rank 0 says what was saved
            if is_main():
                print(f"aevb {command}: interrupted: {_one_line(e)}", file=sys.stderr)
            return code
        print(f"aevb {command}: error{rank_tag()}: {_one_line(e)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"aevb {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `aevb info RUN | head`: the reader left; nothing to report
        sys.stderr.close()
        return 0
    except OSError as e:
        print(f"aevb {command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except (MemoryError, RuntimeError) as e:  # a size asked for that does not fit; else a bug
        if not is_out_of_memory(e):
            raise
        print(
            f"aevb {command}: error: out of memory ({_allocation(e)}); ask for less: a "
            "smaller -n, --grid, --steps, --k, --samples, --batch-size, --hidden or dataset",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
