"""The ``thinkaloud`` command: one verb → one job function.

Each job module defines a config dataclass (fields with ``metadata={"help": ...}``) and a function
``run(config)``. The parser for a verb is built from its dataclass, so ``--help`` is the config's
documentation, and ``--config file.yaml`` fills the same fields (command-line flags win).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import types
import typing
from pathlib import Path
from typing import Any

# verb → (module, config class, job function, one-line description)
VERBS: dict[str, tuple[str, str, str, str]] = {
    "calibrate": ("thinkaloud.data.calibrate", "CalibrateConfig", "calibrate",
                  "Stage-1 data: teacher rollouts + per-layer KL to the final layer"),
    "sft": ("thinkaloud.train.sft", "SFTConfig", "train_sft", "Stage 1: calibration SFT of LoRA + exit heads"),
    "sweep": ("thinkaloud.train.sweep", "SweepConfig", "sweep", "Stage 1 over several KL factors, with an eval table"),
    "rl": ("thinkaloud.train.rl", "RLConfig", "train_rl", "Stage 2: RL for earlier exits (leave-one-out REINFORCE)"),
    "eval": ("thinkaloud.eval.run", "EvalConfig", "evaluate", "Generate with exits, score, summarise"),
    "report": ("thinkaloud.eval.run", "ReportConfig", "report", "report.md + report.html from result folders"),
    "demo": ("thinkaloud.demo", "DemoConfig", "demo", "The whole pipeline on the embedded model, on a CPU"),
}


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _converter(tp):
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp) or (str,)
        conv = _converter(inner)
        return lambda s: [conv(x) for x in s.split(",") if x.strip()]
    if tp is bool:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if tp in (int, float, str):
        return tp
    return str


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        tp = _strip_optional(hints[f.name])
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {default})")
        else:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            parser.add_argument(flag, dest=f.name, type=_converter(hints[f.name]), default=None,
                                required=required and f.metadata.get("cli_required", True),
                                help=f"{help_text} (default: {default})" if not required else help_text)


def build_config(cls, args: argparse.Namespace):
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        import yaml

        loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise SystemExit(f"{config_file}: unknown fields {unknown}; known: {sorted(known)}")
        values.update(loaded)
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return cls(**values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkaloud", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (module, cls_name, _, description) in VERBS.items():
        p = sub.add_parser(verb, help=description, description=description)
        p.add_argument("--config", default=None, help="YAML file with the same fields (flags override it)")
        cls = getattr(importlib.import_module(module), cls_name)
        add_dataclass_arguments(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the chosen verb's module unless help for everything is asked for.
    if argv and argv[0] in VERBS:
        module, cls_name, fn_name, description = VERBS[argv[0]]
        mod = importlib.import_module(module)
        p = argparse.ArgumentParser(prog=f"thinkaloud {argv[0]}", description=description)
        p.add_argument("--config", default=None, help="YAML file with the same fields (flags override it)")
        add_dataclass_arguments(p, getattr(mod, cls_name))
        args = p.parse_args(argv[1:])
        try:
            config = build_config(getattr(mod, cls_name), args)
        except (ValueError, TypeError) as e:
            p.error(str(e))
        result = getattr(mod, fn_name)(config)
        return 0 if result is None or not isinstance(result, int) else result
    _parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
