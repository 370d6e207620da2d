"""Ablations of STrans on ``builtin:digits``: STrans-D's skip projection against the identity
residual, and AdaNorm-T placement (a) in the branch against (b) on the trunk (Xu et al. 2021,
arXiv 2110.13107, the residual analysis and the conditional-generator figure).

Each row trains a conditional STrans pair with ``scripts/train_strans_digits.py`` (same steps,
seed, batch and recipe for every row; residual norm ratios of G and D probed every
``--ratio-every`` steps), then measures FID/KID with the shipped ``imgtx-small`` features and
the class accuracy of the EMA generator against the real test split (``imgtx gan eval``'s
``evaluate_generator``). The base is ``strans-digits32-cond`` shrunk to 16x16 so that every row
gets several hundred steps on a shared CPU: G with three stages (4^2, 8^2 global; 16^2 Swin) of
widths 128/64/32 and depths 1/2/2, D with its stem at stride 1 (so D's Swin stages see the same
16^2 and 8^2 grids as in the 32x32 pair). ``--full-size`` ablates the 32x32 config itself.

    python scripts/ablate_strans_digits.py --max-steps 400 --threads 1 --out runs/ablate \
        --docs docs

Rows (the base is skip projection + trunk, the shipped choice):

* ``base``:       D skip projection, G AdaNorm-T (b) trunk
* ``d-identity``: D identity residual, G (b) trunk
* ``g-branch``:   D skip projection, G AdaNorm-T (a) branch

Writes ``<out>/ablation.json`` and ``<out>/ablation.md``; with ``--docs``, copies the ratio plots
to ``docs/strans_ratios_<row>_<G|D>.png``. A row whose ``final/`` exists is evaluated, not
retrained (``--retrain`` forces it). The last line printed is the JSON of all rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "train_strans_digits.py"

SMALL_G = ["image_size=16", "dims=[128,64,32]", "depths=[1,2,2]", "heads=[4,2,1]"]
SMALL_D = ["image_size=16", "stem_stride=1"]
# The rows' common D: the projection critic of the first shipped recipe (skip projections, no
# auxiliary classifier, DiffAugment translation+color), pinned here so the ablation does not
# change when the registry's shipped recipe does.
BASE_D = ["residual=projection", "aux_classifier=false", "diffaug=translation,color"]
ROWS = {
    "base": ([], []),
    "d-identity": ([], ["residual=identity"]),
    "g-branch": (["adanorm=branch"], []),
}
LABELS = {"base": "skip projection / trunk (b)", "d-identity": "identity residual / trunk (b)",
          "g-branch": "skip projection / branch (a)"}


def train_row(name: str, args: argparse.Namespace) -> Path:
    """Train one row in a child process (so each starts from the same fresh state)."""
    g_sets, d_sets = ROWS[name]
    d_sets = BASE_D + d_sets
    if not args.full_size:
        g_sets, d_sets = SMALL_G + g_sets, SMALL_D + d_sets
    command = [sys.executable, str(SCRIPT), "--out", str(Path(args.out) / name), "--export", "",
               "--max-steps", str(args.max_steps), "--seed", str(args.seed),
               "--ratio-every", str(args.ratio_every), "--eval-every", str(args.ratio_every),
               "--checkpoint-every", "0", "--num-samples", "100"]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    for flag, sets in (("--set", g_sets), ("--set-d", d_sets)):
        for pair in sets:
            command += [flag, pair]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    return Path(args.out) / name / "final"


def mean_last(curves: dict[str, list], kind: str, tail: int = 3) -> float:
    """Mean over layers of the last ``tail`` probes' ratio of one sub-layer kind."""
    values = [v for key, points in curves.items() if key.endswith("." + kind)
              for _, v in points[-tail:]]
    return sum(values) / len(values)


def evaluate_row(name: str, final: Path, args: argparse.Namespace) -> dict:
    import torch

    from imgtx.gan.evaluate import evaluate_generator
    from imgtx.gan.sample import load_generator

    torch.set_num_threads(args.threads or torch.get_num_threads())
    result = evaluate_generator(load_generator(str(final)), "builtin:digits", "test",
                                args.num_samples, "imgtx-small", seed=args.seed)
    row = {"row": name, "setting": LABELS[name],
           **{k: result[k] for k in ("fid", "kid", "kid_std", "class_accuracy",
                                     "classifier_test_accuracy") if k in result}}
    run = final.parent
    for net in ("G", "D"):
        curves = json.loads((run / f"ratios_{net}.json").read_text())
        for kind in ("attn", "ffn"):
            row[f"{net}_{kind}_ratio"] = round(mean_last(curves, kind), 4)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    row["steps"], row["hours"] = records[-1]["step"], records[-1]["hours"]
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| row | D residual / AdaNorm-T | FID | KID | class acc. | D attn ratio | "
             "D ffn ratio | G attn ratio | G ffn ratio | steps |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['setting']} | {r['fid']:.2f} | {r['kid']:.4f} | "
                     f"{r.get('class_accuracy', float('nan')):.3f} | {r['D_attn_ratio']:.3g} | "
                     f"{r['D_ffn_ratio']:.3g} | {r['G_attn_ratio']:.3g} | "
                     f"{r['G_ffn_ratio']:.3g} | {r['steps']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ablate-strans-digits")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32, help="the documented rows used 32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratio-every", type=int, default=25)
    p.add_argument("--num-samples", type=int, default=500, help="generated images per FID")
    p.add_argument("--threads", type=int)
    p.add_argument("--full-size", action="store_true", help="ablate the 32x32 config itself")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--docs", help="copy the ratio plots here")
    args = p.parse_args(argv)
    rows = []
    for name in args.rows:
        final = Path(args.out) / name / "final"
        if args.retrain or not (final / "model.safetensors").exists():
            final = train_row(name, args)
        rows.append(evaluate_row(name, final, args))
        print(json.dumps(rows[-1]), flush=True)
        if args.docs:
            for net in ("G", "D"):
                shutil.copy(final.parent / f"ratios_{net}.png",
                            Path(args.docs) / f"strans_ratios_{name}_{net}.png")
    out = Path(args.out)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1))
    (out / "ablation.md").write_text(markdown(rows))
    print(markdown(rows))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
