"""Retrieval for search environments: BM25 (bm25s), dense (faiss + sentence-transformers),
hybrid (reciprocal-rank fusion), and a client of the HTTP server (Search-R1's API).

Importing this package never imports torch; only building a dense encoder does.
"""
from agentrl.retrieval.base import CachedRetriever, Passage, Retriever, format_passages
from agentrl.retrieval.index import IndexMismatchError, build_index, load_retriever

__all__ = ["CachedRetriever", "Passage", "Retriever", "format_passages", "IndexMismatchError", "build_index",
           "load_retriever", "BM25Retriever", "DenseRetriever", "HybridRetriever", "RemoteRetriever"]


def __getattr__(name):  # backends load on first use: bm25s, faiss, torch and httpx stay unimported until then
    modules = {"BM25Retriever": "bm25", "DenseRetriever": "dense", "HybridRetriever": "hybrid", "RemoteRetriever": "remote"}
    if name in modules:
        import importlib

        return getattr(importlib.import_module(f"agentrl.retrieval.{modules[name]}"), name)
    raise AttributeError(name)
