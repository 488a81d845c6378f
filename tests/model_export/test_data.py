from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model_export import data as datasets
from model_export.data import DataError


def test_movielens_counts(data_dir: Path) -> None:
    ml = datasets.load_movielens(data_dir)
    assert len(ml) == 100_000
    assert len(np.unique(ml.user)) == 943 == len(ml.users)
    assert len(np.unique(ml.item)) == 1_682 == len(ml.items)
    assert ml.label.mean() == pytest.approx((34_174 + 21_201) / 100_000)  # rating >= 4
    assert ml.users["1"] == {"age": 24, "gender": "M", "occupation": "technician", "zip": "85711"}
    assert ml.items["1"]["genres"] == ["Animation", "Children's", "Comedy"]


def test_book_crossing_counts(data_dir: Path) -> None:
    bx = datasets.load_book_crossing(data_dir)
    assert bx.n_samples == 62_656  # explicit ratings
    assert len(bx) == 272_678  # every history row, rated ones as samples
    assert len(bx.users) == 2_946 and len(bx.items) == 17_384
    assert len(np.unique(bx.user[bx.is_sample])) == 1_295
    rated = set(zip(bx.user[bx.is_sample], bx.item[bx.is_sample], strict=True))
    implicit = set(zip(bx.user[~bx.is_sample], bx.item[~bx.is_sample], strict=True))
    assert not rated & implicit  # a rated book is never behavior


def _copy_ml(data_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ml-100k"
    shutil.copytree(data_dir / "ml-100k", folder)
    return folder


def test_corrupt_file_is_named(data_dir: Path, tmp_path: Path) -> None:
    folder = _copy_ml(data_dir, tmp_path)
    (folder / "u.data").chmod(0o644)
    with (folder / "u.data").open("ab") as fh:
        fh.write(b"1\t1\t5\t0\n")
    with pytest.raises(DataError, match=r"corrupt data file .*u\.data.*expected 06416e59"):
        datasets.load_movielens(tmp_path)


def test_missing_file_is_named(data_dir: Path, tmp_path: Path) -> None:
    folder = _copy_ml(data_dir, tmp_path)
    (folder / "u.user").unlink()
    with pytest.raises(DataError, match=r"missing data file .*u\.user.*expected sha256 f120e114"):
        datasets.load_movielens(tmp_path)


def test_no_data_dir_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILREC_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="--data-dir or set MAILREC_DATA_DIR"):
        datasets.load_movielens(None)


def _zip_of(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"ml-100k/{f.name}")
    return dest


def test_download_from_local_archive(data_dir: Path, tmp_path: Path) -> None:
    archive = _zip_of(data_dir / "ml-100k", tmp_path / "ml-100k.zip")
    target = datasets.download_movielens(tmp_path / "cache", str(archive), progress=False)
    assert target == tmp_path / "cache" / "ml-100k"
    assert len(datasets.load_movielens(target.parent)) == 100_000
    # a second call finds the verified copy and does not need the source
    assert datasets.download_movielens(tmp_path / "cache", "/nonexistent.zip", progress=False) == target


def test_download_rejects_a_corrupt_archive(data_dir: Path, tmp_path: Path) -> None:
    folder = _copy_ml(data_dir, tmp_path / "src")
    (folder / "u.item").chmod(0o644)
    (folder / "u.item").write_bytes(b"tampered")
    archive = _zip_of(folder, tmp_path / "bad.zip")
    with pytest.raises(DataError, match=r"corrupt data file .*u\.item"):
        datasets.download_movielens(tmp_path / "cache", str(archive), progress=False)
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_synthetic_has_planted_structure() -> None:
    syn = datasets.make_synthetic(n_users=300, per_user=40, signal=0.8, seed=3)
    tastes: dict[str, list[tuple[str, ...]]] = {}
    for user, attrs in syn.users.items():
        cats, counts = np.unique(
            [syn.items[i]["category"] for i in syn.item[syn.user == user]], return_counts=True
        )
        top = np.argsort(-counts)[:2]
        assert counts[top].sum() / counts.sum() > 0.6  # a user sticks to two liked categories
        tastes.setdefault(str(attrs["segment"]), []).append(tuple(sorted(cats[top].tolist())))
    for pairs in tastes.values():  # ... which most users of a segment share
        _, counts = np.unique(np.array(pairs), axis=0, return_counts=True)
        assert counts.max() / len(pairs) > 0.5
    again = datasets.make_synthetic(n_users=300, per_user=40, signal=0.8, seed=3)
    assert (again.item == syn.item).all() and (again.label == syn.label).all()


def test_a_failed_download_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:9/ml-100k\.zip .*--source"):
        datasets.download_movielens(tmp_path / "cache", "http://127.0.0.1:9/ml-100k.zip", progress=False)
