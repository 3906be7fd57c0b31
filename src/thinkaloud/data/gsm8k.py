"""GSM8K (`gsm8k`, `gsm8k:<path>`): grade-school math from the official JSONL; see `thinkaloud.data.tasks`."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

from thinkaloud.data.answers import find_number, normalize_number, parse_number
from thinkaloud.data.splits import check_split, question_key, split_of_key
from thinkaloud.data.task import Item, Task

GSM8K_ENV = "THINKALOUD_GSM8K"

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


class Gsm8kTask(Task):
    """GSM8K from a local JSONL file or directory, else $THINKALOUD_GSM8K, else the hub (if online).

    A single file is split by question hash; a directory's `<split>.jsonl` and the hub's splits are
    used as they are (module docstring).
    """

    answer_cue = "The answer is"

    def __init__(
        self, path: str | Path | None = None, system_prompt: str | None = GSM8K_SYSTEM_PROMPT, lenient: bool = False
    ):
        self.name = "gsm8k"
        self.system_prompt = system_prompt
        self.lenient = lenient
        self.path = Path(path) if path else None
        self._files: dict[Path, list[dict]] = {}
        self._rows: dict[str, tuple[str, list[tuple[int, dict]]]] = {}  # split -> (source, [(row index, row)])

    def _read(self, file: Path) -> list[dict]:
        if file not in self._files:
            self._files[file] = read_gsm8k_jsonl(file)
        return self._files[file]

    def _from_path(self, path: Path, split: str) -> tuple[str, list[tuple[int, dict]]]:
        if path.is_dir():
            file = path / f"{split}.jsonl"
            if not file.is_file():
                raise FileNotFoundError(f"GSM8K directory {path} has no {split}.jsonl")
            return str(file), list(enumerate(self._read(file)))
        if not path.is_file():
            raise FileNotFoundError(f"GSM8K file {path} does not exist")
        rows, seen = [], set()
        for i, row in enumerate(self._read(path)):
            key = question_key(row["question"])
            if key not in seen and split_of_key(key) == split:
                seen.add(key)
                rows.append((i, row))
        return f"the {split} part of {path} (split by question hash)", rows

    def _load(self, split: str) -> tuple[str, list[tuple[int, dict]]]:
        if split not in self._rows:
            path = self.path or (Path(os.environ[GSM8K_ENV]) if os.environ.get(GSM8K_ENV) else None)
            if path is not None:
                self._rows[split] = self._from_path(path, split)
            elif (rows := _hub_gsm8k(split)) is not None:
                self._rows[split] = ("hf:openai/gsm8k", list(enumerate(rows)))
            else:
                raise FileNotFoundError(
                    f"No GSM8K data for split {split!r}: pass a JSONL file (split into train/validation/test "
                    "by question hash) or a directory with <split>.jsonl files, e.g. "
                    "`--task gsm8k:/path/to/train.jsonl` (get_task('gsm8k', path=...)), or set "
                    f"{GSM8K_ENV}=/path/to/train.jsonl; downloading from the Hugging Face hub needs the "
                    "`datasets` package and network access."
                )
        return self._rows[split]

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        check_split(split)
        source, rows = self._load(split)
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
