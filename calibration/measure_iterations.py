"""Measure serving-iteration latencies of a decoder-only model shape on one GPU.

One *iteration* is what continuous batching with chunked prefill runs: one prefill chunk of
``prefill_tokens`` new tokens for a sequence that already has ``prefill_context`` cached
tokens, plus one decode step for ``decode_seqs`` sequences of ``decode_context`` tokens each.
The model has the shape of a real checkpoint (``--model``) with random bf16 weights (the
values do not change the timing), written as plain PyTorch operations (fused RMSNorm, rotary
tables computed once per iteration, no fused residual or activation kernels), so its
small-batch iterations carry more kernel launches than a serving engine's. Each iteration is captured in a CUDA graph and replayed
``--reps`` times after ``--warmup`` replays; the CSV gets the median, 10th and 90th percentile
in seconds, in the columns ``lmetric-theory calibrate`` reads.

Attention: decode queries attend a per-sequence KV cache with grouped-query heads folded into
the query length (no mask, no copy of K/V). The prefill chunk attends its cached context plus
itself with a causal mask aligned to the lower right. The script tries the candidate kernels
(PyTorch's ``causal_lower_right`` bias with ``enable_gqa``; the same bias on K/V expanded to
every query head; an explicit boolean mask), keeps those that match a float32 reference on a
small case, times them on a large one and uses the fastest; the choice is printed and written
beside the CSV (``.meta.json``).

Memory: the KV cache of a row is allocated per layer while that fits in ``--kv-budget-gib``;
beyond it, layers cycle over as many distinct buffers as fit (each far larger than the L2
cache, so no layer reads another's KV from cache). The column ``kv_buffers`` records it.

Examples
--------
::

    python calibration/measure_iterations.py --model qwen2.5-7b --out iterations.csv
    python calibration/measure_iterations.py --model tiny --device cpu --out toy.csv

Needs PyTorch (a CUDA build for real measurements); it is not a dependency of the package.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    """Shape of a decoder-only transformer (sizes in elements)."""

    name: str
    n_layers: int
    hidden: int
    ffn: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    qkv_bias: bool
    tied_embeddings: bool

    @property
    def params(self) -> int:
        """Number of parameters (embedding, layers, final norm, LM head)."""
        q = self.n_heads * self.head_dim
        kv = self.n_kv_heads * self.head_dim
        per_layer = (self.hidden * (q + 2 * kv) + (q + 2 * kv if self.qkv_bias else 0)
                     + q * self.hidden + 3 * self.hidden * self.ffn + 2 * self.hidden)
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.vocab * self.hidden + self.n_layers * per_layer + self.hidden + head

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token in bf16 (K and V, every layer)."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * 2


MODELS = {
    # Qwen2.5-7B(-Instruct) config.json: 28 layers, hidden 3584, intermediate 18944,
    # 28 attention heads, 4 KV heads, vocabulary 152,064, bias on q/k/v, untied LM head.
    "qwen2.5-7b": ModelShape("qwen2.5-7b", 28, 3584, 18944, 28, 4, 128, 152064, True, False),
    # Llama-3-8B: the shape of the shipped H100 measurements.
    "llama3-8b": ModelShape("llama3-8b", 32, 4096, 14336, 32, 8, 128, 128256, False, False),
    # A toy shape to check the script on a CPU.
    "tiny": ModelShape("tiny", 2, 256, 512, 4, 2, 64, 1024, True, False),
}

#: (prefill_tokens, prefill_context, decode_seqs, decode_context): the rows of the shipped
#: H100 measurements, then extra rows for larger decode batches and mixed iterations.
GRID_H100 = (
    [(0, 0, s, c) for s in (1, 8, 32, 64, 128, 256) for c in (512, 2048, 8192)]
    + [(p, c, 0, 0) for p in (128, 512, 1024, 2048, 4096, 8192) for c in (0, 4096, 16384)]
    + [(p, c, s, 2048) for p in (512, 2048) for s in (32, 128) for c in (0, 8192)]
)
GRID_EXTRA = [
    (0, 0, 16, 1024), (0, 0, 512, 1024), (0, 0, 1024, 512), (0, 0, 512, 4096),
    (256, 0, 0, 0), (1024, 0, 64, 4096), (4096, 0, 64, 4096), (8192, 0, 16, 1024),
    (1024, 2048, 256, 1024), (4096, 4096, 256, 2048), (8192, 0, 256, 2048),
    (256, 1024, 512, 1024),
]
GRID_TINY = [(0, 0, 1, 64), (0, 0, 4, 128), (64, 0, 0, 0), (64, 128, 0, 0), (32, 64, 2, 64)]

COLUMNS = ["prefill_tokens", "prefill_context", "decode_seqs", "decode_context",
           "kv_tokens_read", "iteration_s_median", "iteration_s_p10", "iteration_s_p90",
           "reps", "kv_buffers"]


def _percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of ``xs``."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Model:
    """Random-weight decoder of a :class:`ModelShape`; :meth:`forward` runs one iteration."""

    def __init__(self, shape: ModelShape, torch, device: str, dtype) -> None:
        self.s, self.t, self.device, self.dtype = shape, torch, device, dtype
        q, kv = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
        g = torch.Generator(device=device).manual_seed(0)

        def w(*size: int):
            return (torch.randn(*size, generator=g, device=device, dtype=dtype)
                    * (1.0 / math.sqrt(size[0])))

        self.embed = w(shape.vocab, shape.hidden)
        self.layers = []
        for _ in range(shape.n_layers):
            self.layers.append({
                "norm1": torch.ones(shape.hidden, device=device, dtype=dtype),
                "qkv": w(shape.hidden, q + 2 * kv),
                "qkv_b": (w(q + 2 * kv) * 0.0) if shape.qkv_bias else None,
                "o": w(q, shape.hidden),
                "norm2": torch.ones(shape.hidden, device=device, dtype=dtype),
                "gate_up": w(shape.hidden, 2 * shape.ffn),
                "down": w(shape.ffn, shape.hidden),
            })
        self.norm = torch.ones(shape.hidden, device=device, dtype=dtype)
        self.lm_head = self.embed.T if shape.tied_embeddings else w(shape.hidden, shape.vocab)
        self.prefill_attn = self._eager_prefill_attn  # replaced by choose_prefill_kernel

    # ---- pieces --------------------------------------------------------------------------
    def _rms(self, x, weight):
        return self.t.nn.functional.rms_norm(x, (x.shape[-1],), weight, 1e-6)

    def _rope_tables(self, pos):
        """Rotary cos and sin tables (T, 1, D/2) for integer positions ``pos`` (T,)."""
        t, d = self.t, self.s.head_dim
        inv = 1.0 / (1e6 ** (t.arange(0, d, 2, device=pos.device, dtype=t.float32) / d))
        ang = pos.float()[:, None] * inv[None, :]
        return ang.cos()[:, None, :].to(self.dtype), ang.sin()[:, None, :].to(self.dtype)

    def _rope(self, x, cos, sin):
        """Rotary embedding of ``x`` (T, heads, D) with tables from :meth:`_rope_tables`."""
        d = self.s.head_dim
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return self.t.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def _eager_prefill_attn(self, q, k, v):
        """Reference: q (L, H, D), k/v (S, Hkv, D) with S >= L, lower-right causal, float32."""
        t = self.t
        L, S = q.shape[0], k.shape[0]
        rep = self.s.n_heads // self.s.n_kv_heads
        kk = k.repeat_interleave(rep, dim=1).transpose(0, 1).float()
        vv = v.repeat_interleave(rep, dim=1).transpose(0, 1).float()
        qq = q.transpose(0, 1).float()
        att = (qq @ kk.transpose(-1, -2)) / math.sqrt(self.s.head_dim)
        mask = t.ones(L, S, dtype=t.bool, device=q.device).tril(diagonal=S - L)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        return (att @ vv).transpose(0, 1).to(q.dtype)

    def decode_attn(self, q, kc, vc):
        """Decode: q (B, H, D); caches (B, Hkv, C, D); query heads of a KV head folded in."""
        t = self.t
        B, H, D = q.shape
        hk = kc.shape[1]
        qf = q.view(B, hk, H // hk, D)
        o = t.nn.functional.scaled_dot_product_attention(qf, kc, vc)
        return o.reshape(B, H, D)

    # ---- one iteration ---------------------------------------------------------------------
    def make_inputs(self, p: int, pc: int, ds: int, dc: int, kv_budget_bytes: float):
        """Static tensors of one iteration shape (ids, positions, KV caches)."""
        t, s = self.t, self.s
        T = p + ds
        ids = t.randint(0, s.vocab, (T,), device=self.device)
        pos = t.cat([t.arange(pc, pc + p, device=self.device),
                     t.full((ds,), max(dc - 1, 0), device=self.device, dtype=t.long)])
        per_layer = (2 * (pc + p) + 2 * ds * dc) * s.n_kv_heads * s.head_dim * 2
        n_buf = s.n_layers if per_layer == 0 else max(1, min(s.n_layers,
                                                            int(kv_budget_bytes // per_layer)))
        caches = []
        for _ in range(n_buf):
            pk = t.randn(pc + p, s.n_kv_heads, s.head_dim, device=self.device, dtype=self.dtype)
            pv = t.randn_like(pk)
            dk = t.randn(ds, s.n_kv_heads, dc, s.head_dim, device=self.device, dtype=self.dtype)
            dv = t.randn_like(dk)
            caches.append((pk, pv, dk, dv))
        cos, sin = self._rope_tables(pos)
        return {"ids": ids, "cos": cos, "sin": sin, "p": p, "pc": pc, "ds": ds, "dc": dc,
                "caches": caches, "n_buf": n_buf}

    def forward(self, inp):
        """One iteration: every layer over the prefill chunk and the decode tokens, then
        the LM head and a greedy sample for the last prefill token and each decode token."""
        t, s = self.t, self.s
        p, pc, ds = inp["p"], inp["pc"], inp["ds"]
        hq, hk, d = s.n_heads, s.n_kv_heads, s.head_dim
        x = self.embed[inp["ids"]]
        for i, ly in enumerate(self.layers):
            pk, pv, dk, dv = inp["caches"][i % inp["n_buf"]]
            h = self._rms(x, ly["norm1"])
            qkv = h @ ly["qkv"]
            if ly["qkv_b"] is not None:
                qkv = qkv + ly["qkv_b"]
            qk = self._rope(qkv[:, : (hq + hk) * d].view(-1, hq + hk, d), inp["cos"], inp["sin"])
            q, k = qk[:, :hq], qk[:, hq:]
            v = qkv[:, (hq + hk) * d:].view(-1, hk, d)
            outs = []
            if p:
                pk[pc:pc + p].copy_(k[:p])
                pv[pc:pc + p].copy_(v[:p])
                outs.append(self.prefill_attn(q[:p], pk, pv))
            if ds:
                dk[:, :, -1].copy_(k[p:])
                dv[:, :, -1].copy_(v[p:])
                outs.append(self.decode_attn(q[p:], dk, dv))
            a = outs[0] if len(outs) == 1 else t.cat(outs, dim=0)
            x = x + a.reshape(-1, hq * d) @ ly["o"]
            h = self._rms(x, ly["norm2"])
            gu = h @ ly["gate_up"]
            x = x + (t.nn.functional.silu(gu[:, : s.ffn]) * gu[:, s.ffn:]) @ ly["down"]
        last = t.cat([t.arange(p - 1, p, device=x.device) if p else
                      t.arange(0, device=x.device, dtype=t.long),
                      t.arange(p, p + ds, device=x.device)])
        logits = self._rms(x[last], self.norm) @ self.lm_head
        return logits.argmax(-1)


def prefill_kernels(model: Model):
    """Candidate prefill-attention kernels: name -> function(q (L,H,D), k, v (S,Hkv,D))."""
    t = model.t
    sdpa = t.nn.functional.scaled_dot_product_attention
    rep = model.s.n_heads // model.s.n_kv_heads
    out = {}
    try:
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:  # older PyTorch
        causal_lower_right = None
    if causal_lower_right is not None:
        def lower_right_gqa(q, k, v):
            L, S = q.shape[0], k.shape[0]
            o = sdpa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                     attn_mask=causal_lower_right(L, S), enable_gqa=True)
            return o[0].transpose(0, 1)

        def lower_right_expanded(q, k, v):
            L, S = q.shape[0], k.shape[0]
            kk = k.repeat_interleave(rep, dim=1).transpose(0, 1)[None]
            vv = v.repeat_interleave(rep, dim=1).transpose(0, 1)[None]
            o = sdpa(q.transpose(0, 1)[None], kk, vv, attn_mask=causal_lower_right(L, S))
            return o[0].transpose(0, 1)

        out["causal_lower_right+gqa"] = lower_right_gqa
        out["causal_lower_right+expanded_kv"] = lower_right_expanded

    def bool_mask(q, k, v):
        L, S = q.shape[0], k.shape[0]
        mask = t.ones(L, S, dtype=t.bool, device=q.device).tril(diagonal=S - L)
        kk = k.repeat_interleave(rep, dim=1).transpose(0, 1)[None]
        vv = v.repeat_interleave(rep, dim=1).transpose(0, 1)[None]
        return sdpa(q.transpose(0, 1)[None], kk, vv, attn_mask=mask)[0].transpose(0, 1)

    out["bool_mask"] = bool_mask
    return out


def choose_prefill_kernel(model: Model, log) -> dict:
    """Keep the kernels that match the float32 reference and pick the fastest on a large
    case (4,096 new tokens after 8,192 cached; 256 after 64 on a CPU)."""
    t, s, dev = model.t, model.s, model.device
    gen = t.Generator(device=dev).manual_seed(1)

    def qkv(L, S):
        return (t.randn(L, s.n_heads, s.head_dim, generator=gen, device=dev, dtype=model.dtype),
                t.randn(S, s.n_kv_heads, s.head_dim, generator=gen, device=dev, dtype=model.dtype),
                t.randn(S, s.n_kv_heads, s.head_dim, generator=gen, device=dev, dtype=model.dtype))

    small = qkv(48, 48 + 80)
    ref = model._eager_prefill_attn(*small).float()
    big = qkv(4096, 4096 + 8192) if dev != "cpu" else qkv(256, 320)
    report = {}
    for name, fn in prefill_kernels(model).items():
        try:
            err = (fn(*small).float() - ref).abs().max().item()
            if not err < 0.05:
                report[name] = {"ok": False, "max_abs_err": err}
                continue
            times = []
            for _ in range(5):
                _sync(t, dev)
                t0 = time.perf_counter()
                fn(*big)
                _sync(t, dev)
                times.append(time.perf_counter() - t0)
            report[name] = {"ok": True, "max_abs_err": err, "median_s": statistics.median(times[1:])}
        except Exception as exc:  # a kernel this build or device does not support
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    good = {k: v for k, v in report.items() if v.get("ok")}
    if not good:
        raise SystemExit(f"no prefill attention kernel works: {report}")
    best = min(good, key=lambda k: good[k]["median_s"])
    model.prefill_attn = prefill_kernels(model)[best]
    log(f"prefill attention: {best}  ({json.dumps(report)})")
    return {"chosen": best, "candidates": report}


def _sync(t, dev: str) -> None:
    if dev != "cpu":
        t.cuda.synchronize()


def measure_row(model: Model, row, *, reps: int, warmup: int, kv_budget_bytes: float,
                use_graph: bool) -> tuple[list[float], int, bool]:
    """Times (s) of ``reps`` replays of one iteration shape, the KV buffer count, and whether
    a CUDA graph was used."""
    t, dev = model.t, model.device
    inp = model.make_inputs(*row, kv_budget_bytes=kv_budget_bytes)
    with t.inference_mode():
        for _ in range(2):
            model.forward(inp)
        _sync(t, dev)
        run = functools.partial(model.forward, inp)
        graphed = False
        if use_graph and dev != "cpu":
            try:
                stream = t.cuda.Stream()
                stream.wait_stream(t.cuda.current_stream())
                with t.cuda.stream(stream):
                    model.forward(inp)
                t.cuda.current_stream().wait_stream(stream)
                graph = t.cuda.CUDAGraph()
                with t.cuda.graph(graph):
                    model.forward(inp)
                run = graph.replay
                graphed = True
            except Exception as exc:
                print(f"row {row}: CUDA graph capture failed ({type(exc).__name__}: {exc}); "
                      "timing eager launches", file=sys.stderr)
        for _ in range(warmup):
            run()
        _sync(t, dev)
        times = []
        for _ in range(reps):
            if dev != "cpu":
                a, b = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
                a.record()
                run()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / 1000.0)
            else:
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
    n_buf = inp["n_buf"]
    del inp
    if dev != "cpu":
        t.cuda.empty_cache()
    return times, n_buf, graphed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="qwen2.5-7b")
    ap.add_argument("--out", required=True, type=Path, help="CSV to write")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--grid", choices=("h100", "full", "tiny"), default="full",
                    help="h100: the shipped H100 rows; full: those and the extra rows")
    ap.add_argument("--kv-budget-gib", type=float, default=60.0,
                    help="memory for one row's KV buffers before layers share them, GiB")
    ap.add_argument("--no-graph", action="store_true", help="time eager launches")
    args = ap.parse_args(argv)

    import torch

    shape = MODELS[args.model]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    dev = args.device
    meta: dict = {"model": asdict(shape), "params": shape.params,
                  "kv_bytes_per_token": shape.kv_bytes_per_token,
                  "torch": torch.__version__, "reps": args.reps, "warmup": args.warmup}
    if dev != "cpu":
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        meta.update(gpu=props.name, sm_count=props.multi_processor_count,
                    gpu_memory_bytes=total, cuda=torch.version.cuda)
        log(f"{props.name}: {total / 2**30:.1f} GiB, torch {torch.__version__}")
    t0 = time.perf_counter()
    model = Model(shape, torch, dev, torch.bfloat16)
    meta["prefill_attention"] = choose_prefill_kernel(model, log)
    rows = {"h100": GRID_H100, "full": GRID_H100 + GRID_EXTRA, "tiny": GRID_TINY}[args.grid]
    budget = args.kv_budget_gib * 2**30
    args.out.parent.mkdir(parents=True, exist_ok=True)
    graphs = []
    with args.out.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(COLUMNS)
        for row in rows:
            p, pc, ds, dc = row
            times, n_buf, graphed = measure_row(model, row, reps=args.reps, warmup=args.warmup,
                                                kv_budget_bytes=budget,
                                                use_graph=not args.no_graph)
            graphs.append(graphed)
            med = statistics.median(times)
            wr.writerow([p, pc, ds, dc, pc + p + ds * dc, f"{med:.6f}",
                         f"{_percentile(times, 10):.6f}", f"{_percentile(times, 90):.6f}",
                         len(times), n_buf])
            f.flush()
            log(f"{row}: {med * 1e3:.3f} ms (buffers {n_buf}, graph {graphed})")
    meta["cuda_graph_rows"] = sum(graphs)
    meta["rows"] = len(rows)
    meta["wall_s"] = time.perf_counter() - t0
    args.out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"wrote {args.out} ({len(rows)} rows) in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
