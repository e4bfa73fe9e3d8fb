"""Shared fixtures: the bundled tiny SD2-depth pipeline (offline) and the shared data folder.

Nothing here may touch the network: the hub is switched to offline mode before anything from
diffusers/transformers is imported. The tiny pipeline is loaded once per session; tests that
change its state (attention processors) must restore it, which `tiny_pipe` re-checks at the end
of the session.

Tests outside the `integration` tier run in-process: `pytest_runtest_setup` and
`pytest_runtest_call` fail any such test (its fixtures included) that starts the CLI, a worker,
Ray or a browser (`support.in_process_only`); `test_tiers.py` checks the markers statically.

`report_measurement` records a measured figure, in particular one that is reported and not
asserted on because its value depends on the CPU's kernels (the end-to-end gap to the authors'
reference latents); every run prints the recorded figures in a "measurements" section at the
end of its summary.
"""

from __future__ import annotations

import os
import signal

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Idle OpenMP workers sleep instead of spinning: with another process on the same 2 cores, spinning
# workers made a 20 ms UNet call take 0.2-3.8 s (measured); passive waiting keeps it at ~25 ms.
# Read by the OpenMP runtime when torch loads, so it must be set before the import below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Two threads, the machine's cores; each of `-n 2`'s workers (pytest-xdist) takes one of them.
torch.set_num_threads(1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2)
# Run in the background (`nohup pytest &`, some CI runners), the suite inherits SIGINT
# ignored, and so would every process it starts: the Ctrl-C tests then saw their edit run to
# the end (exit 0) instead of stopping with 130. Handled here, it is default again in children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_MEASURED = "measured: "  # the prefix of a measurement among a test's properties
_measurements: list[tuple[str, str, str]] = []  # (test, name, value), as the tests ended


LONGEST_MODULES = (
    "test_reference.py",
    "test_trait_corpus.py",
    "test_multi_node.py",
    "test_multi_worker.py",
    "test_cli.py",
    "test_frame_chain.py",
    "test_first_use.py",
    "test_ui.py",
)
"""The modules that take longest (1-11 minutes each on one of `-n 2`'s workers), longest
first: collected first, `-n 2` starts them first (`--no-loadscope-reorder` keeps the order),
so the short ones fill in at the end. xdist's default order, by number of tests, put the
longest (`test_reference.py`, 10 tests) near the end, where one worker could be left to run
it alone; started first, the two workers' test time came out equal within 3 s of ~990."""


def pytest_configure(config):
    """`slow` tests run only when a `-m` names them (`support.with_tiers_off_by_default`)."""
    from support import with_tiers_off_by_default

    config.option.markexpr = with_tiers_off_by_default(config.option.markexpr)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """The longest modules first (`LONGEST_MODULES`), each module's tests in their order."""

    def rank(item) -> int:
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _tier_guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _tier_guard(item):
        return (yield)


def _tier_guard(item):
    """`support.in_process_only` for a test outside the `integration` tier, else nothing."""
    from contextlib import nullcontext

    from support import in_process_only

    if item.get_closest_marker("integration") is not None:
        return nullcontext()
    return in_process_only(item.nodeid)


@pytest.fixture(scope="session")
def tiny_pipe():
    """The bundled random-weight SD2-depth pipeline (exact SD2-depth topology), on the CPU."""
    from pix2video.pipelines.checkpoints import load_pipeline

    pipe = load_pipeline("tiny")
    processors = dict(pipe.unet.attn_processors)
    yield pipe
    after = pipe.unet.attn_processors
    leaked = [name for name, proc in processors.items() if after[name] is not proc]
    assert not leaked, f"a test left foreign attention processors installed: {leaked}"


@pytest.fixture(scope="module")
def pipelines():
    """A `PipelineCache` for the module's jobs (as a server keeps its loaded models): the
    tiny model, or a backbone and its ControlNets, loaded once per module. It keeps two
    pipelines, so a module alternating two models does not reload them."""
    from pix2video.job import PipelineCache

    return PipelineCache(size=2)


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray instance (2 CPUs, bound to 127.0.0.1, no dashboard) for the whole run;
    commands join it with ``--ray-address``. Tests that need a cluster of their own
    (`test_multi_node.py`) start one themselves."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (`../shared` next to the checkout): models, data, reference."""
    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(
            f"the shared folder {path} is not present (reference data and models live there)"
        )
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The real-footage trait clips (`trait_corpus`), written once per run."""
    from trait_corpus import write_corpus

    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clipseg(tmp_path_factory, shared_dir) -> Path:
    """A random CLIPSeg of the real architecture (text-prompted masks) with the tiny CLIP
    tokenizer, saved to a folder: what `--mask-model` takes."""
    from transformers import (
        AutoTokenizer,
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
    )
    from transformers.models.vit import ViTImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(shared_dir / "models" / "tiny-clip")
    config = CLIPSegConfig(
        text_config={
            "vocab_size": 541, "hidden_size": 32, "intermediate_size": 64,
            "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 77,
            "bos_token_id": 539, "eos_token_id": 540, "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "image_size": 64, "patch_size": 16,
        },
        projection_dim=32, reduce_dim=16, extract_layers=[1],
        decoder_num_attention_heads=2, decoder_intermediate_size=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPSegForImageSegmentation(config).eval()
    processor = CLIPSegProcessor(
        image_processor=ViTImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tokenizer
    )
    folder = tmp_path_factory.mktemp("tiny-clipseg")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory):
    """Tiny random SD 1.5 + ControlNet family, built in code and saved once (`tiny_sd15.py`).

    Attributes: `model` (diffusers folder), `single_file` (the same weights in the original
    single-file layout), `controlnets` (two ControlNet folders), `depth_model` (a Depth
    Anything folder). The LoRA is `tiny_lora` (it needs peft).
    """
    from types import SimpleNamespace

    from tiny_sd15 import (
        build_controlnet,
        build_depth_anything,
        build_sd15,
        save_original_checkpoint,
    )

    root = tmp_path_factory.mktemp("tiny-sd15")
    model = build_sd15(root / "sd15")
    return SimpleNamespace(
        model=model,
        single_file=save_original_checkpoint(model, root / "tiny-sd15.safetensors"),
        controlnets=[build_controlnet(root / f"controlnet{i}", seed=i) for i in (1, 2)],
        depth_model=build_depth_anything(root / "depth-anything"),
    )


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """Tiny random SDXL family, built in code and saved once (`tiny_sdxl.py`): `model` (folder),
    `single_file` (original layout), `controlnets` (two SDXL ControlNets), `lora`."""
    from types import SimpleNamespace

    from tiny_sdxl import (
        build_sdxl,
        build_sdxl_controlnet,
        build_sdxl_lora,
        save_original_sdxl_checkpoint,
    )

    root = tmp_path_factory.mktemp("tiny-sdxl")
    model = build_sdxl(root / "sdxl")
    return SimpleNamespace(
        model=model,
        single_file=save_original_sdxl_checkpoint(model, root / "tiny-sdxl.safetensors"),
        controlnets=[build_sdxl_controlnet(root / f"controlnet{i}", seed=i) for i in (1, 2)],
        lora=build_sdxl_lora(model, root / "loras" / "style.safetensors"),
    )


@pytest.fixture(scope="session")
def tiny_lora(tiny_sd15, tmp_path_factory) -> Path:
    """A random LoRA for the tiny SD 1.5 UNet, one .safetensors file (made with peft)."""
    pytest.importorskip("peft", reason="LoRA loading needs peft (a project dependency)")
    from tiny_sd15 import build_lora

    return build_lora(tiny_sd15.model, tmp_path_factory.mktemp("loras") / "style.safetensors")


@pytest.fixture
def report_measurement(record_property):
    """`report(name, value)`: print `value` under "measurements" at the end of the run.

    For figures worth seeing on every run, above all those that are measured and not asserted
    (their value is the CPU's choice); kept as a property of the test ("measured: name"), which
    is how it reaches the summary from a worker and the JUnit XML.
    """

    def report(name: str, value: object) -> None:
        record_property(f"{_MEASURED}{name}", str(value))

    return report


def pytest_runtest_logreport(report):
    """Gathers the measurements from each test's last report (a worker's, under -n, reaches
    the main process with its properties)."""
    if report.when != "teardown":
        return
    for name, value in report.user_properties:
        if name.startswith(_MEASURED):
            _measurements.append((report.nodeid, name.removeprefix(_MEASURED), value))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _measurements:
        return
    terminalreporter.section("measurements")
    for nodeid, name, value in _measurements:
        terminalreporter.write_line(f"{name}: {value}")
        terminalreporter.write_line(f"    ({nodeid})")


@pytest.fixture
def posterior_mean(monkeypatch):
    """diffusers encodes control images (SD3, FLUX) with a posterior *sample* drawn without a
    generator; ours takes the mean (deterministic, cacheable): a comparison with diffusers'
    pipeline makes its draw the mean. Nothing of ours is replaced."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(
        DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean
    )
