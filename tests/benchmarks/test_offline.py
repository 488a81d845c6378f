"""The offline benchmark: every method builds on both towers, and a smoke run writes its report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.offline.__main__ import catalog_plan, main, only_protocols
from benchmarks.offline.methods import METHODS
from model_export import baselines
from model_export.model import RANKERS, MailModel, RankerConfig, ZeroShotConfig, ZeroShotTower
from model_export.pipeline import RunSpec, prepare
from model_export.train import TrainHooks


@pytest.mark.parametrize("kind", ["base", "din"])
def test_every_method_builds_on_both_towers(kind: str) -> None:
    prepared = prepare(
        RunSpec(dataset="synthetic", protocol="strict", behavior_len=8, d_embed=8, model=_cfg(kind))
    )
    schema, catalog = prepared.encoded.schema, torch.from_numpy(prepared.encoded.catalog.features)
    zst = ZeroShotConfig(d_hidden=8, width=16, d_attention=8)
    for method in METHODS.values():
        if method.name.startswith("popularity"):  # trains nothing: the suite scores training counts
            with pytest.raises(TypeError):
                method.build(RankerConfig(kind=kind), zst, None, 0)
            continue
        assert method.values and (method.knob is None) == (len(method.values) == 1)
        for value in method.values:
            built = method.build(RankerConfig(kind=kind, hidden=(16, 8), d_attention=8), zst, value, 0)
            model = (built.hooks or TrainHooks()).build(built.model, schema, catalog)
            assert isinstance(model, MailModel) and isinstance(model.ranker, RANKERS[kind])
            is_mail = method.name.startswith("mail")
            assert (type(model.zst) is ZeroShotTower) == is_mail, method.name
    zst_of = {
        m: METHODS[m].build(RankerConfig(), zst, None, 0).model.zero_shot
        for m in METHODS
        if not m.startswith("popularity")
    }
    assert zst_of["mail"] is not None and zst_of["mail"].align == "mmd"
    assert zst_of["mail-mse"] is not None and zst_of["mail-mse"].align == "mse"
    assert zst_of["mail-none"] is not None and zst_of["mail-none"].variant == "none"
    single, dual = zst_of["mail-single"], zst_of["mail-dual"]
    assert single is not None and (single.w_a, single.w_v, single.w_d, single.cross) == (1.0, 0.0, 0.0, True)
    assert dual is not None and (dual.w_a, dual.w_v, dual.w_d) == (1.0, 1.0, 0.0)
    assert isinstance(METHODS["llae"].build(RankerConfig(), zst, 3e-3, 0).hooks, baselines.GeneratorHooks)
    assert METHODS["mail-blend"].build(RankerConfig(), zst, None, 0).model.fill == "blend"
    # virtual behavior (or old users' mean) at inference only: never in a training row
    for name in ("mail-infer-only", "mean-fill-infer-only"):
        built = METHODS[name].build(RankerConfig(), zst, METHODS[name].values[0], 0)
        assert not built.model.fill_train and built.model.fill == "hard", name
    assert METHODS["mail"].build(RankerConfig(), zst, None, 0).model.fill_train
    # the DIN tower's virtual items through their own attention unit: only that changes from mail
    din = RankerConfig(kind="din", item_prior=True)
    shared = METHODS["mail"].build(din, zst, None, 0).model
    for name, mode in (("mail-own-attention", "own"), ("mail-own-attention-detached", "own-detached")):
        own = METHODS[name].build(din, zst, None, 0).model
        assert own.ranker is not None and own.ranker.virtual_attention == mode
        assert replace(own, ranker=replace(own.ranker, virtual_attention="shared")) == shared
    assert METHODS["mean-fill"].build(RankerConfig(), zst, True, 0).model.fill_train


def _cfg(kind: str):  # type: ignore[no-untyped-def]
    from model_export.model import ModelConfig

    return ModelConfig(model="control", ranker=RankerConfig(kind=kind))


@pytest.mark.slow  # trains every method of the grid
def test_smoke_benchmark_tunes_on_validation_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "offline-smoke"
    assert main(["--smoke", "--task", "rating", "--out", str(out), "--jobs", "2"]) == 0  # worker processes
    result = json.loads(out.with_name("offline-smoke.json").read_text())
    rows = out.with_name("offline-smoke.jsonl").read_text().splitlines()
    # tuning: each tuned method tried all its values on seed 0 and kept the best validation AUC
    assert {t["method"] for t in result["tuning"]} == {"control", "mean-fill", "mail"}
    for t in result["tuning"]:
        assert [x["value"] for x in t["tried"]] == list(METHODS[t["method"]].values)
        assert t["chosen"] == max(t["tried"], key=lambda x: x["val_new_auc"])["value"]
    assert result["chosen"]["mail-blend"] == result["chosen"]["mail"]
    # every planned cell has a row; the summary has lift and gap closed against control and oracle
    methods = {(r["dataset"], r["protocol"], r["ranker"], r["method"]): r for r in result["summary"]}
    mail = methods[("synthetic", "strict", "base", "mail")]
    assert mail["seeds"] == [0, 1] and "new_auc_lift_pct" in mail and "new_auc_gap" in mail
    assert ("synthetic", "strict", "din", "mail") in methods
    fewshot = {(r["protocol"], r["method"]) for r in result["fewshot"]}
    assert fewshot == {
        (f"strict, n={n}", m) for n in (1, 3, 5) for m in ("control", "oracle", "mail", "mail-blend")
    }
    assert set(result["loss_curves"]) == {"mail"} and {"L_rt", "L_a", "L_v", "L_d"} <= set(
        result["loss_curves"]["mail"][0]
    )
    for png in ("auc", "losses", "fewshot"):
        assert out.with_name(f"offline-smoke-{png}.png").stat().st_size > 5_000
    text = out.with_name("offline-smoke.md").read_text()
    assert (
        "| control | ranker dropout |" in text
        and "Against the paper" in text
        and "n=" not in text.split("Few-shot")[0]
    )
    # a rerun resumes: nothing trains again, the same numbers come out
    n_rows = len(rows)
    assert main(["--smoke", "--task", "rating", "--out", str(out), "--no-plots", "--jobs", "1"]) == 0
    again = json.loads(out.with_name("offline-smoke.json").read_text())
    assert again["runs_this_invocation"] == 0 and again["summary"] == result["summary"]
    assert [i["runs"] for i in again["invocations"]] == [len(rows), 0]  # the measured run stays on record
    assert len(out.with_name("offline-smoke.jsonl").read_text().splitlines()) == n_rows


@pytest.mark.slow  # trains every method of the grid
def test_smoke_catalog_benchmark_ranks_the_whole_catalog_against_popularity(tmp_path: Path) -> None:
    out = tmp_path / "offline-catalog-smoke"
    assert main(["--smoke", "--out", str(out), "--jobs", "1"]) == 0
    result = json.loads(out.with_name("offline-catalog-smoke.json").read_text())
    assert result["tuning"] == [] and result["budget"]["train"]["task"] == "catalog"
    methods = {(r["ranker"], r["method"]): r for r in result["summary"]}
    mail, popular = methods[("base", "mail")], methods[("base", "popularity")]
    assert popular["train_seconds"] == 0.0 and "new_ndcg@10_vs_pop_pct" not in popular
    assert "new_ndcg@10_vs_pop_pct" in methods[("base", "popularity-segment")]
    for key in ("new_ndcg@10", "new_precision@10", "new_hr@10", "new_recall@50", "new_auc", "old_ndcg@10"):
        assert 0.0 <= mail[key][0] <= 1.0, key
    assert "new_ndcg@10_vs_pop_pct" in mail and "new_ndcg@10_lift_pct" in mail
    fewshot = {(r["protocol"], r["method"]) for r in result["fewshot"]}
    assert fewshot == {
        (f"strict, n={n}", m)
        for n in (1, 3, 5, 10)
        for m in ("control", "mail", "mail-blend", "popularity", "popularity-segment")
    }
    text = out.with_name("offline-catalog-smoke.md").read_text()
    assert "| method | seeds | new NDCG@10 | vs control (p) | vs popularity (p) |" in text
    # every trained run kept new users' own checkpoint: new users both ways, paired
    by = {(r["ranker"], r["method"]): r for r in result["checkpoints"]}
    assert {("base", "control"), ("base", "mail")} <= set(by)
    for r in by.values():
        assert len(r["cold_epochs"]) == len(r["best_epochs"]) == r["seeds"]
        assert 0.0 <= r["ndcg@10"]["two"] <= 1.0 and 0.0 <= r["ndcg@10"]["one"] <= 1.0
    assert "## Two checkpoints" in text
    for png in ("ndcg", "fewshot"):
        assert out.with_name(f"offline-catalog-smoke-{png}.png").stat().st_size > 5_000


def test_reveals_are_computed_once_per_prepared_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few-shot reveals belong to one split: a second dataset (task_choice's next seed) gets its own."""
    from types import SimpleNamespace

    from benchmarks.offline import suite

    calls: list[tuple[object, int]] = []

    def reveal(data: object, split: object, n: int, clicks_only: bool) -> dict[str, object]:
        calls.append((split, n))
        return {}

    monkeypatch.setattr(suite, "reveal", reveal)
    monkeypatch.setattr(suite, "_CACHE", {})
    first, second = (SimpleNamespace(interactions=None, split=object()) for _ in range(2))
    suite._reveals(first, True, (1, 3))  # type: ignore[arg-type]
    suite._reveals(first, True, (1, 3))  # type: ignore[arg-type]
    assert [n for _, n in calls] == [1, 3]
    suite._reveals(second, True, (1, 3))  # type: ignore[arg-type]
    assert [split for split, _ in calls[2:]] == [second.split, second.split]


def test_a_list_cell_prepares_the_data_its_settings_tower_reads() -> None:
    """A setting's cells share one prepared dataset per worker: a list cell that runs first must
    prepare it for the setting's tower (DIN reads 4 virtual slots), or the trained cells after it
    fail ("schema has 1 virtual slots, ranker wants 4", seen running the DIN block)."""
    from benchmarks.offline import suite
    from benchmarks.offline.runner import Cell

    scale = suite.Scale(d_embed=8, behavior_len=8, ranker=RankerConfig(hidden=(16, 8), d_attention=8))
    for kind in ("din", "base"):
        cell = Cell("synthetic", "strict", kind, "popularity", 0)
        ranker = RankerConfig(kind=kind, hidden=(16, 8), d_attention=8)
        suite.run_job(suite.Job(cell, None, ranker, scale, None, fewshot=False, keep_batches=False))
        assert suite._CACHE["prepared"].encoded.schema.virtual_slots == RANKERS[kind].default_slots


def test_protocols_keep_only_those_settings(tmp_path: Path) -> None:
    """--protocols: a time budget within blocks (Book-Crossing's strict setting without its paper
    protocol, say); a block left with no setting is dropped, and nothing left is an error."""
    blocks = only_protocols(catalog_plan().blocks, {"strict"})
    by = {b.name: b for b in blocks}
    assert [s.protocol for s in by["book-crossing"].settings] == ["strict"]
    assert "protocol" not in by and "protocol-fill" not in by and "main" in by
    assert only_protocols(catalog_plan().blocks, {"days"}) == []
    for bad in ("nope", "mail"):  # unknown; known, but the smoke plan has none
        with pytest.raises(SystemExit):
            main(["--smoke", "--protocols", bad, "--out", str(tmp_path / "x"), "--jobs", "1"])
    assert not list(tmp_path.iterdir())


def test_rows_of_another_early_stopping_rule_are_neither_resumed_nor_reported(tmp_path: Path) -> None:
    """Cells do not name the rule early stopping keeps weights by (`select`), so a rerun under
    another rule must not resume from, or report, rows kept by the first: each trained row records
    its rule, a row that records none counts as the old default's, and a list has no rule."""
    from benchmarks.offline.__main__ import smoke_plan
    from benchmarks.offline.suite import UNRECORDED_SELECT, Block, Plan, Setting, Suite

    base = smoke_plan(catalog=True).scale
    block = Block("b", "b", (Setting("synthetic", "strict"),), ("control", "popularity"), (0,))
    rows_path = tmp_path / "rows.jsonl"

    def suite(select: str) -> Suite:
        scale = replace(base, train={**base.train, "select": select})
        return Suite(Plan([block], scale, tune=False), None, rows_path, progress=False)

    served = suite("ndcg-served")
    first = served.execute()
    assert [r.get("select") for r in first] == ["ndcg-served", None] and served.ran == 2
    old = suite("ndcg")
    assert old.other_rule == 1  # control's row; popularity's serves every rule
    assert [r["cell"]["method"] for r in old.execute(run=False)] == ["popularity"]
    again = old.execute()
    same = json.dumps  # rows hold NaN (no old user in a few-shot case), which equals nothing
    assert old.ran == 1 and again[0]["select"] == "ndcg" and same(again[1]) == same(first[1])
    lines = rows_path.read_text().splitlines()
    assert len(lines) == 3  # both control rows stay in the file; each rule finds its own
    assert same(suite("ndcg-served").execute(run=False)[0]) == same(first[0])
    assert same(suite("ndcg").execute(run=False)[0]) == same(again[0])
    unrecorded = {k: v for k, v in json.loads(lines[2]).items() if k != "select"}
    rows_path.write_text(json.dumps(unrecorded) + "\n")
    assert UNRECORDED_SELECT == "ndcg" and suite("ndcg").other_rule == 0
    assert suite("ndcg-served").other_rule == 1


def test_rows_of_another_budget_are_neither_resumed_nor_reported(tmp_path: Path) -> None:
    """Cells do not name the budget either (TrainConfig's epochs and patience, whose defaults
    changed on 2026-12-03): each trained row records it, and a row that records none counts as
    patience 2 and the plan's epochs (every plan names its epochs)."""
    from benchmarks.offline.__main__ import smoke_plan
    from benchmarks.offline.suite import UNRECORDED_PATIENCE, Block, Plan, Setting, Suite

    base = smoke_plan(catalog=True).scale
    block = Block("b", "b", (Setting("synthetic", "strict"),), ("control", "popularity"), (0,))
    rows_path = tmp_path / "rows.jsonl"

    def suite(**budget: int) -> Suite:
        scale = replace(base, train={**base.train, **budget})
        return Suite(Plan([block], scale, tune=False), None, rows_path, progress=False)

    first = suite(patience=2).execute()
    assert first[0]["budget"] == {"epochs": 1, "patience": 2} and "budget" not in first[1]
    longer = suite(patience=3)
    assert longer.other_rule == 1  # control's row; popularity's has no training
    again = longer.execute()
    assert longer.ran == 1 and again[0]["budget"] == {"epochs": 1, "patience": 3}
    assert suite(epochs=2, patience=2).other_rule == 2  # neither control row
    assert suite(patience=2).other_rule == 1
    unrecorded = {k: v for k, v in json.loads(rows_path.read_text().splitlines()[0]).items() if k != "budget"}
    rows_path.write_text(json.dumps(unrecorded) + "\n")
    assert UNRECORDED_PATIENCE == 2 and suite(patience=2).other_rule == 0
    assert suite(patience=3).other_rule == 1
    # its epochs are taken to be the plan's (the committed results files record them since)
    assert suite(epochs=2, patience=2).other_rule == 0


def test_report_only_without_rows_of_the_plan_says_so(tmp_path: Path) -> None:
    """`--report-only` on a file that holds no row of the plan (here the rating task's quick rows,
    committed) exits saying so, and writes no report (it used to fail drawing an empty plot)."""
    out = tmp_path / "offline-catalog-quick"
    committed = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "offline-quick.jsonl"
    out.with_name(out.name + ".jsonl").write_text(committed.read_text().splitlines()[0] + "\n")
    with pytest.raises(SystemExit, match="holds no row of this plan"):
        main(["--report-only", "--quick", "--out", str(out), "--jobs", "1"])
    assert not out.with_name(out.name + ".json").exists() and not out.with_name(out.name + ".md").exists()


def test_budget_flag_parses_and_is_the_full_plans_alone(tmp_path: Path) -> None:
    """`--budget EPOCHS,PATIENCE` sets every run's cap and patience (the rows then record it);
    malformed values and the 1-epoch modes are refused before anything trains."""
    from benchmarks.offline.__main__ import _budget_arg

    assert _budget_arg("20,3") == (20, 3)
    for bad in ("20", "20,x", "0,3", "20,3,1"):
        with pytest.raises(Exception, match="EPOCHS,PATIENCE|at least 1"):
            _budget_arg(bad)
    for mode in ("--quick", "--smoke"):
        with pytest.raises(SystemExit):
            main([mode, "--budget", "20,3", "--out", str(tmp_path / "x"), "--jobs", "1"])
    assert not list(tmp_path.iterdir())
