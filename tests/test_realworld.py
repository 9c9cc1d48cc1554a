"""The real-world questions (lib/realworld.py): every question of the pool is well made, and the kept list
in assets/ is a part of the pool that a real model was measured to know."""
import json
import random

import pytest

from lib import metrics, realworld
from lib.userio import UserError


def test_every_pool_question_is_well_made():
    rng = random.Random(0)
    for category, subject in realworld.candidates():
        q = realworld.question(category, subject, rng)
        value = realworld.POOL[category][2][subject]
        assert q.prompt.startswith("Question: ") and q.prompt.endswith("\nAnswer:")
        assert q.answer.strip().startswith(realworld.completion_prompt(category, subject)), (category, subject)
        assert metrics.says(q.answer, value) and metrics.says(q.paraphrase, value)
        assert len(q.perturbed) == len(q.perturbed_paraphrase) == 3
        assert not any(metrics.says(w, value) for w in q.perturbed + q.perturbed_paraphrase), (category, subject)
        assert metrics.well_formed(q.answer.strip(), True, q) and value in q.values
        assert not metrics.says(subject, value)  # else any answer that repeats the question would count as right


def test_replay_never_holds_a_scored_question():
    rng = random.Random(0)
    for category, (_, _, facts) in realworld.REPLAY.items():
        for subject in facts:
            q = realworld.question(category, subject, rng, realworld.REPLAY)
            assert metrics.well_formed(q.answer.strip(), True, q) and not metrics.says(subject, q.value)
    scored = {q.prompt for q in realworld.split().qa}
    assert scored and not scored & {q.prompt for q in realworld.replay().qa}


def test_the_kept_list_is_part_of_the_pool_and_seeded():
    saved = json.load(open(realworld.ASSET))
    assert len(saved["kept"]) + len(saved["not_kept"]) == len(realworld.candidates())
    a, b = realworld.split(), realworld.split()
    assert len(a.qa) == len(saved["kept"]) >= 100 and a.qa == b.qa


def test_a_list_naming_unknown_questions_is_a_clear_error(tmp_path):
    (tmp_path / "rw.json").write_text(json.dumps(dict(kept=[["capital", "Atlantis"]])))
    with pytest.raises(UserError, match="the pool does not have"):
        realworld.split(str(tmp_path / "rw.json"))


@pytest.mark.parametrize("which", ["base", "oracle"])
def test_the_shipped_fine_tunes_match_their_recipe(which):
    """assets/smollm2-135m-world0-*.pt are what `python train.py --init_from smollm2-135m` makes with
    today's recipe, world and questions (realmodel.recipe): a first run uses them instead of fine-tuning."""
    import torch
    from dataclasses import asdict
    from lib import realmodel
    cfg = realmodel.RealTrainConfig()
    path = realmodel.shipped(which, cfg)
    assert path is not None, f"no shipped {which} fine-tune for {cfg.init_from}, world {cfg.corpus_seed}"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["train_config"] == asdict(cfg) and ckpt["which"] == which
    assert ckpt["recipe"] == realmodel.recipe(cfg)
    assert all(v.dtype == torch.bfloat16 for v in ckpt["adapter"].values())
