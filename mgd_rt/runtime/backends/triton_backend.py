"""Triton client backend: the model runs in a Triton Inference Server, everything else stays here.

``Segmenter("grpc://HOST:PORT/MODEL")`` (or ``http://HOST:PORT/MODEL``, optionally
``/MODEL/VERSION``) keeps decoding, resizing, tiling and writing local and sends each batch with
``tritonclient``. Served by ``mgd-rt serve`` or from a repository of ``mgd-rt triton-repo``, the
model's config carries S, variant, precision and normalisation as ``mgd_rt.*`` parameters; a
model without them is accepted when its I/O fits the contract, with ImageNet normalisation.
Batches larger than the server's ``max_batch_size`` are sent in chunks. One client per backend:
use one Segmenter per thread (the HTTP client is not thread-safe, so it is also locked).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from mgd_rt.contract import INPUT_NAME, OUTPUT_NAME
from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.runtime.backends.base import Backend

URL_SCHEMES = ("grpc", "http", "https")
DEFAULT_TIMEOUT_S = 60.0  # per request: B+ at 1024 on a busy CPU server takes seconds per image


def is_triton_url(model: object) -> bool:
    """True for grpc://..., http://... and https://... model strings."""
    return isinstance(model, str) and model.split("://", 1)[0].lower() in URL_SCHEMES and "://" in model


def parse_url(url: str) -> tuple[str, str, str, str]:
    """grpc://HOST:PORT/MODEL[/VERSION] -> (scheme, "HOST:PORT", model, version or "")."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = [p for p in parts.path.split("/") if p]
    if scheme not in URL_SCHEMES or not parts.netloc or not 1 <= len(path) <= 2:
        raise MgdRtError(f"{url}: a Triton model is grpc://HOST:PORT/MODEL or http://HOST:PORT/MODEL "
                         "(optionally /VERSION), e.g. grpc://127.0.0.1:8001/mgd_sam2")
    netloc = parts.netloc if parts.port else f"{parts.netloc}:{8001 if scheme == 'grpc' else 8000}"
    return scheme, netloc, path[0], path[1] if len(path) == 2 else ""



class TritonBackend(Backend):
    """``model``: grpc://HOST:PORT/MODEL or http(s)://HOST:PORT/MODEL of a model that fits the contract."""

    name = "triton"
    kind = "served model"

    def __init__(
        self,
        model: str | Path,
        device: str | None = None,
        dtype: str | None = None,
        check_inputs: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(check_inputs)
        url = str(model)
        self.scheme, self.netloc, self.model_name, self.version = parse_url(url)
        if device is not None:
            raise MgdRtError(f"--device {device}: a Triton model runs where the server puts it; leave --device out")
        try:
            if self.scheme == "grpc":
                import tritonclient.grpc as client_module
            else:
                import tritonclient.http as client_module
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise MgdRtError("the Triton backend needs tritonclient: pip install 'mgd-rt[serve]' "
                             "(or pip install 'tritonclient[all]')") from None
        self._module = client_module
        self._error = InferenceServerException
        self.timeout_s = timeout_s
        self._lock = threading.Lock() if self.scheme != "grpc" else None
        try:
            if self.scheme == "grpc":
                self.client = client_module.InferenceServerClient(self.netloc)
            else:
                self.client = client_module.InferenceServerClient(
                    self.netloc, ssl=self.scheme == "https", connection_timeout=timeout_s, network_timeout=timeout_s)
            live = self.client.is_server_live()
        except Exception as exc:  # tritonclient raises its own and socket errors
            raise MgdRtError(f"{url}: no Triton server answers at {self.netloc} ({first_line(exc)}); start one "
                             "with mgd-rt serve or tritonserver --model-repository") from None
        if not live:
            raise MgdRtError(f"{url}: the Triton server at {self.netloc} is not live")
        try:
            ready = self.client.is_model_ready(self.model_name, self.version)
        except self._error as exc:
            raise MgdRtError(f"{url}: {first_line(exc)}") from None
        if not ready:
            raise MgdRtError(f"{url}: the server has no ready model {self.model_name!r}"
                             f"{' version ' + self.version if self.version else ''}; check the name "
                             "(mgd-rt serve --name, or the model directory in the repository)")
        metadata, config = self._describe()
        inputs = {t["name"]: t for t in metadata.get("inputs", [])}
        outputs = {t["name"]: t for t in metadata.get("outputs", [])}
        self.check_io(inputs, outputs, url)
        params = {k.removeprefix("mgd_rt."): v.get("string_value", "")
                  for k, v in (config.get("parameters") or {}).items() if k.startswith("mgd_rt.")}
        self.apply_metadata(params)  # no checkpoint hash among the parameters: trained stays unknown
        self.check_io_types(url, {INPUT_NAME: inputs[INPUT_NAME]["datatype"],
                                  OUTPUT_NAME: outputs[OUTPUT_NAME]["datatype"]}, "FP32", "UINT8")
        # (B, 3, S, S), or (B, S, S, 3) for a pixel input, with B -1 when batched
        shape = [int(d) for d in inputs[INPUT_NAME]["shape"]]
        # max_batch_size 0: the model is not batched by Triton, its dims include a batch (-1 or fixed)
        self.max_batch = int(config.get("max_batch_size", 0) or 0) or None
        self.fixed_batch = None if self.max_batch else (shape[0] if shape and shape[0] > 0 else None)
        side = 1 if self.takes_pixels else -1  # where S is in the dims
        size = int(params.get("image_size") or (shape[side] if len(shape) == 4 and shape[side] > 0 else 0))
        wanted = [size, size, 3] if self.takes_pixels else [3, size, size]
        if len(shape) != 4 or shape[1:] != wanted:
            raise MgdRtError(f"{url}: input {INPUT_NAME!r} is {shape}, the contract is "
                             f"{'(B, S, S, 3)' if self.takes_pixels else '(B, 3, S, S)'}")
        self.image_size = size
        self.precision = params.get("precision", "fp32")
        self.device = f"Triton {self.scheme}://{self.netloc}/{self.model_name}"
        self.check_dtype(dtype, url)

    def _describe(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's metadata and config as plain dicts (the gRPC client answers protobufs)."""
        try:
            if self.scheme == "grpc":
                from google.protobuf.json_format import MessageToDict

                metadata = MessageToDict(self.client.get_model_metadata(self.model_name, self.version),
                                         preserving_proto_field_name=True)
                config = MessageToDict(self.client.get_model_config(self.model_name, self.version),
                                       preserving_proto_field_name=True).get("config", {})
            else:
                metadata = self.client.get_model_metadata(self.model_name, self.version)
                config = self.client.get_model_config(self.model_name, self.version)
        except self._error as exc:
            raise MgdRtError(f"{self.model_name}: {first_line(exc)}") from None
        return metadata, config

    def run_exact(self, batch: np.ndarray) -> np.ndarray:
        """(b, 3, S, S) float32 (or (b, S, S, 3) uint8 pixels) -> (b, 1, S, S) float32 from the server (b within
        its max_batch_size)."""
        m = self._module
        request = m.InferInput(INPUT_NAME, list(batch.shape), "UINT8" if self.takes_pixels else "FP32")
        request.set_data_from_numpy(batch)
        wanted = [m.InferRequestedOutput(OUTPUT_NAME)]
        try:
            if self._lock is None:
                result = self.client.infer(self.model_name, [request], self.version, outputs=wanted,
                                           client_timeout=self.timeout_s)
            else:
                with self._lock:
                    result = self.client.infer(self.model_name, [request], self.version, outputs=wanted)
        except self._error as exc:
            raise MgdRtError(f"Triton {self.netloc}/{self.model_name}: {first_line(exc)}") from None
        out = result.as_numpy(OUTPUT_NAME)
        if out is None or out.shape != (batch.shape[0], 1, self.image_size, self.image_size):
            got = None if out is None else out.shape
            raise MgdRtError(f"Triton {self.netloc}/{self.model_name}: answered {OUTPUT_NAME!r} of shape {got}, "
                             f"expected {(batch.shape[0], 1, self.image_size, self.image_size)}")
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            client.close()


__all__ = ["TritonBackend", "is_triton_url", "parse_url"]
