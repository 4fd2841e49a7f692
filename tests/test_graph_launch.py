"""Decode launches replayed as CUDA graphs (floatzip.backends.triton.graph_launch).

Without a GPU, torch.cuda's graph calls are replaced by a small emulation
(:class:`FakeCuda`): a capture records the kernel launches made during it
instead of running them, and a replay runs what it recorded, in Triton's
interpreter. That checks the launcher's logic (when it captures, replays,
launches directly, gives up) and that replayed decodes are bit-exact; on a
GPU the same tests run on real graphs.
"""
from __future__ import annotations

import contextlib
import gc
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from conftest import bf16_bits  # noqa: E402

from floatzip.backends import triton as td  # noqa: E402
from floatzip.backends.triton import block, graph_launch, kernel  # noqa: E402
from floatzip.codecs.layout import LANES  # noqa: E402
from floatzip.decode import decode_tensor  # noqa: E402
from floatzip.encode import encode_tensor  # noqa: E402
from floatzip.errors import DecoderArgumentError, UnsupportedError  # noqa: E402

CUDA = torch.cuda.is_available()


class FakeCuda:
    """The torch.cuda calls GraphLauncher makes, emulated on the CPU."""

    def __init__(self):
        self.capturing = None           # the FakeGraph recording, if any
        self.outer_capture = False      # "the caller is capturing its own graph"
        self.fail_capture = False
        self.kernel_runs = 0

    class Graph:
        def __init__(self, fake):
            self.fake, self.launches = fake, []

        def capture_begin(self, pool=None, capture_error_mode="global"):
            # Its own pool (see graph_launch): a shared one dies with its graphs.
            assert pool is None and capture_error_mode == "thread_local"
            if self.fake.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")
            self.fake.capturing = self

        def capture_end(self):
            self.fake.capturing = None

        def replay(self):
            for run in self.launches:
                run()

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "CUDAGraph", lambda: FakeCuda.Graph(self))
        monkeypatch.setattr(cuda, "is_current_stream_capturing", lambda: self.outer_capture)
        monkeypatch.setattr(cuda, "Stream", lambda device=None: object())
        monkeypatch.setattr(cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(cuda, "device", lambda d: contextlib.nullcontext())
        monkeypatch.setattr(graph_launch, "_failed", {})
        real_kernel = block.launchable
        fake = self

        class Launch:           # Triton's launch: recorded while capturing
            def __init__(self, name):
                self.name = name

            def __getitem__(self, grid):
                def go(*args, **kw):
                    def run():
                        fake.kernel_runs += 1
                        real_kernel(self.name)[grid](*args, **kw)
                    if fake.capturing is not None:
                        fake.capturing.launches.append(run)
                    else:
                        run()
                return go

        monkeypatch.setattr(block, "launchable", Launch)


@pytest.fixture
def fake(monkeypatch):
    """A CPU decoder whose launcher replays (emulated) CUDA graphs."""
    if CUDA:
        pytest.skip("emulates CUDA graphs on the CPU; test_real_graphs covers the GPU")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    f = FakeCuda()
    f.install(monkeypatch)
    return f


def coded_block(seed=0):
    weights = [np.random.default_rng(seed + i).standard_normal(3000) * 0.02 for i in range(2)]
    encs = [encode_tensor(bf16_bits(w).view(np.uint8), "BF16", (3000,),
                          backend="numpy", lane_symbols=32) for w in weights]
    return encs, [decode_tensor(e, backend="numpy") for e in encs]


def graph_decoder(device, encs):
    launch = "graph" if device.type == "cuda" else None     # whatever FLOATZIP_LAUNCH says
    dec = td.DeviceBlockDecoder.from_encoded(encs, device, groups_per_program=8, launch=launch)
    if device.type != "cuda":
        dec._graphs = graph_launch.GraphLauncher(device)    # the setter refuses the CPU
    return dec


def assert_decoded(views, refs):
    assert len(views) == len(refs)
    for view, ref in zip(views, refs):
        np.testing.assert_array_equal(view.contiguous().view(torch.uint8).cpu().numpy(), ref)


def test_second_use_of_a_buffer_captures_then_replays(fake):
    encs, refs = coded_block()
    dec = graph_decoder(torch.device("cpu"), encs)
    out = dec.new_output()
    for call in range(4):
        out.fill_(0xA5)                 # a replay must write every byte again
        assert_decoded(dec.decode(out), refs)
        assert fake.kernel_runs == call + 1         # one real launch a call
    assert (dec._graphs.captures, dec._graphs.replays) == (1, 3)
    assert gc.isenabled()               # paused only while capturing
    dec.check()

    other = dec.new_output()            # a new buffer: direct, then its own graph
    for _ in range(2):
        other.fill_(0)
        assert_decoded(dec.decode(other), refs)
    assert (dec._graphs.captures, dec._graphs.replays) == (2, 4)
    out.fill_(0)
    assert_decoded(dec.decode(out), refs)           # the first graph is still there
    assert (dec._graphs.captures, dec._graphs.replays) == (2, 5)


def test_a_capture_in_progress_gets_direct_launches(fake):
    encs, refs = coded_block(1)
    dec = graph_decoder(torch.device("cpu"), encs)
    out = dec.new_output()
    fake.outer_capture = True
    for _ in range(3):
        assert_decoded(dec.decode(out), refs)
    assert (dec._graphs.captures, dec._graphs.replays) == (0, 0)
    fake.outer_capture = False
    dec.decode(out)                     # those did not count: direct, then captured
    assert dec._graphs.captures == 0
    dec.decode(out)
    assert dec._graphs.captures == 1


def test_a_failed_capture_falls_back_to_direct_launches_for_good(fake):
    encs, refs = coded_block(2)
    dec = graph_decoder(torch.device("cpu"), encs)
    out = dec.new_output()
    dec.decode(out)
    fake.fail_capture = True
    with pytest.warns(RuntimeWarning, match="could not be captured.*not permitted"):
        assert_decoded(dec.decode(out), refs)
    assert gc.isenabled()
    fake.fail_capture = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            out.fill_(0)
            assert_decoded(dec.decode(out), refs)
    assert dec._graphs.failed and dec._graphs.captures == 0
    assert fake.kernel_runs == 4
    # For good on that device: another decoder does not try again.
    other = graph_decoder(torch.device("cpu"), encs)
    for _ in range(2):
        assert_decoded(other.decode(out), refs)
    assert other._graphs.failed and other._graphs.captures == 0


def test_a_launch_that_refuses_its_arguments_raises_inside_a_capture_too(fake):
    """The caller's error, not a failed capture: graphs stay on."""
    encs, _ = coded_block(7)
    dec = graph_decoder(torch.device("cpu"), encs)
    out = dec.new_output()
    dec.build = dec.build._replace(prefetch="auto")     # unresolved: launches refuse it
    for _ in range(2):                                  # direct, then inside a capture
        with pytest.raises(DecoderArgumentError, match="prefetch 'auto' is not resolved"):
            dec.decode(out)
    assert dec._graphs.failed is None and fake.capturing is None


def test_graphs_for_the_first_buffers_reused_then_direct_launches(fake):
    """Buffers in rotation must not make it capture again and again."""
    encs, refs = coded_block(3)
    dec = graph_decoder(torch.device("cpu"), encs)
    buffers = [dec.new_output() for _ in range(graph_launch.MAX_GRAPHS + 2)]
    for _ in range(3):
        for buf in buffers:
            buf.fill_(0)
            assert_decoded(dec.decode(buf), refs)
    assert dec._graphs.captures == graph_launch.MAX_GRAPHS
    assert dec._graphs.replays == 2 * graph_launch.MAX_GRAPHS
    assert fake.kernel_runs == 3 * len(buffers)


def test_a_new_build_is_a_new_graph(fake):
    encs, refs = coded_block(4)
    dec = graph_decoder(torch.device("cpu"), encs)
    out = dec.new_output()
    dec.decode(out)
    dec.decode(out)
    dec.build = dec.build._replace(raw_ahead=dec.raw_ahead // 2)    # the same buffers
    out.fill_(0)
    assert_decoded(dec.decode(out), refs)       # direct: first launch of this build
    assert dec._graphs.captures == 1
    out.fill_(0)
    assert_decoded(dec.decode(out), refs)
    assert dec._graphs.captures == 2
    # The fifo scratch is baked in too (the "fifo" build writes it).
    dec.build = dec.build._replace(staging="fifo")
    dec.fifo = torch.zeros(kernel.FIFO_SLOTS.value * LANES * 8 * dec.programs, dtype=torch.int32)
    for _ in range(2):
        dec.decode(out)
    dec.fifo = dec.fifo.clone()
    for _ in range(2):
        out.fill_(0)
        assert_decoded(dec.decode(out), refs)
    assert dec._graphs.captures == 4


def test_launch_option(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("FLOATZIP_LAUNCH", raising=False)
    encs, _ = coded_block(5)
    dec = td.DeviceBlockDecoder.from_encoded(encs, "cpu")
    assert dec.launch == "direct"           # the default off CUDA
    with pytest.raises(UnsupportedError, match="CUDA graphs"):
        td.DeviceBlockDecoder.from_encoded(encs, "cpu", launch="graph")
    with pytest.raises(DecoderArgumentError, match="launch must be one of"):
        dec.launch = "eventually"
    if CUDA:
        assert td.DeviceBlockDecoder.from_encoded(encs, "cuda").launch == "graph"
    # The default on CUDA, and the environment's say over it.
    cuda = torch.device("cuda", 0)
    assert td.default_launch(cuda) == "graph" and td.default_launch(torch.device("cpu")) == "direct"
    monkeypatch.setenv("FLOATZIP_LAUNCH", "direct")
    assert td.default_launch(cuda) == "direct"
    monkeypatch.setenv("FLOATZIP_LAUNCH", "sometimes")
    with pytest.raises(DecoderArgumentError, match="FLOATZIP_LAUNCH"):
        td.default_launch(cuda)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.filterwarnings("error:floatzip:RuntimeWarning")
def test_real_graphs():
    """On a GPU: replays bit-exact, on the current stream, and the decode
    inside a caller's own CUDA graph is recorded by that graph."""
    encs, refs = coded_block(6)
    dec = graph_decoder(torch.device("cuda"), encs)
    out = dec.new_output()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):               # replays follow the current stream
        for _ in range(3):
            out.fill_(0)
            assert_decoded(dec.decode(out), refs)
    assert (dec._graphs.captures, dec._graphs.replays) == (1, 2)
    dec.launch = "graph"                        # the same mode keeps its graphs
    dec.decode(out)
    assert (dec._graphs.captures, dec._graphs.replays) == (1, 3)
    dec.check()

    # Graphs come and go with their decoders; a new one still captures.
    del dec
    gc.collect()
    dec = graph_decoder(torch.device("cuda"), encs)
    for _ in range(2):
        out.fill_(0)
        assert_decoded(dec.decode(out), refs)
    assert dec._graphs.captures == 1

    caller = torch.cuda.CUDAGraph()
    theirs = dec.new_output()
    dec.decode(theirs)                          # warm up outside the capture
    with torch.cuda.graph(caller):
        dec.decode(theirs)
    theirs.fill_(0)
    caller.replay()
    torch.cuda.synchronize()
    assert_decoded(dec._make_views(theirs), refs)
    assert dec._graphs.captures == 1
