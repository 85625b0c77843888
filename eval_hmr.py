"""Evaluate a Meta-HMR HMR checkpoint with test-time optimisation (seed README commands)."""
from train.evaluation import main
from utils.options import parse_eval

if __name__ == "__main__":
    main(parse_eval("hmr"))
