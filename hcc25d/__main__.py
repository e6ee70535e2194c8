"""Command line: ``python -m hcc25d check --params params/<run>.yaml`` (validate before any work),
``python -m hcc25d import-dicom ROOT --out manifest.csv`` (a DICOM export to a manifest),
``python -m hcc25d run --params params/<run>.yaml [--from STAGE] [--only STAGE] [--force]`` and
``python -m hcc25d book --run <run>``."""
from __future__ import annotations

import argparse
import sys

from .cohort import CohortSpecError
from .config import ConfigError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hcc25d", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the stage notebooks of a params file")
    r.add_argument("--params", required=True, help="params YAML, e.g. params/synthetic.yaml")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--from", dest="from_stage", help="start at this stage (and run all after it)")
    g.add_argument("--only", action="append", help="run only this stage (repeatable)")
    r.add_argument("--force", action="store_true", help="rerun even if nothing changed")
    c = sub.add_parser("check", help="validate a params file and, for own data, the manifest and every file "
                                     "it lists (read in full); nothing is written")
    c.add_argument("--params", required=True, help="params YAML, e.g. params/own.yaml")
    c.add_argument("--headers-only", action="store_true",
                   help="read only the phases' headers (faster; masks are still read in full)")
    d = sub.add_parser("import-dicom", help="scan a DICOM export (patients, studies, series, DICOM-SEG) and "
                                            "write a manifest")
    d.add_argument("root", help="folder of the DICOM export (searched recursively)")
    d.add_argument("--out", required=True, help="manifest CSV to write (images/ and masks/ go beside it)")
    d.add_argument("--rules", help="YAML phase rules (default: arterial/art/AP, portal/PV/venous, "
                                   "plain/non-contrast/pre on SeriesDescription)")
    d.add_argument("--clinical", help="CSV keyed on patient_id (the DICOM PatientID): centre, cohort, label, "
                                      "clinical columns")
    d.add_argument("--masks", help="folder of tumour masks <PatientID>.nii.gz (where no DICOM-SEG exists)")
    d.add_argument("--segment", help="DICOM-SEG segment number or label (default: the tumour-like one)")
    d.add_argument("--phases", nargs="+", default=["plain", "arterial", "portal"],
                   help="phases each patient must have (default: all three)")
    d.add_argument("--pseudonymise", action="store_true", help="write salted pseudonyms instead of ids")
    d.add_argument("--salt", default="", help="the pseudonyms' secret salt (with --pseudonymise)")
    b = sub.add_parser("book", help="render the Jupyter Book from a run's executed notebooks")
    b.add_argument("--run", required=True, help="run name (folder under results/)")
    b.add_argument("--no-strict", action="store_true", help="do not treat warnings as errors")
    sub.add_parser("stages", help="list the stages")
    pp = sub.add_parser("params", help="the params schema: --defaults prints every field with its default and "
                                       "documentation (a commented YAML file to copy)")
    pp.add_argument("--defaults", action="store_true", required=True)
    args = ap.parse_args(argv)

    from . import runner

    try:
        if args.cmd == "check":
            from .check import check

            report = check(args.params, full=not args.headers_only)
            print(report.text(), file=sys.stdout if report.ok else sys.stderr)
            return 0 if report.ok else 2
        if args.cmd == "import-dicom":
            from .dicom_import import import_dicom

            res = import_dicom(args.root, args.out, rules=args.rules, clinical=args.clinical, masks=args.masks,
                               segment=args.segment, phases=args.phases, pseudonymise_ids=args.pseudonymise,
                               salt=args.salt)
            print(f"wrote {args.out}: " + res.summary())
            return 0
        if args.cmd == "run":
            status = runner.run(args.params, from_stage=args.from_stage, only=args.only, force=args.force)
            ran = [k for k, v in status.items() if v == "ran"]
            print(f"[hcc25d] {len(ran)} stage(s) ran, {len(status) - len(ran)} unchanged")
        elif args.cmd == "book":
            runner.build_book(args.run, strict=not args.no_strict)
        elif args.cmd == "params":
            from .config import defaults_yaml

            print("# hcc25d params: every field with its default (python -m hcc25d params --defaults)")
            print(defaults_yaml())
        elif args.cmd == "stages":
            for s in runner.STAGES:
                print(f"{s.name:12s} notebooks/{s.notebook:34s} {s.title}")
    except (ConfigError, CohortSpecError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except runner.StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
