"""Copy pretraining: the in-context copying any pretrained LLM brings, given to the tiny model.

A random-init model cannot copy from its context, and every CPU learning run needs it to: the
ReTool run copies the interpreter's digits into ``<answer>``, the search runs copy made-up
names from the question into ``<search>`` and from ``<information>`` into ``<answer>``.
``agentrl model init --pretrain-steps N`` trains on these drills; ``copy_accuracy`` and
``name_copy_accuracy`` measure the two skills.
"""
from __future__ import annotations

import random
import sys

from agentrl.model import TAG_TOKENS, _WORDS

COPY_SOURCES = ("interpreter", "information", "documents", "tool_response", "code", "think")


def copy_drill(rng: random.Random, names: bool = False, tool_calls: bool = False) -> str:
    """One drill of in-context copying, the skill any pretrained LLM brings: a digit string shown
    inside one tag pair and repeated inside ``<answer>``, or an expression in a sentence
    repeated inside a tag. Distractor numbers come first, so the model learns to copy from the
    latest source rather than from whatever digits are in context. ``names`` adds drills that
    copy made-up names (a question's name into ``<search>``, a passage's into ``<answer>``), the
    search runs' skill: they need ~1500 steps where digits need 600. ``tool_calls`` makes half
    the drills Hermes-style (:func:`tool_call_drill`), the ToolUse run's skill."""
    def number(lo: int = 1, hi: int = 9) -> str:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(lo, hi)))

    def expression() -> str:
        return f"{number(1, 4)} {rng.choice('+-*/')} {number(1, 4)}"

    lead = rng.choice(("What is", "Compute", "Find", "Evaluate", "The value of"))
    distractors = [
        rng.choice((f"{lead} {expression()}?", f"<code>{expression()}</code>", f"<think>{number()}</think>"))
        for _ in range(rng.randint(0, 2))
    ]
    if tool_calls and rng.random() < 0.5:  # drawn only in this mode: the other streams stay as they were
        return "\n".join([*distractors, tool_call_drill(rng, lead)])
    kind = rng.random()
    if not names:  # the ReTool run's drills: digits and expressions, half each
        kind = 0.0 if kind < 0.5 else 0.5
    if kind < 0.35:
        source = rng.choice(COPY_SOURCES)
        digits = number(1, 9)
        drill = f"<{source}>\n{digits}\n</{source}>\n<answer>{digits}</answer>"
    elif kind < 0.6:
        expr = expression()
        tag = rng.choice(("code", "answer", "think"))
        drill = f"{lead} {expr}?\n<{tag}>{expr}</{tag}>"
    elif kind < 0.8:  # a name in a question, repeated in a call or an answer (a search query)
        name, words, tag = made_up_name(rng), _filler(rng), rng.choice(("search", "answer", "refine"))
        drill = f"{words[0]} {name} {words[1]}?\n<{tag}> {name} </{tag}>"
    else:  # a name in a passage, repeated in an answer (reading a search result)
        name, words = made_up_name(rng), _filler(rng)
        source = rng.choice(("information", "documents", "tool_response"))
        drill = f"<{source}>\n{words[0]} {name} {words[1]}.\n</{source}>\n<answer> {name} </answer>"
    return "\n".join([*distractors, drill])


def tool_call_drill(rng: random.Random, lead: str = "What is") -> str:
    """One Hermes-style copy: a question's name into a JSON string argument, a question's
    numbers into a ``print(...)`` code argument, or a ``<tool_response>`` passage's name or
    number into ``<answer>``. The JSON and ``<answer>...</answer>`` copies have no space before
    the name, so its first token differs from the source's (BPE: " Veaseam" -> "ĠV e as e am",
    "Veaseam" -> "V e as e am"): a re-spelling a pretrained LLM does without thinking and the
    tag drills (``<search> name </search>``) never show."""
    def tool_call(name: str, key: str, value: str) -> str:
        return f'<tool_call>\n{{"name": "{name}", "arguments": {{"{key}": "{value}"}}}}\n</tool_call>'

    kind = rng.random()
    if kind < 0.35:
        name, words = made_up_name(rng) + rng.choice(("", "", *(f" {w}" for w in _INSTITUTIONS))), _filler(rng)
        tool, key = rng.choice((("search", "query"), ("lookup", "name"), ("search", "query"), ("find", "entity")))
        return f"{words[0]} {name} {words[1]}?\n" + tool_call(tool, key, name)
    if kind < 0.6:
        a, b = rng.randint(1, 9999), rng.randint(1, 99)
        op = rng.choice(("*", "+", "-", "*"))
        return f"{lead} {a} {op} {b}?\n" + tool_call("python", "code", f"print({a} {op} {b})")
    if kind < 0.85:
        name, words = made_up_name(rng), _filler(rng)
        return f"<tool_response>\n{words[0]} {name} {words[1]}.\n</tool_response>\n<answer>{name}</answer>"
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))
    return f"<tool_response>\n{digits}\n</tool_response>\n<answer>{digits}</answer>"


_INSTITUTIONS = ("Institute", "Guild", "Company", "Society", "Foundation", "Press", "Works", "Academy", "College",
                 "Museum", "Bank", "Club")
"""Words that follow an organisation's name: whole words to a pretrained LLM, sub-word pieces to the tiny tokenizer."""

_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def made_up_name(rng: random.Random) -> str:
    """One to three capitalised pseudo-words: names no tokenizer has whole, as in the search task."""
    def word() -> str:
        return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) + rng.choice(("", "", "n", "r", "l", "s", "th"))
                       for _ in range(rng.randint(1, 3))).capitalize()

    return " ".join(word() for _ in range(rng.randint(1, 3)))


def _filler(rng: random.Random) -> tuple[str, str]:
    """Lower-case words before and after a name."""
    return " ".join(rng.sample(_WORDS, rng.randint(1, 5))).capitalize(), " ".join(rng.sample(_WORDS, rng.randint(0, 4)))


def pretrain_copying(
    model, tokenizer, steps: int, seed: int, batch_size: int = 32, lr: float = 1e-3, warmup_steps: int = 50,
    names: bool = False, tool_calls: bool = False, progress: bool = False,
) -> float:
    """A random-init tiny model cannot copy from its context; a pretrained LLM can. A few hundred
    steps on short copy drills give the tiny stand-in that induction-head skill (the loss is on
    the repeat and its closing tag, so the model also learns where a copy ends). Warmup and
    gradient clipping matter: without them some seeds never form the copying circuit.
    Returns the final loss."""
    import torch

    from agentrl.metrics import ProgressBar

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup_steps))
    model.train()
    loss = torch.tensor(float("nan"))
    with ProgressBar(steps, enabled=progress, description="copy drills") as bar:
        for step in range(steps):
            loss = _drill_step(model, tokenizer, opt, schedule, [copy_drill(rng, names, tool_calls) for _ in range(batch_size)])
            if step % 10 == 9 or step == steps - 1:
                bar.update(step + 1, {}, info=f"loss {loss.item():.3f}")
    model.eval()
    return loss.item()


def _drill_step(model, tokenizer, opt, schedule, texts: list[str]):
    """One optimiser step on a batch of drills, the loss on their repeats; returns the loss."""
    import torch

    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, attn = enc.input_ids, enc.attention_mask
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    mask = _second_copy_mask(ids, tokenizer)[:, 1:]
    loss = -(logprobs * mask).sum() / mask.sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    schedule.step()
    return loss.detach()


def pretrain_until(model, tokenizer, target: float, seed: int, max_steps: int, names: bool = False,
                   chunk: int = 100, tool_calls: bool = False, progress: bool = False) -> int:
    """More drills, ``chunk`` steps at a time, until greedy copying reaches ``target`` (names too
    with ``names``, tool-call copies with ``tool_calls``) or ``max_steps`` more have run; returns
    the steps added (``progress`` prints the accuracies after each chunk). The copying circuit
    forms abruptly and at a different step for each seed (names at 1500 steps: seed 0 0.91,
    seed 1 0.31, seed 2 0.00), so a fixed budget leaves some seeds without the skill. Each chunk
    starts a fresh optimiser, so the result depends only on the weights it starts from."""
    def reached() -> bool:
        accuracies = {"digits": copy_accuracy(model, tokenizer)}
        if names:
            accuracies["names"] = name_copy_accuracy(model, tokenizer)
        if tool_calls:
            accuracies["tool calls"] = tool_call_copy_accuracy(model, tokenizer)
        if progress:
            print(f"copy accuracy after {done} more steps: " + ", ".join(f"{k} {v:.2f}" for k, v in accuracies.items())
                  + f" (target {target})", file=sys.stderr, flush=True)
        return min(accuracies.values()) >= target

    done = 0
    while done < max_steps and not reached():
        pretrain_copying(model, tokenizer, min(chunk, max_steps - done), seed=seed * 1_000_003 + done, warmup_steps=1,
                         names=names, tool_calls=tool_calls, progress=progress)
        done += chunk
    return done


def copy_accuracy(model, tokenizer, n: int = 64, seed: int = 1234) -> float:
    """Greedy exact-match rate of copying a fresh 1-6 digit number from ``<interpreter>`` into
    ``<answer>`` after a question with other numbers, closing tag included: the skill the CPU
    learning run depends on."""
    rng = random.Random(seed)
    numbers = ["".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6))) for _ in range(n)]
    prompts = [
        f"What is {rng.randint(10, 99)} * {rng.randint(10, 99)}?\n<interpreter>\n{d}\n</interpreter>\n<answer>"
        for d in numbers
    ]
    return _greedy_match_rate(model, tokenizer, prompts, [d + "</answer>" for d in numbers], max_new_tokens=8)


def name_copy_accuracy(model, tokenizer, n: int = 64, seed: int = 4321) -> float:
    """Greedy exact-match rate of copying a fresh made-up name from a question into ``<search>``
    (closing tag included): the skill the CPU search runs depend on."""
    rng = random.Random(seed)
    names = [made_up_name(rng) for _ in range(n)]
    prompts = [f"In which city was {name} born?\n<search>" for name in names]
    return _greedy_match_rate(model, tokenizer, prompts, [f" {name} </search>" for name in names], max_new_tokens=24)


def tool_call_copy_accuracy(model, tokenizer, n: int = 64, seed: int = 5678) -> float:
    """Greedy exact-match rate of copying a fresh made-up name from a question into a Hermes
    call's JSON string argument (no space before it, closing quote and braces included): the
    skill the ToolUse run depends on."""
    rng = random.Random(seed)
    names = [made_up_name(rng) for _ in range(n)]
    prompts = [f'Who founded {name}?\n<tool_call>\n{{"name": "search", "arguments": {{"query": "' for name in names]
    return _greedy_match_rate(model, tokenizer, prompts, [f'{name}"}}}}' for name in names], max_new_tokens=24)


def _greedy_match_rate(model, tokenizer, prompts: list[str], expected: list[str], max_new_tokens: int) -> float:
    """Share of prompts whose greedy continuation starts with the expected text."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:])
    return sum(t.startswith(e) for t, e in zip(texts, expected)) / len(prompts)


def _second_copy_mask(ids, tokenizer):
    """1 on the repeat (after the last opening tag of each drill, through its closing tag)."""
    import torch

    openers = {tokenizer.convert_tokens_to_ids(t) for t in TAG_TOKENS if not t.startswith("</")}
    mask = torch.zeros(ids.shape, dtype=torch.float32)
    for b, row in enumerate(ids.tolist()):
        start = max(i for i, t in enumerate(row) if t in openers) + 1
        end = next(i for i in range(start, len(row)) if tokenizer.decode([row[i]]).startswith("</"))
        mask[b, start : end + 1] = 1.0
    return mask
