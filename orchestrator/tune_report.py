"""The end of a tuning run: ranking table, afwd x abkw heatmap, and the best pair as YAML."""

from __future__ import annotations

from pathlib import Path

from orchestrator.tuning import load_ranking, plot_heatmap, yaml_snippet
from trainers.decay import fraction_text


def write_tuning_report(experiment: str, exp_dir: Path, top: int = 10) -> dict[str, Path]:
    """Write tables/ranking.{csv,md}, tables/best.yaml and plots/tuning_heatmap.png; print them."""
    ranking = load_ranking(exp_dir)
    if ranking.empty:
        print(f"{experiment}: no finished epochs yet in {exp_dir}")
        return {}
    shown = ranking.assign(afwd=ranking["afwd"].map(fraction_text),
                           abkw=ranking["abkw"].map(fraction_text))
    tables, plots = exp_dir / "tables", exp_dir / "plots"
    tables.mkdir(parents=True, exist_ok=True)
    out = {"ranking_csv": tables / "ranking.csv", "ranking_md": tables / "ranking.md",
           "best": tables / "best.yaml", "heatmap": plots / "tuning_heatmap.png"}
    ranking.to_csv(out["ranking_csv"], index=False)
    out["ranking_md"].write_text(markdown(shown) + "\n")
    best = ranking.iloc[0]
    snippet = yaml_snippet({"afwd": float(best["afwd"]), "abkw": float(best["abkw"])})
    out["best"].write_text(snippet)
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
