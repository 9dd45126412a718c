"""What ``trihrge`` prints when a run is done: the scores in words, the time, the outputs."""

from __future__ import annotations

from pathlib import Path


def fmt(value: float | None) -> str:
    """A score with three decimals, 'n/a' when unknown."""
    return "n/a" if value is None else f"{value:.3f}"


def print_run_summary(summary: dict, out: Path) -> None:
    """The summary of a demo, recovery, enhance or validate-hd run folder ``out``."""
    print(f"\nSample {summary.get('sample')}: {summary.get('n_spots')} spots, "
          f"{summary.get('n_genes')} genes, encoder {summary.get('encoder')}, "
          f"device {summary.get('device')}")
    rec = summary.get("recovery")
    if rec:
        print(f"Recovery ({rec['heldout_fraction']:.0%} hidden; scored on the "
              f"{rec['n_hidden']} hidden spots and the {rec['n_genes_scored']} genes that vary "
              f"among them, a constant prediction counting as PCC 0):")
        print(f"  mean PCC {fmt(rec['pcc_mean'])} vs best kNN interpolation (k="
              f"{rec['baseline_knn_k']}) {fmt(rec['baseline_knn_pcc_mean'])}; 100 most expressed "
              f"genes {fmt(rec['pcc_top100'])} vs {fmt(rec['baseline_knn_pcc_top100'])}")
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
