import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import MULTI_INPUT_GROUPS, DictDetector, TwoLayer, detector_inputs, random_widths
from torch.utils.flop_counter import FlopCounterMode

from nas_prune import channel_groups, count_macs, create_model, measure_latency, model_names, prune
from nas_prune.cost import CostModel, measure_speedup


def test_two_layer_costs_by_hand():
    model, x = TwoLayer(), torch.randn(3, 1, 8, 8)
    # conv1: 8 filters x 1x3x3 x 64 positions; conv2: 4 x 8x3x3 x 64; fc: 4 x 10.
    assert count_macs(model, x) == (8 * 9 * 64 + 4 * 72 * 64 + 40, 72 + 16 + 288 + 8 + 50)
    slim = prune(model, x, {"conv1": 4, "conv2": 2})
    assert count_macs(slim, x) == (4 * 9 * 64 + 2 * 36 * 64 + 20, 36 + 8 + 72 + 4 + 30)


@pytest.mark.parametrize("name", model_names())
def test_thop_agrees_with_flop_counter(name):
    model, x = create_model(name, in_channels=1), torch.randn(2, 1, 28, 28)
    macs, params = count_macs(model, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    reference = counter.get_total_flops() / (2 * x.shape[0])
    assert abs(macs - reference) / reference < 0.02
    assert params == sum(p.numel() for p in model.parameters())


def test_counting_leaves_the_model_untouched():
    model = TwoLayer().train()
    keys = set(model.state_dict())
    count_macs(model, torch.randn(2, 1, 8, 8))
    assert model.training and set(model.state_dict()) == keys
    assert all(not m._forward_hooks for m in model.modules())


def test_measure_latency_is_a_positive_median_and_side_effect_free():
    model = TwoLayer().train()
    before = copy.deepcopy(model.state_dict())
    threads = torch.get_num_threads()
    ms = measure_latency(model, torch.randn(5, 1, 8, 8), batch=2, warmup=2, repeats=5, threads=1)
    assert ms > 0
    assert model.training and torch.get_num_threads() == threads
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt/mallinfo2 are glibc's")
def test_timing_keeps_freed_activations_in_the_heap_instead_of_fresh_page_faults():
    """A 64 MiB activation is mmap-ed (fresh page faults every pass) under glibc's defaults, and served
    from the heap once a model has been timed: the heap setting must take effect in a new process."""
    script = textwrap.dedent(
        """
        import ctypes, torch
        from conftest import TwoLayer
        from nas_prune import measure_latency

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in
                        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Info

        def mmapped_while_alive():
            before = libc.mallinfo2().hblkhd
            big = torch.ones(16 << 20)  # 64 MiB
            grew = libc.mallinfo2().hblkhd - before
            del big
            return grew

        default = mmapped_while_alive()
        measure_latency(TwoLayer(), torch.randn(2, 1, 8, 8), warmup=1, repeats=2, threads=1)
        print(default, mmapped_while_alive())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
    ).stdout.split()
    default, steady = map(int, out)
    assert default >= 64 << 20, "glibc's default mmaps a 64 MiB block (the test's premise)"
    assert steady == 0


class DriftingClock:
    """Deterministic ``latency_fn``: params-proportional time times a machine load that drifts per call.

    Load changes between calls ~2x (as measured on this shared CPU), slowly enough that a back-to-back
    pair shares it; ``offset`` shifts where in the load pattern a measurement starts.
    """

    def __init__(self, offset=0):
        self.calls = offset

    def __call__(self, model, example, device="cpu", batch=1, **kwargs):
        load = [1.0, 1.1, 2.0, 2.1, 1.3, 1.4, 1.0, 1.05][(self.calls // 2) % 8]
        self.calls += 1
        return load * batch * sum(p.numel() for p in model.parameters()) * 1e-3


def test_measure_speedup_pairs_dense_and_pruned_and_two_measurements_agree():
    dense, x = TwoLayer(), torch.randn(2, 1, 8, 8)
    slim = prune(dense, x, {"conv1": 4, "conv2": 2})
    exact = sum(p.numel() for p in dense.parameters()) / sum(p.numel() for p in slim.parameters())
    first = measure_speedup(dense, slim, x, batch=4, rounds=5, latency_fn=DriftingClock(0))
    second = measure_speedup(dense, slim, x, batch=4, rounds=5, latency_fn=DriftingClock(4))
    assert first.rounds == 5 and first.low <= first.ratio <= first.high
    assert first.ratio == pytest.approx(exact) and second.ratio == pytest.approx(exact)
    # Timed once each at different moments, the same pair is off by the load's 2x drift.
    unpaired = DriftingClock(4)(dense, x, batch=4) / DriftingClock(0)(slim, x, batch=4)
    assert abs(unpaired / exact - 1) > 0.5
    assert first.dense_ms > first.pruned_ms > 0
    with pytest.raises(ValueError, match="rounds"):
        measure_speedup(dense, slim, x, rounds=0, latency_fn=DriftingClock())


def test_measure_speedup_with_real_timing_is_positive():
    dense, x = TwoLayer(), torch.randn(2, 1, 8, 8)
    slim = prune(dense, x, 0.5)
    result = measure_speedup(dense, slim, x, rounds=2, warmup=1, repeats=3, threads=1, min_run_time=0.01)
    assert result.ratio > 0 and result.dense_ms > 0 and result.pruned_ms > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measure_latency_on_cuda():
    assert measure_latency(TwoLayer(), torch.randn(1, 1, 8, 8), device="cuda", warmup=2, repeats=5) > 0


def test_cost_model_layer_table_names_the_groups_that_cut_each_layer():
    cost = CostModel(TwoLayer(), torch.randn(2, 1, 8, 8))
    table = {layer.name: (layer.params, layer.area, layer.outs, layer.ins) for layer in cost.layers}
    assert table == {
        "conv1": (72, 9 * 64, [("conv1", 8)], []),
        "bn1": (16, 0, [("conv1", 8)], []),
        "conv2": (288, 9 * 64, [("conv2", 4)], [("conv1", 8)]),
        "bn2": (8, 0, [("conv2", 4)], []),
        "fc": (50, 1, [], [("conv2", 4)]),
    }
    assert cost.drop_fractions({"conv1": 2}) == {"conv1": 0.75, "conv2": 0.0}


def _cost_model_cases():
    from conftest import COUPLING_MODELS

    for name, (factory, shape) in COUPLING_MODELS.items():
        yield pytest.param(factory, shape, id=name)
    for name in model_names():
        yield pytest.param(lambda name=name: create_model(name, in_channels=1), (1, 28, 28), id=name)


@pytest.mark.parametrize("factory, shape", list(_cost_model_cases()))
def test_cost_model_is_exact_on_random_widths(factory, shape):
    model, x = factory(), torch.randn(2, *shape)
    cost = CostModel(model, x)
    assert cost.dense == count_macs(model, x)
    for seed in range(2):
        widths = random_widths(channel_groups(model, x), seed)
        assert cost.cost(widths) == count_macs(prune(model, x, widths), x)


# --- models with several inputs (a tuple, a dict) and several outputs ------------------------------


def test_macs_of_a_model_with_keyword_inputs_by_hand_per_sample():
    model = DictDetector()
    # stem 8 x 3x3x3 at 16x16; body 12 x 8x3x3 at 8x8 (stride 2); heads at 8x8: boxes 4 x 12,
    # scores 6 x 12x3x3 then 3 x 6 (thop counts no bias).
    macs = 8 * 27 * 256 + 12 * 72 * 64 + 4 * 12 * 64 + 6 * 108 * 64 + 3 * 6 * 64
    params = sum(p.numel() for p in model.parameters())
    assert count_macs(model, detector_inputs(2)) == (macs, params) == count_macs(model, detector_inputs(4))


def test_cost_model_is_exact_for_several_inputs_and_outputs(multi_input_model):
    name, model, inputs = multi_input_model
    cost = CostModel(model, inputs)
    assert cost.groups == MULTI_INPUT_GROUPS[name]
    assert cost.dense == count_macs(model, inputs)
    for seed in range(2):
        widths = random_widths(channel_groups(model, inputs), seed)
        assert cost.cost(widths) == count_macs(prune(model, inputs, widths), inputs)


def test_measure_latency_resizes_every_input_to_the_batch(multi_input_model):
    _, model, inputs = multi_input_model
    seen = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))  # copied with the model
    for batch in (1, 4):
        seen.clear()
        assert (
            measure_latency(model, inputs, batch=batch, warmup=1, repeats=2, threads=1, min_run_time=0.01) > 0
        )
        assert seen and set(seen) == {batch}
    slim = prune(model, inputs, 0.5)
    exact = sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in slim.parameters())
    speedup = measure_speedup(model, slim, inputs, batch=4, rounds=3, latency_fn=DriftingClock(0))
    assert speedup.ratio == pytest.approx(exact)
