"""ask.py on a run of the tiny world: the three models' answers, where they part, and clear errors."""
import json

import pytest

import ask
import unlearn
from lib import corpus, runfiles
from conftest import TINY_WORLD


def test_ask_shows_three_answers_and_where_they_part(base_dir, tmp_path, capsys):
    cfg = unlearn.UnlearnConfig(loss="ga", adapter="full", lr=1e-3, epochs=4, batch_size=4, no_stop=True,
                                base_dir=str(base_dir), out=str(tmp_path / "run"), device="cpu")
    model, r = unlearn.run(cfg, log=lambda s: None)
    runfiles.save_run(model, r)
    q = corpus.make_corpus(**TINY_WORLD).forget.qa[0]
    question = q.prompt.removeprefix("Question: ").removesuffix("\nAnswer:")
    ask.main([str(tmp_path / "run"), question])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == q.prompt.splitlines()[0] and out[1] == "Answer:"
    assert [line.split()[0] for line in out[2:5]] == ["before", "after", "oracle"]
    assert q.answer.strip() in out[2]  # the starting model knows the forget person
    # gradient ascent changed the answer: the line after the answers names where they part, then
    # each model's three likeliest next tokens there
    assert out[5].startswith("where they part, after") and all(line.count("·") == 2 for line in out[6:9])


def test_ask_says_in_one_line_what_is_wrong_with_the_folder(tmp_path):
    for folder, message in ((tmp_path / "nothing", "no config.json"), (tmp_path / "foreign", "not written by unlearn.py"),
                            (tmp_path / "unsaved", "has no adapter.pt")):
        folder.mkdir()
        if folder.name == "foreign":
            (folder / "config.json").write_text(json.dumps({"hello": 1}))
        if folder.name == "unsaved":
            (folder / "config.json").write_text(json.dumps(dict(unlearn.UnlearnConfig().__dict__)))
        with pytest.raises(SystemExit) as e:
            ask.main([str(folder), "Who?"])
        assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)
