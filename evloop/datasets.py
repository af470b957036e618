"""Data sets that need no download, for examples, tests and the demo.

:class:`Digits` is scikit-learn's 8×8 handwritten digits (1,797 real scans shipped
inside the scikit-learn package, install ``evloop[demo]``), shaped like a
torchvision data set: ``dataset[i] -> (image, label)`` and ``dataset.classes``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["Digits"]


class Digits(Dataset[tuple[torch.Tensor, int]]):
    """8×8 digits as ``channels``×8×8 float images in [0, 1]; a fixed 80/20 split."""

    classes = [str(i) for i in range(10)]

    def __init__(self, train: bool = True, channels: int = 3, test_fraction: float = 0.2):
        try:
            from sklearn.datasets import load_digits
        except ImportError as error:  # pragma: no cover - depends on the install
            raise ImportError(
                "the Digits data set comes with scikit-learn: pip install 'evloop[demo]'"
            ) from error
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        n_test = int(len(labels) * test_fraction)
        chosen = order[n_test:] if train else order[:n_test]
        self.images = images[chosen].unsqueeze(1).expand(-1, channels, -1, -1).contiguous()
        self.targets = labels[chosen]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])
