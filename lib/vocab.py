"""Real checkpoints' tokenizers as tiktoken encodings: byte-level BPE from a Hugging Face
tokenizer.json or from a GGUF file's metadata (SmolLM2, Llama 3, GPT-2-style vocabularies).

tiktoken merges, inside each pre-tokenized chunk, the adjacent pair whose concatenation has the lowest
rank, and a token's rank is its id. Hugging Face's BPE merges the adjacent pair that is listed earliest
among the merges. The two agree when merge k of the file makes a token whose id grows with k (SmolLM2:
merge k makes id 252 + k), which `byte_level` checks (it refuses a vocabulary where it does not hold),
and when no pair outside the merges list joins into a token (tiktoken would join it; OpenAI's and
SmolLM2's vocabularies are built so that this does not happen). Tests compare with HF's tokenizer. The pre-tokenizer is a regex: GPT-2's, SmolLM2's (every digit on
its own first, then GPT-2's), or the one a tokenizer.json's Split names (Llama 3).
"""
import json
import os

import tiktoken

from lib.userio import UserError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# SmolLM2: Digits(individual_digits) then GPT-2's regex on each piece, as one regex. A digit is a chunk
# of its own, and whitespace before a digit stays a chunk of its own (it ended a piece).
DIGITS_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
GGUF_PRE = {"gpt-2": GPT2_PATTERN, "default": GPT2_PATTERN, "smollm": DIGITS_PATTERN}  # tokenizer.ggml.pre


def unicode_to_byte():
    """GPT-2's byte-level alphabet: token strings in vocab.json, tokenizer.json and GGUF write byte b as
    chr(b) when it is printable and not a space, else the others as chr(256 + k) in byte order."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + k): b for k, b in enumerate(others)}


class Tokenizer(tiktoken.Encoding):
    """A tiktoken Encoding that knows the model's own end token (eot_token: what ends an answer and
    stops generation) and its vocabulary size. Bytes with no token of their own (SmolLM2 has 21, most of
    which never occur in UTF-8) get placeholder ranks past the vocabulary; encode_ordinary drops them,
    as Hugging Face's tokenizer drops them. (Inside a run of punctuation, Hugging Face then merges the
    neighbours of a dropped byte; this does not.)"""

    def __init__(self, name, pat_str, ranks, specials, end_token):
        self.n_real = max(list(ranks.values()) + list(specials.values())) + 1
        missing = [bytes([b]) for b in range(256) if bytes([b]) not in ranks]
        ranks = ranks | {b: self.n_real + k for k, b in enumerate(missing)}
        super().__init__(name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=specials)
        if end_token not in specials:
            raise UserError(f"the tokenizer's end token {end_token!r} is not one of its special tokens")
        self.end_token = end_token

    @property
    def eot_token(self):
        return self._special_tokens[self.end_token]

    @property
    def n_vocab(self):
        return self.n_real

    def encode_ordinary(self, text):
        return [t for t in super().encode_ordinary(text) if t < self.n_real]


def byte_level(name, tokens, merges, specials, end_token, pat_str):
    """tokens: {token string in the byte-level alphabet: id} of the ordinary tokens; merges: ["a b", ...]
    in merge order. Checks that the ids follow the merge order (see the module's docstring)."""
    to_byte = unicode_to_byte()
    try:
        ranks = {bytes(to_byte[c] for c in t): i for t, i in tokens.items()}
    except KeyError as e:
        raise UserError(f"{name}: token character {e.args[0]!r} is not in the byte-level alphabet "
                        f"(a SentencePiece vocabulary? only byte-level BPE is supported)") from None
    last = -1
    for k, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        made = tokens.get(a + b)
        if made is None or made <= last:
            raise UserError(f"{name}: merge {k} ({a!r} + {b!r}) does not make a token with a larger id "
                            f"than the merges before it; tiktoken cannot reproduce this vocabulary")
        last = made
    return Tokenizer(name, pat_str, ranks, specials, end_token)


def from_gguf(fields, name):
    """The tokenizer stored in a GGUF file's metadata (field name -> value)."""
    if fields.get("tokenizer.ggml.model") != "gpt2":
        raise UserError(f"{name}: tokenizer.ggml.model={fields.get('tokenizer.ggml.model')!r}; "
                        f"only byte-level BPE ('gpt2') is supported")
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE:
        raise UserError(f"{name}: tokenizer.ggml.pre={pre!r} is not supported ({', '.join(GGUF_PRE)})")
    if missing := [k for k in ("tokens", "token_type", "merges", "eos_token_id") if f"tokenizer.ggml.{k}" not in fields]:
        raise UserError(f"{name}: the GGUF metadata lacks tokenizer.ggml.{', tokenizer.ggml.'.join(missing)}")
    strings, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    ordinary = {t: i for i, (t, kind) in enumerate(zip(strings, types)) if kind == 1}  # 1: normal
    specials = {t: i for i, (t, kind) in enumerate(zip(strings, types)) if kind in (3, 4)}  # control, user
    end = strings[fields["tokenizer.ggml.eos_token_id"]]
    return byte_level(name, ordinary, fields["tokenizer.ggml.merges"], specials, end, GGUF_PRE[pre])


def pattern_of(pre, name):
    """The regex of a tokenizer.json's pre_tokenizer, for the shapes byte-level vocabularies use."""
    parts = pre.get("pretokenizers", [pre]) if pre else []
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return GPT2_PATTERN
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return DIGITS_PATTERN
    if kinds == ["Split", "ByteLevel"] and "Regex" in parts[0].get("pattern", {}) and not parts[1].get("use_regex", True):
        return parts[0]["pattern"]["Regex"]
    raise UserError(f"{name}: pre_tokenizer {kinds} is not supported (ByteLevel, Digits + ByteLevel, Split + ByteLevel)")


def from_tokenizer_json(folder):
    """The tokenizer of a Hugging Face folder: tokenizer.json, and its end token from
    tokenizer_config.json's eos_token (else config.json's eos_token_id)."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        raise UserError(f"{folder}: no tokenizer.json (a Llama folder needs it)")
    tj = json.load(open(path, encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(f"{path}: model type {model.get('type')!r}: only byte-level BPE is supported")
    specials = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    ordinary = {t: i for t, i in model["vocab"].items() if t not in specials}
    end = None
    tc = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(tc):
        end = json.load(open(tc)).get("eos_token")
        end = end.get("content") if isinstance(end, dict) else end
    if end is None:
        eos = json.load(open(os.path.join(folder, "config.json"))).get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        end = next((t for t, i in specials.items() if i == eos), None)
    if end is None:
        raise UserError(f"{folder}: no end token (eos_token in tokenizer_config.json or eos_token_id in config.json)")
    return byte_level(path, ordinary, model["merges"], specials, end, pattern_of(tj.get("pre_tokenizer"), path))


def tokenizer_json(fields):
    """A GGUF file's tokenizer as Hugging Face files {name: bytes} (tokenizer.json and
    tokenizer_config.json), so that a model read from a .gguf file is saved as a complete folder."""
    pre = fields.get("tokenizer.ggml.pre", "default")
    byte_level = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=True)
    strings, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    tj = dict(version="1.0", truncation=None, padding=None, normalizer=None, post_processor=None,
              added_tokens=[dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                 special=True) for i, (t, kind) in enumerate(zip(strings, types)) if kind in (3, 4)],
              pre_tokenizer=byte_level if GGUF_PRE[pre] == GPT2_PATTERN else dict(
                  type="Sequence", pretokenizers=[dict(type="Digits", individual_digits=True), byte_level]),
              decoder=dict(type="ByteLevel", add_prefix_space=True, trim_offsets=True, use_regex=True),
              model=dict(type="BPE", dropout=None, unk_token=None, continuing_subword_prefix=None,
                         end_of_word_suffix=None, fuse_unk=False, byte_fallback=False, ignore_merges=False,
                         vocab={t: i for i, t in enumerate(strings)},
                         merges=[m.split(" ", 1) for m in fields["tokenizer.ggml.merges"]]))
    config = dict(tokenizer_class="PreTrainedTokenizerFast", eos_token=strings[fields["tokenizer.ggml.eos_token_id"]],
                  clean_up_tokenization_spaces=False)
    return {"tokenizer.json": json.dumps(tj, ensure_ascii=False).encode(), "tokenizer_config.json": json.dumps(config).encode()}
