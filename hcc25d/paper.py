"""The paper's printed numbers and the side-by-side comparison with this reproduction."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .cohort import COHORTS, CohortSpec

__all__ = [
    "PAPER_TABLES",
    "paper_tables",
    "parse_p",
    "p_matches",
    "compare_table1",
    "compare_table2",
    "METRICS",
    "compare_metrics",
    "threshold_extremes",
    "side_by_side",
]

PAPER_TABLES = Path(__file__).parent / "data" / "paper_tables.yaml"


def paper_tables() -> dict:
    return yaml.safe_load(PAPER_TABLES.read_text())


def parse_p(text: str) -> tuple[float, str]:
    """A printed P value → (value, relation): ``"<0.05"`` → (0.05, "<"), ``"0.78"`` → (0.78, "=")."""
    text = str(text).strip()
    if text.startswith("<"):
        return float(text[1:]), "<"
    return float(text), "="


def p_matches(ours: float, printed: str, decimals: int = 3) -> bool:
    """Does our P value print as the paper's? (``<x`` means below x; otherwise equal at 3 decimals)."""
    value, rel = parse_p(printed)
    if rel == "<":
        return bool(ours < value)
    return bool(abs(round(ours, decimals) - value) < 10 ** -(decimals + 3))


def compare_table1(t1_long: pd.DataFrame, spec: CohortSpec) -> pd.DataFrame:
    """Every count, percentage, mean, SD and P value of Table 1: paper vs ours, with the difference."""
    rows = []
    idx = t1_long.set_index(["variable", "level", "cohort"])
    for c in COHORTS:
        n = spec.cohorts[c]["n"]
        for var, d in spec.continuous.items():
            if (var, "", c) not in idx.index:
                continue
            r = idx.loc[(var, "", c)]
            for o in (0, 1):
                mean, sd = d["stats"][c][o]
                rows.append(dict(table="Table 1", item=f"{d['label']} mean, outcome {o}", cohort=c,
                                 paper=mean, ours=round(float(r[f"mean{o}"]), 2)))
                rows.append(dict(table="Table 1", item=f"{d['label']} SD, outcome {o}", cohort=c,
                                 paper=sd, ours=round(float(r[f"sd{o}"]), 2)))
            pv, _ = parse_p(d["paper_p"][c])
            rows.append(dict(table="Table 1", item=f"{d['label']} P", cohort=c, paper=pv,
                             ours=round(float(r["p"]), 3), note="depends on the drawn values, not only on the counts"))
        for var, d in spec.categorical.items():
            if (var, "", c) not in idx.index:
                continue
            for lvl, k0, k1 in zip(d["levels"], d["counts"][c][0], d["counts"][c][1]):
                r = idx.loc[(var, str(lvl), c)]
                for o, k in ((0, k0), (1, k1)):
                    rows.append(dict(table="Table 1", item=f"{d['label']}: {lvl} n, outcome {o}", cohort=c,
                                     paper=k, ours=int(r[f"n{o}"])))
                    rows.append(dict(table="Table 1", item=f"{d['label']}: {lvl} %, outcome {o}", cohort=c,
                                     paper=round(100 * k / n[o], 2), ours=round(float(r[f"pct{o}"]), 2)))
            r = idx.loc[(var, "", c)]
            pv, _ = parse_p(d["paper_p"][c])
            rows.append(dict(table="Table 1", item=f"{d['label']} P", cohort=c, paper=pv,
                             ours=round(float(r["p"]), 3),
                             match=p_matches(float(r["p"]), d["paper_p"][c])))
    out = pd.DataFrame(rows)
    out["difference"] = out["ours"] - out["paper"]
    if "match" not in out:
        out["match"] = np.nan
    m = out["match"].isna()
    out.loc[m, "match"] = out.loc[m, "difference"].abs() < 1e-9
    return out


def compare_table2(t2: pd.DataFrame, spec: CohortSpec) -> pd.DataFrame:
    """Table 2 (paper-style columns): paper vs ours for OR, both interval ends and P."""
    paper = paper_tables()["table2"]
    ours = t2.set_index("variable")
    rows = []
    for part, prefix in (("univariable", ""), ("multivariable", "m_")):
        for var, (orr, lo, hi, p) in paper[part].items():
            if var not in ours.index:
                continue
            r = ours.loc[var]
            for name, pv, ov in (("OR", orr, r.get(f"{prefix}or_paper")), ("CI low", lo, r.get(f"{prefix}lo_paper")),
                                 ("CI high", hi, r.get(f"{prefix}hi_paper"))):
                ov = float(ov) if ov is not None and pd.notna(ov) else np.nan
                rows.append(dict(table=f"Table 2 {part}", item=f"{spec.label(var)} {name}", paper=pv,
                                 ours=round(ov, 3), difference=round(ov, 3) - pv,
                                 match=bool(abs(round(ov, 3) - pv) <= 0.001 + 1e-9)))
            op = r.get(f"{prefix}p_paper")
            op = float(op) if op is not None and pd.notna(op) else np.nan
            value, rel = parse_p(p)
            rows.append(dict(table=f"Table 2 {part}", item=f"{spec.label(var)} P", paper=value, ours=round(op, 3),
                             difference=np.nan if rel == "<" else round(op, 3) - value,
                             match=bool(op < value) if rel == "<" else bool(abs(round(op, 3) - value) <= 0.001 + 1e-9),
                             note="paper prints <0.05" if rel == "<" else ""))
    return pd.DataFrame(rows)


METRICS = ["accuracy", "auc", "ci_low", "ci_high", "sensitivity", "specificity", "ppv", "npv"]


def compare_metrics(table: str, ours: pd.DataFrame, name_map: dict, model_col: str,
                    reference: dict | None = None, cohort_map: dict | None = None, which=None) -> pd.DataFrame:
    """Paper vs ours for Tables 3–5: one row per model, cohort and metric. ``name_map`` maps the paper's
    model names to ours (absent → not reproduced).

    ``reference``: the twin's patient-level reference AUCs (:func:`hcc25d.stats.load_reference`), put
    beside every AUC; ``which(model)`` says which one applies (``"image"`` for an image-only model,
    ``"combined"`` for one with clinical variables; default image). Leave it out for instance-level
    tables (Table 3): an instance-level AUC is not comparable with a patient-level reference."""
    paper = paper_tables()[table]
    cohort_map = cohort_map or {}
    rows = []
    for pname, cohorts in paper.items():
        oname = name_map.get(pname)
        for cohort_name, vals in cohorts.items():
            oc = cohort_map.get(cohort_name, cohort_name)
            sub = ours[(ours[model_col] == oname) & (ours["cohort"] == oc)] if oname else ours.iloc[0:0]
            for m, pv in zip(METRICS, vals):
                ov = float(sub[m].iloc[0]) if len(sub) else np.nan
                rows.append({"table": table.replace("table", "Table "), "model (paper)": pname,
                             "model (ours)": oname or "not trained", "cohort": cohort_name, "metric": m,
                             "paper": pv, "ours": round(ov, 3) if np.isfinite(ov) else np.nan,
                             "difference": round(ov - pv, 3) if np.isfinite(ov) else np.nan,
                             "reference AUC": ((reference or {}).get((which or (lambda _: "image"))(pname), {})
                                               .get(cohort_name)) if m == "auc" else np.nan})
    return pd.DataFrame(rows)


def threshold_extremes(table: str = "table5", margin: float = 0.05) -> pd.DataFrame:
    """The paper's rows of a metrics table (Tables 3–5) whose threshold flags almost no patient or almost
    every one: sensitivity or specificity within ``margin`` of 0. Columns ``model``, ``cohort``,
    ``sensitivity``, ``specificity``."""
    i, j = METRICS.index("sensitivity"), METRICS.index("specificity")
    rows = [{"model": m, "cohort": c, "sensitivity": v[i], "specificity": v[j]}
            for m, cohorts in paper_tables()[table].items() for c, v in cohorts.items()
            if min(v[i], v[j]) <= margin]
    return pd.DataFrame(rows, columns=["model", "cohort", "sensitivity", "specificity"])


def side_by_side(comp: pd.DataFrame, table: str, tolerance: float = 0.05, wide: bool = False):
    """One of Tables 3–5 with the paper's row and this run's row for every model and cohort (and the
    twin's reference AUC where there is one); this run's values further than ``tolerance`` from the
    paper's are highlighted. By default one row per model, cohort and source, the paper's six metrics as
    columns (fits a page); ``wide=True`` gives the paper's printed layout, cohorts as column groups.
    Returns a pandas ``Styler`` (3 decimals)."""
    from .evaluation import PAPER_METRICS, _auc_text

    g = comp[comp["table"] == table]
    cohorts = list(dict.fromkeys(g["cohort"]))
    labels = [label for _, label in PAPER_METRICS]
    rows, flags = {}, {}

    for model, h in g.groupby("model (paper)", sort=False):
        for c in cohorts:
            v = h[h["cohort"] == c].set_index("metric")
            for src, shown in (("paper", "paper"), ("ours", "this run")):
                name = (model, c, shown) if not wide else (model, shown)
                for m, label in PAPER_METRICS:
                    if m not in v.index:
                        continue
                    col = label if not wide else (c, label)
                    x = v.loc[m, src]
                    rows.setdefault(name, {})[col] = (
                        _auc_text(x, v.loc["ci_low", src] if "ci_low" in v.index else None,
                                  v.loc["ci_high", src] if "ci_high" in v.index else None)
                        if m == "auc" else ("" if pd.isna(x) else f"{x:.3f}"))
                    if src == "ours" and pd.notna(x) and pd.notna(v.loc[m, "paper"]):
                        flags[(name, col)] = abs(x - v.loc[m, "paper"]) > tolerance
            ref = v["reference AUC"].get("auc") if "reference AUC" in v else None
            if ref is not None and pd.notna(ref):
                name = (model, c, "reference (twin)") if not wide else (model, "reference (twin)")
                rows.setdefault(name, {})["AUC (95% CI)" if not wide else (c, "AUC (95% CI)")] = f"{ref:.3f}"
    if wide:
        cols = pd.MultiIndex.from_tuples([(c, label) for c in cohorts for label in labels], names=["cohort", ""])
        order = sorted(rows, key=lambda k: list(dict.fromkeys(n[0] for n in rows)).index(k[0]))
        index = pd.MultiIndex.from_tuples(order, names=["model", ""])  # paper, this run, reference
    else:
        cols = pd.Index(labels)
        order = list(rows)
        index = pd.MultiIndex.from_tuples(order, names=["model", "cohort", ""])
    t = pd.DataFrame([rows[k] for k in order], index=index).reindex(columns=cols).fillna("")
    css = pd.DataFrame("", index=t.index, columns=t.columns)
    at, ct = {k: i for i, k in enumerate(order)}, {c: j for j, c in enumerate(cols)}
    for (name, col), bad in flags.items():
        if bad:
            css.iat[at[name], ct[col]] = "background-color: #fde2e1"
    return t.style.apply(lambda _: css, axis=None).set_table_attributes('class="dataframe"')
