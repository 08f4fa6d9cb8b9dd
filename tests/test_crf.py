"""Tests of koelectra_crf.crf against a brute-force oracle and pytorch-crf.

Every method is tested with both sets of algorithms, the reference loops over time (used on CPU) and the parallel
variants (used on GPU), forced through ``LinearChainCRF(..., implementation=...)``; the parallel variants are also
held to the reference functions directly.
"""

from __future__ import annotations

import copy
import itertools
import re

import pytest
import torch
from torchcrf import CRF

from koelectra_crf import crf as crf_module
from koelectra_crf.crf import LinearChainCRF, bio_constraints

IMPLEMENTATIONS = ["sequential", "parallel"]

KLUE_LABELS = "B-PS I-PS B-LC I-LC B-OG I-OG B-DT I-DT B-TI I-TI B-QT I-QT O".split()
ALPHABETICAL_LABELS = "B-DT B-LC B-OG B-PS B-QT B-TI I-DT I-LC I-OG I-PS I-QT I-TI O".split()


# --------------------------------------------------------------------------------------------------------------
# Oracles and helpers


def path_scores(emissions, start, transitions, end, allowed=None):
    """All K^L tag sequences of one sequence ``emissions`` (L, K) and their scores, in float64.

    ``allowed`` = (allowed_start, allowed_transitions, allowed_end) gives the disallowed paths the score -inf.
    Returns (paths (K^L, L), scores (K^L,)); for L = 0 the one empty path, with score 0.
    """
    emissions, start, transitions, end = (x.double() for x in (emissions, start, transitions, end))
    length, num_tags = emissions.shape
    paths = torch.tensor(list(itertools.product(range(num_tags), repeat=length)), dtype=torch.long)  # (N, L)
    if length == 0:
        return paths.view(1, 0), torch.zeros(1, dtype=torch.float64)
    scores = (
        start[paths[:, 0]]
        + emissions[torch.arange(length), paths].sum(1)
        + transitions[paths[:, :-1], paths[:, 1:]].sum(1)
        + end[paths[:, -1]]
    )
    if allowed is not None:
        allowed_start, allowed_transitions, allowed_end = allowed
        valid = (
            allowed_start[paths[:, 0]]
            & allowed_transitions[paths[:, :-1], paths[:, 1:]].all(1)
            & allowed_end[paths[:, -1]]
        )
        scores = scores.masked_fill(~valid, float("-inf"))
    return paths, scores


def brute_force(emissions, start, transitions, end, allowed=None):
    """Enumerate all K^L tag sequences of one sequence ``emissions`` (L, K), in float64.

    ``allowed`` = (allowed_start, allowed_transitions, allowed_end) excludes the disallowed paths.
    Returns (log Z, best path (L,), marginals (L, K)).
    """
    if emissions.size(0) == 0:
        return torch.tensor(0.0, dtype=torch.float64), torch.zeros(0, dtype=torch.long), emissions.double()
    paths, scores = path_scores(emissions, start, transitions, end, allowed)
    valid = scores > float("-inf")
    paths, scores = paths[valid], scores[valid]
    num_tags = emissions.size(1)
    weights = scores.softmax(0)
    marginals = (torch.nn.functional.one_hot(paths, num_tags).double() * weights[:, None, None]).sum(0)
    return scores.logsumexp(0), paths[scores.argmax()], marginals


def random_crf(num_tags, scale=1.0, implementation="auto", **kwargs):
    crf = LinearChainCRF(num_tags, implementation=implementation, **kwargs)
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.normal_(0.0, scale)
    return crf


def with_implementation(crf: LinearChainCRF, implementation: str) -> LinearChainCRF:
    """A new CRF with the parameters and constraints of ``crf``, built with ``implementation``."""
    allowed = crf.allowed_start, crf.allowed_transitions, crf.allowed_end
    other = LinearChainCRF(crf.num_tags, *allowed, crf.constrain_training, implementation=implementation)
    other.load_state_dict(crf.state_dict())
    return other


def pytorch_crf_copy(crf: LinearChainCRF) -> CRF:
    """The oracle: pytorch-crf in float64 with the same parameters (same names, same convention)."""
    reference = CRF(crf.num_tags, batch_first=True).double()
    reference.load_state_dict(crf.state_dict())
    return reference


def valid_bio(labels):
    """Independent BIO check on label strings: an I-X must directly follow B-X or I-X."""
    previous = "O"
    for label in labels:
        if label.startswith("I-") and (previous == "O" or previous[2:] != label[2:]):
            return False
        previous = label
    return True


def ragged_mask(batch, length, generator, min_length=1):
    lengths = torch.randint(min_length, length + 1, (batch,), generator=generator)
    lengths[0] = length
    return torch.arange(length) < lengths[:, None]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    return request.param


# Masks with every kind of row: full, left-aligned ragged, not left-aligned, empty.
BRUTE_FORCE_MASKS = torch.tensor(
    [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 0, 1],
        [0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1],
    ],
    dtype=torch.bool,
)


# --------------------------------------------------------------------------------------------------------------
# bio_constraints


def test_bio_constraints_hand_written():
    labels = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]
    start, transitions, end = bio_constraints(labels)
    assert start.dtype == transitions.dtype == end.dtype == torch.bool
    assert start.tolist() == [True, False, True, False, True]
    assert transitions.tolist() == [
        # to: B-PER  I-PER  O     I-LOC  B-LOC
        [True, True, True, False, True],  # from B-PER
        [True, True, True, False, True],  # from I-PER
        [True, False, True, False, True],  # from O
        [True, False, True, True, True],  # from I-LOC
        [True, False, True, True, True],  # from B-LOC
    ]
    assert end.tolist() == [True] * 5


def test_bio_constraints_compares_whole_type_names():
    labels = ["O", "B-A", "I-A", "B-AB", "I-AB", "B-X-Y", "I-X-Y"]
    _, transitions, _ = bio_constraints(labels)
    index = {label: i for i, label in enumerate(labels)}
    assert not transitions[index["B-AB"], index["I-A"]]
    assert not transitions[index["B-A"], index["I-AB"]]
    assert transitions[index["B-X-Y"], index["I-X-Y"]]
    assert not transitions[index["I-X-Y"], index["I-A"]]


def test_bio_constraints_rejects_other_labels():
    with pytest.raises(ValueError):
        bio_constraints(["O", "B-PS", "E-PS"])


# --------------------------------------------------------------------------------------------------------------
# Brute force


@pytest.mark.parametrize("num_tags", [3, 4])
def test_brute_force_unconstrained(implementation, num_tags):
    torch.manual_seed(num_tags)
    crf = random_crf(num_tags, implementation=implementation)
    mask = BRUTE_FORCE_MASKS
    emissions = torch.randn(*mask.shape, num_tags) * 2

    log_z = crf.log_partition(emissions, mask)
    best = crf.decode(emissions, mask)
    marginals = crf.marginals(emissions, mask)
    assert log_z.dtype == marginals.dtype == torch.float32 and best.dtype == torch.long
    for b in range(mask.size(0)):
        expected_log_z, expected_best, expected_marginals = brute_force(
            emissions[b][mask[b]], crf.start_transitions, crf.transitions, crf.end_transitions
        )
        torch.testing.assert_close(log_z[b].double(), expected_log_z, rtol=1e-5, atol=1e-5)
        assert best[b][mask[b]].tolist() == expected_best.tolist()
        assert (best[b][~mask[b]] == -100).all()
        torch.testing.assert_close(marginals[b][mask[b]].double(), expected_marginals, rtol=1e-4, atol=1e-5)
        assert (marginals[b][~mask[b]] == 0).all()


@pytest.mark.parametrize("labels", [["O", "B-X", "I-X", "B-Y", "I-Y"], ["I-Y", "B-X", "O", "I-X", "B-Y"]])
def test_brute_force_constrained(implementation, labels):
    torch.manual_seed(0)
    allowed = bio_constraints(labels)
    crf = random_crf(
        len(labels), scale=2.0, implementation=implementation, allowed_start=allowed[0], allowed_transitions=allowed[1]
    )
    mask = BRUTE_FORCE_MASKS[:, :4]
    emissions = torch.randn(*mask.shape, len(labels)) * 3
    params = crf.start_transitions, crf.transitions, crf.end_transitions

    best = crf.decode(emissions, mask)
    marginals = crf.marginals(emissions, mask)
    log_z_unconstrained = crf.log_partition(emissions, mask)  # constrain_training=False
    crf.constrain_training = True
    log_z = crf.log_partition(emissions, mask)
    for b in range(mask.size(0)):
        row = emissions[b][mask[b]]
        expected_log_z, expected_best, expected_marginals = brute_force(row, *params, allowed=allowed)
        torch.testing.assert_close(log_z[b].double(), expected_log_z, rtol=1e-5, atol=1e-5)
        assert best[b][mask[b]].tolist() == expected_best.tolist()
        torch.testing.assert_close(marginals[b][mask[b]].double(), expected_marginals, rtol=1e-4, atol=1e-5)
        free_log_z, _, _ = brute_force(row, *params)
        torch.testing.assert_close(log_z_unconstrained[b].double(), free_log_z, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Sequence and entity probabilities

# Tag ids in a scrambled order, so that no test relies on where B, I and O sit.
PROBABILITY_LABELS = ["I-Y", "B-X", "O", "I-X", "B-Y"]
# (begin, inside) pairs of the entity tests: two entity types, a pair that BIO disallows, and begin == inside.
ENTITY_TAG_PAIRS = [("B-X", "I-X"), ("B-Y", "I-Y"), ("B-X", "I-Y"), ("O", "O")]


def probability_crf(implementation, constrained, generator=None):
    """A random CRF over PROBABILITY_LABELS, with the BIO constraints or none, and those constraints (or None)."""
    allowed = bio_constraints(PROBABILITY_LABELS) if constrained else None
    crf = LinearChainCRF(len(PROBABILITY_LABELS), *(allowed or ()), implementation=implementation)
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return crf, allowed


def crf_scores(crf):
    return crf.start_transitions.detach(), crf.transitions.detach(), crf.end_transitions.detach()


def tag_pairs(labels=PROBABILITY_LABELS, pairs=ENTITY_TAG_PAIRS):
    return [(labels.index(begin), labels.index(inside)) for begin, inside in pairs]


def brute_force_entity(paths, probabilities, positions, start, end, begin, inside):
    """The total probability of the paths (float64) of one row that hold exactly the entity: ``begin`` at the
    caller's position ``start``, ``inside`` at every later unmasked position before ``end`` (exclusive), and not
    ``inside`` at the next unmasked position, if any. ``positions``: the row's unmasked positions, in order.
    """
    if start not in positions or end <= start:
        return 0.0
    s = positions.index(start)
    last = sum(position < end for position in positions) - 1
    holds = (paths[:, s] == begin) & (paths[:, s + 1 : last + 1] == inside).all(1)
    if last + 1 < len(positions):
        holds &= paths[:, last + 1] != inside
    return probabilities[holds].sum().item()


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "bio"])
def test_sequence_probability_brute_force(implementation, constrained):
    generator = torch.Generator().manual_seed(11)
    crf, allowed = probability_crf(implementation, constrained, generator)  # constrain_training=False
    mask = BRUTE_FORCE_MASKS
    batch, length = mask.shape
    emissions = torch.randn(batch, length, crf.num_tags, generator=generator) * 2
    best_probability = crf.sequence_probability(emissions, crf.decode(emissions, mask), mask)
    assert best_probability.dtype == torch.float32 and best_probability.shape == (batch,)
    for b in range(batch):
        paths, scores = path_scores(emissions[b][mask[b]], *crf_scores(crf), allowed)
        expected = scores.softmax(0)  # 0 for the disallowed paths
        tags = torch.full((len(paths), length), -100)
        tags[:, mask[b]] = paths
        every_path = emissions[b].expand(len(paths), -1, -1), tags, mask[b].expand(len(paths), -1)
        probabilities = crf.sequence_probability(*every_path)
        assert probabilities.dtype == torch.float32
        torch.testing.assert_close(probabilities.double(), expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(probabilities.double().sum(), torch.tensor(1.0).double(), rtol=0, atol=1e-5)
        assert (probabilities[expected == 0] == 0).all()  # a disallowed path has no mass at all
        # The Viterbi path is the most probable one (an empty row: the empty path, probability 1).
        torch.testing.assert_close(best_probability[b].double(), expected.max(), rtol=1e-4, atol=1e-6)
        # The same as the constrained log-likelihood, whatever constrain_training says.
        crf.constrain_training = True
        torch.testing.assert_close(crf.log_likelihood(*every_path).exp(), probabilities, rtol=1e-6, atol=1e-7)
        crf.constrain_training = False


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "bio"])
def test_entity_probabilities_brute_force(implementation, constrained):
    generator = torch.Generator().manual_seed(12)
    crf, allowed = probability_crf(implementation, constrained, generator)
    mask = BRUTE_FORCE_MASKS
    batch, length = mask.shape
    emissions = torch.randn(batch, length, crf.num_tags, generator=generator) * 2
    # Every (start, end) of every row, ends exclusive: masked starts, empty spans, spans over masked positions
    # (row 2: 0 1 1 0 1), spans past a row's end, spans ending at a row's last position.
    spans = torch.tensor(
        [
            [b, start, end, begin, inside]
            for b in range(batch)
            for start in range(length)
            for end in range(length + 1)
            for begin, inside in tag_pairs()
        ]
    )
    probabilities = crf.entity_probabilities(emissions, mask, spans)
    assert probabilities.dtype == torch.float32 and probabilities.shape == (len(spans),)
    marginals = crf.marginals(emissions, mask)

    expected = []
    for b in range(batch):
        paths, scores = path_scores(emissions[b][mask[b]], *crf_scores(crf), allowed)
        positions = mask[b].nonzero().squeeze(1).tolist()
        for _, start, end, begin, inside in spans[spans[:, 0] == b].tolist():
            expected.append(brute_force_entity(paths, scores.softmax(0), positions, start, end, begin, inside))
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(probabilities.double(), expected, rtol=1e-4, atol=1e-6)

    rows, starts, ends, begins, insides = spans.t()
    impossible = ~mask[rows, starts] | (ends <= starts)
    assert (probabilities[impossible] == 0).all()
    assert (expected[~impossible] > 0.05).sum() > 30  # not only tiny probabilities were compared
    if constrained:  # B-X then I-Y is disallowed: only one-position entities have mass
        multi = (begins == PROBABILITY_LABELS.index("B-X")) & (insides == PROBABILITY_LABELS.index("I-Y"))
        multi &= (mask.long().cumsum(1)[rows, (ends - 1).clamp(min=0)] - mask.long().cumsum(1)[rows, starts]) > 0
        assert (probabilities[multi & ~impossible] == 0).all()
    # An entity is at most as probable as each of its tags.
    for (b, start, end, begin, inside), probability in zip(spans.tolist(), probabilities.tolist(), strict=True):
        if mask[b, start] and end > start:
            bound = min(
                [marginals[b, start, begin].item()]
                + [marginals[b, t, inside].item() for t in range(start + 1, end) if mask[b, t]]
            )
            assert probability <= bound + 1e-6


def test_entity_probabilities_from_a_position_add_up_to_its_begin_marginal(implementation):
    # Every path with y_s = b holds exactly one entity (b, i) starting at s, whose run of i ends at one last
    # position l >= s: summed over l, the entity probabilities are P(y_s = b). Longer rows than brute force can
    # enumerate, with masks that are not left-aligned; both implementations must agree.
    generator = torch.Generator().manual_seed(13)
    crf, _ = probability_crf(implementation, constrained=True, generator=generator)
    batch, length = 4, 16
    emissions = torch.randn(batch, length, crf.num_tags, generator=generator) * 2
    emissions[..., PROBABILITY_LABELS.index("I-X")] += 2.0  # long X entities are likely
    mask = torch.rand(batch, length, generator=generator) < 0.7
    mask[0] = True
    mask[1, :3] = False
    mask[1, -2:] = False
    spans, groups, heads = [], [], []  # a group per (row, start, pair); heads[g] = (row, start, begin) of group g
    for b in range(batch):
        positions = mask[b].nonzero().squeeze(1).tolist()
        for k, start in enumerate(positions):
            for begin, inside in tag_pairs():
                for last in positions[k:]:  # one span per last position l (the end after l)
                    spans.append([b, start, last + 1, begin, inside])
                    groups.append(len(heads))
                heads.append([b, start, begin])
    spans, groups, heads = torch.tensor(spans), torch.tensor(groups), torch.tensor(heads)
    probabilities = crf.entity_probabilities(emissions, mask, spans)
    totals = torch.zeros(len(heads)).index_add_(0, groups, probabilities)
    rows, starts, begins = heads.t()
    marginals = crf.marginals(emissions, mask)
    torch.testing.assert_close(totals, marginals[rows, starts, begins], rtol=1e-4, atol=1e-5)
    assert (probabilities > 0.05).sum() > 20

    other = with_implementation(crf, "parallel" if implementation == "sequential" else "sequential")
    torch.testing.assert_close(other.entity_probabilities(emissions, mask, spans), probabilities, rtol=1e-4, atol=1e-6)


def test_entity_to_the_end_of_a_row(implementation):
    # An entity over all of a row's tagged positions has no next position (R = f[y_l]): its probability is the
    # probability of the one path B-X I-X ... I-X, whether `end` is the position after the last tag or T.
    generator = torch.Generator().manual_seed(14)
    crf, _ = probability_crf(implementation, constrained=True, generator=generator)
    begin, inside = PROBABILITY_LABELS.index("B-X"), PROBABILITY_LABELS.index("I-X")
    batch, length = 4, 12
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[0] = True
    mask[1, 2:9] = True  # masked head and tail
    mask[1, 5] = False  # and a hole
    mask[2, 6] = True  # one position: the entity is the single B-X, y_l = b
    mask[3, [0, 4, 11]] = True
    emissions = torch.randn(batch, length, crf.num_tags, generator=generator)
    emissions[..., inside] += 4.0
    emissions[..., begin] += 2.0
    firsts = mask.long().argmax(1)
    lasts = length - 1 - mask.flip(1).long().argmax(1)
    path = torch.where(torch.arange(length) == firsts[:, None], begin, inside).masked_fill(~mask, -100)
    expected = crf.sequence_probability(emissions, path, mask)
    ends = torch.cat([lasts + 1, torch.full_like(lasts, length)])  # just after the last tag, or T
    rows = torch.arange(batch).repeat(2)
    spans = torch.stack([rows, firsts[rows], ends, torch.full_like(ends, begin), torch.full_like(ends, inside)], 1)
    probabilities = crf.entity_probabilities(emissions, mask, spans)
    torch.testing.assert_close(probabilities, expected.repeat(2), rtol=1e-4, atol=1e-7)
    assert (expected > 0.01).all()
    # Stopping one position before the end of row 0 (no mask): the last tag may then be anything but I-X.
    shorter = crf.entity_probabilities(emissions, mask, torch.tensor([[0, 0, length - 1, begin, inside]]))
    alternatives = path[:1].repeat(crf.num_tags, 1)
    alternatives[:, -1] = torch.arange(crf.num_tags)  # the last tag j
    each = crf.sequence_probability(emissions[:1].expand(crf.num_tags, -1, -1), alternatives)
    torch.testing.assert_close(shorter, each[torch.arange(crf.num_tags) != inside].sum(0, keepdim=True))
    assert 0.01 < shorter.item() < 1 - expected[0].item()


def low_precision_runs(results, emissions: torch.Tensor):
    """For float16 and bfloat16: (`results` of the rounded emissions in float32, [`results` of the half-precision
    emissions, and of both under bf16 autocast]), which must agree: the CRF computes in float32 whatever it gets."""
    for low in (torch.float16, torch.bfloat16):
        rounded = emissions.to(low)
        outputs = [results(rounded)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs += [results(rounded), results(rounded.float())]
        yield results(rounded.float()), outputs


def test_probabilities_of_half_precision_inputs_compute_in_float32(implementation):
    generator = torch.Generator().manual_seed(15)
    crf, _ = probability_crf(implementation, constrained=True, generator=generator)
    batch, length = 3, 8
    emissions = torch.randn(batch, length, crf.num_tags, generator=generator) * 3
    mask = ragged_mask(batch, length, generator)
    mask[2, 1] = False
    tags = torch.randint(crf.num_tags, (batch, length), generator=generator)
    spans = torch.tensor([[0, 0, 3, 1, 3], [1, 2, 4, 4, 0], [2, 0, 8, 2, 2], [0, 5, 8, 1, 3]])

    def results(em):
        return crf.sequence_probability(em, tags, mask), crf.entity_probabilities(em, mask, spans)

    for expected, outputs in low_precision_runs(results, emissions):
        for output in outputs:
            for value, reference in zip(output, expected, strict=True):
                assert value.dtype == torch.float32
                torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-7)
    # Half-precision parameters are used as float32 too.
    half = copy.deepcopy(crf).half()
    rounded = copy.deepcopy(half).float()
    for value, reference in zip(
        (half.sequence_probability(emissions, tags, mask), half.entity_probabilities(emissions, mask, spans)),
        (rounded.sequence_probability(emissions, tags, mask), rounded.entity_probabilities(emissions, mask, spans)),
        strict=True,
    ):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference, rtol=0, atol=0)


def test_entity_probabilities_edge_cases(implementation):
    crf, _ = probability_crf(implementation, constrained=True, generator=torch.Generator().manual_seed(16))
    num_tags = crf.num_tags
    emissions = torch.randn(2, 5, num_tags, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    valid = [0, 0, 2, 1, 3]
    out_of_range = [[-1, 0, 2, 1, 3], [2, 0, 2, 1, 3], [0, -1, 2, 1, 3], [0, 0, 6, 1, 3], [0, 0, 2, num_tags, 3]]
    out_of_range += [[0, 0, 2, 1, -1]]
    impossible = [[1, 0, 5, 1, 3], [0, 2, 4, 1, 3], [0, 3, 3, 1, 3]]  # an empty row, a masked start, end <= start
    spans = torch.tensor([valid, *out_of_range, *impossible], dtype=torch.int32)  # any integer dtype
    probabilities = crf.entity_probabilities(emissions, mask, spans)
    assert probabilities[0] > 0 and (probabilities[1:] == 0).all()
    probabilities.sum().backward()
    assert torch.isfinite(emissions.grad).all() and torch.isfinite(crf.transitions.grad).all()
    assert emissions.grad[0].abs().sum() > 0 and (emissions.grad[~mask] == 0).all()

    assert crf.entity_probabilities(emissions, None, spans[:0]).shape == (0,)
    for shape in ((0, 5, num_tags), (2, 0, num_tags)):
        empty = torch.randn(*shape)
        assert crf.entity_probabilities(empty, None, spans).tolist() == [0.0] * len(spans)
        assert crf.sequence_probability(empty, torch.zeros(shape[:2], dtype=torch.long)).tolist() == [1.0] * shape[0]
    for bad in (spans[:, :4], spans[0], spans.float(), spans.bool()):
        with pytest.raises(ValueError, match=re.escape("spans must be an integer tensor of shape (N, 5)")):
            crf.entity_probabilities(emissions, mask, bad)


# --------------------------------------------------------------------------------------------------------------
# pytorch-crf


def test_matches_pytorch_crf(implementation):
    generator = torch.Generator().manual_seed(1)
    batch, length, num_tags = 8, 20, 5
    ours = random_crf(num_tags, implementation=implementation)
    reference = pytorch_crf_copy(ours)

    emissions = torch.randn(batch, length, num_tags, generator=generator) * 2
    tags = torch.randint(num_tags, (batch, length), generator=generator)
    mask = ragged_mask(batch, length, generator)
    emissions_ours = emissions.clone().requires_grad_()
    emissions_reference = emissions.double().requires_grad_()

    ll = ours.log_likelihood(emissions_ours, tags, mask)
    ll_reference = reference(emissions_reference, tags, mask, reduction="none")
    assert ll.dtype == torch.float32
    torch.testing.assert_close(ll.double(), ll_reference.detach(), rtol=1e-5, atol=1e-5)

    ll.sum().backward()
    ll_reference.sum().backward()
    torch.testing.assert_close(emissions_ours.grad.double(), emissions_reference.grad, rtol=1e-5, atol=1e-5)
    for name in ("transitions", "start_transitions", "end_transitions"):
        ours_grad = getattr(ours, name).grad.double()
        torch.testing.assert_close(ours_grad, getattr(reference, name).grad, rtol=1e-5, atol=1e-5)

    best = ours.decode(emissions, mask)
    for b, path in enumerate(reference.decode(emissions.double(), mask)):
        assert best[b, : len(path)].tolist() == path
        assert (best[b, len(path) :] == -100).all()


def test_non_left_aligned_mask_equals_compacted_sequence(implementation):
    generator = torch.Generator().manual_seed(2)
    batch, length, num_tags = 6, 12, 4
    ours = random_crf(num_tags, implementation=implementation)
    reference = pytorch_crf_copy(ours)
    emissions = torch.randn(batch, length, num_tags, generator=generator)
    tags = torch.randint(num_tags, (batch, length), generator=generator)
    mask = torch.rand(batch, length, generator=generator) < 0.6
    mask[:, 5] = True  # no empty rows (pytorch-crf cannot take them)

    ll = ours.log_likelihood(emissions, tags, mask)
    best = ours.decode(emissions, mask)
    for b in range(batch):
        row_emissions, row_tags = emissions[b][mask[b]].double()[None], tags[b][mask[b]][None]
        expected = reference(row_emissions, row_tags, torch.ones_like(row_tags, dtype=torch.bool), reduction="none")
        torch.testing.assert_close(ll[b : b + 1].double(), expected.detach(), rtol=1e-5, atol=1e-5)
        assert (
            best[b][mask[b]].tolist()
            == reference.decode(row_emissions, torch.ones(row_tags.shape, dtype=torch.bool))[0]
        )


# --------------------------------------------------------------------------------------------------------------
# Constrained decoding


@pytest.mark.parametrize("labels", [KLUE_LABELS, ALPHABETICAL_LABELS], ids=["klue", "alphabetical"])
def test_constrained_decode_never_emits_invalid_bio(labels):
    generator = torch.Generator().manual_seed(3)
    num_tags = len(labels)
    inside = torch.tensor([label.startswith("I-") for label in labels])
    allowed_start, allowed_transitions, allowed_end = bio_constraints(labels)
    crf = LinearChainCRF(num_tags, allowed_start, allowed_transitions, allowed_end)
    unconstrained = LinearChainCRF(num_tags)
    with torch.no_grad():  # parameters that strongly prefer the disallowed moves
        crf.transitions.copy_(torch.randn(num_tags, num_tags, generator=generator) + 20.0 * ~allowed_transitions)
        crf.start_transitions.copy_(20.0 * ~allowed_start)
    unconstrained.load_state_dict(crf.state_dict())

    invalid_unconstrained = 0
    for _ in range(8):
        batch, length = 32, 24
        emissions = torch.randn(batch, length, num_tags, generator=generator) * 30 + 40.0 * inside
        mask = torch.rand(batch, length, generator=generator) < 0.8
        best = crf.decode(emissions, mask)
        assert ((best == -100) == ~mask).all()
        for b in range(batch):
            assert valid_bio([labels[tag] for tag in best[b][mask[b]].tolist()])
        free = unconstrained.decode(emissions, mask)
        invalid_unconstrained += sum(
            not valid_bio([labels[tag] for tag in free[b][mask[b]].tolist()]) for b in range(batch)
        )
    assert invalid_unconstrained > 0  # the emissions do tempt an unconstrained decoder


# --------------------------------------------------------------------------------------------------------------
# Precision


def test_half_precision_and_autocast_compute_in_float32(implementation):
    generator = torch.Generator().manual_seed(4)
    batch, length, num_tags = 4, 9, 5
    crf = random_crf(num_tags, implementation=implementation)
    emissions = torch.randn(batch, length, num_tags, generator=generator) * 3
    tags = torch.randint(num_tags, (batch, length), generator=generator)
    mask = ragged_mask(batch, length, generator)

    def results(em):
        return crf.log_likelihood(em, tags, mask), crf.decode(em, mask), crf.marginals(em, mask)

    for expected, outputs in low_precision_runs(results, emissions):
        for ll, best, marginals in outputs:
            assert ll.dtype == marginals.dtype == torch.float32
            torch.testing.assert_close(ll, expected[0], rtol=1e-6, atol=1e-6)
            assert torch.equal(best, expected[1])
            torch.testing.assert_close(marginals, expected[2], rtol=1e-6, atol=1e-6)


def test_low_precision_parameters_compute_in_float32(implementation):
    generator = torch.Generator().manual_seed(5)
    crf = random_crf(4, implementation=implementation).to(torch.bfloat16)
    emissions = torch.randn(3, 7, 4, generator=generator)
    tags = torch.randint(4, (3, 7), generator=generator)
    ll = crf.log_likelihood(emissions, tags)
    assert ll.dtype == torch.float32
    expected = copy.deepcopy(crf).float().log_likelihood(emissions, tags)  # the same, rounded, parameters
    torch.testing.assert_close(ll, expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# Masks and edge cases


def test_tags_at_masked_positions_are_ignored(implementation):
    generator = torch.Generator().manual_seed(6)
    batch, length, num_tags = 5, 10, 4
    crf = random_crf(num_tags, implementation=implementation)
    emissions = torch.randn(batch, length, num_tags, generator=generator, requires_grad=True)
    mask = torch.rand(batch, length, generator=generator) < 0.6
    tags = torch.randint(num_tags, (batch, length), generator=generator)
    other_tags = torch.where(mask, tags, torch.randint(num_tags, (batch, length), generator=generator))

    ll = crf.log_likelihood(emissions, tags.masked_fill(~mask, -100), mask)
    torch.testing.assert_close(ll, crf.log_likelihood(emissions, other_tags, mask), rtol=0, atol=0)
    ll.sum().backward()
    assert torch.isfinite(emissions.grad).all()
    assert (emissions.grad[~mask] == 0).all()


def test_marginals_are_distributions_on_unmasked_positions(implementation):
    generator = torch.Generator().manual_seed(7)
    crf = random_crf(6, implementation=implementation, allowed_transitions=torch.rand(6, 6, generator=generator) < 0.7)
    crf.allowed_transitions[:, 0] = True  # some tag can always follow
    mask = torch.rand(6, 30, generator=generator) < 0.7
    mask[0] = False
    marginals = crf.marginals(torch.randn(6, 30, 6, generator=generator) * 3, mask)
    torch.testing.assert_close(marginals.sum(-1)[mask], torch.ones(int(mask.sum())), rtol=1e-4, atol=1e-4)
    assert (marginals[~mask] == 0).all()
    assert (marginals >= 0).all()


def test_empty_rows_and_empty_batches(implementation):
    crf = random_crf(3, implementation=implementation)
    emissions = torch.randn(2, 4, 3, requires_grad=True)
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    tags = torch.full((2, 4), -100)
    tags[1] = torch.tensor([0, 2, -100, 1])
    ll = crf.log_likelihood(emissions, tags, mask)
    assert ll[0] == 0 and ll[1] < 0
    ll.sum().backward()
    assert torch.isfinite(emissions.grad).all() and torch.isfinite(crf.transitions.grad).all()
    assert crf.log_partition(emissions, mask)[0] == 0
    assert crf.decode(emissions, mask)[0].tolist() == [-100] * 4
    assert (crf.marginals(emissions, mask)[0] == 0).all()

    for shape in ((0, 5, 3), (2, 0, 3), (0, 0, 3)):
        emissions = torch.randn(*shape)
        mask = torch.ones(shape[:2], dtype=torch.bool)
        tags = torch.zeros(shape[:2], dtype=torch.long)
        assert crf.log_likelihood(emissions, tags, mask).shape == (shape[0],)
        assert crf.log_partition(emissions, mask).shape == (shape[0],)
        assert crf.decode(emissions, mask).shape == shape[:2]
        assert crf.marginals(emissions, mask).shape == shape


def test_length_one_and_default_mask(implementation):
    crf = random_crf(3, implementation=implementation)
    emissions = torch.randn(2, 1, 3)
    expected = torch.logsumexp(crf.start_transitions + emissions[:, 0] + crf.end_transitions, dim=-1)
    torch.testing.assert_close(crf.log_partition(emissions), expected)
    assert (
        crf.decode(emissions).tolist()
        == (crf.start_transitions + emissions[:, 0] + crf.end_transitions).argmax(-1, keepdim=True).tolist()
    )


def test_constrained_training_keeps_gradients_finite(implementation):
    labels = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    allowed_start, allowed_transitions, _ = bio_constraints(labels)
    crf = random_crf(
        5, implementation=implementation, allowed_start=allowed_start, allowed_transitions=allowed_transitions
    )
    crf.constrain_training = True
    emissions = (torch.randn(4, 40, 5) * 50).requires_grad_()
    tags = torch.randint(5, (4, 40))  # mostly invalid BIO: a log-likelihood near -1e4, but finite
    ll = crf.log_likelihood(emissions, tags)
    ll.sum().backward()
    assert torch.isfinite(ll).all()
    assert torch.isfinite(emissions.grad).all() and torch.isfinite(crf.transitions.grad).all()


def test_gradients_agree_between_implementations():
    # Autograd through the loop (the backward algorithm) and through the parallel reduction.
    generator = torch.Generator().manual_seed(9)
    labels = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    allowed_start, allowed_transitions, _ = bio_constraints(labels)
    emissions = torch.randn(6, 15, 5, generator=generator) * 3
    tags = torch.randint(5, (6, 15), generator=generator)
    mask = torch.rand(6, 15, generator=generator) < 0.7
    mask[1] = False
    mask[2] = torch.arange(15) == 7  # a single position, not the first
    gradients = {}
    for implementation in IMPLEMENTATIONS:
        torch.manual_seed(0)
        crf = random_crf(
            5, implementation=implementation, allowed_start=allowed_start, allowed_transitions=allowed_transitions
        )
        crf.constrain_training = True
        leaf = emissions.clone().requires_grad_()
        weights = torch.arange(1.0, 7.0)  # a different upstream gradient per sequence
        (crf.log_likelihood(leaf, tags, mask) * weights).sum().backward()
        gradients[implementation] = [leaf.grad] + [p.grad for p in crf.parameters()]
    for sequential, parallel in zip(gradients["sequential"], gradients["parallel"], strict=True):
        torch.testing.assert_close(sequential, parallel, rtol=1e-5, atol=1e-5)


def test_implementations_agree_on_long_sequences():
    generator = torch.Generator().manual_seed(8)
    crf = random_crf(13)
    emissions = torch.randn(4, 70, 13, generator=generator) * 2
    mask = torch.rand(4, 70, generator=generator) < 0.9
    results = {}
    for implementation in IMPLEMENTATIONS:
        forced = with_implementation(crf, implementation)
        results[implementation] = forced.log_partition(emissions, mask), forced.marginals(emissions, mask)
    torch.testing.assert_close(results["sequential"][0], results["parallel"][0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(results["sequential"][1], results["parallel"][1], rtol=1e-4, atol=1e-4)


def test_parallel_viterbi_finds_a_best_path_on_long_sequences():
    # The max-plus scan adds the same numbers as the loop in another order: where two paths tie within float32
    # rounding it may pick the other one, so the check is on exact (float64) path scores, not on the paths.
    generator = torch.Generator().manual_seed(10)
    labels = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    allowed = bio_constraints(labels)
    crf = random_crf(5, allowed_start=allowed[0], allowed_transitions=allowed[1], allowed_end=allowed[2])
    emissions = torch.randn(16, 300, 5, generator=generator) * 2
    mask = ragged_mask(16, 300, generator, min_length=150)
    mask[3, :40] = False  # not left-aligned
    paths = {}
    for implementation in IMPLEMENTATIONS:
        paths[implementation] = with_implementation(crf, implementation).decode(emissions, mask)
    start, transitions, end = (
        p.detach().double() for p in (crf.start_transitions, crf.transitions, crf.end_transitions)
    )

    def exact_score(b: int, path: torch.Tensor) -> float:
        row = emissions[b][mask[b]].double()
        return (start[path[0]] + row[torch.arange(len(path)), path].sum() + transitions[path[:-1], path[1:]].sum()
                + end[path[-1]]).item()  # fmt: skip

    for b in range(16):
        sequential, parallel = paths["sequential"][b][mask[b]], paths["parallel"][b][mask[b]]
        assert (paths["parallel"][b][~mask[b]] == -100).all()
        assert valid_bio([labels[tag] for tag in parallel])
        assert exact_score(b, parallel) == pytest.approx(exact_score(b, sequential), abs=1e-3)
    assert (paths["sequential"] == paths["parallel"]).float().mean() > 0.99  # ties are rare


@pytest.mark.parametrize("length", [1, 2, 5, 33])
def test_parallel_variants_equal_the_reference_recursions(length):
    """The scans against the loops, on left-aligned ragged rows: forward scores in the log semiring (alpha) and
    in the max-plus semiring (Viterbi scores, against a max-plus loop written here), log Z, and best paths."""
    generator = torch.Generator().manual_seed(length)
    batch, num_tags = 5, 4
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    mask = torch.arange(length) < lengths[:, None]
    em = (torch.randn(batch, length, num_tags, generator=generator) * 2).masked_fill(~mask[..., None], 0.0)
    start, transitions, end = (
        torch.randn(shape, generator=generator) for shape in ((num_tags,), (num_tags,) * 2, (num_tags,))
    )

    torch.testing.assert_close(
        crf_module._forward_parallel(em, start, transitions), crf_module._forward(em, start, transitions)
    )
    torch.testing.assert_close(
        crf_module._log_partition_parallel(em, lengths, start, transitions, end),
        crf_module._log_partition(em, lengths, start, transitions, end),
    )
    scores = [start + em[:, 0]]
    for t in range(1, length):
        scores.append((scores[-1].unsqueeze(2) + transitions).amax(dim=1) + em[:, t])
    torch.testing.assert_close(crf_module._forward_parallel(em, start, transitions, torch.amax), torch.stack(scores, 1))
    paths = crf_module._viterbi_parallel(em, lengths, start, transitions, end)
    assert torch.equal(paths[mask], crf_module._viterbi(em, lengths, start, transitions, end)[mask])


@pytest.mark.parametrize("length", [1, 5, 16, 37])
def test_trace_back_follows_the_maps_for_every_block_size(length):
    generator = torch.Generator().manual_seed(length)
    maps = torch.randint(6, (length, 3, 6), generator=generator)  # maps[t]: tag at t+1 -> tag at t
    last = torch.randint(6, (3,), generator=generator)
    expected, tag = [], last
    for t in range(length - 1, -1, -1):  # one step at a time
        tag = maps[t].gather(1, tag.unsqueeze(1)).squeeze(1)
        expected.append(tag)
    expected = torch.stack(expected[::-1])
    for block in (1, 2, 4, 16, 64):
        assert torch.equal(crf_module._trace_back(maps, last, block), expected), block


def test_auto_implementation_uses_the_loop_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("parallel implementation used")

    monkeypatch.setattr(crf_module, "_log_partition_parallel", fail)
    monkeypatch.setattr(crf_module, "_forward_parallel", fail)
    monkeypatch.setattr(crf_module, "_viterbi_parallel", fail)
    crf = random_crf(3)
    assert crf.implementation == "auto"
    emissions, tags = torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.long)
    spans = torch.tensor([[0, 1, 3, 1, 2]])
    crf.log_likelihood(emissions, tags)
    crf.marginals(emissions)
    crf.decode(emissions)
    crf.sequence_probability(emissions, tags)
    crf.entity_probabilities(emissions, None, spans)
    crf = random_crf(3, implementation="parallel")
    with pytest.raises(AssertionError, match="parallel implementation used"):
        crf.log_partition(emissions)
    with pytest.raises(AssertionError, match="parallel implementation used"):
        crf.marginals(emissions)
    with pytest.raises(AssertionError, match="parallel implementation used"):
        crf.sequence_probability(emissions, tags)
    with pytest.raises(AssertionError, match="parallel implementation used"):
        crf.entity_probabilities(emissions, None, spans)
    with pytest.raises(AssertionError, match="parallel implementation used"):
        crf.decode(emissions)


def test_implementation_is_a_validated_constructor_argument():
    message = re.escape("implementation must be one of 'auto', 'sequential', 'parallel', got 'fast'")
    with pytest.raises(ValueError, match=message):
        LinearChainCRF(3, implementation="fast")
    # The model's positional call (num_tags, allowed_start, allowed_transitions, allowed_end, constrain_training).
    crf = LinearChainCRF(len(KLUE_LABELS), *bio_constraints(KLUE_LABELS), True, implementation="parallel")
    assert crf.constrain_training and crf.implementation == "parallel"
    assert "implementation='parallel'" in repr(crf)
    with pytest.raises(ValueError, match=message):  # reassigning is validated the same way
        crf.implementation = "fast"
    assert crf.implementation == "parallel"
    crf.implementation = "sequential"
    assert crf.implementation == "sequential"


def test_no_data_dependent_host_synchronisation(implementation):
    # Meta tensors have shapes but no values: any .item(), .tolist(), bool(tensor) or nonzero() raises, so this
    # shows (on CPU) that the hot paths never wait for the device.
    crf = LinearChainCRF(
        len(KLUE_LABELS), *bio_constraints(KLUE_LABELS), constrain_training=True, implementation=implementation
    ).to("meta")
    emissions = torch.randn(4, 9, len(KLUE_LABELS), device="meta", requires_grad=True)
    tags = torch.zeros(4, 9, dtype=torch.long, device="meta")
    mask = torch.ones(4, 9, dtype=torch.bool, device="meta")
    crf.log_likelihood(emissions, tags, mask).sum().backward()
    assert emissions.grad.shape == emissions.shape
    assert crf.decode(emissions, mask).shape == (4, 9)
    assert crf.marginals(emissions, mask).shape == emissions.shape
    assert crf.sequence_probability(emissions, tags, mask).shape == (4,)
    spans = torch.zeros(7, 5, dtype=torch.long, device="meta")
    assert crf.entity_probabilities(emissions, mask, spans).shape == (7,)


def test_state_dict_holds_only_the_parameters():
    crf = LinearChainCRF(len(KLUE_LABELS), *bio_constraints(KLUE_LABELS))
    assert set(crf.state_dict()) == {"start_transitions", "end_transitions", "transitions"}
    assert crf.allowed_transitions.shape == (13, 13)
    bare = LinearChainCRF(13)
    assert bare.allowed_start is None and bare.allowed_transitions is None and bare.allowed_end is None
    assert (bare.transitions.abs() <= 0.1).all()


# --------------------------------------------------------------------------------------------------------------
# k best sequences


@pytest.mark.parametrize("labels", [None, ["I-Y", "B-X", "O", "I-X", "B-Y"]])
def test_k_best_equals_brute_force_enumeration(implementation, labels):
    """The k best sequences and log P(y | x) of each row are the top k of all K^n sequences (masks of every kind,
    BIO constraints or none), and the first one is decode's."""
    torch.manual_seed(1)
    num_tags = 3 if labels is None else len(labels)
    allowed = None if labels is None else bio_constraints(labels)
    names = ("allowed_start", "allowed_transitions", "allowed_end")
    kwargs = {} if allowed is None else dict(zip(names, allowed, strict=True))
    crf = random_crf(num_tags, scale=1.5, implementation=implementation, **kwargs)
    mask = BRUTE_FORCE_MASKS[:, :4]
    emissions = torch.randn(*mask.shape, num_tags) * 2
    params = crf.start_transitions, crf.transitions, crf.end_transitions
    k = 7
    tags, log_probabilities = crf.k_best(emissions, mask, k)
    assert tags.shape == (mask.size(0), k, mask.size(1)) and log_probabilities.shape == (mask.size(0), k)
    assert tags[:, 0].tolist() == crf.decode(emissions, mask).tolist()
    for b in range(mask.size(0)):
        paths, scores = path_scores(emissions[b][mask[b]], *params, allowed=allowed)
        log_z = scores.logsumexp(0)
        expected = (scores - log_z).sort(descending=True).values[:k]
        expected = torch.cat([expected, expected.new_full((k - expected.numel(),), float("-inf"))])
        torch.testing.assert_close(log_probabilities[b].double(), expected, rtol=1e-4, atol=1e-4)
        found = []
        for r in range(k):
            assert (tags[b, r][~mask[b]] == -100).all()
            if log_probabilities[b, r] == float("-inf"):
                continue
            path = tags[b, r][mask[b]]
            index = (paths == path).all(1).nonzero().item() if path.numel() else 0
            found.append(index)
            torch.testing.assert_close(log_probabilities[b, r].double(), scores[index] - log_z, rtol=1e-4, atol=1e-4)
        assert len(set(found)) == len(found)  # k distinct sequences


def test_k_best_rejects_a_bad_k():
    crf = random_crf(3)
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            crf.k_best(torch.randn(1, 2, 3), None, k)
