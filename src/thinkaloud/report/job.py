"""The ``report`` job: ``thinkaloud report runs/a runs/b`` → report.md + report.html (see ``thinkaloud.report.build``).

The folders are positional (``--dirs a,b`` works too). ``--out`` defaults to ``report/`` in the common
parent of the folders' parents (``runs/a runs/b`` → ``runs/report``), or in the current folder when they
share nothing below the filesystem root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

REPORT_DIR = "report"


def default_out(dirs: list[str]) -> Path:
    """``report/`` in the common parent of ``dirs`` (relative to the current folder when inside it)."""
    cwd = Path.cwd().resolve()
    parents = [str(Path(d).resolve().parent) for d in dirs]
    try:
        common = Path(os.path.commonpath(parents))
    except ValueError:  # e.g. different drives
        common = cwd
    if common == Path(common.anchor):
        common = cwd
    out = common / REPORT_DIR
    return out.relative_to(cwd) if out.is_relative_to(cwd) else out


@dataclass
class ReportConfig:
    """Build report.md and report.html from eval, sweep and RL directories."""

    dirs: list[str] = field(
        metadata={
            "positional": True,
            "help": "result directories (eval: summary.json, sweep: "
            "sweep.json, RL: log.jsonl), as arguments or --dirs a,b",
        }
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "output directory for report.md, report.html, figures/, "
            "tokens/ (default: report/ in the folders' common parent)"
        },
    )
    examples: int = field(default=1, metadata={"help": "token views per eval directory"})
    max_example_tokens: int = field(default=400, metadata={"help": "tokens shown per token view"})

    def __post_init__(self) -> None:
        if not self.dirs:
            raise ValueError("no result directories: give at least one (thinkaloud report runs/a runs/b)")
        missing = [d for d in self.dirs if not Path(d).is_dir()]
        if missing:
            raise ValueError(f"not a directory: {', '.join(missing)}")
        if self.examples < 0 or self.max_example_tokens < 1:
            raise ValueError("need examples >= 0 and max_example_tokens >= 1")
        if self.out is None:
            self.out = str(default_out(self.dirs))


def report(config: ReportConfig) -> tuple[Path, Path]:
    """Build the report of ``config.dirs`` into ``config.out``; prints and returns (report.md, report.html)."""
    from thinkaloud.report.build import build_report

    console = Console()
    with console.status(f"building the report of {len(config.dirs)} directories…"):
        out = config.out if config.out is not None else default_out(config.dirs)  # set by __post_init__
        md, page = build_report(
            config.dirs, out, n_examples=config.examples, max_example_tokens=config.max_example_tokens
        )
    console.print(f"Wrote {md}\nWrote {page}")
    return md, page
