"""What ``trihrge`` prints when a run is done: the scores in words, the time, the outputs."""

from __future__ import annotations

from pathlib import Path


def fmt(value: float | None) -> str:
    """A score with three decimals, 'n/a' when unknown."""
    return "n/a" if value is None else f"{value:.3f}"


def ceiling_text(scores: dict) -> str:
    """The noise ceiling beside a score: the best mean PCC the measurement noise allows and
    the fraction of it reached."""
    frac = scores.get("fraction_of_ceiling")
    reached = "n/a" if frac is None or frac != frac else f"{frac:.0%}"
    return (f"{fmt(scores.get('noise_ceiling_pcc_mean'))} (the best mean PCC the counting "
            f"noise allows; {reached} of it reached)")


def _print_coarse(c: dict) -> None:
    """The validate-coarse scores: the map against what a user had without it."""
    print(f"Coarse-to-fine check ({c['n_pseudo_spots']} pseudo-spots of up to "
          f"{c['spots_per_pseudo_spot']} spots enhanced with a {c['stride_um']:g} um map; scored "
          f"on the {c['n_spots_scored']} measured spots and the {c['n_genes_scored']} genes that "
          "vary among them, a constant counting as PCC 0):")
    print(f"  map averaged over each spot: mean PCC {fmt(c['pcc_mean'])}; nearest virtual spot "
          f"{fmt(c['nearest_virtual_pcc_mean'])}")
    print(f"  pseudo-spot value {fmt(c['baseline_pseudo_spot_pcc_mean'])} (without the spot's "
          f"own counts {fmt(c.get('baseline_pseudo_spot_others_pcc_mean'))}), interpolated "
          f"pseudo-spots (k={c['baseline_knn_k']}) {fmt(c['baseline_knn_pcc_mean'])}, "
          f"image-only ridge {fmt(c.get('baseline_ridge_image_pcc_mean'))}; the map is "
          f"{c['x_better_simple']:.2f}x the better of pseudo-spot value and interpolation")
    print(f"  noise ceiling {ceiling_text(c)}")
    for cls, row in c.get("by_gene_class", {}).items():
        if cls != "all" and row.get("n_genes"):
            print(f"  {cls} ({row['n_genes']} genes): map {fmt(row.get('map'))}, pseudo-spot "
                  f"{fmt(row.get('pseudo_spot'))}, kNN k={c['baseline_knn_k']} "
                  f"{fmt(row.get(c['baseline_knn_method']))}, ceiling "
                  f"{fmt(row.get('noise_ceiling'))}")


def print_run_summary(summary: dict, out: Path) -> None:
    """The summary of a demo, recovery, enhance, validate-hd or validate-coarse run folder
    ``out``."""
    print(f"\nSample {summary.get('sample')}: {summary.get('n_spots')} spots, "
          f"{summary.get('n_genes')} genes, encoder {summary.get('encoder')}, "
          f"device {summary.get('device')}")
    task = summary.get("recovery") or summary.get("enhance") or {}
    if isinstance(task, dict) and task.get("reference_sections"):
        weight = task.get("reference_weight")
        print(f"  learned also from {len(task['reference_sections'])} other section(s) of the "
              f"study: {', '.join(map(str, task['reference_sections']))} "
              f"({sum(task['reference_spots'])} spots"
              + (f", at most {weight:g} x the section's training spots" if weight else "")
              + "; kNN and the blend weights from this section's own spots)")
    models = task if isinstance(task, dict) else {}
    for name, n_genes in zip(models.get("reference_models", []),
                             models.get("reference_model_genes", []), strict=True):
        alone = models.get(f"baseline_{name}_pcc_mean")
        print(f"  a trained model joined the per-gene blend as candidate '{name}' on its "
              f"{n_genes} genes shared with this run"
              + (f" (alone: mean PCC {fmt(alone)})" if alone is not None else ""))
    rec = summary.get("recovery")
    if rec:
        print(f"Recovery ({rec['heldout_fraction']:.0%} hidden; scored on the "
              f"{rec['n_hidden']} hidden spots and the {rec['n_genes_scored']} genes that vary "
              f"among them, a constant prediction counting as PCC 0):")
        print(f"  mean PCC {fmt(rec['pcc_mean'])} vs best kNN interpolation (k="
              f"{rec['baseline_knn_k']}) {fmt(rec['baseline_knn_pcc_mean'])}; 100 most expressed "
              f"genes {fmt(rec['pcc_top100'])} vs {fmt(rec['baseline_knn_pcc_top100'])}")
        if rec.get("noise_ceiling_pcc_mean") is not None:
            print(f"  noise ceiling {ceiling_text(rec)}")
        line = (f"  {rec['fraction_genes_better_than_baseline']:.0%} of genes better than kNN, "
                f"{rec['n_genes_constant_prediction']} predicted as a constant; "
                f"MSE {fmt(rec['mse'])} (kNN {fmt(rec['baseline_knn_mse'])})")
        if "ari" in rec:
            line += f", ARI {fmt(rec['ari'])} (kNN {fmt(rec['ari_baseline_knn'])})"
        print(line)
    trust = summary.get("trust")
    if "enhance" in summary and trust:
        print(f"Per-gene trust of the enhanced outputs (a model trained like them on "
              f"{trust['n_visible']} spots, scored on the {trust['n_hidden']} held out, same "
              f"score): mean PCC {fmt(trust['pcc_mean'])} vs kNN (k={trust['baseline_knn_k']}) "
              f"{fmt(trust['baseline_knn_pcc_mean'])}")
        print(f"  {trust['n_genes_beating_interpolation']} of {trust['n_genes_scored']} genes beat "
              f"kNN interpolation (var['beats_interpolation']), "
              f"{trust['n_genes_constant_prediction']} predicted as a constant")
        if trust.get("noise_ceiling_pcc_mean") is not None:
            print(f"  noise ceiling of the held-out spots {ceiling_text(trust)}")
    elif "enhance" in summary:
        print("Per-gene trust: not measured (--no-trust); the outputs do not say which genes "
              "beat interpolation")
    sr = summary.get("superres")
    if sr:
        print(f"Dense map vs truth: PCC {fmt(sr['pcc_mean'])} (interpolated spots "
              f"{fmt(sr['baseline_interp_pcc_mean'])}), SSIM {fmt(sr['ssim_mean'])} "
              f"({fmt(sr['baseline_interp_ssim_mean'])}), RMSE {fmt(sr['rmse'])}")
    hd = summary.get("validate_hd")
    if hd:
        print(f"Visium HD check ({hd['n_pseudo_spots']} pseudo-Visium spots from "
              f"{hd['n_bins']} bins of {hd['bin_size_um']:g} um; {hd['n_pixels_scored']} map "
              f"pixels on measured bins): PCC {fmt(hd['pcc_mean'])} (interpolated spots "
              f"{fmt(hd['baseline_interp_pcc_mean'])}), SSIM {fmt(hd['ssim_mean'])} "
              f"({fmt(hd['baseline_interp_ssim_mean'])}), RMSE {fmt(hd['rmse'])} "
              f"({fmt(hd['baseline_interp_rmse'])})")
    coarse = summary.get("validate_coarse")
    if coarse:
        _print_coarse(coarse)
    cons = summary.get("consistency")
    if cons:
        print(f"Map averaged over each spot vs the measured spot: PCC {fmt(cons['pcc_mean'])}")
    t = summary.get("timings_s", {})
    print(f"Time {t.get('total', 0):.1f} s, peak memory {summary.get('peak_rss_mb', 0):.0f} MiB")
    print(f"Outputs in {out.resolve()}: " + ", ".join(str(v) for v in
                                                       summary.get("outputs", {}).values()))


def print_model_summary(summary: dict) -> None:
    """The summary of ``trihrge train`` (the model and its held-out scores) or ``predict``."""
    if summary.get("task") == "train":
        print(f"\nModel ({'image only' if summary['image_only'] else 'image + neighbours'}, "
              f"{summary['n_genes']} genes, encoder {summary['encoder']}) written to "
              f"{summary['model']}")
        for sec in summary["sections"]:
            s = sec.get("scores")
            if s:
                print(f"  {sec['name']}: {sec['n_heldout_spots']} held-out spots, mean PCC "
                      f"{fmt(s['pcc_mean'])} vs kNN (k={s['baseline_knn_k']}) "
                      f"{fmt(s['baseline_knn_pcc_mean'])}")
        held = summary.get("heldout")
        if held and held.get("n_sections", 1) > 1:
            print(f"  mean over the {held['n_sections']} sections (each scored on its own): mean "
                  f"PCC {fmt(held['pcc_mean'])} vs kNN {fmt(held['baseline_knn_pcc_mean'])}")
        return
    pred = summary.get("predict", {})
    spots = pred.get("spots")
    print(f"\n{summary.get('sample')}: predicted {pred.get('n_virtual_spots')} virtual spots"
          + (f" and a {pred.get('map_stride_um'):g} um map ({pred.get('map_locations')} "
             "locations)" if pred.get("map_stride_um") else ""))
    if spots:
        print(f"At the {spots['n_spots']} measured spots ({spots['n_genes_scored']} genes that "
              f"vary): mean PCC {fmt(spots['pcc_mean'])} vs kNN of the other spots "
              f"{fmt(spots['baseline_knn_pcc_mean'])}; MSE {fmt(spots['mse'])} (training mean "
              f"{fmt(spots.get('baseline_train_mean_mse'))})")
    print("Outputs: " + ", ".join(str(v) for v in summary.get("outputs", {}).values()))
