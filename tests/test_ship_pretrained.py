"""``experiments/ship_pretrained.py``'s card sentences: figures computed from the cards, for any image
shape."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import ship_pretrained  # noqa: E402


def card(bpd: float, shape: tuple[int, int, int], cpu_hours: float, factor: int = 4) -> dict:
    return {"test_bpd": bpd, "cpu_hours": cpu_hours, "architecture": {"image_shape": list(shape)},
            "superres": {"factor": factor}}  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_a_conditional_model_below_its_baseline_gives_the_gap_in_bits_per_image(shape) -> None:
    text = ship_pretrained.baseline_sentence(card(1.10, shape, 1.0), card(1.20, shape, 2.0))
    bits = 0.10 * shape[0] * shape[1] * shape[2]  # bits/dim times the image's dimensions
    assert f"{bits:.0f} bits per image" in text and "0.1000 lower" in text
    assert f"{shape[1] // 4}x{shape[1] // 4} image" in text and "2.0 times its CPU time" in text


def test_a_conditional_model_above_its_baseline_is_called_under_trained() -> None:
    text = ship_pretrained.baseline_sentence(card(1.30, (1, 28, 28), 1.0), card(1.20, (1, 28, 28), 3.0))
    assert "under-trained" in text and "(1.2000)" in text and "bits per image" not in text
