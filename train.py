"""Meta-HMR training. Example (seed README):

python train.py --name <name> --batch_size 30 --test_epochs 5 --bbox_type rect --inner_lr 1e-5 \
  --outer_lr 1e-4 --after_innerlr 1e-5 --inner_step 1 --test_val_step 14 --first_order \
  --backbone resnet --adapt_val_step --model cliff --syn_occ --num_epochs 30 --summary_steps 1000
"""
from utils.cli import run
from utils.options import parse_train


def _main(argv):
    from train.trainer import main
    return main(parse_train(argv))


if __name__ == "__main__":
    run(_main)   # expected errors: one line, exit code 2 (--debug: traceback)
