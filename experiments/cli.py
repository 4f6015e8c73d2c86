"""The ``rl-maml`` command line.

    rl-maml train CONFIG --run-dir DIR [--resume] [key=value ...]
    rl-maml eval DIR [--checkpoint PATH] [eval.key=value ...]
    rl-maml presets
    rl-maml config CONFIG [key=value ...]
    rl-maml curves DIR --out OUT
    rl-maml overlay LABEL=DIR_OR_CSV ... --out OUT [--window N]
    rl-maml compare RESULTS_JSON --out OUT
    rl-maml export DIR --out OUT [--command TEXT]
    rl-maml download omniglot --root DIR

CONFIG is a YAML file or the name of a preset shipped in ``experiments/configs`` (``rl-maml
presets`` lists them). ``key=value`` overrides use dotted keys (``train.num_iterations=500``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rl_maml.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints
from rl_maml.config import ConfigError, apply_overrides, dump_yaml, from_dict, load_yaml, to_dict
from rl_maml.runlock import RunLockedError
from rl_maml.training import TrainingError, TrainingInterrupted
from rl_maml.tasks.fewshot import DatasetError

from .registry import benchmark_module

PRESETS = Path(__file__).resolve().parent / "configs"
# Keys that may change when a run is resumed: they do not change what the run computes (the
# thread count and the Fisher products' precision change floating-point rounding, not the method;
# a resume that changes them is no longer bit-identical to an uninterrupted run). The products'
# precision is here because bfloat16 is fast only where the hardware multiplies it: a run started
# on such a CPU (or a GPU) must continue in float32 on one without.
RESUMABLE_CHANGES = {"train.num_iterations", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
                     "train.num_threads", "train.meta_step_threads", "eval.keep_best", "trpo.fvp_dtype"}


def presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESETS.glob("*.yaml"))}


def resolve_config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    found = presets()
    if name in found:
        return found[name]
    raise ConfigError(f"config {name!r} is neither a file nor a preset; presets: {', '.join(found) or 'none'}")


def build_config(raw: dict):
    module = benchmark_module(raw.get("benchmark"))
    return module, from_dict(module.CONFIG, raw)


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_run_config(stored: Path):
    """A run folder's config.yaml as ``(module, config)``; errors name the file."""
    try:
        return build_config(load_yaml(stored))
    except ConfigError as e:
        raise ConfigError(f"{stored}: {e}" if str(stored) not in str(e) else str(e)) from None


def start_run(cfg, run_dir: Path, resume: bool):
    """Check ``run_dir`` against config ``cfg`` and write its config.yaml; returns the benchmark module.

    A new run needs a folder without a run; ``resume`` needs the folder's stored config to equal
    ``cfg`` except in :data:`RESUMABLE_CHANGES`, and ``train.num_iterations`` at or past the
    newest checkpoint's iteration."""
    module = benchmark_module(cfg.benchmark)
    stored = run_dir / "config.yaml"
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if resume:
        if not stored.is_file():
            raise ConfigError(f"--resume: {stored} does not exist; start the run without --resume")
        # The stored config is resolved too, so fields added to the code since the run started
        # take their defaults on both sides instead of counting as changes.
        new_flat, old_flat = _flatten(to_dict(cfg)), _flatten(to_dict(load_run_config(stored)[1]))
        changed = sorted(k for k in new_flat.keys() | old_flat.keys() if new_flat.get(k) != old_flat.get(k))
        bad = [k for k in changed if k not in RESUMABLE_CHANGES]
        if bad:
            raise ConfigError(
                f"--resume: the config differs from the run's stored {stored} in {bad}; only "
                f"{sorted(RESUMABLE_CHANGES)} may change when resuming. Start a new --run-dir instead."
            )
        if ckpts and cfg.train.num_iterations < ckpts[-1][0]:
            raise ConfigError(
                f"--resume: train.num_iterations={cfg.train.num_iterations} is below the newest checkpoint's "
                f"iteration {ckpts[-1][0]}; give train.num_iterations={ckpts[-1][0]} or more")
        if not ckpts:
            print(f"--resume: {run_dir / 'checkpoints'} holds no checkpoint yet; starting from iteration 0",
                  file=sys.stderr)
    elif ckpts or stored.is_file():
        raise ConfigError(
            f"{run_dir} already holds a run{f' (checkpoint at iteration {ckpts[-1][0]})' if ckpts else ''}; "
            "pass --resume to continue it, or choose another --run-dir"
        )
    from rl_maml.provenance import provenance_comment

    run_dir.mkdir(parents=True, exist_ok=True)
    device = getattr(getattr(cfg, "train", None), "device", None)
    dump_yaml(cfg, stored, header=provenance_comment(device))
    return module


def _check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file; name a folder (it is created if missing)")


def _clean_failed_start(run_dir: Path, before: set[Path], created: bool) -> None:
    """Remove what a new run that never reached a checkpoint wrote, so that the same command can
    be run again once the problem is fixed."""
    import shutil

    from rl_maml.runlock import LOCK_NAME

    for path in set(run_dir.iterdir()) - before:
        if path.name == LOCK_NAME:
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if created:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        try:
            run_dir.rmdir()
        except OSError:
            pass


def cmd_train(args: argparse.Namespace) -> int:
    from rl_maml.runlock import RunLock

    run_dir = Path(args.run_dir)
    _check_run_dir(run_dir)
    stored = run_dir / "config.yaml"
    if args.resume:
        if not stored.is_file():
            raise ConfigError(f"--resume: {stored} does not exist; start the run without --resume")
        if args.config:
            raw = apply_overrides(load_yaml(resolve_config_path(args.config)), args.overrides)
        else:
            load_run_config(stored)  # a damaged config.yaml is named as such
            raw = apply_overrides(load_yaml(stored), args.overrides)
    else:
        if args.config is None:
            raise ConfigError("train needs a CONFIG (a YAML file or a preset name) unless --resume is given")
        raw = apply_overrides(load_yaml(resolve_config_path(args.config)), args.overrides)
    module, cfg = build_config(raw)
    from rl_maml.distributed import finish, world

    rank, world_size = world()
    if rank != 0:  # under torchrun: rank 0 checks, locks and writes the run folder; the others only train
        module.train(cfg, run_dir, resume=args.resume, progress=False)
        finish()
        return 0
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, "train"):
        before = set(run_dir.iterdir())
        try:
            start_run(cfg, run_dir, args.resume)
            print(f"run folder: {run_dir} (config.yaml, checkpoints/, tb/)", file=sys.stderr)
            module.train(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
            finish()  # every rank finished training: end the process group together (no-op alone)
        except BaseException:
            if not args.resume and not list_checkpoints(run_dir / "checkpoints"):
                _clean_failed_start(run_dir, before, created)
            raise
    print(f"trained: newest checkpoint {latest_checkpoint(run_dir / 'checkpoints')}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {stored} does not exist (train it with 'rl-maml train')")
    bad = [o for o in args.overrides if not o.startswith("eval.")]
    if bad:
        raise ConfigError(f"eval accepts only eval.* overrides (the run's training config is fixed); got {bad}")
    load_run_config(stored)  # a damaged config.yaml is named as such
    module, cfg = build_config(apply_overrides(load_yaml(stored), args.overrides))
    checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'} holds no checkpoint: train the run first")
    out = run_dir / "eval" if args.out is None else Path(args.out)
    if (out / "results.json").is_file() and not args.overwrite:
        raise ConfigError(f"{out} already holds results; pass --overwrite to replace them "
                          "(or copy them away first, or write elsewhere with --out)")
    from rl_maml.runlock import RunLock

    # With --out the run folder is only read (it may be a committed checkpoint or read-only): the
    # output folder is locked instead.
    locked = run_dir if args.out is None else out
    locked.mkdir(parents=True, exist_ok=True)
    with RunLock(locked, "eval"):
        module.evaluate(cfg, run_dir, checkpoint, out=out, progress=not args.no_progress)
    print((out / "results.md").read_text())
    print(f"written: {out} (results.json, results.md, figures)", file=sys.stderr)
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from .curves import write_any_curves

    history = None if args.history is None else Path(args.history)
    for path in write_any_curves(Path(args.run_dir), Path(args.out), args.title, history, args.paper):
        print(f"written: {path}")
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    from .curves import write_overlay

    sources = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise CheckpointError(f"overlay: give each run as LABEL=PATH (a run folder or a curves.csv), got {item!r}")
        sources.append((label, Path(path)))
    paths = write_overlay(sources, Path(args.out), args.window, args.title)
    print(paths[0].read_text())
    for path in paths:
        print(f"written: {path}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .paper_compare import write_comparison

    for path in write_comparison(Path(args.results), Path(args.out)):
        print(f"written: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A run's config and newest checkpoint (or ``--checkpoint``) as a small folder to commit or
    share (a run folder that ``rl-maml eval`` and ``rl-maml train --resume`` accept once copied),
    with ``run.json``: the iteration, env steps and wall-clock time the checkpoint records, and the
    command."""
    import json
    import shutil

    from rl_maml.checkpoint import checkpoint_path
    from rl_maml.training import (BEST_CHECKPOINT, BEST_RECORD, RUN_RECORD, best_record, checkpoint_totals,
                                  write_run_record)

    run_dir, out = Path(args.run_dir), Path(args.out)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {run_dir / 'config.yaml'} does not exist")
    source = Path(args.checkpoint) if args.checkpoint is not None else latest_checkpoint(run_dir / "checkpoints")
    if source is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'} holds no checkpoint: train the run first")
    totals = checkpoint_totals(source)  # a missing or damaged file is named here, before anything is written
    name = checkpoint_path(Path("checkpoints"), totals["iteration"])
    # The run's best checkpoint by validation (eval.keep_best) travels with its newest, so that a
    # resumed copy goes on selecting; exporting the best itself (or a run without one) leaves none.
    ckpts = run_dir / "checkpoints"
    record = best_record(ckpts) if (ckpts / BEST_CHECKPOINT).is_file() else None
    keep_best = args.checkpoint is None and record is not None and record["iteration"] <= totals["iteration"]
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "config.yaml", out / "config.yaml")
    shutil.copyfile(source, out / name)
    for _, older in list_checkpoints(out / "checkpoints"):
        if older.name != name.name:
            older.unlink()  # the folder holds one checkpoint: the exported one
    for filename in (BEST_CHECKPOINT, BEST_RECORD):
        if keep_best:
            shutil.copyfile(ckpts / filename, out / "checkpoints" / filename)
        else:
            (out / "checkpoints" / filename).unlink(missing_ok=True)
    command = args.command
    if command is None and (run_dir / RUN_RECORD).is_file():  # a copied export trained on: keep its command
        try:
            command = json.loads((run_dir / RUN_RECORD).read_text()).get("command")
        except (ValueError, AttributeError):
            command = None
    info = write_run_record(out, name.as_posix(), totals, command, best=record if keep_best else None)
    extra = f" from {source.name}" if source.name != name.name else ""
    if keep_best:
        extra += f", {BEST_CHECKPOINT} (iteration {info['best']['iteration']})"
    print(f"written: {out} ({name.name}{extra}, config.yaml, run.json)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from rl_maml.tasks.omniglot import download_omniglot

    for path in download_omniglot(args.root, **({"url_prefix": args.url_prefix} if args.url_prefix else {})):
        print(f"ok (MD5 checked): {path}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config of a preset or YAML file (with overrides), each key with its
    docstring as a comment; the output is a YAML file ``rl-maml train`` accepts."""
    from rl_maml.config import describe_config

    _, cfg = build_config(apply_overrides(load_yaml(resolve_config_path(args.config)), args.overrides))
    print(f"# {args.config}{' ' + ' '.join(args.overrides) if args.overrides else ''}, resolved")
    print("\n".join(describe_config(cfg)))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, path in presets().items():
        print(f"{name:24s} {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rl-maml", description="Model-Agnostic Meta-Learning, batched over tasks.")
    sub = p.add_subparsers(dest="command", required=True)
    preset_list = ", ".join(presets())
    t = sub.add_parser("train", help="meta-train from a config",
                       epilog=f"presets: {preset_list}. 'rl-maml config PRESET' prints one with every key explained.")
    t.add_argument("config", nargs="?", help="YAML file or preset name (optional with --resume)")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.num_iterations=500")
    t.add_argument("--run-dir", required=True, help="folder for config, checkpoints and logs")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its newest checkpoint")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a trained run; writes RUN_DIR/eval/ (or --out)")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.num_tasks=100")
    e.add_argument("--checkpoint", help="checkpoint file (default: the newest in RUN_DIR/checkpoints)")
    e.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation")
    e.add_argument("--out", help="folder for the results (default: RUN_DIR/eval); with it the run folder is only "
                   "read, so a committed checkpoint folder can be evaluated in place")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    e.set_defaults(func=cmd_eval)
    g = sub.add_parser("config", help="print a preset's resolved config, every key with its docstring")
    g.add_argument("config", help="YAML file or preset name")
    g.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.num_iterations=500")
    g.set_defaults(func=cmd_config)
    s = sub.add_parser("presets", help="list the shipped config presets")
    s.set_defaults(func=cmd_presets)
    c = sub.add_parser("curves", help="a run's learning curves (CSV and plot): a meta-RL run's returns from its "
                                      "TensorBoard events, a few-shot run's validation curve")
    c.add_argument("run_dir")
    c.add_argument("--out", required=True,
                   help="folder for curves.csv and curves.png (meta-RL) or validation.csv and validation.png")
    c.add_argument("--title", default=None, help="the plot's title (default: the run folder's name)")
    c.add_argument("--history", default=None,
                   help="an earlier curves.csv of the same run: its rows before the run's first logged iteration "
                        "come first (a run resumed from an exported checkpoint has only its own events); "
                        "for a few-shot run, an earlier validation.csv")
    c.add_argument("--paper", type=float, default=None,
                   help="a few-shot run: the paper's test accuracy (%%), drawn as a dashed line for reference")
    c.set_defaults(func=cmd_curves)
    o = sub.add_parser("overlay", help="several meta-RL runs' training returns side by side: window means "
                                       "(overlay.md, overlay.csv) and one plot (overlay.png)")
    o.add_argument("runs", nargs="+", metavar="LABEL=PATH",
                   help="a label and a run folder or a curves.csv (from rl-maml curves), e.g. faithful=runs/ant_dir_maml")
    o.add_argument("--out", required=True, help="folder for overlay.md, overlay.csv and overlay.png")
    o.add_argument("--window", type=int, default=20, help="iterations per window mean (default 20)")
    o.add_argument("--title", default=None, help="the table's and plot's title")
    o.set_defaults(func=cmd_overlay)
    m = sub.add_parser("compare", help="a locomotion evaluation beside the MAML paper's own returns, task by task")
    m.add_argument("results",
                   help="an evaluation's results.json (eval.test_tasks=reference), e.g. RUN_DIR/eval/results.json")
    m.add_argument("--out", required=True, help="folder for paper_per_task.md and paper_per_task.png")
    m.set_defaults(func=cmd_compare)
    x = sub.add_parser("export", help="a run's config and newest checkpoint as a folder to commit (with run.json)")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True, help="the folder to write")
    x.add_argument("--command", default=None, help="the command(s) that produced the run, recorded in run.json")
    x.add_argument("--checkpoint", default=None,
                   help="export this checkpoint file instead of the newest, e.g. RUN_DIR/checkpoints/best.pt "
                        "(it is written as iter_<its iteration>.pt, so the folder resumes from it)")
    x.set_defaults(func=cmd_export)
    d = sub.add_parser("download", help="download a data set's official files (checksums verified)")
    d.add_argument("dataset", choices=["omniglot"], help="MiniImageNet has no official download (see the README)")
    d.add_argument("--root", required=True, help="folder to put the files in (then data.root=DIR)")
    d.add_argument("--url-prefix", default=None, help="a mirror of the official files (default: the official site)")
    d.set_defaults(func=cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``rl-maml`` command and return its exit status. Under torchrun (``WORLD_SIZE`` > 1)
    the process ends here instead, through :func:`_end_rank`."""
    from rl_maml.distributed import world

    code = _main(argv)
    if world()[1] > 1:
        _end_rank(code)
    return code


def _end_rank(code: int) -> None:
    """End a torchrun rank without the interpreter's teardown: flush the standard streams, then
    ``os._exit``. Everything a run writes is closed by then (checkpoints, TensorBoard, the run
    lock) and :func:`rl_maml.distributed.finish` has ended the process group on every rank. What
    is skipped is the exit-time destruction of C++ statics and of gloo's worker threads, where a
    rank could still abort ("terminate called without an active exception", SIGABRT) after the
    run had succeeded (in a few percent of two-process test runs), and torchrun then reported the
    whole run as failed."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    from rl_maml import runtime

    runtime.apply(tune_malloc=True)  # runs are long and own the machine: reuse freed memory (rl_maml.runtime)
    p = parser()
    args, extra = p.parse_known_args(argv)
    # key=value overrides may come after options (argparse stops collecting positionals there).
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    # `train CONFIG k=v`: argparse puts a lone override into `config` when CONFIG is omitted.
    if getattr(args, "config", None) and "=" in args.config and not Path(args.config).is_file():
        args.overrides = [args.config, *args.overrides]
        args.config = None
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, FloatingPointError, DatasetError, RunLockedError, TrainingError) as e:
        print(f"rl-maml: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"rl-maml: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("rl-maml: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rl-maml presets | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:  # read-only folder, full disk, a file where a folder should be, ...
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"rl-maml: error: {e.strerror or e}{where}. Completed checkpoints are intact; fix this and run "
              "the command again (with --resume if a checkpoint was written)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
