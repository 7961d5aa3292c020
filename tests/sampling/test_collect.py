"""The sample collector: burn-in, thinning, bounded memory, order, saving; and the full-data loss helper."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from gradwise.sampling.collect import SampleCollector, gaussian_neg_log_prior, neg_log_posterior


def chain(collector, p, steps, start=1):
    """Sets p to the step number at every step, so each snapshot tells which step it came from."""
    stored = []
    for k in range(start, start + steps):
        with torch.no_grad():
            p.fill_(k)
        if collector.step():
            stored.append(k)
    return stored


def test_burn_in_and_thinning():
    p = torch.zeros(2, 3)
    collector = SampleCollector([p], burn_in=10, thin=3, max_samples=100)
    stored = chain(collector, p, 40)
    assert stored == list(range(13, 41, 3)) == collector.steps
    samples = collector.samples()["0"]
    assert samples.shape == (len(stored), 2, 3)
    assert samples[:, 0, 0].tolist() == stored
    assert [s["0"][1, 2].item() for s in collector] == stored  # iteration yields snapshots in chain order
    assert collector.mean()["0"][0, 0].item() == pytest.approx(sum(stored) / len(stored))


def test_full_buffer_thins_and_keeps_samples_evenly_spaced_over_the_whole_chain():
    p = torch.zeros(4)
    collector = SampleCollector([p], burn_in=5, thin=2, max_samples=8)
    buffer = collector.buffers["0"]
    chain(collector, p, 1000)
    assert collector.buffers["0"] is buffer and buffer.shape[0] == 8  # memory fixed at construction
    steps = collector.steps
    assert 4 <= len(steps) < 8
    gaps = {b - a for a, b in zip(steps, steps[1:], strict=False)}
    assert gaps == {collector.thin}
    assert all((s - 5) % collector.thin == 0 for s in steps)
    assert steps[-1] > 1000 - collector.thin  # reaches the end of the chain
    assert collector.samples()["0"][:, 0].tolist() == steps


def test_latest_mode_is_a_ring_buffer_of_the_most_recent_snapshots():
    p = torch.zeros(1)
    collector = SampleCollector([p], thin=1, max_samples=5, when_full="latest")
    chain(collector, p, 13)
    assert collector.steps == [9, 10, 11, 12, 13]
    assert collector.samples()["0"][:, 0].tolist() == [9, 10, 11, 12, 13]
    assert [s["0"].item() for s in collector] == [9, 10, 11, 12, 13]


@pytest.mark.parametrize("when_full", ["thin", "latest"])
def test_state_dict_round_trip_resumes_the_collection(when_full):
    p = torch.zeros(3)
    straight = SampleCollector([p], burn_in=3, thin=2, max_samples=6, when_full=when_full)
    chain(straight, p, 50)

    q = torch.zeros(3)
    first = SampleCollector([q], burn_in=3, thin=2, max_samples=6, when_full=when_full)
    chain(first, q, 20)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = SampleCollector([q], burn_in=3, thin=2, max_samples=6, when_full=when_full)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    chain(second, q, 30, start=21)
    assert second.steps == straight.steps and second.thin == straight.thin
    assert torch.equal(second.samples()["0"], straight.samples()["0"])
    with pytest.raises(ValueError, match="max_samples"):
        SampleCollector([q], burn_in=3, thin=2, max_samples=7, when_full=when_full).load_state_dict(
            straight.state_dict()
        )


def test_tracks_a_modules_named_parameters():
    model = nn.Linear(2, 1)
    collector = SampleCollector(model, max_samples=4)
    collector.step()
    with torch.no_grad():
        model.weight.add_(1.0)
    collector.step()
    samples = collector.samples()
    assert set(samples) == {"weight", "bias"}
    torch.testing.assert_close(samples["weight"][1] - samples["weight"][0], torch.ones(1, 2))


@pytest.mark.parametrize("kwargs,match", [
    (dict(burn_in=-1), "burn_in"),
    (dict(thin=0), "thin"),
    (dict(max_samples=1), "max_samples"),
    (dict(thin=1.5), "thin"),
    (dict(when_full="fifo"), "when_full"),
])
def test_bad_arguments_are_refused_with_their_name(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        SampleCollector([torch.zeros(1)], **kwargs)


def test_mean_before_any_sample_is_an_error():
    with pytest.raises(RuntimeError, match="no sample"):
        SampleCollector([torch.zeros(1)], burn_in=5).mean()


def test_neg_log_posterior_scales_the_batch_mean_and_adds_the_prior():
    w = torch.tensor([1.0, -2.0])
    prior = gaussian_neg_log_prior([w], std=2.0)
    assert prior.item() == pytest.approx(5.0 / 8.0)
    assert neg_log_posterior(torch.tensor(0.5), 100, prior).item() == pytest.approx(50.0 + 5.0 / 8.0)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="dataset_size"):
            neg_log_posterior(torch.tensor(0.5), bad)
    with pytest.raises(ValueError, match="std"):
        gaussian_neg_log_prior([w], std=0.0)
