"""The ``thinkaloud`` command: one verb → one job function.

Each job module defines a config dataclass (fields with ``metadata={"help": ...}``) and a function
``run(config)``. The parser for a verb is built from its dataclass, so ``--help`` is the config's
documentation, and ``--config file.yaml`` fills the same fields (command-line flags win). A field
without a default must be given, as a flag or in the YAML file. A list field with
``metadata={"positional": True}`` can also be given as positional arguments (``thinkaloud report
runs/a runs/b``); both forms fill the same field, give one of them. A list flag takes comma-separated
values, except with ``metadata={"whole": True}``, where each argument is one item (prompts hold commas)
and the flag may be repeated. ``python -m thinkaloud`` is the same command.

Errors. A command runs in four steps, and which exceptions are the user's to fix depends on the step:

1. parse the command line: every parser error (unknown flag, bad value such as ``--n abc``,
   missing argument);
2. build the config (read ``--config``, apply the flags, the dataclass's own validation): every
   ``ValueError``, ``TypeError``, ``OSError`` or YAML error, since this step only reads user input;
3. check the models and result folders the config names, before any model is loaded (``check_inputs``:
   fields ``model`` and ``dirs``; they are small to read): every ``ValueError`` or ``OSError``;
4. run the job: a ``thinkaloud.errors.UserError`` (e.g. an unsupported model), or an ``OSError``
   about a path (missing, already there, of the wrong kind, not writable: ``errors.PATH_ERRORS``).
   Task specs, their data files and calibration folders are checked where the job reads them, once,
   before it loads a model: reading them raises a ``thinkaloud.errors.DataError`` (a ``UserError``)
   for an unknown task, a malformed line, too few items or an incomplete calibration
   (``thinkaloud.data.tasks.load_items``, ``thinkaloud.data.calibrate.load_calibration``).

A user error prints one line on stderr, ``thinkaloud <verb>: error: <message>``, and exits with
status 2. Anything else is a bug and keeps its traceback: a ``ValueError`` from inside a running job
is not the user's: the inputs are checked in step 3 or raise a ``UserError`` where they are read. ``--debug`` (before or after the verb) also
prints the traceback of user errors. Ctrl-C prints ``thinkaloud <verb>: interrupted`` and exits with
status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from thinkaloud.errors import PATH_ERRORS, UsageError, UserError, as_user_errors, one_line

REPORTED: tuple[type[Exception], ...] = (UserError, *PATH_ERRORS)
"""Errors that ``main`` prints as one line (exit status 2) instead of a traceback."""

# verb → (module, config class, job function, one-line description)
VERBS: dict[str, tuple[str, str, str, str]] = {
    "calibrate": (
        "thinkaloud.data.calibrate",
        "CalibrateConfig",
        "calibrate",
        "Stage-1 data: teacher rollouts + per-layer KL to the final layer",
    ),
    "sft": ("thinkaloud.train.sft", "SFTConfig", "train_sft", "Stage 1: calibration SFT of LoRA + exit heads"),
    "sweep": (
        "thinkaloud.experiments.sweep",
        "SweepConfig",
        "sweep",
        "Stage 1 over several KL factors, with an eval table",
    ),
    "rl": ("thinkaloud.train.rl", "RLConfig", "train_rl", "Stage 2: RL for earlier exits (leave-one-out REINFORCE)"),
    "eval": ("thinkaloud.eval.run", "EvalConfig", "evaluate", "Generate with exits, score, summarise"),
    "report": ("thinkaloud.report.job", "ReportConfig", "report", "report.md + report.html from result folders"),
    "risk": (
        "thinkaloud.risk.run",
        "RiskConfig",
        "choose_offset",
        "Choose the exit offset with a risk guarantee (Learn-then-Test)",
    ),
    "generate": (
        "thinkaloud.serve.chat",
        "GenerateConfig",
        "generate_answers",
        "Answer prompts with exits: streamed, coloured by exit layer (or --json records)",
    ),
    "chat": (
        "thinkaloud.serve.chat",
        "ChatConfig",
        "chat",
        "Talk to a model in the terminal, tokens coloured by exit layer",
    ),
    "card": (
        "thinkaloud.model.card",
        "CardConfig",
        "card",
        "Write a saved model's card (README.md), with eval metrics",
    ),
    "demo": (
        "thinkaloud.experiments.demo",
        "DemoConfig",
        "demo",
        "The paper's four findings tested on the embedded model, on a CPU",
    ),
    "organism": (
        "thinkaloud.experiments.organism.run",
        "OrganismExperimentConfig",
        "run_organism",
        "The model organism: does the exit penalty move computation into the text?",
    ),
}

POSITIONAL = "positional"  # metadata key: the list field is also filled by positional arguments
_POSITIONAL_DEST = "{}__positional"
DEBUG_HELP = "on an error, print the full traceback"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises its errors, for ``main`` to print them as one line."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


# ---------------------------------------------------------------------------------------------------
# Parser from a dataclass


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _converter(tp, whole: bool = False):
    """str → value of type ``tp``; its ``__name__`` appears in argparse's "invalid <name> value" errors.
    ``whole``: a list item per argument (no comma splitting)."""
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp) or (str,)
        item = _converter(inner)
        if whole:

            def convert_one(s: str) -> list:
                return [item(s)]

            convert_one.__name__ = item.__name__
            return convert_one

        def convert_list(s: str) -> list:
            return [item(x.strip()) for x in s.split(",") if x.strip()]

        convert_list.__name__ = f"comma-separated {item.__name__}"
        return convert_list
    if tp is bool:

        def convert_bool(s: str) -> bool:
            return s.lower() in ("1", "true", "yes", "on")

        convert_bool.__name__ = "bool"
        return convert_bool
    if tp in (int, float, str):
        return tp
    return str


def _flag(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def _required(f: dataclasses.Field) -> bool:
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return no_default and f.metadata.get("cli_required", True)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--flag`` per init field of ``cls`` (dest = field name); positional fields get a positional too.

    No flag is marked required for argparse: a required field may come from ``--config`` instead, so
    ``build_config`` checks for it once flags and file are merged.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        help_text = f.metadata.get("help", "")
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        if _required(f):
            help_text += " (required)"
        elif "(default" not in help_text:  # a help text may say what its default means
            help_text += f" (default: {default})"
        tp = _strip_optional(hints[f.name])
        whole = bool(f.metadata.get("whole"))
        if tp is bool:
            parser.add_argument(
                _flag(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                _flag(f),
                dest=f.name,
                type=_converter(tp, whole),
                default=None,
                help=help_text,
                action="extend" if whole else "store",
            )
        if f.metadata.get(POSITIONAL):
            if typing.get_origin(tp) is not list:
                raise TypeError(f"{cls.__name__}.{f.name}: only a list field can be positional, not {tp}")
            parser.add_argument(
                _POSITIONAL_DEST.format(f.name),
                metavar=f.name.upper(),
                nargs="*",
                type=_converter(tp, whole),
                help=f"the same as {_flag(f)}",
            )


def _has_positional(cls) -> bool:
    return any(f.metadata.get(POSITIONAL) for f in dataclasses.fields(cls))


def _read_config_file(path: str, cls) -> dict[str, Any]:
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of field: value, got {type(loaded).__name__}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(loaded) - known)
    if unknown:
        raise UserError(f"{path}: unknown fields {unknown}; known: {sorted(known)}")
    return loaded


def build_config(cls, args: argparse.Namespace):
    """The config from ``--config`` (if given) overridden by the flags and positional arguments."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(_read_config_file(args.config, cls))
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        positional = getattr(args, _POSITIONAL_DEST.format(f.name), None)
        if positional:
            if value is not None:
                raise UsageError(f"give {f.name} as arguments or with {_flag(f)}, not both")
            value = [x for part in positional for x in part]
        if value is not None:
            values[f.name] = value
    missing = [f for f in dataclasses.fields(cls) if f.init and _required(f) and f.name not in values]
    if missing:
        names = [
            f"{_flag(f)} (or {f.name.upper()} arguments)" if f.metadata.get(POSITIONAL) else _flag(f) for f in missing
        ]
        raise UsageError(f"the following arguments are required: {', '.join(names)}")
    return cls(**values)


# ---------------------------------------------------------------------------------------------------
# Step 3: the inputs a config names


def check_inputs(config) -> None:
    """Check the models and result folders ``config`` names, by field name, fast and without loading a model.

    ``model``: ``check_model_spec``; ``dirs``: eval, sweep or RL result folders. Raises what those checks
    raise. Task specs, data files and calibration folders are not read here: the job reads them once,
    and raises a ``DataError`` there (module docstring).
    """
    model = getattr(config, "model", None)
    if isinstance(model, str):
        from thinkaloud.model.loading import check_model_spec

        check_model_spec(model)
    dirs = getattr(config, "dirs", None)
    if isinstance(dirs, list):
        from thinkaloud.report.build import detect_kind

        for d in dirs:
            detect_kind(Path(d))


# ---------------------------------------------------------------------------------------------------
# The command


def _add_verb_arguments(parser: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=None, help="YAML file with the same fields (flags override it)")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    add_dataclass_arguments(parser, cls)
    return parser


def _parser() -> argparse.ArgumentParser:
    """The parser of the whole command (for ``--help`` and errors that name no verb)."""
    parser = _Parser(
        prog="thinkaloud",
        description="Post-train a language model to think out loud: early exits "
        "(exit = freeze), calibration, SFT, RL, evaluation.",
        epilog="`thinkaloud VERB --help` lists a verb's options.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (module, cls_name, _, description) in VERBS.items():
        _add_verb_arguments(
            sub.add_parser(verb, help=description, description=description),
            getattr(importlib.import_module(module), cls_name),
        )
    return parser


def _run(argv: list[str]) -> int:
    if not argv or argv[0] not in VERBS:
        _parser().parse_args(argv)  # prints help and exits, or raises a UsageError
        return 0
    module, cls_name, fn_name, description = VERBS[argv[0]]
    mod = importlib.import_module(module)  # only the chosen verb's module
    cls = getattr(mod, cls_name)
    parser = _add_verb_arguments(_Parser(prog=f"thinkaloud {argv[0]}", description=description), cls)
    args = parser.parse_intermixed_args(argv[1:]) if _has_positional(cls) else parser.parse_args(argv[1:])
    with as_user_errors(ValueError, TypeError, OSError, yaml.YAMLError):
        config = build_config(cls, args)
    with as_user_errors(ValueError, OSError):
        check_inputs(config)
    result = getattr(mod, fn_name)(config)
    _end_process_group()
    return 0 if result is None or not isinstance(result, int) else result


def _end_process_group() -> None:
    """Tear down a multi-process run's process group before the interpreter exits: left to exit, a gloo
    group's threads can abort the process ("terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0, 2 for a user error, 130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    while argv[:1] == ["--debug"]:
        argv.pop(0)
    prog = f"thinkaloud {argv[0]}" if argv and argv[0] in VERBS else "thinkaloud"
    try:
        return _run(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except REPORTED as e:
        if debug:
            traceback.print_exception(e)
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
