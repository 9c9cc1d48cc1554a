"""relearn.py on a run of the tiny world: three curves of the same length, the control among them."""
import json

import pytest

import relearn
import unlearn
from lib import runfiles


def test_relearning_with_its_control(base_dir, tmp_path, capsys):
    cfg = unlearn.UnlearnConfig(loss="ga", adapter="lora", lr=1e-2, epochs=3, batch_size=4, no_stop=True,
                                base_dir=str(base_dir), out=str(tmp_path / "run"), device="cpu")
    model, r = unlearn.run(cfg, log=lambda s: None)
    runfiles.save_run(model, r)
    relearn.main([str(tmp_path / "run"), "--steps", "3", "--lr", "1e-2"])
    out = capsys.readouterr().out
    assert "unlearned, on retain people (control)" in out and "unlearned minus control" in out
    curves = json.loads((tmp_path / "run" / "relearn.json").read_text())
    assert {k: len(v) for k, v in curves.items() if isinstance(v, list)} == dict(unlearned=4, control=4, oracle=4)
    # step 0 is the unlearned model itself, whichever biographies come next
    assert curves["unlearned"][0] == curves["control"][0]
    with pytest.raises(SystemExit, match="no config.json"):
        relearn.main([str(tmp_path / "nowhere")])
