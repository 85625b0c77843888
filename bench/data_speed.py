"""Data-pipeline throughput: samples/s of one BaseDataset, alone and under a DataLoader.

    python bench/data_speed.py [--data_root data/synthetic] [--dataset h36m] [--n 300]
                               [--workers 2] [--batch_size 16] [--json out.json]

Training mode (flip / rotation / scale / pixel noise), ``--bbox_type rect`` (256x192) and
``--syn_occ`` on by default (the README training command). Rows: the image read alone (cv2
decode, the floor), the whole pipeline in this process, and a DataLoader with ``--workers``
worker processes (steady state: timed from the first batch). Build the synthetic world first
with ``python -m datasets.synthetic --root data/synthetic`` if it is missing.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import data_speed  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(data_speed(__doc__))
