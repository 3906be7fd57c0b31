"""GSM8K (`gsm8k`, `gsm8k:<path>`, `gsm8k:<file>:split`): grade-school math from the official JSONL.

Where the rows come from, for the split asked for (`thinkaloud.data.tasks` has the whole rule):

- a file, `gsm8k:/data/test.jsonl`: every row of it, whichever split is asked for. The file is the
  user's choice of data; leakage between a calibration and an evaluation on the same file is refused
  by content (`thinkaloud.eval.lineage.check_no_leakage`);
- a file with `:split`, `gsm8k:/data/train.jsonl:split`: the rows whose question hashes to the split
  (80% train / 10% validation / 10% test, `thinkaloud.data.splits`): one file, disjoint splits;
- a directory, `gsm8k:/data/gsm8k`: its `<split>.jsonl`, every row;
- nothing: `$THINKALOUD_GSM8K` (read as the part after `gsm8k:`), else the hub's split (if online).

`Gsm8kTask.data_source(split)` says which rows were used: the file, its rows, the rows of the split.
"""

from __future__ import annotations

import json
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinkaloud.data.answers import find_number, normalize_number, parse_number
from thinkaloud.data.splits import check_split, question_key, split_of_key
from thinkaloud.data.task import Item, Task

GSM8K_ENV = "THINKALOUD_GSM8K"
HASH_SPLIT = ":split"  # after a file name: split the file by question hash

GSM8K_SYSTEM_PROMPT = (
    "Solve the math problem step by step. "
    "On the last line, write the final numeric answer as '#### <number>' (the number only)."
)


def read_gsm8k_jsonl(path: str | Path) -> list[dict]:
    """Rows `{"question", "answer", "solution"}` of an official GSM8K JSONL file.

    `answer` is the normalised number after "####"; `solution` the full reference text.
    Raises ValueError naming the file and 1-based line of a malformed line.
    """
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected GSM8K JSONL") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("question", "answer")):
            raise ValueError(f"{where}: expected an object with 'question' and 'answer' keys (strings)")
        if "####" not in record["answer"]:
            raise ValueError(f"{where}: answer has no '#### <number>' final line")
        final = record["answer"].rsplit("####", 1)[1].strip()
        if not final:
            raise ValueError(f"{where}: nothing after '####' in the answer")
        if parse_number(final) != normalize_number(final):
            raise ValueError(f"{where}: the answer after '####' is not a number: {final!r}")
        rows.append({"question": record["question"], "answer": normalize_number(final), "solution": record["answer"]})
    return rows


def _hub_gsm8k(split: str) -> list[dict] | None:
    """GSM8K from the Hugging Face hub via `datasets`, or None when not installed or offline."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return None
    try:
        import datasets
    except ImportError:
        return None
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        rows = datasets.load_dataset("openai/gsm8k", "main", split=split)
    except Exception:  # offline, no such split, hub error: the caller reports what to do
        return None
    return [
        {
            "question": r["question"],
            "answer": normalize_number(r["answer"].rsplit("####", 1)[1]),
            "solution": r["answer"],
        }
        for r in rows
    ]


def parse_source(source: str | Path) -> tuple[Path, bool]:
    """``"<path>"`` or ``"<file>:split"`` → (path, whether to split the file by question hash)."""
    text = str(source)
    if text.endswith(HASH_SPLIT):
        return Path(text[: -len(HASH_SPLIT)]), True
    return Path(text), False


@dataclass(frozen=True)
class _Pool:
    """The rows one split draws from: (row index in the file, row), and where they come from."""

    file: str
    rows: list[tuple[int, dict]]
    rows_in_file: int
    split: str | None = None  # the split of a file split by question hash; None: the whole file

    @property
    def source(self) -> str:
        """In words, e.g. "/data/test.jsonl" or "the test part of /data/train.jsonl (split by question hash)"."""
        return self.file if self.split is None else f"the {self.split} part of {self.file} (split by question hash)"


class Gsm8kTask(Task):
    """GSM8K from a local JSONL file or directory, else $THINKALOUD_GSM8K, else the hub (if online).

    A file is used whole for any split, unless given as ``<file>:split`` (or ``split_by_hash``): then
    split by question hash. A directory's ``<split>.jsonl`` and the hub's splits are used as they are
    (module docstring).
    """

    answer_cue = "The answer is"

    def __init__(
        self,
        path: str | Path | None = None,
        system_prompt: str | None = GSM8K_SYSTEM_PROMPT,
        lenient: bool = False,
        split_by_hash: bool = False,
    ):
        self.name = "gsm8k"
        self.system_prompt = system_prompt
        self.lenient = lenient
        self.path: Path | None = None
        by_hash = False
        if path:
            self.path, by_hash = parse_source(path)
        self.split_by_hash = split_by_hash or by_hash
        self._files: dict[Path, list[dict]] = {}
        self._pools: dict[str, _Pool] = {}

    def _read(self, file: Path) -> list[dict]:
        if file not in self._files:
            self._files[file] = read_gsm8k_jsonl(file)
        return self._files[file]

    def _from_path(self, path: Path, split: str, by_hash: bool) -> _Pool:
        if path.is_dir():
            if by_hash:
                raise ValueError(f"{path}{HASH_SPLIT}: a directory's <split>.jsonl files are used as given")
            file = path / f"{split}.jsonl"
            if not file.is_file():
                raise FileNotFoundError(f"GSM8K directory {path} has no {split}.jsonl")
            given = self._read(file)
            return _Pool(str(file), list(enumerate(given)), len(given))
        if not path.is_file():
            raise FileNotFoundError(f"GSM8K file {path} does not exist")
        every = self._read(path)
        if not by_hash:
            return _Pool(str(path), list(enumerate(every)), len(every))
        rows: list[tuple[int, dict]] = []
        seen: set[str] = set()
        for i, row in enumerate(every):
            key = question_key(row["question"])
            if key not in seen and split_of_key(key) == split:
                seen.add(key)
                rows.append((i, row))
        return _Pool(str(path), rows, len(every), split)

    def _load(self, split: str) -> _Pool:
        if split not in self._pools:
            if self.path is not None:
                self._pools[split] = self._from_path(self.path, split, self.split_by_hash)
            elif os.environ.get(GSM8K_ENV):
                path, by_hash = parse_source(os.environ[GSM8K_ENV])
                self._pools[split] = self._from_path(path, split, by_hash or self.split_by_hash)
            elif (rows := _hub_gsm8k(split)) is not None:
                self._pools[split] = _Pool(f"hf:openai/gsm8k ({split})", list(enumerate(rows)), len(rows))
            else:
                raise FileNotFoundError(
                    f"No GSM8K data for split {split!r}: pass a JSONL file (used whole; "
                    f"<file>{HASH_SPLIT} splits it into train/validation/test by question hash) or a directory "
                    "with <split>.jsonl files, e.g. `--task gsm8k:/path/to/train.jsonl` (get_task('gsm8k', "
                    f"path=...)), or set {GSM8K_ENV}=/path/to/train.jsonl; downloading from the Hugging Face hub "
                    "needs the `datasets` package and network access."
                )
        return self._pools[split]

    def data_source(self, split: str) -> dict[str, Any]:
        pool = self._load(split)
        return {
            "file": pool.file,
            "split_by_hash": pool.split is not None,
            "rows_in_file": pool.rows_in_file,
            "rows_used": len(pool.rows),
        }

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        check_split(split)
        pool = self._load(split)
        source, rows = pool.source, pool.rows
        if not 0 < n <= len(rows):
            raise ValueError(f"asked for {n} GSM8K items but {source} has {len(rows)}")
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        picked = [rows[j] for j in order[:n]]
        return [
            Item(
                id=f"gsm8k/{split}/{i}",
                question=row["question"],
                answer=row["answer"],
                meta={"source": source, "index": i, "solution": row["solution"]},
            )
            for i, row in picked
        ]

    def locate_answer(self, completion: str) -> tuple[int, str] | None:
        return find_number(completion, lenient=self.lenient)

    def score(self, item: Item, completion: str) -> float:
        return float(self.extract_answer(completion) == normalize_number(item.answer))
