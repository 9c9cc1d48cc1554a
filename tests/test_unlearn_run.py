import hashlib
import json
import os
import signal

import pytest
import torch

import unlearn
from lib import report, runfiles, userio


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("loss,adapter", [("ihl", "fila"), ("ga", "full")])
def test_unlearning_forgets_and_never_touches_the_base(base_dir, tmp_path, loss, adapter):
    before = sha(base_dir / "world0" / "base.pt")
    cfg = unlearn.UnlearnConfig(loss=loss, adapter=adapter, lr=1e-2, epochs=4, batch_size=4, no_stop=True,
                                base_dir=str(base_dir), out=str(tmp_path / "run"), device="cpu")
    model, r = unlearn.run(cfg, log=lambda s: None)
    runfiles.save_run(model, r)
    h = r.history
    assert h[0].forget["qa_acc"] >= 0.9
    assert h[-1].forget["qa_acc"] <= h[0].forget["qa_acc"] - 0.3  # it forgot
    assert sha(base_dir / "world0" / "base.pt") == before  # the base checkpoint is only read
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == {"config.json", "metrics.json", "timing.json", "state.pt", "plot.png",
                     "model.pt" if adapter == "full" else "adapter.pt"}
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["history"][-1]["forget"] == h[-1].forget and saved["end"]["forget_quality"] == h[-1].forget_quality
    assert (tmp_path / "run" / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "forget QA accuracy" in report.summary(r)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["versions"]["torch"] == torch.__version__


def test_bad_flags_exit_with_one_line(capsys):
    for argv, flag in ((["--rank", "0"], "--rank"), (["--lr", "-1"], "--lr"), (["--loss", "xx"], "--loss"),
                       (["--adapter", "yy"], "--adapter"), (["--batch_size", "0"], "--batch_size"),
                       (["--alpha", "0"], "--alpha"), (["--epochs", "0"], "--epochs"), (["--fila_eps", "0"], "--fila_eps")):
        with pytest.raises(SystemExit) as e:
            unlearn.main(argv)
        assert str(e.value).startswith("error:") and flag in str(e.value) and "\n" not in str(e.value)


def tiny_cfg(base_dir, out, **kw):
    kw = dict(dict(loss="ihl", adapter="fila", lr=1e-2, epochs=3, batch_size=4, no_stop=True, device="cpu"), **kw)
    return unlearn.UnlearnConfig(base_dir=str(base_dir), out=str(out), **kw)


def run_and_save(cfg, resume=None, log=lambda s: None):
    model, r = unlearn.run(cfg, log=log, resume=resume)
    runfiles.save_run(model, r)
    return r


def test_same_seed_same_bytes(base_dir, tmp_path):
    """The same command twice: identical metrics, adapter and plot, byte for byte."""
    names = ("metrics.json", "adapter.pt", "plot.png", "config.json")
    run_and_save(tiny_cfg(base_dir, tmp_path / "a", seed=7))
    first = {f: (tmp_path / "a" / f).read_bytes() for f in names}
    run_and_save(tiny_cfg(base_dir, tmp_path / "a", seed=7))
    for f in names:
        assert (tmp_path / "a" / f).read_bytes() == first[f], f


def test_ctrl_c_saves_and_resume_continues_exactly(base_dir, tmp_path):
    run_and_save(tiny_cfg(base_dir, tmp_path / "straight"))

    def press_ctrl_c_after_epoch_1(line):
        if line.startswith("epoch  1 "):
            os.kill(os.getpid(), signal.SIGINT)

    r = run_and_save(tiny_cfg(base_dir, tmp_path / "cut"), log=press_ctrl_c_after_epoch_1)
    assert r.outcome.startswith("interrupted at step") and r.steps < 3 * 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    r = run_and_save(tiny_cfg(base_dir, tmp_path / "cut"), resume=runfiles.load_resume(str(tmp_path / "cut")))
    assert r.outcome == "finished"
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert r.metrics_json()["history"] == straight["history"] and r.end == straight["end"]
    assert (tmp_path / "cut" / "adapter.pt").read_bytes() == (tmp_path / "straight" / "adapter.pt").read_bytes()


def test_non_finite_loss_stops_cleanly_and_keeps_the_last_good_weights(base_dir, tmp_path, monkeypatch):
    calls = []
    real = unlearn.ihl_loss

    def third_call_is_nan(logits, targets):
        calls.append(1)
        out = real(logits, targets)
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(unlearn, "ihl_loss", third_call_is_nan)
    model, r = unlearn.run(tiny_cfg(base_dir, tmp_path / "nan"), log=lambda s: None)
    assert r.outcome.startswith("stopped: non-finite loss at step 3") and r.steps == 2
    state = runfiles.load_resume(str(tmp_path / "nan"))
    assert all(torch.isfinite(v).all() for v in state["weights"].values())
    assert all(torch.equal(state["weights"][k], v) for k, v in runfiles.trainable_state(model, "fila").items())


def test_unwritable_out_and_bad_rank_and_bad_checkpoint(base_dir, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit, match="cannot write to --out"):
        unlearn.main(["--base_dir", str(base_dir), "--out", str(tmp_path / "a_file" / "run")])
    with pytest.raises(SystemExit, match=r"--rank 65 exceeds .* use --rank <= 64"):
        unlearn.main(["--base_dir", str(base_dir), "--out", str(tmp_path / "r"), "--rank", "65"])
    broken = tmp_path / "broken"
    (broken / "world0").mkdir(parents=True)
    for name in ("base.pt", "oracle.pt"):
        (broken / "world0" / name).write_bytes((base_dir / "world0" / name).read_bytes()[:5000])  # truncated
    with pytest.raises(SystemExit, match=r"^error: checkpoint .*base\.pt is unreadable"):
        unlearn.main(["--base_dir", str(broken), "--out", str(tmp_path / "b")])
    ckpt = torch.load(base_dir / "world0" / "base.pt", weights_only=True)
    ckpt["model_config"]["n_embd"] = 32  # another architecture than the weights
    torch.save(ckpt, broken / "world0" / "base.pt")
    with pytest.raises(SystemExit, match="unreadable or not one of ours"):
        unlearn.main(["--base_dir", str(broken), "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="no state.pt"):
        unlearn.main(["--resume", str(tmp_path / "nothing-here")])


def test_a_bug_keeps_its_traceback_while_a_bad_input_is_one_line(base_dir, tmp_path, monkeypatch):
    """Only the project's own error type (userio.UserError: a bad flag, file or checkpoint) becomes a
    one-line `error:`; any other exception is a bug, in this code or in a modified copy of it, and
    reaches the user with its traceback."""
    args = ["--base_dir", str(base_dir), "--out", str(tmp_path / "run"), "--device", "cpu"]

    def buggy_build(cfg, log):
        raise RuntimeError("a bug in someone's modified tasks.py")
    monkeypatch.setattr(unlearn.tasks, "make_task", buggy_build)
    with pytest.raises(RuntimeError, match="modified tasks.py"):
        unlearn.main(args)
    with pytest.raises(SystemExit, match=r"^error: --epochs must be > 0, got 0$"):
        unlearn.main(args + ["--epochs", "0"])


def test_cached_measurements_follow_the_checkpoints_and_the_code(tmp_path, monkeypatch):
    """A measurement of the fixed models is reused only while the checkpoints and the code that
    measures them are byte for byte what they were: edit either and it is taken again."""
    from lib import tasks
    (tmp_path / "base.pt").write_bytes(b"base weights")
    (tmp_path / "oracle.pt").write_bytes(b"oracle weights")
    code = tmp_path / "metrics_copy.py"
    code.write_text("def metric(): return 1\n")
    monkeypatch.setattr(tasks, "CODE_HASH", tasks.source_hash([str(code)]))
    calls = []

    def measure():
        calls.append(1)
        return {"ma": 0.5 + len(calls)}
    path = str(tmp_path / "start.json")
    assert tasks.json_cache(path, measure) == {"ma": 1.5} and tasks.json_cache(path, measure) == {"ma": 1.5}
    assert len(calls) == 1  # the second call read the file
    code.write_text("def metric(): return 2\n")  # the measuring code changed (and was loaded again)
    monkeypatch.setattr(tasks, "CODE_HASH", tasks.source_hash([str(code)]))
    assert tasks.json_cache(path, measure) == {"ma": 2.5}
    (tmp_path / "base.pt").write_bytes(b"retrained base weights")  # the checkpoint changed
    assert tasks.json_cache(path, measure) == {"ma": 3.5} and len(calls) == 3


def test_a_real_models_runs_have_their_own_folder():
    """A real-model run does not overwrite the built-in default's folder: it goes beside its worlds; a run
    on the user's files is named after the forget file, so it does not overwrite the built-in world's run."""
    assert unlearn.resolve(unlearn.UnlearnConfig()).out == os.path.join("out", "ihl-fila-s0")
    assert unlearn.resolve(unlearn.UnlearnConfig(init_from="smollm2-135m", loss="gd", adapter="lora")).out == \
        os.path.join("out", "smollm2-135m", "gd-lora-s0")
    files = unlearn.UnlearnConfig(init_from="smollm2-135m", forget_file=os.path.join("data", "einstein.txt"))
    assert unlearn.resolve(files).out == os.path.join("out", "smollm2-135m", "einstein-ihl-fila-s0")  # nor the world's
