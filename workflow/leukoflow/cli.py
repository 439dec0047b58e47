"""`leukoflow` command line: one argparse subcommand per entry in SUBCOMMANDS.

Each subcommand is a `Subcommand(name, help, add_arguments, run)`; `run` maps the parsed
namespace to explicit keyword arguments of a package function and returns the exit status.
Add a subcommand by appending to SUBCOMMANDS. Input errors (`MetricInputError` and its
subclasses, which name the file) are printed as one line on stderr, exit status 2, without
a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from leukoflow.engine import mlflow_export, reproduce
from leukoflow.metric import (
    MetricInputError,
    count_problems,
    read_csv_table,
    score_files,
    validate_submission,
)

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_INPUT_ERROR = 2  # argparse uses 2 for usage errors too


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- score

def _score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", required=True,
                        help="ground-truth CSV (trustii_id, NAME, x1, y1, x2, y2, class)")
    parser.add_argument("--submission", required=True, help="submission CSV, same columns")
    parser.add_argument("--json", action="store_true",
                        help="print only one JSON object {score, mean_rescaled_giou, macro_f1}")
    parser.add_argument("--per-row", metavar="CSV", help="also write the per-cell table to this CSV")


def _run_score(args: argparse.Namespace) -> int:
    result = score_files(truth_csv=args.truth, submission_csv=args.submission)
    if args.per_row:
        result.per_row.to_csv(args.per_row, index=False)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"score:              {result.score:.6f}")
        print(f"mean rescaled GIoU: {result.mean_rescaled_giou:.6f}")
        print(f"macro F1:           {result.macro_f1:.6f}")
    return EXIT_OK


# ----------------------------------------------------------------------------- validate

def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test", required=True,
                        help="test CSV (trustii_id, NAME), one row per expected cell")
    parser.add_argument("--submission", required=True, help="submission CSV to check")
    parser.add_argument("--max-listed", type=int, default=50, help="problems printed (default 50)")
    parser.add_argument("--problems-csv", metavar="CSV", help="write every problem to this CSV")


def _run_validate(args: argparse.Namespace) -> int:
    test_table = read_csv_table(args.test, role="test")
    submission = read_csv_table(args.submission, role="submission")
    problems = validate_submission(test_table=test_table, submission=submission)
    if args.problems_csv:
        problems.to_csv(args.problems_csv, index=False)
    if problems.empty:
        print(f"OK: {args.submission} has one valid row for each of the "
              f"{test_table['trustii_id'].nunique()} test ids")
        return EXIT_OK
    counts = ", ".join(f"{kind} {n}" for kind, n in count_problems(problems).items())
    print(f"{args.submission}: {len(problems)} problem(s): {counts}")
    print(problems.head(args.max_listed).to_string(index=False))
    if len(problems) > args.max_listed:
        print(f"... and {len(problems) - args.max_listed} more")
    return EXIT_PROBLEMS


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("score", "score a submission with the official Cytologia metric",
               _score_arguments, _run_score),
    Subcommand("validate", "check a submission against the test table before scoring",
               _validate_arguments, _run_validate),
]


# ----------------------------------------------------------------------------- reproduce

SUBCOMMANDS.append(Subcommand("reproduce", reproduce.HELP, reproduce.add_arguments, reproduce.run_command))
SUBCOMMANDS.append(Subcommand("mlflow-export", mlflow_export.EXPORT_HELP, mlflow_export.add_export_arguments,
                              mlflow_export.run_export))
SUBCOMMANDS.append(Subcommand("mlflow-import", mlflow_export.IMPORT_HELP, mlflow_export.add_import_arguments,
                              mlflow_export.run_import))


# ----------------------------------------------------------------------------- predict

def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", metavar="IMAGES",
                        help="image files, folders (searched recursively) and/or quoted globs ('smears/**/*.jpg'); "
                             "an image's id is its path relative to the folder or glob root")
    parser.add_argument("--bundle", required=True, help="model bundle directory (results/bundle)")
    parser.add_argument("--about", action="store_true",
                        help="print the bundle's model card (intended use, classes, per-class F1, data, limits) "
                             "and its SHA-256, then exit")
    parser.add_argument("--expected-counts", metavar="CSV",
                        help="test.csv (trustii_id, NAME): keep exactly that many boxes per image; "
                             "without it, boxes above a confidence threshold after NMS")
    parser.add_argument("--profile", choices=("full", "fast"), default="full",
                        help="full: every fold and model of the bundle; fast: one detector fold + one classifier")
    parser.add_argument("--out", default="predictions.csv",
                        help="CSV to write, appended chunk by chunk; an interrupted run resumes (default predictions.csv)")
    parser.add_argument("--coco", metavar="JSON", help="COCO JSON to write (default <out stem>.coco.json)")
    parser.add_argument("--annotate", metavar="DIR", help="also write annotated PNGs into DIR")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="images per chunk: memory grows with it, not with the number of images (default 256)")
    parser.add_argument("--device", help="torch/ultralytics device (default: the bundle's)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the bundle's)")
    parser.add_argument("--min-score", type=float, help="threshold mode: minimum fused confidence, 0 to 1")
    parser.add_argument("--nms-iou", type=float, help="threshold mode: NMS IoU, above 0 and at most 1")
    parser.add_argument("--expect-sha256", metavar="HEX",
                        help="refuse the bundle unless its MANIFEST.sha256 has this SHA-256 (its published identity)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_predict(args: argparse.Namespace) -> int:
    from leukoflow.engine import offline

    offline.enforce()  # before ultralytics is imported: its settings go to the user's cache, no network
    from leukoflow.inference import predict
    from leukoflow.inference.bundle import BundleError

    try:
        if args.about:
            print(predict.about(args.bundle), end="")
            return EXIT_OK
        if not args.images:
            raise ValueError("give at least one image, folder or glob (or --about)")
        summary = predict.run(args.images, bundle=args.bundle, out=args.out, expected_counts=args.expected_counts,
                              profile=args.profile, device=args.device, threads=args.threads,
                              min_score=args.min_score, nms_iou=args.nms_iou, annotate_dir=args.annotate,
                              coco=args.coco, chunk_size=args.chunk_size, expected_sha256=args.expect_sha256,
                              progress=False if args.no_progress else None)
    except (BundleError, FileNotFoundError, ValueError) as error:
        print(f"leukoflow predict: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    print(json.dumps(summary))
    return EXIT_OK


SUBCOMMANDS.append(Subcommand("predict", "detect and classify white cells in new images with a model bundle",
                              _predict_arguments, _run_predict))


# ----------------------------------------------------------------------------- review (detection stage)

def _review_arguments(parser: argparse.ArgumentParser) -> None:
    from leukoflow.detection import review

    review.add_arguments(parser)


def _run_review(args: argparse.Namespace) -> int:
    from leukoflow.detection import review

    return review.run_command(args)


SUBCOMMANDS.append(Subcommand("review", "export flagged boxes/labels for review (Label Studio, COCO) and "
                              "import the reviewed overrides", _review_arguments, _run_review))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leukoflow", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MetricInputError as error:
        print(f"leukoflow {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
