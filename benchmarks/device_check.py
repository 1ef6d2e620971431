"""`make device-check`: correctness, speed against PyTorch and a 10-epoch run on one GPU, within
one time budget, into one JSON file and one log (`python -m benchmarks.device_check`).

Stages, in order, each a process with its own time limit (`STAGES`), the JSON written after each:
correctness (`device_stages.correctness`), the end-to-end run (`train.multitask --preset concat`
for 10 epochs in bfloat16 with dev evaluation each epoch; its first steps give the losses-fall
check and its summary the compiled step shapes), model FLOP utilisation (`device_stages.mfu`),
then the comparisons with PyTorch (`device_speed`). A stage that fails or runs past its limit is
recorded with its error and the others go on; a stage that does not fit in what is left of the
budget is recorded as skipped. `--smoke` runs the same stages on the CPU at a tiny size (CI).

The carried pack (`make device-pack`, `device_pack`): where `datasets` is missing its wheels are
installed first; its data.tar.xz is decompressed into a temporary folder; its float16 copy of
the embedded weights is used ("weights": "float16 copy"; "exact" without a pack). Keys:
BENCHMARKS.md, section "GPU (device check)" (a test keeps the two equal).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.device_setup import (Log, child_env, choose_weights, find_pack, gpu_line,
                                         install_wheels, read_json, read_jsonl, run_process,
                                         unpack_data, versions)
from benchmarks.device_targets import KEYS, judge, print_summary
from bert_jax.cli import prog

# (stage, module or "train", limit in seconds on the device, limit with --smoke)
STAGES = [
    ("correctness", "benchmarks.device_stages", 75, 120),
    ("e2e", "train", 240, 180),
    ("mfu", "benchmarks.device_stages", 60, 120),
    ("multitask_b8", "benchmarks.device_speed", 150, 180),
    ("bert_base_32x128", "benchmarks.device_speed", 120, 120),
    ("encode", "benchmarks.device_speed", 60, 120),
]
E2E_EPOCHS = 10
LOSS_STEPS = 300  # the losses-fall check reads the run's first steps
MIN_STAGE_SECONDS = 15


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("benchmarks.device_check"),
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="the same stages on the CPU at a tiny size (what CI runs)")
    p.add_argument("--out", default="device-check",
                   help="folder for device_check.json and device_check.log")
    p.add_argument("--pack", default=None,
                   help="the carried pack (make device-pack); default ./device-pack where it "
                        "exists; 'none': no pack (the embedded weights, the project's data)")
    p.add_argument("--data-dir", default=None, help="data folder instead of the pack's")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole check (default 470 on a device, 600 with "
                        "--smoke: its limits only catch a hang, on a loaded CPU)")
    p.add_argument("--only", default="",
                   help="comma-separated stages to run (default all: "
                        + ",".join(s[0] for s in STAGES) + ")")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder")
    return p


def e2e_command(ctx: dict, out_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "train.multitask", "--preset", "concat", "--dtype", "bfloat16",
           "--init", ctx["weights"], "--out", str(out_dir), "--no-progress"]
    if ctx.get("data_dir"):
        cmd += ["--data-dir", ctx["data_dir"]]
    if ctx["smoke"]:  # the tiny model: 2 epochs of 2 steps, at a learning rate it learns at
        return cmd + ["--epochs", "2", "--limit-train", "16", "--limit-eval", "16",
                      "--max-length", "32", "--num-buckets", "1", "--eval-batch-size", "16",
                      "--log-every", "1", "--lr", "1e-3"]
    return cmd + ["--epochs", str(E2E_EPOCHS)]


def e2e_figures(run: Path, started: float, status: str, seconds: float) -> dict:
    """The end-to-end run's figures from its folder (also after a stop: what it had written)."""
    summary = read_json(run / "summary.json")
    metrics = read_jsonl(run / "metrics.jsonl")
    losses = [r for r in read_jsonl(run / "train_log.jsonl") if r.get("step", 0) <= LOSS_STEPS]
    dev = [{"epoch": m.get("epoch"), "step": m.get("step"),
            **{k: m.get(k) for k in ("sst_acc", "para_acc", "sts_r", "overall")},
            "seconds_since_start": round(m["time"] - started, 1) if "time" in m else None}
           for m in metrics]
    window = [r["loss"] for r in losses]
    fall = None
    if len(window) >= 3:
        fall = sum(window[-2:]) / 2 < window[0]
    final = {k: summary.get(k) for k in ("sst_acc", "para_acc", "sts_r", "overall")} \
        if summary else (dev[-1] if dev else None)
    return {"concat_10ep_wall_seconds": round(seconds, 1) if status == "ok" else None,
            "concat_10ep_train_seconds": summary.get("seconds"),
            "concat_10ep_epochs": len(metrics), "concat_10ep_dev": dev,
            "concat_10ep_final_dev": final,
            "concat_10ep_step_compiles": summary.get("train_step_compiles"),
            "concat_10ep_input_wait_fraction": summary.get("input_wait_fraction"),
            "bf16_concat_steps": losses[-1]["step"] if losses else 0,
            "bf16_concat_losses": [round(x, 4) for x in window],
            "bf16_concat_losses_fall": fall,
            "step_shapes_compiled": summary.get("train_step_compiles"),
            "step_shapes_planned": summary.get("train_shapes_planned")}


class Check:
    """The check's state: the JSON figures, the log, the temporary folder, the budget."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.json_path = self.out / "device_check.json"
        self.log = Log(self.out / "device_check.log")
        self.budget = args.budget or (600.0 if args.smoke else 470.0)
        self.tmp = Path(tempfile.mkdtemp(prefix="device-check-"))
        self.res: dict = {key: None for key in KEYS}
        self.res.update(date=datetime.datetime.now(datetime.timezone.utc)
                        .isoformat(timespec="seconds"), smoke=args.smoke,
                        budget_seconds=self.budget, stages={}, sizes={})
        self.site: str | None = None
        self.ctx: dict = {}

    def write(self) -> None:
        self.res["wall_seconds"] = round(self.log.elapsed(), 1)
        self.res["targets"] = judge(self.res)
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.res, indent=2, default=float) + "\n")
        tmp.replace(self.json_path)

    def set_up(self) -> None:
        pack = find_pack(self.args.pack)
        self.log.say(f"device check ({'smoke, CPU' if self.args.smoke else 'device'}), budget "
                     f"{self.budget:.0f} s, pack {pack or 'none'}, tmp {self.tmp}")
        self.site = install_wheels(pack, self.tmp, self.log)
        data_dir, data_from = unpack_data(pack, self.args.data_dir, self.tmp)
        weights, kind = choose_weights(pack)
        self.ctx = {"smoke": self.args.smoke, "weights": weights, "data_dir": data_dir,
                    "tmp": str(self.tmp)}
        (self.tmp / "ctx.json").write_text(json.dumps(self.ctx))
        if self.args.smoke:
            self.run_stage("tiny_model", "benchmarks.device_stages", 60)
            weights = self.res.pop("weights", None) or weights
            kind = "tiny random (smoke)" if weights != self.ctx["weights"] else kind
            self.ctx["weights"] = weights
            (self.tmp / "ctx.json").write_text(json.dumps(self.ctx))
        self.res.update(weights=kind, weights_from=weights, data=data_from, gpu=gpu_line(),
                        versions=versions(), pack=str(pack) if pack else None)
        self.log.say(f"weights: {kind} ({weights}); data: {data_from}")
        self.write()

    def limit(self, own: float) -> float:
        return min(own, self.budget - self.log.elapsed() - 5)

    def run_stage(self, name: str, module: str, own: float) -> None:
        limit = self.limit(own)
        entry = {"limit_seconds": round(max(limit, 0), 1)}
        if limit < MIN_STAGE_SECONDS:
            entry.update(status="skipped", error=f"out of time: {max(limit, 0):.0f} s left of "
                                                 f"the {self.budget:.0f} s budget")
        elif module == "train":
            entry.update(self.run_e2e(limit))
        else:
            entry.update(self.run_module(name, module, limit))
        self.res["stages"][name] = entry
        self.log.say(f"stage {name}: {entry['status']}"
                     + (f" in {entry['seconds']:.1f} s" if "seconds" in entry else "")
                     + (f" ({entry['error']})" if entry.get("error") else ""))
        self.write()

    def env(self, cache: str, **extra: str) -> dict:
        """A stage's environment; --smoke: a JAX compilation cache shared by the stages (the
        tiny shapes repeat; on a device each stage compiles its own, as a user's run would)."""
        if self.args.smoke:
            extra.update(JAX_COMPILATION_CACHE_DIR=str(self.tmp / "jax-cache"),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
        return child_env(self.site, self.tmp / cache, **extra)

    def run_module(self, name: str, module: str, limit: float) -> dict:
        result = self.tmp / f"{name}.json"
        extra = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if module.endswith("speed") else {}
        env = self.env("cache", **extra)
        cmd = [sys.executable, "-m", module, name, "--ctx", str(self.tmp / "ctx.json"),
               "--result", str(result)]
        status, seconds, cpu = run_process(cmd, env, limit, self.log)
        values = read_json(result)
        errors = values.pop("_errors", [])
        for key in ("device", "platform", "device_count"):
            if key in values and self.res.get(key) is None:
                self.res[key] = values[key]
            values.pop(key, None)
        for key in [k for k in values if k.endswith("_shape")]:
            self.res["sizes"][key[:-len("_shape")]] = values.pop(key)
        self.res.update({k: v for k, v in values.items() if k in KEYS or k.endswith("_status")})
        entry = {"status": status, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1)}
        if status == "ok" and errors:
            entry["status"] = "error"
        if errors or status != "ok":
            entry["error"] = "; ".join(errors) or (
                f"ran past its {limit:.0f} s limit" if status == "timeout"
                else "exited with an error: see the log")
        return entry

    def run_e2e(self, limit: float) -> dict:
        run = self.tmp / "e2e"
        cmd = e2e_command(self.ctx, run)
        self.res["sizes"]["concat_10ep"] = " ".join(cmd[3:])
        # A cache of its own: the run tokenizes the data itself, as on a fresh machine.
        env = self.env("cache-e2e")
        started = time.time()
        status, seconds, cpu = run_process(cmd, env, limit, self.log)
        self.res.update(e2e_figures(run, started, status, seconds))
        entry = {"status": status, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1)}
        if status != "ok":
            entry["error"] = (f"ran past its {limit:.0f} s limit after "
                              f"{self.res['concat_10ep_epochs']} epochs" if status == "timeout"
                              else "train.multitask exited with an error: see the log")
        return entry


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {s[0] for s in STAGES}
    if unknown:
        raise SystemExit(f"--only: unknown stage(s) {', '.join(sorted(unknown))}")
    check = Check(args)
    try:
        check.set_up()
        for name, module, device_limit, smoke_limit in STAGES:
            platform = check.res.get("platform")
            if only and name not in only:
                check.res["stages"][name] = {"status": "skipped", "error": "not in --only"}
            elif not args.smoke and platform not in (None, "gpu"):
                # JAX fell back to the CPU (no GPU plugin or driver): no figure would be a GPU's.
                check.res["stages"][name] = {"status": "error",
                                             "error": f"not run: JAX runs on {platform}, not a GPU"}
                check.log.say(f"stage {name}: not run (JAX runs on {platform}, not a GPU)")
            else:
                check.run_stage(name, module, smoke_limit if args.smoke else device_limit)
    finally:
        check.write()
        if not args.keep_tmp:
            shutil.rmtree(check.tmp, ignore_errors=True)
    print_summary(check.res, check.log)
    check.log.say(f"wrote {check.json_path} and {check.log.path}")
    bad = [n for n, s in check.res["stages"].items() if s["status"] in ("error", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
