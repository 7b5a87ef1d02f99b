"""The ``fxprune`` command: ``compress`` a model to a budget and write a deployable artifact,
or ``inspect`` its coupled channel groups. Exit codes: 0 done, 1 fxprune could not do it
(the message says why), 2 bad command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from .api import analyze
from .errors import FxPruneError, first_line
from .importance.base import Calibration
from .options import Budget, CompensationOptions, CompressOptions, SelectOptions, TraceOptions
from .pipeline import run
from .report import result_of

log = logging.getLogger("fxprune.cli")

EPILOG = """\
SPEC is torchvision:NAME (e.g. torchvision:resnet18, options as
torchvision:resnet18?num_classes=10), timm:NAME (needs timm), ultralytics:NAME.yaml
(needs ultralytics, e.g. ultralytics:yolov8n.yaml), or path/to/file.py:factory, where
factory() returns a model or (model, example_inputs). Models are built untrained; nothing
is downloaded.

examples:
  fxprune inspect torchvision:mobilenet_v2 --input-shape 1,3,64,64
  fxprune compress torchvision:resnet18 --target-flops 0.5 --out pruned/ --onnx
  fxprune compress ultralytics:yolov8n.yaml --input-shape 1,3,320,320 --out yolo/
  fxprune compress my_model.py:build --ratio 0.3 --ignore 'head.*' --ignore stem \\
      --out pruned/
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fxprune", description="Exact structured pruning of PyTorch models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="log every stage")
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("spec", metavar="SPEC", help="the model (see below)")
        p.add_argument("--input-shape", metavar="N,C,H,W",
                       help="example input shape (default: the factory's inputs, else "
                            "1,3,224,224)")
        p.add_argument("--frontend", choices=["auto", "fx", "export"], default="auto",
                       help="capture: symbolic trace (fx), torch.export, or fx falling back "
                            "to export (default)")

    c = sub.add_parser("compress", help="prune a model and write the artifact",
                       description="Prune SPEC and write to --out: model/ (fxprune.save "
                       "artifact: plan JSON + tensors, no pickled code), plan.json, "
                       "report.md, report.json, kept_channels.png; model.onnx with --onnx, "
                       "model.pt2 with --pt2.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(c)
    budget = c.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=float, help="fraction of each group's channels "
                        "removed (default 0.5 when no target is given)")
    budget.add_argument("--target-flops", type=float, metavar="F",
                        help="FLOPs to keep: a fraction (<= 1) or an absolute count")
    budget.add_argument("--target-params", type=float, metavar="P",
                        help="parameters to keep: a fraction (<= 1) or an absolute count")
    c.add_argument("--importance", default="l2",
                   help="importance plugin (l1, l2, bn_scale, random, cfdp, qsfm, hrank, "
                        "...; data-driven ones need --calib); default l2")
    c.add_argument("--calib", metavar="DIR_OR_NPY",
                   help="calibration samples: a .npy array (N, C, H, W) or a directory of "
                        ".npy files / images")
    c.add_argument("--calib-batch", type=_positive, default=16,
                   help="calibration batch size")
    c.add_argument("--max-batches", type=_positive,
                   help="use at most this many calib batches")
    c.add_argument("--compensate", choices=["lstsq", "merge", "none"],
                   help="refit the consumers of removed channels on the calibration data")
    c.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="module name pattern (fnmatch) whose output channels are kept; "
                        "repeat for several")
    c.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="keep channel counts multiples of N (hardware-friendly)")
    c.add_argument("--steps", type=_positive, default=1, help="prune in this many steps")
    c.add_argument("--onnx", action="store_true",
                   help="also write model.onnx, checked with onnxruntime (<= 1e-4)")
    c.add_argument("--pt2", action="store_true", help="also write a torch.export model.pt2")
    c.add_argument("--dynamic-batch", action="store_true",
                   help="export with a dynamic batch dim (dim 0 of the input)")
    c.add_argument("--fold-bn", action="store_true",
                   help="fold BatchNorm into the preceding convs in the exports (checked)")
    c.add_argument("--no-verify", action="store_true", help="skip the exactness proof")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory")

    i = sub.add_parser("inspect", help="print the coupled channel groups of a model",
                       description="Print every prunable group (members, size, exact or "
                       "approximate) and every frozen op with the reason.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common(i)
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--all-members", action="store_true", help="do not shorten member lists")
    return ap


def _model(args) -> tuple[torch.nn.Module, tuple]:
    from .deploy.spec import model_from_spec, parse_shape

    model, inputs = model_from_spec(args.spec)
    if args.input_shape or inputs is None:
        shape = parse_shape(args.input_shape or "1,3,224,224")
        inputs = (torch.randn(shape, generator=torch.Generator().manual_seed(0)),)
    return model, inputs


def _recorded(spec: str) -> str:
    """File specs are stored with an absolute path (informational: load() needs a factory
    for them and never imports what an artifact names)."""
    if spec.startswith(("torchvision:", "timm:", "ultralytics:")):
        return spec
    path, sep, rest = spec.rpartition(":")
    return f"{Path(path).resolve()}{sep}{rest}" if sep else spec


def _inspect(args) -> int:
    model, inputs = _model(args)
    graph = analyze(model, inputs, frontend=args.frontend)
    groups = [{"id": g.gid, "name": g.name, "units": g.size,
               "kind": "approximate" if g.approximate else "exact",
               "constraints": len(g.constraints), "members": list(g.members)}
              for g in graph.groups]
    frozen = [{"node": f.node, "reason": f.message, "units": f.units, "category": f.category}
              for f in graph.frozen_reasons]
    if args.json:
        print(json.dumps({"groups": groups, "frozen": frozen}, indent=1))
        return 0
    print(f"{args.spec}: {len(groups)} prunable groups, {sum(g['units'] for g in groups)} "
          f"units, {len(frozen)} frozen")
    for g in groups:
        members = g["members"] if args.all_members or len(g["members"]) <= 6 \
            else g["members"][:6] + [f"... {len(g['members']) - 6} more"]
        print(f"[{g['id']}] {g['name']}: {g['units']} units, {g['kind']}"
              + (f", {g['constraints']} equal-count constraint(s)" if g["constraints"] else "")
              + "\n      " + ", ".join(members))
    for f in frozen:
        print(f"frozen {f['node'] or '-'}: {f['reason']} ({f['units']} units)")
    return 0


def _options(args, calib) -> CompressOptions:
    """The command line as the same option groups ``compress`` builds."""
    return CompressOptions(
        trace=TraceOptions(args.frontend),
        select=SelectOptions(ratio=0.5 if args.ratio is None else args.ratio,
                             ignore=tuple(args.ignore), round_to=args.round_to),
        budget=Budget.from_targets(args.target_flops, args.target_params),
        calibration=Calibration(calib, args.max_batches),
        compensation=CompensationOptions(args.compensate),
        importance=args.importance, verify=not args.no_verify, steps=args.steps)


def _compress(args) -> int:
    from tqdm.auto import tqdm

    from .deploy import export_onnx, export_pt2, fold_batchnorm, save
    from .deploy.spec import SpecError, load_calibration

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FxPruneError(f"--out {out} exists and is not a directory")
    stages = ["load model", "compress", "save", "report"] + ["onnx"] * args.onnx \
        + ["pt2"] * args.pt2
    bar = tqdm(total=len(stages), desc="fxprune", disable=None, file=sys.stderr)

    def stage(name: str) -> None:
        bar.set_postfix_str(name)
        log.info("%s ...", name)

    stage("load model")
    model, inputs = _model(args)
    bar.update()
    calib = None
    if args.calib:
        if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
            raise SpecError(f"--calib feeds models with one tensor input; {args.spec} takes "
                            f"{len(inputs)}: call fxprune.compress(calibration=...) from Python")
        calib = load_calibration(args.calib, tuple(inputs[0].shape), args.calib_batch)
    stage("compress")
    gm = run(model, inputs, _options(args, calib))
    bar.update()
    stage("save")
    meta = result_of(gm)
    save(gm, out / "model", example_inputs=inputs, spec=_recorded(args.spec))
    (out / "plan.json").write_text(json.dumps(
        [json.loads(p.to_json()) for p in meta.history], indent=1))
    bar.update()
    stage("report")
    report = meta.report
    (out / "report.md").write_text(report.to_markdown())
    doc = report.to_dict()
    try:
        report.plot(out / "kept_channels.png")
    except ImportError as exc:
        log.warning("%s; kept_channels.png not written", exc)
    bar.update()
    pruned_inputs = report.models.pruned_inputs
    exported = gm
    if args.fold_bn and (args.onnx or args.pt2):  # on the pruned graph (module output too)
        exported, doc["fold_bn_max_abs_diff"] = fold_batchnorm(report.models.pruned,
                                                               pruned_inputs)
    if args.onnx:
        stage("onnx")
        doc["onnx_max_abs_diff"] = export_onnx(exported, out / "model.onnx", pruned_inputs,
                                               dynamic_batch=args.dynamic_batch)
        bar.update()
    if args.pt2:
        stage("pt2")
        doc["pt2_max_abs_diff"] = export_pt2(exported, out / "model.pt2", pruned_inputs,
                                             dynamic_batch=args.dynamic_batch)
        bar.update()
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    bar.close()
    print(report.summary())
    print(f"wrote {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return _compress(args) if args.command == "compress" else _inspect(args)
    except KeyboardInterrupt:
        print("fxprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback; --debug shows it
        if args.debug:
            raise
        ours = isinstance(exc, (FxPruneError, ValueError))
        print(f"fxprune: error: {exc if ours else first_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
