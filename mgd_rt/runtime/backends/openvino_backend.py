"""OpenVINO backend: an exported .onnx graph (FP32, FP16 or INT8 Q/DQ) on the CPU, no torch.

Chosen with ``--backend openvino`` (an .onnx picks ONNX Runtime by itself). OpenVINO reads the
ONNX graph directly and compiles it for this CPU; the compiled model goes to OpenVINO's model
cache (``CACHE_DIR``), so the compilation happens once per graph and OpenVINO version (the CPU
plugin caches a graph before the precision is applied; bf16 runs two graphs, below, cached on
their own). The cache folder is ``$MGD_RT_OPENVINO_CACHE``, else
``$XDG_CACHE_HOME/mgd-rt/openvino`` (``~/.cache/mgd-rt/openvino``).

Precision is always set explicitly, never left to OpenVINO's default (which is bf16 on CPUs
with AVX-512 BF16 or AMX: a silent non-FP32 run):

- an FP32 graph runs in f32 (``--dtype fp32`` or none) or bf16 (``--dtype bf16``, where the
  CPU's ``OPTIMIZATION_CAPABILITIES`` list BF16; refused elsewhere). bf16 keeps the DRM in f32, as
  PyTorch's autocast does (``MGDSAM2.refine``: whole-graph bf16 missed the bf16 tolerance on seeded
  B+, top-10% IoU 0.60): OpenVINO applies one inference precision to a compiled model; its Python
  API sets no per-node precision (rt_info strings are ignored; the typed DisablePrecisionConversion
  mark, written into an IR file, kept the DRM's convolutions in f32 but not its resizes), so the
  graph is cut where the export's ``drm_inputs`` prop says the DRM reads the rest of the network
  and runs as two compiled models, the encoder and decoder in bf16, then the DRM in f32 (a graph
  without the prop is refused for bf16: re-export it);
- an INT8 Q/DQ graph runs its quantized layers in int8 and the layers it keeps in float in
  f32, or with ``--dtype bf16`` in bf16, cut the same way (the DRM in f32); an FP16 graph's
  weights are fp16 and are computed in f32 (x86 CPUs without AVX-512 FP16 or AMX-FP16 have no
  fp16 arithmetic). Any other ``--dtype`` must match such a graph's own precision.

The precision OpenVINO reports for the compiled model is checked against the one asked for.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mgd_rt.artifacts import DRM_INPUTS_KEY, cache_folder
from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.runtime.backends.base import Backend

if TYPE_CHECKING:
    import openvino

log = logging.getLogger("mgd_rt")

CACHE_ENV = "MGD_RT_OPENVINO_CACHE"


def cache_dir(path: str | Path | None = None) -> Path:
    """OpenVINO's model cache, created: ``path``, else $MGD_RT_OPENVINO_CACHE, else $XDG_CACHE_HOME/mgd-rt/openvino."""
    return cache_folder(path, CACHE_ENV, "openvino", "OpenVINO model cache")


def cpu_capabilities(core: openvino.Core) -> tuple[str, list[str]]:
    """(the CPU's name, its ``OPTIMIZATION_CAPABILITIES``: e.g. FP32, BF16, INT8) as OpenVINO reports them."""
    return str(core.get_property("CPU", "FULL_DEVICE_NAME")), [str(c) for c in
                                                              core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def _port_name(port: Any, contract_name: str) -> str:
    """The contract's name if ``port`` carries it among its tensor names, else any of them."""
    names = port.get_names()
    return contract_name if contract_name in names else port.get_any_name()


def _tensor(graph: openvino.Model, name: str) -> Any:
    """The output port of ``graph`` that carries tensor ``name``."""
    for op in graph.get_ordered_ops():
        for port in op.outputs():
            if name in port.get_names():
                return port
    raise KeyError(name)


def split_at(graph: openvino.Model, cut: list[str]) -> tuple[openvino.Model, openvino.Model]:
    """``graph`` cut at the tensors named ``cut``: (head: the graph's inputs -> those tensors, tail: the
    inputs it still reads + those tensors -> the graph's outputs). ``graph`` itself is left whole."""
    import openvino as ov

    head_graph, tail_graph = graph.clone(), graph.clone()
    head = ov.Model([ov.opset13.result(_tensor(head_graph, name)) for name in cut], head_graph.get_parameters(),
                    "head")
    cut_inputs = []
    for name in cut:
        port = _tensor(tail_graph, name)
        parameter = ov.opset13.parameter(port.get_partial_shape(), port.get_element_type(), name=name)
        parameter.output(0).set_names({name})
        port.replace(parameter.output(0))  # every reader of the tensor now reads the new input
        cut_inputs.append(parameter)
    results = list(tail_graph.get_results())
    tail = ov.Model(results, _reached_parameters(results, tail_graph.get_parameters()) + cut_inputs, "tail")
    return head, tail


def _reached_parameters(results: list[Any], parameters: list[Any]) -> list[Any]:
    """Those of ``parameters`` that ``results`` read, walking back through the graph."""
    reached, seen, stack = set(), set(), list(results)
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        if node.get_type_name() == "Parameter":
            reached.add(name)
        stack.extend(i.get_source_output().get_node() for i in node.inputs())
    return [p for p in parameters if p.get_friendly_name() in reached]


class OpenVINOBackend(Backend):
    """``model``: path of a graph with input ``image`` (B, 3, S, S) float32 (or (B, S, S, 3) uint8 pixels,
    see :mod:`mgd_rt.contract`) and output ``mask_logits`` (B, 1, S, S) float32, compiled for the CPU.

    ``threads``: OpenVINO's inference threads (None: every CPU, as the onnxruntime backend uses).
    ``cache``: the model cache folder (None: :func:`cache_dir`'s default).
    """

    name = "openvino"
    kind = "graph"

    def __init__(
        self,
        model: str | Path,
        device: str | None = None,
        dtype: str | None = None,
        check_inputs: bool = True,
        threads: int | None = None,
        cache: str | Path | None = None,
    ) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise MgdRtError("the openvino backend needs OpenVINO: pip install 'mgd-rt[openvino]' "
                             "(or pip install openvino)") from None

        super().__init__(check_inputs)
        if device is not None and device != "cpu":
            raise MgdRtError(f"--device {device}: the openvino backend runs on the CPU; use --device cpu")
        path = self.model_file(model, "ONNX")
        core = ov.Core()
        try:
            graph = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises its own exception types for bad files
            raise MgdRtError(f"{path}: OpenVINO cannot read this graph ({first_line(exc)})") from None

        inputs = {_port_name(p, INPUT_NAME): p for p in graph.inputs}
        outputs = {_port_name(p, OUTPUT_NAME): p for p in graph.outputs}
        self.check_io(inputs, outputs, str(path))
        # the ONNX graph's metadata props: OpenVINO's ONNX reader keeps them under rt_info "framework"
        framework = graph.get_rt_info()["framework"] if graph.has_rt_info(["framework"]) else {}
        meta = {str(k): v.astype(str) for k, v in framework.items()}
        self.apply_metadata(meta)  # also the input format: float32 (B, 3, S, S) or uint8 pixels (B, S, S, 3)
        self.check_io_types(str(path), {INPUT_NAME: inputs[INPUT_NAME].get_element_type(),
                                        OUTPUT_NAME: outputs[OUTPUT_NAME].get_element_type()}, ov.Type.f32, ov.Type.u8)
        shape = list(inputs[INPUT_NAME].get_partial_shape())  # B dynamic or fixed
        sides = shape[1:3] if self.takes_pixels else shape[2:]
        self.image_size = self.check_image_size(str(path), [d.get_length() if d.is_static else None for d in sides],
                                                inputs[INPUT_NAME].get_partial_shape())
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None

        cpu, capabilities = cpu_capabilities(core)
        graph_precision = meta.get("precision", "fp32")
        # bf16 is how float layers compute: all of an FP32 graph's, those an INT8 graph keeps in float
        float_bf16 = dtype == "bf16" and graph_precision in ("fp32", "int8")
        if float_bf16 or (graph_precision == "fp32" and dtype in (None, "fp32")):
            self.precision = "int8" if graph_precision == "int8" else dtype or "fp32"
        else:
            self.precision = graph_precision
            remedy = {"fp32": "pass the FP32 graph for --dtype fp32",
                      "int8": "make an INT8 graph with mgd-rt calibrate and pass that file"}.get(
                dtype, f"export a {dtype} graph and pass that file")
            self.check_dtype(dtype, path.name, remedy)
        # an fp16 graph's weights are fp16 and computed in f32 (x86 has no fp16 arithmetic without AVX-512 FP16)
        self.compute = "bf16" if float_bf16 else "f32"
        self.warn_int8_check(str(path), "openvino-bf16" if float_bf16 else "openvino")
        if self.compute == "bf16" and "BF16" not in capabilities:
            raise MgdRtError(f"--dtype bf16: this CPU ({cpu}) has no bfloat16 arithmetic for OpenVINO (it "
                             f"needs AVX-512 BF16 or AMX; OpenVINO lists {', '.join(capabilities)}); "
                             "leave --dtype out for fp32")

        self.threads = threads or os.cpu_count() or 1
        self.cache = cache_dir(cache)
        # the DRM's own compiled model under bf16 (None otherwise): the graph's tail from the cut, in f32
        self.drm_inputs: list[str] = []
        self.drm_compiled: Any = None
        self.drm_request: Any = None
        self.drm_reads_image = False
        t0 = time.perf_counter()
        if self.compute == "bf16":
            head, tail = self._split(graph, meta, path)
            self.compiled = self._compile(core, head, "bf16", path)
            self.drm_compiled = self._compile(core, tail, "f32", path)
            self.drm_reads_image = any(INPUT_NAME in p.output(0).get_names() for p in tail.get_parameters())
        else:
            self.compiled = self._compile(core, graph, self.compute, path)
        self.from_cache = all(bool(c.get_property("LOADED_FROM_CACHE"))
                              for c in (self.compiled, self.drm_compiled) if c is not None)
        log.info("openvino: %s %s in %.2f s (cache %s)", "loaded" if self.from_cache else "compiled", path.name,
                 time.perf_counter() - t0, self.cache)
        self.device = f"CPU ({cpu})"
        self.version = ov.get_version()
        self.request = self.compiled.create_infer_request()
        if self.drm_compiled is not None:
            self.drm_request = self.drm_compiled.create_infer_request()

    def _split(self, graph: openvino.Model, meta: dict[str, str], path: Path) -> tuple[openvino.Model, openvino.Model]:
        """(encoder and decoder, the DRM) of ``graph``, cut where its drm_inputs prop says."""
        self.drm_inputs = [name for name in meta.get(DRM_INPUTS_KEY, "").split(",") if name]
        if not self.drm_inputs:
            raise MgdRtError(f"--dtype bf16: {path.name} does not name the DRM's inputs (the {DRM_INPUTS_KEY} "
                             "metadata prop mgd-rt export writes), where OpenVINO's bf16 run keeps the DRM in fp32; "
                             "re-export the graph with this mgd-rt, or leave --dtype out for fp32")
        try:
            return split_at(graph, self.drm_inputs)
        except KeyError as exc:
            raise MgdRtError(f"{path}: its {DRM_INPUTS_KEY} prop names {exc}, which is no tensor of the graph; "
                             "re-export it") from None

    def _compile(self, core: openvino.Core, graph: openvino.Model, precision: str, path: Path) -> Any:
        """``graph`` compiled for this CPU in ``precision`` (f32 or bf16), through the model cache."""
        config = {
            "CACHE_DIR": str(self.cache),
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time: all threads on each call
        }
        try:
            compiled = core.compile_model(graph, "CPU", config)
        except Exception as exc:
            raise MgdRtError(f"{path}: OpenVINO cannot compile this graph for the CPU ({first_line(exc)})") \
                from None
        # what OpenVINO compiled for (an element type: f32, bf16): never another precision than asked, quietly
        used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if used != precision:
            raise MgdRtError(f"{path}: OpenVINO compiled it for {used}, not the {precision} asked for; "
                             "this OpenVINO build does not honour INFERENCE_PRECISION_HINT here")
        return compiled

    def run_exact(self, batch: np.ndarray) -> np.ndarray:
        # share_inputs: the request reads the caller's contiguous array (float32, or uint8 pixels) without a copy
        self.request.infer({INPUT_NAME: batch}, share_inputs=True)
        last = self.request
        if self.drm_request is not None:  # the DRM reads the head's output tensors in place
            feeds = {name: self.request.get_tensor(name) for name in self.drm_inputs}
            if self.drm_reads_image:
                feeds[INPUT_NAME] = batch
            self.drm_request.infer(feeds, share_inputs=True)
            last = self.drm_request
        # the request reuses its output buffer on the next call: copy it out
        return np.array(last.get_tensor(OUTPUT_NAME).data, dtype=np.float32, copy=True)

    def describe(self) -> str:
        compute = {"fp16": f" (fp16 weights, computed in {self.compute})", "bf16": " (the DRM in fp32)",
                   "int8": f" (float layers in {self.compute}{', the DRM in fp32' if self.drm_compiled else ''})"
                   }.get(self.precision, "")
        source = "from the model cache" if self.from_cache else "compiled"
        return (f"{self.name} on {self.device}, {self.precision}{compute}; OpenVINO {self.version.split('-')[0]}, "
                f"{self.threads} threads, {source}")

    def close(self) -> None:
        self.request = self.drm_request = None  # type: ignore[assignment]
        self.compiled = self.drm_compiled = None  # type: ignore[assignment]
