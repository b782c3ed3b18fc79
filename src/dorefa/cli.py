"""Command line: ``dorefa train | eval | export | run | sweep | report``.

Each subcommand's work lives in its own module; this file only parses arguments and turns
expected failures (bad arguments, missing data, corrupt files) into one-line errors.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import stat
import sys

from .train_flags import POSITIVE_INT, add_train_args, config_from_args
from .train_flags import explicit_fields as explicit_train_options

__all__ = ["main", "build_parser", "add_train_args", "config_from_args", "explicit_train_options"]


def _is_nproc(name: str) -> bool:
    """``--nproc`` or an abbreviation argparse takes for it (``--np``, ``--npro``...)."""
    return name.startswith("--np") and "--nproc".startswith(name)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif _is_nproc(a):
            skip = True
        elif not _is_nproc(a.split("=", 1)[0]):
            out.append(a)
    return out


def _check_nproc(nproc: int, batch_size: int, subset: int | None) -> None:
    """Before any worker starts: a share of the global batch and of a --subset each, and not
    many more workers than CPUs (a few more only share them; hundreds would look like a hang).
    """
    from .cpuinfo import usable_cpus
    from .run import check_images, local_batch

    cpus = len(usable_cpus())
    if nproc > 4 * cpus:
        raise ValueError(
            f"--nproc {nproc} is more than 4 workers a CPU ({cpus} CPUs here); use --nproc "
            f"{cpus} (torchrun spreads a run over machines)"
        )
    if nproc > cpus:
        print(
            f"warning: --nproc {nproc} is more than the {cpus} CPUs this process may use; the "
            f"workers will share them (slower than --nproc {cpus})",
            file=sys.stderr,
        )
    local_batch(batch_size, nproc, "--nproc")  # the workers' own checks, before they start
    if subset is not None:
        check_images(subset, nproc)


def cmd_train(args: argparse.Namespace) -> int:
    from .say import launched
    from .train import train

    cfg = config_from_args(args)
    nproc = getattr(args, "nproc", None)
    if nproc is not None and launched():  # the launcher's workers never see --nproc
        raise ValueError(
            f"--nproc {nproc} starts its own workers, but this process is already one of a "
            f"group (WORLD_SIZE={os.environ['WORLD_SIZE']}, RANK={os.environ['RANK']}: torchrun, "
            "or variables left in the shell); drop --nproc under torchrun, or unset WORLD_SIZE, "
            "RANK, MASTER_ADDR and MASTER_PORT"
        )
    if nproc is not None:
        if nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {nproc}")
        _check_nproc(nproc, cfg.batch_size, cfg.subset)
        if nproc > 1:
            from .distributed import launch

            _check_before_launch(cfg, nproc)
            return launch(nproc, _without_nproc(getattr(args, "argv", None) or sys.argv[1:]))
    result = train(cfg)
    if not launched() or int(os.environ["RANK"]) == 0:
        final = f"{result['test_acc']:.4f}" if "test_acc" in result else "not recorded"
        print(f"final test accuracy {final}  (best {result['best_test_acc']:.4f})  -> {cfg.out}")
    return 0


def _check_before_launch(cfg, nproc: int) -> None:
    """What every worker would refuse alike, said once before they start (each had printed
    it), and a warning when the workers' threads outnumber the CPUs."""
    from .cpuinfo import usable_cpus
    from .optim import amp_dtype
    from .train import resolve_device

    amp_dtype(cfg.amp, resolve_device(cfg.device))
    cpus = len(usable_cpus())
    if cfg.threads and cfg.threads * nproc > cpus:
        print(
            f"warning: --threads {cfg.threads} in each of --nproc {nproc} processes is "
            f"{cfg.threads * nproc} threads on {cpus} CPUs (more threads than CPUs only adds "
            "contention; drop --threads to get one per process)",
            file=sys.stderr,
        )


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .cpuinfo import pick_threads
    from .train import evaluate, resolve_device

    if args.threads:
        threads, why = pick_threads(args.threads)  # capped at the CPUs, as `dorefa run` does
        if threads != args.threads:
            print(why, file=sys.stderr)
        torch.set_num_threads(threads)
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, map_location=device)
    model = model_from_checkpoint(ckpt, args.checkpoint).to(device)
    from .data import first_images, get_dataset, learnt_data, require_model_shape
    from .runtime.compare import DEFAULT_DATA

    meta = ckpt["meta"]
    data, data_dir = learnt_data(meta, args.data, args.data_dir, DEFAULT_DATA)  # as trained
    try:
        test_set = get_dataset(data, "test", data_dir=data_dir, image_size=meta["image_size"])
    except ValueError as exc:
        if data_dir is None or args.data_dir or args.data:
            raise
        raise ValueError(  # a checkpoint moved to another machine: its folder is not here
            f"{exc} (the folder the checkpoint was trained on; give --data-dir where the data "
            "is on this machine)"
        ) from None
    test_set = first_images(test_set, args.test_subset, "--test-subset")
    require_model_shape(
        test_set,
        data,
        meta["in_channels"],
        meta["num_classes"],
        "the checkpoint's model",
        meta.get("classes"),
    )
    ev = evaluate(model, test_set, meta["image_size"], args.batch_size, device)
    print(
        f"{meta['model']} bits {meta['bits']} width {meta['width']} on {data}"
        f"{f' in {data_dir}' if data_dir else ''} (test, {ev['n']} images): "
        f"accuracy {ev['acc']:.4f}  loss {ev['loss']:.4f}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dorefa", description="DoReFa-Net: train low-bitwidth CNNs and run them on bit kernels"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a DoReFa model")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a checkpoint (writes nothing)")
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None, help="dataset spec (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=500)
    p.add_argument("--test-subset", type=POSITIVE_INT, default=None)
    p.add_argument("--threads", type=POSITIVE_INT, default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    for register in _optional_commands():
        register(sub)
    return parser


def _optional_commands():
    """Subcommands defined beside their implementation (export/run, sweep/report, ...)."""
    import importlib

    for module in ("dorefa.exporter", "dorefa.runtime.cli", "dorefa.sweep", "dorefa.summary_cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("dorefa"):
                continue
            raise
        if hasattr(mod, "register_cli"):
            yield mod.register_cli


def _int_engine_training(argv: list[str]) -> bool:
    """``dorefa train ... --engine int``, read from the raw arguments: the parser's subcommands
    import torch, which reads the OpenMP wait policy as it loads (dorefa/process.py)."""
    pairs = zip(argv, argv[1:] + [""], strict=True)
    return argv[:1] == ["train"] and any(
        a == "--engine=int" or (a, b) == ("--engine", "int") for a, b in pairs
    )


def _joined_negative_lists(argv: list[str]) -> list[str]:
    """``--bits -1,2,6`` as ``--bits=-1,2,6``: argparse reads a value that starts with "-" and is
    not one number as an option, and would say only "expected one argument"; joined, the
    option's own check names what is wrong with the value."""
    out: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":  # what follows is positional, as argparse reads it
            return out + argv[i:]
        last = out[-1] if out else ""
        if last.startswith("--") and last != "--" and "=" not in last and _NEG_LIST.match(a):
            out[-1] = f"{last}={a}"
        else:
            out.append(a)
    return out


_NEG_LIST = re.compile(r"^-\d[\d.]*(,[-\d.]*)+$")


def main(argv: list[str] | None = None) -> int:
    argv = _joined_negative_lists(list(sys.argv[1:] if argv is None else argv))
    if _int_engine_training(argv):  # its kernels' threads need the cores torch's OpenMP spins on
        from .process import passive_openmp

        passive_openmp()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        args.argv = argv
        args.explicit = explicit_train_options(argv[1:])
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():
            print(f"dorefa {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        # the reader of our output stopped early (`| head`): quiet, as a SIGPIPE would be
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (ValueError, FileNotFoundError, FloatingPointError, OSError) as exc:
        # CheckpointError and DataError are ValueErrors; every message becomes one line
        print(f"dorefa {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        group = sys.modules.get("dorefa.distributed")  # not imported: no group to lose
        if group is None or not group.launched():
            raise
        if isinstance(exc, group.PeerFailed):
            return group.LOST_GROUP  # the rank that failed says why
        if not any(s in str(exc) for s in ("Connection reset", "Connection closed", "Broken pipe")):
            raise
        print(
            f"dorefa {args.command}: error: rank {os.environ['RANK']} lost its process group "
            f"(another worker stopped first: {_one_line(exc)[:160]})",
            file=sys.stderr,
        )
        return group.LOST_GROUP
    except KeyboardInterrupt:
        print(
            f"dorefa {args.command}: interrupted (a run's finished epochs are in its "
            "checkpoint.pt, if it got that far: --resume continues)",
            file=sys.stderr,
        )
        return 130


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on it)."""
    import select

    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no stdout, no descriptor, no poll
        return False


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if any(ln.startswith("Original Traceback") for ln in lines):
        # a DataLoader worker's error re-raised with the worker's traceback in the message:
        # its last line is "module.ErrorType: message"
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines) or type(exc).__name__


def exit_process(status: int) -> None:
    """Exit with ``status``. A data-parallel worker (``distributed.launched()``: its process
    group is already torn down) leaves by ``os._exit`` after flushing its output: gloo's
    threads can abort the interpreter's own shutdown ("terminate called without an active
    exception", seen once in `make test` after a run had finished and saved everything)."""
    from . import distributed

    if distributed.launched():  # `python -m dorefa` only: the console script exits normally
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status & 0xFF)
    sys.exit(status)


if __name__ == "__main__":
    exit_process(main())
