"""Tests of koelectra_crf.crf against a brute-force oracle and pytorch-crf.

Every algorithm that exists in two implementations (a loop over time, used on CPU, and a parallel one, used on
GPU) is tested in both, forced through ``LinearChainCRF(..., implementation=...)``.
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


def brute_force(emissions, start, transitions, end, allowed=None):
    """Enumerate all K^L tag sequences of one sequence ``emissions`` (L, K), in float64.

    ``allowed`` = (allowed_start, allowed_transitions, allowed_end) excludes the disallowed paths.
    Returns (log Z, best path (L,), marginals (L, K)).
    """
    emissions, start, transitions, end = (x.double() for x in (emissions, start, transitions, end))
    length, num_tags = emissions.shape
    if length == 0:
        return torch.tensor(0.0, dtype=torch.float64), torch.zeros(0, dtype=torch.long), emissions
    paths = torch.tensor(list(itertools.product(range(num_tags), repeat=length)))  # (N, L)
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
        paths, scores = paths[valid], scores[valid]
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

    for low in (torch.float16, torch.bfloat16):
        rounded = emissions.to(low)
        expected = results(rounded.float())
        outputs = [results(rounded)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs.append(results(rounded))
            outputs.append(results(rounded.float()))
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
    # The loop's gradient is the backward algorithm (a custom autograd Function); the parallel one is autograd.
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
    monkeypatch.setattr(crf_module, "_forward_alphas_parallel", fail)
    monkeypatch.setattr(crf_module, "_viterbi_parallel", fail)
    crf = random_crf(3)
    assert crf.implementation == "auto"
    emissions, tags = torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.long)
    crf.log_likelihood(emissions, tags)
    crf.marginals(emissions)
    crf.decode(emissions)
    crf = random_crf(3, implementation="parallel")
    with pytest.raises(AssertionError, match="parallel implementation used"):
        crf.log_partition(emissions)
    with pytest.raises(AssertionError, match="parallel implementation used"):
        crf.marginals(emissions)
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


def test_state_dict_holds_only_the_parameters():
    crf = LinearChainCRF(len(KLUE_LABELS), *bio_constraints(KLUE_LABELS))
    assert set(crf.state_dict()) == {"start_transitions", "end_transitions", "transitions"}
    assert crf.allowed_transitions.shape == (13, 13)
    bare = LinearChainCRF(13)
    assert bare.allowed_start is None and bare.allowed_transitions is None and bare.allowed_end is None
    assert (bare.transitions.abs() <= 0.1).all()
