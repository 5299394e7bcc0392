"""The `mdt` command: `mdt train`, `mdt sample`, `mdt prepare-latents`, `mdt eval` (`mdt <command> --help`).

Each command lives in its own module, which provides `add_arguments(parser)` and `run(args)`. Mistakes
of the user (bad arguments, missing files, unusable checkpoints, missing optional packages: the classes of
mdt.errors, and mdt_kernels.BackendError) end with a one-line message and exit status 2; set MDT_DEBUG=1 to
see the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import MdtError

COMMANDS = {  # name -> module providing add_arguments(parser) and run(args) (and RECIPE_TABLE: takes --config)
    "train": "mdt.train_cli",
    "sample": "mdt.sample_cli",
    "prepare-latents": "mdt.prepare_latents",
    "eval": "mdt.evaluate",
}


def _user_errors() -> tuple[type[Exception], ...]:
    from mdt_kernels import BackendError

    return (MdtError, BackendError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdt", description="Train and sample Masked Diffusion Transformers "
                                     "(MDTv2) and DiT with mdt-kernels' fused ops.")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p, _recipe_table=getattr(module, "RECIPE_TABLE", None))
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line; with --config, the recipe's table for the command becomes its defaults (flags win)."""
    from .recipes import check_config_arg, recipe_defaults

    args = parser.parse_args(argv)
    if args._recipe_table and getattr(args, "config", None) is not None:
        check_config_arg(args.config)
        args._parser.set_defaults(**recipe_defaults(args.config, args._recipe_table, args._parser))
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    # Under ATEN_CPU_CAPABILITY, torch.compile (--compile) gets an inductor cache of its own per capability.
    from mdt_kernels._dispatch import use_inductor_cache_per_aten_capability

    use_inductor_cache_per_aten_capability()
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except _user_errors() as e:  # a bad recipe
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(e).split())}\n")
    try:
        return args._run(args) or 0
    except _user_errors() as e:
        if os.environ.get("MDT_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        args._parser.exit(2, f"{args._parser.prog}: error: {message}\n")
    except KeyboardInterrupt:
        print(f"\n{args._parser.prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
