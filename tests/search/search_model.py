"""A tiny Llama whose searches really happen: a hand-set bigram over a scripted trajectory.

``write_searching_model(dir)`` saves (transformers, fp32) a model and the shipped tokenizer with
the tags added as whole tokens. Attention and MLP outputs are zeroed, so the next-token logits
depend on the current token only (a bigram table, as in tests/eval/test_selfsearch.py). Each
tag has a few spellings ("<search>" / "\\n<search>", ...) so that the greedy path is

    <think> need recall </think><search> capital France</search>          (query 1, sharp)
    <information> city</information>\\n<search> river flows</search>\\n     (query 2, uncertain)
    \\n<information> water </information><answer> Paris</answer> EOS

When the retriever answers a query, the last injected token (the ``\\n`` that ends Search-R1's
``</information>\\n\\n``) leads to query 2 again. So per row, greedily: ``self`` 0 real
searches (2 self-written); ``real`` (max_turns=3) 3 real, then query 2 self-written;
``first_k_real`` (K=1) 1 real + 1 self; ``entropy_guided`` 2 real (query 1; query 2, whose
first token is drawn from a flatter distribution) + 1 self (query 2 again: entropy did not
rise).
"""

from __future__ import annotations

TAGS = ("<think>", "</think>", "<search>", "</search>", "\n<search>", "</search>\n",
        "<information>", "</information>", "\n<information>", " </information>",
        "<answer>", "</answer>")
SHARP, SOFT = 4.0, 3.5   # RMSNorm scales a unit vector to 8: logits 32 / 28


def searching_tokenizer():
    import transformers
    from tokenizers import AddedToken

    from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path

    tok = transformers.AutoTokenizer.from_pretrained(quickstart_tokenizer_path())
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    return tok


def write_searching_model(directory):
    from ssrl_jax.data.prompts import prompt_token_ids
    from ssrl_jax.protocol import INFO_SUFFIX
    from tests.helpers import save_bigram_model

    tok = searching_tokenizer()

    def one(text):
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1, (text, ids)
        return ids[0]

    t = {text: one(text) for text in TAGS + (" need", " recall", " capital", " France", " city",
                                             " river", " Nile", " Amazon", " flows", " water",
                                             " Paris")}
    chain = {
        "<think>": " need", " need": " recall", " recall": "</think>", "</think>": "<search>",
        "<search>": " capital", " capital": " France", " France": "</search>",
        "</search>": "<information>", "<information>": " city", " city": "</information>",
        "</information>": "\n<search>",
        " river": " flows", " Nile": " flows", " Amazon": " flows", " flows": "</search>\n",
        "</search>\n": "\n<information>", "\n<information>": " water",
        " water": " </information>", " </information>": "<answer>",
        "<answer>": " Paris", " Paris": "</answer>",
    }
    successors = {t[a]: {t[b]: SHARP} for a, b in chain.items()}
    successors[t["\n<search>"]] = {t[" river"]: SHARP, t[" Nile"]: SOFT, t[" Amazon"]: SOFT}
    successors[t["</answer>"]] = {tok.eos_token_id: SHARP}
    injected_last = tok.encode(INFO_SUFFIX, add_special_tokens=False)[-1]
    assert injected_last not in successors, "the injection must end in a token of its own"
    successors[injected_last] = {t["\n<search>"]: SHARP}
    start = prompt_token_ids("q?", tokenizer=tok, chat=False)[-1]  # plain prompts only
    assert start not in successors
    successors[start] = {t["<think>"]: SHARP}

    return save_bigram_model(directory, tok, successors, max_position_embeddings=4096)


def searching_sampler(directory):
    """(Sampler, tokenizer) of the searching model written to `directory`, in float32."""
    from ssrl_jax.eval.selfsearch import load_for_eval
    from ssrl_jax.sampler import Sampler

    model, tok, eos = load_for_eval(str(write_searching_model(directory)), dtype="float32")
    return Sampler(model, tokenizer=tok, eos_ids=eos), tok
