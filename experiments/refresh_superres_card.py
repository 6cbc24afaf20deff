"""Re-measures a shipped super-resolution model's card against the current ``pretrained:mnist``: its card's
``glowtorch superres`` command runs again (the baseline's bits/dim on the same images and noise, the
figure, fidelity and PSNR), the twin's figures are kept, and ``card.json`` and ``docs/model-NAME.md`` are
rewritten. Run it after ``pretrained:mnist`` is re-shipped::

    python experiments/refresh_superres_card.py mnist-sr4 --data-dir ../shared/data/mnist

The model itself does not change, so its own bits/dim must come out as the card has it (checked).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glowtorch.pretrained import pretrained_card  # noqa: E402
from ship_pretrained import ROOT, card_text, run_superres  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="a shipped super-resolution model, e.g. mnist-sr4")
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    card = pretrained_card(args.name)
    old = card.get("superres")
    if old is None:
        parser.error(f"pretrained:{args.name} has no super-resolution measurements to refresh")
    new = run_superres(args.name, args.data_dir, old["baseline"], old["draws"])
    if abs(new["test_bpd"] - card["test_bpd"]) > 1e-9:
        raise SystemExit(f"the model's own bits/dim moved ({card['test_bpd']} -> {new['test_bpd']}): not refreshed")
    card["superres"] = {**new, **({"twin": old["twin"]} if "twin" in old else {})}
    target = ROOT / "src" / "glowtorch" / "pretrained" / args.name / "card.json"
    target.write_text(json.dumps(card, indent=2) + "\n")
    files = {kind: f"model-{args.name}-{kind}.png" for kind in ("curve", "samples", "superres")}
    (ROOT / "docs" / f"model-{args.name}.md").write_text(card_text(card, files))
    print(f"baseline {old['baseline']}: {old['baseline_bpd']:.4f} -> {new['baseline_bpd']:.4f} bits/dim; "
          f"pretrained:{args.name} {new['test_bpd']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
