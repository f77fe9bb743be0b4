"""Chunked log-probs / entropy over trained positions equal the full-logits computation, values
and gradients, on the project's tiny model."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from agentrl.logprobs import CausalLMParts, full_logits_token_stats, trained_token_stats
from agentrl.model import cached_tiny_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(cached_tiny_model(), dtype=torch.float32)


def batch(vocab):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 17), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 12:] = 0  # right padding
    mask = torch.zeros(3, 17)
    mask[0, 5:9] = 1
    mask[0, 13:17] = 1  # two turns with an observation between
    mask[1, 2:17] = 1
    mask[2, 8:12] = 1
    return ids, attn, mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_full_logits_values_and_gradients(model, temperature):
    ids, attn, mask = batch(model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]

    def run(fn):
        model.zero_grad()
        lp, ent = fn()
        (lp.sum() + 0.1 * ent.sum()).backward()
        return lp.detach(), ent.detach(), [p.grad.clone() for p in params]

    full = run(lambda: full_logits_token_stats(model, ids, attn, mask, temperature, with_entropy=True))
    chunked = run(lambda: trained_token_stats(CausalLMParts(model), ids, attn, mask, temperature, with_entropy=True,
                                              chunk_tokens=5))
    assert torch.allclose(full[0], chunked[0], atol=1e-5)
    assert torch.allclose(full[1], chunked[1], atol=1e-5)
    assert (chunked[0][mask == 0] == 0).all() and (chunked[1][mask == 0] == 0).all()
    for a, b in zip(full[2], chunked[2]):
        assert torch.allclose(a, b, atol=1e-5)


def test_no_trained_token_gives_zeros_and_a_graph(model):
    ids, attn, _ = batch(model.config.vocab_size)
    lp, ent = trained_token_stats(CausalLMParts(model), ids, attn, torch.zeros(ids.shape), with_entropy=True)
    assert lp.abs().sum() == 0 and ent.abs().sum() == 0 and lp.requires_grad
    lp.sum().backward()  # a rank with nothing to train on still joins backward
