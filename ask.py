"""Ask a run's models a question: the starting model's, the unlearned model's and the oracle's
greedy answers side by side, and, where the answers part, each model's three likeliest next tokens.

    python ask.py out/ihl-fila-s0 "Angor Telvor works as what?"   # a question as the world asks it
    python ask.py out/my-run "The door code of the lab is"         # a run on your own files: any prompt

On the built-in world a question is put the way the world asks them ("Question: ...\\nAnswer:") and
the oracle (never trained on the forget people) answers too; a prompt that already starts with
"Question:", and any prompt to a run on your own files, is used as written.
"""
import argparse
import sys

import torch

from lib import corpus, evaluation, metrics, runfiles
from lib.userio import UserError


def top3(model, ids, enc):
    """The three likeliest next tokens after `ids` and their probabilities, as text."""
    with torch.no_grad():
        p = model(torch.tensor([ids[-model.config.block_size:]]))[0, -1].softmax(-1)
    best = p.topk(3)
    return " · ".join(f"{evaluation.decode(enc, [t]).strip() or repr(evaluation.decode(enc, [t]))} {v:.2f}"
                      for v, t in zip(best.values.tolist(), best.indices.tolist()))


def ask(run, question, max_new=24):
    """-> the lines that main prints."""
    cfg, base, unlearned, oracle, enc = runfiles.load_run(run)
    own_files = bool(cfg.get("forget_file"))
    prompt = question if own_files or question.startswith("Question:") else corpus.qa_prompt(question)
    ids = enc.encode_ordinary(prompt)
    if not ids:
        raise UserError("the question is empty")
    ids = ids[-(base.config.block_size - 1):]  # room for at least one new token
    models = {"before (starting model)": base, "after (unlearned)": unlearned}
    models |= {"oracle (never saw them)": oracle} if oracle is not None else {}
    said = {name: metrics.greedy_answers(m, [ids], enc.eot_token, max_new)[0] for name, m in models.items()}
    lines = [prompt] + [f"  {name:25s}{evaluation.decode(enc, t).replace(enc.decode([enc.eot_token]), '').strip()}"
                        for name, t in said.items()]
    answers = list(said.values())
    k = next((i for i in range(max(map(len, answers))) if len({tuple(a[i:i + 1]) for a in answers}) > 1), None)
    if k is None:
        return lines + ["the answers are the same"]
    shared = answers[0][:k]
    lines.append(f"where they part, after {evaluation.decode(enc, ids[-4:] + shared)!r}:")
    return lines + [f"  {name:25s}{top3(m, ids + shared, enc)}" for name, m in models.items()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a run folder written by unlearn.py, e.g. out/ihl-fila-s0")
    p.add_argument("question", help='e.g. "Angor Telvor works as what?" (or any prompt, for a run on your own files)')
    p.add_argument("--max_new", type=int, default=24, help="most tokens of each answer")
    a = p.parse_args(argv)
    try:
        print("\n".join(ask(a.run, a.question, a.max_new)))
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
