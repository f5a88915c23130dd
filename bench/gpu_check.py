"""The GPU proof's figures (run by bench/gpu_check.sh): embedding, exact search and decoding on one GPU.

Random models and vectors only, nothing downloaded; each section reports its own figures and its peak GPU
memory, and a section that fails prints its error and the next one runs:

- embedding: a random BERT-base-sized encoder (12 layers, 768 wide, mean pooling), passages of
  `--seq-len` tokens in batches, fp32 against fp16, with the cosine between the two runs' vectors.
- search: exact top-10 by inner product over `--vectors` random unit vectors of 768 dimensions: on the
  GPU (torch matmul + topk, fp32 and fp16) against FAISS `IndexFlatIP` on the CPU, one query and a batch,
  with the top-10 agreement; FAISS on the GPU too when the installed faiss has it.
- decode: a random ChatGLM3-6B-sized `GlmForCausalLM` in bf16, greedy decoding with the KV cache after a
  `--prompt-tokens` prompt, ms/token against the floor of reading every weight once per token at the
  GPU's memory bandwidth (`--hbm-tbps`, known for H200/H100/A100, else 4.8).

`--cpu-smoke` runs every section at tiny sizes on the CPU, so the code paths are checked where there is
no GPU (the test suite does); its figures mean nothing. Without CUDA and without it, one line says so.

    python bench/gpu_check.py                 # on the GPU box (bench/gpu_check.sh runs it after pytest -m gpu)
    python bench/gpu_check.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import inspect
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from _common import CHATGLM3_6B

# HBM bandwidth by GPU name, in TB/s (the vendors' figures for the SXM parts).
BANDWIDTH_TBPS = {"H200": 4.8, "H100": 3.35, "A100": 2.0, "L40S": 0.864, "A10": 0.6, "L4": 0.3}
# The same network at toy sizes, for --cpu-smoke.
TINY_GLM = CHATGLM3_6B | {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command-line options; --cpu-smoke shrinks every size to seconds on a CPU."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on the CPU: check the code paths"
    )
    parser.add_argument("--vectors", type=int, default=1_000_000, help="vectors searched (default 1M)")
    parser.add_argument("--dim", type=int, default=768, help="their dimension (default 768)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per embedded passage (default 256)")
    parser.add_argument("--batch", type=int, default=64, help="passages per forward pass (default 64)")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="prompt before decoding (default 512)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded (default 128)")
    parser.add_argument(
        "--hbm-tbps", type=float, default=None, help="memory bandwidth, TB/s (default: by name)"
    )
    parser.add_argument(
        "--sections", default="embedding,search,decode", help="which to run, comma-separated (default all)"
    )
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.vectors, args.dim, args.seq_len, args.batch = 20_000, 64, 32, 8
        args.prompt_tokens, args.new_tokens = 16, 8
    return args


class Device:
    """Where the sections run, with its clock and peak-memory counters."""

    def __init__(self, smoke: bool) -> None:
        import torch

        self.torch = torch
        self.cuda = not smoke
        self.name = torch.cuda.get_device_name(0) if self.cuda else "cpu (smoke run)"
        self.device = torch.device("cuda" if self.cuda else "cpu")

    def sync(self) -> None:
        """Wait for queued GPU work; return nothing."""
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, work: Callable[[], Any], repeats: int) -> float:
        """Return the median seconds of `repeats` runs of `work`, after one warm-up run."""
        work()
        self.sync()
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            self.sync()
            seconds.append(time.perf_counter() - started)
        return sorted(seconds)[len(seconds) // 2]

    def reset_peak(self) -> None:
        """Free cached GPU memory and restart the peak counter; return nothing."""
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> str:
        """Return the peak GPU memory since the last reset, in GiB (n/a on the CPU)."""
        if not self.cuda:
            return "n/a (CPU)"
        return f"{self.torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def embedding(device: Device, args: argparse.Namespace) -> None:
    """Print fp16 against fp32 passages/s of a random BERT-base-sized encoder, and their vectors' cosine."""
    torch = device.torch
    from transformers import BertConfig, BertModel

    if args.cpu_smoke:
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    else:  # bert-base-chinese's shape, as text2vec-base-chinese has
        config = BertConfig(vocab_size=21128)
    torch.manual_seed(0)
    ids = torch.randint(1000, config.vocab_size - 1, (args.batch, args.seq_len), device=device.device)
    mask = torch.ones_like(ids)
    vectors = {}
    model = BertModel(config).to(device.device).eval()
    for dtype in (torch.float32, torch.float16):
        device.reset_peak()
        model = model.to(dtype)  # the same weights, halved for the second run

        @torch.inference_mode()
        def embed(model: Any = model) -> Any:
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            return torch.nn.functional.normalize(pooled.float(), dim=-1)

        seconds = device.timed(embed, repeats=3 if args.cpu_smoke else 10)
        vectors[dtype] = embed()
        name = str(dtype).removeprefix("torch.")
        print(
            f"  {name}: {args.batch / seconds:,.0f} passages/s ({args.batch} x {args.seq_len} tokens, "
            f"{1000 * seconds:.1f} ms a batch), peak GPU memory {device.peak()}"
        )
    del model
    cosine = (vectors[torch.float32] * vectors[torch.float16]).sum(-1)
    print(f"  fp16 vs fp32 vectors: cosine min {cosine.min().item():.5f}, mean {cosine.mean().item():.5f}")


def search(device: Device, args: argparse.Namespace) -> None:
    """Print exact top-10 search times on the GPU (torch) and with FAISS on the CPU, and their agreement."""
    torch = device.torch
    k, batch = 10, 64
    device.reset_peak()
    generator = torch.Generator(device=device.device).manual_seed(0)
    base = torch.randn(args.vectors, args.dim, device=device.device, generator=generator)
    base = torch.nn.functional.normalize(base, dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(batch, args.dim, device=device.device), dim=-1)
    repeats = 3 if args.cpu_smoke else 20
    found = {}
    for dtype in (torch.float32, torch.float16):
        if dtype is torch.float16 and not device.cuda:
            continue  # half matmuls on a CPU are neither fast nor what a GPU box runs
        name = str(dtype).removeprefix("torch.")
        found[name] = _torch_search(device, base.to(dtype), queries.to(dtype), k, repeats, name)
    print(f"  {args.vectors:,} x {args.dim} vectors; peak GPU memory {device.peak()}")
    if "float16" in found:
        print(f"  fp16 top-{k} agreement with fp32: {_agreement(found['float16'], found['float32']):.3f}")
    try:
        import faiss
    except ImportError:
        print("  FAISS: not installed here, its half skipped")
        return
    host = base.cpu().numpy()
    asked = queries.cpu().numpy()
    del base
    device.reset_peak()
    index = faiss.IndexFlatIP(args.dim)
    index.add(host)
    print(f"  FAISS {faiss.__version__} on the CPU, {faiss.omp_get_max_threads()} threads:")
    for n in (1, batch):
        seconds = device.timed(lambda n=n: index.search(asked[:n], k), 3 if n > 1 else repeats)
        print(f"    IndexFlatIP, {n} quer{'y' if n == 1 else 'ies'}: {1000 * seconds:.2f} ms")
    ids = index.search(asked, k)[1]
    print(f"    top-{k} agreement with torch fp32: {_agreement(ids, found['float32']):.3f}")
    print(
        f"    peak process memory (RSS) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )
    if device.cuda and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        on_gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        for n in (1, batch):
            seconds = device.timed(lambda n=n: on_gpu.search(asked[:n], k), repeats)
            print(f"  FAISS on the GPU (index_cpu_to_gpu), {n} queries: {1000 * seconds:.2f} ms")
    else:
        print("  FAISS on the GPU: this faiss has no GPU support (faiss-gpu not installed), skipped")


def _torch_search(device: Device, matrix: Any, queries: Any, k: int, repeats: int, name: str) -> Any:
    """Print the times of exact top-k by matmul + topk for one query and for all; return all's top-k ids."""
    torch = device.torch
    for n in (1, len(queries)):
        seconds = device.timed(lambda n=n: torch.topk(queries[:n] @ matrix.T, k, dim=-1), repeats)
        print(
            f"  torch on {device.device.type} {name}, {n} quer{'y' if n == 1 else 'ies'}: {1000 * seconds:.2f} ms"
        )
    return torch.topk(queries @ matrix.T, k, dim=-1).indices.cpu().numpy()


def _agreement(found: Any, expected: Any) -> float:
    """Return the mean share of each row's expected ids that `found` holds too."""
    rows = [len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), expected.tolist(), strict=True)]
    return sum(rows) / len(rows)


def glm_config(shape: dict[str, Any]) -> Any:
    """Return a GlmConfig of `shape` with rotary embedding on half of each head, in either transformers' terms."""
    from transformers import GlmConfig

    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    if "rope_parameters" in inspect.signature(GlmConfig.__init__).parameters:  # transformers 5
        return GlmConfig(**shape, rope_parameters=rope, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    return GlmConfig(**shape, rope_theta=10000.0, partial_rotary_factor=0.5, pad_token_id=0, eos_token_id=2)


def decode(device: Device, args: argparse.Namespace) -> None:
    """Print bf16 greedy decoding ms/token of a random ChatGLM3-6B-sized model against the bandwidth floor."""
    torch = device.torch
    from transformers import GlmForCausalLM

    device.reset_peak()
    config = glm_config(TINY_GLM if args.cpu_smoke else CHATGLM3_6B)
    started = time.perf_counter()
    with torch.device("meta"):
        model = GlmForCausalLM(config)
    # Made straight on the device in bf16 (never 6B fp32 weights in CPU memory); init_weights also sets
    # the rotary buffers that to_empty leaves unset.
    model = model.to(torch.bfloat16).to_empty(device=device.device)
    model.init_weights()
    model.eval()
    device.sync()
    parameters = sum(p.numel() for p in model.parameters())
    # Each token reads every weight once, but of the input embeddings only its own row.
    read = sum(p.numel() * p.element_size() for p in model.parameters())
    read -= model.get_input_embeddings().weight.numel() * 2
    print(f"  {parameters / 1e9:.2f}B parameters in bf16, made in {time.perf_counter() - started:.1f}s")
    prompt = torch.randint(3, config.vocab_size, (1, args.prompt_tokens), device=device.device)

    # transformers 5 calls the KV cache `cache`; 4.x `past_key_values`.
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.inference_mode()
    def run(new_tokens: int) -> float:
        """Return the seconds of `new_tokens` greedy steps after the prompt's prefill (not counted)."""
        out = model(input_ids=prompt, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        device.sync()
        started = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, use_cache=True, **{cache_name: getattr(out, cache_name)})
            token = out.logits[:, -1:].argmax(-1)
        device.sync()
        return time.perf_counter() - started

    run(4)  # warm-up
    prefill = device.timed(lambda: model(input_ids=prompt, use_cache=True), repeats=3)
    per_token = min(run(args.new_tokens) for _ in range(2)) / args.new_tokens
    tbps = args.hbm_tbps or next((v for k, v in BANDWIDTH_TBPS.items() if k in device.name), 4.8)
    floor = read / (tbps * 1e12)
    print(
        f"  prefill of {args.prompt_tokens} tokens: {1000 * prefill:.1f} ms; decoding: "
        f"{1000 * per_token:.2f} ms/token ({1 / per_token:.1f} tokens/s), batch 1, after that prompt"
    )
    print(
        f"  floor: {read / 1e9:.2f} GB of weights read per token / {tbps} TB/s = {1000 * floor:.3f} ms/token; "
        f"measured / floor = {per_token / floor:.1f}x"
    )
    print(f"  peak GPU memory {device.peak()}")


SECTIONS = {"embedding": embedding, "search": search, "decode": decode}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, each on its own (a failure is printed, the rest still run); return 0."""
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("no CUDA: torch is not installed, nothing to measure")
        return 0
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            f"no CUDA: torch {torch.__version__} sees no GPU, nothing to measure (--cpu-smoke checks the code)"
        )
        return 0
    device = Device(args.cpu_smoke)
    import transformers

    print(f"device: {device.name}; torch {torch.__version__}, transformers {transformers.__version__}")
    failed = []
    for name in args.sections.split(","):
        print(f"== {name}")
        started = time.perf_counter()
        try:
            SECTIONS[name](device, args)
        except Exception:  # one broken section must not cost the others' figures
            failed.append(name)
            print(f"  FAILED: {traceback.format_exc(limit=4).strip()}".replace("\n", "\n  "))
        finally:
            print(f"  ({time.perf_counter() - started:.1f}s)")
            device.reset_peak()
            sys.stdout.flush()
    print(f"sections failed: {', '.join(failed) if failed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
