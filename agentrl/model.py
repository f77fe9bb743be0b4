"""A tiny local tokenizer + causal LM, built from nothing in seconds (no model hub needed).

``agentrl model init --out DIR [--size tiny|small] [--seed 0]`` writes a directory that loads
with ``AutoTokenizer.from_pretrained(DIR)`` / ``AutoModelForCausalLM.from_pretrained(DIR)``,
exactly like any downloaded model; every code path in agentrl takes either.

* Tokenizer: byte-level BPE (``tokenizers``) trained on text generated here from the shipped
  datasets plus synthetic ReTool / Search-R1 / Hermes traces. Digits are split one per token so
  copying numbers out of ``<interpreter>`` output is learnable. ChatML markers are special
  tokens; the tool tags are atomic added tokens that still decode as text.
* Model: a randomly initialised ``Qwen2ForCausalLM`` (tiny: ~1.4M params, small: ~27M),
  seeded, saved in float32.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

CHAT_MARKERS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TAG_TOKENS = tuple(
    f"<{slash}{t}>"
    for t in (
        "think",
        "code",
        "interpreter",
        "answer",
        "search",
        "information",
        "documents",
        "refine",
        "tool_call",
        "tool_response",
    )
    for slash in ("", "/")
)
EOS_TOKEN = "<|endoftext|>"
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

SIZES: dict[str, dict] = {
    "tiny": dict(
        vocab=3072,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
    ),
    "small": dict(
        vocab=4096,
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1536,
    ),
}

# Qwen2.5-style ChatML template: optional ``tools`` in the system turn, assistant ``tool_calls``
# rendered as <tool_call> JSON, ``tool`` messages grouped as <tool_response> inside a user turn.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages and messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' or (message['role'] == 'system' and not loop.first) "
    "or (message['role'] == 'assistant' and not message.get('tool_calls')) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message['content'] %}{{- '\\n' + message['content'] }}{%- endif %}"
    "{%- for tool_call in message['tool_calls'] %}"
    "{%- if tool_call['function'] is defined %}{%- set tool_call = tool_call['function'] %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + tool_call['name'] + '\", \"arguments\": ' }}"
    "{%- if tool_call['arguments'] is string %}{{- tool_call['arguments'] }}"
    "{%- else %}{{- tool_call['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_WORDS = (
    "the a an of to in is was what who which when where why how many much number numbers result results "
    "answer answers question questions compute calculate calculation multiply multiplied product sum add "
    "added subtract divide divided remainder square root power times plus minus equals equal total "
    "python code run running print output value values variable function return import math list range "
    "for while if else elif def class true false none len int str float round abs max min sorted "
    "search searched query information document documents title born city country river capital year "
    "film author book song album team player game season league state county town village island lake "
    "mountain ocean sea north south east west first second third last largest smallest oldest newest "
    "population president minister king queen prince founded located known wrote written directed "
    "played released published married died lived built named called became served won lost created "
    "let me think step steps check use using tool tools call calls verify verified final so therefore "
    "because and or not it this that these those there here i we you he she they us them our their his "
    "her its need needs find found then after before with from by for on at as are be been being has "
    "have had will would should could can may might must do does did done make made get got give given "
    "take took see seen know knew say said go went come came work worked help helps try tried again "
    "start end begin began stop stopped keep kept show shown read write reads writes error errors fix "
    "correct incorrect wrong right good bad new old high low big small long short same different other "
    "another each every all some any no only also just very more most less least about over under "
    "between into through during without within against among around across along behind below above "
    "university school college company band group party war battle church museum station airport "
    "american british french german italian spanish english chinese japanese indian russian national "
    "international world history science art music language people person man woman child family "
    "father mother son daughter brother sister husband wife friend member leader director actor singer "
    "writer scientist engineer teacher student doctor day days week month months years time times date "
    "century january february march april may june july august september october november december "
    "one two three four five six seven eight nine ten hundred thousand million billion percent half "
    "problem solve solution reasoning reason evidence source sources retrieve retrieved relevant refine "
    "refined summary summarize note notes context passage passages wikipedia article articles entity "
    "interpreter sandbox execute executed result printed digits digit integer decimal fraction"
).split()
_TOPICS = (
    ("Paris", "France", "capital"), ("Nile", "Africa", "river"), ("Tokyo", "Japan", "capital"),
    ("Amazon", "South America", "river"), ("Berlin", "Germany", "capital"), ("Everest", "Nepal", "mountain"),
    ("Ottawa", "Canada", "capital"), ("Danube", "Europe", "river"), ("Canberra", "Australia", "capital"),
)


MAX_ROWS_PER_FILE = 5000
MAX_FILE_BYTES = 20_000_000


def _data_texts() -> list[str]:
    """Text from the shipped datasets (questions, answers, chat messages), in a stable order."""
    from importlib import resources

    texts = []
    for entry in sorted(resources.files("agentrl.data").iterdir(), key=lambda p: p.name):
        # kb_*: the made-up names of the search task split into sub-word pieces that train and
        # held-out entities share (see agentrl.data.make_kb)
        if not entry.name.endswith(".jsonl") or entry.name.startswith("kb_"):
            continue
        raw = entry.read_bytes()
        if len(raw) > MAX_FILE_BYTES:
            continue
        for line in raw.decode("utf-8", errors="replace").splitlines()[:MAX_ROWS_PER_FILE]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict):
                continue
            if isinstance(row.get("messages"), list):
                texts.append(
                    "".join(
                        f"<|im_start|>{m.get('role', 'user')}\n{m.get('content') or ''}<|im_end|>\n"
                        for m in row["messages"]
                        if isinstance(m, dict)
                    )
                )
            parts = [str(row[k]) for k in ("question", "prompt", "text", "contents", "answer", "completion") if row.get(k)]
            if parts:
                texts.append("\n".join(parts))
    return texts


def _num(rng: random.Random) -> int:
    return rng.randint(0, 10 ** rng.randint(1, 5))


def build_corpus(seed: int = 0, n_synthetic: int = 3000) -> list[str]:
    """Training text for the tokenizer: shipped questions/answers and synthetic tool-use traces."""
    rng = random.Random(seed)
    texts: list[str] = []
    texts.extend(_data_texts())
    for _ in range(n_synthetic):
        a, b = _num(rng), _num(rng)
        op = rng.choice(["*", "+", "-", "*", "//"])
        b = b or 1
        val = {"*": a * b, "+": a + b, "-": a - b, "//": a // b}[op]
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        texts.append(" ".join(w.capitalize() if rng.random() < 0.1 else w for w in rng.sample(_WORDS, 40)) + ".")
        kind = rng.random()
        if kind < 0.45:  # ReTool
            texts.append(
                f"<|im_start|>user\nWhat is {a} {op} {b}?<|im_end|>\n<|im_start|>assistant\n"
                f"<think>{words}</think>\n<code>\n```python\nprint({a} {op} {b})\n```\n</code>"
                f"\n<interpreter>\n{val}\n</interpreter>\n<answer>{val}</answer><|im_end|>"
            )
        elif kind < 0.75:  # Search-R1 / AutoRefine
            city, place, what = rng.choice(_TOPICS)
            q = f"What is the {what} of {place}?" if what == "capital" else f"Where is the {city} {what}?"
            texts.append(
                f"<|im_start|>user\nAnswer the question. {q}<|im_end|>\n<|im_start|>assistant\n"
                f"<think>I need to search for {place}.</think>\n<search> {city} {what} {place} </search>\n"
                f"<information>Doc 1(Title: \"{city}\") {city} is a {what} in {place}, {words}. "
                f"Doc 2(Title: \"{place}\") {place} has a population of {a}.</information>\n"
                f"<documents>{city} {words}</documents>\n<refine>{city} is the {what}.</refine>\n"
                f"<answer> {city} </answer><|im_end|>"
            )
        else:  # Hermes / Qwen tool calls
            args = json.dumps({"code": f"print({a} {op} {b})"})
            texts.append(
                f"<|im_start|>assistant\n{words}\n<tool_call>\n{{\"name\": \"python\", \"arguments\": {args}}}\n"
                f"</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{val}\n</tool_response><|im_end|>"
            )
    return texts


def build_tokenizer(vocab_size: int = 3072, seed: int = 0):
    """Train the byte-level BPE and wrap it as a ``PreTrainedTokenizerFast`` with a ChatML template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Exactly the pipeline transformers' Qwen2Tokenizer rebuilds on load (config model_type is
    # qwen2), so the tokenizer behaves the same whichever class or engine loads it. Its regex
    # isolates every digit (``\\p{N}``), so numbers tokenize one digit per token.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in CHAT_MARKERS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(seed), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False, single_word=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=2048,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def model_config(size: str, tokenizer):
    from transformers import Qwen2Config

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    spec = {k: v for k, v in SIZES[size].items() if k != "vocab"}
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    return Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        **spec,
    )


def init_tiny_model(out_dir: str | Path, size: str = "tiny", seed: int = 0, pretrain_steps: int = 0,
                    copy_names: bool = False, copy_target: float | None = None, max_extra_steps: int = 4000,
                    copy_tool_calls: bool = False, progress: bool = False) -> Path:
    """Build tokenizer + randomly initialised Qwen2 causal LM into ``out_dir``; returns the path.
    ``pretrain_steps`` > 0 adds the copy pretraining of ``agentrl.copy_pretraining`` (with
    ``copy_names``, drills that copy made-up names too: the search runs; with ``copy_tool_calls``,
    names and Hermes tool-call copies: the ToolUse run); ``copy_target`` then
    drills on (at most ``max_extra_steps`` more) until greedy copy accuracy reaches it."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    tokenizer = build_tokenizer(SIZES[size]["vocab"])  # same tokenizer for every seed
    config = model_config(size, tokenizer)
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
        if pretrain_steps:
            from agentrl.copy_pretraining import pretrain_copying

            names = copy_names or copy_tool_calls
            pretrain_copying(model, tokenizer, pretrain_steps, seed, names=names, tool_calls=copy_tool_calls,
                             progress=progress)
            if copy_target is not None:
                from agentrl.copy_pretraining import pretrain_until

                pretrain_until(model, tokenizer, copy_target, seed, max_extra_steps, names=names,
                               tool_calls=copy_tool_calls, progress=progress)
    finally:
        torch.random.set_rng_state(rng_state)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", EOS_TOKEN)]
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_ids, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _builder_hash() -> str:
    """Changes with this file, the library versions and the tokenizer corpus (the shipped data)."""
    import tokenizers
    import transformers

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update((Path(__file__).parent / "copy_pretraining.py").read_bytes())
    h.update(f"{transformers.__version__}/{tokenizers.__version__}".encode())
    for text in build_corpus():
        h.update(text.encode())
    return h.hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("AGENTRL_CACHE") or Path.home() / ".cache" / "agentrl").expanduser()


def cached_tiny_model(size: str = "tiny", seed: int = 0) -> Path:
    """Path of a model built once per builder version; safe under concurrent processes.

    Built in a temporary directory and renamed into place (atomic), so readers never see a
    half-written model; a losing racer just discards its copy.
    """
    root = cache_root()
    final = root / f"{size}-s{seed}-{_builder_hash()}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{size}-", dir=root))
    try:
        init_tiny_model(tmp, size=size, seed=seed)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="tiny (~1.4M params) or small (~27M)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="steps of copy pretraining (in-context copying, as a pretrained LLM has); 600 for the CPU demo")
    parser.add_argument("--copy-names", action="store_true",
                        help="drills also copy made-up names (question -> <search>, passage -> <answer>), as the "
                             "search runs need; 1500 steps")
    parser.add_argument("--copy-tool-calls", action="store_true",
                        help="--copy-names plus drills that copy into Hermes tool calls (a name into a JSON argument, "
                             "numbers into print(...), a tool response into <answer>), as the ToolUse run needs")
    parser.add_argument("--copy-target", type=float, default=None,
                        help="after --pretrain-steps, drill on in chunks of 100 steps until greedy copy accuracy "
                             "(and name copy accuracy with --copy-names) reaches this, e.g. 0.8 (some seeds need more)")
    parser.add_argument("--max-extra-steps", type=int, default=4000, help="cap on the steps --copy-target adds")


def cli_main(args: argparse.Namespace) -> int:
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    out = init_tiny_model(args.out, size=args.size, seed=args.seed, pretrain_steps=args.pretrain_steps,
                          copy_names=args.copy_names, copy_target=args.copy_target, copy_tool_calls=args.copy_tool_calls,
                          max_extra_steps=args.max_extra_steps, progress=True)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    from agentrl.copy_pretraining import copy_accuracy, name_copy_accuracy, tool_call_copy_accuracy

    copying = (f", copy accuracy {copy_accuracy(model, tok):.2f} (digits) {name_copy_accuracy(model, tok):.2f} (names)"
               if args.pretrain_steps else "")
    if args.pretrain_steps and args.copy_tool_calls:
        copying += f" {tool_call_copy_accuracy(model, tok):.2f} (tool calls)"
    print(
        f"wrote {args.size} model to {out}: {count_parameters(model) / 1e6:.2f}M params, "
        f"vocab {len(tok)}{copying}, {time.perf_counter() - t0:.1f}s"
    )
    return 0
