"""The end of a tuning run: ranking table, afwd x abkw heatmap, and the best pair as YAML."""

from __future__ import annotations

from pathlib import Path

from orchestrator import storage
from orchestrator.layout import ExperimentLayout
from orchestrator.report.heatmap import plot_heatmap
from orchestrator.report.ranking import load_ranking, yaml_snippet
from trainers.decay import fraction_text


def write_tuning_report(experiment: str, exp_dir: Path, setting: str | None = None,
                        top: int = 10) -> dict[str, Path]:
    """Write tables/ranking.{csv,md}, tables/best.yaml and plots/tuning_heatmap.png; print them.

    `setting` ranks only the runs of that recipe (the search's current settings)."""
    layout = ExperimentLayout(storage.location(exp_dir))
    ranking = load_ranking(layout.dir, setting)
    if ranking.empty:
        print(f"{experiment}: no finished epochs yet in {layout.dir}")
        return {}
    shown = ranking.assign(afwd=ranking["afwd"].map(fraction_text),
                           abkw=ranking["abkw"].map(fraction_text))
    out = {"ranking_csv": layout.table("ranking", ".csv"),
           "ranking_md": layout.table("ranking", ".md"),
           "best": layout.table("best", ".yaml"), "heatmap": layout.plot("tuning_heatmap")}
    storage.write_text(out["ranking_csv"], ranking.to_csv(index=False))
    storage.write_text(out["ranking_md"], markdown(shown) + "\n")
    best = ranking.iloc[0]
    snippet = yaml_snippet({"afwd": float(best["afwd"]), "abkw": float(best["abkw"])})
    storage.write_text(out["best"], snippet)
    plot_heatmap(ranking, out["heatmap"], f"{experiment}: median best val top-1 over seeds")

    print(f"\n{experiment}: {len(ranking)} configurations ranked by the median over seeds of "
          "each run's best validation top-1 (stopped = ended early by the scheduler)")
    print(markdown(shown.head(top)))
    if len(ranking) > top:
        print(f"... {len(ranking) - top} more in {out['ranking_md']}")
    print(f"\nbest pair ({best['median_best_val_acc1']:.2f}% median best val top-1); paste "
          "into an experiment's cells:\n")
    print(snippet)
    for name in ("ranking_md", "best", "heatmap"):
        print(f"{name}: {out[name]}")
    return out


def markdown(frame) -> str:
    header = "| rank | " + " | ".join(frame.columns) + " |"
    rule = "|---:|" + "|".join("---:" for _ in frame.columns) + "|"
    rows = []
    for i, row in enumerate(frame.itertuples(index=False), start=1):
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row]
        rows.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])
