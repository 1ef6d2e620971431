"""The benchmark's outputs: the machine it ran on, the printed report, the JSON and the plot."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path

import flax
import jax
import jaxlib
import numpy as np
import optax
from matplotlib.figure import Figure

# What the JSON's figures mean; written into it as "definitions".
DEFINITIONS = {
    "train_step_seconds_*": "seconds per train step (forward, 3 losses, backward, AdamW): the "
                            "mean over the sampled real steps of each one's median (or the one "
                            "--seq-len batch)",
    "train_step_ratio_vs_torch_*": "JAX step time / PyTorch step time: below 1 means JAX is faster",
    "encode_ratio_vs_torch*": "JAX sequences/s / PyTorch sequences/s: above 1 means JAX is faster",
    "speedup": "PyTorch time / JAX time for each comparison: above 1 means JAX is faster",
    "*_seq_per_s_*": "sentences per second (a train step holds 5 x batch_size sentences)",
    "*_tokens_per_s_*": "token positions per second, padding included (the work each framework "
                        "did on its own layout)",
    "*_real_tokens_per_s_*": "non-padding tokens per second",
    "*_mfu_*": "model FLOPs (analytic) / time / device peak; null (n/a) without a known peak",
    "compile_seconds_jax": "first call minus a steady call, summed over the step's shapes",
    "num_compiles": "train step programs JAX compiled (one per distinct step shape timed)",
    "pipeline_padding_waste": "padding / all positions over the planned epoch's steps in the JAX "
                              "layout (packed rows, or every sentence padded to the step's bucket)",
    "pipeline_padding_waste_torch": "the same for PyTorch's inputs (--torch-padding)",
    "example_padding_waste": "padding if each sentence were padded only to its own length bucket "
                             "(bert_jax.data.padding_waste of the training lengths)",
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(argv: list[str], torch_env: dict | None) -> dict:
    """Date, command, devices and versions; `torch_env` from `TorchReference.environment`, or
    None when PyTorch is not used (--no-torch)."""
    dev = jax.devices()[0]
    torch_env = torch_env or {"torch_device": None, "torch_threads": None, "versions": {}}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *argv]),
        "platform": dev.platform, "device": str(dev), "device_kind": dev.device_kind,
        "torch_device": torch_env["torch_device"], "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(), "torch_threads": torch_env["torch_threads"],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "jaxlib": jaxlib.__version__,
                     "flax": flax.__version__, "optax": optax.__version__,
                     **torch_env["versions"], "numpy": np.__version__},
    }


def fmt(value, spec: str = ".3g", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:{spec}}{unit}"


def print_report(res: dict) -> None:
    p = print
    p(f"\n== benchmarks  {res['date']}  ({res['device_kind']}, {res['cpu_model']}, "
      f"{res['cpu_count']} CPUs, torch threads {fmt(res['torch_threads'], 'd')})")
    p(f"model {res['model']} (layers {res['num_layers']}, hidden {res['hidden_size']}), dtype "
      f"{res['dtype']}, attention {res['attention_impl']}, batch {res['batch_size']} per task "
      f"({5 * res['batch_size']} sentences/step), lengths "
      f"{'fixed ' + str(res['seq_len']) if res['seq_len'] else 'real'}")
    p(f"load average before/after: {res['load_average_before']} / {res['load_average_after']}")
    if res.get("pipeline_steps"):
        p(f"input pipeline (one epoch, {res['pipeline_steps']} steps): JAX {res['pipeline_layout']},"
          f" {res['pipeline_distinct_step_shapes']} distinct step shapes, padding "
          f"{100 * res['pipeline_padding_waste']:.1f}% of positions; PyTorch "
          f"(--torch-padding {res['torch_padding']}) {100 * res['pipeline_padding_waste_torch']:.1f}%"
          f" (each sentence padded to its own length bucket: "
          f"{100 * res['example_padding_waste']:.1f}%)")
    if res.get("train_step_seconds_jax") is not None:
        print_train(res)
    if res.get("encode_seq_per_s_jax"):
        print_encode(res)
    if res.get("sweep"):
        p("\nbatch-size sweep (train step, sentences/s):")
        p("  batch   jax    torch_eager  torch_compile  jax/torch_eager time")
        for row in res["sweep"]:
            p(f"  {row['batch_size']:5d} {fmt(row.get('train_seq_per_s_jax'), '8.1f')} "
              f"{fmt(row.get('train_seq_per_s_torch_eager'), '12.1f')} "
              f"{fmt(row.get('train_seq_per_s_torch_compile'), '14.1f')} "
              f"{fmt(row.get('train_step_ratio_vs_torch_eager'), '12.3f')}")


def print_train(res: dict) -> None:
    p = print
    p("\ntrain step            step time    seq/s   tokens/s  GFLOP/s    MFU  vs torch eager")
    for name in ("jax", "torch_eager", "torch_compile"):
        s = res.get(f"train_step_seconds_{name}")
        if s is None:
            if f"{name}_status" in res:
                p(f"  {name:<18} {res[f'{name}_status']}")
            continue
        rel = res["train_step_seconds_torch_eager"] / s \
            if res.get("train_step_seconds_torch_eager") else None
        p(f"  {name:<18} {s * 1e3:8.1f} ms {res[f'train_seq_per_s_{name}']:8.1f} "
          f"{res[f'train_tokens_per_s_{name}']:10.0f} {res[f'train_flops_per_s_{name}'] / 1e9:8.1f} "
          f"{fmt(res[f'train_mfu_{name}'], '.1%'):>6} {fmt(rel, '.2f', 'x faster')}")
    p(f"  timed: {len(res['sampled_steps'])} real steps of the epoch "
      f"{res['sampled_steps'][:8]}{' ...' if len(res['sampled_steps']) > 8 else ''}; "
      f"positions per step JAX {res['padded_tokens_per_step_jax']:.0f}, PyTorch "
      f"{res['padded_tokens_per_step_torch']:.0f}, real tokens {res['real_tokens_per_step']:.0f}")
    p(f"  JAX step time / torch eager = {fmt(res['train_step_ratio_vs_torch_eager'], '.3f')}"
      f"; / torch.compile = {fmt(res.get('train_step_ratio_vs_torch_compile'), '.3f')}")
    p(f"  compile: JAX {fmt(res['compile_seconds_jax'], '.1f', ' s')} for "
      f"{res['num_compiles']} step shapes; torch.compile "
      f"{fmt(res.get('compile_seconds_torch_compile'), '.1f', ' s')}")
    if c := res["same_loss_check"]:
        p(f"  same-work check (dropout off, same weights and batch): loss JAX {c['loss_jax']:.5f},"
          f" PyTorch {c['loss_torch']:.5f}")


def print_encode(res: dict) -> None:
    p = print
    p(f"\nencode {res['encode_sentences']} STS dev sentences, batch "
      f"{res['encode_batch_size']}    seconds    seq/s   tokens/s  padding  GFLOP/s   MFU")
    for name, label in (("jax", "jax (sorted, buckets)"),
                        ("torch", "torch (file order, padding=True)"),
                        ("torch_sorted", "torch (jax's sorted batches)")):
        if f"encode_seconds_{name}" not in res:
            continue
        waste = res.get(f"encode_padding_waste_{'jax' if name != 'torch' else 'torch'}")
        p(f"  {label:<33} {res[f'encode_seconds_{name}']:7.3f} "
          f"{res[f'encode_seq_per_s_{name}']:8.1f} {res[f'encode_tokens_per_s_{name}']:10.0f}"
          f"  {fmt(waste, '.1%'):>6} {res[f'encode_flops_per_s_{name}'] / 1e9:8.1f} "
          f"{fmt(res[f'encode_mfu_{name}'], '.1%'):>6}")
    p(f"  JAX buckets {res['encode_buckets']}; JAX throughput / torch = "
      f"{fmt(res.get('encode_ratio_vs_torch'), '.2f')}; / torch on "
      f"the same sorted batches = {fmt(res.get('encode_ratio_vs_torch_sorted'), '.2f')}; "
      f"JAX compile {res['compile_seconds_jax_encode']:.1f} s for "
      f"{res['num_compiles_encode']} shapes")


def print_profiles(profiles: dict) -> None:
    for index, prof in profiles.items():
        j, t = prof.get("jax"), prof.get("torch_eager")
        print(f"\nprofile of sampled step {index}:")
        if j:
            print(f"  JAX: wall {j['wall_seconds_per_step'] * 1e3:.0f} ms/step, op time summed "
                  f"over threads {j['op_seconds_per_step'] * 1e3:.0f} ms")
            print("    by phase: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in j["by_phase"].items()))
            print("    by kind:  " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in j["by_kind"].items()))
            print("    by phase and kind: " + ", ".join(
                f"{k} {v * 1e3:.0f} ms" for k, v in j["by_phase_and_kind"].items() if v > 0.005))
            print("    top ops:  " + "; ".join(f"{o['op']} {o['seconds'] * 1e3:.1f} ms ({o['phase']})"
                                               for o in j["top_ops"][:6]))
        if t:
            print("  PyTorch eager by phase (wall): " + ", ".join(
                f"{k} {v * 1e3:.0f} ms" for k, v in t["by_phase"].items()))
            print("    top ops (self CPU): " + "; ".join(
                f"{o['op']} {o['self_seconds'] * 1e3:.1f} ms x{o['calls']}" for o in t["top_ops"][:8]))


def plot_sweep(sweep: list[dict], path: str, res: dict) -> None:
    """PNG of train sentences/s against batch size, one line per framework (`sweep_figure`)."""
    fig = sweep_figure(sweep, res)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def sweep_figure(sweep: list[dict], res: dict) -> Figure:
    """Train sentences/s against batch size: a line per framework over the sizes it ran."""
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.subplots()
    sizes = [r["batch_size"] for r in sweep]
    for name, label, style in (("jax", "JAX (this project)", "o-"),
                               ("torch_eager", "PyTorch eager", "s--"),
                               ("torch_compile", "PyTorch torch.compile", "^:")):
        ys = [r.get(f"train_seq_per_s_{name}") for r in sweep]
        pts = [(x, y) for x, y in zip(sizes, ys) if y]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size per task (a step holds 5 x batch sentences)")
    ax.set_ylabel("train step: sentences / s")
    lengths = f"seq len {res['seq_len']}" if res["seq_len"] else (
        f"real lengths; JAX {res.get('layout', 'packed')}, PyTorch "
        f"{'padding=True per call' if res.get('torch_padding') == 'per-call' else 'same tensors'}")
    ax.set_title(f"{res['model']} {res['dtype']}, {lengths}\n{res['device_kind']} "
                 f"({res['cpu_model']}, {res['cpu_count']} CPUs), {res['date'][:10]}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def json_ready(x):
    """`x` with numpy scalars as Python numbers and every dict key a string."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


def write_json(res: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(json_ready(res), indent=2) + "\n")
