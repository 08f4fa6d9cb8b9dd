"""The tagger's k best analyses and constraints (`allowed_tags`), held to enumeration of every tag sequence."""

import pytest
import torch
from test_crf import BRUTE_FORCE_MASKS, path_scores, random_crf

from koelectra_crf.crf import bio_constraints
from koelectra_crf.tagger import EmissionTagger

LABELS = ["I-Y", "B-X", "O", "I-X", "B-Y"]
TEMPERATURE = 0.7


def constrained_tagger(use_crf: bool) -> EmissionTagger:
    allowed = bio_constraints(LABELS)
    crf = random_crf(len(LABELS), scale=1.5, allowed_start=allowed[0], allowed_transitions=allowed[1])
    return EmissionTagger(crf if use_crf else None, TEMPERATURE)


def enumerated(tagger: EmissionTagger, emissions: torch.Tensor, allowed_tags: torch.Tensor):
    """All tag sequences of one row (L, K) and their log-probabilities conditioned on `allowed_tags` (L, K): the
    oracle. Without a CRF, the sum of the log-softmax of each chosen tag."""
    emissions = emissions.double() / TEMPERATURE
    if tagger.crf is None:
        zeros = torch.zeros(len(LABELS), dtype=torch.float64)
        paths, scores = path_scores(emissions.log_softmax(-1), zeros, zeros.new_zeros(len(LABELS), len(LABELS)), zeros)
    else:
        crf = tagger.crf
        allowed = crf.allowed_start, crf.allowed_transitions, torch.ones(len(LABELS), dtype=torch.bool)
        paths, scores = path_scores(emissions, crf.start_transitions, crf.transitions, crf.end_transitions, allowed)
    if paths.size(1):
        scores = scores.masked_fill(~allowed_tags[torch.arange(paths.size(1)), paths].all(1), float("-inf"))
    return paths, scores - scores.logsumexp(0)


@pytest.mark.parametrize("use_crf", [True, False])
def test_k_best_and_probabilities_under_constraints_equal_enumeration(use_crf):
    """Under random allowed tags per position: the k best sequences and their probabilities, the best path, the tag
    marginals and the sequence probabilities are those of the allowed sequences only, renormalised."""
    torch.manual_seed(2)
    tagger = constrained_tagger(use_crf)
    mask = BRUTE_FORCE_MASKS[:, :4]
    emissions = torch.randn(*mask.shape, len(LABELS)) * 2
    allowed_tags = torch.rand(emissions.shape) < 0.6
    allowed_tags[..., LABELS.index("O")] |= ~allowed_tags.any(-1)  # every position keeps a tag
    k = 6
    tags, probabilities = tagger.k_best(emissions, mask, k, allowed_tags)
    best = tagger.decode(emissions, mask, allowed_tags)
    marginals = tagger.tag_probabilities(emissions, mask, allowed_tags)
    assert tags[:, 0].tolist() == best.tolist()
    found = tagger.sequence_probability(emissions.repeat_interleave(k, 0), tags.flatten(0, 1).clamp(min=0),
                                        mask.repeat_interleave(k, 0), allowed_tags.repeat_interleave(k, 0))  # fmt: skip
    exists = probabilities > 0  # (a row with fewer than k sequences fills the rest with 0)
    torch.testing.assert_close(found.view(-1, k)[exists], probabilities[exists], rtol=1e-4, atol=1e-6)
    for b in range(mask.size(0)):
        paths, log_p = enumerated(tagger, emissions[b][mask[b]], allowed_tags[b][mask[b]])
        expected = log_p.exp().sort(descending=True).values[:k]
        expected = torch.cat([expected, expected.new_zeros(k - expected.numel())])
        torch.testing.assert_close(probabilities[b].double(), expected, rtol=1e-4, atol=1e-6)
        for r in range(k):
            path = tags[b, r][mask[b]]
            if r >= (log_p > float("-inf")).sum():  # no such sequence
                assert (tags[b, r] == -100).all()
            elif path.numel():
                index = (paths == path).all(1).nonzero().item()
                torch.testing.assert_close(probabilities[b, r].double(), log_p[index].exp(), rtol=1e-4, atol=1e-6)
        if paths.size(1):
            weights = log_p.exp()
            expected_marginals = (torch.nn.functional.one_hot(paths, len(LABELS)) * weights[:, None, None]).sum(0)
            torch.testing.assert_close(marginals[b][mask[b]].double(), expected_marginals, rtol=1e-4, atol=1e-5)


def test_contradictory_constraints_are_a_clear_error():
    tagger = constrained_tagger(use_crf=True)
    emissions, mask = torch.randn(1, 3, len(LABELS)), torch.ones(1, 3, dtype=torch.bool)
    nothing = torch.ones(1, 3, len(LABELS), dtype=torch.bool)
    nothing[0, 1] = False  # no tag at all at position 1
    only_inside = torch.ones(1, 3, len(LABELS), dtype=torch.bool)
    only_inside[0, 0] = torch.tensor([label == "I-X" for label in LABELS])  # BIO: no sequence starts with I-X
    for allowed_tags in (nothing, only_inside):
        with pytest.raises(ValueError, match="the constraints allow no tag sequence"):
            tagger.k_best(emissions, mask, 2, allowed_tags)
    with pytest.raises(ValueError, match="allowed_tags must have shape"):
        tagger.k_best(emissions, mask, 2, nothing[:, :2])
