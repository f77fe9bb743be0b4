"""Generate the fictional knowledge base and its questions (deterministic): ``python -m agentrl.data.make_kb``.

A tiny model has no world knowledge and cannot memorise made-up facts about held-out entities,
so on these questions reward rises only if the policy learns to search the index and copy
what it finds: the search-side counterpart of ``mul2``.

* ``kb_corpus.jsonl``: Wikipedia-style paragraphs in the Search-R1 corpus format
  (``{"id", "contents": "\\"Title\\"\\ntext"}``) about people, cities and organisations with
  made-up names.
* ``kb_train.jsonl`` (GRPO) / ``kb_test_1hop.jsonl`` / ``kb_test_2hop.jsonl``: QA rows
  (``question``, ``answers``, ``hops``, ``kind``). One-hop questions need one search
  ("In which city was X born?"); two-hop bridge questions need two ("In which city was the
  founder of Y born?": search Y, read its founder, search the founder). Train and test are
  split by entity: no test question names an entity (or a founder) that a train question names.
* ``kb_search_sft.jsonl.gz`` / ``kb_autorefine_sft.jsonl.gz``: warm-start traces (on train-split
  questions that are not in ``kb_train.jsonl``) in the exact formats of ``agentrl/Search-v0``
  and ``agentrl/AutoRefine-v0`` with their short prompts (``prompt_template: search_r1_short`` /
  ``autorefine_short``, as the CPU runs' configs set), half of them searching
  (with the passages the shipped BM25 index really returns) and half answering at once.
* ``kb_tooluse_train.jsonl`` / ``kb_tooluse_test_{lookup,arithmetic,both}.jsonl``: ``agentrl/ToolUse-v0`` tasks of three
  kinds over the same entities: ``lookup`` (one-hop), ``arithmetic`` (2-digit multiplication)
  and ``both`` ("the founding year of Y times 7": search, then compute).

The tokenizer of ``agentrl model init`` is not trained on these files (``model._data_texts``
skips ``kb_*``): made-up names split into sub-word pieces that train and test entities share,
so a held-out name is a new combination of trained tokens.
"""
from __future__ import annotations

import random
from pathlib import Path

from agentrl.data import write_jsonl

ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "z")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "or")
CODAS = ("", "", "n", "r", "l", "s", "th", "k", "m")
OCCUPATIONS = ("painter", "engineer", "poet", "chemist", "composer", "architect", "sailor", "physician")
ORG_KINDS = ("Institute", "Guild", "Company", "Society", "Foundation", "Press", "Works", "Academy")
REGIONS = ("northern", "southern", "eastern", "western", "central", "coastal")
N_PEOPLE, N_CITIES, N_ORGS = 320, 40, 160
TEST_FRACTION = 0.2
MULTIPLIERS = (3, 7, 9, 11)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)).capitalize()


def build_kb(seed: int = 0) -> dict:
    """People (birth city and year, occupation), cities, organisations (founder, year, city)."""
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(make):  # names never repeat across kinds, so a search for one entity is unambiguous
        while True:
            name = make()
            if name not in used and all(part not in used for part in name.split()):
                used.add(name)
                used.update(name.split())
                return name

    cities = [{"name": fresh(lambda: _word(rng, 2)), "region": rng.choice(REGIONS),
               "population": rng.randint(2, 900) * 1000} for _ in range(N_CITIES)]
    people = [{"name": fresh(lambda: f"{_word(rng, 2)} {_word(rng, 2)}"), "city": rng.choice(cities)["name"],
               "year": rng.randint(1700, 1950), "occupation": rng.choice(OCCUPATIONS)} for _ in range(N_PEOPLE)]
    founders = rng.sample(people, N_ORGS)
    orgs = [{"name": f"{fresh(lambda: _word(rng, 2))} {rng.choice(ORG_KINDS)}", "founder": f["name"],
             "year": f["year"] + rng.randint(25, 60), "city": rng.choice(cities)["name"]} for f in founders]
    return {"cities": cities, "people": people, "orgs": orgs}


def corpus_rows(kb: dict) -> list[dict]:
    rows = []
    for p in kb["people"]:
        rows.append((p["name"], f"{p['name']} was a {p['occupation']} born in {p['city']} in {p['year']}."))
    for o in kb["orgs"]:
        rows.append((o["name"], f"The {o['name']} was founded by {o['founder']} in {o['year']}. It is based in {o['city']}."))
    for c in kb["cities"]:
        rows.append((c["name"], f"{c['name']} is a city in the {c['region']} region with a population of {c['population']}."))
    return [{"id": f"kb-{i}", "contents": f'"{title}"\n{text}'} for i, (title, text) in enumerate(rows)]


def split_entities(kb: dict, seed: int) -> tuple[set[str], set[str]]:
    """Test organisations (with their founders) and test people, drawn by entity."""
    rng = random.Random(seed)
    test_orgs = {o["name"] for o in rng.sample(kb["orgs"], int(len(kb["orgs"]) * TEST_FRACTION))}
    test_people = {o["founder"] for o in kb["orgs"] if o["name"] in test_orgs}
    others = [p["name"] for p in kb["people"] if p["name"] not in {o["founder"] for o in kb["orgs"]}]
    test_people |= set(rng.sample(others, int(len(others) * TEST_FRACTION)))
    return test_orgs, test_people


def questions(kb: dict, test_orgs: set[str], test_people: set[str]) -> dict[str, list[dict]]:
    """Every question the KB supports, by split; ``bridge`` names the entity a two-hop question passes through."""
    people = {p["name"]: p for p in kb["people"]}
    out: dict[str, list[dict]] = {"train": [], "test": []}

    def add(split, kind, hops, question, answer, entity, bridge=None):
        row = {"question": question, "answers": [str(answer)], "hops": hops, "kind": kind, "entity": entity}
        if bridge:
            row["bridge"] = bridge
        out[split].append(row)

    for p in kb["people"]:
        split = "test" if p["name"] in test_people else "train"
        add(split, "birth_city", 1, f"In which city was {p['name']} born?", p["city"], p["name"])
        add(split, "birth_year", 1, f"In which year was {p['name']} born?", p["year"], p["name"])
    for o in kb["orgs"]:
        split = "test" if o["name"] in test_orgs else "train"
        founder = people[o["founder"]]
        add(split, "founder", 1, f"Who founded the {o['name']}?", o["founder"], o["name"])
        add(split, "founding_year", 1, f"In which year was the {o['name']} founded?", o["year"], o["name"])
        add(split, "founder_birth_city", 2, f"In which city was the founder of the {o['name']} born?", founder["city"],
            o["name"], o["founder"])
        add(split, "founder_birth_year", 2, f"In which year was the founder of the {o['name']} born?", founder["year"],
            o["name"], o["founder"])
    return out


def number_rows(rows: list[dict], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i}", **row} for i, row in enumerate(rows)]


def tooluse_rows(kb: dict, qa: list[dict], split: str, n: int, seed: int) -> list[dict]:
    """A third each: ``lookup`` (one-hop QA), ``arithmetic`` (2-digit products), ``both``."""
    rng = random.Random(seed)
    one_hop = [r for r in qa if r["hops"] == 1]
    orgs = {o["name"]: o for o in kb["orgs"]}
    org_names = sorted({r["entity"] for r in qa if r["entity"] in orgs})
    rows = []
    for i in range(n):
        kind = ("lookup", "arithmetic", "both")[i % 3]
        if kind == "lookup":
            r = rng.choice(one_hop)
            row = {"question": r["question"], "answers": r["answers"], "entity": r["entity"]}
        elif kind == "arithmetic":
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            row = {"question": f"What is {a} * {b}?", "answers": [str(a * b)], "a": a, "b": b}
        else:
            o, m = orgs[rng.choice(org_names)], rng.choice(MULTIPLIERS)
            row = {"question": f"What is the founding year of the {o['name']} times {m}?", "answers": [str(o["year"] * m)],
                   "entity": o["name"], "a": o["year"], "b": m}
        rows.append({"id": f"tooluse-{split}-{i}", "kind": kind, **row})
    return rows


def search_traces(rows: list[dict], retriever, kb: dict, style: str, prompt: str, search_fraction: float,
                  seed: int) -> list[dict]:
    """Warm-start traces in the env's exact format (``style``: ``search`` or ``autorefine``;
    ``prompt``: a name in ``agentrl.envs.search.PROMPTS``, the env's ``prompt_template``).

    A ``search_fraction`` of them search (the entity, then for two-hop questions the bridge
    entity read from the first result) and copy the answer from what came back; the rest answer
    at once, correctly, which a tiny model cannot reproduce for unseen entities: at rollout time
    that style mostly fails, and GRPO has to find that searching pays.
    """
    from agentrl.envs.search import PROMPTS
    from agentrl.parsers import autorefine_parser, search_r1_parser
    from agentrl.retrieval.base import format_passages

    template = PROMPTS[prompt]
    parser = search_r1_parser() if style == "search" else autorefine_parser()
    facts = {p["name"]: f"{p['name']} was born in {p['city']} in {p['year']}." for p in kb["people"]}
    facts |= {o["name"]: f"The {o['name']} was founded by {o['founder']} in {o['year']}." for o in kb["orgs"]}
    rng = random.Random(seed)
    traces = []
    for row in rows:
        messages = [{"role": "user", "content": template.format(question=row["question"])}]
        answer = row["answers"][0]
        if rng.random() < search_fraction:
            searched = [row["entity"], row.get("bridge")][: row["hops"]]
            for hop, entity in enumerate(searched):
                passages = retriever.search([entity], 3)[0]
                observation = parser.format_observation([format_passages(passages).rstrip("\n")])
                # AutoRefine notes what the last documents said before it searches again
                refine = f"<refine> {facts[searched[hop - 1]]} </refine>\n" if style == "autorefine" and hop else ""
                messages += [{"role": "assistant", "content": f"{refine}<search> {entity} </search>"},
                             {"role": "tool", "content": observation}]
            refine = f"<refine> {facts[searched[-1]]} </refine>\n" if style == "autorefine" else ""
            messages.append({"role": "assistant", "content": f"{refine}<answer> {answer} </answer>"})
        else:
            messages.append({"role": "assistant", "content": f"<answer> {answer} </answer>"})
        traces.append({"id": row["id"], "messages": messages})
    return traces


def splits(seed: int = 0) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """The knowledge base and its questions: ``(kb, warm_start, train, test)``. The warm start and
    GRPO (``train``) see different train-split questions, so answers the SFT traces state at once
    are never reward for answering without a search in GRPO; ``test`` holds the held-out entities."""
    kb = build_kb(seed)
    test_orgs, test_people = split_entities(kb, seed + 1)
    qa = questions(kb, test_orgs, test_people)
    train = number_rows(random.Random(seed + 2).sample(qa["train"], len(qa["train"])), "kb-train")
    test = [{**row, "heldout": True} for row in number_rows(qa["test"], "kb-test")]  # evaluation only
    return kb, train[: len(train) // 2], train[len(train) // 2:], test


def main(out_dir: Path | None = None, seed: int = 0) -> None:
    from agentrl.retrieval.base import Passage
    from agentrl.retrieval.bm25 import BM25Retriever

    here = Path(out_dir or Path(__file__).parent)
    kb, sft_rows, train, test = splits(seed)
    corpus = corpus_rows(kb)
    write_jsonl(here / "kb_corpus.jsonl", corpus)
    write_jsonl(here / "kb_train.jsonl", train)
    write_jsonl(here / "kb_test_1hop.jsonl", [r for r in test if r["hops"] == 1])
    write_jsonl(here / "kb_test_2hop.jsonl", [r for r in test if r["hops"] == 2])
    retriever = BM25Retriever([Passage.from_document(r) for r in corpus])
    write_jsonl(here / "kb_search_sft.jsonl.gz", search_traces(sft_rows, retriever, kb, "search", "search_r1_short", 0.5, seed + 3))
    write_jsonl(here / "kb_autorefine_sft.jsonl.gz", search_traces(sft_rows, retriever, kb, "autorefine", "autorefine_short", 0.5, seed + 4))
    write_jsonl(here / "kb_tooluse_train.jsonl", tooluse_rows(kb, train, "train", 1500, seed + 5))
    tooluse_test = tooluse_rows(kb, test, "test", 150, seed + 6)
    for kind in ("lookup", "arithmetic", "both"):  # one file a kind: eval reports each apart
        write_jsonl(here / f"kb_tooluse_test_{kind}.jsonl", [r for r in tooluse_test if r["kind"] == kind])


if __name__ == "__main__":
    main()
