"""Datasets: MovieLens 100K, Book-Crossing, and a synthetic generator, as raw-id interactions.

Every loader returns `Interactions`: users and items with their raw attributes, and one row per
interaction (user, item, label, timestamp). Rows with `is_sample=False` are behavior only (the
user's implicit history, or onboarding interactions): they feed behavior features, never labels.

Files are checked against known sha256 sums before they are read; a missing or corrupt file is a
`DataError` naming the file and what was expected.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.contract import FieldSpec, sha256_file

log = logging.getLogger(__name__)

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
}
BOOK_CROSSING_SHA256 = {
    "book_history.dat": "9866c79c6022bd68729403768496c7ffb8f481db268884e0a22e5cf80fc5eadd",
    "book_ratings.dat": "703c6efadfee9bd790354b230fe948c61f246ba5e3642c67ace96501de6667b3",
    "items_info.dat": "e8785b6744d6758b41ed497a5849a66ab2e17279b71e67d0a43b1e0687a39df1",
    "users_info.dat": "95f6ba8786e13c99bf879ffbdebe6615016931f1ccba1a2ff9b7555dcd0492d3",
}
# Folder names looked for under a data directory, first match wins.
DATASET_DIRS = {
    "ml-100k": ("ml-100k",),
    "book-crossing": ("book-crossing-caserec", "book-crossing"),
    "alimama": ("alimama", "taobao-ad"),
}
ML_CLICK_RATING = 4  # MovieLens: rating >= 4 is a click
BX_CLICK_RATING = 8  # Book-Crossing: rating >= 8 (the median explicit rating) is a click


class DataError(Exception):
    """A dataset that cannot be read as expected."""


@dataclass(frozen=True)
class FieldPlan:
    """A field before its vocabulary is known: the spec without vocab, and its min count."""

    spec: FieldSpec
    min_count: int = 1


def plan(name: str, source: str, transform: str, slots: int = 1, min_count: int = 1) -> FieldPlan:
    return FieldPlan(FieldSpec(name, source, transform, slots), min_count)


NO_CONTEXT = (plan("none", "none", "text"),)  # datasets without time: one always-PAD field
TIME_CONTEXT = (plan("hour", "timestamp", "hour"), plan("weekday", "timestamp", "weekday"))


@dataclass
class Interactions:
    """A dataset as raw ids. Arrays are aligned, one entry per interaction."""

    name: str
    users: dict[str, dict[str, object]]  # raw user id -> raw attributes (user id excluded)
    items: dict[str, dict[str, object]]  # raw item id -> raw attributes (item id excluded)
    titles: dict[str, str]
    user: npt.NDArray[np.str_]
    item: npt.NDArray[np.str_]
    label: npt.NDArray[np.int8]
    timestamp: npt.NDArray[np.int64] | None  # None: the dataset has no time
    is_sample: npt.NDArray[np.bool_]
    user_plan: tuple[FieldPlan, ...]
    item_plan: tuple[FieldPlan, ...]
    context_plan: tuple[FieldPlan, ...]
    notes: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_samples(self) -> int:
        return int(self.is_sample.sum())

    def with_user_attribute(
        self, name: str, values: Mapping[str, object], field_plan: FieldPlan
    ) -> Interactions:
        users = {u: {**a, name: values[u]} if u in values else dict(a) for u, a in self.users.items()}
        return replace(self, users=users, user_plan=(*self.user_plan, field_plan))


# --- checksums and download ---------------------------------------------------------------------


def resolve_dir(dataset: str, data_dir: Path | str | None) -> Path:
    """The folder holding `dataset`: data_dir itself, or a known sub-folder of it."""
    raw = data_dir if data_dir is not None else os.environ.get("MAILREC_DATA_DIR")
    if raw is None:
        raise DataError(
            f"no data directory for {dataset}: pass --data-dir or set MAILREC_DATA_DIR "
            "(for MovieLens, `python -m model_export download` fetches it)"
        )
    root = Path(raw).expanduser()
    for sub in DATASET_DIRS[dataset]:
        if (root / sub).is_dir():
            return root / sub
    return root


def verify(folder: Path, sums: Mapping[str, str]) -> None:
    """Check every file of `sums` exists in `folder` with the expected sha256."""
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"missing data file {path} (expected sha256 {expected})")
        actual = sha256_file(path)
        if actual != expected:
            raise DataError(f"corrupt data file {path}: sha256 {actual}, expected {expected}")


def default_cache() -> Path:
    return Path(os.environ.get("MAILREC_CACHE_DIR", Path.home() / ".cache" / "mailrec"))


def download_movielens(cache: Path | None = None, source: str = ML100K_URL, progress: bool = True) -> Path:
    """Fetch MovieLens 100K (a URL or a local zip path) into `cache`/ml-100k and verify it."""
    target = (cache or default_cache()) / "ml-100k"
    try:
        verify(target, ML100K_SHA256)
        log.info("MovieLens 100K already in %s", target)
        return target
    except DataError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "ml-100k.zip"
        if Path(source).is_file():
            shutil.copyfile(source, archive)
        else:
            try:
                _fetch(source, archive, progress)
            except OSError as exc:  # URLError, timeouts, refused connections
                raise DataError(
                    f"could not download {source} ({exc}); pass --source with a local ml-100k.zip, "
                    "or point --data-dir / MAILREC_DATA_DIR at a folder holding ml-100k/"
                ) from exc
        staging = Path(tmp) / "ml-100k"
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                name = Path(member).name
                if name in ML100K_SHA256 or name in {"u.occupation", "u.info", "README"}:
                    staging.mkdir(exist_ok=True)
                    (staging / name).write_bytes(zf.read(member))
        verify(staging, ML100K_SHA256)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    log.info("MovieLens 100K verified in %s", target)
    return target


def _fetch(url: str, dest: Path, progress: bool) -> None:
    from tqdm import tqdm

    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                bar.update(len(chunk))


# --- MovieLens 100K -----------------------------------------------------------------------------


def load_movielens(data_dir: Path | str | None = None) -> Interactions:
    folder = resolve_dir("ml-100k", data_dir)
    verify(folder, ML100K_SHA256)
    genres = [line.split("|")[0] for line in _lines(folder / "u.genre", "latin-1") if line]
    users: dict[str, dict[str, object]] = {}
    for line in _lines(folder / "u.user", "latin-1"):
        uid, age, gender, occupation, zipcode = line.split("|")
        users[uid] = {"age": int(age), "gender": gender, "occupation": occupation, "zip": zipcode}
    items: dict[str, dict[str, object]] = {}
    titles: dict[str, str] = {}
    for line in _lines(folder / "u.item", "latin-1"):
        parts = line.split("|")
        flags = parts[5:]
        date = parts[2]
        items[parts[0]] = {
            "genres": [g for g, f in zip(genres, flags, strict=True) if f == "1"],
            "year": int(date[-4:]) if len(date) >= 4 and date[-4:].isdigit() else None,
        }
        titles[parts[0]] = parts[1]
    table = np.loadtxt(folder / "u.data", dtype=np.int64, delimiter="\t", ndmin=2)
    return Interactions(
        name="ml-100k",
        users=users,
        items=items,
        titles=titles,
        user=table[:, 0].astype(str),
        item=table[:, 1].astype(str),
        label=(table[:, 2] >= ML_CLICK_RATING).astype(np.int8),
        timestamp=table[:, 3].copy(),
        is_sample=np.ones(len(table), bool),
        user_plan=(
            plan("user_id", "user_id", "text"),
            plan("age", "age", "age_bucket"),
            plan("gender", "gender", "text"),
            plan("occupation", "occupation", "text"),
            plan("zip", "zip", "zip_region"),
        ),
        item_plan=(
            plan("item_id", "item_id", "text"),
            plan("genres", "genres", "tags", slots=6),
            plan("year", "year", "decade"),
        ),
        context_plan=TIME_CONTEXT,
        notes={"label": f"rating >= {ML_CLICK_RATING}", "genres": genres},
    )


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    return path.read_text(encoding=encoding).splitlines()


# --- Book-Crossing ------------------------------------------------------------------------------


def load_book_crossing(data_dir: Path | str | None = None) -> Interactions:
    """Explicit ratings are the samples; the rest of each user's history is behavior only.

    The data has no time, so behavior is the user's implicit (unrated) books in file order; no
    rated book is ever behavior, so no label can leak through it.
    """
    folder = resolve_dir("book-crossing", data_dir)
    verify(folder, BOOK_CROSSING_SHA256)
    users: dict[str, dict[str, object]] = {}
    for line in _lines(folder / "users_info.dat")[1:]:
        uid, location, age = line.split("\t")[:3]
        users[uid] = {"age": int(age) if age.strip().isdigit() else None, "location": location}
    items: dict[str, dict[str, object]] = {}
    titles: dict[str, str] = {}
    for line in _lines(folder / "items_info.dat")[1:]:
        parts = line.split("\t")  # by position from the left: see the dataset README
        book = parts[0]
        items[book] = {
            "author": parts[3] if len(parts) > 3 else None,
            "year": parts[4] if len(parts) > 4 else None,
            "publisher": parts[5] if len(parts) > 5 else None,
        }
        titles[book] = parts[2] if len(parts) > 2 else ""
    ratings = [line.split("\t") for line in _lines(folder / "book_ratings.dat")[1:]]
    rated = {(u, i) for u, i, _ in ratings}
    implicit = [
        (u, i)
        for u, i, _ in (line.split("\t") for line in _lines(folder / "book_history.dat")[1:])
        if (u, i) not in rated
    ]
    n_s, n_b = len(ratings), len(implicit)
    return Interactions(
        name="book-crossing",
        users=users,
        items=items,
        titles=titles,
        user=np.array([r[0] for r in ratings] + [u for u, _ in implicit]),
        item=np.array([r[1] for r in ratings] + [i for _, i in implicit]),
        label=np.array([float(r[2]) >= BX_CLICK_RATING for r in ratings] + [0] * n_b, dtype=np.int8),
        timestamp=None,
        is_sample=np.r_[np.ones(n_s, bool), np.zeros(n_b, bool)],
        user_plan=(
            plan("user_id", "user_id", "text"),
            plan("age", "age", "age_bucket"),
            plan("country", "location", "country", min_count=2),
            plan("region", "location", "region", min_count=3),
        ),
        item_plan=(
            plan("item_id", "item_id", "text"),
            plan("author", "author", "text", min_count=2),
            plan("publisher", "publisher", "text", min_count=2),
            plan("year", "year", "decade"),
        ),
        context_plan=NO_CONTEXT,
        notes={"label": f"rating >= {BX_CLICK_RATING} (the median explicit rating)"},
    )


# --- Alimama (Taobao display ads, Tianchi dataId 56) -------------------------------------------

ALIMAMA_COLUMNS = {
    "raw_sample.csv": ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"),
    "ad_feature.csv": ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"),
    "user_profile.csv": (
        "userid",
        "cms_segid",
        "cms_group_id",
        "final_gender_code",
        "age_level",
        "pvalue_level",
        "shopping_level",
        "occupation",
        "new_user_class_level",
    ),
    "behavior_log.csv": ("user", "time_stamp", "btag", "cate", "brand"),
}
ALIMAMA_USER_FIELDS = ALIMAMA_COLUMNS["user_profile.csv"][1:]


def _csv_rows(path: Path) -> Iterator[list[str]]:
    """Rows of one of the four Tianchi CSVs after checking its header (names stripped)."""
    expected = ALIMAMA_COLUMNS[path.name]
    if not path.is_file():
        raise DataError(f"missing data file {path} (columns {', '.join(expected)})")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = tuple(c.strip() for c in next(reader, []))
        if header != expected:
            raise DataError(f"{path}: header {header}, expected {expected}")
        yield from reader


def _keep_user(user: str, fraction: float, seed: int) -> bool:
    """A seeded, order-free draw of users (a hash), so a sample never needs two passes."""
    return fraction >= 1.0 or zlib.crc32(f"{seed}:{user}".encode()) < fraction * 2**32


def _null(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "NULL") else value


def load_alimama(
    data_dir: Path | str | None = None, user_fraction: float = 1.0, seed: int = 0
) -> Interactions:
    """The Taobao display-ad CTR data MAIL's paper uses: ad impressions are the samples.

    Behavior is the shopping log (`behavior_log.csv`: page views, carts, favourites, buys), which
    names a category and a brand but no item: each (category, brand) pair becomes a behavior-only
    item with those two fields, shared with the ads' `cate_id` and `brand` embeddings. Ads carry
    category, brand, campaign, advertiser and a log2 price bucket; users the eight profile fields
    (users without a profile row have none). `pid` (the ad slot) is not used: context is time.
    No checksums are published for the Tianchi files, so headers are checked instead.
    `user_fraction` keeps a seeded share of users (the full log has 700 M behavior rows).
    """
    folder = resolve_dir("alimama", data_dir)
    users: dict[str, dict[str, object]] = {}
    rows_u, rows_i, rows_y, rows_t = [], [], [], []
    for user, ts, ad, _pid, _nonclk, clk in _csv_rows(folder / "raw_sample.csv"):
        if _keep_user(user, user_fraction, seed):
            users.setdefault(user, {})
            rows_u.append(user)
            rows_i.append(ad)
            rows_y.append(int(clk))
            rows_t.append(int(ts))
    n_samples = len(rows_u)
    for user, *values in _csv_rows(folder / "user_profile.csv"):
        if user in users:
            users[user] = {k: _null(v) for k, v in zip(ALIMAMA_USER_FIELDS, values, strict=True)}
    shown = set(rows_i)
    items: dict[str, dict[str, object]] = {}
    for ad, cate, campaign, customer, brand, price in _csv_rows(folder / "ad_feature.csv"):
        if ad in shown:
            p = _null(price)
            items[ad] = {
                "cate_id": _null(cate),
                "brand": _null(brand),
                "campaign_id": _null(campaign),
                "customer": _null(customer),
                "price": None if p is None else str(int(math.log2(float(p) + 1))),
            }
    for ad in shown - items.keys():
        items[ad] = {}
    for user, ts, _btag, cate, brand in _csv_rows(folder / "behavior_log.csv"):
        if user in users:
            key = f"b:{cate}:{brand}"
            if key not in items:
                items[key] = {"cate_id": _null(cate), "brand": _null(brand)}
            rows_u.append(user)
            rows_i.append(key)
            rows_y.append(0)
            rows_t.append(int(ts))
    n = len(rows_u)
    return Interactions(
        name="alimama",
        users=users,
        items=items,
        titles=dict.fromkeys(items, ""),
        user=np.array(rows_u, dtype=str),
        item=np.array(rows_i, dtype=str),
        label=np.array(rows_y, np.int8),
        timestamp=np.array(rows_t, np.int64),
        is_sample=np.r_[np.ones(n_samples, bool), np.zeros(n - n_samples, bool)],
        user_plan=(
            plan("user_id", "user_id", "text"),
            *(plan(f, f, "text") for f in ALIMAMA_USER_FIELDS),
        ),
        item_plan=(
            plan("item_id", "item_id", "text"),
            plan("cate_id", "cate_id", "text"),
            plan("brand", "brand", "text"),
            plan("campaign_id", "campaign_id", "text"),
            plan("customer", "customer", "text"),
            plan("price", "price", "text"),
        ),
        context_plan=TIME_CONTEXT,
        notes={"label": "clk == 1", "user_fraction": user_fraction},
    )


# --- synthetic ----------------------------------------------------------------------------------


def make_synthetic(
    n_users: int = 400,
    n_items: int = 300,
    per_user: int = 40,
    n_segments: int = 6,
    n_categories: int = 12,
    signal: float = 0.8,
    seed: int = 0,
) -> Interactions:
    """Users whose tastes (two liked item categories) follow their segment with p `signal`.

    The segment is a user attribute, so attributes predict behavior, partly: the rest of the
    users have tastes of their own that only their behavior reveals. 80% of a user's picks are from
    liked categories; a liked category is clicked with p 0.85, any other with p 0.15. So control
    (attributes only) < a zero-shot tower (attributes -> behavior) <= oracle (real behavior).
    """
    rng = np.random.default_rng(seed)
    item_cat = rng.integers(0, n_categories, n_items)
    prefs = [rng.choice(n_categories, 2, replace=False) for _ in range(n_segments)]
    segment = rng.integers(0, n_segments, n_users)
    users: dict[str, dict[str, object]] = {
        str(u): {
            "segment": f"s{segment[u]}",
            "age": int(rng.integers(15, 70)),
            "gender": "F" if rng.random() < 0.5 else "M",
        }
        for u in range(n_users)
    }
    items: dict[str, dict[str, object]] = {str(i): {"category": f"c{item_cat[i]}"} for i in range(n_items)}
    rows_u, rows_i, rows_y, rows_t = [], [], [], []
    by_cat = [np.flatnonzero(item_cat == c) for c in range(n_categories)]
    for u in range(n_users):
        own = prefs[segment[u]] if rng.random() < signal else rng.choice(n_categories, 2, replace=False)
        liked = set(own.tolist())
        t = 1_000_000_000 + int(rng.integers(0, 10**6))
        for _ in range(per_user):
            cat = int(rng.choice(sorted(liked))) if rng.random() < 0.8 else int(rng.integers(n_categories))
            pool = by_cat[cat] if len(by_cat[cat]) else np.arange(n_items)
            rows_u.append(str(u))
            rows_i.append(str(int(rng.choice(pool))))
            rows_y.append(int(rng.random() < (0.85 if cat in liked else 0.15)))
            t += int(rng.integers(60, 86_400))
            rows_t.append(t)
    return Interactions(
        name="synthetic",
        users=users,
        items=items,
        titles={i: f"item {i}" for i in items},
        user=np.array(rows_u),
        item=np.array(rows_i),
        label=np.array(rows_y, np.int8),
        timestamp=np.array(rows_t, np.int64),
        is_sample=np.ones(len(rows_u), bool),
        user_plan=(
            plan("user_id", "user_id", "text"),
            plan("segment", "segment", "text"),
            plan("age", "age", "age_bucket"),
            plan("gender", "gender", "text"),
        ),
        item_plan=(plan("item_id", "item_id", "text"), plan("category", "category", "text")),
        context_plan=TIME_CONTEXT,
        notes={"label": "planted: a liked category is clicked with p 0.85, others with p 0.15"},
    )


DATASETS = ("ml-100k", "book-crossing", "synthetic", "alimama")


def load(dataset: str, data_dir: Path | str | None = None, seed: int = 0) -> Interactions:
    if dataset == "ml-100k":
        return load_movielens(data_dir)
    if dataset == "book-crossing":
        return load_book_crossing(data_dir)
    if dataset == "synthetic":
        return make_synthetic(seed=seed)
    if dataset == "alimama":
        return load_alimama(data_dir)
    raise DataError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
