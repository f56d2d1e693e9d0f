"""A Llama decoder on vkq: configuration, random int4 weights, an eager prefill and a decode
step captured once and replayed per token.

    model = LlamaModel(LlamaWeights.random(CONFIGS["tiny"]), max_seq=256)
    logits = model.prefill([1, 2, 3])                # the prompt, eagerly (M = 3 rows)
    tokens = model.generate(next_token, 16)          # 16 replays of one decode graph

Per layer: rms_norm -> q/k/v (one fused int4 linear) -> RoPE on q and k -> k, v appended to
the layer's device-resident KV cache -> grouped-query attention over the cache -> o
(+ residual) -> rms_norm -> gate/up (one fused int4 linear with silu(gate) * up) -> down
(+ residual). Then the final rms_norm, the lm_head (int4) and a greedy argmax on the device.
The decode graph takes the token and its position as graph parameters (the parameter
buffer), so every step replays the same recorded commands. Hugging Face Llama conventions
throughout (rotate-half RoPE with Llama 3 frequency scaling; q/k/v and gate/up rows in the
order documented on LlamaLayer).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import vkq
from vkq.models.safetensors import CheckpointError, open_folder
from vkq.quantized_weight import QuantizedWeight, half_group_params, quantize_weight


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The shape of a Llama model (the fields of a Hugging Face config.json that matter)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float = 500000.0
    #: Llama 3 frequency scaling: (factor, low_freq_factor, high_freq_factor,
    #: original_max_position_embeddings), or None
    rope_scaling: tuple[float, float, float, int] | None = None
    rms_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def scaling_dict(self) -> dict[str, float] | None:
        if self.rope_scaling is None:
            return None
        f, lo, hi, orig = self.rope_scaling
        return {"factor": f, "low_freq_factor": lo, "high_freq_factor": hi,
                "original_max_position_embeddings": orig}


#: Named configurations (Hugging Face's Llama-3.2-1B and Meta-Llama-3-8B, and a tiny one).
CONFIGS = {
    "tiny": LlamaConfig(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=96,
                        vocab=97, rope_scaling=(8.0, 1.0, 4.0, 64)),
    "llama-3.2-1b": LlamaConfig(hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64,
                                intermediate=8192, vocab=128256, rope_scaling=(32.0, 1.0, 4.0, 8192),
                                tie_embeddings=True),
    "llama-3-8b": LlamaConfig(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
                              intermediate=14336, vocab=128256),
}


@dataclasses.dataclass
class LlamaLayer:
    """One decoder layer's weights. `qkv` is q, k and v's rows in that order ([q_dim + 2 *
    kv_dim, hidden]); `gate_up` has gate and up rows alternating (gate 0, up 0, gate 1, ...),
    the order vkq.fuse_linear(..., epilogue="silu_mul") gives. Linear weights are
    QuantizedWeights, or Q4gswWeights already on the device."""

    attn_norm: np.ndarray
    qkv: Any
    o: Any
    mlp_norm: np.ndarray
    gate_up: Any
    down: Any


@dataclasses.dataclass
class LlamaWeights:
    config: LlamaConfig
    embed: np.ndarray            # float32 [vocab, hidden]
    layers: list[LlamaLayer]
    final_norm: np.ndarray
    lm_head: Any                 # [vocab, hidden]

    @classmethod
    def random(cls, config: LlamaConfig, seed: int = 0, group_size: int = 32,
               symmetric: bool = True) -> "LlamaWeights":
        """Random int4 weights, distinct per layer, scaled so that activations stay near unit
        size through the stack (host-side: for small configs; see `random_on_device`)."""
        rng = np.random.default_rng(seed)
        c = config
        layers = [LlamaLayer(_norm(rng, c.hidden), _int4(rng, c.q_dim + 2 * c.kv_dim, c.hidden, group_size, symmetric),
                             _int4(rng, c.hidden, c.q_dim, group_size, symmetric), _norm(rng, c.hidden),
                             _int4(rng, 2 * c.intermediate, c.hidden, group_size, symmetric),
                             _int4(rng, c.hidden, c.intermediate, group_size, symmetric))
                  for _ in range(c.layers)]
        embed = rng.standard_normal((c.vocab, c.hidden)).astype(np.float32)
        head = _int4(rng, c.vocab, c.hidden, group_size, symmetric)
        return cls(c, embed, layers, _norm(rng, c.hidden), head)

    @classmethod
    def from_hf(cls, folder: str | Path, group_size: int = 32, symmetric: bool = True,
                progress: Callable[[str, int, int], None] | None = None) -> "LlamaWeights":
        """A Hugging Face Llama folder (config.json + *.safetensors, F32/F16/BF16), its linear
        layers quantized to int4 with `group_size` (q/k/v and gate/up fused as LlamaLayer
        says). Reads one tensor at a time (numpy memory maps; no torch). CheckpointError says
        what does not fit. `progress("quantizing", done, total)` is called after each layer
        and the lm_head (the CLI draws it as a one-line bar)."""
        folder = Path(folder)
        config = config_from_hf(folder)
        files = open_folder(folder)
        c = config

        def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
            if name not in files:
                raise CheckpointError(f"{folder}: missing tensor {name!r}")
            got = files[name].shape(name)
            if got != shape:
                raise CheckpointError(f"{folder}: tensor {name!r} has shape {list(got)}, the config "
                                      f"says {list(shape)}")
            return files[name].float32(name)

        def int4(a: np.ndarray) -> QuantizedWeight:
            return quantize_weight(a, bits=4, group_size=group_size, symmetric=symmetric)

        layers = []
        for i in range(c.layers):
            p = f"model.layers.{i}."
            qkv = np.concatenate([tensor(p + "self_attn.q_proj.weight", (c.q_dim, c.hidden)),
                                  tensor(p + "self_attn.k_proj.weight", (c.kv_dim, c.hidden)),
                                  tensor(p + "self_attn.v_proj.weight", (c.kv_dim, c.hidden))])
            gate = tensor(p + "mlp.gate_proj.weight", (c.intermediate, c.hidden))
            up = tensor(p + "mlp.up_proj.weight", (c.intermediate, c.hidden))
            layers.append(LlamaLayer(
                tensor(p + "input_layernorm.weight", (c.hidden,)), int4(qkv),
                int4(tensor(p + "self_attn.o_proj.weight", (c.hidden, c.q_dim))),
                tensor(p + "post_attention_layernorm.weight", (c.hidden,)),
                int4(np.stack([gate, up], axis=1).reshape(2 * c.intermediate, c.hidden)),
                int4(tensor(p + "mlp.down_proj.weight", (c.hidden, c.intermediate)))))
            if progress is not None:
                progress("quantizing", i + 1, c.layers + 1)
        embed = tensor("model.embed_tokens.weight", (c.vocab, c.hidden))
        head = int4(embed if c.tie_embeddings else tensor("lm_head.weight", (c.vocab, c.hidden)))
        if progress is not None:
            progress("quantizing", c.layers + 1, c.layers + 1)
        return cls(c, embed, layers, tensor("model.norm.weight", (c.hidden,)), head)

    @classmethod
    def random_repeated(cls, config: LlamaConfig, seed: int = 0, group_size: int = 32,
                        symmetric: bool = True) -> "LlamaWeights":
        """Random int4 weights for large configs, host-side: one random layer, the same
        LlamaLayer object at every index (one layer's host memory). Whoever puts them on a
        device gives each layer memory of its own (`to_device`; the PyTorch peer in
        vkq.bench.llama_torch), so a token reads every layer's bytes from DRAM as in a real
        model; the values repeat, which does not change the work."""
        base = cls.random(dataclasses.replace(config, layers=1, vocab=1), seed, group_size,
                          symmetric).layers[0]
        rng = np.random.default_rng(seed + 1)
        embed = rng.standard_normal((config.vocab, config.hidden)).astype(np.float32)
        head = _int4(rng, config.vocab, config.hidden, group_size, symmetric)
        return cls(config, embed, [base] * config.layers, base.attn_norm, head)

    @classmethod
    def random_on_device(cls, config: LlamaConfig, device: vkq.Device, seed: int = 0,
                         group_size: int = 32, symmetric: bool = True) -> "LlamaWeights":
        """`random_repeated(...)` packed on `device` (each layer a device copy of the first)."""
        return cls.random_repeated(config, seed, group_size, symmetric).to_device(device)

    def to_device(self, device: vkq.Device,
                  progress: Callable[[str, int, int], None] | None = None) -> "LlamaWeights":
        """These weights with every linear packed on `device` (Q4gswWeights), so that a
        model's first token does not pay the upload. A weight object met again (layers
        shared by `random_repeated`) is packed once and copied on the device for every
        further use: each layer gets memory of its own. Weights already on a device are kept.
        `progress("uploading", done, total)` is called after each layer and the lm_head."""
        from vkq.ops.q4gsw_linear import prepack_quantized
        packed: dict[int, Any] = {}

        def put(w: Any) -> Any:
            if not isinstance(w, QuantizedWeight):
                return w
            if id(w) in packed:
                return packed[id(w)].copy()
            packed[id(w)] = prepack_quantized(w, device)
            return packed[id(w)]

        layers = []
        for i, L in enumerate(self.layers):
            layers.append(dataclasses.replace(L, **{f: put(getattr(L, f)) for f in _LINEARS}))
            if progress is not None:
                progress("uploading", i + 1, len(self.layers) + 1)
        head = put(self.lm_head)
        if progress is not None:
            progress("uploading", len(self.layers) + 1, len(self.layers) + 1)
        return dataclasses.replace(self, layers=layers, lm_head=head)

    def linears(self) -> list[Any]:
        """Every linear weight: each layer's q/k/v, o, gate/up and down, then the lm_head."""
        return [getattr(L, f) for L in self.layers for f in _LINEARS] + [self.lm_head]

    def release(self) -> None:
        """Free the device memory of these weights' linears (packed copies, or Q4gswWeights)."""
        for w in self.linears():
            (getattr(w, "release", None) or w.close)()


_LINEARS = ("qkv", "o", "gate_up", "down")


def load_tokenizer(folder: str | Path) -> Any:
    """The folder's tokenizer.json as a `tokenizers.Tokenizer` (the `tokenizers` package),
    or None when the folder has none."""
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CheckpointError(f"{path}: reading it needs the `tokenizers` package "
                              f"(pip install tokenizers, or vkq[llama])") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises its own exception types
        raise CheckpointError(f"{path}: not a readable tokenizer ({e})") from None


def config_from_hf(folder: str | Path) -> LlamaConfig:
    """The LlamaConfig of a Hugging Face folder's config.json (Llama architectures only)."""
    path = Path(folder) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read it ({e})") from None
    arch = cfg.get("architectures") or [cfg.get("model_type", "?")]
    if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in arch:
        raise CheckpointError(f"{path}: architecture {arch} is not a Llama (LlamaForCausalLM)")
    for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if cfg.get(key, want) != want:
            raise CheckpointError(f"{path}: {key} = {cfg[key]!r}; vkq's Llama supports {want!r}")
    try:
        heads = int(cfg["num_attention_heads"])
        scaling = cfg.get("rope_scaling")
        rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise CheckpointError(f"{path}: rope_scaling type {rope_type!r} is not supported "
                                  f"(default or llama3)")
        return LlamaConfig(
            hidden=int(cfg["hidden_size"]), layers=int(cfg["num_hidden_layers"]), heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads", heads)),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            intermediate=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rope_scaling=None if rope_type == "default" else (
                float(scaling["factor"]), float(scaling["low_freq_factor"]),
                float(scaling["high_freq_factor"]), int(scaling["original_max_position_embeddings"])),
            rms_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    except KeyError as e:
        raise CheckpointError(f"{path}: missing {e.args[0]!r}") from None
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {e}") from None


def _norm(rng: np.random.Generator, n: int) -> np.ndarray:
    return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def _int4(rng: np.random.Generator, n: int, k: int, group_size: int, symmetric: bool) -> QuantizedWeight:
    """Random int4 values with fp16 scales of about 1 / (4.6 sqrt(K)): outputs near unit size
    for unit-size inputs (int4 values uniform in [-8, 7] have a standard deviation of 4.6)."""
    q = rng.integers(-8, 8, size=(n, k), dtype=np.int8)
    g = k // group_size
    s = rng.uniform(0.8, 1.2, size=(n, g)).astype(np.float32) / (4.6 * math.sqrt(k))
    z = None if symmetric else (0.1 * s * rng.standard_normal((n, g))).astype(np.float32)
    s, z = half_group_params(s, z)
    return QuantizedWeight(q, s, z, bits=4, group_size=group_size)


class LlamaModel:
    """A Llama model on one device with its KV caches (module docstring)."""

    def __init__(self, weights: LlamaWeights, device: vkq.Device | None = None, max_seq: int = 2048):
        c = self.config = weights.config
        self.device = device or vkq.default_device()
        if max_seq < 1:
            raise ValueError(f"max_seq must be >= 1, got {max_seq}")
        self.max_seq = max_seq
        self.embed_host = np.ascontiguousarray(weights.embed, np.float32)
        if self.embed_host.shape != (c.vocab, c.hidden):
            raise ValueError(f"embedding must be [{c.vocab}, {c.hidden}], got {self.embed_host.shape}")
        self.embed = vkq.to_device(self.embed_host, device=self.device)
        self.rope = vkq.RopeTable(c.head_dim, max_seq, theta=c.rope_theta, scaling=c.scaling_dict())
        self.layers = [dict(attn_norm=L.attn_norm, mlp_norm=L.mlp_norm,
                            qkv=vkq.FusedWeight(L.qkv, (c.q_dim, c.kv_dim, c.kv_dim)), o=L.o,
                            gate_up=vkq.FusedWeight(L.gate_up, (c.intermediate,) * 2, "silu_mul"),
                            down=L.down)
                       for L in weights.layers]
        self.final_norm = weights.final_norm
        self.lm_head = weights.lm_head
        zeros = np.zeros((max_seq, c.kv_dim), np.float32)
        self.k_cache = [vkq.to_device(zeros, device=self.device) for _ in weights.layers]
        self.v_cache = [vkq.to_device(zeros, device=self.device) for _ in weights.layers]
        self.pos = 0
        self._step: vkq.Graph | None = None

    # -- the layer stack, on DeviceTensors (eager) or graph values (capture) ---------------------
    def _forward(self, x: Any, pos: Any, rows: int) -> Any:
        c = self.config
        for L, kc, vc in zip(self.layers, self.k_cache, self.v_cache):
            # the norms are folded into the one-row GEMVs (a dispatch of their own for prefill)
            q, k, v = vkq.linear(x, L["qkv"], rms_norm=(L["attn_norm"], c.rms_eps))
            q = vkq.rope(q, self.rope, pos, c.heads)
            vkq.rope(k, self.rope, pos, c.kv_heads, out=kc)  # RoPE'd keys straight into the cache
            vkq.kv_write(vc, v, pos)
            a = vkq.attention(q, kc, vc, pos, c.heads, c.kv_heads)
            x = vkq.linear(a, L["o"], residual=x)
            h = vkq.linear(x, L["gate_up"], rms_norm=(L["mlp_norm"], c.rms_eps))
            x = vkq.linear(h, L["down"], residual=x)
        last = vkq.take_rows(x, rows - 1) if rows > 1 else x
        return vkq.linear(last, self.lm_head, rms_norm=(self.final_norm, c.rms_eps))

    def _check_room(self, n: int) -> None:
        if self.pos + n > self.max_seq:
            raise ValueError(f"the context would reach {self.pos + n} positions, past the KV "
                             f"cache's {self.max_seq} (LlamaModel(max_seq=...))")

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Run the prompt (eagerly, all its rows at once); returns the last position's logits."""
        tokens = self._tokens(tokens)
        if not len(tokens):
            raise ValueError("prefill needs at least one token")
        self._check_room(len(tokens))
        x = vkq.to_device(self.embed_host[tokens], device=self.device)
        logits = self._forward(x, self.pos, len(tokens)).numpy()[0]
        self.pos += len(tokens)
        return logits

    def step_graph(self) -> vkq.Graph:
        """The decode step, captured once: parameters "token" and "pos"; outputs "logits" and
        "next" (the greedy next token)."""
        if self._step is None:
            with vkq.graph(self.device) as g:
                token, pos = g.param("token"), g.param("pos")
                logits = self._forward(vkq.take_rows(self.embed, token), pos, 1)
                g.output("logits", logits)
                g.output("next", vkq.argmax(logits))
            self._step = g
        return self._step

    def step(self, token: int, logits: bool = True) -> tuple[int, np.ndarray | None]:
        """One decode step (a graph replay): (greedy next token, logits); with logits=False
        the logits stay on the device (None): greedy decoding then copies 4 bytes per token
        to the host instead of the vocabulary's 4 * vocab."""
        self._check_room(1)
        out = self.step_graph()(outputs=("next", "logits") if logits else ("next",),
                                token=int(token), pos=self.pos)
        self.pos += 1
        return int(out["next"][0]), out["logits"][0] if logits else None

    def generate(self, token: int, n: int, sampler: Callable[[np.ndarray], int] | None = None) -> list[int]:
        """`n` decode steps starting from `token`; the tokens produced. Greedy (the device's
        argmax) unless a `sampler` (vkq.models.sampling.Sampler) picks each token from the
        step's logits."""
        out = []
        for _ in range(n):
            greedy, logits = self.step(token, logits=sampler is not None)
            token = greedy if sampler is None else sampler(logits)
            out.append(token)
        return out

    def last_step_gpu_ns(self) -> float | None:
        """GPU time of the last decode step (timestamps around the replay), or None on a
        device without timestamps."""
        if self._step is None or not self.device.caps.timestamps:
            return None
        return self._step.gpu_ns()

    def reset(self) -> None:
        """Forget the context (the caches are overwritten from position 0 on)."""
        self.pos = 0

    def _tokens(self, tokens: Sequence[int]) -> np.ndarray:
        return check_tokens(tokens, self.config.vocab)

    def close(self) -> None:
        if self._step is not None:
            self._step.close()
            self._step = None
        for t in self.k_cache + self.v_cache + [self.embed]:
            t.close()
        self.rope.release()


def check_tokens(tokens: Sequence[int], vocab: int) -> np.ndarray:
    """`tokens` as int64 ids, or a ValueError saying why they are not a 1-D sequence of ids
    in [0, vocab)."""
    t = np.asarray(tokens)
    if t.ndim != 1 or t.dtype.kind not in "iu":
        raise ValueError(f"tokens must be a 1-D sequence of integers, got {t.dtype} {t.shape}")
    if len(t) and (t.min() < 0 or t.max() >= vocab):
        raise ValueError(f"token ids must be in [0, {vocab}), got [{int(t.min())}, {int(t.max())}]")
    return t.astype(np.int64)


def _timed_pass(model: Any, prompt: np.ndarray, decode_tokens: int) -> tuple[float, float, int]:
    """From an empty context: the prompt's prefill, then greedy decode steps; (prefill
    seconds, decode seconds, the last token)."""
    model.reset()
    t = time.perf_counter()
    token = int(np.argmax(model.prefill(prompt)))
    prefill_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(decode_tokens):
        token, _ = model.step(token, logits=False)
    return prefill_s, time.perf_counter() - t, token


def benchmark(model: Any, prompt_len: int, decode_tokens: int,
              warmup_s: float = 0.3, repeats: int = 3) -> dict[str, float]:
    """Prefill tok/s for a prompt of `prompt_len` random tokens, then decode tok/s over
    `decode_tokens` greedy steps (wall), each the median of `repeats` timed passes (one pass
    is a fraction of a second: a single stall, or clocks still rising, would otherwise set
    it), and the decode step's GPU time per token (median of a few more steps). The same
    prompt and steps run for `warmup_s` first, so clocks and caches are as a serving loop
    has them. Greedy steps leave the logits on the device, as a serving loop that samples
    on the device does. `model`: a LlamaModel, or anything with its `config`, `reset`,
    `prefill`, `step` and `last_step_gpu_ns` (the PyTorch peer,
    vkq.bench.llama_torch.TorchLlama)."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, model.config.vocab, prompt_len)
    end = time.perf_counter() + warmup_s
    while True:  # at least one pass, even with warmup_s=0
        _timed_pass(model, prompt, decode_tokens)
        if time.perf_counter() >= end:
            break
    prefill_s, decode_s, token = zip(*(_timed_pass(model, prompt, decode_tokens)
                                       for _ in range(repeats)))
    token = token[-1]
    spans = []
    model.reset()
    model.prefill(prompt)
    for _ in range(min(8, decode_tokens)):
        token, _ = model.step(token, logits=False)
        ns = model.last_step_gpu_ns()
        if ns is None:
            break
        spans.append(ns)
    return {"prefill_tok_s": prompt_len / float(np.median(prefill_s)),
            "decode_tok_s": decode_tokens / float(np.median(decode_s)),
            "decode_gpu_ms": float(np.median(spans)) / 1e6 if spans else float("nan")}
