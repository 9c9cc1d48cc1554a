"""The experiments still run: the protocol's and the search's machinery on the tiny world of
conftest.py (one run per setting, a few steps), and every table they write from its rows."""
from experiments import bench, real_protocol, reproduce, world_search


def test_protocol_rows_and_tables(base_dir, tmp_path):
    rows = [reproduce.one_run(str(tmp_path), 0, str(base_dir), epochs=2, eval_every=2, loss=loss, adapter=adapter,
                              lr=1e-2, retain_weight=1.0)
            for loss, adapter in {pair for _, a, b in reproduce.COMPARISONS for pair in (a, b)}]
    again = reproduce.one_run(str(tmp_path), 0, str(base_dir), epochs=2, eval_every=2, loss="ihl", adapter="fila",
                              lr=1e-2, retain_weight=1.0)
    assert again == next(r for r in rows if (r["loss"], r["adapter"]) == ("ihl", "fila"))  # read back, not rerun
    for r in rows:
        assert 0 <= r["forget_qa"] <= 1 and r["steps"] > 0 and len(r["checks"]) >= 3
    assert reproduce.best_setting(rows) in rows
    text = "\n".join([reproduce.grid_table(rows), reproduce.comparisons_table(rows), reproduce.oracle_table(rows),
                      reproduce.checks_table(rows)])
    assert "| IHL | fila | 0.01 | 1 |" in text and "All goals met on" in text
    adapters = real_protocol.adapters_table([dict(r, real_world_qa=0.5) for r in rows])  # the real model's split
    assert all(f"| 0 | {ad} |" in adapters for ad in ("fila", "lora", "pissa")) and "| 0 | full |" not in adapters
    real = [dict(r, real_world_qa=0.5, start=dict(r["start"], real_world_qa=0.6)) for r in rows]
    real_protocol.tradeoff_figure(real, str(tmp_path / "tradeoff.png"))
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    search_rows = [dict(r, candidate="tiny") for r in rows]
    assert world_search.best_run(search_rows) in search_rows and "| tiny |" in world_search.table(search_rows)


def test_a_grid_setting_that_is_the_default_is_the_defaults_run():
    default = dict(loss="ihl", adapter="fila", lr=1e-4, retain_weight=1.0, rank=8)
    same, other = dict(loss="ihl", adapter="fila", lr=1e-4, retain_weight=1.0), dict(loss="ihl", adapter="lora", lr=1e-4, retain_weight=1.0)
    assert real_protocol.grid_job(2, same, default) == (2, "default-", default)
    assert real_protocol.grid_job(2, other, default) == (2, "", other)
    assert real_protocol.grid_job(2, dict(same, lr=3e-4), default)[1] == ""


def test_goals_table_counts_and_names_the_missed_goals():
    ok, miss = ["forget QA near the holdout level", True, ""], ["forget QA near the holdout level", False, ""]
    rule = ["stopping rule met", True, ""]
    rows = [dict(loss="ihl", adapter="lora", lr=1e-3, world=1, checks=[rule, ok]),
            dict(loss="ihl", adapter="lora", lr=1e-3, world=2, checks=[rule, miss]),
            dict(loss="gd", adapter="lora", lr=3e-4, world=2, checks=[rule, ok])]
    lines = real_protocol.goals_table(rows).splitlines()
    assert lines[2] == "| IHL | lora | 0.001 | 2 of 2 | 1 of 2 (missed: forget QA) | 1 of 2 |"
    assert lines[3] == "| GD | lora | 0.0003 | – | 2 of 2 | 1 of 1 |"


def test_a_verdict_names_what_each_side_does_better():
    row = lambda loss, steps, retain: dict(loss=loss, adapter="lora", world=1, met=True, steps=steps, forget_qa=0.2,
                                           retain_qa=retain, fluency=0.5)
    table = reproduce.comparisons_table([row("gd", 21, 0.97), row("ihl", 9, 0.94)], [("2", ("gd", "lora"), ("ihl", "lora"))])
    assert "| equal forgetting: IHL + lora fewer steps; GD + lora more retain QA |" in table


def test_step_flops_count_lora_as_cheaper():
    cfg, B, T, _ = bench.SHAPES["default"]
    full, lora = bench.step_flops(cfg, B, T, 4, False), bench.step_flops(cfg, B, T, 4, True)
    assert lora < full  # LoRA skips the weight gradients of every dense matrix
