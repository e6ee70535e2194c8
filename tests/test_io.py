"""Atomic writes: a finished write replaces the file in one step; an interrupted one leaves nothing."""
import pandas as pd
import pytest

from hcc25d import io


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "t.csv"
    io.write_csv(pd.DataFrame({"a": [1, 2]}), p)
    io.write_csv(pd.DataFrame({"a": [3]}), p)
    assert pd.read_csv(p)["a"].tolist() == [3]
    assert [f.name for f in p.parent.iterdir()] == ["t.csv"]  # no temporary file left


def test_interrupted_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    p = tmp_path / "r.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(p) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("interrupted")
    assert not p.exists() and list(tmp_path.iterdir()) == []
    io.write_json({"v": 1}, p)
    with pytest.raises(TypeError):
        io.write_json({"v": object()}, p)  # fails while writing
    assert io.read_json(p) == {"v": 1} and [f.name for f in tmp_path.iterdir()] == ["r.json"]
