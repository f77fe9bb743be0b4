"""Search environments: ``agentrl/Search-v0`` (Search-R1) and ``agentrl/AutoRefine-v0``.

Search-R1: the model thinks in ``<think>``, searches with ``<search>q</search>``, reads the top-k
passages in ``<information>`` (``Doc 1(Title: ...) text``), and answers in ``<answer>``; reward is
exact match after SQuAD normalisation against any gold answer (F1 reported as ``_f1``).

AutoRefine adds ``<refine>``: after each ``<documents>`` block the model writes down what matters.
Reward (AutoRefine's ``compute_reward``) = answer F1 (or EM); an episode that gives an answer
scoring 0 instead earns a retrieval reward when a gold answer appears in the model's refine
blocks, accumulated over the whole episode. No answer, no reward.

The retriever comes from ``retriever=`` (any object with ``search(queries, k)``), ``index_dir=``
(loaded in-process) or ``retriever_url=`` (a ``agentrl serve retrieval`` or Search-R1 server).
``retrieval_enabled=False`` is the control: searches are parsed and answered with "No results found."
"""
from __future__ import annotations

from typing import Any, Sequence

from agentrl.data import load_jsonl
from agentrl.env import ToolEnv
from agentrl.parsers import autorefine_parser, search_r1_parser
from agentrl.retrieval.base import Retriever, format_passages
from agentrl.rewards import contains_answer, exact_match, f1_score

# Search-R1's prompt (its make_prefix, template "base"), placed in the user turn as Search-R1 does.
SEARCH_R1_TEMPLATE = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new information. "
    "After reasoning, if you find you lack some knowledge, you can call a search engine by <search> query </search> "
    "and it will return the top searched results between <information> and </information>. "
    "You can search as many times as your want. "
    "If you find no further external knowledge needed, you can directly provide the answer inside <answer> and </answer>, "
    "without detailed illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)
# AutoRefine's prompt (its make_prefix, template "autorefine").
AUTOREFINE_TEMPLATE = (
    "You are a helpful assistant excel at answering questions with multi-turn search engine calling. "
    "To answer questions, you must first reason through the available information using <think> and </think>. "
    "If you identify missing knowledge, you may issue a search request using <search> query </search> at any time. "
    "The retrieval system will provide you with the three most relevant documents enclosed in <documents> and </documents>. "
    "After each search, you need to summarize and refine the existing documents in <refine> and </refine>. "
    "You may send multiple search requests if needed. "
    "Once you have sufficient information, provide a concise final answer using <answer> and </answer>. "
    "For example, <answer> Donald Trump </answer>. Question: {question}\n"
)
# The same instructions in a few words, for small models on CPU (the CPU learning runs): the
# papers' prompts are ~180 / ~230 tokens of the tiny model's tokenizer, most of each sequence.
SEARCH_R1_SHORT_TEMPLATE = (
    "Answer the question. Search with <search> query </search>; results come in <information> </information>. "
    "Answer with <answer> answer </answer>. Question: {question}\n"
)
AUTOREFINE_SHORT_TEMPLATE = (
    "Answer the question. Search with <search> query </search>; documents come in <documents> </documents>. "
    "Refine them in <refine> </refine>. Answer with <answer> answer </answer>. Question: {question}\n"
)
PROMPTS = {"search_r1": SEARCH_R1_TEMPLATE, "autorefine": AUTOREFINE_TEMPLATE,
           "search_r1_short": SEARCH_R1_SHORT_TEMPLATE, "autorefine_short": AUTOREFINE_SHORT_TEMPLATE}
MAX_QUERY_CHARS = 1000


class SearchTool:
    """The ``search`` tool: one query in, the top-k passages rendered as Search-R1 shows them."""

    name = "search"
    description = "Search a Wikipedia paragraph index and return the most relevant passages."
    parameters = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "What to search for."}},
        "required": ["query"],
    }

    def __init__(self, retriever: Retriever, topk: int = 3, max_query_chars: int = MAX_QUERY_CHARS):
        self.retriever, self.topk, self.max_query_chars = retriever, topk, max_query_chars

    def call(self, arguments: dict[str, Any]) -> str:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            return "Error: the search tool needs a non-empty string 'query'."
        passages = self.retriever.search([query.strip()[: self.max_query_chars]], self.topk)[0]
        return format_passages(passages).rstrip("\n") if passages else "No results found."


class EmptyRetriever:
    """Finds nothing: the control in which searching cannot help."""

    def search(self, queries: list[str], k: int) -> list[list]:
        return [[] for _ in queries]


def make_retriever(retriever: Retriever | None = None, index_dir: str | None = None, retriever_url: str | None = None,
                   kind: str | None = None, cache_size: int = 10_000) -> Retriever:
    """Exactly one of an object, an index directory (in-process) or a server URL."""
    given = [name for name, v in (("retriever", retriever), ("index_dir", index_dir), ("retriever_url", retriever_url)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of retriever=, index_dir= or retriever_url= (got {given or 'none'}); "
                         "build an index with `agentrl index build --corpus CORPUS.jsonl.gz --out DIR`")
    if retriever is not None:
        return retriever
    if index_dir is not None:
        from agentrl.retrieval.index import load_retriever

        return load_retriever(index_dir, kind=kind, cache_size=cache_size)
    from agentrl.retrieval.remote import RemoteRetriever

    return RemoteRetriever(retriever_url, cache_size=cache_size)


def load_tasks(dataset: str | Sequence[dict] | None, limit: int | None = None, drop_heldout: bool = False) -> list[dict]:
    """QA rows with ``question`` and ``answers`` (a list; a single ``answer`` string also works)."""
    if dataset is None:
        raise ValueError("pass dataset= (a QA .jsonl[.gz] path with 'question' and 'answers', or a list of rows), "
                         "e.g. gymnasium.make('agentrl/Search-v0', dataset='qa/hotpotqa.jsonl', index_dir='DIR')")
    rows = load_jsonl(dataset, limit=limit, require=("question",)) if isinstance(dataset, str) else list(dataset)[:limit]
    tasks = []
    for row in rows:
        golds = row.get("answers", row.get("answer"))
        golds = [golds] if isinstance(golds, str) else list(golds or [])
        if not golds:
            raise ValueError(f"task {row.get('id', row.get('question'))!r} has no gold 'answers'")
        if not (drop_heldout and row.get("heldout")):
            tasks.append({**row, "answers": [str(g) for g in golds]})
    return tasks


class SearchEnv(ToolEnv):
    """``agentrl/Search-v0``: Search-R1's format, prompt and exact-match reward."""

    template = SEARCH_R1_TEMPLATE
    make_parser = staticmethod(search_r1_parser)

    def __init__(self, dataset: str | Sequence[dict] | None = None, retriever: Retriever | None = None,
                 index_dir: str | None = None, retriever_url: str | None = None, topk: int = 3, max_turns: int = 4,
                 max_calls_per_turn: int = 4, limit: int | None = None, drop_heldout: bool = False,
                 kind: str | None = None, cache_size: int = 10_000, prompt_template: str | None = None,
                 render_mode: str | None = None, retrieval_enabled: bool = True):
        tasks = load_tasks(dataset, limit, drop_heldout)
        if retrieval_enabled:
            self.retriever = make_retriever(retriever, index_dir, retriever_url, kind, cache_size)
        else:  # the no-retrieval control: the model can search, every search finds nothing
            self.retriever = EmptyRetriever()
        self._owns_retriever = retriever is None  # built here (index or HTTP client): closed here
        tool = SearchTool(self.retriever, topk=topk)
        super().__init__(tasks, [tool], self.make_parser(max_calls_per_turn=max_calls_per_turn), max_turns, render_mode)
        if prompt_template and "{question}" not in prompt_template and prompt_template not in PROMPTS:
            raise ValueError(f"prompt_template must name one of {sorted(PROMPTS)} or be a format string with "
                             f"{{question}}, got {prompt_template[:80]!r}")
        self.template = PROMPTS.get(prompt_template, prompt_template) if prompt_template else self.template

    def close(self) -> None:
        super().close()
        if self._owns_retriever and hasattr(self.retriever, "close"):
            self.retriever.close()  # a RemoteRetriever's HTTP connection pool

    def build_prompt(self, task: dict) -> list[dict[str, str]]:
        question = task["question"].strip()
        if question and not question.endswith("?"):
            question += "?"  # as Search-R1's data preparation does
        return [{"role": "user", "content": self.template.format(question=question)}]

    def score(self, answer: str | None, task: dict) -> dict[str, float]:
        return {"em": exact_match(answer, task["answers"]), "_f1": f1_score(answer, task["answers"])}


class AutoRefineEnv(SearchEnv):
    """``agentrl/AutoRefine-v0``: ``<documents>`` observations, ``<refine>`` notes, and a retrieval reward.

    ``refine_only_if_wrong`` (AutoRefine's rule): the refine reward counts only when the answer
    scores 0, so it shapes failed episodes without inflating correct ones; either way it needs an
    answer (AutoRefine pays nothing to an episode without one).
    ``refine_match``: how a gold answer is found in the refine blocks: ``"token"`` (default,
    whole tokens: "Au" is not in "authors") or ``"autorefine"`` (AutoRefine's raw substring).
    """

    template = AUTOREFINE_TEMPLATE
    make_parser = staticmethod(autorefine_parser)

    def __init__(self, *args, answer_metric: str = "f1", answer_weight: float = 1.0, refine_weight: float = 0.1,
                 refine_only_if_wrong: bool = True, refine_match: str = "token", **kwargs):
        if answer_metric not in ("f1", "em"):
            raise ValueError(f"answer_metric must be 'f1' or 'em', got {answer_metric!r}")
        if refine_match not in ("token", "autorefine"):
            raise ValueError(f"refine_match must be 'token' or 'autorefine', got {refine_match!r}")
        self.refine_match = refine_match
        super().__init__(*args, **kwargs)
        self.answer_metric, self.answer_weight = answer_metric, answer_weight
        self.refine_weight, self.refine_only_if_wrong = refine_weight, refine_only_if_wrong
        self.refines: list[str] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.refines = []
        return super().reset(seed=seed, options=options)

    def step(self, action: str):
        if isinstance(action, str):  # refine blocks count whether the turn searches or answers
            self.refines += self.parser.parse(action).extras.get("refine", [])
        observation, reward, terminated, truncated, info = super().step(action)
        info["n_refine"] = len(self.refines)
        return observation, reward, terminated, truncated, info

    def score(self, answer: str | None, task: dict) -> dict[str, float]:
        em, f1 = exact_match(answer, task["answers"]), f1_score(answer, task["answers"])
        answer_score = f1 if self.answer_metric == "f1" else em
        hit = float(bool(self.refines) and contains_answer(" ".join(self.refines), task["answers"], self.refine_match))
        paid = answer is not None and not (self.refine_only_if_wrong and answer_score > 0)
        refine = hit if paid else 0.0
        return {"answer": self.answer_weight * answer_score, "refine": self.refine_weight * refine,
                "_em": em, "_f1": f1, "_refine_hit": hit}
