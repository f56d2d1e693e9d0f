"""The PyTorch peer of vkq's Llama: Hugging Face `transformers`' LlamaForCausalLM holding the
same weights as a vkq LlamaWeights, with a static KV cache, driven as vkq's LlamaModel is.

    peer = TorchLlama(weights, "cuda", "int4", max_seq=2048)
    logits = peer.prefill(prompt)                    # numpy, as LlamaModel.prefill
    token, _ = peer.step(token)                      # one decode step (a CUDA graph replay)

Kinds: "fp16" dequantizes every int4 linear to fp16 (`F.linear`); "int4" swaps every linear
(the lm_head too) for PyTorch's `_weight_int4pack_mm` on the same int4 values, which takes
bfloat16 activations, so that model runs in bfloat16 (its scales rounded to bfloat16). On
CUDA the decode step (embedding to greedy argmax, the token written on the device) is
captured once per cache as a CUDA graph, checked against an eager step, and replayed; where
capture fails the steps run eagerly and `step_mode` says why. `compile=True` compiles the
step first (torch.compile, one graph; the graph then captures the compiled kernels), falling
back to the plain step with `compile_note` saying why. On CPU everything runs in
float32 and eagerly (int4 through `_weight_int4pack_mm_for_cpu`): that is how
tests/test_llama_torch.py proves the peer computes vkq's reference logits.

Construction is frugal with device memory and time: the model is made on the meta device and
each weight is built on the target device directly (an int4 QuantizedWeight is uploaded once
as int8 and dequantized or repacked there). A host weight that several layers share
(LlamaWeights.random_repeated) is converted once and cloned on the device for every further
layer, so every layer reads memory of its own, as vkq's do. HF's static cache is read whole by
every step's attention (masked past the context), so the bench sizes one per context.

Nothing here imports torch until a peer is built (`import vkq` and the bench without
`--compare torch` never load it).
"""
from __future__ import annotations

import functools
import gc
import inspect
import warnings
from typing import Any, Sequence

import numpy as np

from vkq.bench.torch_peer import int4pack, int4pack_mm
from vkq.models.llama import LlamaConfig, LlamaWeights, check_tokens
from vkq.quantized_weight import QuantizedWeight

KINDS = ("fp16", "int4")
#: how far a graph's logits may be from an uncompiled eager step's, relative to their scale:
#: a replay of stale inputs or positions is off by the logits' own size; the same kernels
#: agree to rounding, torch.compile's fused ones to fp16 rounding (well under this)
GRAPH_TOLERANCE = 1e-2


def hf_config(config: LlamaConfig, attn: str = "sdpa") -> Any:
    """transformers' LlamaConfig for a vkq LlamaConfig (the lm_head untied: vkq quantizes
    its own copy)."""
    from transformers import LlamaConfig as HFLlamaConfig
    c = config
    scaling = None if c.rope_scaling is None else {"rope_type": "llama3", **c.scaling_dict()}
    return HFLlamaConfig(hidden_size=c.hidden, num_hidden_layers=c.layers, num_attention_heads=c.heads,
                         num_key_value_heads=c.kv_heads, head_dim=c.head_dim,
                         intermediate_size=c.intermediate, vocab_size=c.vocab, rope_theta=c.rope_theta,
                         rope_scaling=scaling, rms_norm_eps=c.rms_eps, tie_word_embeddings=False,
                         max_position_embeddings=131072, attn_implementation=attn)


def activation_dtype(kind: str, device: Any) -> Any:
    """fp16 (bfloat16 for int4: `_weight_int4pack_mm` takes nothing else) on CUDA; float32
    on CPU, where the peer is a test of the model, not a benchmark."""
    import torch
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if kind == "int4" else torch.float16


@functools.lru_cache(maxsize=None)
def _int4_linear_class() -> type:
    import torch

    class Int4Linear(torch.nn.Module):
        """A bias-free linear layer over `_weight_int4pack_mm` operands (torch_peer.int4pack)."""

        def __init__(self, packed: Any, scales_and_zeros: Any, group_size: int, out_features: int):
            super().__init__()
            self.register_buffer("packed", packed)
            self.register_buffer("scales_and_zeros", scales_and_zeros)
            self.group_size, self.out_features = group_size, out_features

        def forward(self, x: Any) -> Any:
            y = int4pack_mm(x.reshape(-1, x.shape[-1]), self.packed, self.group_size, self.scales_and_zeros)
            return y.reshape(*x.shape[:-1], self.out_features)

    return Int4Linear


class _Builder:
    """Puts vkq host weights into a meta-device HF model, on `device`, counting the bytes of
    the linears' operands (what a token reads)."""

    def __init__(self, device: Any, kind: str, dtype: Any = None):
        import torch
        self.torch, self.device, self.int4 = torch, device, kind == "int4"
        self.dtype = dtype or activation_dtype(kind, device)
        self.done: dict[int, list[tuple[Any, ...]]] = {}  # id(host weight) -> its parts' tensors
        self.nbytes = 0

    def upload(self, a: np.ndarray, dtype: Any = None) -> Any:
        with warnings.catch_warnings():  # QuantizedWeight arrays are read-only; torch copies them
            warnings.simplefilter("ignore", UserWarning)
            t = self.torch.from_numpy(np.ascontiguousarray(a))
        return t.to(device=self.device, dtype=dtype or t.dtype, copy=True)

    def parameter(self, a: np.ndarray) -> Any:
        return self.torch.nn.Parameter(self.upload(a, self.dtype), requires_grad=False)

    def linears(self, slots: Sequence[tuple[Any, str]], w: Any, rows: Sequence[slice]) -> None:
        """Fill the modules `getattr(parent, name)` of `slots` with rows `rows[i]` of `w`."""
        if not isinstance(w, QuantizedWeight) or w.bits != 4:
            raise TypeError(f"the PyTorch peer needs int4 QuantizedWeights on the host (LlamaWeights "
                            f"before to_device), got {w!r}")
        if id(w) in self.done:  # a layer shared on the host: a copy of its own on the device
            parts = [tuple(t.clone() for t in p) for p in self.done[id(w)]]
        else:
            parts = self.done[id(w)] = self._convert(w, rows)
        for (parent, name), part in zip(slots, parts):
            self.nbytes += sum(t.numel() * t.element_size() for t in part)
            if self.int4:
                setattr(parent, name, _int4_linear_class()(*part, w.group_size, part[1].shape[1]))
            else:
                getattr(parent, name).weight = self.torch.nn.Parameter(part[0], requires_grad=False)

    def _convert(self, w: QuantizedWeight, rows: Sequence[slice]) -> list[tuple[Any, ...]]:
        q, s = self.upload(w.q), self.upload(w.scales)
        z = None if w.zeros is None else self.upload(w.zeros)
        out = []
        for r in rows:
            qr, sr, zr = q[r].contiguous(), s[r].contiguous(), None if z is None else z[r].contiguous()
            if self.int4:
                out.append(int4pack(qr, sr, zr, self.dtype))
            else:  # w = q * scale (+ zero) in float32, as QuantizedWeight.dequantize, then rounded
                n, k = qr.shape
                deq = qr.float().view(n, -1, w.group_size) * sr[..., None]
                if zr is not None:
                    deq += zr[..., None]
                out.append((deq.view(n, k).to(self.dtype),))
        return out


def hf_llama(weights: LlamaWeights, device: Any, kind: str, attn: str = "sdpa",
             dtype: Any = None) -> tuple[Any, int]:
    """(LlamaForCausalLM holding `weights` on `device` as `kind`, bytes of its linears).
    q/k/v and gate/up go back to HF's separate projections (rows of vkq's fused weights).
    `dtype` overrides activation_dtype (e.g. float32 on CUDA for a numerics check)."""
    import torch
    from transformers import LlamaForCausalLM
    device = torch.device(device)
    c, cfg = weights.config, hf_config(weights.config, attn)
    with torch.device("meta"):  # no memory, no random init: every tensor is set below
        model = LlamaForCausalLM(cfg)
    build = _Builder(device, kind, dtype)
    m = model.model
    m.embed_tokens.weight = build.parameter(weights.embed)
    m.norm.weight = build.parameter(weights.final_norm)
    qkv = (slice(0, c.q_dim), slice(c.q_dim, c.q_dim + c.kv_dim), slice(c.q_dim + c.kv_dim, None))
    gate_up = (slice(0, None, 2), slice(1, None, 2))  # vkq's gate and up rows alternate
    whole = (slice(None),)
    for L, layer in zip(weights.layers, m.layers):
        a, mlp = layer.self_attn, layer.mlp
        layer.input_layernorm.weight = build.parameter(L.attn_norm)
        layer.post_attention_layernorm.weight = build.parameter(L.mlp_norm)
        build.linears([(a, "q_proj"), (a, "k_proj"), (a, "v_proj")], L.qkv, qkv)
        build.linears([(a, "o_proj")], L.o, whole)
        build.linears([(mlp, "gate_proj"), (mlp, "up_proj")], L.gate_up, gate_up)
        build.linears([(mlp, "down_proj")], L.down, whole)
    build.linears([(model, "lm_head")], weights.lm_head, whole)
    m.rotary_emb = type(m.rotary_emb)(cfg).to(device)  # its frequencies, computed on the host
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the PyTorch peer left tensors unset (this transformers version has "
                           f"more than it knows): {left[:4]}")
    return model.eval(), build.nbytes


class TorchLlama:
    """The peer model with its static KV cache: `config`, `prefill`, `step`, `reset` and
    `last_step_gpu_ns`, as vkq.models.llama.benchmark drives a LlamaModel (module docstring)."""

    def __init__(self, weights: LlamaWeights, device: Any = "cuda", kind: str = "fp16",
                 max_seq: int = 2048, cuda_graph: bool = True, compile: bool = False):
        import torch
        self.torch = torch
        self.config, self.kind = weights.config, kind
        self.device = torch.device(device)
        self.dtype = activation_dtype(kind, self.device)
        self.model, self.weight_bytes = hf_llama(weights, self.device, kind)
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in 5.2x
        self.use_graph = cuda_graph and self.device.type == "cuda"
        # torch.compile'd step (default inductor mode, one graph: fullgraph), captured as is
        self.compiled = compile
        self._step_fn = self._decode
        if compile:
            _allow_recompiles(torch)
            self._step_fn = torch.compile(self._decode, fullgraph=True)
        self.compile_note = ""
        self.token = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.next = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.logits = torch.zeros((self.config.vocab,), dtype=torch.float32, device=self.device)
        self._events = None
        if self.device.type == "cuda":
            self._events = tuple(torch.cuda.Event(enable_timing=True) for _ in range(2))
        self.cache = self.graph = None
        self.set_max_seq(max_seq)

    # -- the cache and the captured step ----------------------------------------------------
    def set_max_seq(self, max_seq: int) -> None:
        """A new static cache of `max_seq` positions (the old one and its graph freed), and on
        CUDA the decode step captured on it; the context starts empty."""
        from transformers import StaticCache
        if max_seq < 1:
            raise ValueError(f"max_seq must be >= 1, got {max_seq}")
        self.cache = self.graph = None
        self._free()
        self.cache = StaticCache(config=self.model.config, max_cache_len=max_seq)
        self.max_seq, self.pos = max_seq, 0
        with self.torch.no_grad():
            self._forward(self.token)  # the cache allocates its tensors at the first update
        if self.compiled and max_seq >= 2:  # the compiling step needs a position
            self._compile()
        self.step_mode = "eager"
        if self.use_graph:
            self.step_mode = self._capture()
        self.reset()

    def _compile(self) -> None:
        """Run the compiled step once (compiling it for this cache); where torch.compile
        fails, the step stays uncompiled and `compile_note` says why."""
        try:
            self._step_fn()
        except Exception as e:
            self._step_fn, self.compiled = self._decode, False
            self.compile_note = f"torch.compile failed: {type(e).__name__}: {_first_line(e)}"

    def _forward(self, ids: Any) -> Any:
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: self.cache})
        return out.logits

    def _decode(self) -> None:
        """The step a graph captures: the token in `self.token`, logits and the greedy next
        token written to `self.logits` and `self.next` (fixed addresses)."""
        with self.torch.no_grad():
            logits = self._forward(self.token)[0, -1]
            self.logits.copy_(logits)
            self.next.copy_(logits.argmax(-1, keepdim=True))

    def _capture(self) -> str:
        """Capture the decode step (after warm-up steps on a side stream, as CUDA graphs
        need); returns the step mode, "CUDA graph" or why the steps run eagerly."""
        torch = self.torch
        if self.max_seq < 6:  # the warm-up steps need the room
            return "eager (cache too short to capture a graph)"
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step_fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step_fn()
        except Exception as e:  # something in the step is not capturable: run it eagerly
            torch.cuda.synchronize()
            return f"eager; CUDA graph capture failed: {type(e).__name__}: {_first_line(e)}"
        eager, replayed = self._first_step(self._decode), self._first_step(graph.replay)
        err = float((eager - replayed).abs().max() / eager.abs().max().clamp_min(1e-30))
        if not err <= GRAPH_TOLERANCE:
            return f"eager; the CUDA graph's logits differ from an eager step's by {err:.1e} of their scale"
        self.graph = graph
        return "CUDA graph"

    def _first_step(self, run: Any) -> Any:
        """The logits of one step run by `run` after a 3-token prompt."""
        self.reset()
        self.prefill([1 % self.config.vocab, 2 % self.config.vocab, 3 % self.config.vocab])
        self.token.fill_(5 % self.config.vocab)
        run()
        return self.logits.clone()

    # -- what the benchmark calls -------------------------------------------------------------
    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Run the prompt (one forward over all its rows); the last position's logits."""
        t = self._tokens(tokens)
        if not len(t):
            raise ValueError("prefill needs at least one token")
        self._check_room(len(t))
        ids = self.torch.as_tensor(t, dtype=self.torch.long, device=self.device)[None]
        with self.torch.no_grad():
            logits = self._forward(ids)[0, -1].float().cpu().numpy()
        self.pos += len(t)
        return logits

    def step(self, token: int, logits: bool = True) -> tuple[int, Any]:
        """One decode step: (greedy next token, read back as vkq's step reads it; logits, a
        float32 torch tensor [vocab] left on the device and overwritten by the next step, or
        None with logits=False)."""
        self._check_room(1)
        self._tokens([token])
        self.token.fill_(int(token))
        if self._events:
            self._events[0].record()
        (self.graph.replay if self.graph is not None else self._step_fn)()
        if self._events:
            self._events[1].record()
        self.pos += 1
        return int(self.next.item()), self.logits if logits else None

    def last_step_gpu_ns(self) -> float | None:
        """GPU time of the last step (CUDA events around it), or None on CPU."""
        if not self._events:
            return None
        return self._events[0].elapsed_time(self._events[1]) * 1e6

    def reset(self) -> None:
        """Forget the context (HF zeroes the cache in place: a graph keeps its addresses)."""
        self.cache.reset()
        self.pos = 0

    def bytes_per_step(self) -> int:
        """Bytes a decode step reads: the linears' operands and the whole static cache (HF's
        attention reads every position, masking those past the context)."""
        c = self.config
        kv = 2 * c.layers * self.max_seq * c.kv_dim * self.torch.finfo(self.dtype).bits // 8
        return self.weight_bytes + kv

    def close(self) -> None:
        """Free the model, cache and graph (device memory back to the driver)."""
        self.model = self.cache = self.graph = None
        self._free()

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def _check_room(self, n: int) -> None:
        if self.pos + n > self.max_seq:
            raise ValueError(f"the context would reach {self.pos + n} positions, past the KV "
                             f"cache's {self.max_seq} (TorchLlama(max_seq=...), set_max_seq)")

    def _tokens(self, tokens: Sequence[int]) -> np.ndarray:
        return check_tokens(tokens, self.config.vocab)  # on the host: a bad id would be a device assert


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:160]


def _allow_recompiles(torch: Any) -> None:
    """Each cache (one per context, per peer) compiles the step again; past dynamo's limit (8
    per function) it would quietly run the step uncompiled."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), 64))
