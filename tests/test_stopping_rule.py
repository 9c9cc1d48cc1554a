"""The stopping rule must not ask for more than exact unlearning: the oracle, which never saw the
forget people, meets it on the forget split (METHOD §5.3). Checked on world 0 of train.SMALL (the one
notebooks 03 and 04 use, fine-tuned once into out/small/world0); reproduce.py reports the same check
for the built-in size on worlds 1-5."""
import os

import numpy as np

import train
from lib import corpus, data, evaluation, metrics, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_oracle_meets_the_stopping_rule():
    folder = os.path.join(ROOT, "out", "small", "world0")
    tasks.finetune_missing(folder, lambda line: None, lambda which: train.finetune(which, folder, train.SMALL, log=lambda line: None))
    base, oracle, ckpt = tasks.load_world(folder, 0, "cpu", small=True)
    enc, c = data.get_tokenizer(), corpus.make_corpus(**ckpt["corpus"])
    split = {s: data.encode(enc, getattr(c, s), base.config.block_size)[0] for s in ("forget", "holdout")}
    el = lambda m, s: metrics.extraction_likelihood(m, split[s].texts, 4)
    ma = lambda m, s: metrics.memorization_accuracy(m, split[s].texts)
    right = lambda m, s: [float(metrics.says(t, f.value))  # the answer states the fact
                          for t, f in zip(evaluation.answers(m, enc, split[s], "cpu")[1], split[s].facts)]
    thr = metrics.stopping_thresholds(ma(base, "holdout"), el(base, "holdout"), len(split["forget"].texts),
                                      right(base, "holdout"), len(split["forget"].qa))
    assert np.mean(ma(base, "forget")) > thr.ma and np.mean(right(base, "forget")) > thr.qa  # something to do
    assert np.mean(ma(oracle, "forget")) < thr.ma and np.mean(el(oracle, "forget")) < thr.el
    assert np.mean(right(oracle, "forget")) < thr.qa


def test_a_run_that_goes_below_the_oracle_by_more_than_the_margin_is_flagged():
    from lib import report
    thresholds = metrics.Thresholds(ma=0.80, ma_margin=0.02, el=0.30, el_margin=0.05)
    oracle = dict(ma=0.79, el4=0.26)
    def flagged(ma, el4):
        return [name for name, *_ in report.overshoot(dict(ma=ma, el4=el4), oracle, thresholds, el_n=4)]
    assert flagged(0.78, 0.25) == []                # below the oracle, but within the noise margin
    assert flagged(0.76, 0.25) == ["MA"]            # 0.03 below: more than the 0.02 margin
    assert flagged(0.62, 0.10) == ["MA", "EL4"]     # the old README run: MA 0.624, EL4 0.102 vs 0.790, 0.262
