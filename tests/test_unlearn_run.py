import hashlib
import json

import pytest

import data
import train
import unlearn
from model import GPTConfig

TINY = train.TrainConfig(n_people=10, forget_frac=0.2, epochs=60, batch_size=8, lr=3e-3, warmup_steps=10,
                         model=GPTConfig(n_layer=1, n_embd=64, n_head=4, block_size=64))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny base (forget + retain people) and oracle (retain people) in a temporary out/."""
    out = tmp_path_factory.mktemp("out")
    enc = data.get_tokenizer()
    c = data.make_corpus(TINY.corpus_seed, TINY.n_people, TINY.forget_frac)
    for which, splits in (("base", [c.forget, c.retain]), ("oracle", [c.retain])):
        model = train.train_model([ex for s in splits for ex in data.split_examples(enc, s)], TINY)
        train.save_checkpoint(str(out / f"{which}.pt"), model, TINY, which, {})
    return out


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("loss,adapter", [("ihl", "fila"), ("ga", "full")])
def test_unlearning_forgets_and_never_touches_the_base(base_dir, tmp_path, loss, adapter):
    before = sha(base_dir / "base.pt")
    cfg = unlearn.UnlearnConfig(loss=loss, adapter=adapter, lr=1e-2, epochs=4, batch_size=4, stop=False,
                                base_dir=str(base_dir), out=str(tmp_path / "run"))
    model, r = unlearn.run(cfg, log=lambda s: None)
    unlearn.save_run(model, r)
    h = r["history"]
    assert h[0]["forget"]["qa_acc"] >= 0.9
    assert h[-1]["forget"]["qa_acc"] <= h[0]["forget"]["qa_acc"] - 0.3  # it forgot
    assert sha(base_dir / "base.pt") == before  # the base checkpoint is only read
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == {"config.json", "metrics.json", "plot.png", "model.pt" if adapter == "full" else "adapter.pt"}
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["history"][-1]["forget"] == h[-1]["forget"] and 0 <= saved["end"]["forget_quality"] <= 1
    assert (tmp_path / "run" / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "forget QA accuracy" in unlearn.summary(r)


def test_bad_flags_exit_with_one_line(capsys):
    for argv, flag in ((["--rank", "0"], "--rank"), (["--lr", "-1"], "--lr"), (["--loss", "xx"], "--loss"),
                       (["--adapter", "yy"], "--adapter"), (["--batch_size", "0"], "--batch_size"),
                       (["--alpha", "0"], "--alpha"), (["--epochs", "0"], "--epochs")):
        with pytest.raises(SystemExit) as e:
            unlearn.main(argv)
        assert str(e.value).startswith("error:") and flag in str(e.value) and "\n" not in str(e.value)
