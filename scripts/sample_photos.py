"""Write scikit-image's sample photographs into a folder (demo and calibration images).

python scripts/sample_photos.py photos/
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "camera",
    "coins",
    "horse",
    "immunohistochemistry",
)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "photos")
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        array = np.asarray(getattr(data, name)())
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        Image.fromarray(array).convert("RGB").save(folder / f"{name}.jpg", quality=95)
    print(f"{len(NAMES)} photographs in {folder}")


if __name__ == "__main__":
    main()
