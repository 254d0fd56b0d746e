"""Evaluates a checkpoint on the scene-text benchmarks under DATA_ROOT/test and prints the original's tables.

    python test.py outputs/vl4str/<run>/checkpoints/last.ckpt --data_root data [--new] [refine_iters:int=2]
    python test.py outputs/vl4str-tiny/<run> --data_root data/zh --datasets synth --full_charset
    python test.py CHECKPOINT --union14m --ost --ltb --protocol parseq --groups my_groups.yaml

A run folder instead of a file picks its best checkpoint by validation accuracy; when the run logged to MLflow
(train.py logger=mlflow), the reports go to its MLflow run too. The tables are test groups
(configs/test_groups/*.yaml): the protocol's, then New with --new, then the groups asked for; missing test sets
are named in a warning and skipped. Extra arguments of the form `name:type=value` (type int, float, str, bool, or
list for a list of integers such as `block_ids:list=[1,3,5]`) override the model's hyper-parameters; a name the
model does not take is refused with the closest ones it does.
"""
import logging
import sys
from pathlib import Path
from typing import List, Optional

from strhub.app.common import Parser, count, reported
from strhub.evaluation.evaluate import evaluate_checkpoint
from strhub.evaluation.groups import DEFAULT_PROTOCOL
from strhub.host import reuse_freed_memory, worker_count
from strhub.training.loggers import log_test_reports


def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(__doc__)
    parser.add_checkpoint()
    parser.add_argument("--data_root", type=Path, default=Path("data"), help="folder holding test/<benchmark>")
    parser.add_argument("--batch_size", type=count(1), default=512)
    parser.add_argument("--num_workers", type=count(0), default=worker_count(4),
                        help="data-loading processes (default: 4, or the usable CPUs if fewer: %(default)s here)")
    parser.add_argument("--cased", action="store_true", help="compare case (adds upper case to the test charset)")
    parser.add_argument("--punctuation", action="store_true", help="compare punctuation (adds it to the charset)")
    parser.add_argument("--full_charset", action="store_true",
                        help="any script: keep labels as written (NFC) and compare every character of the model's "
                             "charset, case included (instead of lowercase alphanumerics)")
    parser.add_argument("--ignore_case", action="store_true", help="with --full_charset: compare in lower case")
    parser.add_argument("--new", action="store_true", help="also evaluate the new benchmarks (ArT, COCOv1.4, Uber)")
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL,
                        help="the base tables: clip4str (the original's), parseq (with IC13-857 and IC15-1811), "
                             "or a group file")
    parser.add_argument("--union14m", action="store_true", help="also the Union14M-Benchmark (7 subsets, average)")
    parser.add_argument("--ost", action="store_true", help="also OST (HOST, WOST and their average)")
    parser.add_argument("--ltb", action="store_true", help="also LTB (long text, with a length filter that fits)")
    parser.add_argument("--groups", nargs="+", default=[], metavar="NAME_OR_FILE",
                        help="also these test groups: names in configs/test_groups or YAML files")
    parser.add_argument("--datasets", nargs="+", default=(), metavar="NAME",
                        help="evaluate these sets under DATA_ROOT/test instead of the benchmarks (e.g. synth)")
    parser.add_argument("--rotation", type=int, default=0, help="rotate images counter-clockwise by these degrees")
    parser.add_argument("--openai_meanstd", action="store_true",
                        help="normalise with CLIP's mean/std as in training (default 0.5/0.5, the original's protocol)")
    parser.add_device()
    parser.add_argument("--errors", type=Path, default=None, metavar="DIR",
                        help="write every sample to DIR/samples.csv and each benchmark's misread images to contact "
                             "sheets in DIR/<benchmark>/, most confident first")
    parser.add_argument("--output", type=Path, default=None, metavar="DIR",
                        help="write the reports (.md, .json, .csv) to DIR (default: beside the checkpoint, or the "
                             "current directory where that folder cannot be written)")
    args, kwargs = parser.parse_with_model_args(sys.argv[1:] if argv is None else argv)
    if args.full_charset and (args.cased or args.punctuation):
        parser.error("--full_charset compares case and punctuation already; drop --cased and --punctuation")
    if args.ignore_case and not args.full_charset:
        parser.error("--ignore_case goes with --full_charset (the default protocol ignores case already)")
    options = vars(args)
    flags = [name for name in ("union14m", "ost", "ltb") if options.pop(name)]
    options["groups"] = flags + options["groups"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    reuse_freed_memory()
    with reported(parser.prog):
        evaluate_checkpoint(**options, model_kwargs=kwargs)
        log_test_reports(args.checkpoint)


if __name__ == "__main__":
    main()
